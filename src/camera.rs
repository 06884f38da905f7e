//! V4L2 cameras through nokhwa (cargo feature `camera`; building it needs `libclang-dev` for
//! the V4L2 bindings). The device is opened lazily and again after every failure, so an
//! unplugged camera is a lost source that recovers when it comes back. MJPEG frames are decoded
//! with the same decoder as every other JPEG here, YUYV by [`crate::source::yuyv_to_rgb`].

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant, SystemTime};

use nokhwa::utils::{
    CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
};
use nokhwa::Camera;

use crate::source::{yuyv_to_rgb, Frame, FrameSource, SourceError, SourceLimits};

/// Pixel formats the daemon asks the camera for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    Mjpeg,
    Yuyv,
}

impl std::str::FromStr for PixelFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "mjpeg" | "mjpg" => Ok(PixelFormat::Mjpeg),
            "yuyv" | "yuy2" => Ok(PixelFormat::Yuyv),
            _ => Err(format!("{s:?} is not mjpeg or yuyv")),
        }
    }
}

/// What the capture thread needs to open the device.
#[derive(Clone)]
struct Params {
    index: CameraIndex,
    shown: String,
    width: u32,
    height: u32,
    fps: u32,
    format: PixelFormat,
    limits: SourceLimits,
}

/// A V4L2 camera. nokhwa's `Camera` must stay on the thread that opened it, so a capture thread
/// owns it and hands decoded frames over a one-frame channel; the thread ends (and the camera
/// closes) on the first error, and the next `next_frame` starts a new one.
pub struct V4l2Camera {
    params: Params,
    frames: Option<Receiver<Result<Frame, SourceError>>>,
}

/// A camera that delivers nothing for this long counts as lost.
const STALL: Duration = Duration::from_secs(2);

impl V4l2Camera {
    /// `device` is `/dev/videoN` or `N`.
    pub fn new(device: &str, width: u32, height: u32, fps: f32, format: PixelFormat) -> Self {
        let n = device
            .strip_prefix("/dev/video")
            .unwrap_or(device)
            .parse::<u32>();
        let index = match n {
            Ok(n) => CameraIndex::Index(n),
            Err(_) => CameraIndex::String(device.to_string()),
        };
        V4l2Camera {
            params: Params {
                index,
                shown: device.to_string(),
                width,
                height,
                fps: fps.round().max(1.0) as u32,
                format,
                limits: SourceLimits::default(),
            },
            frames: None,
        }
    }

    pub fn with_limits(mut self, limits: SourceLimits) -> Self {
        self.params.limits = limits;
        self
    }
}

fn open(p: &Params) -> Result<Camera, SourceError> {
    let ff = match p.format {
        PixelFormat::Mjpeg => FrameFormat::MJPEG,
        PixelFormat::Yuyv => FrameFormat::YUYV,
    };
    let want = CameraFormat::new(Resolution::new(p.width, p.height), ff, p.fps);
    let formats = [ff];
    let req = RequestedFormat::with_formats(RequestedFormatType::Closest(want), &formats);
    let lost = |e: nokhwa::NokhwaError| SourceError::Lost(format!("camera {}: {e}", p.shown));
    let mut cam = Camera::new(p.index.clone(), req).map_err(lost)?;
    cam.open_stream().map_err(lost)?;
    tracing::info!("camera {}: streaming {}", p.shown, cam.camera_format());
    Ok(cam)
}

fn grab(cam: &mut Camera, p: &Params) -> Result<Frame, SourceError> {
    let buf = cam
        .frame()
        .map_err(|e| SourceError::Lost(format!("camera {}: {e}", p.shown)))?;
    let t0 = Instant::now();
    let res = buf.resolution();
    let image = match buf.source_frame_format() {
        FrameFormat::MJPEG => p.limits.decode(buf.buffer()),
        FrameFormat::YUYV
            if res.width_x > p.limits.max_width || res.height_y > p.limits.max_height =>
        {
            Err(format!(
                "{}x{} frame is larger than {}x{}",
                res.width_x, res.height_y, p.limits.max_width, p.limits.max_height
            ))
        }
        FrameFormat::YUYV => yuyv_to_rgb(buf.buffer(), res.width_x, res.height_y),
        other => Err(format!("unsupported pixel format {other}")),
    }
    .map_err(|e| SourceError::BadFrame(format!("camera {}: {e}", p.shown)))?;
    Ok(Frame {
        image,
        origin: p.shown.clone(),
        captured: Instant::now(),
        wall: SystemTime::now(),
        decode_ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

/// The capture thread: open, then grab until an error or until nobody listens.
fn capture(p: Params, tx: SyncSender<Result<Frame, SourceError>>) {
    let mut cam = match open(&p) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    loop {
        let r = grab(&mut cam, &p);
        let lost = matches!(r, Err(SourceError::Lost(_)));
        if tx.send(r).is_err() || lost {
            break;
        }
    }
    let _ = cam.stop_stream();
}

impl FrameSource for V4l2Camera {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        let rx = self.frames.get_or_insert_with(|| {
            let (tx, rx) = sync_channel(1);
            let p = self.params.clone();
            std::thread::Builder::new()
                .name("inspectd-camera".into())
                .spawn(move || capture(p, tx))
                .expect("spawning the camera thread");
            rx
        });
        let r = match rx.recv_timeout(STALL) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(SourceError::Lost(format!(
                "camera {}: no frame for {} s",
                self.params.shown,
                STALL.as_secs()
            ))),
            Err(RecvTimeoutError::Disconnected) => Err(SourceError::Lost(format!(
                "camera {}: capture stopped",
                self.params.shown
            ))),
        };
        if matches!(r, Err(SourceError::Lost(_))) {
            // Dropping the receiver ends the capture thread; the next call starts over.
            self.frames = None;
        }
        r
    }

    fn describe(&self) -> String {
        format!("camera {}", self.params.shown)
    }

    fn limits(&self) -> SourceLimits {
        self.params.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_formats_parse() {
        assert_eq!("MJPEG".parse::<PixelFormat>(), Ok(PixelFormat::Mjpeg));
        assert_eq!("yuyv".parse::<PixelFormat>(), Ok(PixelFormat::Yuyv));
        assert!("h264"
            .parse::<PixelFormat>()
            .unwrap_err()
            .contains("mjpeg or yuyv"));
        let c = V4l2Camera::new("/dev/video2", 640, 480, 29.97, PixelFormat::Mjpeg);
        assert_eq!(c.params.index, CameraIndex::Index(2));
        assert_eq!(c.params.fps, 30);
        let c = V4l2Camera::new("/dev/v4l/by-id/usb-cam", 640, 480, 5.0, PixelFormat::Yuyv);
        assert!(matches!(c.params.index, CameraIndex::String(_)));
    }
}
