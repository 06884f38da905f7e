#!/usr/bin/env bash
# Cross-built aarch64 inspectd under qemu-user vs the native x86-64 build, on models/samples:
# every label must be identical and every CAM map must correlate r >= 0.999; `validate` must
# report the same accuracy. Usage: scripts/aarch64-check.sh X86_BIN AARCH64_BIN [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
x86=$1
arm=$2
model=${3:-models/surface-defect-int8.onnx}
out=$(mktemp -d)
qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
# Both builds must run the same file: with [variants] each would otherwise pick the faster one on
# its own CPU (f32 on an AVX2-only x86, int8 under qemu), and the maps would not be comparable.
variant=()
if grep -q '^\[variants\]' "${model%.onnx}.toml" 2>/dev/null; then
    variant=(--variant "${VARIANT:-int8}")
fi

"$x86" explain --model "$model" "${variant[@]}" --dir models/samples --json >"$out/x86.jsonl"
"${qemu[@]}" "$arm" explain --model "$model" "${variant[@]}" --dir models/samples --json >"$out/arm.jsonl"
"$x86" validate --model "$model" "${variant[@]}" --data models/samples --json >"$out/x86-validate.json"
"${qemu[@]}" "$arm" validate --model "$model" "${variant[@]}" --data models/samples --json >"$out/arm-validate.json"

python3 - "$out" <<'PY'
import json, math, sys
out = sys.argv[1]
def rows(name):
    return {r["image"]: r for r in map(json.loads, open(f"{out}/{name}"))}
a, b = rows("x86.jsonl"), rows("arm.jsonl")
assert a.keys() == b.keys() and len(a) >= 30, (len(a), len(b))
def pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((p - mx) * (q - my) for p, q in zip(x, y))
    sxx = sum((p - mx) ** 2 for p in x); syy = sum((q - my) ** 2 for q in y)
    return 1.0 if sxx == 0 and syy == 0 else sxy / math.sqrt(sxx * syy + 1e-30)
worst, bad = 1.0, []
for k in sorted(a):
    if a[k]["label"] != b[k]["label"]:
        bad.append(f"{k}: x86 {a[k]['label']} vs aarch64 {b[k]['label']}")
    r = pearson(a[k]["cam"]["values"], b[k]["cam"]["values"])
    worst = min(worst, r)
    if r < 0.999:
        bad.append(f"{k}: map r = {r:.5f}")
va = json.load(open(f"{out}/x86-validate.json")); vb = json.load(open(f"{out}/arm-validate.json"))
if va["accuracy"] != vb["accuracy"]:
    bad.append(f"validate accuracy x86 {va['accuracy']} vs aarch64 {vb['accuracy']}")
print(f"aarch64 under qemu vs x86-64: {len(a)} samples, labels identical: {not any('vs aarch64' in m for m in bad)}, "
      f"worst map r = {worst:.6f}, validate accuracy {va['accuracy']:.4f} / {vb['accuracy']:.4f}")
if bad:
    print("\n".join(bad)); sys.exit(1)
PY
