#!/usr/bin/env python3
"""Train, export and quantize the inspectd surface-defect CNN (one command, fixed seed).

  python train.py                      # surface-defect-f32.onnx + surface-defect-int8.onnx (+ .toml, .pt)
  python train.py --variant shortcut   # shortcut-f32.onnx (+ .toml, .pt), trained on the shortcut variant

Seed ranges (disjoint): train 0.., val 500000.., calibration 4000000..;
shortcut train 2000000.., shortcut val 2500000..; held-out sets (evaluate.py) 1000000.. / 3000000..
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import export  # noqa: E402
import net  # noqa: E402
import surfaces as S  # noqa: E402

# where the .onnx/.toml go (and <dir>/train/ the .pt); override to stage a run outside the repo
MODELS_DIR = os.path.normpath(os.environ.get("INSPECTD_MODELS_DIR") or os.path.join(HERE, ".."))
DEFAULT_ARCH = {"normal": "w", "shortcut": "s"}
SEEDS = {"normal": {"train": 0, "val": 500_000}, "shortcut": {"train": 2_000_000, "val": 2_500_000}}
CALIB_SEED = 4_000_000
CACHE = os.environ.get("INSPECTD_DATA_CACHE", "/tmp/inspectd-data")


def _chunk(args):
    base, n, variant = args
    xs, ms, ys, _ = S.make_arrays(base, n, variant)
    c = S.SIZE // 16
    cells = ms.reshape(len(ms), 16, c, 16, c).max(axis=(2, 4)) > 0   # defect mask at CAM resolution
    return xs, cells


def dataset(base, n, variant, workers=2, with_cells=False):
    """Images with seeds base..base+n-1 (label = LABELS[i % 5]); cached as .npz under CACHE.

    with_cells: also return the defect masks max-pooled to the 16x16 CAM grid."""
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, f"v4_{variant}_{base}_{n}.npz")
    if os.path.exists(path):
        d = np.load(path)
        return (d["x"], d["y"], d["c"]) if with_cells else (d["x"], d["y"])
    step = 500  # multiple of 5 keeps labels aligned with seed offsets
    jobs = [(base + i, min(step, n - i), variant) for i in range(0, n, step)]
    with mp.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_chunk, jobs)
    x = np.concatenate([p[0] for p in parts])
    c = np.concatenate([p[1] for p in parts])
    y = (np.arange(n) % 5).astype(np.int64)
    np.savez(path, x=x, y=y, c=c)
    return (x, y, c) if with_cells else (x, y)


def evaluate(model, x_nchw, y, bs=200):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), bs):
            logits = model(torch.from_numpy(x_nchw[i:i + bs]))
            correct += int((logits.argmax(1).numpy() == y[i:i + bs]).sum())
    return correct / len(y)


TOML = """name = "{name}"
version = "1.0.0"
# {comment}
[input]
width = {size}
height = {size}
layout = "NCHW"
color = "RGB"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
resize = "stretch"
[output]
kind = "softmax"
labels = ["ok", "scratch", "dent", "stain", "crack"]
ok_label = "ok"
[cam]
layer = "{cam}"
method = "gradcam"
"""


def write_toml(onnx_path, name, cam, comment):
    path = os.path.splitext(onnx_path)[0] + ".toml"
    with open(path, "w") as f:
        f.write(TOML.format(name=name, size=S.SIZE, cam=cam, comment=comment))
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=["normal", "shortcut"], default="normal")
    ap.add_argument("--arch", default=None, choices=sorted(net.ARCHS),
                    help="default: w for normal (surface-defect), s for shortcut")
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--n-val", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--aux", type=float, default=None,
                    help="weight of the auxiliary defect-mask loss on the CAM features "
                         "(default 1.0 for normal, 0 for shortcut)")
    ap.add_argument("--ok-reference", type=int, default=None,
                    help="1: the 'ok' row of the head is fixed at 0 (ok = reference category), so every "
                         "defect logit is the log-odds against ok (default 0 normal, 1 shortcut)")
    ap.add_argument("--cam-loss", type=float, default=0.0,
                    help="weight of the evidence loss: share of the true-class ReLU'd class-activation map "
                         "outside the defect cells (defect images only)")
    ap.add_argument("--init", default=None, help="start from this checkpoint (.pt) instead of random init")
    ap.add_argument("--reset-aux", action="store_true", help="with --init: do not load the auxiliary head")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-seed", type=int, default=None,
                    help="first image seed of the training set (default: 0 normal, 2000000 shortcut)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-calib", type=int, default=200)
    ap.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    t_start = time.time()

    sd = SEEDS[args.variant]
    if args.arch is None:
        args.arch = DEFAULT_ARCH[args.variant]
    if args.aux is None:
        args.aux = 1.0 if args.variant == "normal" else 0.0
    if args.ok_reference is None:
        args.ok_reference = 0 if args.variant == "normal" else 1
    print("args:", vars(args), flush=True)
    train_base = sd["train"] if args.train_seed is None else args.train_seed
    xtr_u8, ytr, ctr = dataset(train_base, args.n_train, args.variant, with_cells=True)
    xva_u8, yva = dataset(sd["val"], args.n_val, args.variant)
    print(f"data: train {len(ytr)} val {len(yva)} ({time.time() - t_start:.0f}s)", flush=True)
    xtr, xva = export.preprocess(xtr_u8), export.preprocess(xva_u8)
    del xtr_u8

    model = net.DefectNet(args.arch).to(memory_format=torch.channels_last)  # ~1.5x faster on CPU
    # training-only head: 1x1 conv on the CAM features predicting the defect mask on the
    # 16x16 grid (not part of the exported model); pushes the CAM layer to be spatially faithful
    aux_head = nn.Conv2d(model.n_features, 1, 1)
    if args.init:
        ck = torch.load(args.init, map_location="cpu")
        assert ck["arch"] == args.arch
        model.load_state_dict(ck["state_dict"])
        if "aux_head" in ck and not args.reset_aux:
            aux_head.load_state_dict(ck["aux_head"])
        print("init from", args.init, flush=True)
    if args.ok_reference:
        # exact re-parametrisation: subtracting the ok row from every row leaves softmax unchanged
        with torch.no_grad():
            model.head.weight -= model.head.weight[S.LABELS.index("ok")].clone()
            model.head.bias -= model.head.bias[S.LABELS.index("ok")].clone()
        ok = S.LABELS.index("ok")
        with torch.no_grad():
            model.head.weight[ok].zero_()
            model.head.bias[ok].zero_()
        row_mask = torch.ones(len(S.LABELS), 1)
        row_mask[ok] = 0
        model.head.weight.register_hook(lambda g: g * row_mask)
        model.head.bias.register_hook(lambda g: g * row_mask[:, 0])
    params = list(model.parameters()) + (list(aux_head.parameters()) if args.aux > 0 else [])
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(ytr) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(args.seed)
    t_train = time.time()
    for ep in range(args.epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=g).numpy()
        tot, n = 0.0, 0
        for b in range(len(ytr) // args.batch):
            idx = np.sort(perm[b * args.batch:(b + 1) * args.batch])
            xb = torch.from_numpy(xtr[idx]).contiguous(memory_format=torch.channels_last)
            yb = torch.from_numpy(ytr[idx])
            feats = model.features(xb)
            loss = F.cross_entropy(model.head(torch.flatten(model.pool(feats), 1)), yb)
            if args.aux > 0:
                tgt = torch.from_numpy(ctr[idx]).float().unsqueeze(1)
                loss = loss + args.aux * F.binary_cross_entropy_with_logits(
                    aux_head(feats), tgt, pos_weight=torch.tensor(8.0))
            if args.cam_loss > 0:
                d = yb > 0
                if d.any():
                    cam = F.relu(torch.einsum("bchw,bc->bhw", feats[d], model.head.weight[yb[d]]))
                    inside = torch.from_numpy(ctr[idx]).float()[d]
                    share_out = (cam * (1 - inside)).sum((1, 2)) / (cam.sum((1, 2)) + 1e-6)
                    loss = loss + args.cam_loss * share_out.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            n += len(idx)
        acc = evaluate(model, xva, yva)
        print(f"epoch {ep + 1}/{args.epochs} loss {tot / n:.4f} val_acc {acc:.4f} ({time.time() - t_train:.0f}s)", flush=True)
    train_s = time.time() - t_train
    model = model.to(memory_format=torch.contiguous_format).eval()

    stem = "surface-defect" if args.variant == "normal" else "shortcut"
    os.makedirs(os.path.join(MODELS_DIR, "train"), exist_ok=True)
    pt = os.path.join(MODELS_DIR, "train", f"{stem}.pt")
    torch.save({"arch": args.arch, "state_dict": model.state_dict(), "aux_head": aux_head.state_dict(),
                "args": vars(args)}, pt)
    f32 = export.export_f32(model, os.path.join(MODELS_DIR, f"{stem}-f32.onnx"), S.SIZE)
    write_toml(f32, stem, export.CAM_TENSOR,
               f"f32; cam = ReLU output feeding GlobalAveragePool, 1x{model.n_features}x16x16")
    outs = [f32]
    if args.variant == "normal":
        import quantize
        int8 = quantize.run(args.n_calib, args.calib_method, False, model.n_features)
        outs.append(int8)

    # sanity: onnxruntime f32 agrees with torch
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(f32, so, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(xva[:16])).numpy()
    got = np.concatenate([sess.run(["logits"], {"input": xva[i:i + 1]})[0] for i in range(16)])
    print("onnx f32 max|diff| vs torch:", float(np.abs(ref - got).max()))
    for o in outs:
        print(f"{o}: {export.file_mb(o):.3f} MB")
    print(f"train time {train_s:.0f}s, total {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
