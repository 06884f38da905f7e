//! GigE Vision / GenICam machine-vision cameras (`kind = "gige"`). What every build knows — the
//! pixel formats and trigger modes the config names, and the conversion of a camera's pixels to
//! the RGB the model takes — lives here as plain functions; the camera itself (libaravis 0.8
//! through the `aravis` crate) is behind the cargo feature `gige` in [`camera`].

use std::time::Duration;

use image::RgbImage;
use serde::Deserialize;

use crate::source::SourceLimits;

#[cfg(feature = "gige")]
pub mod camera;

/// The GenICam `PixelFormat`s the daemon converts to RGB (the names are GenICam's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum PixelFormat {
    Mono8,
    #[serde(rename = "RGB8")]
    Rgb8,
    #[serde(rename = "BGR8")]
    Bgr8,
    BayerRG8,
    BayerBG8,
    BayerGB8,
    BayerGR8,
}

impl PixelFormat {
    pub const ALL: [PixelFormat; 7] = [
        PixelFormat::Mono8,
        PixelFormat::Rgb8,
        PixelFormat::Bgr8,
        PixelFormat::BayerRG8,
        PixelFormat::BayerBG8,
        PixelFormat::BayerGB8,
        PixelFormat::BayerGR8,
    ];

    /// The GenICam name (what the camera's `PixelFormat` enumeration calls it).
    pub fn genicam(self) -> &'static str {
        match self {
            PixelFormat::Mono8 => "Mono8",
            PixelFormat::Rgb8 => "RGB8",
            PixelFormat::Bgr8 => "BGR8",
            PixelFormat::BayerRG8 => "BayerRG8",
            PixelFormat::BayerBG8 => "BayerBG8",
            PixelFormat::BayerGB8 => "BayerGB8",
            PixelFormat::BayerGR8 => "BayerGR8",
        }
    }

    pub fn from_genicam(name: &str) -> Option<PixelFormat> {
        PixelFormat::ALL.into_iter().find(|f| f.genicam() == name)
    }

    fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            _ => 1,
        }
    }

    /// For a Bayer format, the colour (0 R, 1 G, 2 B) of the pixel at (0, 0), (1, 0), (0, 1)
    /// and (1, 1) of every 2×2 tile.
    fn bayer_tile(self) -> Option<[usize; 4]> {
        match self {
            PixelFormat::BayerRG8 => Some([0, 1, 1, 2]),
            PixelFormat::BayerBG8 => Some([2, 1, 1, 0]),
            PixelFormat::BayerGB8 => Some([1, 2, 0, 1]),
            PixelFormat::BayerGR8 => Some([1, 0, 2, 1]),
            _ => None,
        }
    }
}

/// What fires an exposure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TriggerMode {
    /// The camera streams at its own rate; the newest frame is taken, the rest dropped and
    /// counted (`TriggerMode = Off`).
    #[default]
    FreeRun,
    /// The box's trigger path (MQTT `cmd/trigger`, the PLC) fires the camera's `TriggerSoftware`:
    /// one exposure, one verdict, with the trigger's `part_id`.
    Software,
    /// A hardware input line (`TriggerSource = LineN`, rising edge): every exposure the line
    /// fires is one verdict.
    Line(u8),
}

impl<'de> Deserialize<'de> for TriggerMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for TriggerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "free_run" => Ok(TriggerMode::FreeRun),
            "software" => Ok(TriggerMode::Software),
            _ => match s.strip_prefix("line").map(str::parse::<u8>) {
                Some(Ok(n)) if n <= 7 => Ok(TriggerMode::Line(n)),
                _ => Err(format!(
                    "{s:?} is not \"free_run\", \"software\" or a hardware line \"line0\"..\"line7\""
                )),
            },
        }
    }
}

impl TriggerMode {
    /// The camera's `TriggerSource` for this mode (none in free run).
    pub fn source(self) -> Option<String> {
        match self {
            TriggerMode::FreeRun => None,
            TriggerMode::Software => Some("Software".into()),
            TriggerMode::Line(n) => Some(format!("Line{n}")),
        }
    }
}

/// Everything the camera thread needs, from `[source]`.
#[derive(Clone, Debug)]
pub struct GigeSettings {
    /// What `arv_open_camera` takes (a device id `Vendor-Model-Serial`, `Vendor-Serial`, an IP
    /// or MAC address) or a serial number; `None` is the first camera found.
    pub camera_id: Option<String>,
    pub exposure_us: Option<f64>,
    pub gain_db: Option<f64>,
    /// `None`: the camera's current format, if it is one we convert.
    pub pixel_format: Option<PixelFormat>,
    pub trigger_mode: TriggerMode,
    /// The longest silence (no frame in free run; no answer to a control read while waiting
    /// for a trigger) before it counts as lost.
    pub timeout: Duration,
    pub limits: SourceLimits,
    /// How the config spells this camera's keys before the key's name: `source.`, or
    /// `source[1].` for a `[[source]]` entry (errors name the key as the file has it).
    pub key_prefix: String,
}

impl GigeSettings {
    /// How the camera is named in logs and alerts.
    pub fn shown(&self) -> String {
        match &self.camera_id {
            Some(id) => format!("gige {id}"),
            None => "gige (first camera found)".into(),
        }
    }
}

/// Converts one frame of `format` to RGB. `data` holds rows of `width` pixels without padding
/// (what GigE Vision's image payload carries); anything beyond `height` rows is ignored.
pub fn to_rgb(
    format: PixelFormat,
    data: &[u8],
    width: u32,
    height: u32,
) -> Result<RgbImage, String> {
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 {
        return Err(format!("empty {width}x{height} frame"));
    }
    let need = w * h * format.bytes_per_pixel();
    if data.len() < need {
        return Err(format!(
            "{} frame of {} bytes is short of {width}x{height} ({need} bytes)",
            format.genicam(),
            data.len()
        ));
    }
    let data = &data[..need];
    let out = match format {
        PixelFormat::Rgb8 => data.to_vec(),
        PixelFormat::Bgr8 => {
            let mut out = data.to_vec();
            for px in out.chunks_exact_mut(3) {
                px.swap(0, 2);
            }
            out
        }
        PixelFormat::Mono8 => data.iter().flat_map(|&v| [v, v, v]).collect(),
        bayer => {
            let tile = bayer.bayer_tile().ok_or("no Bayer tile")?;
            demosaic(data, w, h, tile)?
        }
    };
    RgbImage::from_raw(width, height, out).ok_or_else(|| "RGB frame size".to_string())
}

/// Bayer to RGB at full resolution: every pixel takes its colours from the 2×2 window that
/// starts at it (one step back at the last row or column). Any 2×2 window of a Bayer mosaic
/// holds one red, two greens and one blue, so each output pixel has all three from its
/// neighbourhood (greens averaged): a cheap demosaic, a half-pixel shift, no blocks.
fn demosaic(data: &[u8], w: usize, h: usize, tile: [usize; 4]) -> Result<Vec<u8>, String> {
    if w < 2 || h < 2 {
        return Err(format!("a Bayer frame of {w}x{h} has no 2x2 tile"));
    }
    // For a window starting on an even or odd row and column: which of its four pixels
    // (top-left, top-right, bottom-left, bottom-right) is red, green, green, blue.
    let mut maps = [[[0usize; 4]; 2]; 2];
    for (py, row) in maps.iter_mut().enumerate() {
        for (px, m) in row.iter_mut().enumerate() {
            let colour = |k: usize| tile[((py + k / 2) & 1) * 2 + ((px + k % 2) & 1)];
            let greens: Vec<usize> = (0..4).filter(|&k| colour(k) == 1).collect();
            let red = (0..4).find(|&k| colour(k) == 0).unwrap_or(0);
            let blue = (0..4).find(|&k| colour(k) == 2).unwrap_or(0);
            *m = [red, greens[0], greens[1], blue];
        }
    }
    let mut out = vec![0u8; w * h * 3];
    for (y, row) in out.chunks_exact_mut(w * 3).enumerate() {
        let y0 = y.min(h - 2);
        let (r0, r1) = (&data[y0 * w..][..w], &data[(y0 + 1) * w..][..w]);
        let maps = &maps[y0 & 1];
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            let x0 = x.min(w - 2);
            let v = [r0[x0], r0[x0 + 1], r1[x0], r1[x0 + 1]];
            let m = &maps[x0 & 1];
            px[0] = v[m[0]];
            px[1] = ((v[m[1]] as u16 + v[m[2]] as u16) / 2) as u8;
            px[2] = v[m[3]];
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_modes_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!("free_run".parse(), Ok(TriggerMode::FreeRun));
        assert_eq!("software".parse(), Ok(TriggerMode::Software));
        assert_eq!("line1".parse(), Ok(TriggerMode::Line(1)));
        assert_eq!(TriggerMode::Line(1).source().as_deref(), Some("Line1"));
        assert_eq!(TriggerMode::FreeRun.source(), None);
        for bad in ["line8", "Line1", "hardware", "", "line"] {
            let e = bad.parse::<TriggerMode>().unwrap_err();
            assert!(e.contains("free_run"), "{bad}: {e}");
        }
    }

    #[test]
    fn pixel_format_names_are_genicams() {
        for f in PixelFormat::ALL {
            assert_eq!(PixelFormat::from_genicam(f.genicam()), Some(f));
        }
        assert_eq!(PixelFormat::from_genicam("Mono16"), None);
    }

    #[test]
    fn mono_rgb_and_bgr_convert() {
        let img = to_rgb(PixelFormat::Mono8, &[0, 128, 255, 7], 2, 2).unwrap();
        assert_eq!(img.get_pixel(1, 0).0, [128; 3]);
        assert_eq!(img.get_pixel(0, 1).0, [255; 3]);
        let img = to_rgb(PixelFormat::Rgb8, &[1, 2, 3, 4, 5, 6], 2, 1).unwrap();
        assert_eq!(img.get_pixel(1, 0).0, [4, 5, 6]);
        let img = to_rgb(PixelFormat::Bgr8, &[1, 2, 3, 4, 5, 6], 2, 1).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [3, 2, 1]);
        let e = to_rgb(PixelFormat::Rgb8, &[0; 5], 2, 1).unwrap_err();
        assert!(e.contains("short"), "{e}");
        assert!(to_rgb(PixelFormat::Mono8, &[], 0, 1).is_err());
    }

    /// A flat colour, mosaicked with `format`'s tile, comes back as that colour everywhere
    /// (edges included), whichever corner the tile starts with.
    #[test]
    fn every_bayer_order_demosaics_a_flat_colour_back() {
        let rgb = [200u8, 100, 30];
        for f in [
            PixelFormat::BayerRG8,
            PixelFormat::BayerBG8,
            PixelFormat::BayerGB8,
            PixelFormat::BayerGR8,
        ] {
            let tile = f.bayer_tile().unwrap();
            let (w, h) = (6usize, 5usize);
            let raw: Vec<u8> = (0..w * h)
                .map(|i| rgb[tile[(i / w % 2) * 2 + i % w % 2]])
                .collect();
            let img = to_rgb(f, &raw, w as u32, h as u32).unwrap();
            for p in img.pixels() {
                assert_eq!(p.0, rgb, "{f:?}");
            }
        }
        assert!(to_rgb(PixelFormat::BayerRG8, &[0; 3], 3, 1)
            .unwrap_err()
            .contains("2x2"));
    }

    /// What converting one frame costs, median of 31, at the simulator's 512×512 and at
    /// 1280×720 (README, GigE): `cargo test -p inspectd --lib gige::tests::conversion_cost --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn conversion_cost() {
        for (w, h) in [(512u32, 512u32), (1280, 720)] {
            let data: Vec<u8> = (0..w as usize * h as usize * 3)
                .map(|i| (i * 7 + i / 13) as u8)
                .collect();
            for f in PixelFormat::ALL {
                let mut ms: Vec<f64> = (0..36)
                    .map(|_| {
                        let t0 = std::time::Instant::now();
                        std::hint::black_box(to_rgb(f, &data, w, h).unwrap());
                        t0.elapsed().as_secs_f64() * 1e3
                    })
                    .skip(5)
                    .collect();
                ms.sort_by(f64::total_cmp);
                println!(
                    "{w}x{h} {:>8}: median {:.3} ms",
                    f.genicam(),
                    ms[ms.len() / 2]
                );
            }
        }
    }
}
