//! Frames → input tensors, following the model's [`InputSpec`].

use std::borrow::Cow;
use std::path::Path;

use anyhow::Result;
use image::imageops::FilterType;
use image::RgbImage;

use super::{ColorOrder, InputSpec, Layout, ResizeMode};
use crate::error::bad_input;
use crate::tensor::Tensor;

pub use crate::heatmap::Crop;

/// Decodes an image file to RGB; a failure names the file.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path)
        .map_err(|e| bad_input(format!("image {}: cannot read: {e}", path.display())))?;
    decode_image(&bytes).map_err(|e| bad_input(format!("image {}: {e}", path.display())))
}

/// Largest frame side accepted, in pixels (a 16k line-scan frame still fits).
pub const MAX_IMAGE_SIDE: u32 = 16384;

/// Most memory the decoder may allocate for one frame (the decoded pixels count towards it):
/// 8K UHD in 8-bit RGBA fits, a header that declares more is refused before any allocation.
pub const MAX_IMAGE_ALLOC: u64 = 192 * 1024 * 1024;

/// Decodes image bytes (PNG, JPEG, BMP) to RGB. Frames come from cameras, HTTP and folders, so
/// the size the header declares is checked against [`MAX_IMAGE_SIDE`] and [`MAX_IMAGE_ALLOC`]
/// before the decoder allocates the pixel buffer.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, String> {
    decode_image_within(bytes, MAX_IMAGE_SIDE, MAX_IMAGE_SIDE)
}

/// [`decode_image`] with a tighter bound on the frame size (the daemon's `source.max_width` and
/// `source.max_height`): a header declaring more is refused before anything is allocated. The
/// allocation limit follows (8 bytes a pixel, room for 16-bit RGBA), capped at
/// [`MAX_IMAGE_ALLOC`].
pub fn decode_image_within(
    bytes: &[u8],
    max_width: u32,
    max_height: u32,
) -> Result<RgbImage, String> {
    let (max_width, max_height) = (
        max_width.min(MAX_IMAGE_SIDE),
        max_height.min(MAX_IMAGE_SIDE),
    );
    let max_alloc = (max_width as u64 * max_height as u64 * 8).clamp(1 << 20, MAX_IMAGE_ALLOC);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_width);
    limits.max_image_height = Some(max_height);
    limits.max_alloc = Some(max_alloc);
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot decode: {e}"))?;
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => format!(
            "cannot decode: the image is larger than the {max_width}x{max_height} px or \
             {} MiB limit ({e})",
            max_alloc >> 20
        ),
        e => format!("cannot decode: {e}"),
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err("empty image".into());
    }
    Ok(img.into_rgb8())
}

/// Fits a frame to the model input size; returns the fitted image and the crop it came from.
/// A frame already of the input size is passed through untouched (borrowed, not copied).
pub fn fit<'a>(img: &'a RgbImage, spec: &InputSpec) -> (Cow<'a, RgbImage>, Crop) {
    let (w, h) = (spec.width, spec.height);
    let (iw, ih) = img.dimensions();
    let full = Crop {
        x: 0.0,
        y: 0.0,
        w: iw as f32,
        h: ih as f32,
    };
    if (iw, ih) == (w, h) {
        return (Cow::Borrowed(img), full);
    }
    match spec.resize {
        ResizeMode::Stretch => (
            Cow::Owned(image::imageops::resize(img, w, h, FilterType::Triangle)),
            full,
        ),
        ResizeMode::CenterCrop => {
            // Crop the largest centred region with the model's aspect ratio, then scale it.
            let target = w as f32 / h as f32;
            let (cw, ch) = if iw as f32 / ih as f32 > target {
                (((ih as f32) * target).round().max(1.0) as u32, ih)
            } else {
                (iw, ((iw as f32) / target).round().max(1.0) as u32)
            };
            let (x0, y0) = ((iw - cw) / 2, (ih - ch) / 2);
            let cropped = image::imageops::crop_imm(img, x0, y0, cw, ch).to_image();
            let out = if (cw, ch) == (w, h) {
                cropped
            } else {
                image::imageops::resize(&cropped, w, h, FilterType::Triangle)
            };
            (
                Cow::Owned(out),
                Crop {
                    x: x0 as f32,
                    y: y0 as f32,
                    w: cw as f32,
                    h: ch as f32,
                },
            )
        }
    }
}

/// Normalizes a fitted image into a batch-of-one input tensor.
pub fn to_tensor(img: &RgbImage, spec: &InputSpec) -> Tensor {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = vec![0f32; 3 * w * h];
    let order: [usize; 3] = match spec.color {
        ColorOrder::RGB => [0, 1, 2],
        ColorOrder::BGR => [2, 1, 0],
    };
    // (v/255 - mean)/std, computed as in torchvision (divide first, then normalize), once per
    // channel and byte value: a frame is then a table lookup per sample.
    let lut: Vec<[f32; 256]> = (0..3)
        .map(|c| std::array::from_fn(|v| (v as f32 / 255.0 - spec.mean[c]) / spec.std[c]))
        .collect();
    let plane = w * h;
    for (i, p) in img.as_raw().chunks_exact(3).enumerate() {
        for (c, &src) in order.iter().enumerate() {
            let idx = match spec.layout {
                Layout::NCHW => c * plane + i,
                Layout::NHWC => i * 3 + c,
            };
            data[idx] = lut[c][p[src] as usize];
        }
    }
    Tensor::new(spec.shape(1), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(layout: Layout, color: ColorOrder) -> InputSpec {
        InputSpec {
            name: "input".into(),
            width: 2,
            height: 1,
            layout,
            color,
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.25, 0.5],
            resize: ResizeMode::Stretch,
        }
    }

    #[test]
    fn nchw_rgb_normalizes_per_channel() {
        let img = RgbImage::from_raw(2, 1, vec![255, 0, 255, 0, 255, 0]).unwrap();
        let t = to_tensor(&img, &spec(Layout::NCHW, ColorOrder::RGB));
        assert_eq!(t.shape(), &[1, 3, 1, 2]);
        assert_eq!(t.data(), &[1.0, -1.0, -2.0, 2.0, 1.0, -1.0]);
    }

    #[test]
    fn nhwc_bgr_swaps_channels_and_interleaves() {
        let img = RgbImage::from_raw(2, 1, vec![255, 0, 0, 0, 0, 255]).unwrap();
        let t = to_tensor(&img, &spec(Layout::NHWC, ColorOrder::BGR));
        assert_eq!(t.shape(), &[1, 1, 2, 3]);
        assert_eq!(t.data(), &[-1.0, -2.0, 1.0, 1.0, -2.0, -1.0]);
    }

    #[test]
    fn center_crop_keeps_the_middle() {
        let img = RgbImage::new(40, 10);
        let mut s = spec(Layout::NCHW, ColorOrder::RGB);
        s.resize = ResizeMode::CenterCrop;
        s.width = 10;
        s.height = 10;
        let (out, crop) = fit(&img, &s);
        assert_eq!(out.dimensions(), (10, 10));
        assert_eq!(
            crop,
            Crop {
                x: 15.0,
                y: 0.0,
                w: 10.0,
                h: 10.0
            }
        );
    }
}
