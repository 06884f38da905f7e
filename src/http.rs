//! The local HTTP endpoint: `/metrics` (Prometheus text format) and `/healthz` (JSON naming
//! each part's state; 503 unless healthy, see `health`). Hand-written
//! HTTP/1.0 on a tokio listener: two GET routes do not justify a web framework on the edge
//! (README, "Why the edge keeps its own HTTP server"); the metrics text is prometheus-client's.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::shared::Shared;

/// Prometheus text exposition of the daemon's counters and latency quantiles.
pub fn metrics_text(shared: &Shared) -> String {
    let st = shared.stats.lock();
    let sp = shared.spool.counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let camera_ok = shared.status.camera_ok();
    // A registry per scrape, filled from the counters the daemon keeps anyway; every series
    // carries the device. Counter names are registered without `_total`: the encoder appends it.
    let device = (
        Cow::Borrowed("device"),
        Cow::Owned(shared.device.id.clone()),
    );
    let mut r = Registry::with_labels(std::iter::once(device));
    r.register(
        "inspectd_frames",
        "Frames captured by the source",
        ConstCounter::new(st.frames),
    );
    r.register(
        "inspectd_frames_dropped",
        "Stale frames replaced before inference",
        ConstCounter::new(shared.frames.dropped_total()),
    );
    r.register(
        "inspectd_bad_frames",
        "Frames that did not decode",
        ConstCounter::new(st.bad_frames),
    );
    let verdicts = Family::<[(&str, &str); 1], Counter>::default();
    for (k, n) in ["ok", "defect", "suspect"].into_iter().zip(st.verdicts) {
        verdicts.get_or_create(&[("verdict", k)]).inc_by(n);
    }
    r.register("inspectd_verdicts", "Verdicts by kind", verdicts);
    let answers = Family::<[(&str, &str); 1], Counter>::default();
    let counts = shared.inbox.trigger_answers();
    for (k, n) in crate::shared::TRIGGER_ANSWERS.into_iter().zip(counts) {
        answers.get_or_create(&[("answer", k)]).inc_by(n);
    }
    r.register(
        "inspectd_trigger_answers",
        "Triggers (MQTT and Modbus) answered, by answer: a verdict or why none",
        answers,
    );
    // Quantiles over a ring of recent frames, not a Prometheus summary (no _sum or _count, and
    // prometheus-client writes no summaries): a gauge per stage and quantile.
    let latency = Family::<[(&str, String); 2], Gauge<f64, AtomicU64>>::default();
    for (stage, ring) in st.latency.iter() {
        for q in [50.0, 95.0, 99.0] {
            if let Some(v) = ring.percentile(q) {
                let labels = [
                    ("stage", stage.to_string()),
                    ("quantile", (q / 100.0).to_string()),
                ];
                latency.get_or_create(&labels).set(v);
            }
        }
    }
    r.register(
        "inspectd_latency_ms",
        "Per-stage latency quantiles over recent frames",
        latency,
    );
    r.register(
        "inspectd_spool_depth",
        "Messages waiting for a PUBACK",
        ConstGauge::new(load(&sp.depth)),
    );
    r.register(
        "inspectd_spool_bytes",
        "Bytes in the spool",
        ConstGauge::new(load(&sp.bytes)),
    );
    r.register(
        "inspectd_spool_dropped",
        "Messages dropped because the spool was full",
        ConstCounter::new(load(&sp.dropped)),
    );
    r.register(
        "inspectd_spool_refused",
        "Messages the spool's disk refused (after a reopen)",
        ConstCounter::new(load(&sp.refused)),
    );
    r.register(
        "inspectd_spool_errors",
        "Failed spool operations (disk errors)",
        ConstCounter::new(load(&sp.errors)),
    );
    r.register(
        "inspectd_healthy",
        "1 while inference and publisher turn, the camera delivers and the spool stores",
        ConstGauge::new(i64::from(shared.health.report(camera_ok, sp).healthy)),
    );
    if let Some(v) = shared.status.variant().as_ref() {
        // A forced variant that was never timed still shows which one runs (NaN: not timed).
        let mut times = v.forward_ms.clone();
        times.entry(v.name.clone()).or_insert(f64::NAN);
        let forward = Family::<[(&str, String); 2], Gauge<f64, AtomicU64>>::default();
        for (name, ms) in times {
            let running = u8::from(name == v.name).to_string();
            forward
                .get_or_create(&[("variant", name), ("running", running)])
                .set(ms);
        }
        r.register(
            "inspectd_model_variant_forward_ms",
            "Median forward pass of each model variant on this CPU, timed at load; running=\"1\" is the one in use",
            forward,
        );
    }
    r.register(
        "inspectd_camera_up",
        "1 when the source delivers frames",
        ConstGauge::new(i64::from(camera_ok)),
    );
    r.register(
        "inspectd_rss_bytes",
        "Resident memory",
        ConstGauge::new(crate::mqtt::rss_bytes()),
    );
    r.register(
        "inspectd_uptime_seconds",
        "Seconds since start",
        ConstGauge::new(shared.status.uptime().as_secs_f64()),
    );
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut o, &r);
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
        "/metrics" => (
            "200 OK",
            prometheus_text::CONTENT_TYPE,
            metrics_text(&shared),
        ),
        "/healthz" => {
            let r = shared
                .health
                .report(shared.status.camera_ok(), shared.spool.counters());
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
