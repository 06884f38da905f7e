//! The RTSP client (cargo feature `rtsp`): retina speaks RTSP and depacketizes RTP (TCP
//! interleaved by default, UDP on request); MJPEG pictures go through the JPEG decoder every
//! other source uses, H.264 through openh264.
//!
//! A capture thread (its own single-threaded tokio runtime: the stream's I/O never runs on the
//! daemon's runtime) receives pictures as the camera sends them and keeps only the newest one in
//! a mailbox; the source thread takes it at its own pace. What a picture costs before it is
//! taken is kept to what the codec forces: an MJPEG picture is kept as its JPEG bytes and decoded
//! only when taken; an H.264 picture must be decoded when it arrives (the next ones refer to
//! it), but its colour conversion waits until it is taken. Every picture replaced in the mailbox
//! before it was taken is counted as dropped. Any failure — refused connection, closed stream,
//! no picture for `timeout_ms` — ends the thread and reports the camera lost; the source thread
//! retries with its backoff and the next `next_frame` connects again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Instant, SystemTime};

use futures::StreamExt;
use retina::client::{
    Credentials, PlayOptions, Session, SessionOptions, SetupOptions, TcpTransportOptions,
    UdpTransportOptions,
};
use retina::codec::{CodecItem, FrameFormat};

use super::h264::{Yuv420, H264};
use super::{RtspSettings, Transport};
use crate::source::{Frame, FrameSource, SourceError, SourceLimits};

/// The video codecs the daemon decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Jpeg,
    H264,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::Jpeg => "mjpeg",
            Codec::H264 => "h264",
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum Fault {
    /// The camera answered but offers no stream we decode: a setting to fix, not an outage.
    Unsupported(String),
    /// Unreachable, refused, timed out, closed: retry later.
    Lost(String),
}

/// The first video stream we can decode, or why there is none (naming what is offered).
fn pick_stream(streams: &[retina::client::Stream]) -> Result<(usize, Codec), String> {
    let mut offered = vec![];
    for (i, s) in streams.iter().enumerate() {
        match (s.media(), s.encoding_name()) {
            ("video", "h264") => return Ok((i, Codec::H264)),
            ("video" | "image", "jpeg") => return Ok((i, Codec::Jpeg)),
            (m, e) => offered.push(format!("{m}/{e}")),
        }
    }
    Err(if offered.is_empty() {
        "the camera offers no streams".to_string()
    } else {
        format!(
            "unsupported codec: the camera offers {}; inspectd decodes H.264 and MJPEG (RTP/JPEG) — set the camera's stream to one of them",
            offered.join(", ")
        )
    })
}

fn session_options(s: &RtspSettings) -> SessionOptions {
    let creds = s.url.user.as_ref().map(|u| Credentials {
        username: u.clone(),
        password: s.password.clone().unwrap_or_default(),
    });
    SessionOptions::default()
        .creds(creds)
        .user_agent(format!("inspectd/{}", env!("CARGO_PKG_VERSION")))
}

fn url(s: &RtspSettings) -> Result<url::Url, Fault> {
    url::Url::parse(&s.url.url).map_err(|e| Fault::Unsupported(format!("source.url: {e}")))
}

/// DESCRIBE only: does the camera answer, and with a stream we decode? Runs on a thread of its
/// own (callers may be on the daemon's runtime).
pub fn probe(s: &RtspSettings) -> Result<Codec, Fault> {
    let s = s.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Fault::Lost(format!("starting a runtime: {e}")))?;
        rt.block_on(async {
            let url = url(&s)?;
            let described =
                tokio::time::timeout(s.timeout, Session::describe(url, session_options(&s)))
                    .await
                    .map_err(|_| {
                        Fault::Lost(format!("no answer within {} ms", s.timeout.as_millis()))
                    })?
                    .map_err(|e| Fault::Lost(e.to_string()))?;
            pick_stream(described.streams())
                .map(|(_, c)| c)
                .map_err(Fault::Unsupported)
        })
    })
    .join()
    .unwrap_or_else(|_| Err(Fault::Lost("the probe panicked".into())))
}

/// What the capture thread hands over.
enum Picture {
    Jpeg(Vec<u8>),
    Yuv(Yuv420),
    /// A picture that could not be decoded (the message says why).
    Bad(String),
}

struct Received {
    picture: Picture,
    at: Instant,
    wall: SystemTime,
    /// Decoding done on the capture thread (H.264), in milliseconds.
    decode_ms: f64,
}

#[derive(Default)]
struct Inbox {
    latest: Option<Received>,
    /// The capture thread ended: why.
    ended: Option<String>,
    /// Pictures received and never taken (replaced by a newer one, or skipped before the first
    /// key frame), not yet reported.
    dropped: u64,
    codec: Option<Codec>,
}

#[derive(Default)]
struct Mailbox {
    inbox: Mutex<Inbox>,
    ready: Condvar,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, r: Received) {
        let mut g = self.lock();
        if g.latest.replace(r).is_some() {
            g.dropped += 1;
        }
        self.ready.notify_one();
    }

    fn end(&self, why: String) {
        self.lock().ended = Some(why);
        self.ready.notify_one();
    }
}

/// A running capture thread.
struct Link {
    mailbox: Arc<Mailbox>,
    stop: Arc<AtomicBool>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// An RTSP camera as a frame source.
pub struct RtspCamera {
    settings: Arc<RtspSettings>,
    link: Option<Link>,
    /// Drops of capture threads that ended, not yet reported.
    dropped: u64,
    codec: Option<Codec>,
}

impl RtspCamera {
    pub fn new(settings: RtspSettings) -> RtspCamera {
        RtspCamera {
            settings: Arc::new(settings),
            link: None,
            dropped: 0,
            codec: None,
        }
    }

    fn start(&self) -> Link {
        let mailbox = Arc::new(Mailbox::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, m, st) = (self.settings.clone(), mailbox.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("inspectd-rtsp".into())
            .spawn(move || capture(&s, &m, &st));
        if let Err(e) = spawned {
            mailbox.end(format!("starting the capture thread: {e}"));
        }
        Link { mailbox, stop }
    }

    fn lost(&mut self, why: String) -> SourceError {
        if let Some(link) = self.link.take() {
            self.dropped += std::mem::take(&mut link.mailbox.lock().dropped);
        }
        SourceError::Lost(format!("camera {}: {why}", self.settings.url.url))
    }
}

impl FrameSource for RtspCamera {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        if self.link.is_none() {
            self.link = Some(self.start());
        }
        let timeout = self.settings.timeout;
        let mailbox = self.link.as_ref().expect("started").mailbox.clone();
        let got = {
            let g = mailbox.lock();
            let (mut g, _) = mailbox
                .ready
                .wait_timeout_while(g, timeout, |i| i.latest.is_none() && i.ended.is_none())
                .unwrap_or_else(|e| e.into_inner());
            self.codec = g.codec.or(self.codec);
            match (g.latest.take(), g.ended.take()) {
                (Some(r), _) => Ok(r),
                (None, Some(why)) => Err(why),
                (None, None) => Err(format!("no picture within {} ms", timeout.as_millis())),
            }
        };
        let r = got.map_err(|why| self.lost(why))?;
        let t0 = Instant::now();
        let limits = self.settings.limits;
        let image = match r.picture {
            Picture::Jpeg(bytes) => limits.decode(&bytes),
            Picture::Yuv(yuv) => Ok(yuv.to_rgb()),
            Picture::Bad(why) => Err(why),
        }
        .map_err(|e| SourceError::BadFrame(format!("camera {}: {e}", self.settings.url.url)))?;
        Ok(Frame {
            image,
            origin: self.settings.url.url.clone(),
            captured: r.at,
            wall: r.wall,
            decode_ms: r.decode_ms + t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    fn describe(&self) -> String {
        match self.codec {
            Some(c) => format!("rtsp {} ({})", self.settings.url.url, c.name()),
            None => format!("rtsp {}", self.settings.url.url),
        }
    }

    fn limits(&self) -> SourceLimits {
        self.settings.limits
    }

    fn take_dropped(&mut self) -> u64 {
        let live = self
            .link
            .as_ref()
            .map_or(0, |l| std::mem::take(&mut l.mailbox.lock().dropped));
        std::mem::take(&mut self.dropped) + live
    }
}

/// The capture thread's body: connects, then receives until a failure or `stop`, and leaves
/// why it ended in the mailbox (before the runtime and what retina left on it are dropped).
fn capture(s: &RtspSettings, mailbox: &Mailbox, stop: &AtomicBool) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return mailbox.end(format!("starting a runtime: {e}")),
    };
    rt.block_on(async {
        let why = receive(s, mailbox, stop).await;
        tracing::debug!("camera {}: capture ends: {why}", s.url.url);
        mailbox.end(why);
    });
    tracing::debug!("camera {}: capture thread done", s.url.url);
}

async fn receive(s: &RtspSettings, mailbox: &Mailbox, stop: &AtomicBool) -> String {
    let timeout = s.timeout;
    let ms = timeout.as_millis();
    let connect = async {
        let url = url(s).map_err(|f| match f {
            Fault::Unsupported(m) | Fault::Lost(m) => m,
        })?;
        let mut session = Session::describe(url, session_options(s))
            .await
            .map_err(|e| e.to_string())?;
        let (i, codec) = pick_stream(session.streams())?;
        let transport = match s.transport {
            Transport::Tcp => retina::client::Transport::Tcp(TcpTransportOptions::default()),
            Transport::Udp => retina::client::Transport::Udp(UdpTransportOptions::default()),
        };
        session
            .setup(
                i,
                SetupOptions::default()
                    .transport(transport)
                    .frame_format(FrameFormat::SIMPLE),
            )
            .await
            .map_err(|e| e.to_string())?;
        let playing = session
            .play(PlayOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let demuxed = playing.demuxed().map_err(|e| e.to_string())?;
        Ok::<_, String>((demuxed, codec))
    };
    let (mut stream, codec) = match tokio::time::timeout(timeout, connect).await {
        Err(_) => return format!("not streaming within {ms} ms of connecting"),
        Ok(Err(e)) => return e,
        Ok(Ok(x)) => x,
    };
    mailbox.lock().codec = Some(codec);
    tracing::info!("camera {}: streaming {}", s.url.url, codec.name());
    let mut h264 = match codec {
        Codec::H264 => match H264::new() {
            Ok(d) => Some(d),
            Err(e) => return e,
        },
        Codec::Jpeg => None,
    };
    // H.264 pictures before the first key frame cannot be decoded: skipped (and counted).
    let mut keyed = false;
    let max = (s.limits.max_width, s.limits.max_height);
    loop {
        if stop.load(Ordering::SeqCst) {
            return "stopped".into();
        }
        let item = match tokio::time::timeout(timeout, stream.next()).await {
            Err(_) => return format!("no picture for {ms} ms"),
            Ok(None) => return "the camera ended the stream".into(),
            Ok(Some(Err(e))) => return e.to_string(),
            Ok(Some(Ok(item))) => item,
        };
        let CodecItem::VideoFrame(f) = item else {
            continue;
        };
        let (at, wall) = (Instant::now(), SystemTime::now());
        let t0 = Instant::now();
        let picture = match h264.as_mut() {
            None => Picture::Jpeg(f.into_data()),
            Some(dec) => {
                if !keyed && !f.is_random_access_point() {
                    mailbox.lock().dropped += 1;
                    continue;
                }
                keyed = true;
                match dec.decode(f.data(), max) {
                    Ok(Some(yuv)) => Picture::Yuv(yuv),
                    Ok(None) => continue,
                    Err(e) => {
                        // Wait for the next key frame before decoding again.
                        keyed = false;
                        Picture::Bad(e)
                    }
                }
            }
        };
        mailbox.put(Received {
            picture,
            at,
            wall,
            decode_ms: t0.elapsed().as_secs_f64() * 1e3,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_newer_picture_replaces_an_untaken_one_and_is_counted() {
        let m = Mailbox::default();
        let pic = |n: u8| Received {
            picture: Picture::Jpeg(vec![n]),
            at: Instant::now(),
            wall: SystemTime::now(),
            decode_ms: 0.0,
        };
        m.put(pic(1));
        m.put(pic(2));
        m.put(pic(3));
        let mut g = m.lock();
        assert_eq!(g.dropped, 2);
        assert!(matches!(g.latest.take().unwrap().picture, Picture::Jpeg(ref b) if b == &[3]));
    }

    #[test]
    fn a_refused_connection_is_a_lost_camera_naming_the_url() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = RtspSettings::new(
            &format!("rtsp://127.0.0.1:{port}/stream"),
            None,
            Transport::Tcp,
            Duration::from_secs(2),
            SourceLimits::default(),
        )
        .unwrap();
        let mut cam = RtspCamera::new(s.clone());
        match cam.next_frame() {
            Err(SourceError::Lost(m)) => {
                assert!(
                    m.contains(&format!("rtsp://127.0.0.1:{port}/stream")),
                    "{m}"
                )
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a frame from nowhere"),
        }
        assert!(matches!(probe(&s), Err(Fault::Lost(_))));
    }
}
