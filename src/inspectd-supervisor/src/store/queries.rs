//! What the pages read: verdicts, evidence, alerts, commands, devices; acknowledgements and
//! sent commands (the only writes a web request makes).

use anyhow::Result;

use super::db::{Db, Param, Row};
use crate::params;

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

fn verdict_row(r: &Row) -> Result<VerdictRow> {
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
pub fn verdicts(conn: &Db, f: &Filter, limit: usize) -> Result<Vec<VerdictRow>> {
    let mut sql = format!("SELECT {VERDICT_COLS} FROM verdicts v WHERE 1 = 1");
    let conds = [
        ("v.device =", f.device.as_deref().map(Param::Text)),
        ("v.verdict =", f.verdict.as_deref().map(Param::Text)),
        ("v.label =", f.label.as_deref().map(Param::Text)),
        ("v.part_id =", f.part_id.as_deref().map(Param::Text)),
        ("v.ts_ms >=", f.from_ms.map(Param::Int)),
        ("v.ts_ms <", f.to_ms.map(Param::Int)),
    ];
    let mut args: Vec<Param> = Vec::new();
    for (cond, v) in conds {
        if let Some(v) = v {
            args.push(v);
            sql.push_str(&format!(" AND {cond} ?{}", args.len()));
        }
    }
    sql.push_str(&format!(" ORDER BY v.ts_ms DESC, v.id DESC LIMIT {limit}"));
    conn.query(&sql, &args, verdict_row)
}

/// The newest `limit` verdicts stored after row `after`, oldest first: what a live view that
/// showed everything up to `after` is missing.
pub fn verdicts_after(conn: &Db, after: i64, limit: usize) -> Result<Vec<VerdictRow>> {
    let mut rows = conn.query(
        &format!(
            "SELECT {VERDICT_COLS} FROM verdicts v WHERE v.id > ?1 ORDER BY v.id DESC LIMIT ?2"
        ),
        params![after, limit as i64],
        verdict_row,
    )?;
    rows.reverse();
    Ok(rows)
}

/// A verdict, its map (PNG) and its payload without the map.
pub type StoredVerdict = (VerdictRow, Option<Vec<u8>>, String);

/// One verdict with its map and raw payload.
pub fn verdict(conn: &Db, device: &str, seq: i64) -> Result<Option<StoredVerdict>> {
    conn.query_row(
        &format!("SELECT {VERDICT_COLS}, v.map_png, v.raw FROM verdicts v WHERE v.device = ?1 AND v.seq = ?2"),
        params![device, seq],
        |r| Ok((verdict_row(r)?, r.get(13)?, r.get(14)?)),
    )
}

/// A verdict's evidence picture: from its row, or from its file under `dir` (`--evidence-dir`).
pub fn evidence(
    conn: &Db,
    device: &str,
    seq: i64,
    dir: Option<&std::path::Path>,
) -> Result<Option<Vec<u8>>> {
    let sql = if conn.is_postgres() {
        "SELECT jpeg, path FROM evidence WHERE device = ?1 AND seq = ?2"
    } else {
        "SELECT jpeg, NULL FROM evidence WHERE device = ?1 AND seq = ?2"
    };
    let row: Option<(Option<Vec<u8>>, Option<String>)> =
        conn.query_row(sql, params![device, seq], |r| Ok((r.get(0)?, r.get(1)?)))?;
    match row {
        Some((Some(jpeg), _)) => Ok(Some(jpeg)),
        Some((None, Some(path))) => match dir {
            Some(d) => match std::fs::read(d.join(&path)) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(anyhow::anyhow!("evidence {}: {e}", d.join(&path).display())),
            },
            // Stored as a file by a supervisor with --evidence-dir; this one has none.
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

/// Whether alert `a`'s verdict has a picture.
pub(super) const PICTURE: &str = "a.seq IS NOT NULL AND (EXISTS (SELECT 1 FROM evidence e WHERE e.device = a.device AND e.seq = a.seq)
     OR EXISTS (SELECT 1 FROM verdicts v WHERE v.device = a.device AND v.seq = a.seq AND v.map_png IS NOT NULL))";

fn alert_row(r: &Row) -> Result<AlertRow> {
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
pub fn alerts_after(conn: &Db, after: i64, limit: usize) -> Result<Vec<AlertRow>> {
    let mut rows = conn.query(
        &format!(
            "SELECT {} FROM alerts a WHERE a.id > ?1 AND a.acked_at IS NULL ORDER BY a.id DESC LIMIT ?2",
            alert_cols()
        ),
        params![after, limit as i64],
        alert_row,
    )?;
    rows.reverse();
    Ok(rows)
}

/// Open alerts (newest first), then up to `acked` acknowledged ones.
pub fn alerts(conn: &Db, acked: usize) -> Result<(Vec<AlertRow>, Vec<AlertRow>)> {
    let cols = alert_cols();
    let open = conn.query(
        &format!("SELECT {cols} FROM alerts a WHERE acked_at IS NULL ORDER BY id DESC LIMIT 1000"),
        &[],
        alert_row,
    )?;
    let done = conn.query(
        &format!("SELECT {cols} FROM alerts a WHERE acked_at IS NOT NULL ORDER BY acked_at DESC, id DESC LIMIT {acked}"),
        &[],
        alert_row,
    )?;
    Ok((open, done))
}

/// The three severities the UI knows; whatever a box sends maps onto one of them.
pub fn severity_class(s: &str) -> &'static str {
    match s.to_ascii_lowercase().as_str() {
        "critical" | "error" | "fatal" | "alarm" => "critical",
        "warning" | "warn" => "warning",
        _ => "info",
    }
}

/// Alerts filters (all optional) and the page (0-based) of groups.
#[derive(Clone, Debug, Default)]
pub struct AlertFilter {
    pub device: Option<String>,
    pub kind: Option<String>,
    pub severity: Option<String>,
    pub page: usize,
}

/// Repeated open alerts of one device, kind and severity, shown as one row.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertGroup {
    /// The newest alert of the group (its message, time and picture stand for the group).
    pub newest: AlertRow,
    pub count: i64,
    /// Device times of the oldest and newest alert.
    pub first_ts: String,
    pub last_ts: String,
}

/// Groups per alerts page.
pub const GROUPS_PER_PAGE: usize = 50;

/// Open alerts grouped by device, kind and severity: critical first, then the most recent.
/// Returns the page of groups asked for and the number of groups in all.
pub fn alert_groups(conn: &Db, f: &AlertFilter) -> Result<(Vec<AlertGroup>, usize)> {
    let mut cond = String::from("acked_at IS NULL");
    let mut args: Vec<Param> = Vec::new();
    for (col, v) in [
        ("device", &f.device),
        ("kind", &f.kind),
        ("severity", &f.severity),
    ] {
        if let Some(v) = v {
            args.push(Param::Text(v));
            cond.push_str(&format!(" AND {col} = ?{}", args.len()));
        }
    }
    let total: i64 = conn.one(
        &format!("SELECT count(*) FROM (SELECT 1 FROM alerts WHERE {cond} GROUP BY device, kind, severity) AS g"),
        &args,
    )?;
    let groups: Vec<(i64, i64, i64)> = conn.query(
        &format!(
            "SELECT max(id), count(*), min(id) FROM alerts WHERE {cond} GROUP BY device, kind, severity
             ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, max(id) DESC
             LIMIT {GROUPS_PER_PAGE} OFFSET {}",
            f.page * GROUPS_PER_PAGE
        ),
        &args,
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let one = format!("SELECT {} FROM alerts a WHERE a.id = ?1", alert_cols());
    let mut out = Vec::with_capacity(groups.len());
    for (newest, count, oldest) in groups {
        let newest = conn
            .query_row(&one, params![newest], alert_row)?
            .ok_or_else(|| anyhow::anyhow!("alert {newest} gone"))?;
        let first_ts: String = conn.one("SELECT ts FROM alerts WHERE id = ?1", params![oldest])?;
        out.push(AlertGroup {
            last_ts: newest.ts.clone(),
            first_ts,
            count,
            newest,
        });
    }
    Ok((out, total as usize))
}

/// What the open devices, kinds and severities are (for the filters).
pub fn alert_facets(conn: &Db) -> Result<[Vec<String>; 3]> {
    let mut out: [Vec<String>; 3] = Default::default();
    for (i, col) in ["device", "kind", "severity"].iter().enumerate() {
        out[i] = conn.query(
            &format!(
                "SELECT DISTINCT {col} FROM alerts WHERE acked_at IS NULL ORDER BY {col} LIMIT 500"
            ),
            &[],
            |r| r.get(0),
        )?;
    }
    Ok(out)
}

/// How much one acknowledgement covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckScope {
    /// The one alert.
    One,
    /// Its group: the open alerts of its device, kind and severity up to it (not those that
    /// arrived after the operator saw the row).
    Group,
    /// Every open alert of its device up to it.
    Device,
}

/// Acknowledges open alert `id` (and, by `scope`, its group or its device's); returns how many.
pub fn ack_scope(conn: &Db, id: i64, scope: AckScope, by: &str, now: i64) -> Result<usize> {
    let cond = match scope {
        AckScope::One => "id = ?1",
        AckScope::Group => {
            "id <= ?1 AND (device, kind, severity) = (SELECT device, kind, severity FROM alerts WHERE id = ?1)"
        }
        AckScope::Device => "id <= ?1 AND device = (SELECT device FROM alerts WHERE id = ?1)",
    };
    conn.execute(
        &format!(
            "UPDATE alerts SET acked_by = ?2, acked_at = ?3 WHERE acked_at IS NULL AND {cond}"
        ),
        params![id, by, now],
    )
}

/// The newest `acked` acknowledged alerts (no open ones: those are grouped).
pub fn alerts_acked(conn: &Db, acked: usize) -> Result<Vec<AlertRow>> {
    conn.query(
        &format!("SELECT {} FROM alerts a WHERE acked_at IS NOT NULL ORDER BY acked_at DESC, id DESC LIMIT {acked}", alert_cols()),
        &[],
        alert_row,
    )
}

/// Acknowledges an open alert; false if there is none with that id.
pub fn ack(conn: &Db, id: i64, by: &str, now: i64) -> Result<bool> {
    Ok(conn.execute(
        "UPDATE alerts SET acked_by = ?2, acked_at = ?3 WHERE id = ?1 AND acked_at IS NULL",
        params![id, by, now],
    )? == 1)
}

pub fn record_command(
    conn: &Db,
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

pub fn commands(conn: &Db, device: &str, limit: usize) -> Result<Vec<SentCommand>> {
    conn.query(
        "SELECT c.id, c.command, c.payload, c.sent_at, r.ok, r.detail, c.sent_by FROM commands c
         LEFT JOIN cmd_results r ON r.device = c.device AND r.cmd_id = c.id
         WHERE c.device = ?1 ORDER BY c.sent_at DESC LIMIT ?2",
        params![device, limit as i64],
        |r| {
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
        },
    )
}

/// The device's status and stats messages as stored.
pub fn device(conn: &Db, device: &str) -> Result<Option<(Option<String>, Option<String>)>> {
    conn.query_row(
        "SELECT status, stats FROM devices WHERE device = ?1",
        params![device],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Row counts for /metrics: verdicts, evidence, open alerts.
pub fn counts(conn: &Db) -> Result<[i64; 3]> {
    conn.query_row(
        "SELECT (SELECT count(*) FROM verdicts), (SELECT count(*) FROM evidence),
                (SELECT count(*) FROM alerts WHERE acked_at IS NULL)",
        &[],
        |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?]),
    )?
    .ok_or_else(|| anyhow::anyhow!("no counts"))
}

/// A verdict kept aside because its (device, seq) was already stored with other content.
#[derive(Clone, Debug, PartialEq)]
pub struct ConflictRow {
    pub seq: i64,
    pub received: i64,
    /// The conflicting payload (without its map).
    pub raw: String,
    /// What is stored under that seq (gone once retention deleted it).
    pub stored_verdict: Option<String>,
    pub stored_label: Option<String>,
}

/// A device's newest conflicts first.
pub fn conflicts(conn: &Db, device: &str, limit: usize) -> Result<Vec<ConflictRow>> {
    conn.query(
        "SELECT c.seq, c.received, c.raw, v.verdict, v.label FROM conflicts c
         LEFT JOIN verdicts v ON v.device = c.device AND v.seq = c.seq
         WHERE c.device = ?1 ORDER BY c.id DESC LIMIT ?2",
        params![device, limit as i64],
        |r| {
            Ok(ConflictRow {
                seq: r.get(0)?,
                received: r.get(1)?,
                raw: r.get(2)?,
                stored_verdict: r.get(3)?,
                stored_label: r.get(4)?,
            })
        },
    )
}

/// Conflicts kept, all devices.
pub fn conflict_count(conn: &Db) -> Result<i64> {
    conn.one("SELECT count(*) FROM conflicts", &[])
}

/// Conflicts kept for one device.
pub fn device_conflicts(conn: &Db, device: &str) -> Result<i64> {
    conn.one(
        "SELECT count(*) FROM conflicts WHERE device = ?1",
        params![device],
    )
}

/// A run of seqs never received: `from..=to`, noticed when the seq past it came.
#[derive(Clone, Debug, PartialEq)]
pub struct Gap {
    pub from: i64,
    pub to: i64,
    pub noticed: i64,
}

/// A device's missing seqs: how many, and the most recent gap.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeqGaps {
    pub missing: i64,
    pub latest: Option<Gap>,
    /// The highest seq received (`None` before the first verdict).
    pub highest: Option<i64>,
}

pub fn seq_gaps(conn: &Db, device: &str) -> Result<SeqGaps> {
    let missing: i64 = conn.one(
        "SELECT CAST(coalesce(sum(hi - lo + 1), 0) AS BIGINT) FROM seq_gaps WHERE device = ?1",
        params![device],
    )?;
    let latest = conn.query_row(
        "SELECT lo, hi, noticed FROM seq_gaps WHERE device = ?1 ORDER BY lo DESC LIMIT 1",
        params![device],
        |r| {
            Ok(Gap {
                from: r.get(0)?,
                to: r.get(1)?,
                noticed: r.get(2)?,
            })
        },
    )?;
    let highest = conn
        .query_row(
            "SELECT seq_hi FROM devices WHERE device = ?1",
            params![device],
            |r| r.get(0),
        )?
        .flatten();
    Ok(SeqGaps {
        missing,
        latest,
        highest,
    })
}

/// Missing seqs per device that has sent verdicts (0 for those without gaps), by device.
pub fn seq_missing(conn: &Db) -> Result<Vec<(String, i64)>> {
    conn.query(
        "SELECT d.device, CAST(coalesce((SELECT sum(g.hi - g.lo + 1) FROM seq_gaps g WHERE g.device = d.device), 0) AS BIGINT)
         FROM devices d WHERE d.seq_hi IS NOT NULL ORDER BY d.device",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Verdicts of `device` stored (received) since `since` (ms since the epoch).
pub fn verdicts_received(conn: &Db, device: &str, since: i64) -> Result<i64> {
    conn.one(
        "SELECT count(*) FROM verdicts WHERE device = ?1 AND received >= ?2",
        params![device, since],
    )
}
