//! The fleet view: each device's state, its latest status and stats, and its rates.

use anyhow::Result;
use inspectd_contract::v1;

use super::db::Db;
use crate::params;

/// One fleet row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetRow {
    pub device: String,
    /// online, offline, stale or stopped.
    pub state: String,
    pub last_seen: i64,
    pub camera: Option<String>,
    /// Each named camera's state, from the latest status (empty for a box with one unnamed
    /// camera, or an older box).
    pub cameras: Vec<v1::CameraState>,
    pub paused: bool,
    pub model: String,
    pub model_version: String,
    pub fps: Option<f64>,
    pub p95_ms: Option<f64>,
    pub spool_depth: Option<i64>,
    /// When the latest stats (fps, latency, spool) came, and whether they are recent; on a box
    /// that went away they are its last known values.
    pub stats_at: Option<i64>,
    pub stats_fresh: bool,
    /// Open alerts of this device, and whether one of them is critical.
    pub open_alerts: i64,
    pub critical: bool,
    /// Over the last hour: verdicts stored (received in it), their defect and suspect shares.
    pub inspected: i64,
    pub defect_rate: Option<f64>,
    pub suspect_rate: Option<f64>,
}

/// The fleet: one row per device. `stale_after` ms without a message turns `online` to `stale`.
pub fn fleet(conn: &Db, now: i64, stale_after: i64) -> Result<Vec<FleetRow>> {
    let hour = now - 3_600_000;
    let mut rows = Vec::new();
    type Dev = (
        String,
        String,
        Option<String>,
        i64,
        Option<String>,
        Option<i64>,
        Option<i64>,
    );
    let devs: Vec<Dev> = conn.query(
        "SELECT device, state, status, last_seen, stats, stats_at, status_at FROM devices ORDER BY device",
        &[],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        },
    )?;
    for (device, state, status, last_seen, stats, stats_at, status_at) in devs {
        // Stored payloads passed ingest: they decode (a failure reads as no status / stats).
        let status: Option<v1::Status> = status.and_then(|s| serde_json::from_str(&s).ok());
        let fresh_stats = stats_at.is_some_and(|t| now - t < stale_after.max(60_000));
        let stats: Option<v1::Stats> = stats.and_then(|s| serde_json::from_str(&s).ok());
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
            "stopping" | "stopped" => "stopped",
            "offline" => "offline",
            _ => "unknown",
        };
        // The verdicts stored, not the box's own counters: those restart from zero with the
        // process, count `ok` verdicts it does not publish, and two boxes under one id (or a
        // restart) turned their steps into hundreds of "parts" for a handful of verdicts.
        let mut counts = [0i64; 3];
        for (k, n) in conn.query(
            "SELECT verdict, count(*) FROM verdicts WHERE device = ?1 AND received >= ?2 GROUP BY verdict",
            params![device, hour],
            |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)),
        )? {
            match k.as_str() {
                "ok" => counts[0] = n,
                "defect" => counts[1] = n,
                "suspect" => counts[2] = n,
                _ => {}
            }
        }
        let inspected: i64 = counts.iter().sum();
        let rate = |n: i64| (inspected > 0).then(|| n as f64 / inspected as f64);
        rows.push(FleetRow {
            state: state.to_string(),
            last_seen,
            camera: status
                .as_ref()
                .map(|s| s.camera.clone())
                .filter(|c| !c.is_empty()),
            cameras: status
                .as_ref()
                .map(|s| s.cameras.clone())
                .unwrap_or_default(),
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
            stats_at: stats_at.filter(|_| stats.is_some()),
            stats_fresh: fresh_stats && stats.is_some(),
            open_alerts: 0,
            critical: false,
            inspected,
            defect_rate: rate(counts[1]),
            suspect_rate: rate(counts[2]),
            device,
        });
    }
    let open: std::collections::HashMap<String, (i64, bool)> = conn
        .query(
            "SELECT device, count(*), max(CASE WHEN severity = 'critical' THEN 1 ELSE 0 END)
             FROM alerts WHERE acked_at IS NULL GROUP BY device",
            &[],
            |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))),
        )?
        .into_iter()
        .collect();
    for r in &mut rows {
        if let Some(&(n, crit)) = open.get(&r.device) {
            (r.open_alerts, r.critical) = (n, crit);
        }
    }
    // Worst first: lost boxes, silent ones, then those with open alerts (critical first).
    rows.sort_by(|a, b| {
        attention(a)
            .cmp(&attention(b))
            .then_with(|| a.device.cmp(&b.device))
    });
    Ok(rows)
}

/// How much a row needs someone's attention: lower sorts first.
pub fn attention(r: &FleetRow) -> u8 {
    match r.state.as_str() {
        "offline" => 0,
        "stale" => 1,
        _ if r.critical => 2,
        "unknown" => 3,
        _ if r.open_alerts > 0 => 4,
        "online" => 5,
        _ => 6,
    }
}
