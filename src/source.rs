//! Frame sources: image-folder replay and HTTP snapshot cameras (V4L2 cameras behind the cargo
//! feature `camera`, RTSP cameras behind `rtsp`: [`crate::rtsp`], GigE Vision cameras behind
//! `gige`: [`crate::gige`]). A source either yields a frame or says it is lost; the source thread
//! reconnects with capped exponential backoff and reports lost/recovered.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;

use inspectd_cam::model::preprocess::decode_image_within;

/// What a source accepts: the largest frame, and how many unusable frames in a row make it lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// Undecodable, empty or oversized frames in a row after which the source counts as lost.
    pub max_bad_frames: u32,
}

impl Default for SourceLimits {
    fn default() -> SourceLimits {
        SourceLimits {
            max_width: 4096,
            max_height: 4096,
            max_bad_frames: 3,
        }
    }
}

impl SourceLimits {
    /// Decodes a frame within these limits (refused before the pixels are allocated).
    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage, String> {
        decode_image_within(bytes, self.max_width, self.max_height)
    }
}

/// One captured frame.
pub struct Frame {
    pub image: RgbImage,
    /// Where it came from (file name, URL).
    pub origin: String,
    pub captured: Instant,
    pub wall: SystemTime,
    /// Time spent reading and decoding it, in milliseconds.
    pub decode_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source is unavailable (folder gone, camera unplugged, HTTP down): retry later.
    #[error("{0}")]
    Lost(String),
    /// This one frame was unusable (a file that does not decode): skip it.
    #[error("{0}")]
    BadFrame(String),
    /// No frame, and none is due: the camera answers and waits for its trigger (a GigE camera
    /// in software or hardware trigger mode). The camera is fine.
    #[error("waiting for a trigger")]
    Idle,
}

/// Fires a camera's own trigger (a GigE camera's `TriggerSoftware`): called by the inference
/// thread when the box's trigger path asks for a frame.
pub type FireTrigger = std::sync::Arc<dyn Fn() + Send + Sync>;

pub trait FrameSource: Send {
    fn next_frame(&mut self) -> Result<Frame, SourceError>;
    fn describe(&self) -> String;
    /// The frame size and bad-frame limits this source applies.
    fn limits(&self) -> SourceLimits;
    /// Frames the source received and let go untaken since the last call (a streaming camera
    /// sends at its own rate and keeps only the newest): added to the dropped-frame count.
    fn take_dropped(&mut self) -> u64 {
        0
    }
    /// A camera that exposes only when told to: what fires it on a trigger.
    fn trigger_hook(&self) -> Option<FireTrigger> {
        None
    }
}

/// Replays the images of a folder in name order, looping if asked.
pub struct Replay {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    looping: bool,
    limits: SourceLimits,
}

impl Replay {
    pub fn new(dir: PathBuf, looping: bool) -> Replay {
        Replay {
            dir,
            files: vec![],
            next: 0,
            looping,
            limits: SourceLimits::default(),
        }
    }

    pub fn with_limits(mut self, limits: SourceLimits) -> Replay {
        self.limits = limits;
        self
    }
}

impl FrameSource for Replay {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        if self.next >= self.files.len() {
            if !self.files.is_empty() && !self.looping {
                return Err(SourceError::Lost(format!(
                    "replay of {} finished",
                    self.dir.display()
                )));
            }
            // (Re)scan at the start of every pass: a folder that disappeared is "lost".
            self.files = image_files(&self.dir).map_err(|e| SourceError::Lost(format!("{e:#}")))?;
            self.next = 0;
            if self.files.is_empty() {
                return Err(SourceError::Lost(format!(
                    "folder {}: no images",
                    self.dir.display()
                )));
            }
        }
        let path = self.files[self.next].clone();
        self.next += 1;
        let t0 = Instant::now();
        let bytes = std::fs::read(&path).map_err(|e| {
            if self.dir.is_dir() {
                SourceError::BadFrame(format!("image {}: {e}", path.display()))
            } else {
                self.files.clear();
                SourceError::Lost(format!("folder {}: {e}", self.dir.display()))
            }
        })?;
        let image = self
            .limits
            .decode(&bytes)
            .map_err(|e| SourceError::BadFrame(format!("image {}: {e}", path.display())))?;
        Ok(Frame {
            image,
            origin: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            captured: Instant::now(),
            wall: SystemTime::now(),
            decode_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    fn describe(&self) -> String {
        format!("replay {}", self.dir.display())
    }

    fn limits(&self) -> SourceLimits {
        self.limits
    }
}

/// Polls a JPEG/PNG snapshot URL (plain HTTP/1.1, as snapshot cameras serve it). One snapshot
/// — connect, request, headers and body — must complete within `timeout`, however slowly the
/// camera trickles bytes.
pub struct HttpSnapshot {
    url: String,
    host: String,
    port: u16,
    path: String,
    timeout: Duration,
    limits: SourceLimits,
}

/// Largest HTTP response read.
const MAX_RESPONSE: usize = 32 * 1024 * 1024;

impl HttpSnapshot {
    pub fn new(url: &str, timeout: Duration) -> Result<HttpSnapshot, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in {url:?}"))?,
            ),
            None => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("no host in {url:?}"));
        }
        Ok(HttpSnapshot {
            url: url.into(),
            host: host.into(),
            port,
            path: path.into(),
            timeout,
            limits: SourceLimits::default(),
        })
    }

    pub fn with_limits(mut self, limits: SourceLimits) -> HttpSnapshot {
        self.limits = limits;
        self
    }

    fn fetch(&self) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + self.timeout;
        // What is left of the snapshot's time; every socket wait is bounded by it.
        let left = || {
            deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    format!(
                        "no complete snapshot within {} ms",
                        self.timeout.as_millis()
                    )
                })
        };
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("no address for {}", self.host))?;
        let mut s =
            TcpStream::connect_timeout(&addr, left()?).map_err(|e| format!("connecting: {e}"))?;
        s.set_write_timeout(Some(left()?)).ok();
        write!(
            s,
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: image/*\r\n\r\n",
            self.path, self.host
        )
        .map_err(|e| format!("sending request: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        // (end of the head, body length) once the head is in.
        let mut head: Option<(usize, Option<usize>)> = None;
        loop {
            if let Some((end, Some(n))) = head {
                if buf.len() >= end + 4 + n {
                    break;
                }
            }
            s.set_read_timeout(Some(left()?)).ok();
            let got = match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    left()?;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading response: {e}")),
            };
            buf.extend_from_slice(&chunk[..got]);
            if buf.len() > MAX_RESPONSE {
                return Err(format!("response larger than {} MiB", MAX_RESPONSE >> 20));
            }
            if head.is_none() {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let text = String::from_utf8_lossy(&buf[..end]);
                    let status = text.split_whitespace().nth(1).unwrap_or("");
                    if status != "200" {
                        return Err(format!("HTTP status {status}"));
                    }
                    let len = text.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())
                            .flatten()
                    });
                    head = Some((end, len));
                }
            }
        }
        let (end, len) = head.ok_or("malformed HTTP response")?;
        let body = &buf[end + 4..];
        Ok(match len {
            Some(n) if n <= body.len() => body[..n].to_vec(),
            Some(_) => return Err("truncated HTTP body".into()),
            None => body.to_vec(),
        })
    }
}

impl FrameSource for HttpSnapshot {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        let t0 = Instant::now();
        let bytes = self
            .fetch()
            .map_err(|e| SourceError::Lost(format!("camera {}: {e}", self.url)))?;
        let image = self
            .limits
            .decode(&bytes)
            .map_err(|e| SourceError::BadFrame(format!("camera {}: {e}", self.url)))?;
        Ok(Frame {
            image,
            origin: self.url.clone(),
            captured: Instant::now(),
            wall: SystemTime::now(),
            decode_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    fn describe(&self) -> String {
        format!("http {}", self.url)
    }

    fn limits(&self) -> SourceLimits {
        self.limits
    }
}

/// Packed YUYV 4:2:2 (Y0 U Y1 V per two pixels) to RGB, BT.601 limited range as V4L2 cameras
/// deliver it.
pub fn yuyv_to_rgb(buf: &[u8], width: u32, height: u32) -> Result<RgbImage, String> {
    let (w, h) = (width as usize, height as usize);
    if w == 0 || h == 0 || w % 2 != 0 {
        return Err(format!("bad YUYV frame size {width}x{height}"));
    }
    if buf.len() < w * h * 2 {
        return Err(format!(
            "YUYV frame of {} bytes is short of {}x{}x2",
            buf.len(),
            w,
            h
        ));
    }
    let mut out = Vec::with_capacity(w * h * 3);
    for q in buf[..w * h * 2].chunks_exact(4) {
        let (u, v) = (q[1] as f32 - 128.0, q[3] as f32 - 128.0);
        for y in [q[0], q[2]] {
            let c = 1.164 * (y as f32 - 16.0);
            let px = [c + 1.596 * v, c - 0.392 * u - 0.813 * v, c + 2.017 * u];
            out.extend(px.map(|x| x.clamp(0.0, 255.0) as u8));
        }
    }
    RgbImage::from_raw(width, height, out).ok_or_else(|| "YUYV size".to_string())
}

/// Image files under `dir`, sorted, masks skipped.
pub fn image_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(inspectd_cam::error::bad_input(format!(
            "folder {}: not a directory",
            dir.display()
        )));
    }
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| {
            inspectd_cam::error::bad_input(format!("folder {}: cannot read: {e}", d.display()))
        })?;
        for e in entries {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if is_image(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn is_image(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    // `<stem>.mask.png` and `<stem>.watermark.png` are annotations beside an image, not frames.
    !name.ends_with(".mask.png")
        && !name.ends_with(".watermark.png")
        && [".png", ".jpg", ".jpeg", ".bmp"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_urls_are_parsed() {
        let s = HttpSnapshot::new("http://10.1.2.3:8080/snap.jpg", Duration::from_secs(1)).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.path.as_str()),
            ("10.1.2.3", 8080, "/snap.jpg")
        );
        assert!(HttpSnapshot::new("ftp://x", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn yuyv_greys_and_primaries_convert() {
        // Y=16 black, Y=235 white, neutral chroma; then a saturated red pair (BT.601).
        let buf = [16, 128, 235, 128, 81, 90, 81, 240];
        let img = yuyv_to_rgb(&buf, 4, 1).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
        let white = img.get_pixel(1, 0).0;
        assert!(white.iter().all(|&c| c >= 254), "{white:?}");
        let red = img.get_pixel(2, 0).0;
        assert!(red[0] >= 250 && red[1] <= 5 && red[2] <= 5, "{red:?}");
        assert!(yuyv_to_rgb(&buf, 4, 2).unwrap_err().contains("short"));
        assert!(yuyv_to_rgb(&buf, 3, 1).is_err());
    }

    /// A server on 127.0.0.1 that answers every connection with `head` and then `body`, one
    /// byte every `gap`.
    fn server(head: &'static str, body: Vec<u8>, gap: Duration) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/snap.png", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let (Ok(mut s), body) = (s, body.clone()) else {
                    continue;
                };
                std::thread::spawn(move || {
                    let mut req = [0u8; 512];
                    let _ = s.read(&mut req);
                    let _ = s.write_all(head.as_bytes());
                    for b in body {
                        if s.write_all(&[b]).is_err() {
                            return;
                        }
                        std::thread::sleep(gap);
                    }
                });
            }
        });
        url
    }

    #[test]
    fn a_trickling_camera_is_lost_within_its_timeout() {
        let url = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            vec![0; 1000],
            Duration::from_millis(50),
        );
        let mut cam = HttpSnapshot::new(&url, Duration::from_millis(400)).unwrap();
        let t0 = Instant::now();
        let e = cam.next_frame().err().expect("no frame from a trickle");
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
        assert!(
            matches!(&e, SourceError::Lost(m) if m.contains("within 400 ms")),
            "{e}"
        );
    }

    #[test]
    fn empty_garbage_and_oversized_snapshots_are_bad_frames() {
        let big = {
            let img = image::GrayImage::new(64, 8);
            let mut c = std::io::Cursor::new(Vec::new());
            img.write_to(&mut c, image::ImageFormat::Png).unwrap();
            c.into_inner()
        };
        let small = SourceLimits {
            max_width: 32,
            max_height: 32,
            max_bad_frames: 3,
        };
        for (head, body, what) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                vec![],
                "empty",
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", b"garbage".repeat(50), "garbage"),
            ("HTTP/1.1 200 OK\r\n\r\n", big.clone(), "too large"),
        ] {
            let url = server(head, body, Duration::ZERO);
            let mut cam = HttpSnapshot::new(&url, Duration::from_secs(2))
                .unwrap()
                .with_limits(small);
            match cam.next_frame() {
                Err(SourceError::BadFrame(m)) => {
                    assert!(m.contains("snap.png"), "{what}: {m}");
                    if what == "too large" {
                        assert!(m.contains("32x32"), "{m}");
                    }
                }
                Err(e) => panic!("{what}: {e}"),
                Ok(_) => panic!("{what}: a frame"),
            }
        }
        // Within the limits the same PNG is a frame, whether or not the length is announced.
        let url = server("HTTP/1.1 200 OK\r\n\r\n", big, Duration::ZERO);
        let mut cam = HttpSnapshot::new(&url, Duration::from_secs(2)).unwrap();
        assert_eq!(cam.next_frame().ok().unwrap().image.dimensions(), (64, 8));
    }

    #[test]
    fn a_missing_folder_is_a_lost_source() {
        let mut r = Replay::new(PathBuf::from("/nonexistent/frames"), true);
        assert!(matches!(r.next_frame(), Err(SourceError::Lost(_))));
    }
}
