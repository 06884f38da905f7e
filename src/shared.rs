//! What the daemon's threads and tasks share, as narrow handles: who the device is
//! ([`Device`]), what the status reports ([`Status`]: camera, pause, model identity, with the
//! notification that wakes the publisher), the counters ([`StatsCell`]), the spool's handle, the
//! health beats and the latest-frame slot. Each handle hides its own locking: no caller takes
//! a lock or an atomic of another module's by hand.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use inspectd_cam::model::variant::Selection;
use inspectd_contract::v1;

use crate::health::Health;
use crate::source::Frame;
use crate::spool::{Message, Priority};
use crate::spooler::SpoolHandle;
use crate::verdict::Rules;

/// This device: its id and the topic prefix it publishes under (fixed for the run).
pub struct Device {
    pub id: String,
    pub prefix: String,
}

impl Device {
    pub fn topic(&self, leaf: &str) -> String {
        format!("{}/{}/{}", self.prefix, self.id, leaf)
    }

    /// An alert of this device, now, with only the fields every kind has (the kind's own
    /// fields go in with struct update syntax).
    pub fn new_alert(&self, kind: &str, severity: &str, message: &str) -> v1::Alert {
        v1::Alert::new(
            &self.id,
            inspectd_contract::timefmt::now(),
            kind,
            severity,
            message,
        )
    }

    /// The message of an alert.
    pub fn alert_message(&self, alert: &v1::Alert) -> Message {
        Message {
            topic: self.topic("alert"),
            payload: alert.to_json(),
            retain: false,
            priority: Priority::High,
        }
    }
}

/// The running model's identity, as status and verdicts name it.
pub use v1::ModelId;

/// The identity of a loaded model.
pub fn model_id(m: &inspectd_cam::model::Model) -> ModelId {
    ModelId {
        name: m.name.clone(),
        version: m.version.clone(),
        sha256: m.sha256.clone(),
    }
}

/// What the retained status reports. Every change that the status shows wakes the publisher,
/// which then publishes a fresh status.
pub struct Status {
    started: Instant,
    camera_ok: AtomicBool,
    paused: AtomicBool,
    model: RwLock<ModelId>,
    variant: RwLock<Option<Selection>>,
    changed: tokio::sync::Notify,
}

impl Status {
    pub fn new(model: ModelId, variant: Option<Selection>) -> Status {
        Status {
            started: Instant::now(),
            camera_ok: AtomicBool::new(true),
            paused: AtomicBool::new(false),
            model: RwLock::new(model),
            variant: RwLock::new(variant),
            changed: tokio::sync::Notify::new(),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn camera_ok(&self) -> bool {
        self.camera_ok.load(Ordering::Relaxed)
    }

    /// Sets the camera state; true when it changed (the publisher is then woken).
    pub fn set_camera_ok(&self, ok: bool) -> bool {
        let changed = self.camera_ok.swap(ok, Ordering::SeqCst) != ok;
        if changed {
            self.changed();
        }
        changed
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.changed();
    }

    pub fn model(&self) -> ModelId {
        self.model.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_model(&self, id: ModelId, variant: Option<Selection>) {
        *self.model.write().unwrap_or_else(|e| e.into_inner()) = id;
        *self.variant.write().unwrap_or_else(|e| e.into_inner()) = variant;
        self.changed();
    }

    /// The running variant and the timings it was chosen on.
    pub fn variant(&self) -> Option<Selection> {
        self.variant
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Something the status shows changed (or a rebirth was asked for): wake the publisher.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// Resolves at the next [`Status::changed`].
    pub async fn wait_changed(&self) {
        self.changed.notified().await
    }
}

/// The counters and latency samples, behind one lock that a panicking thread cannot poison
/// for the others.
#[derive(Default)]
pub struct StatsCell(Mutex<Stats>);

impl StatsCell {
    pub fn lock(&self) -> MutexGuard<'_, Stats> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Everything the threads and the publisher share: the handles above, the spool's, the
/// health beats, the latest frame, and the stop flag.
pub struct Shared {
    pub device: Device,
    pub status: Status,
    pub stats: StatsCell,
    /// The spool's owner thread (every spool read and write goes through it).
    pub spool: SpoolHandle,
    pub health: Health,
    /// The box's cameras, in config order (one, unnamed, for a plain `[source]`).
    pub cameras: Vec<Camera>,
    /// Each camera's latest frame.
    pub frames: FrameBoard,
    /// The camera `trigger` (the PLC, OPC UA) inspects with: `plc.camera`, or the first
    /// triggered one; `None` when every camera inspects continuously.
    pub trigger_camera: Option<usize>,
    pub stop: Arc<AtomicBool>,
    /// The commands for the inference thread.
    pub inbox: Inbox,
}

/// One camera at run time: its name, its trigger mode, its zones, its state and counters.
pub struct Camera {
    /// `None` for the one camera of a plain `[source]` table: then messages carry no `camera`.
    pub name: Option<String>,
    /// Inspected on triggers only (`trigger = "triggered"`).
    pub triggered: bool,
    /// The source, as its thread describes it (no password).
    pub source: String,
    /// Its own ROI and ignore zones, in place of the `[verdict]` ones.
    pub roi: Option<crate::verdict::Polygon>,
    pub ignore_zones: Option<Vec<crate::verdict::Zone>>,
    ok: AtomicBool,
    pub frames: AtomicU64,
    pub bad_frames: AtomicU64,
    /// Verdicts on its frames: ok, defect, suspect.
    pub verdicts: [AtomicU64; 3],
}

impl Camera {
    pub fn new(name: Option<String>, triggered: bool, source: String) -> Camera {
        Camera {
            name,
            triggered,
            source,
            roi: None,
            ignore_zones: None,
            ok: AtomicBool::new(true),
            frames: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            verdicts: Default::default(),
        }
    }

    pub fn ok(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }

    /// The rules for this camera's frames: `rules` with its own ROI and zones where it has them.
    pub fn rules(&self, mut rules: Rules) -> Rules {
        if let Some(roi) = &self.roi {
            rules.roi = Some(roi.clone());
        }
        if let Some(z) = &self.ignore_zones {
            rules.ignore_zones = z.clone();
        }
        rules
    }

    /// `name` for messages of the camera (`None`: a box with one unnamed camera).
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| "camera".into())
    }
}

impl Shared {
    /// Writes a message to the spool (from a thread: blocks while the spool's request channel
    /// is full).
    pub fn enqueue(&self, msg: Message) {
        self.spool.push(msg);
    }

    /// Publishes an alert (through the spool) from a thread.
    pub fn alert(&self, alert: v1::Alert) {
        self.enqueue(self.device.alert_message(&alert));
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A trigger from any path, for the default camera ([`Shared::trigger_camera`]: the PLC's):
    /// queued for the inference thread, or refused at once (paused, camera lost, continuous
    /// box, queue full, stopping). Either way `reply` gets exactly one answer; the refusal is
    /// also returned.
    pub fn trigger(&self, part_id: String, reply: Reply) -> Result<(), TriggerError> {
        self.trigger_at(self.trigger_camera, part_id, reply)
    }

    /// A trigger for the camera named `camera` (MQTT `cmd/trigger`'s `camera`). Without a
    /// name: the box's one triggered camera; with several triggered cameras the name is
    /// required (refused otherwise, naming them).
    pub fn trigger_named(
        &self,
        camera: Option<&str>,
        part_id: String,
        reply: Reply,
    ) -> Result<(), TriggerError> {
        let names = |triggered_only: bool| -> String {
            let n: Vec<String> = self
                .cameras
                .iter()
                .filter(|c| c.triggered || !triggered_only)
                .map(Camera::label)
                .collect();
            n.join(", ")
        };
        let target = match camera {
            Some(n) => match self
                .cameras
                .iter()
                .position(|c| c.name.as_deref() == Some(n))
            {
                Some(i) => Ok(Some(i)),
                None => Err(TriggerError::Camera(format!(
                    "no camera {n:?} on this box (cameras: {})",
                    names(false)
                ))),
            },
            None => {
                let mut t = (0..self.cameras.len()).filter(|&i| self.cameras[i].triggered);
                match (t.next(), t.next()) {
                    (one, None) => Ok(one),
                    _ => Err(TriggerError::Camera(format!(
                        "this box has several triggered cameras: name one ({})",
                        names(true)
                    ))),
                }
            }
        };
        match target {
            Ok(i) => self.trigger_at(i, part_id, reply),
            Err(e) => {
                reply
                    .counted(self.inbox.answers.clone())
                    .answer(Err(e.clone()));
                Err(e)
            }
        }
    }

    fn trigger_at(
        &self,
        camera: Option<usize>,
        part_id: String,
        reply: Reply,
    ) -> Result<(), TriggerError> {
        let reply = reply.counted(self.inbox.answers.clone());
        let cam = camera.and_then(|i| self.cameras.get(i).map(|c| (i, c)));
        let refused = match cam {
            _ if self.stopping() => Err(TriggerError::Stopping),
            None => Err(TriggerError::Continuous),
            Some((_, c)) if !c.triggered => Err(TriggerError::Continuous),
            Some(_) if self.status.paused() => Err(TriggerError::Paused),
            Some((_, c)) if !c.ok() => Err(TriggerError::CameraLost),
            Some((i, _)) => Ok(i),
        };
        let camera = match refused {
            Ok(i) => i,
            Err(e) => {
                reply.answer(Err(e.clone()));
                return Err(e);
            }
        };
        let r = self.inbox.trigger(TriggerReq {
            part_id,
            camera,
            at: reply.at,
            reply,
        });
        // The inference thread may be waiting for frames: it takes the trigger now.
        self.frames.wake();
        r
    }

    /// Sets camera `i`'s state and the box's (`ok` when every camera is); true when the
    /// camera's changed (the publisher is then woken: the status shows it).
    pub fn set_camera_ok(&self, i: usize, ok: bool) -> bool {
        let changed = self.cameras[i].ok.swap(ok, Ordering::SeqCst) != ok;
        if changed {
            let all = self.cameras.iter().all(Camera::ok);
            if !self.status.set_camera_ok(all) {
                self.status.changed();
            }
        }
        changed
    }

    /// Messages name their camera when the box's cameras have names.
    pub fn named_cameras(&self) -> bool {
        self.cameras.iter().any(|c| c.name.is_some())
    }

    /// An alert about camera `i` (its `camera` set when it has a name).
    pub fn camera_alert(&self, i: usize, kind: &str, severity: &str, message: &str) -> v1::Alert {
        v1::Alert {
            camera: self.cameras[i].name.clone(),
            ..self.device.new_alert(kind, severity, message)
        }
    }
}

/// Each camera's latest frame: at most one per camera, the newest. `put` replaces an unread
/// frame (counted as that camera's dropped frame) and never blocks. One lock and one condvar for
/// all cameras, so the inference thread waits for "any camera has a frame" and takes them
/// round-robin ([`FrameBoard::take_next`]).
pub struct FrameBoard {
    frames: Mutex<Vec<Option<Frame>>>,
    ready: Condvar,
    dropped: Vec<AtomicU64>,
    /// Bumped by [`FrameBoard::wake`] (under the lock): a waiting reader returns when it moves.
    wakes: AtomicU64,
}

impl FrameBoard {
    pub fn new(cameras: usize) -> FrameBoard {
        FrameBoard {
            frames: Mutex::new((0..cameras).map(|_| None).collect()),
            ready: Condvar::new(),
            dropped: (0..cameras).map(|_| AtomicU64::new(0)).collect(),
            wakes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Option<Frame>>> {
        self.frames.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores camera `cam`'s frame, dropping (and counting) its frame not yet taken.
    pub fn put(&self, cam: usize, f: Frame) {
        if self.lock()[cam].replace(f).is_some() {
            self.dropped[cam].fetch_add(1, Ordering::Relaxed);
        }
        self.ready.notify_all();
    }

    /// Takes a frame from the first camera, from `start` on (wrapping), that `want`s one and has
    /// one, waiting up to `timeout` for one. Starting after the camera served last makes it
    /// round-robin: a camera that always has a frame ready cannot starve another.
    pub fn take_next(
        &self,
        start: usize,
        want: impl Fn(usize) -> bool,
        timeout: Duration,
    ) -> Option<(usize, Frame)> {
        let until = Instant::now() + timeout;
        let mut g = self.lock();
        let woken = self.wakes.load(Ordering::Relaxed);
        let n = g.len();
        loop {
            for k in 0..n {
                let i = (start + k) % n;
                if want(i) {
                    if let Some(f) = g[i].take() {
                        return Some((i, f));
                    }
                }
            }
            let now = Instant::now();
            // Past the timeout, or woken: what the reader wants may have changed (a trigger).
            if now >= until || self.wakes.load(Ordering::Relaxed) != woken {
                return None;
            }
            g = self
                .ready
                .wait_timeout(g, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Ends a waiting [`FrameBoard::take_next`] (it returns `None`): a trigger came, so what
    /// the reader wants changed.
    pub fn wake(&self) {
        let _g = self.lock();
        self.wakes.fetch_add(1, Ordering::Relaxed);
        self.ready.notify_all();
    }

    /// Counts frames camera `cam`'s source let go before they reached the board.
    pub fn count_dropped(&self, cam: usize, n: u64) {
        self.dropped[cam].fetch_add(n, Ordering::Relaxed);
    }

    /// Discards camera `cam`'s waiting frame without counting it (a trigger wants a fresh one).
    pub fn clear(&self, cam: usize) {
        self.lock()[cam].take();
    }

    /// Camera `cam`'s dropped frames.
    pub fn dropped(&self, cam: usize) -> u64 {
        self.dropped[cam].load(Ordering::Relaxed)
    }

    /// Every camera's dropped frames.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }
}

/// A bounded sample of recent latencies for percentiles.
#[derive(Default, Clone)]
pub struct Ring {
    v: VecDeque<f64>,
}

impl Ring {
    const CAP: usize = 2048;

    pub fn push(&mut self, x: f64) {
        if self.v.len() == Self::CAP {
            self.v.pop_front();
        }
        self.v.push_back(x);
    }

    /// Percentile `p` (0..100) by nearest rank, or `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let mut s: Vec<f64> = self.v.iter().copied().collect();
        inspectd_cam::stats::percentile(&mut s, p)
    }
}

/// Counters and latency samples shared by the threads.
#[derive(Default)]
pub struct Stats {
    pub frames: u64,
    pub bad_frames: u64,
    pub verdicts: [u64; 3],
    pub unpublished_ok: u64,
    pub errors: u64,
    /// Commands not answered because they came faster than the answer budget.
    pub commands_unanswered: u64,
    pub latency: HashMap<&'static str, Ring>,
}

/// A trigger from any path (MQTT `cmd/trigger`, the PLC's Modbus `trigger_seq`): the part
/// in front of the camera, when the trigger came, and where its one answer goes.
pub struct TriggerReq {
    pub part_id: String,
    /// The camera to inspect with (index in [`Shared::cameras`]).
    pub camera: usize,
    pub at: Instant,
    pub reply: Reply,
}

/// Why a trigger got no verdict. Each is answered (MQTT `cmd_result` error, Modbus
/// `error_code`), never dropped in silence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TriggerError {
    /// The box inspects continuously (`source.trigger = "continuous"`).
    Continuous,
    /// Paused by `cmd/pause`.
    Paused,
    /// The camera is lost.
    CameraLost,
    /// The model failed on the frame (the `model_error` alert has the details).
    Model(String),
    /// No frame within `plc.trigger_timeout_ms` of the trigger.
    Timeout(u64),
    /// The trigger queue is full.
    QueueFull,
    /// The daemon is stopping.
    Stopping,
    /// The trigger names no camera of the box, or none where several are triggered.
    Camera(String),
}

/// How a trigger was answered, as `/metrics` counts it (`inspectd_trigger_answers{answer}`).
pub const TRIGGER_ANSWERS: [&str; 9] = [
    "verdict",
    "paused",
    "camera_lost",
    "model_error",
    "timeout",
    "queue_full",
    "continuous",
    "stopping",
    "bad_camera",
];

/// Triggers answered so far, by [`TRIGGER_ANSWERS`].
pub type TriggerCounts = Arc<[AtomicU64; TRIGGER_ANSWERS.len()]>;

impl TriggerError {
    /// Index in [`TRIGGER_ANSWERS`].
    fn answer(&self) -> usize {
        match self {
            TriggerError::Paused => 1,
            TriggerError::CameraLost => 2,
            TriggerError::Model(_) => 3,
            TriggerError::Timeout(_) => 4,
            TriggerError::QueueFull => 5,
            TriggerError::Continuous => 6,
            TriggerError::Stopping => 7,
            TriggerError::Camera(_) => 8,
        }
    }

    /// The PLC's `error_code`: 1 camera lost, 2 model error, 3 trigger timeout, 4 busy (paused,
    /// queue full, stopping, not a triggered box).
    pub fn code(&self) -> u16 {
        match self {
            TriggerError::CameraLost => 1,
            TriggerError::Model(_) => 2,
            TriggerError::Timeout(_) => 3,
            TriggerError::Continuous
            | TriggerError::Paused
            | TriggerError::QueueFull
            | TriggerError::Stopping
            | TriggerError::Camera(_) => 4,
        }
    }
}

impl std::fmt::Display for TriggerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TriggerError::Continuous => write!(
                f,
                "this box inspects continuously; set source.trigger = \"triggered\" to inspect on triggers"
            ),
            TriggerError::Paused => write!(f, "paused: send resume first"),
            TriggerError::CameraLost => write!(f, "camera lost: no frame to inspect"),
            TriggerError::Model(m) => write!(f, "model error: {m}"),
            TriggerError::Timeout(ms) => write!(f, "no frame within {ms} ms of the trigger"),
            TriggerError::QueueFull => write!(f, "busy: trigger queue full ({MAX_TRIGGERS})"),
            TriggerError::Stopping => write!(f, "the daemon is stopping"),
            TriggerError::Camera(m) => write!(f, "{m}"),
        }
    }
}

/// What a trigger's verdict says, for the paths that answer with it (the PLC registers).
#[derive(Clone, Debug, PartialEq)]
pub struct Inspected {
    pub kind: crate::verdict::Kind,
    /// Index of the verdict's label in the model's labels.
    pub class: usize,
    pub label: String,
    pub p_defect: f32,
    /// The verdict's MQTT `seq` (0 if the spool could not store it).
    pub seq: u64,
}

/// The answer to one trigger.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub part_id: String,
    pub result: Result<Inspected, TriggerError>,
    /// Trigger → answer.
    pub latency: Duration,
}

/// Where a trigger's answer goes: called exactly once. A reply dropped without an answer (the
/// daemon stopping with triggers queued) answers [`TriggerError::Stopping`].
pub struct Reply {
    send: Option<Box<dyn FnOnce(Outcome) + Send>>,
    part_id: String,
    at: Instant,
}

impl Reply {
    pub fn new(part_id: &str, at: Instant, f: impl FnOnce(Outcome) + Send + 'static) -> Reply {
        Reply {
            send: Some(Box::new(f)),
            part_id: part_id.to_string(),
            at,
        }
    }

    pub fn answer(mut self, result: Result<Inspected, TriggerError>) {
        self.send_now(result);
    }

    /// The same reply, counting its answer in `counts` first.
    fn counted(mut self, counts: TriggerCounts) -> Reply {
        if let Some(f) = self.send.take() {
            self.send = Some(Box::new(move |o: Outcome| {
                let i = o.result.as_ref().map_or_else(TriggerError::answer, |_| 0);
                counts[i].fetch_add(1, Ordering::Relaxed);
                f(o)
            }));
        }
        self
    }

    fn send_now(&mut self, result: Result<Inspected, TriggerError>) {
        if let Some(f) = self.send.take() {
            f(Outcome {
                part_id: std::mem::take(&mut self.part_id),
                result,
                latency: self.at.elapsed(),
            });
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.send_now(Err(TriggerError::Stopping));
    }
}

/// A `reload_model` request: the sha256 the file must have (if given) and where to answer.
pub type ReloadReq = (Option<String>, flume::Sender<Result<String, String>>);

pub const MAX_TRIGGERS: usize = 64;

/// The commands for the inference thread, from the MQTT side: triggers (a bounded queue), the
/// rules in force, and at most one model reload at a time. Both ends go through its methods.
pub struct Inbox {
    /// `source.trigger = "triggered"`: frames are inspected only on a trigger.
    triggered: bool,
    rules: RwLock<Rules>,
    triggers: (flume::Sender<TriggerReq>, flume::Receiver<TriggerReq>),
    reload: (flume::Sender<ReloadReq>, flume::Receiver<ReloadReq>),
    /// Set from a reload request until its answer: a second one is answered `busy`.
    reloading: AtomicBool,
    /// Triggers answered, by how.
    answers: TriggerCounts,
}

impl Inbox {
    pub fn new(triggered: bool, rules: Rules) -> Inbox {
        Inbox {
            triggered,
            rules: RwLock::new(rules),
            triggers: flume::bounded(MAX_TRIGGERS),
            reload: flume::bounded(1),
            reloading: AtomicBool::new(false),
            answers: Arc::default(),
        }
    }

    /// Triggers answered so far, by [`TRIGGER_ANSWERS`].
    pub fn trigger_answers(&self) -> [u64; TRIGGER_ANSWERS.len()] {
        std::array::from_fn(|i| self.answers[i].load(Ordering::Relaxed))
    }

    pub fn triggered(&self) -> bool {
        self.triggered
    }

    /// The verdict rules in force.
    pub fn rules(&self) -> Rules {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// New rules, used from the next frame on.
    pub fn set_rules(&self, rules: Rules) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = rules;
    }

    /// Queues a trigger; refused when the queue is full (the refusal is the reply's answer
    /// as well as the result).
    fn trigger(&self, req: TriggerReq) -> Result<(), TriggerError> {
        self.triggers.0.try_send(req).map_err(|e| {
            e.into_inner().reply.answer(Err(TriggerError::QueueFull));
            TriggerError::QueueFull
        })
    }

    /// Triggers waiting for the inference thread.
    pub fn pending_triggers(&self) -> usize {
        self.triggers.0.len()
    }

    /// Asks the inference thread to load the model again (between frames); the answer comes on
    /// the returned channel. Refused while another reload has not answered.
    pub fn reload(
        &self,
        sha256: Option<String>,
    ) -> Result<flume::Receiver<Result<String, String>>, String> {
        if self.reloading.swap(true, Ordering::SeqCst) {
            return Err(
                "busy: a reload_model is already in progress; try again when it has answered"
                    .into(),
            );
        }
        let (tx, rx) = flume::bounded(1);
        if self.reload.0.try_send((sha256, tx)).is_err() {
            self.reloading.store(false, Ordering::SeqCst);
            return Err("busy: a reload_model is already waiting".into());
        }
        Ok(rx)
    }

    /// The reload asked for has answered (or timed out): the next may come.
    pub fn reload_answered(&self) {
        self.reloading.store(false, Ordering::SeqCst);
    }

    pub(crate) fn take_reload(&self) -> Option<ReloadReq> {
        self.reload.1.try_recv().ok()
    }

    /// The oldest trigger waiting, if any.
    pub(crate) fn next_trigger(&self) -> Option<TriggerReq> {
        self.triggers.1.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn frame(tag: &str) -> Frame {
        Frame {
            image: image::RgbImage::new(1, 1),
            origin: tag.into(),
            captured: Instant::now(),
            wall: SystemTime::now(),
            decode_ms: 0.0,
        }
    }

    #[test]
    fn the_board_keeps_only_each_cameras_newest_frame_and_counts_the_rest() {
        let board = FrameBoard::new(2);
        board.put(0, frame("a"));
        board.put(0, frame("b"));
        board.put(0, frame("c"));
        board.put(1, frame("x"));
        assert_eq!((board.dropped(0), board.dropped(1)), (2, 0));
        assert_eq!(board.dropped_total(), 2);
        let all = |_| true;
        let got = board.take_next(0, all, Duration::from_millis(1)).unwrap();
        assert_eq!((got.0, got.1.origin.as_str()), (0, "c"));
        let got = board.take_next(0, all, Duration::from_millis(1)).unwrap();
        assert_eq!((got.0, got.1.origin.as_str()), (1, "x"));
        assert!(board.take_next(0, all, Duration::from_millis(1)).is_none());
    }

    #[test]
    fn a_camera_that_always_has_a_frame_does_not_starve_another() {
        let board = FrameBoard::new(2);
        let mut served = [0; 2];
        let mut next = 0;
        for round in 0..10 {
            // Camera 0 floods (a frame before every take); camera 1 has one every other turn.
            board.put(0, frame("flood"));
            if round % 2 == 0 {
                board.put(1, frame("slow"));
            }
            let (i, _) = board
                .take_next(next, |_| true, Duration::from_millis(1))
                .unwrap();
            served[i] += 1;
            next = (i + 1) % 2;
        }
        assert_eq!(served, [5, 5], "the slow camera gets every frame it has");
        // A camera nobody wants (triggered, no trigger) is never taken.
        board.put(1, frame("idle"));
        let got = board.take_next(0, |i| i == 0, Duration::from_millis(1));
        assert_eq!(got.map(|(i, _)| i), Some(0));
        assert!(board
            .take_next(0, |i| i == 0, Duration::from_millis(1))
            .is_none());
    }

    #[test]
    fn a_waiting_reader_gets_the_next_frame() {
        let board = Arc::new(FrameBoard::new(2));
        let b2 = board.clone();
        let t = std::thread::spawn(move || {
            b2.take_next(0, |_| true, Duration::from_secs(5))
                .map(|(i, f)| (i, f.origin))
        });
        std::thread::sleep(Duration::from_millis(50));
        board.put(1, frame("x"));
        assert_eq!(t.join().unwrap(), Some((1, "x".into())));
    }

    #[test]
    fn a_wake_ends_the_wait_so_the_reader_can_take_up_a_new_trigger() {
        // The inference thread waits for a continuous camera's frame while the triggered one
        // is not wanted; a trigger must end that wait at once (it changes what is wanted), not
        // after the wait's timeout: before this was fixed, every trigger waited out 200 ms.
        let board = Arc::new(FrameBoard::new(1));
        let b2 = board.clone();
        let t = std::thread::spawn(move || {
            let t0 = Instant::now();
            let got = b2.take_next(0, |_| false, Duration::from_secs(600));
            (got.is_none(), t0.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        // A frame nobody wants does not end the wait, a wake does.
        board.put(0, frame("unwanted"));
        board.wake();
        let (none, waited) = t.join().unwrap();
        assert!(none);
        assert!(waited < Duration::from_secs(300), "waited {waited:?}");
    }

    #[test]
    fn a_reply_answers_once_is_counted_and_answers_stopping_when_dropped() {
        let counts: TriggerCounts = Arc::default();
        let (tx, rx) = flume::unbounded();
        let reply = |id: &str| {
            let tx = tx.clone();
            Reply::new(id, Instant::now(), move |o| tx.send(o).unwrap()).counted(counts.clone())
        };
        reply("a").answer(Err(TriggerError::Paused));
        drop(reply("b"));
        reply("c").answer(Ok(Inspected {
            kind: crate::verdict::Kind::Ok,
            class: 0,
            label: "ok".into(),
            p_defect: 0.1,
            seq: 9,
        }));
        let got: Vec<(String, Option<u16>)> = rx
            .try_iter()
            .map(|o| (o.part_id, o.result.err().map(|e| e.code())))
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), Some(4)),
                ("b".into(), Some(4)),
                ("c".into(), None)
            ]
        );
        let n: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(n, [1, 1, 0, 0, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut r = Ring::default();
        for i in 1..=100 {
            r.push(i as f64);
        }
        assert_eq!(r.percentile(50.0), Some(50.0));
        assert_eq!(r.percentile(99.0), Some(99.0));
        assert_eq!(Ring::default().percentile(50.0), None);
    }
}
