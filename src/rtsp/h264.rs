//! H.264 pictures through openh264 (Cisco's decoder; the crate builds its C++ from source, so
//! there is no system library to match on the box), and I420 → RGB for the picture that is
//! taken. Decoding has to see every picture of a GOP (P pictures refer to earlier ones); the
//! colour conversion runs only for the one inference takes.

use image::RgbImage;
use openh264::decoder::{Decoder, DecoderConfig, Flush};
use openh264::formats::YUVSource;

/// One decoded picture, I420 planes copied out of the decoder (it reuses its buffers).
pub struct Yuv420 {
    pub width: u32,
    pub height: u32,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

pub struct H264 {
    dec: Decoder,
}

impl H264 {
    pub fn new() -> Result<H264, String> {
        Ok(H264 {
            // No flush after each access unit: with B-pictures the decoder holds pictures back to
            // put them in display order, and a forced flush breaks its reference lists.
            dec: Decoder::with_api_config(
                openh264::OpenH264API::from_source(),
                DecoderConfig::new().flush_after_decode(Flush::NoFlush),
            )
            .map_err(|e| format!("starting the H.264 decoder: {e}"))?,
        })
    }

    /// Decodes one access unit (Annex B, parameter sets in-band before key frames). `None`: no
    /// picture out of this one (parameter sets alone). Pictures larger than `max` (w, h) are
    /// refused before they are copied.
    pub fn decode(&mut self, au: &[u8], max: (u32, u32)) -> Result<Option<Yuv420>, String> {
        let Some(pic) = self
            .dec
            .decode(au)
            .map_err(|e| format!("H.264 decoding: {e}"))?
        else {
            return Ok(None);
        };
        let (w, h) = pic.dimensions();
        let (w32, h32) = (w as u32, h as u32);
        if w32 > max.0 || h32 > max.1 {
            return Err(format!("{w}x{h} frame is larger than {}x{}", max.0, max.1));
        }
        if w == 0 || h == 0 {
            return Err("H.264 picture of size 0".into());
        }
        let (sy, su, sv) = pic.strides();
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let plane = |src: &[u8], stride: usize, pw: usize, ph: usize| -> Result<Vec<u8>, String> {
            if stride < pw || src.len() < stride * (ph - 1) + pw {
                return Err("H.264 picture planes shorter than its size".into());
            }
            let mut out = Vec::with_capacity(pw * ph);
            for r in 0..ph {
                out.extend_from_slice(&src[r * stride..r * stride + pw]);
            }
            Ok(out)
        };
        Ok(Some(Yuv420 {
            width: w32,
            height: h32,
            y: plane(pic.y(), sy, w, h)?,
            u: plane(pic.u(), su, cw, ch)?,
            v: plane(pic.v(), sv, cw, ch)?,
        }))
    }
}

impl Yuv420 {
    /// From tightly packed planes (tests).
    #[cfg(test)]
    fn from_planes(width: u32, height: u32, y: Vec<u8>, u: Vec<u8>, v: Vec<u8>) -> Yuv420 {
        Yuv420 {
            width,
            height,
            y,
            u,
            v,
        }
    }

    /// BT.601 limited range (what H.264 cameras send unless their VUI says otherwise) to RGB.
    pub fn to_rgb(&self) -> RgbImage {
        let (w, h) = (self.width as usize, self.height as usize);
        let cw = w.div_ceil(2);
        let mut out = vec![0u8; w * h * 3];
        for (r, row) in out.chunks_exact_mut(w * 3).enumerate() {
            let yrow = &self.y[r * w..(r + 1) * w];
            let crow = (r / 2) * cw;
            for (c, px) in row.chunks_exact_mut(3).enumerate() {
                let u = self.u[crow + c / 2] as f32 - 128.0;
                let v = self.v[crow + c / 2] as f32 - 128.0;
                let l = 1.164 * (yrow[c] as f32 - 16.0);
                px[0] = (l + 1.596 * v).clamp(0.0, 255.0) as u8;
                px[1] = (l - 0.392 * u - 0.813 * v).clamp(0.0, 255.0) as u8;
                px[2] = (l + 2.017 * u).clamp(0.0, 255.0) as u8;
            }
        }
        RgbImage::from_raw(self.width, self.height, out).expect("w*h*3 bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i420_greys_and_a_red_block_convert() {
        // 4x2: left 2x2 block black (Y 16), right block saturated red (BT.601: Y 81, U 90, V 240).
        let y = vec![16, 16, 81, 81, 16, 16, 81, 81];
        let img = Yuv420::from_planes(4, 2, y, vec![128, 90], vec![128, 240]).to_rgb();
        assert_eq!(img.get_pixel(0, 1).0, [0, 0, 0]);
        let red = img.get_pixel(3, 1).0;
        assert!(red[0] >= 250 && red[1] <= 5 && red[2] <= 5, "{red:?}");
    }

    #[test]
    fn an_odd_sized_picture_converts_with_rounded_up_chroma() {
        let img = Yuv420::from_planes(3, 3, vec![235; 9], vec![128; 4], vec![128; 4]).to_rgb();
        assert_eq!(img.dimensions(), (3, 3));
        assert!(img.pixels().all(|p| p.0.iter().all(|&c| c >= 254)));
    }

    #[test]
    fn garbage_is_an_error_or_no_picture_never_a_panic() {
        let mut d = H264::new().unwrap();
        let garbage: Vec<u8> = (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let mut au = vec![0, 0, 0, 1, 0x65];
        au.extend_from_slice(&garbage);
        assert!(matches!(d.decode(&au, (4096, 4096)), Err(_) | Ok(None)));
    }
}
