//! The local HTTP endpoint: `/metrics` (Prometheus text format) and `/healthz` (JSON naming
//! each part's state; 503 unless healthy, see `health`). Hand-written
//! HTTP/1.0 on a tokio listener: two GET routes do not justify a web framework on the edge.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::pipeline::Shared;

/// Prometheus text exposition of the daemon's counters and latency quantiles.
pub fn metrics_text(shared: &Shared) -> String {
    let mut o = String::new();
    let st = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
    let sp = shared.spool.counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let dev = &shared.device;
    let _ = writeln!(o, "# HELP inspectd_frames_total Frames captured by the source.\n# TYPE inspectd_frames_total counter");
    let _ = writeln!(o, "inspectd_frames_total{{device=\"{dev}\"}} {}", st.frames);
    let _ = writeln!(o, "# HELP inspectd_frames_dropped_total Stale frames replaced before inference.\n# TYPE inspectd_frames_dropped_total counter");
    let _ = writeln!(
        o,
        "inspectd_frames_dropped_total{{device=\"{dev}\"}} {}",
        shared.slot.dropped()
    );
    let _ = writeln!(o, "# HELP inspectd_bad_frames_total Frames that did not decode.\n# TYPE inspectd_bad_frames_total counter");
    let _ = writeln!(
        o,
        "inspectd_bad_frames_total{{device=\"{dev}\"}} {}",
        st.bad_frames
    );
    let _ = writeln!(
        o,
        "# HELP inspectd_verdicts_total Verdicts by kind.\n# TYPE inspectd_verdicts_total counter"
    );
    for (i, k) in ["ok", "defect", "suspect"].iter().enumerate() {
        let _ = writeln!(
            o,
            "inspectd_verdicts_total{{device=\"{dev}\",verdict=\"{k}\"}} {}",
            st.verdicts[i]
        );
    }
    let _ = writeln!(o, "# HELP inspectd_latency_ms Per-stage latency quantiles over recent frames.\n# TYPE inspectd_latency_ms summary");
    let mut stages: Vec<_> = st.latency.iter().collect();
    stages.sort_by_key(|(k, _)| *k);
    for (stage, ring) in stages {
        for q in [50.0, 95.0, 99.0] {
            if let Some(v) = ring.percentile(q) {
                let _ = writeln!(o, "inspectd_latency_ms{{device=\"{dev}\",stage=\"{stage}\",quantile=\"{}\"}} {v:.3}", q / 100.0);
            }
        }
    }
    let _ = writeln!(o, "# HELP inspectd_spool_depth Messages waiting for a PUBACK.\n# TYPE inspectd_spool_depth gauge");
    let _ = writeln!(
        o,
        "inspectd_spool_depth{{device=\"{dev}\"}} {}",
        load(&sp.depth)
    );
    let _ = writeln!(
        o,
        "# HELP inspectd_spool_bytes Bytes in the spool.\n# TYPE inspectd_spool_bytes gauge"
    );
    let _ = writeln!(
        o,
        "inspectd_spool_bytes{{device=\"{dev}\"}} {}",
        load(&sp.bytes)
    );
    let _ = writeln!(o, "# HELP inspectd_spool_dropped_total Messages dropped because the spool was full.\n# TYPE inspectd_spool_dropped_total counter");
    let _ = writeln!(
        o,
        "inspectd_spool_dropped_total{{device=\"{dev}\"}} {}",
        load(&sp.dropped)
    );
    let _ = writeln!(o, "# HELP inspectd_spool_refused_total Messages the spool's disk refused (after a reopen).\n# TYPE inspectd_spool_refused_total counter");
    let _ = writeln!(
        o,
        "inspectd_spool_refused_total{{device=\"{dev}\"}} {}",
        load(&sp.refused)
    );
    let _ = writeln!(o, "# HELP inspectd_spool_errors_total Failed spool operations (disk errors).\n# TYPE inspectd_spool_errors_total counter");
    let _ = writeln!(
        o,
        "inspectd_spool_errors_total{{device=\"{dev}\"}} {}",
        load(&sp.errors)
    );
    let _ = writeln!(o, "# HELP inspectd_healthy 1 while inference and publisher turn, the camera delivers and the spool stores.\n# TYPE inspectd_healthy gauge");
    let _ = writeln!(
        o,
        "inspectd_healthy{{device=\"{dev}\"}} {}",
        shared
            .health
            .report(shared.camera_ok.load(Ordering::Relaxed), sp)
            .healthy as u8
    );
    if let Some(v) = shared
        .variant
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        let _ = writeln!(o, "# HELP inspectd_model_variant_forward_ms Median forward pass of each model variant on this CPU, timed at load; running=\"1\" is the one in use.\n# TYPE inspectd_model_variant_forward_ms gauge");
        // A forced variant that was never timed still shows which one runs (NaN: not timed).
        let mut times = v.forward_ms.clone();
        times.entry(v.name.clone()).or_insert(f64::NAN);
        for (name, ms) in &times {
            let _ = writeln!(o, "inspectd_model_variant_forward_ms{{device=\"{dev}\",variant=\"{name}\",running=\"{}\"}} {ms:.3}", (*name == v.name) as u8);
        }
    }
    let _ = writeln!(o, "# HELP inspectd_camera_up 1 when the source delivers frames.\n# TYPE inspectd_camera_up gauge");
    let _ = writeln!(
        o,
        "inspectd_camera_up{{device=\"{dev}\"}} {}",
        shared.camera_ok.load(Ordering::Relaxed) as u8
    );
    let _ = writeln!(
        o,
        "# HELP inspectd_rss_bytes Resident memory.\n# TYPE inspectd_rss_bytes gauge"
    );
    let _ = writeln!(
        o,
        "inspectd_rss_bytes{{device=\"{dev}\"}} {}",
        crate::mqtt::rss_bytes()
    );
    let _ = writeln!(
        o,
        "# HELP inspectd_uptime_seconds Seconds since start.\n# TYPE inspectd_uptime_seconds gauge"
    );
    let _ = writeln!(
        o,
        "inspectd_uptime_seconds{{device=\"{dev}\"}} {:.1}",
        shared.started.elapsed().as_secs_f64()
    );
    o
}

async fn handle(mut sock: tokio::net::TcpStream, shared: Arc<Shared>) {
    let mut buf = [0u8; 2048];
    let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        _ => return,
    };
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics_text(&shared)),
        "/healthz" => {
            let r = shared.health.report(
                shared.camera_ok.load(Ordering::Relaxed),
                shared.spool.counters(),
            );
            let status = if r.healthy {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "application/json", format!("{}\n", r.body))
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let resp = format!("HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// Serves until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        crate::tasks::fault_point("http");
        tokio::select! {
            acc = listener.accept() => match acc {
                Ok((sock, _)) => { tokio::spawn(handle(sock, shared.clone())); }
                Err(e) => tracing::warn!("http accept: {e}"),
            },
            _ = stop.changed() => return,
        }
    }
}
