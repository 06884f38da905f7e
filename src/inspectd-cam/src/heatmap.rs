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

/// Longest side of the evidence picture.
pub(crate) const EVIDENCE_SIDE: u32 = 320;

/// The evidence picture of a verdict: the frame with the map overlaid, at most
/// [`EVIDENCE_SIDE`] px a side, as JPEG. The frame is shrunk first and the map laid over the
/// thumbnail (the crop scaled alike), so a large frame costs one thumbnail, never a second
/// full-resolution copy.
pub fn evidence_jpeg(frame: &RgbImage, map: &Tensor, crop: Crop) -> Result<Vec<u8>> {
    let small = thumbnail(frame, EVIDENCE_SIDE);
    let (sx, sy) = (
        small.width() as f32 / frame.width().max(1) as f32,
        small.height() as f32 / frame.height().max(1) as f32,
    );
    let crop = Crop {
        x: crop.x * sx,
        y: crop.y * sy,
        w: crop.w * sx,
        h: crop.h * sy,
    };
    jpeg(&overlay(&small, map, crop, 0.45), 80)
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

    #[test]
    fn evidence_is_a_thumbnail_of_the_frame_with_the_map_on_its_crop() {
        let frame = RgbImage::from_pixel(1000, 600, Rgb([10, 20, 30]));
        let map = Tensor::new(vec![1, 1], vec![1.0]);
        // The map covers the right half only.
        let crop = Crop {
            x: 500.0,
            y: 0.0,
            w: 500.0,
            h: 600.0,
        };
        let jpg = evidence_jpeg(&frame, &map, crop).unwrap();
        let back = image::load_from_memory_with_format(&jpg, ImageFormat::Jpeg)
            .unwrap()
            .into_rgb8();
        assert_eq!(back.dimensions(), (320, 192));
        // Left: the frame; right: blended towards jet(1) = dark red, as at full resolution.
        let want = overlay(&frame, &map, crop, 0.45);
        for (x, y) in [(40, 96), (280, 96)] {
            let full = want.get_pixel(x * 1000 / 320, y * 600 / 192).0;
            let got = back.get_pixel(x, y).0;
            for (a, b) in got.iter().zip(full) {
                assert!(
                    (*a as i32 - b as i32).abs() <= 6,
                    "({x},{y}): {got:?} vs {full:?}"
                );
            }
        }
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
