//! Supervision of every thread and task the daemon starts. A panic, or an exit before the
//! daemon asked it to stop, is reported on one channel that `daemon::run` watches beside its
//! shutdown future: the daemon then stops what it can within a short deadline and returns an
//! error naming the task and the cause, so the process exits non-zero and systemd restarts it.
//! Without this a dead publisher left a process that looked healthy and published nothing.
//!
//! `INSPECTD_TEST_FAULT=<task>[@<ms>]` makes that task panic at its next [`fault_point`] once
//! `ms` (default 1000) milliseconds have passed since start: the tests use it to kill each task
//! in turn. It is read once; unset, a fault point is one relaxed load.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A task that ended when it should not have.
#[derive(Debug, Clone)]
pub struct Failure {
    pub task: &'static str,
    pub cause: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task {} {}", self.task, self.cause)
    }
}

/// Starts threads and tasks and reports the ones that fail.
pub struct Supervisor {
    // Unbounded: at most one message per supervised task, and a failing task must never block.
    tx: tokio::sync::mpsc::UnboundedSender<Failure>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Failure>,
    stopping: Arc<AtomicBool>,
}

/// The text of a panic payload.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-text panic payload)".into()
    }
}

impl Supervisor {
    /// `stopping` is the daemon's stop flag: a task that returns after it is set is done, not
    /// failed.
    pub fn new(stopping: Arc<AtomicBool>) -> Supervisor {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Supervisor { tx, rx, stopping }
    }

    fn report(
        tx: &tokio::sync::mpsc::UnboundedSender<Failure>,
        stopping: &AtomicBool,
        task: &'static str,
        panicked: Option<String>,
    ) {
        let cause = match panicked {
            Some(p) => format!("panicked: {p}"),
            None if stopping.load(Ordering::SeqCst) => return,
            None => "exited unexpectedly".to_string(),
        };
        tracing::error!("task {task} {cause}");
        let _ = tx.send(Failure { task, cause });
    }

    /// Runs `f` on a named OS thread, watched.
    pub fn thread<F>(
        &self,
        name: &'static str,
        f: F,
    ) -> std::io::Result<std::thread::JoinHandle<()>>
    where
        F: FnOnce() + Send + 'static,
    {
        let (tx, stopping) = (self.tx.clone(), self.stopping.clone());
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                Self::report(&tx, &stopping, name, r.err().map(|p| panic_text(&*p)));
            })
    }

    /// Runs `f` on the tokio runtime, watched. The handle resolves when `f` has ended.
    pub fn task<F>(&self, name: &'static str, f: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, stopping) = (self.tx.clone(), self.stopping.clone());
        let inner = tokio::spawn(f);
        tokio::spawn(async move {
            match inner.await {
                Ok(()) => Self::report(&tx, &stopping, name, None),
                Err(e) if e.is_panic() => {
                    let p = e.into_panic();
                    Self::report(&tx, &stopping, name, Some(panic_text(&*p)))
                }
                // Cancelled: only the runtime shutting down does that.
                Err(_) => {}
            }
        })
    }

    /// Resolves with the first failure.
    pub async fn failed(&mut self) -> Failure {
        match self.rx.recv().await {
            Some(f) => f,
            // Unreachable while `self` holds a sender; never resolve rather than invent one.
            None => std::future::pending().await,
        }
    }
}

fn fault() -> &'static Option<(String, Duration, Instant)> {
    static FAULT: OnceLock<Option<(String, Duration, Instant)>> = OnceLock::new();
    FAULT.get_or_init(|| {
        let v = std::env::var("INSPECTD_TEST_FAULT").ok()?;
        let (task, ms) = match v.split_once('@') {
            Some((t, ms)) => (t.to_string(), ms.parse().unwrap_or(1000)),
            None => (v, 1000),
        };
        Some((task, Duration::from_millis(ms), Instant::now()))
    })
}

/// Test hook: panics when `INSPECTD_TEST_FAULT` names `task` and its delay has passed.
pub fn fault_point(task: &str) {
    if let Some((t, after, since)) = fault() {
        if t == task && since.elapsed() >= *after {
            panic!("injected fault (INSPECTD_TEST_FAULT={task})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_thread_is_reported_with_its_name_and_message() {
        let mut s = Supervisor::new(Arc::new(AtomicBool::new(false)));
        s.thread("source", || panic!("boom {}", 7)).unwrap();
        let f = tokio::time::timeout(Duration::from_secs(5), s.failed())
            .await
            .unwrap();
        assert_eq!(f.task, "source");
        assert!(f.cause.contains("panicked: boom 7"), "{}", f.cause);
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_a_failure_but_not_after_stop() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut s = Supervisor::new(stop.clone());
        s.task("publisher", async {});
        let f = tokio::time::timeout(Duration::from_secs(5), s.failed())
            .await
            .unwrap();
        assert_eq!(
            (f.task, f.cause.as_str()),
            ("publisher", "exited unexpectedly")
        );
        stop.store(true, Ordering::SeqCst);
        s.task("http", async {}).await.unwrap();
        s.thread("inference", || {}).unwrap().join().unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), s.failed())
                .await
                .is_err(),
            "a task ending after stop is not a failure"
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported() {
        let mut s = Supervisor::new(Arc::new(AtomicBool::new(false)));
        s.task("http", async { panic!("bad request") });
        let f = s.failed().await;
        assert_eq!(f.task, "http");
        assert!(f.cause.contains("bad request"));
    }
}
