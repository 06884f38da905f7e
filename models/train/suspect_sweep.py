#!/usr/bin/env python3
"""Trade-off of the suspect rules: how many of the shortcut model's defect verdicts they flag vs
how many of the shipped model's correct defect verdicts they flag by mistake.

Drives the release binary (`inspectd explain --json`, the same Explainer the daemon runs) and
applies the evidence rules of src/verdict.rs to each map: the verdict's class (P(defect) =
1 - P(ok) >= defect_threshold -> the likeliest defect kind), the share of map mass on the
watermark zone (each feature cell sampled on a 4x4 sub-grid, as `mass_fraction`), and the spread
(share of cells >= half the peak). Only defect verdicts are counted: ok verdicts skip the
evidence checks unless `check_ok_evidence`.

    python3 surfaces.py write --out /tmp/heldout --n 2000 --seed 1000000
    python3 surfaces.py write --out /tmp/heldout-shortcut --n 1000 --seed 3000000 --variant shortcut
    python3 suspect_sweep.py --inspectd ../../target/release/inspectd \
        --honest /tmp/heldout --shortcut /tmp/heldout-shortcut

Prints a Markdown table (models/MODEL_CARD.md, "Suspect rules"); --json FILE keeps the
per-image numbers.
"""

import argparse
import json
import os
import subprocess
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.dirname(HERE)
# The watermark zone of deploy/inspectd.toml and the demo (surfaces.WATERMARK_BOX).
ZONE = (0.70, 0.82, 0.98, 0.97)
SUB = 4


def zone_fraction(values, h, w, box=ZONE):
    x0, y0, x1, y1 = box
    inside = total = 0.0
    for y in range(h):
        for x in range(w):
            v = max(values[y * w + x], 0.0)
            if v == 0.0:
                continue
            hits = 0
            for sy in range(SUB):
                for sx in range(SUB):
                    px = (x + (sx + 0.5) / SUB) / w
                    py = (y + (sy + 0.5) / SUB) / h
                    hits += x0 <= px <= x1 and y0 <= py <= y1
            inside += v * hits / (SUB * SUB)
            total += v
    return inside / total if total else 0.0


def spread(values):
    peak = max(values, default=0.0)
    if peak <= 0.0:
        return 0.0
    return sum(v >= 0.5 * peak for v in values) / len(values)


def explain(inspectd, model, path, cls=None, variant=None):
    cmd = [inspectd, "explain", "--model", model, "--json"]
    cmd += ["--dir", path] if os.path.isdir(path) else ["--image", path]
    if cls is not None:
        cmd += ["--class", str(cls)]
    if variant:
        cmd += ["--variant", variant]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def records(inspectd, model, folder, threshold, variant=None):
    """One row per defect verdict: truth, predicted label, confidence, zone share, spread."""
    with open(os.path.splitext(model)[0] + ".toml", "rb") as f:
        out = tomllib.load(f)["output"]
    labels, ok_label = out["labels"], out["ok_label"]
    rows = []
    for e in explain(inspectd, model, folder, variant=variant):
        img = e["image"]
        if img.endswith(".watermark.png"):
            continue
        truth = os.path.basename(os.path.dirname(img))
        probs = e["scores"]
        ok = labels.index(ok_label)
        p_defect = 1.0 - probs[ok]
        if p_defect < threshold:
            continue
        cls = max((i for i in range(len(probs)) if i != ok), key=lambda i: probs[i])
        if e["class"] != cls:  # top-1 was ok: explain the class the verdict names
            e = explain(inspectd, model, img, cls=cls, variant=variant)[0]
        cam = e["cam"]
        rows.append({
            "image": img,
            "truth": truth,
            "label": labels[cls],
            "confidence": p_defect,
            "zone": zone_fraction(cam["values"], cam["height"], cam["width"]),
            "spread": spread(cam["values"]),
        })
    return rows


def rate(rows, pred):
    return sum(map(pred, rows)) / len(rows) if rows else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inspectd", default=os.path.join(MODELS, "..", "target", "release", "inspectd"))
    ap.add_argument("--honest", required=True, help="held-out folder (surfaces.py write)")
    ap.add_argument("--shortcut", required=True, help="held-out shortcut folder (--variant shortcut)")
    ap.add_argument("--shipped", default=os.path.join(MODELS, "surface-defect-int8.onnx"))
    ap.add_argument("--shipped-variant", default="int8", help="f32 or int8 (forced, not timed)")
    ap.add_argument("--shortcut-model", default=os.path.join(MODELS, "shortcut-f32.onnx"))
    ap.add_argument("--defect-threshold", type=float, default=0.5)
    ap.add_argument("--ignore", default="0.05,0.08,0.10,0.12,0.15,0.20,0.25,0.30")
    ap.add_argument("--spread", default="none,0.6,0.3,0.15")
    ap.add_argument("--chosen", default="0.10,0.15", help="max_ignore_fraction,max_spread shipped")
    ap.add_argument("--band", default="0.5,0.65", help="suspect_band of deploy/inspectd.toml")
    ap.add_argument("--json", help="write the per-image rows here")
    a = ap.parse_args(argv)

    honest = records(a.inspectd, a.shipped, a.honest, a.defect_threshold, a.shipped_variant)
    correct = [r for r in honest if r["label"] == r["truth"]]
    short = records(a.inspectd, a.shortcut_model, a.shortcut, a.defect_threshold)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"honest": honest, "shortcut": short}, f)

    print(f"shipped model ({os.path.basename(a.shipped)}, variant {a.shipped_variant}) on {a.honest}: "
          f"{len(honest)} defect verdicts, {len(correct)} correct")
    print(f"shortcut model on {a.shortcut}: {len(short)} defect verdicts "
          f"({sum(r['truth'] == 'ok' for r in short)} on ok parts)")
    print()
    print("| max_ignore_fraction | max_spread | shortcut defects flagged | "
          "shipped correct defects flagged |")
    print("| --- | --- | --- | --- |")
    for s in a.spread.split(","):
        ms = None if s == "none" else float(s)
        for t in a.ignore.split(","):
            mi = float(t)

            def flagged(r):
                return r["zone"] > mi or (ms is not None and r["spread"] > ms)

            print(f"| {mi:.2f} | {s} | {100 * rate(short, flagged):.1f} % | "
                  f"{100 * rate(correct, flagged):.1f} % |")
    mi, ms = map(float, a.chosen.split(","))
    lo, hi = map(float, a.band.split(","))

    def all_rules(r):
        return r["zone"] > mi or r["spread"] > ms or lo <= r["confidence"] <= hi

    print()
    print(f"chosen max_ignore_fraction = {mi}, max_spread = {ms}, plus suspect_band [{lo}, {hi}]: "
          f"shortcut defects flagged {100 * rate(short, all_rules):.1f} %, shipped correct defects "
          f"flagged {100 * rate(correct, all_rules):.1f} % "
          f"({sum(map(all_rules, correct))} of {len(correct)})")
    zs = sorted(r["zone"] for r in short)
    zc = sorted(r["zone"] for r in correct)
    q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))] if v else float("nan")
    ss = sorted(r["spread"] for r in short)
    sc = sorted(r["spread"] for r in correct)
    print(f"zone share, shortcut defects: min {q(zs, 0):.3f} p05 {q(zs, .05):.3f} "
          f"p10 {q(zs, .1):.3f} median {q(zs, .5):.3f}")
    print(f"zone share, shipped correct defects: median {q(zc, .5):.3f} p95 {q(zc, .95):.3f} "
          f"p99 {q(zc, .99):.3f} max {q(zc, 1):.3f}")
    print(f"spread, shortcut defects: p05 {q(ss, .05):.3f} median {q(ss, .5):.3f}; shipped correct "
          f"defects: median {q(sc, .5):.3f} p99 {q(sc, .99):.3f} max {q(sc, 1):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
