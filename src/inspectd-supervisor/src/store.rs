//! The supervisor's history in SQLite (WAL): verdicts de-duplicated by (device, seq), evidence,
//! alerts with who acknowledged them, command results, device status and stats samples.
//! One writer thread applies messages in batches, one transaction per batch; web requests read
//! through their own connections and write only acknowledgements and sent commands.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use inspectd_contract::v1;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::ingest::Incoming;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'unknown',
    status TEXT,
    status_at INTEGER,
    status_ts INTEGER,
    last_seen INTEGER NOT NULL,
    stats TEXT,
    stats_at INTEGER
);
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    received INTEGER NOT NULL,
    part_id TEXT,
    verdict TEXT NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    reasons TEXT NOT NULL,
    model TEXT NOT NULL,
    latency_ms REAL,
    map_png BLOB,
    raw TEXT NOT NULL,
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS verdicts_ts ON verdicts (ts_ms);
CREATE INDEX IF NOT EXISTS verdicts_received ON verdicts (received);
CREATE INDEX IF NOT EXISTS verdicts_device_ts ON verdicts (device, ts_ms);
CREATE TABLE IF NOT EXISTS evidence (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received INTEGER NOT NULL,
    jpeg BLOB NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    ts TEXT NOT NULL,
    received INTEGER NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    seq INTEGER,
    raw TEXT NOT NULL,
    acked_by TEXT,
    acked_at INTEGER,
    UNIQUE (device, ts, kind, message)
);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (acked_at, received);
CREATE TABLE IF NOT EXISTS stats_samples (
    device TEXT NOT NULL,
    at INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    defect INTEGER NOT NULL,
    suspect INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS stats_samples_at ON stats_samples (device, at);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    command TEXT NOT NULL,
    payload TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    sent_by TEXT
);
CREATE TABLE IF NOT EXISTS cmd_results (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    ts TEXT NOT NULL,
    received INTEGER NOT NULL,
    command TEXT NOT NULL,
    cmd_id TEXT NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL,
    UNIQUE (device, ts, command, cmd_id)
);
"#;

/// Opens (creating if needed) the database for writing.
pub fn open(path: &Path) -> Result<Connection> {
    let conn =
        Connection::open(path).with_context(|| format!("--db {}: cannot open", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .with_context(|| format!("--db {}: not a usable SQLite database", path.display()))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)
        .with_context(|| format!("--db {}: cannot create the schema", path.display()))?;
    // Databases from before logins: commands gain who sent them.
    let has_sent_by: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('commands') WHERE name = 'sent_by'",
        [],
        |r| r.get(0),
    )?;
    if !has_sent_by {
        conn.execute_batch("ALTER TABLE commands ADD COLUMN sent_by TEXT")?;
    }
    Ok(conn)
}

/// A connection for a web request.
pub fn open_read(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// A verdict as listed (no map, no raw payload).
#[derive(Clone, Debug, PartialEq)]
pub struct VerdictRow {
    /// The row's id: the order of arrival (the live views' cursor).
    pub id: i64,
    pub device: String,
    pub seq: i64,
    pub ts: String,
    pub part_id: Option<String>,
    pub verdict: String,
    pub label: String,
    pub confidence: f64,
    pub reasons: Vec<String>,
    pub model: String,
    pub latency_ms: Option<f64>,
    pub has_map: bool,
    pub has_evidence: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AlertRow {
    pub id: i64,
    pub device: String,
    pub ts: String,
    pub kind: String,
    pub severity: String,
    pub message: String,
    pub seq: Option<i64>,
    pub acked_by: Option<String>,
    pub acked_at: Option<i64>,
    /// The verdict it names has a picture (evidence or a map).
    pub has_picture: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CmdRow {
    pub device: String,
    pub ts: String,
    pub command: String,
    pub id: String,
    pub ok: bool,
    pub detail: String,
}

/// What the UI is told after a batch is stored.
#[derive(Clone, Debug)]
pub enum Event {
    Verdict(Box<VerdictRow>),
    Evidence {
        device: String,
        seq: i64,
    },
    Alert(Box<AlertRow>),
    CmdResult(Box<CmdRow>),
    /// A device's status or stats changed.
    Fleet,
}

/// One message to store; `retained` for a retained status replayed by the broker.
pub struct Item {
    pub msg: Incoming,
    pub retained: bool,
}

/// The outcome of a batch.
#[derive(Default, Debug)]
pub struct Applied {
    pub stored: usize,
    /// Messages already stored (a redelivery): counted by kind.
    pub duplicates: Vec<&'static str>,
    pub events: Vec<Event>,
}

/// Stores a batch in one transaction.
pub fn apply(tx: &Transaction, items: &[Item], now: i64) -> Result<Applied> {
    let mut out = Applied::default();
    let mut seen = tx.prepare_cached(
        "INSERT INTO devices (device, last_seen) VALUES (?1, ?2)
         ON CONFLICT (device) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
    )?;
    for it in items {
        let dev = it.msg.device();
        // A retained status says nothing about now: the device was seen when it was sent.
        // (`status_at` is when it arrived all the same: rumqttd keeps the retain flag on live
        // deliveries too, last wills included.)
        let seen_at = match (&it.msg, it.retained) {
            (Incoming::Status { ts_ms, .. }, true) => ts_ms.unwrap_or(0).min(now),
            _ => now,
        };
        if !matches!(it.msg, Incoming::Forget { .. }) {
            seen.execute(params![dev, seen_at])?;
        }
        let fresh = match &it.msg {
            Incoming::Status {
                device,
                state,
                ts_ms,
                raw,
            } => {
                // A redelivered or replayed older status must not overwrite a newer one. The last
                // will is the exception: its `ts` is when the connection began, so `offline`
                // always applies (a later message from the box shows it alive again: `fleet`).
                let n = tx
                    .prepare_cached(
                        "UPDATE devices SET state = ?2, status = ?3, status_at = ?4, status_ts = ?5
                         WHERE device = ?1 AND (?6 = 'offline' OR ?5 IS NULL OR status_ts IS NULL OR status_ts <= ?5)",
                    )?
                    .execute(params![device, state, raw, now, ts_ms, state])?;
                out.events.push(Event::Fleet);
                n == 1
            }
            Incoming::Forget { device } => {
                tx.prepare_cached("DELETE FROM devices WHERE device = ?1")?
                    .execute(params![device])?;
                out.events.push(Event::Fleet);
                true
            }
            Incoming::Stats {
                device,
                counts,
                raw,
            } => {
                tx.prepare_cached(
                    "UPDATE devices SET stats = ?2, stats_at = ?3 WHERE device = ?1",
                )?
                .execute(params![device, raw, now])?;
                tx.prepare_cached("INSERT INTO stats_samples (device, at, ok, defect, suspect) VALUES (?1, ?2, ?3, ?4, ?5)")?
                    .execute(params![device, now, counts[0], counts[1], counts[2]])?;
                out.events.push(Event::Fleet);
                true
            }
            Incoming::Verdict(v) => {
                let reasons = serde_json::to_string(&v.reasons)?;
                let n = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO verdicts (device, seq, ts, ts_ms, received, part_id, verdict, label,
                         confidence, reasons, model, latency_ms, map_png, raw)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                    )?
                    .execute(params![
                        v.device, v.seq, v.ts, v.ts_ms, now, v.part_id, v.verdict, v.label, v.confidence,
                        reasons, v.model, v.latency_ms, (!v.map_png.is_empty()).then_some(&v.map_png), v.raw
                    ])?;
                if n == 1 {
                    let id = tx.last_insert_rowid();
                    let has_evidence = tx
                        .prepare_cached("SELECT 1 FROM evidence WHERE device = ?1 AND seq = ?2")?
                        .exists(params![v.device, v.seq])?;
                    out.events.push(Event::Verdict(Box::new(VerdictRow {
                        id,
                        device: v.device.clone(),
                        seq: v.seq,
                        ts: v.ts.clone(),
                        part_id: v.part_id.clone(),
                        verdict: v.verdict.clone(),
                        label: v.label.clone(),
                        confidence: v.confidence,
                        reasons: v.reasons.clone(),
                        model: v.model.clone(),
                        latency_ms: v.latency_ms,
                        has_map: !v.map_png.is_empty(),
                        has_evidence,
                    })));
                }
                n == 1
            }
            Incoming::Evidence { device, seq, jpeg } => {
                let n = tx
                    .prepare_cached("INSERT OR IGNORE INTO evidence (device, seq, received, jpeg) VALUES (?1, ?2, ?3, ?4)")?
                    .execute(params![device, seq, now, jpeg])?;
                if n == 1 {
                    out.events.push(Event::Evidence {
                        device: device.clone(),
                        seq: *seq,
                    });
                }
                n == 1
            }
            Incoming::Alert(a) => {
                let n = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO alerts (device, ts, received, kind, severity, message, seq, raw)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?
                    .execute(params![a.device, a.ts, now, a.kind, a.severity, a.message, a.seq, a.raw])?;
                if n == 1 {
                    let id = tx.last_insert_rowid();
                    let has_picture = tx
                        .prepare_cached(&format!("SELECT {PICTURE} FROM alerts a WHERE a.id = ?1"))?
                        .query_row(params![id], |r| r.get(0))?;
                    out.events.push(Event::Alert(Box::new(AlertRow {
                        id,
                        has_picture,
                        device: a.device.clone(),
                        ts: a.ts.clone(),
                        kind: a.kind.clone(),
                        severity: a.severity.clone(),
                        message: a.message.clone(),
                        seq: a.seq,
                        acked_by: None,
                        acked_at: None,
                    })));
                }
                n == 1
            }
            Incoming::CmdResult(c) => {
                let id = c.id.clone().unwrap_or_default();
                let n = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO cmd_results (device, ts, received, command, cmd_id, ok, detail)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![c.device, c.ts, now, c.command, id, c.ok, c.detail])?;
                if n == 1 {
                    out.events.push(Event::CmdResult(Box::new(CmdRow {
                        device: c.device.clone(),
                        ts: c.ts.clone(),
                        command: c.command.clone(),
                        id,
                        ok: c.ok,
                        detail: c.detail.clone(),
                    })));
                }
                n == 1
            }
        };
        if fresh {
            out.stored += 1;
        } else {
            out.duplicates.push(it.msg.kind());
        }
    }
    Ok(out)
}

/// How much history is kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub days: u32,
    pub max_verdicts: u64,
}

/// Deletes what is past the retention limits: verdicts older than `days` or beyond the newest
/// `max_verdicts`, their evidence, acknowledged alerts, command results and stats samples older
/// than `days` (stats samples: one day). Open alerts are kept. Returns the verdicts deleted.
pub fn enforce(conn: &Connection, r: Retention, now: i64) -> Result<usize> {
    let cutoff = now - r.days as i64 * 86_400_000;
    let tx = conn.unchecked_transaction()?;
    let mut n = tx.execute("DELETE FROM verdicts WHERE received < ?1", params![cutoff])?;
    n += tx.execute(
        "DELETE FROM verdicts WHERE id <= (SELECT id FROM verdicts ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        params![r.max_verdicts as i64],
    )?;
    // Evidence without its verdict: gone with it, or never came (after a grace period).
    tx.execute(
        "DELETE FROM evidence WHERE received < ?1 AND NOT EXISTS
         (SELECT 1 FROM verdicts v WHERE v.device = evidence.device AND v.seq = evidence.seq)",
        params![now - 600_000],
    )?;
    tx.execute(
        "DELETE FROM alerts WHERE acked_at IS NOT NULL AND received < ?1",
        params![cutoff],
    )?;
    tx.execute(
        "DELETE FROM cmd_results WHERE received < ?1",
        params![cutoff],
    )?;
    tx.execute("DELETE FROM commands WHERE sent_at < ?1", params![cutoff])?;
    tx.execute(
        "DELETE FROM stats_samples WHERE at < ?1",
        params![now - 86_400_000],
    )?;
    tx.commit()?;
    Ok(n)
}

/// One fleet row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetRow {
    pub device: String,
    /// online, offline, stale or stopped.
    pub state: String,
    pub last_seen: i64,
    pub camera: Option<String>,
    pub paused: bool,
    pub model: String,
    pub model_version: String,
    pub fps: Option<f64>,
    pub p95_ms: Option<f64>,
    pub spool_depth: Option<i64>,
    /// Over the last hour: inspected parts, defect and suspect shares.
    pub inspected: i64,
    pub defect_rate: Option<f64>,
    pub suspect_rate: Option<f64>,
}

/// Verdict counts [ok, defect, suspect] over the window from cumulative counter samples:
/// positive steps are summed, and a drop (the device restarted) counts from zero.
pub fn counter_deltas(samples: &[[i64; 3]]) -> [i64; 3] {
    let mut out = [0; 3];
    for w in samples.windows(2) {
        for k in 0..3 {
            let d = w[1][k] - w[0][k];
            out[k] += if d >= 0 { d } else { w[1][k] };
        }
    }
    out
}

/// The fleet: one row per device. `stale_after` ms without a message turns `online` to `stale`.
pub fn fleet(conn: &Connection, now: i64, stale_after: i64) -> Result<Vec<FleetRow>> {
    let hour = now - 3_600_000;
    let mut rows = Vec::new();
    let mut q = conn.prepare(
        "SELECT device, state, status, last_seen, stats, stats_at, status_at FROM devices ORDER BY device",
    )?;
    type Dev = (
        String,
        String,
        Option<String>,
        i64,
        Option<String>,
        Option<i64>,
        Option<i64>,
    );
    let devs: Vec<Dev> = q
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut samples_q = conn.prepare_cached(
        "SELECT ok, defect, suspect FROM stats_samples WHERE device = ?1 AND at >= ?2 ORDER BY at",
    )?;
    let mut counts_q = conn.prepare_cached(
        "SELECT verdict, count(*) FROM verdicts WHERE device = ?1 AND received >= ?2 GROUP BY verdict",
    )?;
    for (device, state, status, last_seen, stats, stats_at, status_at) in devs {
        // Stored payloads passed ingest: they decode (a failure reads as no status / stats).
        let status: Option<v1::Status> = status.and_then(|s| serde_json::from_str(&s).ok());
        let fresh_stats = stats_at.is_some_and(|t| now - t < stale_after.max(60_000));
        let stats: Option<v1::Stats> = stats
            .filter(|_| fresh_stats)
            .and_then(|s| serde_json::from_str(&s).ok());
        // Messages after an `offline` (a replayed last will, or a box that came back without a
        // status yet) prove the box alive.
        let alive_since_status = status_at.is_some_and(|t| last_seen > t + 5_000);
        let state = match state.as_str() {
            "online" | "offline" if now - last_seen > stale_after => {
                if state == "online" {
                    "stale"
                } else {
                    "offline"
                }
            }
            "online" => "online",
            "offline" if alive_since_status => "online",
            "stopping" => "stopped",
            "offline" => "offline",
            _ => "unknown",
        };
        let samples: Vec<[i64; 3]> = samples_q
            .query_map(params![device, hour], |r| {
                Ok([r.get(0)?, r.get(1)?, r.get(2)?])
            })?
            .collect::<rusqlite::Result<_>>()?;
        // The device's own counters see unpublished `ok` verdicts too; without two samples in
        // the hour, count the verdicts stored.
        let counts = if samples.len() >= 2 {
            counter_deltas(&samples)
        } else {
            let mut c = [0i64; 3];
            for r in counts_q.query_map(params![device, hour], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })? {
                let (k, n) = r?;
                match k.as_str() {
                    "ok" => c[0] = n,
                    "defect" => c[1] = n,
                    "suspect" => c[2] = n,
                    _ => {}
                }
            }
            c
        };
        let inspected: i64 = counts.iter().sum();
        let rate = |n: i64| (inspected > 0).then(|| n as f64 / inspected as f64);
        rows.push(FleetRow {
            state: state.to_string(),
            last_seen,
            camera: status
                .as_ref()
                .map(|s| s.camera.clone())
                .filter(|c| !c.is_empty()),
            paused: status.as_ref().is_some_and(|s| s.paused)
                || stats.as_ref().is_some_and(|s| s.paused),
            model: status
                .as_ref()
                .map(|s| s.model.name.clone())
                .unwrap_or_default(),
            model_version: status
                .as_ref()
                .map(|s| s.model.version.clone())
                .unwrap_or_default(),
            fps: stats.as_ref().map(|s| s.fps).filter(|f| f.is_finite()),
            p95_ms: stats
                .as_ref()
                .and_then(|s| s.latency_ms.get("total"))
                .and_then(|p| p.p95),
            spool_depth: stats
                .as_ref()
                .map(|s| s.spool.depth.min(i64::MAX as u64) as i64),
            inspected,
            defect_rate: rate(counts[1]),
            suspect_rate: rate(counts[2]),
            device,
        });
    }
    Ok(rows)
}

/// History filters (all optional; times in ms since the epoch, on the device's timestamps).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub device: Option<String>,
    pub verdict: Option<String>,
    pub label: Option<String>,
    pub part_id: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

const VERDICT_COLS: &str = "v.device, v.seq, v.ts, v.part_id, v.verdict, v.label, v.confidence, v.reasons, v.model,
     v.latency_ms, v.map_png IS NOT NULL, EXISTS (SELECT 1 FROM evidence e WHERE e.device = v.device AND e.seq = v.seq), v.id";

fn verdict_row(r: &rusqlite::Row) -> rusqlite::Result<VerdictRow> {
    let reasons: String = r.get(7)?;
    Ok(VerdictRow {
        device: r.get(0)?,
        seq: r.get(1)?,
        ts: r.get(2)?,
        part_id: r.get(3)?,
        verdict: r.get(4)?,
        label: r.get(5)?,
        confidence: r.get(6)?,
        reasons: serde_json::from_str(&reasons).unwrap_or_default(),
        model: r.get(8)?,
        latency_ms: r.get(9)?,
        has_map: r.get(10)?,
        has_evidence: r.get(11)?,
        id: r.get(12)?,
    })
}

/// Verdicts matching `f`, newest first (by device time, then arrival).
pub fn verdicts(conn: &Connection, f: &Filter, limit: usize) -> Result<Vec<VerdictRow>> {
    let mut sql = format!("SELECT {VERDICT_COLS} FROM verdicts v WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut add = |cond: &str, v: rusqlite::types::Value| {
        args.push(v);
        sql.push_str(&format!(" AND {cond} ?{}", args.len()));
    };
    if let Some(d) = &f.device {
        add("v.device =", d.clone().into());
    }
    if let Some(v) = &f.verdict {
        add("v.verdict =", v.clone().into());
    }
    if let Some(l) = &f.label {
        add("v.label =", l.clone().into());
    }
    if let Some(p) = &f.part_id {
        add("v.part_id =", p.clone().into());
    }
    if let Some(t) = f.from_ms {
        add("v.ts_ms >=", t.into());
    }
    if let Some(t) = f.to_ms {
        add("v.ts_ms <", t.into());
    }
    sql.push_str(&format!(" ORDER BY v.ts_ms DESC, v.id DESC LIMIT {limit}"));
    let mut q = conn.prepare(&sql)?;
    let rows = q
        .query_map(rusqlite::params_from_iter(args), verdict_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// The newest `limit` verdicts stored after row `after`, oldest first: what a live view that
/// showed everything up to `after` is missing.
pub fn verdicts_after(conn: &Connection, after: i64, limit: usize) -> Result<Vec<VerdictRow>> {
    let mut rows = conn
        .prepare_cached(&format!(
            "SELECT {VERDICT_COLS} FROM verdicts v WHERE v.id > ?1 ORDER BY v.id DESC LIMIT ?2"
        ))?
        .query_map(params![after, limit as i64], verdict_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.reverse();
    Ok(rows)
}

/// Where a live view stands: the last verdict row and the last alert row it shows. Pages put it
/// in `data-cursor`, the event stream in each row event's id (`V.A`), so a stream that starts
/// after the page was rendered, or reconnects (`Last-Event-ID`), first sends what the view missed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub verdict: i64,
    pub alert: i64,
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Cursor> {
        let (v, a) = s.trim().split_once('.')?;
        Some(Cursor {
            verdict: v.parse().ok().filter(|v| *v >= 0)?,
            alert: a.parse().ok().filter(|a| *a >= 0)?,
        })
    }

    pub fn id(&self) -> String {
        format!("{}.{}", self.verdict, self.alert)
    }

    /// This cursor, for a database whose newest rows are `head`: a part ahead of it comes from
    /// another database (the supervisor was started afresh) and starts over.
    fn within(self, head: Cursor) -> Cursor {
        let part = |mine: i64, last: i64| if mine > last { 0 } else { mine };
        Cursor {
            verdict: part(self.verdict, head.verdict),
            alert: part(self.alert, head.alert),
        }
    }
}

/// Where the database stands: its last verdict row and last alert row.
pub fn cursor(conn: &Connection) -> Result<Cursor> {
    Ok(conn.query_row(
        "SELECT (SELECT coalesce(max(id), 0) FROM verdicts), (SELECT coalesce(max(id), 0) FROM alerts)",
        [],
        |r| {
            Ok(Cursor {
                verdict: r.get(0)?,
                alert: r.get(1)?,
            })
        },
    )?)
}

/// What a view at `from` is missing: the newest `limit` verdicts and open alerts stored since,
/// oldest first, and the cursor they count from.
pub fn since(
    conn: &Connection,
    from: Cursor,
    limit: usize,
) -> Result<(Cursor, Vec<VerdictRow>, Vec<AlertRow>)> {
    let tx = conn.unchecked_transaction()?;
    let from = from.within(cursor(&tx)?);
    Ok((
        from,
        verdicts_after(&tx, from.verdict, limit)?,
        alerts_after(&tx, from.alert, limit)?,
    ))
}

/// A verdict, its map (PNG) and its payload without the map.
pub type StoredVerdict = (VerdictRow, Option<Vec<u8>>, String);

/// One verdict with its map and raw payload.
pub fn verdict(conn: &Connection, device: &str, seq: i64) -> Result<Option<StoredVerdict>> {
    Ok(conn
        .query_row(
            &format!("SELECT {VERDICT_COLS}, v.map_png, v.raw FROM verdicts v WHERE v.device = ?1 AND v.seq = ?2"),
            params![device, seq],
            |r| Ok((verdict_row(r)?, r.get(13)?, r.get(14)?)),
        )
        .optional()?)
}

pub fn evidence(conn: &Connection, device: &str, seq: i64) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .query_row(
            "SELECT jpeg FROM evidence WHERE device = ?1 AND seq = ?2",
            params![device, seq],
            |r| r.get(0),
        )
        .optional()?)
}

/// Whether alert `a`'s verdict has a picture.
const PICTURE: &str = "a.seq IS NOT NULL AND (EXISTS (SELECT 1 FROM evidence e WHERE e.device = a.device AND e.seq = a.seq)
     OR EXISTS (SELECT 1 FROM verdicts v WHERE v.device = a.device AND v.seq = a.seq AND v.map_png IS NOT NULL))";

fn alert_row(r: &rusqlite::Row) -> rusqlite::Result<AlertRow> {
    Ok(AlertRow {
        id: r.get(0)?,
        device: r.get(1)?,
        ts: r.get(2)?,
        kind: r.get(3)?,
        severity: r.get(4)?,
        message: r.get(5)?,
        seq: r.get(6)?,
        acked_by: r.get(7)?,
        acked_at: r.get(8)?,
        has_picture: r.get(9)?,
    })
}

fn alert_cols() -> String {
    format!("a.id, a.device, a.ts, a.kind, a.severity, a.message, a.seq, a.acked_by, a.acked_at, {PICTURE}")
}

/// Open alerts stored after row `after`, oldest first (the newest `limit` of them).
pub fn alerts_after(conn: &Connection, after: i64, limit: usize) -> Result<Vec<AlertRow>> {
    let mut rows = conn
        .prepare_cached(&format!(
            "SELECT {} FROM alerts a WHERE a.id > ?1 AND a.acked_at IS NULL ORDER BY a.id DESC LIMIT ?2",
            alert_cols()
        ))?
        .query_map(params![after, limit as i64], alert_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.reverse();
    Ok(rows)
}

/// Open alerts (newest first), then up to `acked` acknowledged ones.
pub fn alerts(conn: &Connection, acked: usize) -> Result<(Vec<AlertRow>, Vec<AlertRow>)> {
    let cols = alert_cols();
    let open = conn
        .prepare(&format!(
            "SELECT {cols} FROM alerts a WHERE acked_at IS NULL ORDER BY id DESC LIMIT 1000"
        ))?
        .query_map([], alert_row)?
        .collect::<rusqlite::Result<_>>()?;
    let done = conn
        .prepare(&format!("SELECT {cols} FROM alerts a WHERE acked_at IS NOT NULL ORDER BY acked_at DESC LIMIT {acked}"))?
        .query_map([], alert_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok((open, done))
}

/// Acknowledges an open alert; false if there is none with that id.
pub fn ack(conn: &Connection, id: i64, by: &str, now: i64) -> Result<bool> {
    Ok(conn.execute(
        "UPDATE alerts SET acked_by = ?2, acked_at = ?3 WHERE id = ?1 AND acked_at IS NULL",
        params![id, by, now],
    )? == 1)
}

pub fn record_command(
    conn: &Connection,
    id: &str,
    device: &str,
    command: &str,
    payload: &str,
    by: Option<&str>,
    now: i64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO commands (id, device, command, payload, sent_at, sent_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, device, command, payload, now, by],
    )?;
    Ok(())
}

/// A command sent from the UI and its result, if one came.
#[derive(Clone, Debug, PartialEq)]
pub struct SentCommand {
    pub id: String,
    pub command: String,
    pub payload: String,
    pub sent_at: i64,
    /// The operator logged in when it was sent.
    pub sent_by: Option<String>,
    pub result: Option<(bool, String)>,
}

pub fn commands(conn: &Connection, device: &str, limit: usize) -> Result<Vec<SentCommand>> {
    let rows = conn
        .prepare(
            "SELECT c.id, c.command, c.payload, c.sent_at, r.ok, r.detail, c.sent_by FROM commands c
             LEFT JOIN cmd_results r ON r.device = c.device AND r.cmd_id = c.id
             WHERE c.device = ?1 ORDER BY c.sent_at DESC LIMIT ?2",
        )?
        .query_map(params![device, limit as i64], |r| {
            let ok: Option<bool> = r.get(4)?;
            let detail: Option<String> = r.get(5)?;
            Ok(SentCommand {
                id: r.get(0)?,
                command: r.get(1)?,
                payload: r.get(2)?,
                sent_at: r.get(3)?,
                sent_by: r.get(6)?,
                result: ok.map(|ok| (ok, detail.unwrap_or_default())),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// The device's status and stats messages as stored.
pub fn device(conn: &Connection, device: &str) -> Result<Option<(Option<String>, Option<String>)>> {
    Ok(conn
        .query_row(
            "SELECT status, stats FROM devices WHERE device = ?1",
            params![device],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// Row counts for /metrics: verdicts, evidence, open alerts.
pub fn counts(conn: &Connection) -> Result<[i64; 3]> {
    Ok(conn.query_row(
        "SELECT (SELECT count(*) FROM verdicts), (SELECT count(*) FROM evidence),
                (SELECT count(*) FROM alerts WHERE acked_at IS NULL)",
        [],
        |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?]),
    )?)
}

#[cfg(test)]
mod tests {
    use super::super::ingest::classify;
    use super::*;
    use serde_json::{json, Value};

    fn db(name: &str) -> Connection {
        let p = std::env::temp_dir().join(format!(
            "inspectd-store-{}-{name}.sqlite",
            std::process::id()
        ));
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
        open(&p).unwrap()
    }

    fn item(topic: &str, v: Value) -> Item {
        Item {
            msg: classify("inspect", topic, v.to_string().as_bytes())
                .unwrap()
                .unwrap(),
            retained: false,
        }
    }

    fn verdict(dev: &str, seq: u64, kind: &str, ts: &str) -> Item {
        let reasons = if kind == "suspect" {
            json!(["marginal"])
        } else {
            json!([])
        };
        item(
            &format!("inspect/{dev}/verdict"),
            json!({"schema": "inspect.verdict/1", "device": dev, "seq": seq, "ts": ts, "verdict": kind,
                   "label": if kind == "ok" { "ok" } else { "scratch" }, "confidence": 0.9, "reasons": reasons,
                   "part_id": format!("P{seq}")}),
        )
    }

    fn store(conn: &mut Connection, items: &[Item], now: i64) -> Applied {
        let tx = conn.transaction().unwrap();
        let a = apply(&tx, items, now).unwrap();
        tx.commit().unwrap();
        a
    }

    #[test]
    fn a_redelivered_verdict_is_stored_once() {
        let mut c = db("dup");
        let a = store(
            &mut c,
            &[
                verdict("a", 1, "ok", "2026-11-26T10:00:00Z"),
                verdict("a", 1, "ok", "2026-11-26T10:00:00Z"),
                verdict("b", 1, "ok", "2026-11-26T10:00:00Z"),
            ],
            1000,
        );
        assert_eq!((a.stored, a.duplicates.clone()), (2, vec!["verdict"]));
        let a = store(
            &mut c,
            &[verdict("a", 1, "defect", "2026-11-26T10:00:00Z")],
            2000,
        );
        assert_eq!(a.stored, 0);
        assert_eq!(counts(&c).unwrap()[0], 2);
        assert_eq!(
            verdict_of(&c, "a", 1).verdict,
            "ok",
            "the first delivery stays"
        );
    }

    fn verdict_of(c: &Connection, d: &str, s: i64) -> VerdictRow {
        super::verdict(c, d, s).unwrap().unwrap().0
    }

    #[test]
    fn a_database_from_before_logins_gains_who_sent_each_command() {
        let p =
            std::env::temp_dir().join(format!("inspectd-store-{}-old.sqlite", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let old = Connection::open(&p).unwrap();
        old.execute_batch(
            "CREATE TABLE commands (id TEXT PRIMARY KEY, device TEXT NOT NULL, command TEXT NOT NULL,
             payload TEXT NOT NULL, sent_at INTEGER NOT NULL);
             INSERT INTO commands VALUES ('c1', 'a', 'pause', '{}', 1000);",
        )
        .unwrap();
        drop(old);
        let c = open(&p).unwrap();
        record_command(&c, "c2", "a", "resume", "{}", Some("anna"), 2000).unwrap();
        let sent = commands(&c, "a", 10).unwrap();
        let by: Vec<(&str, Option<&str>)> = sent
            .iter()
            .map(|s| (s.id.as_str(), s.sent_by.as_deref()))
            .collect();
        assert_eq!(by, [("c2", Some("anna")), ("c1", None)]);
        drop(c);
        open(&p).unwrap(); // and opens again
    }

    #[test]
    fn a_live_view_catches_up_from_its_cursor() {
        let mut c = db("cursor");
        let t = "2026-11-26T10:00:00Z";
        assert_eq!(cursor(&c).unwrap(), Cursor::default());
        store(
            &mut c,
            &[verdict("a", 1, "ok", t), verdict("b", 1, "ok", t)],
            1000,
        );
        let Cursor {
            verdict: v0,
            alert: a0,
        } = cursor(&c).unwrap();
        assert_eq!(a0, 0);
        let alert = |ts: &str| {
            item(
                "inspect/b/alert",
                json!({"schema": "inspect.alert/1", "ts": ts, "kind": "suspect", "message": "m", "seq": 2}),
            )
        };
        let applied = store(
            &mut c,
            &[
                verdict("a", 2, "ok", t),
                verdict("b", 2, "suspect", t),
                verdict("a", 2, "ok", t),
                alert("t1"),
            ],
            2000,
        );
        let ids: Vec<i64> = applied
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Verdict(v) => Some(v.id),
                _ => None,
            })
            .collect();
        let after = verdicts_after(&c, v0, 10).unwrap();
        assert_eq!(
            after
                .iter()
                .map(|v| (v.device.as_str(), v.seq))
                .collect::<Vec<_>>(),
            [("a", 2), ("b", 2)],
            "oldest first, the duplicate not at all"
        );
        assert_eq!(after.iter().map(|v| v.id).collect::<Vec<_>>(), ids);
        assert_eq!(
            verdicts_after(&c, 0, 1).unwrap()[0].seq,
            2,
            "the newest when limited"
        );
        let Cursor {
            verdict: v1,
            alert: a1,
        } = cursor(&c).unwrap();
        assert_eq!(v1, ids[1]);
        assert!(verdicts_after(&c, v1, 10).unwrap().is_empty());
        let alerts = alerts_after(&c, a0, 10).unwrap();
        assert_eq!((alerts.len(), alerts[0].id), (1, a1));
        assert!(alerts_after(&c, a1, 10).unwrap().is_empty());
        // A cursor from another, longer database starts over, part by part.
        let (from, v, a) = since(
            &c,
            Cursor {
                verdict: v1 + 5,
                alert: a1,
            },
            10,
        )
        .unwrap();
        assert_eq!((from.verdict, from.alert, v.len(), a.len()), (0, a1, 4, 0));
    }

    #[test]
    fn cursors_parse_from_their_ids_only() {
        let c = Cursor {
            verdict: 12,
            alert: 3,
        };
        assert_eq!(Cursor::parse(&c.id()), Some(c));
        for bad in ["", "12", "12.", ".3", "-1.3", "12.x", "1.2.3"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn history_filters_combine() {
        let mut c = db("filter");
        let items: Vec<Item> = (0..10)
            .map(|i| {
                verdict(
                    if i % 2 == 0 { "a" } else { "b" },
                    i,
                    if i % 3 == 0 { "defect" } else { "ok" },
                    &format!("2026-11-26T10:00:{i:02}Z"),
                )
            })
            .collect();
        store(&mut c, &items, 1);
        let f = |f: Filter| {
            verdicts(&c, &f, 100)
                .unwrap()
                .iter()
                .map(|v| v.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(f(Filter::default()), (0..10).rev().collect::<Vec<_>>());
        assert_eq!(
            f(Filter {
                device: Some("a".into()),
                verdict: Some("defect".into()),
                ..Default::default()
            }),
            vec![6, 0]
        );
        assert_eq!(
            f(Filter {
                label: Some("scratch".into()),
                ..Default::default()
            }),
            vec![9, 6, 3, 0]
        );
        assert_eq!(
            f(Filter {
                part_id: Some("P4".into()),
                ..Default::default()
            }),
            vec![4]
        );
        let t = |s| inspectd_contract::timefmt::parse_ms(s);
        assert_eq!(
            f(Filter {
                from_ms: t("2026-11-26T10:00:03Z"),
                to_ms: t("2026-11-26T10:00:06Z"),
                ..Default::default()
            }),
            vec![5, 4, 3]
        );
    }

    #[test]
    fn retention_keeps_the_newest_and_open_alerts() {
        let mut c = db("retention");
        let items: Vec<Item> = (0..20)
            .map(|i| verdict("a", i, "ok", "2026-11-26T10:00:00Z"))
            .collect();
        store(&mut c, &items, 10 * 86_400_000);
        store(
            &mut c,
            &[
                item(
                    "inspect/a/alert",
                    json!({"schema": "inspect.alert/1", "ts": "t1", "kind": "camera_lost", "message": "m"}),
                ),
                item(
                    "inspect/a/alert",
                    json!({"schema": "inspect.alert/1", "ts": "t2", "kind": "suspect", "message": "m"}),
                ),
            ],
            0,
        );
        let (open, _) = alerts(&c, 10).unwrap();
        assert!(ack(&c, open[0].id, "ops", 1).unwrap());
        assert!(!ack(&c, open[0].id, "ops", 2).unwrap(), "acknowledged once");
        let n = enforce(
            &c,
            Retention {
                days: 5,
                max_verdicts: 15,
            },
            12 * 86_400_000,
        )
        .unwrap();
        assert_eq!(n, 5);
        let left: Vec<i64> = verdicts(&c, &Filter::default(), 100)
            .unwrap()
            .iter()
            .map(|v| v.seq)
            .collect();
        assert_eq!(left.len(), 15);
        assert!(!left.contains(&4) && left.contains(&5));
        let (open, acked) = alerts(&c, 10).unwrap();
        assert_eq!(
            (open.len(), acked.len()),
            (1, 0),
            "the open alert is kept, the old acknowledged one goes"
        );
    }

    #[test]
    fn rates_come_from_counter_steps_across_restarts() {
        assert_eq!(
            counter_deltas(&[[10, 1, 0], [20, 3, 1], [5, 1, 0], [7, 1, 1]]),
            [10 + 5 + 2, 2 + 1, 1 + 1]
        );
        let mut c = db("fleet");
        let st = |ok: i64, d: i64| {
            item(
                "inspect/a/stats",
                json!({"schema": "inspect.stats/1", "fps": 4.5, "verdicts": {"ok": ok, "defect": d, "suspect": 0},
            "latency_ms": {"total": {"p95": 9.5}}, "spool": {"depth": 3}}),
            )
        };
        store(
            &mut c,
            &[item(
                "inspect/a/status",
                json!({"schema": "inspect.status/1", "state": "online", "model": {"name": "m", "version": "2"}, "camera": "ok"}),
            )],
            1_000_000,
        );
        store(&mut c, &[st(0, 0)], 1_000_000);
        store(&mut c, &[st(6, 2)], 1_005_000);
        let f = fleet(&c, 1_010_000, 30_000).unwrap();
        assert_eq!(f.len(), 1);
        let r = &f[0];
        assert_eq!(
            (r.state.as_str(), r.model.as_str(), r.model_version.as_str()),
            ("online", "m", "2")
        );
        assert_eq!(
            (r.fps, r.p95_ms, r.spool_depth, r.inspected),
            (Some(4.5), Some(9.5), Some(3), 8)
        );
        assert_eq!(r.defect_rate, Some(0.25));
        assert_eq!(fleet(&c, 1_040_000, 30_000).unwrap()[0].state, "stale");
        store(
            &mut c,
            &[item(
                "inspect/a/status",
                json!({"schema": "inspect.status/1", "state": "offline", "ts": "2026-11-26T10:00:02Z"}),
            )],
            1_041_000,
        );
        assert_eq!(fleet(&c, 1_041_000, 30_000).unwrap()[0].state, "offline");
        // An older status arriving late (a redelivery) changes nothing.
        let a = store(
            &mut c,
            &[item(
                "inspect/a/status",
                json!({"schema": "inspect.status/1", "state": "online", "ts": "2026-11-26T10:00:01Z"}),
            )],
            1_042_000,
        );
        assert_eq!(a.duplicates, vec!["status"]);
        assert_eq!(fleet(&c, 1_042_000, 30_000).unwrap()[0].state, "offline");
        // The last will carries the time its connection began: it applies all the same.
        store(
            &mut c,
            &[item(
                "inspect/a/status",
                json!({"schema": "inspect.status/1", "state": "online", "ts": "2026-11-26T10:00:09Z"}),
            )],
            1_043_000,
        );
        store(
            &mut c,
            &[item(
                "inspect/a/status",
                json!({"schema": "inspect.status/1", "state": "offline", "ts": "2026-11-26T10:00:08Z"}),
            )],
            1_044_000,
        );
        assert_eq!(fleet(&c, 1_044_000, 30_000).unwrap()[0].state, "offline");
        // A box that keeps talking after an offline is alive.
        store(&mut c, &[st(7, 2)], 1_050_000);
        assert_eq!(fleet(&c, 1_050_000, 30_000).unwrap()[0].state, "online");
    }
}
