#!/usr/bin/env python3
"""Random-weight candidate architectures for the int8-vs-f32 speed check in tract.

  python archbench.py --out /tmp/archbench2 [name ...]     # default: every candidate
  TRACT_CPU_ISA=-amx-int8 /tmp/tractbench/target/release/tractbench 100 128 128 \
      /tmp/archbench2/{s,w}-{f32,int8}.onnx

Each candidate: Conv(kxk, no bias)+BN+ReLU blocks, GAP + Linear head; BatchNorm statistics from 3
training-mode forward passes on generated images, then exported (BN folded) with export.export_f32 and
quantized with export.quantize_int8 (the shipped recipe: QOperator, per-tensor, ReLU fused, first conv
f32) on 40 calibration images (seeds 4000000+). Only the compute matters here, not the weights.
"""
import argparse
import os
import sys

import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export  # noqa: E402
import net  # noqa: E402
import surfaces as S  # noqa: E402


def C(c, s, k=3):
    return (c, s, k)


CANDS = {name: [C(c, s) for c, s in spec] for name, spec in net.ARCHS.items()}
CANDS.update({
    "a": [C(32, 2), C(64, 1), C(64, 2), C(128, 1), C(128, 2), C(128, 1), C(128, 1)],
    "b": [C(16, 2), C(32, 2), C(64, 1), C(128, 2), C(128, 1), C(128, 1), C(128, 1)],
    "c": [C(16, 2), C(32, 2), C(64, 1), C(128, 2), C(192, 1), C(192, 1), C(192, 1)],
    "d": [C(16, 2), C(32, 2), C(64, 1), C(128, 2), C(256, 1), C(256, 1), C(256, 1)],
    "g": [C(16, 2), C(32, 2), C(96, 1), C(128, 2), C(256, 1), C(256, 1, 1), C(256, 1)],
    "m2": [C(16, 2), C(32, 2), C(64, 1), C(128, 2), C(256, 1), C(256, 1)],
    "w1": [C(16, 2), C(24, 1), C(32, 2), C(64, 2), C(128, 1), C(256, 1), C(256, 1)],
})


class Net(nn.Module):
    def __init__(self, spec, n_classes=5):
        super().__init__()
        layers, cin = [], 3
        for cout, s, k in spec:
            layers += [nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def macs(spec, size=S.SIZE):
    h, cin, t = size, 3, 0
    for cout, s, k in spec:
        h //= s
        t += h * h * cout * cin * k * k
        cin = cout
    return t / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/archbench2")
    ap.add_argument("names", nargs="*")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    xs, _, _, _ = S.make_arrays(4_000_000, 40)
    calib = export.preprocess(xs)
    for name in a.names or sorted(CANDS):
        m = Net(CANDS[name]).train()
        with torch.no_grad():
            for _ in range(3):
                m(torch.from_numpy(calib[:16]))
        m.eval()
        f = os.path.join(a.out, f"{name}-f32.onnx")
        q = os.path.join(a.out, f"{name}-int8.onnx")
        export.export_f32(m, f, S.SIZE)
        export.quantize_int8(f, q, calib)
        print(f"{name}: {macs(CANDS[name]):.0f} M MAC, f32 {export.file_mb(f):.2f} MB, int8 {export.file_mb(q):.2f} MB,"
              f" {dict(export.op_histogram(q))}", flush=True)


if __name__ == "__main__":
    main()
