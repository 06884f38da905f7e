//! The GigE Vision camera through libaravis 0.8 (cargo feature `gige`). aravis objects are not
//! `Send`, so one capture thread per connection owns the camera and its stream: it applies the
//! settings, keeps the newest raw frame (the rest are dropped and counted), fires software
//! triggers the box asks for and, while a triggered camera is silent, proves it still answers
//! with a control read. The source thread converts only the frame it takes. A fault ends the
//! capture thread; the next `next_frame` starts a new one (the source loop's backoff in between).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use aravis::prelude::*;
use aravis::{AcquisitionMode, Auto, Buffer, BufferStatus, Camera, Stream};

use super::{to_rgb, GigeSettings, PixelFormat, TriggerMode};
use crate::source::{FireTrigger, Frame, FrameSource, SourceError, SourceLimits};

/// Why a camera could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Not found, gone, or not answering: retried with backoff.
    Lost(String),
    /// It answers but cannot do what `[source]` asks (a feature it lacks, a value outside its
    /// range); the message starts with the key (`source.gain_db: ...`).
    Unsupported(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Lost(m) | Fault::Unsupported(m) => f.write_str(m),
        }
    }
}

/// Buffers queued on the stream: one being filled, a few waiting for us to copy them.
const STREAM_BUFFERS: usize = 4;
/// How long the capture thread waits for a buffer before it looks at triggers again: the
/// latency a software trigger can add.
const POLL: Duration = Duration::from_millis(20);
/// How often a silent (triggered) camera is asked whether it is still there.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// The longest `next_frame` waits before it says a triggered camera is idle (the source loop
/// checks for shutdown in between).
const IDLE_AFTER: Duration = Duration::from_millis(200);
/// Opening takes a discovery (about a second when the camera is named by serial number or
/// not named at all) and the settings: it is given this long, or `timeout` if that is longer.
const OPEN_WITHIN: Duration = Duration::from_secs(5);

/// A frame as the camera sent it, converted only if the source thread takes it.
struct Raw {
    data: Vec<u8>,
    width: u32,
    height: u32,
    captured: Instant,
    wall: SystemTime,
}

/// What the capture thread reports to the source thread. `gen` tells the current capture
/// thread from one that is still winding down after a fault.
struct State {
    gen: u64,
    /// Set once the camera is open and acquiring.
    format: Option<PixelFormat>,
    frame: Option<Result<Raw, String>>,
    dropped: u64,
    fault: Option<Fault>,
    /// The last sign of life: the open, a frame, or a control read that was answered.
    alive_at: Instant,
}

struct Link {
    state: Mutex<State>,
    ready: Condvar,
    /// The generation the current capture thread must have; a bump tells it to stop.
    gen: AtomicU64,
    /// Software triggers asked for and not fired yet.
    triggers: AtomicU32,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state if `gen` is still the current capture thread, and wakes the
    /// source thread.
    fn report(&self, gen: u64, f: impl FnOnce(&mut State)) {
        let mut st = self.lock();
        if st.gen == gen {
            f(&mut st);
            self.ready.notify_all();
        }
    }

    fn current(&self, gen: u64) -> bool {
        self.gen.load(Ordering::SeqCst) == gen
    }
}

/// A GigE Vision camera as a frame source.
pub struct GigeCamera {
    settings: GigeSettings,
    link: Arc<Link>,
    running: bool,
    /// The newest capture thread, told to stop or not.
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long a new capture thread waits for the previous one to let go of the camera (it may
/// be in the middle of opening it), and how long dropping the source waits for the last one.
const HANDOVER: Duration = Duration::from_secs(1);
const RELEASE: Duration = Duration::from_secs(2);

impl GigeCamera {
    pub fn new(settings: GigeSettings) -> GigeCamera {
        GigeCamera {
            settings,
            link: Arc::new(Link {
                state: Mutex::new(State {
                    gen: 0,
                    format: None,
                    frame: None,
                    dropped: 0,
                    fault: None,
                    alive_at: Instant::now(),
                }),
                ready: Condvar::new(),
                gen: AtomicU64::new(0),
                triggers: AtomicU32::new(0),
            }),
            running: false,
            thread: None,
        }
    }

    /// Waits up to `within` for the previous capture thread to end (two threads opening one
    /// camera fight over its control channel).
    fn join_previous(&mut self, within: Duration) {
        let t0 = Instant::now();
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && t0.elapsed() < within {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!(
                    "camera {}: the previous capture thread has not ended within {} ms",
                    self.settings.shown(),
                    within.as_millis()
                );
            }
        }
    }

    fn start(&mut self) {
        self.join_previous(HANDOVER);
        let gen = self.link.gen.fetch_add(1, Ordering::SeqCst) + 1;
        {
            let mut st = self.link.lock();
            st.gen = gen;
            st.format = None;
            st.frame = None;
            st.fault = None;
            st.alive_at = Instant::now();
        }
        // A trigger asked for while the camera was away has no part in front of it any more.
        self.link.triggers.store(0, Ordering::SeqCst);
        let (settings, link) = (self.settings.clone(), self.link.clone());
        let spawned = std::thread::Builder::new()
            .name("inspectd-gige".into())
            .spawn(move || capture(settings, link, gen));
        match spawned {
            Ok(t) => self.thread = Some(t),
            Err(e) => self.link.report(gen, |st| {
                st.fault = Some(Fault::Lost(format!("starting the capture thread: {e}")))
            }),
        }
        self.running = true;
    }

    /// Ends the capture thread (it sees the new generation within [`POLL`]).
    fn stop(&mut self) {
        self.link.gen.fetch_add(1, Ordering::SeqCst);
        self.running = false;
    }

    fn lost(&mut self, m: String) -> SourceError {
        self.stop();
        SourceError::Lost(format!("camera {}: {m}", self.settings.shown()))
    }
}

impl Drop for GigeCamera {
    /// Stops acquisition and lets go of the camera before the daemon goes on (or exits), so
    /// the next one to open it is not refused control.
    fn drop(&mut self) {
        self.stop();
        self.join_previous(RELEASE);
    }
}

impl FrameSource for GigeCamera {
    fn next_frame(&mut self) -> Result<Frame, SourceError> {
        if !self.running {
            self.start();
        }
        let timeout = self.settings.timeout;
        let link = self.link.clone();
        let mut st = link.lock();
        loop {
            let wait = IDLE_AFTER.min(timeout);
            st = link
                .ready
                .wait_timeout_while(st, wait, |s| s.frame.is_none() && s.fault.is_none())
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if let Some(f) = st.fault.take() {
                drop(st);
                return Err(self.lost(f.to_string()));
            }
            if let Some(raw) = st.frame.take() {
                let format = st.format.unwrap_or(PixelFormat::Mono8);
                drop(st);
                return self.convert(format, raw);
            }
            let silent = st.alive_at.elapsed();
            let allowed = if st.format.is_none() {
                timeout.max(OPEN_WITHIN)
            } else {
                timeout
            };
            if silent > allowed {
                let m = match (st.format, self.settings.trigger_mode) {
                    (None, _) => format!("not open within {} ms", allowed.as_millis()),
                    (Some(_), TriggerMode::FreeRun) => {
                        format!("no frame for {} ms", silent.as_millis())
                    }
                    (Some(_), _) => format!("no answer for {} ms", silent.as_millis()),
                };
                drop(st);
                return Err(self.lost(m));
            }
            // Open and answering, waiting for its trigger: not a failure, and the source
            // loop gets to check for shutdown.
            if st.format.is_some() && self.settings.trigger_mode != TriggerMode::FreeRun {
                return Err(SourceError::Idle);
            }
        }
    }

    fn describe(&self) -> String {
        self.settings.shown()
    }

    fn limits(&self) -> SourceLimits {
        self.settings.limits
    }

    fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.link.lock().dropped)
    }

    fn trigger_hook(&self) -> Option<FireTrigger> {
        if self.settings.trigger_mode != TriggerMode::Software {
            return None;
        }
        let link = self.link.clone();
        Some(Arc::new(move || {
            link.triggers.fetch_add(1, Ordering::SeqCst);
        }))
    }
}

impl GigeCamera {
    fn convert(&self, format: PixelFormat, raw: Result<Raw, String>) -> Result<Frame, SourceError> {
        let shown = self.settings.shown();
        let raw = raw.map_err(|m| SourceError::BadFrame(format!("camera {shown}: {m}")))?;
        let l = self.settings.limits;
        if raw.width > l.max_width || raw.height > l.max_height {
            return Err(SourceError::BadFrame(format!(
                "camera {shown}: {}x{} frame is larger than {}x{}",
                raw.width, raw.height, l.max_width, l.max_height
            )));
        }
        let t0 = Instant::now();
        let image = to_rgb(format, &raw.data, raw.width, raw.height)
            .map_err(|m| SourceError::BadFrame(format!("camera {shown}: {m}")))?;
        Ok(Frame {
            image,
            origin: shown,
            captured: raw.captured,
            wall: raw.wall,
            decode_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// Opens the camera and applies the settings, then closes it: what `check-config` and the
/// daemon's start-up do, so a setting the camera lacks is refused before anything runs.
/// Returns how the camera names itself.
pub fn probe(s: &GigeSettings) -> Result<String, Fault> {
    let (cam, _stream, format) = open(s)?;
    let _ = cam.stop_acquisition();
    let name = |r: Result<aravis::glib::GString, aravis::glib::Error>| {
        r.map(|s| s.to_string()).unwrap_or_default()
    };
    Ok(format!(
        "{} {} (serial {}), {}",
        name(cam.vendor_name()),
        name(cam.model_name()),
        name(cam.device_serial_number()),
        format.genicam()
    ))
}

/// Opens the camera, applies `[source]` and starts acquiring.
fn open(s: &GigeSettings) -> Result<(Camera, Stream, PixelFormat), Fault> {
    let shown = s.shown();
    let lost = |what: &str, e: aravis::glib::Error| {
        Fault::Lost(format!("camera {shown}: {what}: {}", e.message()))
    };
    let unsupported = |key: &str, m: String| {
        Fault::Unsupported(format!("{}{key}: camera {shown} {m}", s.key_prefix))
    };
    let cam = match Camera::new(s.camera_id.as_deref()) {
        Ok(c) => c,
        // aravis opens by device id, `Vendor-Serial`, IP or MAC address; a bare serial number
        // is looked up among the cameras discovery finds.
        Err(e) => match s.camera_id.as_deref().and_then(id_of_serial) {
            Some(id) => Camera::new(Some(&id)).map_err(|e| lost("opening", e))?,
            None => return Err(lost("opening", e)),
        },
    };

    let offered: Vec<String> = cam
        .dup_available_pixel_formats_as_strings()
        .map_err(|e| lost("reading PixelFormat", e))?
        .into_iter()
        .map(|f| f.to_string())
        .collect();
    let format = match s.pixel_format {
        Some(f) => {
            if !offered.iter().any(|o| o == f.genicam()) {
                return Err(unsupported(
                    "pixel_format",
                    format!("offers {} but not {}", offered.join(", "), f.genicam()),
                ));
            }
            cam.set_pixel_format_from_string(f.genicam())
                .map_err(|e| lost("setting PixelFormat", e))?;
            f
        }
        None => {
            let current = cam
                .pixel_format_as_string()
                .map_err(|e| lost("reading PixelFormat", e))?;
            PixelFormat::from_genicam(&current).ok_or_else(|| {
                let usable: Vec<&str> = offered
                    .iter()
                    .filter(|o| PixelFormat::from_genicam(o).is_some())
                    .map(String::as_str)
                    .collect();
                unsupported(
                    "pixel_format",
                    format!(
                        "sends {current}, which is not converted here: set one of {}",
                        if usable.is_empty() {
                            "Mono8, RGB8, BGR8, Bayer*8 (it offers none)".into()
                        } else {
                            usable.join(", ")
                        }
                    ),
                )
            })?
        }
    };

    if let Some(us) = s.exposure_us {
        let has = cam.is_exposure_time_available().unwrap_or(false);
        if !has {
            return Err(unsupported(
                "exposure_us",
                "has no ExposureTime feature".into(),
            ));
        }
        if cam.is_exposure_auto_available().unwrap_or(false) {
            cam.set_exposure_time_auto(Auto::Off)
                .map_err(|e| lost("setting ExposureAuto", e))?;
        }
        let (lo, hi) = cam
            .exposure_time_bounds()
            .map_err(|e| lost("reading ExposureTime bounds", e))?;
        if !(lo..=hi).contains(&us) {
            return Err(unsupported(
                "exposure_us",
                format!("takes {lo}..{hi} µs, not {us}"),
            ));
        }
        cam.set_exposure_time(us)
            .map_err(|e| lost("setting ExposureTime", e))?;
    }

    if let Some(db) = s.gain_db {
        // SFNC's `Gain` is in dB. A camera with only `GainRaw` (no unit) is refused rather
        // than set to a number that means something else.
        if !cam.is_feature_available("Gain").unwrap_or(false) {
            let raw = cam.is_feature_available("GainRaw").unwrap_or(false);
            return Err(unsupported(
                "gain_db",
                format!(
                    "has no Gain feature in dB{}",
                    if raw {
                        " (only GainRaw, without a unit)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if cam.is_gain_auto_available().unwrap_or(false) {
            cam.set_gain_auto(Auto::Off)
                .map_err(|e| lost("setting GainAuto", e))?;
        }
        let (lo, hi) = cam
            .float_bounds("Gain")
            .map_err(|e| lost("reading Gain bounds", e))?;
        if !(lo..=hi).contains(&db) {
            return Err(unsupported(
                "gain_db",
                format!("takes {lo}..{hi} dB, not {db}"),
            ));
        }
        cam.set_float("Gain", db)
            .map_err(|e| lost("setting Gain", e))?;
    }

    match s.trigger_mode.source() {
        None => {
            // A camera without triggers free-runs already.
            if cam.is_feature_available("TriggerMode").unwrap_or(false) {
                cam.clear_triggers()
                    .map_err(|e| lost("setting TriggerMode Off", e))?;
            }
        }
        Some(source) => {
            let sources: Vec<String> = cam
                .dup_available_trigger_sources()
                .map(|v| v.into_iter().map(|s| s.to_string()).collect())
                .unwrap_or_default();
            if !sources.contains(&source) {
                return Err(unsupported(
                    "trigger_mode",
                    format!(
                        "has no TriggerSource {source} (it offers {})",
                        if sources.is_empty() {
                            "none".into()
                        } else {
                            sources.join(", ")
                        }
                    ),
                ));
            }
            cam.set_trigger(&source)
                .map_err(|e| lost("setting the trigger", e))?;
        }
    }

    cam.set_acquisition_mode(AcquisitionMode::Continuous)
        .map_err(|e| lost("setting AcquisitionMode", e))?;
    let payload = cam.payload().map_err(|e| lost("reading PayloadSize", e))?;
    let stream = cam
        .create_stream()
        .map_err(|e| lost("creating the stream", e))?;
    for _ in 0..STREAM_BUFFERS {
        stream.push_buffer(Buffer::new_allocate(payload as usize));
    }
    cam.start_acquisition()
        .map_err(|e| lost("starting acquisition", e))?;
    tracing::info!(
        "camera {shown}: acquiring {} ({:?}), payload {payload} bytes",
        format.genicam(),
        s.trigger_mode
    );
    Ok((cam, stream, format))
}

/// The device id of the camera whose serial number is `serial`, after a fresh discovery.
fn id_of_serial(serial: &str) -> Option<String> {
    use std::ffi::CStr;
    let text = |p: *const std::os::raw::c_char| {
        // SAFETY: aravis returns NUL-terminated strings it owns (or NULL), valid until the next
        // update of its device list; they are copied at once.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    // SAFETY: aravis's global device list, updated and read on this thread; the daemon opens
    // one camera, and only the thread opening it (the probe at start-up, then one capture
    // thread at a time) touches the list.
    unsafe {
        aravis_sys::arv_update_device_list();
        (0..aravis_sys::arv_get_n_devices())
            .find(|&i| text(aravis_sys::arv_get_device_serial_nbr(i)).as_deref() == Some(serial))
            .and_then(|i| text(aravis_sys::arv_get_device_id(i)))
    }
}

/// The capture thread of generation `gen`: open, then copy out frames (and fire triggers)
/// until a fault or a newer generation.
fn capture(s: GigeSettings, link: Arc<Link>, gen: u64) {
    let (cam, stream, format) = match open(&s) {
        Ok(x) => x,
        Err(f) => return link.report(gen, |st| st.fault = Some(f)),
    };
    link.report(gen, |st| {
        st.format = Some(format);
        st.alive_at = Instant::now();
    });
    // aravis's heartbeat notices a camera that stopped answering (and one that another host
    // took control of).
    let control_lost = Arc::new(AtomicBool::new(false));
    let device = cam.device();
    if let Some(d) = &device {
        let flag = control_lost.clone();
        d.connect_control_lost(move |_| flag.store(true, Ordering::SeqCst));
    }
    let mut last_probe = Instant::now();
    let fault = loop {
        if !link.current(gen) {
            break None;
        }
        if control_lost.load(Ordering::SeqCst) {
            break Some("control lost (no answer to the heartbeat)".to_string());
        }
        if s.trigger_mode == TriggerMode::Software
            && link
                .triggers
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            if let Err(e) = cam.software_trigger() {
                break Some(format!("TriggerSoftware: {}", e.message()));
            }
        }
        if let Some(buf) = stream.timeout_pop_buffer(POLL.as_micros() as u64) {
            // A buffer handed back never filled (`Cleared`) holds no frame, not a bad one.
            if buf.status() == BufferStatus::Cleared {
                stream.push_buffer(buf);
                continue;
            }
            let got = if buf.status() == BufferStatus::Success {
                Ok(Raw {
                    data: buf.image_data(),
                    width: buf.image_width().max(0) as u32,
                    height: buf.image_height().max(0) as u32,
                    captured: Instant::now(),
                    wall: SystemTime::now(),
                })
            } else {
                Err(format!("incomplete frame ({:?})", buf.status()))
            };
            stream.push_buffer(buf);
            link.report(gen, |st| {
                if got.is_ok() {
                    st.alive_at = Instant::now();
                }
                if st.frame.replace(got).is_some() {
                    st.dropped += 1;
                }
            });
        } else if s.trigger_mode != TriggerMode::FreeRun && last_probe.elapsed() >= PROBE_EVERY {
            // Silent while waiting for a trigger: a register read over the control channel
            // (GigE Vision's bootstrap Version register) says whether it is still there.
            last_probe = Instant::now();
            match device.as_ref().map(|d| d.read_register(0)) {
                Some(Ok(_)) => link.report(gen, |st| st.alive_at = Instant::now()),
                Some(Err(e)) => break Some(format!("control read: {}", e.message())),
                None => break Some("no device behind the camera".into()),
            }
        }
    };
    if let Some(m) = fault {
        link.report(gen, |st| st.fault = Some(Fault::Lost(m)));
    }
    let _ = cam.stop_acquisition();
}
