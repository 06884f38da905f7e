//! Maps to pictures: bilinear up-sampling, the jet colormap, overlays on frames, 8-bit PNG maps
//! and JPEG evidence. Pure functions of their inputs.

use std::io::Cursor;

use anyhow::Result;
use image::{ImageFormat, RgbImage};

use crate::tensor::Tensor;

/// The region of the original frame the model saw, in frame pixels (made by
/// `model::preprocess::fit`; overlays draw the map back onto it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Crop {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

/// Bilinear resize with half-pixel centres (OpenCV / PIL convention), edges clamped.
pub fn resize_bilinear(map: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    // Source index pairs and weights along one axis, computed once per axis, not per pixel.
    let taps = |n: usize, on: usize| -> Vec<(usize, usize, f32)> {
        (0..on)
            .map(|o| {
                let f = ((o as f32 + 0.5) * n as f32 / on as f32 - 0.5).max(0.0);
                let i0 = (f as usize).min(n - 1);
                (i0, (i0 + 1).min(n - 1), f - i0 as f32)
            })
            .collect()
    };
    let (ys, xs) = (taps(h, oh), taps(w, ow));
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, dy) in &ys {
        let (r0, r1) = (&map[y0 * w..][..w], &map[y1 * w..][..w]);
        out.extend(xs.iter().map(|&(x0, x1, dx)| {
            let top = r0[x0] + (r0[x1] - r0[x0]) * dx;
            let bot = r1[x0] + (r1[x1] - r1[x0]) * dx;
            top + (bot - top) * dy
        }));
    }
    out
}

/// The jet colormap: 0 → dark blue, 0.5 → green, 1 → dark red.
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let ch = |c: f32| ((1.5 - (4.0 * v - c).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [ch(3.0), ch(2.0), ch(1.0)]
}

/// Blends the jet-coloured map over `frame`. The map covers `crop` (the part of the frame the
/// model saw); `alpha` is the heatmap's weight.
///
/// Runs per frame in the daemon, so it works in fixed point: the map is quantized to 256 levels
/// looked up in a precomputed jet table, and the blend is integer (8-bit weights).
pub fn overlay(frame: &RgbImage, map: &Tensor, crop: Crop, alpha: f32) -> RgbImage {
    let (fw, fh) = frame.dimensions();
    let (mh, mw) = (map.shape()[0], map.shape()[1]);
    let (cx, cy) = (crop.x.round() as u32, crop.y.round() as u32);
    if cx >= fw || cy >= fh {
        return frame.clone();
    }
    let cw = (crop.w.round() as u32).min(fw - cx).max(1) as usize;
    let ch = (crop.h.round() as u32).min(fh - cy).max(1) as usize;
    let up = resize_bilinear(map.data(), mh, mw, ch, cw);
    // The blend, precomputed: a * jet colour (+ rounding) per level, and (256 - a) for the frame.
    let a = (alpha.clamp(0.0, 1.0) * 256.0) as u32;
    let lut: Vec<[u32; 3]> = (0..256)
        .map(|i| jet(i as f32 / 255.0).map(|c| a * c as u32 + 128))
        .collect();
    let keep = 256 - a;
    let mut out = frame.clone();
    let stride = fw as usize * 3;
    let buf: &mut [u8] = &mut out;
    for y in 0..ch {
        let row = &mut buf[(cy as usize + y) * stride + cx as usize * 3..][..cw * 3];
        for (px, &v) in row.chunks_exact_mut(3).zip(&up[y * cw..(y + 1) * cw]) {
            // `as` saturates: negative values land on level 0.
            let c = &lut[((v * 255.0 + 0.5) as usize).min(255)];
            for k in 0..3 {
                px[k] = ((keep * px[k] as u32 + c[k]) >> 8) as u8;
            }
        }
    }
    out
}

/// Map values below this are not drawn at all: the frame shows through unchanged.
pub const FLOOR: f32 = 0.2;
/// Opacity of the heat colour at the map's peak (1.0); it rises linearly from 0 at [`FLOOR`].
pub const MAX_ALPHA: f32 = 0.7;
/// Map levels outlined by a contour line (white, 1 px, on the inside of the level).
pub const CONTOURS: [f32; 2] = [0.5, 0.8];
/// Outline colour of the region of interest.
pub const ROI_COLOUR: [u8; 3] = [0, 230, 0];
/// Outline colour of the ignore zones.
pub const IGNORE_COLOUR: [u8; 3] = [255, 0, 255];
const CONTOUR_COLOUR: [u8; 3] = [255, 255, 255];

/// The verdict's zones to outline on an overlay: polygons in normalized coordinates (0..1) of
/// the model's view of the frame (the [`Crop`]), as the verdict rules have them.
#[derive(Clone, Debug, Default)]
pub struct Zones<'a> {
    pub roi: Option<&'a [[f32; 2]]>,
    pub ignore: Vec<&'a [[f32; 2]]>,
}

/// Opacity of the heat colour at map value `v`: 0 up to [`FLOOR`], then rising linearly to
/// [`MAX_ALPHA`] at 1.
pub fn heat_alpha(v: f32) -> f32 {
    let v = v.clamp(0.0, 1.0);
    if v < FLOOR {
        0.0
    } else {
        MAX_ALPHA * (v - FLOOR) / (1.0 - FLOOR)
    }
}

/// 8-bit map level of a value (negative and NaN land on 0, above 1 on 255).
fn level(v: f32) -> u8 {
    ((v * 255.0 + 0.5) as usize).min(255) as u8
}

/// The heat blend per 8-bit level: the frame's weight (0..=256) and the colour's share
/// (premultiplied, with rounding) — a level below the floor keeps the frame exactly.
struct HeatLut {
    keep: [u32; 256],
    add: [[u32; 3]; 256],
}

impl HeatLut {
    fn new() -> HeatLut {
        let mut lut = HeatLut {
            keep: [256; 256],
            add: [[128; 3]; 256],
        };
        for i in 0..256 {
            let v = i as f32 / 255.0;
            let a = (heat_alpha(v) * 256.0).round() as u32;
            lut.keep[i] = 256 - a;
            lut.add[i] = jet(v).map(|c| a * c as u32 + 128);
        }
        lut
    }

    #[inline]
    fn blend(&self, px: &mut [u8], l: u8) {
        let (keep, add) = (self.keep[l as usize], &self.add[l as usize]);
        if keep == 256 {
            return;
        }
        for k in 0..3 {
            px[k] = ((keep * px[k] as u32 + add[k]) >> 8) as u8;
        }
    }
}

/// The crop in whole pixels, clipped to a `fw`×`fh` image; `None` when it misses the image.
fn crop_px(crop: Crop, fw: u32, fh: u32) -> Option<(usize, usize, usize, usize)> {
    let (cx, cy) = (
        crop.x.round().max(0.0) as u32,
        crop.y.round().max(0.0) as u32,
    );
    if cx >= fw || cy >= fh {
        return None;
    }
    let cw = (crop.w.round() as u32).min(fw - cx).max(1) as usize;
    let ch = (crop.h.round() as u32).min(fh - cy).max(1) as usize;
    Some((cx as usize, cy as usize, cw, ch))
}

/// Paints the map over `img` where it matters: nothing below [`FLOOR`] (the frame keeps its
/// exact colour), then jet with an opacity rising with the value, and a contour line at each of
/// [`CONTOURS`]. The map covers `crop`.
pub fn paint_heat(img: &mut RgbImage, map: &Tensor, crop: Crop) {
    let (fw, fh) = img.dimensions();
    let Some((cx, cy, cw, ch)) = crop_px(crop, fw, fh) else {
        return;
    };
    let (mh, mw) = (map.shape()[0], map.shape()[1]);
    let q: Vec<u8> = resize_bilinear(map.data(), mh, mw, ch, cw)
        .into_iter()
        .map(level)
        .collect();
    let lut = HeatLut::new();
    let lines = CONTOURS.map(level);
    let stride = fw as usize * 3;
    let buf: &mut [u8] = img;
    for y in 0..ch {
        let row = &mut buf[(cy + y) * stride + cx * 3..][..cw * 3];
        let qr = &q[y * cw..][..cw];
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let l = qr[x];
            // A contour pixel: at or above a level with a 4-neighbour below it (inside the map).
            let on_line = l >= lines[0]
                && lines.iter().any(|&t| {
                    l >= t
                        && ((x > 0 && qr[x - 1] < t)
                            || (x + 1 < cw && qr[x + 1] < t)
                            || (y > 0 && q[(y - 1) * cw + x] < t)
                            || (y + 1 < ch && q[(y + 1) * cw + x] < t))
                });
            if on_line {
                px.copy_from_slice(&CONTOUR_COLOUR);
            } else {
                lut.blend(px, l);
            }
        }
    }
}

/// The frame with the map painted over its crop by [`paint_heat`].
pub fn overlay_heat(frame: &RgbImage, map: &Tensor, crop: Crop) -> RgbImage {
    let mut out = frame.clone();
    paint_heat(&mut out, map, crop);
    out
}

/// Sets a `width`-px dot centred on (x, y), clipped to the image.
fn dot(img: &mut RgbImage, x: i64, y: i64, width: i64, colour: [u8; 3]) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let r0 = -(width - 1) / 2;
    for dy in r0..r0 + width {
        for dx in r0..r0 + width {
            let (px, py) = (x + dx, y + dy);
            if (0..w).contains(&px) && (0..h).contains(&py) {
                img.put_pixel(px as u32, py as u32, image::Rgb(colour));
            }
        }
    }
}

/// Outlines a polygon given in normalized coordinates of `crop` (closed, `width` px lines).
/// With `dash` the outline is drawn in dashes of that many pixels.
pub fn draw_polygon(
    img: &mut RgbImage,
    poly: &[[f32; 2]],
    crop: Crop,
    width: u32,
    colour: [u8; 3],
    dash: Option<u32>,
) {
    if poly.len() < 2 {
        return;
    }
    let (w, h) = (img.width() as f32, img.height() as f32);
    // Normalized 1.0 is the crop's far edge: keep it on the last pixel inside.
    let to_px = |[x, y]: [f32; 2]| {
        (
            (crop.x + x.clamp(0.0, 1.0) * crop.w).clamp(0.0, w - 1.0),
            (crop.y + y.clamp(0.0, 1.0) * crop.h).clamp(0.0, h - 1.0),
        )
    };
    let mut n = 0u32;
    for i in 0..poly.len() {
        let (x0, y0) = to_px(poly[i]);
        let (x1, y1) = to_px(poly[(i + 1) % poly.len()]);
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as u32;
        for s in 0..=steps {
            let t = s as f32 / steps as f32;
            let on = dash.is_none_or(|d| (n / d.max(1)).is_multiple_of(2));
            if on {
                let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
                dot(
                    img,
                    x.round() as i64,
                    y.round() as i64,
                    width as i64,
                    colour,
                );
            }
            n += 1;
        }
    }
}

/// Outlines the verdict's zones on an overlay: the ROI solid green, ignore zones dashed magenta.
pub fn draw_zones(img: &mut RgbImage, zones: &Zones, crop: Crop) {
    let width = (img.width().max(img.height()) / 240).max(1);
    if let Some(roi) = zones.roi {
        draw_polygon(img, roi, crop, width, ROI_COLOUR, None);
    }
    for z in &zones.ignore {
        draw_polygon(img, z, crop, width, IGNORE_COLOUR, Some(4 * width));
    }
}

/// Background of the legend bar (a map value below the floor shows it unchanged).
pub const LEGEND_BACKGROUND: [u8; 3] = [48, 48, 48];

/// Draws the colour legend into the bottom-left corner: a bar from map value 0 (left) to 1
/// (right), blended over a dark background exactly as [`paint_heat`] blends over a frame (so
/// its left part, below the floor, stays dark), framed in white, with ticks at [`CONTOURS`].
/// The bar's place is returned as (x, y, width, height) of its inside.
pub fn draw_legend(img: &mut RgbImage) -> (u32, u32, u32, u32) {
    let (w, h) = img.dimensions();
    if w < 8 || h < 8 {
        return (0, 0, 0, 0);
    }
    let bw = (w / 3).clamp(6, 160).min(w - 4);
    let bh = (h / 24).clamp(4, 12).min(h - 4);
    let (x0, y0) = (2, h - bh - 2);
    let lut = HeatLut::new();
    let ticks = CONTOURS.map(|c| (c * (bw - 1) as f32).round() as u32);
    for i in 0..bw {
        let l = level(i as f32 / (bw - 1).max(1) as f32);
        let mut px = LEGEND_BACKGROUND;
        lut.blend(&mut px, l);
        for j in 0..bh {
            let tick = ticks.contains(&i) && j < bh / 2;
            let c = if tick { CONTOUR_COLOUR } else { px };
            img.put_pixel(x0 + i, y0 + j, image::Rgb(c));
        }
    }
    // A 1 px white frame around the bar.
    let (l, r) = (x0 as i64 - 1, (x0 + bw) as i64);
    let (t, b) = (y0 as i64 - 1, (y0 + bh) as i64);
    for x in l..=r {
        dot(img, x, t, 1, CONTOUR_COLOUR);
        dot(img, x, b, 1, CONTOUR_COLOUR);
    }
    for y in t..=b {
        dot(img, l, y, 1, CONTOUR_COLOUR);
        dot(img, r, y, 1, CONTOUR_COLOUR);
    }
    (x0, y0, bw, bh)
}

/// The full rendering of a map over a frame: heat ([`paint_heat`]), the zones' outlines and the
/// legend.
pub fn render_overlay(frame: &RgbImage, map: &Tensor, crop: Crop, zones: &Zones) -> RgbImage {
    let mut out = frame.clone();
    paint_heat(&mut out, map, crop);
    draw_zones(&mut out, zones, crop);
    draw_legend(&mut out);
    out
}

/// Scales a crop from an image of `from` to one of `to` pixels.
pub fn scale_crop(crop: Crop, from: (u32, u32), to: (u32, u32)) -> Crop {
    let (sx, sy) = (
        to.0 as f32 / from.0.max(1) as f32,
        to.1 as f32 / from.1.max(1) as f32,
    );
    Crop {
        x: crop.x * sx,
        y: crop.y * sy,
        w: crop.w * sx,
        h: crop.h * sy,
    }
}

/// Gap between the two panes of the evidence picture, in pixels.
pub const EVIDENCE_GAP: u32 = 4;

/// The map at feature resolution as an 8-bit grayscale PNG (0..1 → 0..255).
pub fn map_png(map: &Tensor) -> Result<Vec<u8>> {
    let (h, w) = (map.shape()[0] as u32, map.shape()[1] as u32);
    let px: Vec<u8> = map
        .data()
        .iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let img = image::GrayImage::from_raw(w, h, px).ok_or_else(|| anyhow::anyhow!("map size"))?;
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png)?;
    Ok(buf.into_inner())
}

/// Largest map side [`map_from_png`] accepts: maps are at feature resolution (7 to 64 cells a
/// side for the shipped models), so anything near this is not a CAM map.
pub const MAX_MAP_SIDE: u32 = 1024;

/// Decodes an 8-bit grayscale PNG map back to 0..1 values `[H, W]`. A PNG declaring more than
/// [`MAX_MAP_SIDE`] a side is refused before its pixels are allocated (a 48 KB PNG can declare
/// 50 M pixels).
pub fn map_from_png(bytes: &[u8]) -> Result<Tensor> {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_MAP_SIDE);
    limits.max_image_height = Some(MAX_MAP_SIDE);
    // The decoded pixels (up to 16-bit RGBA) plus slack.
    limits.max_alloc = Some(MAX_MAP_SIDE as u64 * MAX_MAP_SIDE as u64 * 8 + (1 << 20));
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), ImageFormat::Png);
    reader.limits(limits);
    let img = reader.decode()?.into_luma8();
    let (w, h) = img.dimensions();
    Ok(Tensor::new(
        vec![h as usize, w as usize],
        img.pixels().map(|p| p.0[0] as f32 / 255.0).collect(),
    ))
}

/// Encodes an RGB image as PNG.
pub fn png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png)?;
    Ok(buf.into_inner())
}

/// Encodes an RGB image as JPEG at `quality` (1..100), 4:2:0 below quality 90.
pub fn jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let (w, h) = img.dimensions();
    let (w, h) = (
        u16::try_from(w).map_err(|_| anyhow::anyhow!("image too wide for JPEG: {w} px"))?,
        u16::try_from(h).map_err(|_| anyhow::anyhow!("image too tall for JPEG: {h} px"))?,
    );
    let mut buf = Vec::with_capacity(w as usize * h as usize / 4 + 1024);
    jpeg_encoder::Encoder::new(&mut buf, quality.clamp(1, 100)).encode(
        img.as_raw(),
        w,
        h,
        jpeg_encoder::ColorType::Rgb,
    )?;
    Ok(buf)
}

/// Longest side of each pane of the evidence picture.
pub(crate) const EVIDENCE_SIDE: u32 = 320;

/// The evidence picture of a verdict, side by side: the raw frame (left) and the same frame
/// with the map ([`render_overlay`]: heat, contours, the verdict's zones, legend) on the right,
/// each at most [`EVIDENCE_SIDE`] px a side, [`EVIDENCE_GAP`] px of black between them. The
/// frame is shrunk once and both panes made from that thumbnail (the crop scaled alike), so a
/// large frame never costs a second full-resolution copy.
pub fn evidence_image(frame: &RgbImage, map: &Tensor, crop: Crop, zones: &Zones) -> RgbImage {
    let small = thumbnail(frame, EVIDENCE_SIDE);
    let crop = scale_crop(crop, frame.dimensions(), small.dimensions());
    let (w, h) = small.dimensions();
    let mut out = RgbImage::new(2 * w + EVIDENCE_GAP, h);
    let right = render_overlay(&small, map, crop, zones);
    let stride = out.width() as usize * 3;
    let (row_bytes, off) = (w as usize * 3, (w + EVIDENCE_GAP) as usize * 3);
    let buf: &mut [u8] = &mut out;
    for ((dst, raw), ov) in buf
        .chunks_exact_mut(stride)
        .zip(small.as_raw().chunks_exact(row_bytes))
        .zip(right.as_raw().chunks_exact(row_bytes))
    {
        dst[..row_bytes].copy_from_slice(raw);
        dst[off..off + row_bytes].copy_from_slice(ov);
    }
    out
}

/// [`evidence_image`] as a JPEG (quality 80): what `evidence/{seq}` carries.
pub fn evidence_jpeg(frame: &RgbImage, map: &Tensor, crop: Crop, zones: &Zones) -> Result<Vec<u8>> {
    jpeg(&evidence_image(frame, map, crop, zones), 80)
}

/// A map rendered on its own (no frame): [`paint_heat`] over a dark `side`×`side` square, with
/// the legend — what the supervisor shows when it has the map but no evidence picture.
pub fn map_image(map: &Tensor, side: u32) -> RgbImage {
    let side = side.max(1);
    let mut img = RgbImage::from_pixel(side, side, image::Rgb(LEGEND_BACKGROUND));
    let crop = Crop {
        x: 0.0,
        y: 0.0,
        w: side as f32,
        h: side as f32,
    };
    paint_heat(&mut img, map, crop);
    draw_legend(&mut img);
    img
}

/// A thumbnail no larger than `max_side` on either side.
pub fn thumbnail(img: &RgbImage, max_side: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w <= max_side && h <= max_side {
        return img.clone();
    }
    let s = max_side as f32 / w.max(h) as f32;
    let (nw, nh) = (
        ((w as f32 * s).round() as u32).max(1),
        ((h as f32 * s).round() as u32).max(1),
    );
    image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn jet_runs_blue_green_red() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(0.5), [128, 255, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
    }

    #[test]
    fn map_png_round_trips_at_8_bits() {
        let m = Tensor::new(vec![2, 3], vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        let back = map_from_png(&map_png(&m).unwrap()).unwrap();
        assert_eq!(back.shape(), &[2, 3]);
        for (a, b) in m.data().iter().zip(back.data()) {
            assert!((a - b).abs() <= 0.5 / 255.0 + 1e-6);
        }
    }

    #[test]
    fn resize_interpolates_between_cell_centres() {
        // 2 cells → 4 pixels: centres of the outer pixels clamp, inner ones mix 3:1.
        let up = resize_bilinear(&[0.0, 1.0], 1, 2, 1, 4);
        let want = [0.0, 0.25, 0.75, 1.0];
        for (a, b) in up.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{up:?}");
        }
    }

    #[test]
    fn resize_of_a_constant_map_is_constant() {
        let up = resize_bilinear(&[0.3; 4], 2, 2, 5, 7);
        assert!(up.iter().all(|&v| (v - 0.3).abs() < 1e-6));
    }

    #[test]
    fn overlay_only_touches_the_crop() {
        let frame = RgbImage::from_pixel(10, 4, Rgb([10, 20, 30]));
        let map = Tensor::new(vec![1, 1], vec![1.0]);
        let out = overlay(
            &frame,
            &map,
            Crop {
                x: 3.0,
                y: 0.0,
                w: 4.0,
                h: 4.0,
            },
            0.5,
        );
        assert_eq!(out.get_pixel(0, 0), &Rgb([10, 20, 30]));
        assert_ne!(out.get_pixel(4, 2), &Rgb([10, 20, 30]));
    }

    #[test]
    fn overlay_blends_the_jet_colour_at_alpha() {
        let frame = RgbImage::from_pixel(4, 4, Rgb([10, 20, 30]));
        let map = Tensor::new(vec![1, 1], vec![1.0]);
        let crop = Crop {
            x: 0.0,
            y: 0.0,
            w: 4.0,
            h: 4.0,
        };
        // jet(1) = (128, 0, 0); half and half, rounded.
        assert_eq!(
            overlay(&frame, &map, crop, 0.5).get_pixel(2, 2),
            &Rgb([69, 10, 15])
        );
        assert_eq!(
            overlay(&frame, &map, crop, 0.0).get_pixel(2, 2),
            &Rgb([10, 20, 30])
        );
    }

    fn full(w: u32, h: u32) -> Crop {
        Crop {
            x: 0.0,
            y: 0.0,
            w: w as f32,
            h: h as f32,
        }
    }

    #[test]
    fn heat_is_transparent_below_the_floor_and_rises_to_max_alpha() {
        assert_eq!(heat_alpha(0.0), 0.0);
        assert_eq!(heat_alpha(FLOOR - 0.01), 0.0);
        assert!((heat_alpha(1.0) - MAX_ALPHA).abs() < 1e-6);
        let mut last = 0.0;
        for i in 0..=100 {
            let a = heat_alpha(i as f32 / 100.0);
            assert!(a >= last);
            last = a;
        }
    }

    #[test]
    fn a_low_pixel_keeps_the_frame_colour_exactly_and_a_high_one_is_coloured() {
        let frame = RgbImage::from_pixel(8, 1, Rgb([90, 140, 200]));
        // Left half cold (0.1), right half hot (1.0); 8 cells → 8 pixels, no interpolation.
        let map = Tensor::new(vec![1, 8], vec![0.1, 0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 1.0]);
        let out = overlay_heat(&frame, &map, full(8, 1));
        for x in 0..3 {
            assert_eq!(out.get_pixel(x, 0), &Rgb([90, 140, 200]), "x {x}");
        }
        // Away from the contour (at x = 4), the hot pixels are jet(1) at MAX_ALPHA.
        let want: Vec<u8> = [90u8, 140, 200]
            .iter()
            .zip(jet(1.0))
            .map(|(&f, c)| (f as f32 * (1.0 - MAX_ALPHA) + c as f32 * MAX_ALPHA).round() as u8)
            .collect();
        for x in 5..8 {
            let got = out.get_pixel(x, 0).0;
            for k in 0..3 {
                assert!(
                    (got[k] as i32 - want[k] as i32).abs() <= 1,
                    "{got:?} vs {want:?}"
                );
            }
        }
    }

    #[test]
    fn contour_lines_run_inside_each_level() {
        let frame = RgbImage::from_pixel(20, 3, Rgb([0, 0, 0]));
        // A ramp 0 → 0.95 along x: 20 cells, 20 pixels.
        let ramp: Vec<f32> = (0..60).map(|i| (i % 20) as f32 * 0.05).collect();
        let out = overlay_heat(&frame, &Tensor::new(vec![3, 20], ramp), full(20, 3));
        let white: Vec<u32> = (0..20)
            .filter(|&x| out.get_pixel(x, 1).0 == CONTOUR_COLOUR)
            .collect();
        // First pixels at or above 0.5 (x = 10) and 0.8 (x = 16).
        assert_eq!(white, vec![10, 16]);
    }

    #[test]
    fn zones_are_outlined_on_the_crop_in_normalized_coordinates() {
        let mut img = RgbImage::from_pixel(100, 60, Rgb([0, 0, 0]));
        // The model saw the right half.
        let crop = Crop {
            x: 50.0,
            y: 0.0,
            w: 50.0,
            h: 60.0,
        };
        let roi = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]];
        let zone = [[0.6, 0.6], [1.0, 0.6], [1.0, 1.0], [0.6, 1.0]];
        let zones = Zones {
            roi: Some(&roi),
            ignore: vec![&zone],
        };
        draw_zones(&mut img, &zones, crop);
        // ROI corners at frame (50, 0) and (75, 30); inside and left half untouched.
        assert_eq!(img.get_pixel(50, 10).0, ROI_COLOUR);
        assert_eq!(img.get_pixel(75, 10).0, ROI_COLOUR);
        assert_eq!(img.get_pixel(60, 30).0, ROI_COLOUR);
        assert_eq!(img.get_pixel(62, 15).0, [0, 0, 0]);
        assert!((0..50).all(|x| (0..60).all(|y| img.get_pixel(x, y).0 == [0, 0, 0])));
        // The ignore zone's bottom edge sits on the last row; dashed: some pixels, some gaps.
        let edge: Vec<bool> = (80..100)
            .map(|x| img.get_pixel(x, 59).0 == IGNORE_COLOUR)
            .collect();
        assert!(
            edge.iter().any(|&b| b) && edge.iter().any(|&b| !b),
            "{edge:?}"
        );
    }

    #[test]
    fn the_legend_runs_from_background_to_hot_in_the_bottom_left_corner() {
        let mut img = RgbImage::from_pixel(240, 120, Rgb([200, 200, 200]));
        let (x, y, w, h) = draw_legend(&mut img);
        assert!(x + w < 120 && y > 100 && h >= 4, "{x} {y} {w} {h}");
        let mid = y + h - 1;
        // Below the floor: the bare background; at 1: jet(1) at MAX_ALPHA over it.
        assert_eq!(img.get_pixel(x, mid).0, LEGEND_BACKGROUND);
        let hot = img.get_pixel(x + w - 1, mid).0;
        assert!(hot[0] > 80 && hot[1] < 40 && hot[2] < 40, "{hot:?}");
        // The frame around it is white, the rest of the image untouched.
        assert_eq!(img.get_pixel(x - 1, mid).0, CONTOUR_COLOUR);
        assert_eq!(img.get_pixel(200, 20).0, [200, 200, 200]);
        // Tiny images get no legend (and no panic).
        let mut tiny = RgbImage::new(5, 5);
        assert_eq!(draw_legend(&mut tiny), (0, 0, 0, 0));
    }

    #[test]
    fn evidence_is_the_raw_thumbnail_beside_the_overlay() {
        let frame = RgbImage::from_pixel(1000, 600, Rgb([10, 20, 30]));
        let map = Tensor::new(vec![1, 1], vec![1.0]);
        // The map covers the right half of the frame only.
        let crop = Crop {
            x: 500.0,
            y: 0.0,
            w: 500.0,
            h: 600.0,
        };
        let roi = [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]];
        let zones = Zones {
            roi: Some(&roi),
            ignore: vec![],
        };
        let img = evidence_image(&frame, &map, crop, &zones);
        assert_eq!(img.dimensions(), (2 * 320 + EVIDENCE_GAP, 192));
        // Left pane: the frame untouched, hot map or not.
        assert!((0..320).all(|x| img.get_pixel(x, 96).0 == [10, 20, 30]));
        // Right pane: the frame where the map is not (its left half), hot colour on the crop,
        // the ROI outline on it.
        let right = 320 + EVIDENCE_GAP;
        assert_eq!(img.get_pixel(right + 40, 60).0, [10, 20, 30]);
        let hot = img.get_pixel(right + 240, 60).0;
        assert!(hot[0] > 60 && hot[2] < 30, "{hot:?}");
        assert_eq!(img.get_pixel(right + 160 + 16, 96).0, ROI_COLOUR);
        // And it encodes as one JPEG of that size.
        let jpg = evidence_jpeg(&frame, &map, crop, &zones).unwrap();
        let back = image::load_from_memory_with_format(&jpg, ImageFormat::Jpeg).unwrap();
        assert_eq!((back.width(), back.height()), img.dimensions());
    }

    #[test]
    fn a_map_alone_is_drawn_on_a_dark_square_with_its_legend() {
        let mut t = Tensor::zeros(&[4, 4]);
        t.data_mut()[5] = 1.0;
        let img = map_image(&t, 64);
        assert_eq!(img.dimensions(), (64, 64));
        assert_eq!(img.get_pixel(63, 0).0, LEGEND_BACKGROUND);
        let hot = img.get_pixel(24, 24).0;
        assert!(hot[0] > hot[2], "{hot:?}");
    }

    #[test]
    fn a_map_png_declaring_too_many_pixels_is_refused() {
        let big = image::GrayImage::new(MAX_MAP_SIDE + 1, 2);
        let mut png = Cursor::new(Vec::new());
        big.write_to(&mut png, ImageFormat::Png).unwrap();
        assert!(map_from_png(png.get_ref()).is_err());
        let ok = image::GrayImage::new(MAX_MAP_SIDE, 2);
        let mut png = Cursor::new(Vec::new());
        ok.write_to(&mut png, ImageFormat::Png).unwrap();
        assert_eq!(map_from_png(png.get_ref()).unwrap().shape(), &[2, 1024]);
    }

    #[test]
    fn jpeg_decodes_back_to_the_same_size_and_colour() {
        let img = RgbImage::from_pixel(37, 21, Rgb([200, 40, 90]));
        let bytes = jpeg(&img, 80).unwrap();
        let back = image::load_from_memory_with_format(&bytes, ImageFormat::Jpeg)
            .unwrap()
            .into_rgb8();
        assert_eq!(back.dimensions(), (37, 21));
        let p = back.get_pixel(18, 10);
        for (a, b) in p.0.iter().zip([200u8, 40, 90]) {
            assert!((*a as i32 - b as i32).abs() <= 6, "{p:?}");
        }
    }
}
