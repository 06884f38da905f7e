#!/usr/bin/env python3
"""Procedural surface-inspection images for the inspectd defect model.

Every image is a pure function of one integer seed (numpy PCG64), its class
label and the distribution variant, so training / calibration / held-out sets
are reproducible and disjoint by seed range.

Scene, in drawing order:
  1. surface texture (brushed metal, woven fabric, wood grain, painted plastic,
     cast metal), jittered by a small rotation + shift;
  2. at most one defect (scratch, dent/pit, stain, crack) with a per-pixel mask;
  3. nuisances on the part: label sticker and printed serial number (random
     place), fixture edge (a clamp covering one image border);
  4. camera: lighting gradient + vignette, colour cast, blur, sensor noise;
  5. burned-in watermark at a FIXED place (WATERMARK_BOX), drawn after the
     sensor like a camera's on-screen logo.

Defects never overlap the watermark box, the fixture, the sticker or the
serial number, so the mask is exactly the visible defect.

Variants:
  normal    nuisances independent of the class (watermark in 30 % of images)
  shortcut  watermark in ~97 % of defect images and ~3 % of ok images

CLI:
  python surfaces.py write --out DIR --n 2000 --seed 1000000 [--variant shortcut] [--watermark-masks]
  python surfaces.py samples --out ../samples --out-shortcut ../samples-shortcut
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import cv2
import numpy as np

SIZE = 128
LABELS = ("ok", "scratch", "dent", "stain", "crack")
SURFACES = ("brushed_metal", "woven_fabric", "wood_grain", "painted_plastic", "cast_metal")
# Normalised watermark box (x0, y0, x1, y1), fixed like a camera's burned-in logo.
WATERMARK_BOX = (0.70, 0.82, 0.98, 0.97)
P_NUISANCE = {"sticker": 0.35, "serial": 0.35, "fixture": 0.30, "watermark": 0.30}
P_WATERMARK_SHORTCUT = {"ok": 0.03, "defect": 0.97}

cv2.setNumThreads(1)


def watermark_box_px(size: int = SIZE) -> tuple[int, int, int, int]:
    """Pixel box [x0, x1) x [y0, y1) of the watermark."""
    x0, y0, x1, y1 = WATERMARK_BOX
    return (int(math.floor(x0 * size)), int(math.floor(y0 * size)),
            int(math.ceil(x1 * size)), int(math.ceil(y1 * size)))


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def smooth_noise(rng, h, w, cells):
    """Band-limited noise in about [-1, 1] with `cells` blobs across."""
    c = max(2, int(cells))
    small = rng.standard_normal((c + 2, c + 2)).astype(np.float32)
    big = cv2.resize(small, (w + 2 * w // c, h + 2 * h // c), interpolation=cv2.INTER_CUBIC)
    oy, ox = h // c, w // c
    out = big[oy:oy + h, ox:ox + w]
    return out / (np.abs(out).max() + 1e-6)


def hsv_rgb(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


def alpha_over(img, color, alpha):
    """img: HxWx3 float, color: 3-vector or HxWx3, alpha: HxW in [0,1]."""
    a = alpha[..., None]
    return img * (1 - a) + np.asarray(color, np.float32) * a


# ----------------------------------------------------------------------------
# surfaces
# ----------------------------------------------------------------------------

def tex_brushed_metal(rng, n):
    base = rng.uniform(0.45, 0.78)
    streak = cv2.blur(rng.standard_normal((n, n)).astype(np.float32), (int(rng.integers(25, 60)), 1))
    streak /= streak.std() + 1e-6
    fine = cv2.blur(rng.standard_normal((n, n)).astype(np.float32), (7, 1))
    fine /= fine.std() + 1e-6
    y = np.linspace(-1, 1, n, dtype=np.float32)[:, None]
    sheen = np.exp(-((y - rng.uniform(-0.8, 0.8)) / rng.uniform(0.3, 0.8)) ** 2) * rng.uniform(0.05, 0.18)
    g = base + 0.035 * streak + 0.02 * fine + sheen + 0.04 * smooth_noise(rng, n, n, 3)
    if rng.random() < 0.5:
        g = g.T
    tint = np.array([1.0, 1.0 + rng.uniform(0, 0.03), 1.0 + rng.uniform(0, 0.07)], np.float32)
    return g[..., None] * tint


def tex_woven_fabric(rng, n):
    p = rng.uniform(4.5, 8.0)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    u, v = xx / p, yy / p
    top = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    warp = np.sin(np.pi * (u - np.floor(u)))
    weft = np.sin(np.pi * (v - np.floor(v)))
    fib_x = cv2.blur(rng.standard_normal((n, n)).astype(np.float32), (1, 5))
    fib_y = cv2.blur(rng.standard_normal((n, n)).astype(np.float32), (5, 1))
    shade = top * (0.55 + 0.45 * warp + 0.08 * fib_x) + (1 - top) * (0.55 + 0.45 * weft + 0.08 * fib_y)
    palette = [(0.20, 0.30, 0.52), (0.62, 0.56, 0.42), (0.45, 0.45, 0.47), (0.25, 0.36, 0.24),
               (0.55, 0.18, 0.16), (0.78, 0.76, 0.70)]
    col = np.array(palette[rng.integers(len(palette))], np.float32) * rng.uniform(0.85, 1.15)
    shade = shade * (1 + 0.06 * smooth_noise(rng, n, n, 4))
    return np.clip(shade[..., None] * col[None, None, :] * 1.15, 0, 1)


def tex_wood_grain(rng, n):
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    period = rng.uniform(7, 16)
    warp = smooth_noise(rng, n, n, 3) * rng.uniform(5, 14) + smooth_noise(rng, n, n, 7) * 2.0
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (yy + warp + xx * rng.uniform(-0.15, 0.15)) / period)
    t = rings ** rng.uniform(1.5, 4.0)
    streak = cv2.blur(rng.standard_normal((n, n)).astype(np.float32), (21, 1))
    streak /= streak.std() + 1e-6
    light = np.array([0.80, 0.62, 0.40], np.float32) * rng.uniform(0.85, 1.1)
    dark = np.array([0.50, 0.33, 0.18], np.float32) * rng.uniform(0.75, 1.05)
    img = light * (1 - t[..., None]) + dark * t[..., None]
    img *= (1 + 0.04 * streak)[..., None]
    if rng.random() < 0.5:
        img = img.transpose(1, 0, 2)
    return np.ascontiguousarray(img)


def tex_painted_plastic(rng, n):
    col = hsv_rgb(rng.random(), rng.uniform(0.25, 0.8), rng.uniform(0.45, 0.85))
    peel = cv2.GaussianBlur(rng.standard_normal((n, n)).astype(np.float32), (0, 0), 1.3)
    peel /= peel.std() + 1e-6
    g = 1 + 0.025 * peel + 0.05 * smooth_noise(rng, n, n, 2)
    return g[..., None] * col[None, None, :]


def tex_cast_metal(rng, n):
    base = rng.uniform(0.38, 0.62)
    grain = cv2.GaussianBlur(rng.standard_normal((n, n)).astype(np.float32), (0, 0), 0.8)
    grain /= grain.std() + 1e-6
    mid = cv2.GaussianBlur(rng.standard_normal((n, n)).astype(np.float32), (0, 0), 2.5)
    mid /= mid.std() + 1e-6
    g = base + 0.045 * grain + 0.03 * mid + 0.06 * smooth_noise(rng, n, n, 4)
    # sparse single-pixel speckles (sand-cast porosity, much smaller than a dent)
    k = int(rng.integers(10, 40))
    ys, xs = rng.integers(0, n, k), rng.integers(0, n, k)
    g[ys, xs] -= rng.uniform(0.05, 0.15, k).astype(np.float32)
    tint = np.array([1.0 + rng.uniform(0, 0.05), 1.0, 1.0 - rng.uniform(0, 0.05)], np.float32)
    return g[..., None] * tint


TEXTURES = {
    "brushed_metal": tex_brushed_metal,
    "woven_fabric": tex_woven_fabric,
    "wood_grain": tex_wood_grain,
    "painted_plastic": tex_painted_plastic,
    "cast_metal": tex_cast_metal,
}


def surface(rng, kind, size):
    img = TEXTURES[kind](rng, size).astype(np.float32)
    ang = rng.uniform(-8, 8)
    tx, ty = rng.uniform(-5, 5, 2)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), ang, 1.0)
    m[:, 2] += (tx, ty)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


# ----------------------------------------------------------------------------
# defects: each returns (new_img, mask bool) given a centre
# ----------------------------------------------------------------------------

def _line_layer(size, pts_list, thickness=1, values=None):
    """AA polyline(s) into a float layer in [0,1]; values = per-segment intensity."""
    layer = np.zeros((size, size), np.uint8)
    for j, pts in enumerate(pts_list):
        for i in range(len(pts) - 1):
            v = 255 if values is None else int(255 * values[j][i])
            p0 = tuple(int(round(c * 16)) for c in pts[i])
            p1 = tuple(int(round(c * 16)) for c in pts[i + 1])
            cv2.line(layer, p0, p1, v, thickness, cv2.LINE_AA, shift=4)
    return layer.astype(np.float32) / 255.0


def draw_scratch(rng, img, c):
    size = img.shape[0]
    length = rng.uniform(28, 70)
    th = rng.uniform(0, np.pi)
    d = np.array([math.cos(th), math.sin(th)], np.float32)
    nrm = np.array([-d[1], d[0]], np.float32)
    p0, p2 = c - d * length / 2, c + d * length / 2
    p1 = c + nrm * rng.uniform(-0.12, 0.12) * length
    t = np.linspace(0, 1, 24, dtype=np.float32)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
    taper = np.clip(np.sin(np.pi * np.linspace(0.04, 0.96, 23)) * 1.6, 0.35, 1.0)
    thick = 1 if rng.random() < 0.6 else 2
    layer = _line_layer(size, [pts], thick, [taper])
    mask = layer > 0.3
    local = float(img[mask].mean()) if mask.any() else 0.5
    amp = rng.uniform(0.35, 0.5)
    # a scratch shows as a bright specular line (exposed material); on very bright
    # surfaces the glint saturates and the groove shows darker instead
    if local < 0.8:
        img = alpha_over(img, np.full(3, min(1.0, local + 0.5), np.float32), np.clip(layer * amp * 2.0, 0, 1))
    else:
        img = img * (1 - layer * amp * 1.2)[..., None]
    # thin shadow on one side for 2-px scratches
    if thick == 2:
        sh = np.roll(layer, (int(round(nrm[1])), int(round(nrm[0]))), axis=(0, 1))
        img = img * (1 - 0.15 * np.clip(sh - layer, 0, 1))[..., None]
    return np.clip(img, 0, 1), mask


def draw_dent(rng, img, c):
    size = img.shape[0]
    r = rng.uniform(3.5, 8.0)
    asp = rng.uniform(0.7, 1.0)
    rot = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - c[0], yy - c[1]
    u = (dx * math.cos(rot) + dy * math.sin(rot)) / r
    v = (-dx * math.sin(rot) + dy * math.cos(rot)) / (r * asp)
    d2 = u * u + v * v
    h = -np.exp(-d2 * 1.6)                       # depression height field
    gy, gx = np.gradient(h)
    la = rng.uniform(0, 2 * np.pi)
    shade = -(gx * math.cos(la) + gy * math.sin(la)) * r * rng.uniform(1.1, 1.6)
    ao = np.exp(-d2 * 2.5) * rng.uniform(0.25, 0.45)
    f = np.clip(1 + shade - ao, 0.2, 1.9)
    img = img * f[..., None]
    mask = d2 <= 1.0
    return np.clip(img, 0, 1), mask


def draw_stain(rng, img, c):
    size = img.shape[0]
    R = rng.uniform(8, 20)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = np.sqrt((xx - c[0]) ** 2 + ((yy - c[1]) / rng.uniform(0.6, 1.0)) ** 2) / R
    wob = smooth_noise(rng, size, size, max(3, int(size / R * 0.8)))
    f = 1 - d + 0.35 * wob
    alpha = np.clip(f * 4, 0, 1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 1.0)
    kinds = [(0.55, 0.42, 0.25), (0.45, 0.45, 0.45), (0.75, 0.45, 0.25), (0.35, 0.30, 0.30), (0.75, 0.72, 0.40)]
    col = np.array(kinds[rng.integers(len(kinds))], np.float32)
    strength = rng.uniform(0.55, 0.85)
    ring = np.clip(1 - np.abs(f - 0.08) / 0.08, 0, 1) * rng.uniform(0, 0.35)
    mult = 1 - (alpha * strength)[..., None] * (1 - col) - ring[..., None] * 0.5
    img = img * mult
    mask = alpha > 0.5
    return np.clip(img, 0, 1), mask


def draw_crack(rng, img, c):
    size = img.shape[0]
    length = rng.uniform(26, 62)
    th0 = rng.uniform(0, 2 * np.pi)
    steps = int(length / 3.0)

    def walk(start, th_base, n):
        pts, th, p = [start.copy()], th_base, start.copy()
        for _ in range(n):
            th = th_base + np.clip(th - th_base + rng.normal(0, 0.55), -0.9, 0.9)
            p = p + np.array([math.cos(th), math.sin(th)], np.float32) * rng.uniform(2.0, 4.0)
            pts.append(p.copy())
        return np.array(pts, np.float32)

    start = c - np.array([math.cos(th0), math.sin(th0)], np.float32) * length / 2
    main = walk(start.astype(np.float32), th0, steps)
    paths = [main]
    for _ in range(rng.integers(0, 3)):
        j = int(rng.integers(2, len(main) - 2))
        paths.append(walk(main[j], th0 + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1), int(steps * rng.uniform(0.25, 0.5))))
    vals = [np.clip(1.0 - np.linspace(0, 0.4, len(p) - 1), 0.5, 1.0) for p in paths]
    layer = _line_layer(size, paths, 1, vals)
    if rng.random() < 0.3:  # wider at the origin
        layer = np.maximum(layer, _line_layer(size, [main[: len(main) // 3]], 2) * 0.7)
    mask = layer > 0.3
    dark = rng.uniform(0.6, 0.8)
    img = img * (1 - layer * dark)[..., None]
    if rng.random() < 0.5:  # lit edge
        lit = np.roll(layer, (1, 1), axis=(0, 1))
        img = img + (0.12 * np.clip(lit - layer, 0, 1))[..., None]
    return np.clip(img, 0, 1), mask


DEFECTS = {"scratch": draw_scratch, "dent": draw_dent, "stain": draw_stain, "crack": draw_crack}


# ----------------------------------------------------------------------------
# nuisances
# ----------------------------------------------------------------------------

def _rot_patch(rgba, ang):
    h, w = rgba.shape[:2]
    diag = int(math.ceil(math.hypot(h, w))) + 4
    canvas = np.zeros((diag, diag, 4), np.float32)
    oy, ox = (diag - h) // 2, (diag - w) // 2
    canvas[oy:oy + h, ox:ox + w] = rgba
    m = cv2.getRotationMatrix2D((diag / 2, diag / 2), ang, 1.0)
    return cv2.warpAffine(canvas, m, (diag, diag), flags=cv2.INTER_LINEAR, borderValue=0)


def _paste(img, rgba, x, y, shadow=0.0):
    """Alpha-composite an RGBA patch with top-left at (x, y); returns img, coverage mask."""
    size = img.shape[0]
    ph, pw = rgba.shape[:2]
    layer = np.zeros((size, size, 4), np.float32)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(size, x + pw), min(size, y + ph)
    if x1 <= x0 or y1 <= y0:
        return img, np.zeros((size, size), bool)
    layer[y0:y1, x0:x1] = rgba[y0 - y:y1 - y, x0 - x:x1 - x]
    a = layer[..., 3]
    if shadow > 0:
        sh = cv2.GaussianBlur(np.roll(a, (2, 2), axis=(0, 1)), (0, 0), 1.5)
        img = img * (1 - shadow * sh)[..., None]
    img = alpha_over(img, layer[..., :3], a)
    return img, a > 0.05


def make_sticker(rng):
    w, h = int(rng.integers(24, 42)), int(rng.integers(15, 25))
    papers = [(0.95, 0.95, 0.93), (0.97, 0.88, 0.30), (0.80, 0.90, 0.97), (0.96, 0.96, 0.96)]
    paper = np.array(papers[rng.integers(len(papers))], np.float32)
    rgb = np.ones((h, w, 3), np.float32) * paper
    ink = (0.08, 0.08, 0.1)
    x = 2
    if rng.random() < 0.7:  # barcode on the left part
        bw = int(w * rng.uniform(0.35, 0.55))
        while x < bw:
            t = int(rng.integers(1, 3))
            if rng.random() < 0.55:
                rgb[2:h - 5, x:x + t] = ink
            x += t
    for row in range(int(rng.integers(1, 4))):  # text-like rows
        yy = 2 + row * 4
        if yy + 2 >= h - 1:
            break
        tx = x + 2
        while tx < w - 3:
            t = int(rng.integers(1, 4))
            rgb[yy:yy + 2, tx:tx + t] = ink
            tx += t + int(rng.integers(1, 3))
    cv2.rectangle(rgb, (0, 0), (w - 1, h - 1), tuple(float(c) * 0.85 for c in paper), 1)
    rgba = np.concatenate([rgb, np.ones((h, w, 1), np.float32)], axis=2)
    return _rot_patch(rgba, rng.uniform(-20, 20))


def make_serial(rng, dark_ink):
    txt = rng.choice(["SN", "S/N", "LOT", "P/N"]) + " " + "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(5, 8))))
    if rng.random() < 0.5:
        txt += "-" + "".join(str(d) for d in rng.integers(0, 10, 2))
    font = cv2.FONT_HERSHEY_PLAIN if rng.random() < 0.5 else cv2.FONT_HERSHEY_SIMPLEX
    scale = rng.uniform(0.6, 0.8) if font == cv2.FONT_HERSHEY_PLAIN else rng.uniform(0.28, 0.36)
    (tw, th), base = cv2.getTextSize(txt, font, scale, 1)
    a = np.zeros((th + base + 4, tw + 4), np.uint8)
    cv2.putText(a, txt, (2, th + 2), font, scale, 255, 1, cv2.LINE_AA)
    alpha = a.astype(np.float32) / 255.0 * rng.uniform(0.75, 0.95)
    col = np.array((0.08, 0.08, 0.1) if dark_ink else (0.93, 0.93, 0.9), np.float32)
    rgba = np.concatenate([np.broadcast_to(col, alpha.shape + (3,)), alpha[..., None]], axis=2)
    return _rot_patch(rgba.astype(np.float32), rng.uniform(-10, 10))


def fixture_region(rng, size):
    side = ["top", "bottom", "left", "right"][rng.integers(4)]
    width = int(rng.integers(8, 19))
    slant = rng.uniform(-0.06, 0.06)
    return {"side": side, "width": width, "slant": float(slant)}


def fixture_coverage(fx, size, extra=0):
    """Anti-aliased coverage (0..1) of the fixture clamp; `extra` widens it by that many px."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    w, s = fx["width"] + extra, fx["slant"]
    if fx["side"] == "top":
        d = w + s * (xx - size / 2) - yy
    elif fx["side"] == "bottom":
        d = yy - (size - w + s * (xx - size / 2))
    elif fx["side"] == "left":
        d = w + s * (yy - size / 2) - xx
    else:
        d = xx - (size - w + s * (yy - size / 2))
    return np.clip(d + 0.5, 0, 1)


def fixture_mask(fx, size, extra=0):
    return fixture_coverage(fx, size, extra) > 0


def draw_fixture(rng, img, fx):
    size = img.shape[0]
    m = fixture_coverage(fx, size)
    shadow = cv2.GaussianBlur(fixture_coverage(fx, size, 4), (0, 0), 2.5)
    img = img * (1 - 0.45 * np.clip(shadow - m, 0, 1))[..., None]
    body = rng.uniform(0.12, 0.3)
    tone = np.array([body, body, body * 1.08], np.float32)
    ax = 1 if fx["side"] in ("top", "bottom") else 0
    grad = np.linspace(0.9, 1.1, size, dtype=np.float32)
    grad = grad[None, :] if ax == 1 else grad[:, None]
    col = np.broadcast_to(tone, (size, size, 3)) * grad[..., None]
    col = col + 0.015 * rng.standard_normal((size, size, 1)).astype(np.float32)
    # bright bevel along the inner edge
    bevel = np.clip(m - fixture_coverage(fx, size, -1.5), 0, 1)   # ~1.5 px band along the inner edge
    col = col + (bevel * 0.45)[..., None]
    # a bolt head
    if rng.random() < 0.6:
        t = rng.uniform(0.2, 0.8) * size
        h = fx["width"] / 2
        cx, cy = {"top": (t, h), "bottom": (t, size - h), "left": (h, t), "right": (size - h, t)}[fx["side"]]
        r = max(2, int(fx["width"] * 0.3))
        col = col.copy()
        cv2.circle(col, (int(cx), int(cy)), r, (body + 0.25,) * 3, -1, cv2.LINE_AA)
        cv2.circle(col, (int(cx), int(cy)), max(1, r // 2), (body * 0.5,) * 3, -1, cv2.LINE_AA)
    return alpha_over(img, col, m)


_WM_CACHE = {}


def watermark_rgba(size=SIZE):
    """The fixed burned-in logo: slashed ring + 'QC' + underline, white with a dark outline."""
    if size in _WM_CACHE:
        return _WM_CACHE[size]
    x0, y0, x1, y1 = watermark_box_px(size)
    w, h = x1 - x0, y1 - y0
    a_fill = np.zeros((h, w), np.uint8)
    r = h // 2 - 2
    cv2.circle(a_fill, (r + 2, h // 2), r, 255, 2, cv2.LINE_AA)
    cv2.line(a_fill, (r + 2 - r // 2, h // 2 + r // 2), (r + 2 + r // 2, h // 2 - r // 2), 255, 1, cv2.LINE_AA)
    cv2.putText(a_fill, "QC", (2 * r + 6, h // 2 + 4), cv2.FONT_HERSHEY_PLAIN, 0.75, 255, 1, cv2.LINE_AA)
    cv2.line(a_fill, (2 * r + 6, h - 2), (w - 3, h - 2), 255, 1, cv2.LINE_AA)
    fill = a_fill.astype(np.float32) / 255.0
    outline = cv2.dilate(fill, np.ones((3, 3), np.uint8))
    rgba = np.zeros((h, w, 4), np.float32)
    rgba[..., :3] = fill[..., None] * 1.0                     # white over a dark outline
    rgba[..., 3] = np.maximum(fill * 0.75, outline * 0.45)
    _WM_CACHE[size] = (rgba, (x0, y0))
    return _WM_CACHE[size]


def draw_watermark(img):
    rgba, (x0, y0) = watermark_rgba(img.shape[0])
    h, w = rgba.shape[:2]
    out = img.copy()
    out[y0:y0 + h, x0:x0 + w] = alpha_over(img[y0:y0 + h, x0:x0 + w], rgba[..., :3], rgba[..., 3])
    return out


# ----------------------------------------------------------------------------
# camera
# ----------------------------------------------------------------------------

def camera(rng, img):
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    phi = rng.uniform(0, 2 * np.pi)
    grad = 1 + rng.uniform(0, 0.45) * (xx * math.cos(phi) + yy * math.sin(phi))
    vig = 1 - rng.uniform(0, 0.35) * (xx ** 2 + yy ** 2) * 2
    gain = rng.uniform(0.8, 1.2)
    cast = 1 + rng.normal(0, 0.04, 3).astype(np.float32)
    img = img * (grad * vig * gain)[..., None] * cast
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.9))
    sigma = rng.uniform(0.004, 0.03)
    img = img + rng.normal(0, sigma, img.shape).astype(np.float32)
    img = img + rng.normal(0, sigma * 0.5, (size, size, 1)).astype(np.float32)
    return np.clip(img, 0, 1)


# ----------------------------------------------------------------------------
# scene
# ----------------------------------------------------------------------------

def _box_of(mask):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def render(seed, label, variant="normal", surface_kind=None, force=None, size=SIZE):
    """Render one image. Returns (rgb uint8 HxWx3, mask uint8 HxW (0/255), meta dict).

    force: optional dict overriding nuisance presence, e.g. {"sticker": True, "watermark": False}.
    """
    assert label in LABELS and variant in ("normal", "shortcut")
    rng = np.random.Generator(np.random.PCG64(seed))
    force = force or {}
    kind = surface_kind or SURFACES[int(rng.integers(len(SURFACES)))]
    present = {k: bool(rng.random() < p) for k, p in P_NUISANCE.items()}
    if variant == "shortcut":
        pw = P_WATERMARK_SHORTCUT["ok" if label == "ok" else "defect"]
        present["watermark"] = bool(rng.random() < pw)
    present.update({k: bool(v) for k, v in force.items()})

    img = surface(rng, kind, size)

    wx0, wy0, wx1, wy1 = watermark_box_px(size)
    forbidden = np.zeros((size, size), bool)
    forbidden[max(0, wy0 - 3):wy1 + 3, max(0, wx0 - 3):wx1 + 3] = True
    fx = fixture_region(rng, size) if present["fixture"] else None
    if fx is not None:
        forbidden |= fixture_mask(fx, size, extra=4)

    mask = np.zeros((size, size), bool)
    if label != "ok":
        for _ in range(60):
            c = rng.uniform(14, size - 14, 2).astype(np.float32)
            trial, m = DEFECTS[label](rng, img, c)
            if m.sum() >= 6 and not (m & forbidden).any() and not m[:2].any() and not m[-2:].any() \
                    and not m[:, :2].any() and not m[:, -2:].any():
                img, mask = trial, m
                break
        else:
            raise RuntimeError(f"could not place {label} for seed {seed}")

    meta = {"seed": int(seed), "label": label, "variant": variant, "surface": kind,
            "sticker": None, "serial": None, "fixture": None, "watermark": False}
    keep_out = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    if present["sticker"]:
        patch = make_sticker(rng)
        for _ in range(30):
            ph, pw = patch.shape[:2]
            x, y = int(rng.integers(-pw // 4, size - 3 * pw // 4)), int(rng.integers(-ph // 4, size - 3 * ph // 4))
            trial, cov = _paste(img, patch, x, y, shadow=0.35)
            if cov.sum() > 80 and not (cov & keep_out).any():
                img = trial
                meta["sticker"] = _box_of(cov)
                keep_out |= cov
                break
    if present["serial"]:
        for _ in range(30):
            patch = None
            x, y = int(rng.integers(0, size - 40)), int(rng.integers(0, size - 14))
            local = float(img[y:y + 12, x:x + 40].mean())
            patch = make_serial(rng, dark_ink=local > 0.42)
            ph, pw = patch.shape[:2]
            x = min(x, size - pw + 4)
            trial, cov = _paste(img, patch, x, y)
            if cov.sum() > 20 and not (cov & keep_out).any():
                img = trial
                meta["serial"] = _box_of(cov)
                keep_out |= cov
                break
    if fx is not None:
        img = draw_fixture(rng, img, fx)
        meta["fixture"] = dict(fx, box=_box_of(fixture_mask(fx, size)))

    img = camera(rng, img)
    if present["watermark"]:
        img = draw_watermark(img)
        meta["watermark"] = True

    rgb = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return rgb, (mask.astype(np.uint8) * 255), meta


def make_arrays(seed_base, n, variant="normal"):
    """n images with seeds seed_base..seed_base+n-1, labels cycling through LABELS."""
    xs = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    ms = np.zeros((n, SIZE, SIZE), np.uint8)
    ys = np.zeros(n, np.int64)
    metas = []
    for i in range(n):
        lab = LABELS[i % len(LABELS)]
        xs[i], ms[i], meta = render(seed_base + i, lab, variant)
        ys[i] = i % len(LABELS)
        metas.append(meta)
    return xs, ms, ys, metas


def _write_png(path, arr):
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    cv2.imwrite(path, arr, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def write_item(out, stem, rgb, mask, meta, extra_masks=None):
    d = os.path.join(out, meta["label"])
    os.makedirs(d, exist_ok=True)
    _write_png(os.path.join(d, stem + ".png"), rgb)
    if meta["label"] != "ok":
        _write_png(os.path.join(d, stem + ".mask.png"), mask)
    for suffix, m in (extra_masks or {}).items():
        _write_png(os.path.join(d, stem + suffix), m)
    return {"file": f"{meta['label']}/{stem}.png", **meta}


def cmd_write(args):
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for i in range(args.n):
        lab = LABELS[i % len(LABELS)]
        seed = args.seed + i
        rgb, mask, meta = render(seed, lab, args.variant)
        # Where the watermark is drawn, its box as <stem>.watermark.png (for inspectd validate's
        # nuisance rate).
        extra = ({".watermark.png": watermark_mask()}
                 if args.watermark_masks and meta.get("watermark") else None)
        rows.append(write_item(args.out, f"{args.variant[0]}{seed}", rgb, mask, meta, extra))
    with open(os.path.join(args.out, "manifest.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} images to {args.out}")


def watermark_mask(size=SIZE):
    m = np.zeros((size, size), np.uint8)
    x0, y0, x1, y1 = watermark_box_px(size)
    m[y0:y1, x0:x1] = 255
    return m


def cmd_samples(args):
    """Curated samples: every class on every surface kind, every nuisance kind shown."""
    rows = []
    # 5 surfaces x 5 labels = 25 images, nuisances rotated through so each appears several times
    nuis = [{"sticker": True}, {"serial": True}, {"fixture": True}, {"watermark": True},
            {"sticker": True, "watermark": True}, {}, {"serial": True, "fixture": True}]
    k = 0
    for si, kind in enumerate(SURFACES):
        for li, lab in enumerate(LABELS):
            f = {"sticker": False, "serial": False, "fixture": False, "watermark": False}
            f.update(nuis[k % len(nuis)])
            seed = 9_000_000 + 100 * si + li
            rgb, mask, meta = render(seed, lab, "normal", surface_kind=kind, force=f)
            rows.append(write_item(args.out, f"{kind}_{lab}", rgb, mask, meta))
            k += 1
    # 5 extra with all nuisances at once, one per defect class + ok
    for li, lab in enumerate(LABELS):
        kind = SURFACES[(li + 2) % len(SURFACES)]
        seed = 9_100_000 + li
        rgb, mask, meta = render(seed, lab, "normal", surface_kind=kind,
                                 force={"sticker": True, "serial": True, "fixture": True, "watermark": True})
        rows.append(write_item(args.out, f"all-nuisances_{kind}_{lab}", rgb, mask, meta))
    with open(os.path.join(args.out, "manifest.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} samples to {args.out}")

    if args.out_shortcut:
        rows = []
        for li, lab in enumerate(LABELS):
            for j in range(2):
                seed = 9_200_000 + 10 * li + j
                rgb, mask, meta = render(seed, lab, "shortcut")
                rows.append(write_item(args.out_shortcut, f"shortcut_{lab}_{j}", rgb, mask, meta,
                                       {".watermark.png": watermark_mask()}))
        with open(os.path.join(args.out_shortcut, "manifest.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"wrote {len(rows)} shortcut samples to {args.out_shortcut}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write N images as OUT/<label>/<stem>.png (+ .mask.png)")
    w.add_argument("--out", required=True)
    w.add_argument("--n", type=int, default=2000)
    w.add_argument("--seed", type=int, default=1_000_000)
    w.add_argument("--variant", choices=["normal", "shortcut"], default="normal")
    w.add_argument("--watermark-masks", action="store_true",
                   help="also write <stem>.watermark.png where the watermark is drawn")
    s = sub.add_parser("samples", help="write the curated sample set")
    s.add_argument("--out", required=True)
    s.add_argument("--out-shortcut", default=None)
    args = ap.parse_args(argv)
    {"write": cmd_write, "samples": cmd_samples}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
