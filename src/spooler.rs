//! The spool's one owner. A dedicated OS thread (`spool`) holds the redb [`Spool`] and serves
//! requests from a bounded channel, so no disk I/O (commits, fsyncs, reads) ever runs on a
//! tokio worker: the publisher's reads and PUBACK removals, `cmd_result`s, alerts and verdicts
//! all go through it. The channel holds [`CAPACITY`] requests and **blocks** when full (threads
//! wait in `send`, the publisher awaits `send_async`): producers slow down, nothing is dropped
//! on the way in. The spool's own bound and eviction rule decide what is dropped, and every
//! drop is counted and announced with a `spool_full` alert built here.
//!
//! Depth, bytes, drops and errors are mirrored in atomics after every request, so `/metrics`,
//! stats and `/healthz` read them without a round trip.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::spool::{Message, Spool, SpoolError};

/// Requests waiting for the owner thread at most.
pub(crate) const CAPACITY: usize = 256;

/// Builds the messages that carry a new sequence number (a verdict and its evidence).
pub(crate) type BuildSeq = Box<dyn FnOnce(u64) -> (Message, Vec<Message>) + Send>;
/// Makes the `spool_full` alert, given the total dropped so far.
pub(crate) type AlertFn = Box<dyn Fn(u64) -> Message + Send>;

enum Req {
    Push(Message),
    PushSeq(BuildSeq, flume::Sender<Result<u64, String>>),
    Remove(u64),
    After(u64, usize, flume::Sender<Vec<(u64, Message)>>),
    Flush(flume::Sender<Result<(), String>>),
}

/// Mirrors of the spool's counters, updated by the owner after every request.
#[derive(Debug, Default)]
pub struct Counters {
    pub depth: AtomicU64,
    pub bytes: AtomicU64,
    pub max_bytes: AtomicU64,
    /// Messages evicted because the spool (or its disk) was full.
    pub dropped: AtomicU64,
    /// Messages refused: the disk would not take them even after a reopen.
    pub refused: AtomicU64,
    /// Failed spool operations (each also logged).
    pub errors: AtomicU64,
    /// The last operation failed: the spool is not storing what it is given.
    pub failing: AtomicBool,
}

/// A cloneable handle to the owner thread.
#[derive(Clone)]
pub struct SpoolHandle {
    tx: flume::Sender<Req>,
    counters: Arc<Counters>,
    notify: Arc<tokio::sync::Notify>,
}

impl SpoolHandle {
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn len(&self) -> u64 {
        self.counters.depth.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when something new was stored (the publisher waits on it).
    pub async fn stored(&self) {
        self.notify.notified().await
    }

    /// Stores a message (blocks while the request channel is full). From a thread.
    pub fn push(&self, msg: Message) {
        if self.tx.send(Req::Push(msg)).is_err() {
            self.lost("push");
        }
    }

    /// Stores a message from async code.
    pub async fn push_async(&self, msg: Message) {
        if self.tx.send_async(Req::Push(msg)).await.is_err() {
            self.lost("push");
        }
    }

    /// Stores what `build(seq)` makes with the next sequence number and returns that number.
    pub fn push_seq(&self, build: BuildSeq) -> Result<u64, String> {
        let (tx, rx) = flume::bounded(1);
        if self.tx.send(Req::PushSeq(build, tx)).is_err() {
            self.lost("push");
            return Err("the spool is gone".into());
        }
        rx.recv()
            .unwrap_or_else(|_| Err("the spool is gone".into()))
    }

    /// Deletes an acknowledged message (fire and forget; a lost delete only means a resend).
    pub async fn remove(&self, id: u64) {
        let _ = self.tx.send_async(Req::Remove(id)).await;
    }

    /// Up to `limit` messages with id > `after`, in order.
    pub async fn after(&self, after: u64, limit: usize) -> Vec<(u64, Message)> {
        let (tx, rx) = flume::bounded(1);
        if self
            .tx
            .send_async(Req::After(after, limit, tx))
            .await
            .is_err()
        {
            return vec![];
        }
        rx.recv_async().await.unwrap_or_default()
    }

    /// Asks for up to `limit` messages with id > `after` without waiting: the answer comes on the
    /// returned receiver. `None` when the request channel is full (ask again later).
    pub fn try_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Option<flume::Receiver<Vec<(u64, Message)>>> {
        let (tx, rx) = flume::bounded(1);
        self.tx.try_send(Req::After(after, limit, tx)).ok()?;
        Some(rx)
    }

    /// Makes everything stored durable; waits at most `deadline` for the owner.
    pub fn flush(&self, deadline: Duration) -> Result<(), String> {
        let (tx, rx) = flume::bounded(1);
        self.tx
            .send_timeout(Req::Flush(tx), deadline)
            .map_err(|_| "the spool did not take the flush request in time".to_string())?;
        rx.recv_timeout(deadline)
            .map_err(|_| "the spool did not flush in time".to_string())?
    }

    fn lost(&self, what: &str) {
        // Only after the owner thread died, which the supervisor turns into an exit.
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!("spool {what}: the spool thread is gone");
    }
}

/// Starts the owner of `spool`. The returned closure is the thread's body: it runs until every
/// handle is dropped, then flushes. `alert` makes the `spool_full` message.
pub fn start(mut spool: Spool, alert: AlertFn) -> (SpoolHandle, impl FnOnce() + Send + 'static) {
    let (tx, rx) = flume::bounded::<Req>(CAPACITY);
    let counters = Arc::new(Counters::default());
    let notify = Arc::new(tokio::sync::Notify::new());
    let handle = SpoolHandle {
        tx,
        counters: counters.clone(),
        notify: notify.clone(),
    };
    mirror(&spool, &counters);
    let body = move || {
        let mut alerted = spool.dropped() + spool.refused();
        let mut last_error_log: Option<Instant> = None;
        let mut note = |r: Result<(), SpoolError>, what: &str, c: &Counters| match r {
            Ok(()) => c.failing.store(false, Ordering::Relaxed),
            Err(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                c.failing.store(true, Ordering::Relaxed);
                // An error repeats on every request while the disk is sick: log it once a second.
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_error_log = Some(Instant::now());
                    tracing::error!("spool {what} failed: {e}");
                }
            }
        };
        loop {
            crate::tasks::fault_point("spool");
            let req = match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => Some(r),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
            let mut stored = false;
            match req {
                None => {}
                Some(Req::Push(m)) => {
                    let r = spool.push(m).map(|_| ());
                    stored = r.is_ok();
                    note(r, "write", &counters);
                }
                Some(Req::PushSeq(build, reply)) => {
                    let r = spool.push_seq(build);
                    stored = r.is_ok();
                    let _ = reply.send(r.as_ref().map(|(s, _)| *s).map_err(|e| e.to_string()));
                    note(r.map(|_| ()), "write", &counters);
                }
                Some(Req::Remove(id)) => note(spool.remove(id), "delete", &counters),
                Some(Req::After(after, limit, reply)) => match spool.after(after, limit) {
                    Ok(v) => {
                        let _ = reply.send(v);
                    }
                    Err(e) => {
                        let _ = reply.send(vec![]);
                        note(Err(e), "read", &counters);
                    }
                },
                Some(Req::Flush(reply)) => {
                    let r = spool.flush();
                    let _ = reply.send(r.as_ref().map_err(|e| e.to_string()).copied());
                    note(r, "flush", &counters);
                }
            }
            // Batch mode: what was buffered reaches the disk within ~100 ms, busy or quiet.
            let r = spool.flush_if_due();
            note(r, "flush", &counters);
            // Every drop is announced: one alert per 100 drops at most, so a full spool does not
            // fill itself with alerts.
            let dropped = spool.dropped() + spool.refused();
            if dropped > alerted && (alerted == 0 || dropped >= alerted + 100) {
                tracing::warn!(
                    "spool full: {} message(s) evicted (ok verdicts first) and {} refused so far",
                    spool.dropped(),
                    spool.refused()
                );
                alerted = dropped;
                let r = spool.push(alert(dropped)).map(|_| ());
                note(r, "write", &counters);
            }
            mirror(&spool, &counters);
            if stored {
                notify.notify_one();
            }
        }
        let r = spool.flush();
        note(r, "flush", &counters);
        mirror(&spool, &counters);
    };
    (handle, body)
}

fn mirror(spool: &Spool, c: &Counters) {
    c.depth.store(spool.len(), Ordering::Relaxed);
    c.bytes.store(spool.bytes(), Ordering::Relaxed);
    c.max_bytes.store(spool.max_bytes(), Ordering::Relaxed);
    c.dropped.store(spool.dropped(), Ordering::Relaxed);
    c.refused.store(spool.refused(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Fsync, Priority};

    fn msg(topic: &str, n: usize, p: Priority) -> Message {
        Message {
            topic: topic.into(),
            payload: vec![b'x'; n],
            retain: false,
            priority: p,
        }
    }

    #[tokio::test]
    async fn requests_from_threads_and_tasks_are_served_in_order_by_one_owner() {
        let dir = std::env::temp_dir().join(format!("inspectd-spooler-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir.join("s.redb"), 1 << 20, Fsync::Always).unwrap();
        let (h, body) = start(
            spool,
            Box::new(|n| msg("alert", n as usize, Priority::High)),
        );
        let owner = std::thread::spawn(body);
        let h2 = h.clone();
        let seq = std::thread::spawn(move || {
            h2.push(msg("a", 10, Priority::Low));
            h2.push_seq(Box::new(|seq| {
                (msg(&format!("v{seq}"), 10, Priority::High), vec![])
            }))
        })
        .join()
        .unwrap()
        .unwrap();
        assert_eq!(seq, 1);
        let got = h.after(0, 10).await;
        let topics: Vec<_> = got.iter().map(|(_, m)| m.topic.as_str()).collect();
        assert_eq!(topics, ["a", "v1"]);
        assert_eq!(h.len(), 2);
        h.remove(got[0].0).await;
        h.flush(Duration::from_secs(5)).unwrap();
        assert_eq!(h.len(), 1);
        drop(h);
        owner.join().unwrap();
    }
}
