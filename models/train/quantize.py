#!/usr/bin/env python3
"""(Re-)quantize ../surface-defect-f32.onnx -> ../surface-defect-int8.onnx (+ .toml).

  python quantize.py [--n-calib 200] [--all-convs]

Calibration: 200 generated images, seeds 4000000.. (disjoint from train/val/held-out).
Called by train.py at the end of a normal-variant run; runnable on its own.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export  # noqa: E402
import train  # noqa: E402


def run(n_calib=200, method="minmax", all_convs=False, n_features=None):
    f32 = os.path.join(train.MODELS_DIR, "surface-defect-f32.onnx")
    int8 = os.path.join(train.MODELS_DIR, "surface-defect-int8.onnx")
    xc_u8, _ = train.dataset(train.CALIB_SEED, n_calib, "normal")
    export.quantize_int8(f32, int8, export.preprocess(xc_u8), method, keep_first_conv_f32=not all_convs)
    ops, cam, producer = export.check_int8(int8)
    print("int8 ops:", dict(ops), "cam:", cam, "from", producer)
    stem = "first conv f32, then " if not all_convs else ""
    train.write_toml(int8, "surface-defect", cam,
                     f"int8: {stem}QLinearConv (per-tensor weights, ReLU fused); "
                     f"cam = {producer} output feeding GlobalAveragePool" +
                     (f", 1x{n_features}x16x16" if n_features else ""))
    return int8


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-calib", type=int, default=200)
    ap.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--all-convs", action="store_true", help="also quantize the first (stem) conv")
    a = ap.parse_args()
    import onnx
    g = onnx.load(os.path.join(train.MODELS_DIR, "surface-defect-f32.onnx")).graph
    n_features = next(n for n in g.initializer if n.name.endswith("head.weight")).dims[1]
    run(a.n_calib, a.calib_method, a.all_convs, n_features)
