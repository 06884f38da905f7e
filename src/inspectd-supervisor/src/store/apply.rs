//! The writer: one batch of incoming messages stored in one transaction, and retention.

use crate::ingest::Incoming;
use crate::params;
use anyhow::Result;

use super::db::Db;

use super::queries::{severity_class, AlertRow, CmdRow, VerdictRow, PICTURE};

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
    /// The supervisor's own broker connection went up or down.
    Link,
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
    /// Verdicts whose (device, seq) was stored with other content: kept aside as conflicts
    /// (also counted in `stored`).
    pub conflicts: usize,
    pub events: Vec<Event>,
}

/// How a batch is stored beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// Several instances share the subscriptions (`--share-group`), and each receives every
    /// status: a status already applied (by any of them) is a duplicate.
    pub statuses_once: bool,
    /// Evidence pictures go to files under this folder, their path (relative to it) in the row.
    pub evidence_dir: Option<std::path::PathBuf>,
}

/// Stores a batch in one transaction (`tx` is inside it).
pub fn apply(tx: &Db, items: &[Item], now: i64) -> Result<Applied> {
    apply_with(tx, items, now, &ApplyOptions::default())
}

/// [`apply`], with options.
pub fn apply_with(tx: &Db, items: &[Item], now: i64, opt: &ApplyOptions) -> Result<Applied> {
    let mut out = Applied::default();
    let seen = |dev: &str, at: i64| {
        tx.execute(
            "INSERT INTO devices (device, last_seen) VALUES (?1, ?2)
             ON CONFLICT (device) DO UPDATE SET last_seen = CASE
               WHEN excluded.last_seen > devices.last_seen THEN excluded.last_seen ELSE devices.last_seen END",
            params![dev, at],
        )
    };
    for it in items {
        let dev = it.msg.device();
        // A retained status says nothing about now: the device was seen when it was sent.
        // (`status_at` is when it arrived all the same: rumqttd keeps the retain flag on live
        // deliveries too, last wills included.)
        let seen_at = match (&it.msg, it.retained) {
            (Incoming::Status { ts_ms, .. }, true) => ts_ms.unwrap_or(0).min(now),
            _ => now,
        };
        // What the device was before this status: a lost box (its last will) is an alert.
        type Before = (String, i64, Option<i64>, Option<String>);
        let before: Option<Before> = match &it.msg {
            Incoming::Status { .. } => tx.query_row(
                "SELECT state, last_seen, offline_alert_at, instance FROM devices WHERE device = ?1",
                params![dev],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?,
            _ => None,
        };
        // Another instance of the share group applied this very status already.
        if let (true, Incoming::Status { device, raw, .. }) = (opt.statuses_once, &it.msg) {
            let digest = status_digest(raw);
            let n = tx.execute(
                "INSERT INTO statuses_seen (device, digest, at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![device, digest, now],
            )?;
            if n == 0 {
                out.duplicates.push(it.msg.kind());
                continue;
            }
        }
        if !matches!(it.msg, Incoming::Forget { .. }) {
            seen(dev, seen_at)?;
        }
        let fresh = match &it.msg {
            Incoming::Status {
                device,
                state,
                ts_ms,
                instance,
                raw,
            } => {
                if let (Some(inst), "online") = (instance, state.as_str()) {
                    out.events.extend(track_instance(tx, device, inst, now)?);
                }
                // The end of a process that is not the one online (a predecessor's will arriving
                // after its successor's `online`, or a twin's, kicked off the broker): the box
                // that status would describe is up. Not applied.
                let current = before.as_ref().and_then(|b| b.3.as_deref());
                let foreign = state != "online"
                    && current.is_some()
                    && instance.is_some()
                    && instance.as_deref() != current;
                if foreign {
                    false
                } else {
                    // A redelivered or replayed older status must not overwrite a newer one.
                    // The last will is the exception: its `ts` is when the connection began, so
                    // `offline` always applies (a later message from the box shows it alive
                    // again: `fleet`).
                    let n = tx.execute(
                        "UPDATE devices SET state = ?2, status = ?3, status_at = ?4, status_ts = ?5
                         WHERE device = ?1 AND (?6 = 'offline' OR CAST(?5 AS BIGINT) IS NULL OR status_ts IS NULL OR status_ts <= ?5)",
                        params![device, state, raw, now, ts_ms, state],
                    )?;
                    // The last will of a box that was up (not one already known lost or
                    // stopped, nor one already alerted since it was last heard): it vanished.
                    if let Some((prev, last_seen, alerted, _)) = &before {
                        if state == "offline"
                            && !matches!(prev.as_str(), "offline" | "stopped")
                            && alerted.is_none_or(|t| t < *last_seen)
                        {
                            let a = raise_offline(
                                tx,
                                device,
                                "the box is gone: its last will came (connection lost without a clean stop)",
                                now,
                            )?;
                            out.events.extend(a);
                        }
                    }
                    out.events.push(Event::Fleet);
                    n == 1
                }
            }
            Incoming::Forget { device } => {
                tx.execute("DELETE FROM devices WHERE device = ?1", params![device])?;
                tx.execute("DELETE FROM seq_gaps WHERE device = ?1", params![device])?;
                if opt.statuses_once {
                    tx.execute(
                        "DELETE FROM statuses_seen WHERE device = ?1",
                        params![device],
                    )?;
                }
                out.events.push(Event::Fleet);
                true
            }
            Incoming::Stats {
                device,
                counts,
                raw,
            } => {
                tx.execute(
                    "UPDATE devices SET stats = ?2, stats_at = ?3 WHERE device = ?1",
                    params![device, raw, now],
                )?;
                tx.execute(
                    "INSERT INTO stats_samples (device, at, ok, defect, suspect) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![device, now, counts[0], counts[1], counts[2]],
                )?;
                out.events.push(Event::Fleet);
                true
            }
            Incoming::Verdict(v) => {
                let reasons = serde_json::to_string(&v.reasons)?;
                let id: Option<i64> = tx.query_row(
                    "INSERT INTO verdicts (device, seq, ts, ts_ms, received, part_id, verdict, label,
                     confidence, reasons, model, latency_ms, map_png, raw)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
                     ON CONFLICT DO NOTHING RETURNING id",
                    params![
                        v.device, v.seq, v.ts, v.ts_ms, now, v.part_id, v.verdict, v.label, v.confidence,
                        reasons, v.model, v.latency_ms, (!v.map_png.is_empty()).then_some(&v.map_png), v.raw
                    ],
                    |r| r.get(0),
                )?;
                if let Some(id) = id {
                    track_seq(tx, &v.device, v.seq, now)?;
                    let has_evidence = tx.exists(
                        "SELECT 1 FROM evidence WHERE device = ?1 AND seq = ?2",
                        params![v.device, v.seq],
                    )?;
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
                    true
                } else {
                    // (device, seq) is stored: the same content again is a redelivery; other
                    // content is a conflict (two boxes under one id, a seq reset), kept and
                    // alerted instead of being dropped as a duplicate.
                    let conflict = conflicting(tx, v, now)?;
                    if let Some(ev) = &conflict {
                        out.conflicts += 1;
                        out.events.extend(ev.clone());
                    }
                    conflict.is_some()
                }
            }
            Incoming::Evidence { device, seq, jpeg } => {
                let n = match &opt.evidence_dir {
                    None => tx.execute(
                        "INSERT INTO evidence (device, seq, received, jpeg) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                        params![device, seq, now, jpeg],
                    )?,
                    Some(dir) => {
                        let rel = evidence_path(device, *seq);
                        let n = tx.execute(
                            "INSERT INTO evidence (device, seq, received, path) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                            params![device, seq, now, rel],
                        )?;
                        // Written inside the transaction: a failure rolls the row back (and the
                        // batch is retried); a file left by a rolled-back batch is written again.
                        if n == 1 {
                            write_evidence(&dir.join(&rel), jpeg)?;
                        }
                        n
                    }
                };
                if n == 1 {
                    out.events.push(Event::Evidence {
                        device: device.clone(),
                        seq: *seq,
                    });
                }
                n == 1
            }
            Incoming::Alert(a) => {
                let id: Option<i64> = tx.query_row(
                    "INSERT INTO alerts (device, ts, received, kind, severity, message, seq, raw)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING RETURNING id",
                    params![
                        a.device,
                        a.ts,
                        now,
                        a.kind,
                        severity_class(&a.severity),
                        a.message,
                        a.seq,
                        a.raw
                    ],
                    |r| r.get(0),
                )?;
                if let Some(id) = id {
                    let has_picture = tx.one(
                        &format!("SELECT {PICTURE} FROM alerts a WHERE a.id = ?1"),
                        params![id],
                    )?;
                    out.events.push(Event::Alert(Box::new(AlertRow {
                        id,
                        has_picture,
                        device: a.device.clone(),
                        ts: a.ts.clone(),
                        kind: a.kind.clone(),
                        severity: severity_class(&a.severity).to_string(),
                        message: a.message.clone(),
                        seq: a.seq,
                        acked_by: None,
                        acked_at: None,
                    })));
                }
                id.is_some()
            }
            Incoming::CmdResult(c) => {
                let id = c.id.clone().unwrap_or_default();
                let n = tx.execute(
                    "INSERT INTO cmd_results (device, ts, received, command, cmd_id, ok, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                    params![c.device, c.ts, now, c.command, id, c.ok, c.detail],
                )?;
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

/// Where a picture goes under `--evidence-dir`: a folder per device, named so that any device id
/// (`..`, `/`-free but hostile) stays one plain folder name, and `SEQ.jpg` in it.
pub fn evidence_path(device: &str, seq: i64) -> String {
    let mut name = String::new();
    for b in device.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    if name.len() > 120 {
        use sha2::Digest;
        let d = sha2::Sha256::digest(device.as_bytes());
        let hex: String = d.iter().take(8).map(|b| format!("{b:02x}")).collect();
        name = format!("{}~{hex}", &name[..100]);
    }
    format!("{name}/{seq}.jpg")
}

fn write_evidence(path: &std::path::Path, jpeg: &[u8]) -> Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--evidence-dir: creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("jpg.part");
    std::fs::write(&tmp, jpeg)
        .and_then(|_| std::fs::rename(&tmp, path))
        .with_context(|| format!("--evidence-dir: writing {}", path.display()))
}

/// What identifies one status message: its content (with its `ts` and `instance`); a retained
/// replay of a status already applied is no news either.
fn status_digest(raw: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(raw.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Raises the supervisor's own `device_offline` alert (critical) for `device`, once until the
/// box is heard from again.
fn raise_offline(tx: &Db, device: &str, message: &str, now: i64) -> Result<Option<Event>> {
    tx.execute(
        "UPDATE devices SET offline_alert_at = ?2 WHERE device = ?1",
        params![device, now],
    )?;
    raise(tx, device, DEVICE_OFFLINE, "critical", message, None, now)
}

/// Stores an alert of the supervisor's own (`"source": "supervisor"` in its payload) and
/// returns the event for the UI, or nothing if that very alert is already stored.
fn raise(
    tx: &Db,
    device: &str,
    kind: &str,
    severity: &str,
    message: &str,
    seq: Option<i64>,
    now: i64,
) -> Result<Option<Event>> {
    let ts = inspectd_contract::timefmt::rfc3339_ms(now);
    let raw = serde_json::json!({"schema": "inspect.alert/1", "device": device, "ts": ts,
        "kind": kind, "severity": severity, "message": message, "seq": seq, "source": "supervisor"})
    .to_string();
    let id: Option<i64> = tx.query_row(
        "INSERT INTO alerts (device, ts, received, kind, severity, message, seq, raw)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING RETURNING id",
        params![device, ts, now, kind, severity, message, seq, raw],
        |r| r.get(0),
    )?;
    let Some(id) = id else {
        return Ok(None);
    };
    let has_picture = tx.one(
        &format!("SELECT {PICTURE} FROM alerts a WHERE a.id = ?1"),
        params![id],
    )?;
    Ok(Some(Event::Alert(Box::new(AlertRow {
        id,
        has_picture,
        device: device.to_string(),
        ts,
        kind: kind.into(),
        severity: severity.into(),
        message: message.to_string(),
        seq,
        acked_by: None,
        acked_at: None,
    }))))
}

/// The kind of the supervisor's alert for a verdict seq stored again with other content.
pub const SEQ_CONFLICT: &str = "seq_conflict";
/// The kind of the alert for two live processes publishing under one device id.
pub const DUPLICATE_DEVICE_ID: &str = "duplicate_device_id";

/// A verdict whose (device, seq) is already stored. `None`: the same content (a redelivery, or
/// a conflict already kept). Otherwise it is kept in `conflicts` and a `seq_conflict` alert
/// (warning) is raised; returns that alert's event, if it is new.
fn conflicting(tx: &Db, v: &crate::ingest::Verdict, now: i64) -> Result<Option<Option<Event>>> {
    let map = (!v.map_png.is_empty()).then_some(&v.map_png);
    let stored: Option<(String, String, String)> = tx.query_row(
        "SELECT verdict, label, ts FROM verdicts WHERE device = ?1 AND seq = ?2
         AND NOT (raw = ?3 AND map_png IS NOT DISTINCT FROM ?4)",
        params![v.device, v.seq, v.raw, map],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let Some((verdict, label, ts)) = stored else {
        return Ok(None);
    };
    let known = tx.exists(
        "SELECT 1 FROM conflicts WHERE device = ?1 AND seq = ?2 AND raw = ?3
         AND map_png IS NOT DISTINCT FROM ?4",
        params![v.device, v.seq, v.raw, map],
    )?;
    if known {
        return Ok(None);
    }
    tx.execute(
        "INSERT INTO conflicts (device, seq, received, raw, map_png) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![v.device, v.seq, now, v.raw, map],
    )?;
    let message = format!(
        "seq {} came again with other content: stored {verdict} {label:?} of {ts}, now {} {:?} of {} (kept as a conflict; two boxes under one id, or a box whose seq went back)",
        v.seq, v.verdict, v.label, v.ts
    );
    Ok(Some(raise(
        tx,
        &v.device,
        SEQ_CONFLICT,
        "warning",
        &message,
        Some(v.seq),
        now,
    )?))
}

/// Counts gaps in a device's seqs, for a verdict stored for the first time. The first verdict
/// seen starts the count; a seq past the highest opens a gap below it; a late one (a spool
/// resend, out of order) closes the part of a gap it fills. Kept as ranges, so retention
/// deleting verdicts never opens one; a seq below the first seen is no gap.
fn track_seq(tx: &Db, device: &str, seq: i64, now: i64) -> Result<()> {
    let hi: Option<i64> = tx
        .query_row(
            "SELECT seq_hi FROM devices WHERE device = ?1",
            params![device],
            |r| r.get(0),
        )?
        .flatten();
    const ADD: &str = "INSERT INTO seq_gaps (device, lo, hi, noticed) VALUES (?1, ?2, ?3, ?4)";
    match hi {
        Some(hi) if seq <= hi => {
            let gap: Option<(i64, i64, i64)> = tx.query_row(
                "SELECT lo, hi, noticed FROM seq_gaps WHERE device = ?1 AND lo <= ?2 AND hi >= ?2",
                params![device, seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            if let Some((lo, hi, noticed)) = gap {
                tx.execute(
                    "DELETE FROM seq_gaps WHERE device = ?1 AND lo = ?2",
                    params![device, lo],
                )?;
                if lo < seq {
                    tx.execute(ADD, params![device, lo, seq - 1, noticed])?;
                }
                if seq < hi {
                    tx.execute(ADD, params![device, seq + 1, hi, noticed])?;
                }
            }
        }
        _ => {
            if let Some(hi) = hi.filter(|&h| seq > h + 1) {
                tx.execute(ADD, params![device, hi + 1, seq - 1, now])?;
            }
            tx.execute(
                "UPDATE devices SET seq_hi = ?2 WHERE device = ?1",
                params![device, seq],
            )?;
        }
    }
    Ok(())
}

/// Follows which process (`instance`) sends a device's `online` statuses. A new instance is a
/// restart (its predecessor's late last will changes nothing: only `online` counts); the one
/// before it coming back means two live processes take turns on the broker under one id (each
/// connection kicks the other off): a `duplicate_device_id` alert (critical), once while one is
/// open for the device.
fn track_instance(tx: &Db, device: &str, inst: &str, now: i64) -> Result<Option<Event>> {
    let (cur, prev): (Option<String>, Option<String>) = tx
        .query_row(
            "SELECT instance, prev_instance FROM devices WHERE device = ?1",
            params![device],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .unwrap_or_default();
    let Some(cur) = cur.filter(|c| c != inst) else {
        tx.execute(
            "UPDATE devices SET instance = ?2 WHERE device = ?1",
            params![device, inst],
        )?;
        return Ok(None);
    };
    tx.execute(
        "UPDATE devices SET instance = ?2, prev_instance = ?3 WHERE device = ?1",
        params![device, inst, cur],
    )?;
    if prev.as_deref() != Some(inst) {
        return Ok(None);
    }
    let open = tx.exists(
        "SELECT 1 FROM alerts WHERE device = ?1 AND kind = ?2 AND acked_at IS NULL",
        params![device, DUPLICATE_DEVICE_ID],
    )?;
    if open {
        return Ok(None);
    }
    let message = format!(
        "two boxes run as device {device:?}: its statuses alternate between processes {cur} and {inst} (each connection kicks the other off the broker); give each box its own device_id"
    );
    raise(
        tx,
        device,
        DUPLICATE_DEVICE_ID,
        "critical",
        &message,
        None,
        now,
    )
}

/// The kind of the supervisor's own alert for a box that vanished.
pub const DEVICE_OFFLINE: &str = "device_offline";

/// Boxes silent past `stale_after` ms that neither stopped nor were already alerted since they
/// were last heard: each gets a `device_offline` alert. Call only while the supervisor itself
/// has been connected to the broker for `stale_after` (its own silence is not theirs).
pub fn sweep_silent(tx: &Db, now: i64, stale_after: i64) -> Result<Vec<Event>> {
    let silent: Vec<(String, i64)> = tx.query(
        "SELECT device, last_seen FROM devices WHERE state NOT IN ('offline', 'stopped')
         AND last_seen < ?1 AND (offline_alert_at IS NULL OR offline_alert_at < last_seen)",
        params![now - stale_after],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut out = Vec::new();
    for (device, last_seen) in silent {
        let msg = format!(
            "the box is silent: nothing heard for {} s (since {})",
            (now - last_seen) / 1000,
            inspectd_contract::timefmt::rfc3339_ms(last_seen)
        );
        out.extend(raise_offline(tx, &device, &msg, now)?);
    }
    if !out.is_empty() {
        out.push(Event::Fleet);
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
pub fn enforce(conn: &Db, r: Retention, now: i64) -> Result<usize> {
    enforce_with(conn, r, now, None)
}

/// [`enforce`]; the files of the evidence deleted go too (`--evidence-dir`), once the
/// transaction that deleted their rows has committed.
pub fn enforce_with(
    conn: &Db,
    r: Retention,
    now: i64,
    evidence_dir: Option<&std::path::Path>,
) -> Result<usize> {
    let cutoff = now - r.days as i64 * 86_400_000;
    let (n, files) = conn.write(|tx| enforce_in(tx, r, now, cutoff))?;
    if let Some(dir) = evidence_dir {
        for f in files {
            let p = dir.join(&f);
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("retention: deleting {}: {e}", p.display());
                }
            }
            // The device's folder once empty (fails harmlessly while it is not).
            if let Some(d) = p.parent() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    Ok(n)
}

fn enforce_in(tx: &Db, r: Retention, now: i64, cutoff: i64) -> Result<(usize, Vec<String>)> {
    let mut n = tx.execute("DELETE FROM verdicts WHERE received < ?1", params![cutoff])?;
    n += tx.execute(
        "DELETE FROM verdicts WHERE id <= (SELECT id FROM verdicts ORDER BY id DESC LIMIT 1 OFFSET ?1)",
        params![r.max_verdicts as i64],
    )?;
    // Evidence without its verdict: gone with it, or never came (after a grace period).
    let orphans = "received < ?1 AND NOT EXISTS
         (SELECT 1 FROM verdicts v WHERE v.device = evidence.device AND v.seq = evidence.seq)";
    let files: Vec<String> = if tx.is_postgres() {
        tx.query(
            &format!("DELETE FROM evidence WHERE {orphans} RETURNING path"),
            params![now - 600_000],
            |r| r.get::<Option<String>>(0),
        )?
        .into_iter()
        .flatten()
        .collect()
    } else {
        tx.execute(
            &format!("DELETE FROM evidence WHERE {orphans}"),
            params![now - 600_000],
        )?;
        Vec::new()
    };
    tx.execute(
        "DELETE FROM alerts WHERE acked_at IS NOT NULL AND received < ?1",
        params![cutoff],
    )?;
    tx.execute(
        "DELETE FROM cmd_results WHERE received < ?1",
        params![cutoff],
    )?;
    tx.execute("DELETE FROM conflicts WHERE received < ?1", params![cutoff])?;
    // A gap noticed before the history kept is no longer shown (the verdicts around it are gone).
    tx.execute("DELETE FROM seq_gaps WHERE noticed < ?1", params![cutoff])?;
    tx.execute("DELETE FROM commands WHERE sent_at < ?1", params![cutoff])?;
    tx.execute(
        "DELETE FROM stats_samples WHERE at < ?1",
        params![now - 86_400_000],
    )?;
    if tx.is_postgres() {
        tx.execute(
            "DELETE FROM statuses_seen WHERE at < ?1",
            params![now - 86_400_000],
        )?;
    }
    Ok((n, files))
}
