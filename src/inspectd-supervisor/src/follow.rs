//! PostgreSQL: every supervisor's live views follow the rows that any of them stores.
//!
//! A writer's transaction ends with `NOTIFY inspectd_rows` (delivered at commit, to every
//! listening session). Each supervisor's follower thread LISTENs, and on a notification (or
//! every [`POLL`] without one, in case one was missed) reads the verdicts and alerts past its
//! cursor and hands them to the web's event channel, oldest first. Row ids grow in commit order
//! (writers take turns under `store::WRITE_LOCK`), so a cursor never skips a row committed late.
//! What has no cursor (a picture arrived, a command's result, the fleet changed) travels in the
//! notification's payload, from the other instances only: the writer announces its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use postgres::fallible_iterator::FallibleIterator;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::params;
use crate::store::{self, Cursor, Db, Event, Target};

/// The notification channel.
const CHANNEL: &str = "inspectd_rows";
/// Reads without a notification this often (a notification lost with a connection).
const POLL: Duration = Duration::from_secs(2);
/// Rows read per wake-up (a live view shows the newest; a burst beyond this skips older rows).
const ROWS: usize = 500;
/// A payload stays under PostgreSQL's 8000 bytes.
const MAX_PAYLOAD: usize = 7000;

/// Sends the notification for a batch stored in transaction `tx` (delivered at its commit).
pub fn notify(tx: &Db, instance: &str, events: &[Event]) -> Result<()> {
    let mut fleet = false;
    let mut evidence = Vec::new();
    let mut cmd = Vec::new();
    for e in events {
        match e {
            Event::Fleet => fleet = true,
            Event::Evidence { device, seq } => evidence.push(json!([device, seq])),
            Event::CmdResult(c) => cmd.push(json!([c.device, c.id])),
            _ => {}
        }
    }
    let mut p =
        json!({"i": instance, "fleet": fleet, "evidence": evidence, "cmd": cmd}).to_string();
    if p.len() > MAX_PAYLOAD {
        // Too much to name: the views refresh everything.
        p = json!({"i": instance, "fleet": true, "more": true}).to_string();
    }
    tx.query("SELECT pg_notify(?1, ?2)", params![CHANNEL, p], |_| Ok(()))?;
    Ok(())
}

/// The follower thread; stopped by [`Follower::stop`].
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Follower {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Starts following the database `target` for this process (`instance`).
pub fn start(
    target: Target,
    instance: String,
    events: broadcast::Sender<Event>,
) -> Result<Follower> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::Builder::new()
        .name("supervisor-follow".into())
        .spawn(move || run(&target, &instance, &events, &s))
        .context("starting the follower thread")?;
    Ok(Follower { stop, thread })
}

fn run(target: &Target, me: &str, events: &broadcast::Sender<Event>, stop: &AtomicBool) {
    let mut cursor: Option<Cursor> = None;
    let mut backoff = inspectd_contract::client::Backoff::new(Duration::from_secs(10));
    while !stop.load(Ordering::Relaxed) {
        match follow(target, me, events, stop, &mut cursor) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!("following the database for live views: {e:#}; again shortly");
                let until = Instant::now() + backoff.next_delay();
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// One connection's worth of following; Ok once stopped.
fn follow(
    target: &Target,
    me: &str,
    events: &broadcast::Sender<Event>,
    stop: &AtomicBool,
    cursor: &mut Option<Cursor>,
) -> Result<()> {
    let db = store::open_read(target)?;
    let Some(pg) = db.postgres() else {
        return Ok(());
    };
    db.batch(&format!("LISTEN {CHANNEL}"))?;
    // From now on at first; after a lost connection, from where it stood.
    let mut cur = match *cursor {
        Some(c) => c,
        None => store::cursor(&db)?,
    };
    *cursor = Some(cur);
    publish(&db, &mut cur, events)?;
    *cursor = Some(cur);
    let mut last_read = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let mut notes = Vec::new();
        {
            let mut client = pg.client()?;
            let mut n = client.notifications();
            let first = n.timeout_iter(Duration::from_millis(250)).next()?;
            if let Some(first) = first {
                notes.push(first);
                let mut more = n.iter();
                while let Some(x) = more.next()? {
                    notes.push(x);
                }
            }
        }
        for n in &notes {
            let Ok(v) = serde_json::from_str::<Value>(n.payload()) else {
                continue;
            };
            if v["i"] != me {
                others(&v, events);
            }
        }
        if !notes.is_empty() || last_read.elapsed() >= POLL {
            publish(&db, &mut cur, events)?;
            *cursor = Some(cur);
            last_read = Instant::now();
        }
    }
    Ok(())
}

/// The rows past `cur`, to the live views.
fn publish(db: &Db, cur: &mut Cursor, events: &broadcast::Sender<Event>) -> Result<()> {
    // No page is open: nothing to read, only where the rows stand (two index lookups).
    if events.receiver_count() == 0 {
        *cur = store::cursor(db)?;
        return Ok(());
    }
    let (from, verdicts, alerts) = store::since(db, *cur, ROWS)?;
    *cur = from;
    for v in verdicts {
        cur.verdict = cur.verdict.max(v.id);
        let _ = events.send(Event::Verdict(Box::new(v)));
    }
    for a in alerts {
        cur.alert = cur.alert.max(a.id);
        let _ = events.send(Event::Alert(Box::new(a)));
    }
    Ok(())
}

/// What another supervisor's batch changed besides rows.
fn others(v: &Value, events: &broadcast::Sender<Event>) {
    if v["fleet"] == true {
        let _ = events.send(Event::Fleet);
    }
    if v["more"] == true {
        // A refresh of the command lists (the same as a lagging view gets).
        let _ = events.send(Event::CmdResult(Box::new(store::CmdRow {
            device: String::new(),
            ts: String::new(),
            command: String::new(),
            id: String::new(),
            ok: true,
            detail: String::new(),
        })));
    }
    for e in v["evidence"].as_array().into_iter().flatten() {
        if let (Some(device), Some(seq)) = (e[0].as_str(), e[1].as_i64()) {
            let _ = events.send(Event::Evidence {
                device: device.to_string(),
                seq,
            });
        }
    }
    for c in v["cmd"].as_array().into_iter().flatten() {
        if let (Some(device), Some(id)) = (c[0].as_str(), c[1].as_str()) {
            let _ = events.send(Event::CmdResult(Box::new(store::CmdRow {
                device: device.to_string(),
                ts: String::new(),
                command: String::new(),
                id: id.to_string(),
                ok: true,
                detail: String::new(),
            })));
        }
    }
}
