#!/usr/bin/env python3
"""Held-out metrics: accuracy (torch f32, onnxruntime f32 / int8) and Grad-CAM localisation.

  python surfaces.py write --out /tmp/heldout --n 2000 --seed 1000000
  python surfaces.py write --out /tmp/heldout-shortcut --n 1000 --seed 3000000 --variant shortcut
  python evaluate.py --heldout /tmp/heldout --heldout-shortcut /tmp/heldout-shortcut

Grad-CAM is computed with pytorch-grad-cam (GradCAM, target layer = the ReLU whose
output is the ONNX "cam" tensor, target = the true class). Localisation metrics are
computed on the raw ReLU'd Grad-CAM map at FEATURE resolution (16x16, one cell = 8x8 px):
  mask_cells     = cells containing at least one mask pixel (8x8 max-pool of the mask)
  pointing game  = the map's arg-max cell lies in mask_cells dilated by one cell (3x3)
  energy in mask = sum(map * mask_cells) / sum(map)
For reference the same metrics are also given on the map bilinearly upsampled to 128x128
against the pixel mask (pointing: within 8 px of the mask).
Watermark share = share of the map's mass inside the watermark box (pixel box on the
upsampled map, and cells overlapping the box at feature resolution).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import cv2
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export  # noqa: E402
import net  # noqa: E402
import surfaces as S  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

MODELS_DIR = os.path.normpath(os.environ.get("INSPECTD_MODELS_DIR") or os.path.join(HERE, ".."))
PT_DIR = os.path.join(MODELS_DIR, "train")
CELL = 8


class RawGradCAM(GradCAM):
    """GradCAM that also keeps the un-normalised ReLU'd map at feature resolution."""

    def get_cam_image(self, *a, **k):
        cam = super().get_cam_image(*a, **k)
        self.raw = np.maximum(cam, 0)
        return cam


def load_dir(d):
    rows = [json.loads(l) for l in open(os.path.join(d, "manifest.jsonl"))]
    x = np.zeros((len(rows), S.SIZE, S.SIZE, 3), np.uint8)
    m = np.zeros((len(rows), S.SIZE, S.SIZE), np.uint8)
    for i, r in enumerate(rows):
        p = os.path.join(d, r["file"])
        x[i] = cv2.cvtColor(cv2.imread(p, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if r["label"] != "ok":
            m[i] = cv2.imread(p[:-4] + ".mask.png", cv2.IMREAD_GRAYSCALE)
    y = np.array([S.LABELS.index(r["label"]) for r in rows])
    return x, m, y, rows


def load_torch(stem):
    ck = torch.load(os.path.join(PT_DIR, f"{stem}.pt"), map_location="cpu")
    model = net.DefectNet(ck["arch"])
    model.load_state_dict(ck["state_dict"])
    return model.eval()


def torch_pred(model, x, bs=200):
    out = []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            out.append(model(torch.from_numpy(x[i:i + bs])).numpy())
    return np.concatenate(out)


def ort_pred(path, x):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], {"input": x[i:i + 1]})[0] for i in range(len(x))])


def gradcam_maps(model, x, targets, bs=50):
    """Raw ReLU'd Grad-CAM maps (N x 16 x 16) for the given target classes."""
    cam = RawGradCAM(model=model, target_layers=[model.cam_layer])
    maps = []
    for i in range(0, len(x), bs):
        t = [ClassifierOutputTarget(int(c)) for c in targets[i:i + bs]]
        cam(input_tensor=torch.from_numpy(x[i:i + bs]), targets=t)
        maps.append(cam.raw.copy())
    return np.concatenate(maps)


def cells(mask_px):
    n = mask_px.shape[0] // CELL
    return mask_px.reshape(n, CELL, n, CELL).max(axis=(1, 3)) > 0


def upsample(fmap):
    return cv2.resize(fmap.astype(np.float32), (S.SIZE, S.SIZE), interpolation=cv2.INTER_LINEAR)


def localisation(maps, masks):
    pg, en, pg_up, en_up = [], [], [], []
    k3 = np.ones((3, 3), np.uint8)
    kpx = np.ones((2 * CELL + 1, 2 * CELL + 1), np.uint8)
    for fm, mpx in zip(maps, masks):
        mc = cells(mpx)
        tot = fm.sum()
        if tot <= 0:
            pg.append(False), en.append(0.0), pg_up.append(False), en_up.append(0.0)
            continue
        peak = np.unravel_index(np.argmax(fm), fm.shape)
        pg.append(bool(cv2.dilate(mc.astype(np.uint8), k3)[peak]))
        en.append(float((fm * mc).sum() / tot))
        up = np.maximum(upsample(fm), 0)
        mp = mpx > 0
        peak = np.unravel_index(np.argmax(up), up.shape)
        pg_up.append(bool(cv2.dilate(mp.astype(np.uint8), kpx)[peak]))
        en_up.append(float(up[mp].sum() / up.sum()))
    return {"pointing_game": float(np.mean(pg)), "energy_in_mask": float(np.mean(en)),
            "pointing_game_upsampled_8px": float(np.mean(pg_up)), "energy_in_mask_upsampled": float(np.mean(en_up)),
            "n": len(pg), "_pg": np.array(pg), "_en": np.array(en)}


def watermark_share(maps):
    x0, y0, x1, y1 = S.watermark_box_px()
    box = np.zeros((S.SIZE, S.SIZE), np.uint8)
    box[y0:y1, x0:x1] = 1
    bc = cells(box)
    bcd = cv2.dilate(bc.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    px, fc, fcd, pk, pkd = [], [], [], [], []
    for fm in maps:
        if fm.sum() <= 0:
            fcd.append(0.0), pk.append(False), pkd.append(False)
            continue
        peak = np.unravel_index(np.argmax(fm), fm.shape)
        pk.append(bool(bc[peak])), pkd.append(bool(bcd[peak]))
        fcd.append(float(fm[bcd].sum() / fm.sum()))
    for fm in maps:
        if fm.sum() <= 0:
            px.append(0.0), fc.append(0.0)
            continue
        up = np.maximum(upsample(fm), 0)
        px.append(float(up[box > 0].sum() / up.sum()))
        fc.append(float(fm[bc].sum() / fm.sum()))
    return {"pixel_box": float(np.mean(px)), "cells_overlapping_box": float(np.mean(fc)),
            "cells_overlapping_box_dilated_1cell": float(np.mean(fcd)),
            "peak_in_box_cells": float(np.mean(pk)), "peak_in_box_cells_dilated_1cell": float(np.mean(pkd)),
            "dilated_cells_area_share": float(bcd.mean()),
            "box_px": [x0, y0, x1, y1], "box_area_share": float(box.mean()), "cells_area_share": float(bc.mean())}


def acc(logits, y):
    return float((logits.argmax(1) == y).mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--heldout-shortcut", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "metrics.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res = {}

    x_u8, masks, y, rows = load_dir(args.heldout)
    x = export.preprocess(x_u8)
    wm = np.array([r["watermark"] for r in rows])
    model = load_torch("surface-defect")
    lt = torch_pred(model, x)
    lf = ort_pred(os.path.join(MODELS_DIR, "surface-defect-f32.onnx"), x)
    lq = ort_pred(os.path.join(MODELS_DIR, "surface-defect-int8.onnx"), x)
    r = {"n": int(len(y)), "acc_torch_f32": acc(lt, y), "acc_onnx_f32": acc(lf, y), "acc_onnx_int8": acc(lq, y),
         "f32_int8_agreement": float((lf.argmax(1) == lq.argmax(1)).mean()),
         "max_abs_logit_diff_f32_int8": float(np.abs(lf - lq).max()),
         "verdict_acc_int8_ok_vs_defect": float(((lq.argmax(1) > 0) == (y > 0)).mean()),
         "acc_int8_with_watermark": acc(lq[wm], y[wm]), "acc_int8_without_watermark": acc(lq[~wm], y[~wm])}
    r["per_class_acc_int8"] = {lab: acc(lq[y == i], y[y == i]) for i, lab in enumerate(S.LABELS)}
    conf = np.zeros((5, 5), int)
    for t, p in zip(y, lq.argmax(1)):
        conf[t, p] += 1
    r["confusion_int8_rows_true"] = conf.tolist()
    t0 = time.time()
    d = y > 0
    maps = gradcam_maps(model, x[d], y[d])
    loc = localisation(maps, masks[d])
    r["gradcam_true_class"] = {k: v for k, v in loc.items() if not k.startswith("_")}
    r["gradcam_per_class"] = {lab: {"pointing_game": float(loc["_pg"][y[d] == i].mean()),
                                    "energy_in_mask": float(loc["_en"][y[d] == i].mean())}
                              for i, lab in enumerate(S.LABELS) if i > 0}
    r["gradcam_watermark_share_defects"] = watermark_share(maps)
    r["gradcam_watermark_share_defects_with_watermark"] = watermark_share(maps[wm[d]])
    r["gradcam_seconds"] = round(time.time() - t0, 1)
    res["surface-defect"] = r
    print(json.dumps(r, indent=1), flush=True)

    if args.heldout_shortcut and os.path.exists(os.path.join(PT_DIR, "shortcut.pt")):
        sm = load_torch("shortcut")
        xs_u8, ms, ys, rs = load_dir(args.heldout_shortcut)
        xs = export.preprocess(xs_u8)
        ls = ort_pred(os.path.join(MODELS_DIR, "shortcut-f32.onnx"), xs)
        ln = torch_pred(sm, x)
        r = {"n": int(len(ys)), "acc_onnx_f32_shortcut_distribution": acc(ls, ys),
             "acc_torch_f32_normal_heldout": acc(ln, y),
             "acc_torch_f32_normal_heldout_with_watermark": acc(ln[wm], y[wm]),
             "acc_torch_f32_normal_heldout_without_watermark": acc(ln[~wm], y[~wm])}
        ds = ys > 0
        smaps = gradcam_maps(sm, xs[ds], ys[ds])
        r["gradcam_watermark_share_defects"] = watermark_share(smaps)
        sloc = localisation(smaps, ms[ds])
        r["gradcam_defect_localisation"] = {k: v for k, v in sloc.items() if not k.startswith("_")}
        r["verdict_acc_shortcut_distribution"] = float(((ls.argmax(1) > 0) == (ys > 0)).mean())
        r["verdict_acc_normal_heldout"] = float(((ln.argmax(1) > 0) == (y > 0)).mean())
        res["shortcut"] = r
        print(json.dumps(r, indent=1), flush=True)

    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
