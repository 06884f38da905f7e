//! Maps to pictures: bilinear up-sampling, the jet colormap, overlays on frames, 8-bit PNG maps
//! and JPEG evidence. Pure functions of their inputs.

use std::io::Cursor;

use anyhow::Result;
use image::{ImageFormat, RgbImage};

use crate::model::preprocess::Crop;
use crate::tensor::Tensor;

/// Bilinear resize with half-pixel centres (OpenCV / PIL convention), edges clamped.
pub fn resize_bilinear(map: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let mut out = vec![0f32; oh * ow];
    for y in 0..oh {
        let fy = ((y as f32 + 0.5) * h as f32 / oh as f32 - 0.5).max(0.0);
        let y0 = (fy.floor() as usize).min(h - 1);
        let y1 = (y0 + 1).min(h - 1);
        let dy = fy - y0 as f32;
        for x in 0..ow {
            let fx = ((x as f32 + 0.5) * w as f32 / ow as f32 - 0.5).max(0.0);
            let x0 = (fx.floor() as usize).min(w - 1);
            let x1 = (x0 + 1).min(w - 1);
            let dx = fx - x0 as f32;
            let top = map[y0 * w + x0] * (1.0 - dx) + map[y0 * w + x1] * dx;
            let bot = map[y1 * w + x0] * (1.0 - dx) + map[y1 * w + x1] * dx;
            out[y * ow + x] = top * (1.0 - dy) + bot * dy;
        }
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
pub fn overlay(frame: &RgbImage, map: &Tensor, crop: Crop, alpha: f32) -> RgbImage {
    let (fw, fh) = frame.dimensions();
    let (mh, mw) = (map.shape()[0], map.shape()[1]);
    let (cx, cy) = (crop.x.round() as u32, crop.y.round() as u32);
    let cw = (crop.w.round() as u32).min(fw.saturating_sub(cx)).max(1);
    let chh = (crop.h.round() as u32).min(fh.saturating_sub(cy)).max(1);
    let up = resize_bilinear(map.data(), mh, mw, chh as usize, cw as usize);
    let mut out = frame.clone();
    for y in 0..chh {
        for x in 0..cw {
            let c = jet(up[(y * cw + x) as usize]);
            let p = out.get_pixel_mut(cx + x, cy + y);
            for k in 0..3 {
                p[k] = ((1.0 - alpha) * p[k] as f32 + alpha * c[k] as f32).round() as u8;
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

/// Decodes an 8-bit grayscale PNG map back to 0..1 values `[H, W]`.
pub fn map_from_png(bytes: &[u8]) -> Result<Tensor> {
    let img = image::load_from_memory_with_format(bytes, ImageFormat::Png)?.into_luma8();
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

/// Encodes an RGB image as JPEG at `quality` (1..100).
pub fn jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, quality.clamp(1, 100));
    img.write_with_encoder(enc)?;
    Ok(buf)
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
}
