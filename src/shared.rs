//! What the daemon's threads and tasks share, as narrow handles: who the device is
//! ([`Device`]), what the status reports ([`Status`]: camera, pause, model identity, with the
//! notification that wakes the publisher), the counters ([`StatsCell`]), the spool's handle, the
//! health beats and the latest-frame slot. Each handle hides its own locking: no caller takes
//! a lock or an atomic of another module's by hand.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use inspectd_cam::model::variant::Selection;
use inspectd_contract::v1;

use crate::health::Health;
use crate::pipeline::{LatestSlot, Stats};
use crate::spool::{Message, Priority};
use crate::spooler::SpoolHandle;

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
    pub slot: LatestSlot,
    pub stop: Arc<AtomicBool>,
    /// The commands for the inference thread.
    pub inbox: crate::pipeline::Inbox,
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
}
