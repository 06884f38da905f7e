//! Honest health: the daemon is healthy only while the pipeline makes progress end to end. The
//! inference thread beats on every turn of its loop (a frame, or a ≤ 200 ms wait for one), the
//! publisher on every event and at least every 500 ms (connected, or waiting out a broker
//! outage while the spool keeps what it is given). `/healthz`, the systemd watchdog and the
//! retained status all read the same beats, so they cannot disagree.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

use serde_json::json;

/// The publisher is stalled when it has not beaten for this long.
pub const PUBLISHER_STALL_MS: u64 = 1500;
/// Inference is stalled after this long without a beat, or 3× its slowest recent frame if
/// that is longer (a slow CPU is not a stall).
pub const INFERENCE_STALL_MS: u64 = 1500;
/// Until the first verdict: the first frame also warms the model up (tract allocates its
/// buffers lazily), which can take far longer than any later frame.
pub const FIRST_FRAME_MS: u64 = 30_000;

/// The broker connection as the publisher last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broker {
    Connecting = 0,
    Connected = 1,
    /// Lost or refused: verdicts are kept in the spool until it is back.
    Disconnected = 2,
}

/// Beats and states, written by the threads and read by `/healthz`, status and the watchdog.
pub struct Health {
    started: Instant,
    inference_beat: AtomicU64,
    publisher_beat: AtomicU64,
    /// Milliseconds since start of the last verdict + 1 (0: none yet).
    last_verdict: AtomicU64,
    /// The slowest of the last frames' processing times, decaying.
    frame_ms: AtomicU64,
    broker: AtomicU8,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            started: Instant::now(),
            inference_beat: AtomicU64::new(0),
            publisher_beat: AtomicU64::new(0),
            last_verdict: AtomicU64::new(0),
            frame_ms: AtomicU64::new(0),
            broker: AtomicU8::new(Broker::Connecting as u8),
        }
    }
}

/// What `/healthz` answers.
#[derive(Debug)]
pub struct Report {
    pub healthy: bool,
    pub body: serde_json::Value,
}

impl Health {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn inference_beat(&self) {
        self.inference_beat.store(self.now(), Ordering::Relaxed);
    }

    pub fn publisher_beat(&self) {
        self.publisher_beat.store(self.now(), Ordering::Relaxed);
    }

    /// A verdict was made; `frame_ms` is what the frame took.
    pub fn verdict(&self, frame_ms: f64) {
        let now = self.now();
        let first = self.last_verdict.swap(now + 1, Ordering::Relaxed) == 0;
        self.inference_beat.store(now, Ordering::Relaxed);
        if first {
            return; // the warm-up frame says nothing about the next ones
        }
        let ms = frame_ms.max(0.0) as u64;
        let old = self.frame_ms.load(Ordering::Relaxed);
        // Jump up at once, decay slowly: one slow frame widens the window for a while.
        self.frame_ms
            .store(ms.max(old - old / 16), Ordering::Relaxed);
    }

    pub fn set_broker(&self, b: Broker) {
        self.broker.store(b as u8, Ordering::Relaxed);
    }

    pub fn broker(&self) -> Broker {
        match self.broker.load(Ordering::Relaxed) {
            1 => Broker::Connected,
            2 => Broker::Disconnected,
            _ => Broker::Connecting,
        }
    }

    fn age(&self, beat: &AtomicU64) -> u64 {
        self.now().saturating_sub(beat.load(Ordering::Relaxed))
    }

    pub fn inference_running(&self) -> bool {
        let limit = if self.last_verdict.load(Ordering::Relaxed) == 0 {
            FIRST_FRAME_MS
        } else {
            INFERENCE_STALL_MS.max(3 * self.frame_ms.load(Ordering::Relaxed))
        };
        self.age(&self.inference_beat) <= limit
    }

    pub fn publisher_running(&self) -> bool {
        self.age(&self.publisher_beat) <= PUBLISHER_STALL_MS
    }

    /// Both ends of the pipeline turn: what the watchdog is fed on.
    pub fn pipeline_alive(&self) -> bool {
        self.inference_running() && self.publisher_running()
    }

    /// `running` or `stalled`, for the retained status.
    pub fn inference_state(&self) -> &'static str {
        if self.inference_running() {
            "running"
        } else {
            "stalled"
        }
    }

    /// `connected`, `spooling` (broker away, verdicts kept) or `stalled`.
    pub fn publisher_state(&self) -> &'static str {
        if !self.publisher_running() {
            "stalled"
        } else if self.broker() == Broker::Connected {
            "connected"
        } else {
            "spooling"
        }
    }

    /// The `/healthz` answer: healthy when inference and publisher turn, the camera delivers
    /// and the spool stores.
    pub fn report(&self, camera_ok: bool, spool: &crate::spooler::Counters) -> Report {
        let spool_ok = !spool.failing.load(Ordering::Relaxed);
        let healthy = self.pipeline_alive() && camera_ok && spool_ok;
        let lv = self.last_verdict.load(Ordering::Relaxed);
        let body = json!({
            "status": if healthy { "ok" } else { "unhealthy" },
            "inference": {"state": self.inference_state(), "last_beat_ms": self.age(&self.inference_beat)},
            "publisher": {"state": self.publisher_state(), "last_beat_ms": self.age(&self.publisher_beat)},
            "camera": if camera_ok { "ok" } else { "lost" },
            "spool": {"state": if spool_ok { "ok" } else { "failing" },
                      "depth": spool.depth.load(Ordering::Relaxed),
                      "dropped": spool.dropped.load(Ordering::Relaxed)},
            "last_verdict_age_s": (lv > 0).then(|| (self.now() - (lv - 1)) as f64 / 1e3),
            "uptime_s": self.now() as f64 / 1e3,
        });
        Report { healthy, body }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spooler::Counters;

    #[test]
    fn healthy_only_while_both_ends_beat() {
        let h = Health::default();
        h.inference_beat();
        h.publisher_beat();
        let c = Counters::default();
        assert!(h.report(true, &c).healthy);
        assert_eq!(h.publisher_state(), "spooling");
        h.set_broker(Broker::Connected);
        assert_eq!(h.publisher_state(), "connected");
        // Age the publisher's beat past the limit.
        h.publisher_beat.store(0, Ordering::Relaxed);
        let h2 = Health {
            started: Instant::now() - std::time::Duration::from_millis(PUBLISHER_STALL_MS + 500),
            ..Health::default()
        };
        h2.inference_beat();
        let r = h2.report(true, &c);
        assert!(!r.healthy);
        assert_eq!(r.body["publisher"]["state"], "stalled");
        assert_eq!(r.body["inference"]["state"], "running");
        assert!(!h2.pipeline_alive());
    }

    #[test]
    fn a_slow_frame_widens_the_inference_window_and_a_failing_spool_is_unhealthy() {
        let h = Health {
            started: Instant::now() - std::time::Duration::from_secs(30),
            ..Health::default()
        };
        h.publisher_beat();
        h.verdict(50_000.0); // the warm-up frame: not counted
        h.verdict(10_000.0);
        // Beat 5 s ago: stalled for a 10 ms model, running for one that takes 10 s a frame.
        h.inference_beat.store(h.now() - 5000, Ordering::Relaxed);
        assert!(h.inference_running());
        let c = Counters::default();
        c.failing.store(true, Ordering::Relaxed);
        let r = h.report(true, &c);
        assert!(!r.healthy);
        assert_eq!(r.body["spool"]["state"], "failing");
        assert!(r.body["last_verdict_age_s"].as_f64().unwrap() >= 0.0);
    }
}
