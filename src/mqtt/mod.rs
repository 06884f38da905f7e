//! The MQTT side (rumqttc): connection lifecycle with capped backoff, the retained status with
//! an `offline` last will, streaming the spool with PUBACK tracking, commands, and stats.
//! rumqttc types stay in this module.

pub mod commands;
pub mod state;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, LastWill, MqttOptions, Outgoing, Packet, QoS,
};
use serde_json::json;

use crate::config::MqttConfig;
use crate::error::bad_input;
use crate::pipeline::{Shared, TriggerReq, MAX_TRIGGERS};
use crate::source::Backoff;
use crate::spool::{Message, Priority};
use commands::Command;
use state::Inflight;

/// Spool entries in flight at once on a connection.
const WINDOW: usize = 32;

/// Connection settings resolved from the config.
#[derive(Clone, Debug)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub keep_alive: Duration,
}

/// Parses `mqtt://host:port`, reads the password file, and refuses plaintext to a host that is
/// not loopback unless `allow_insecure`.
pub fn settings(cfg: &MqttConfig, device: &str) -> Result<Settings> {
    let (tls, rest) = if let Some(r) = cfg.url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = cfg.url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad_input(format!(
            "mqtt.url {:?}: must start with mqtt:// or mqtts://",
            cfg.url
        )));
    };
    if tls {
        return Err(bad_input(format!(
            "mqtt.url {:?}: mqtts:// is not supported by this build yet (TLS lands with the edge-box work); use mqtt:// on loopback or a TLS-terminating bridge",
            cfg.url
        )));
    }
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| bad_input(format!("mqtt.url {:?}: bad port", cfg.url)))?,
        ),
        None => (rest, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad_input(format!("mqtt.url {:?}: no host", cfg.url)));
    }
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|a| a.is_loopback())
            .unwrap_or(false);
    if !loopback && !cfg.allow_insecure {
        return Err(bad_input(format!(
            "mqtt.url {:?}: plaintext MQTT to a non-loopback host is refused; use mqtts:// or set mqtt.allow_insecure = true",
            cfg.url
        )));
    }
    let credentials = match (&cfg.username, &cfg.password_file) {
        (Some(u), Some(f)) => {
            let p = std::fs::read_to_string(f).map_err(|e| {
                bad_input(format!(
                    "mqtt.password_file {}: cannot read: {e}",
                    f.display()
                ))
            })?;
            Some((u.clone(), p.trim_end_matches(['\r', '\n']).to_string()))
        }
        (Some(u), None) => Some((u.clone(), String::new())),
        (None, Some(_)) => return Err(bad_input("mqtt.password_file needs mqtt.username")),
        (None, None) => None,
    };
    Ok(Settings {
        host: host.to_string(),
        port,
        client_id: cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("inspectd-{device}")),
        credentials,
        keep_alive: Duration::from_secs(cfg.keep_alive_s),
    })
}

fn status_payload(shared: &Shared, state: &str) -> Vec<u8> {
    let (name, version, sha) = shared
        .model_id
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    json!({
        "schema": "inspect.status/1",
        "state": state,
        "device": shared.device,
        "ts": crate::timefmt::now(),
        "version": env!("CARGO_PKG_VERSION"),
        "model": {"name": name, "version": version, "sha256": sha},
        "camera": if shared.camera_ok.load(Ordering::Relaxed) { "ok" } else { "lost" },
        "paused": shared.paused.load(Ordering::Relaxed),
        "uptime_s": shared.started.elapsed().as_secs(),
    })
    .to_string()
    .into_bytes()
}

/// Resident set size in bytes (Linux), 0 elsewhere.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// The stats message; `fps` is computed by the caller over its interval.
pub fn stats_json(shared: &Shared, fps: f64) -> serde_json::Value {
    let st = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
    let mut lat = serde_json::Map::new();
    for (k, ring) in &st.latency {
        lat.insert(
            k.to_string(),
            json!({"p50": ring.percentile(50.0), "p95": ring.percentile(95.0), "p99": ring.percentile(99.0)}),
        );
    }
    let sp = shared.spool.lock().unwrap_or_else(|e| e.into_inner());
    json!({
        "schema": "inspect.stats/1",
        "device": shared.device,
        "ts": crate::timefmt::now(),
        "uptime_s": shared.started.elapsed().as_secs_f64(),
        "fps": fps,
        "frames": st.frames,
        "dropped_frames": shared.slot.dropped(),
        "bad_frames": st.bad_frames,
        "verdicts": {"ok": st.verdicts[0], "defect": st.verdicts[1], "suspect": st.verdicts[2]},
        "unpublished_ok": st.unpublished_ok,
        "errors": st.errors,
        "latency_ms": lat,
        "spool": {"depth": sp.len(), "bytes": sp.bytes(), "max_bytes": sp.max_bytes(), "dropped": sp.dropped()},
        "rss_bytes": rss_bytes(),
        "paused": shared.paused.load(Ordering::Relaxed),
    })
}

fn verdict_total(shared: &Shared) -> u64 {
    shared
        .stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .verdicts
        .iter()
        .sum()
}

fn cmd_result(shared: &Shared, name: &str, id: Option<String>, result: Result<String, String>) {
    let v = match &result {
        Ok(detail) => {
            json!({"schema": "inspect.cmd_result/1", "device": shared.device, "ts": crate::timefmt::now(),
                             "command": name, "id": id, "ok": true, "detail": detail})
        }
        Err(e) => {
            json!({"schema": "inspect.cmd_result/1", "device": shared.device, "ts": crate::timefmt::now(),
                         "command": name, "id": id, "ok": false, "error": e})
        }
    };
    if let Err(e) = &result {
        tracing::warn!("command {name} refused: {e}");
    }
    shared.enqueue(Message {
        topic: shared.topic("cmd_result"),
        payload: v.to_string().into_bytes(),
        retain: false,
        priority: Priority::High,
    });
}

fn handle_command(shared: &Arc<Shared>, topic: &str, payload: &[u8]) {
    let prefix = shared.topic("cmd/");
    let Some(name) = topic.strip_prefix(&prefix) else {
        return;
    };
    let rules = shared
        .rules
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (id, parsed) = commands::parse(name, payload, &rules);
    let name = if name.len() > 64 { &name[..64] } else { name };
    match parsed {
        Err(e) => cmd_result(shared, name, id, Err(e)),
        Ok(Command::Trigger { part_id }) => {
            let mut q = shared.triggers.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= MAX_TRIGGERS {
                drop(q);
                cmd_result(
                    shared,
                    name,
                    id,
                    Err(format!("trigger queue full ({MAX_TRIGGERS})")),
                );
            } else {
                q.push_back(TriggerReq {
                    part_id: part_id.clone(),
                });
                shared.trigger_ready.notify_one();
                drop(q);
                cmd_result(shared, name, id, Ok(format!("queued part {part_id}")));
            }
        }
        Ok(Command::Set(r)) => {
            *shared.rules.write().unwrap_or_else(|e| e.into_inner()) = *r;
            cmd_result(shared, name, id, Ok("rules updated".into()));
        }
        Ok(Command::Pause) => {
            shared.paused.store(true, Ordering::SeqCst);
            shared.status_notify.notify_one();
            cmd_result(shared, name, id, Ok("paused".into()));
        }
        Ok(Command::Resume) => {
            shared.paused.store(false, Ordering::SeqCst);
            shared.status_notify.notify_one();
            cmd_result(shared, name, id, Ok("resumed".into()));
        }
        Ok(Command::Rebirth) => {
            shared.status_notify.notify_one();
            cmd_result(shared, name, id, Ok("status re-sent".into()));
        }
        Ok(Command::ReloadModel) => {
            let (tx, rx) = std::sync::mpsc::channel();
            *shared.reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
            let sh = shared.clone();
            let name = name.to_string();
            // The inference thread loads the model between frames; wait for it off the runtime.
            tokio::task::spawn_blocking(move || {
                let r = rx
                    .recv_timeout(Duration::from_secs(120))
                    .unwrap_or_else(|_| Err("model reload timed out".into()));
                cmd_result(&sh, &name, id, r);
            });
        }
    }
}

/// Hands spool entries to the client until the window is full.
fn fill(client: &AsyncClient, shared: &Shared, infl: &mut Inflight, last: &mut u64) {
    let room = WINDOW.saturating_sub(infl.len());
    if room == 0 {
        return;
    }
    let entries = match shared
        .spool
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .after(*last, room)
    {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("reading the spool: {e}");
            return;
        }
    };
    for (id, m) in entries {
        if client
            .try_publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload)
            .is_err()
        {
            break;
        }
        infl.requested(id);
        *last = id;
    }
}

/// Runs the MQTT connection until `shutdown` resolves, then says goodbye within `deadline`.
pub async fn run(
    shared: Arc<Shared>,
    s: Settings,
    stats_every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    deadline: Duration,
) {
    let mut opts = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    opts.set_keep_alive(s.keep_alive);
    opts.set_clean_session(true);
    opts.set_max_packet_size(1 << 20, 8 << 20);
    opts.set_inflight((WINDOW + 16) as u16);
    opts.set_last_will(LastWill::new(
        shared.topic("status"),
        status_payload(&shared, "offline"),
        QoS::AtLeastOnce,
        true,
    ));
    if let Some((u, p)) = &s.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    let mut backoff = Backoff::new(Duration::from_secs(5));
    loop {
        if *shutdown.borrow() {
            return;
        }
        // A fresh client per connection: nothing queued for a dead connection can leak into the
        // bookkeeping of the next one; the spool resends everything unacknowledged in order.
        let (client, mut el) = AsyncClient::new(opts.clone(), 256);
        let mut infl = Inflight::new();
        let mut last = 0u64;
        let mut connected = false;
        let mut stats_tick = tokio::time::interval(stats_every);
        let mut last_stats = (Instant::now(), verdict_total(&shared));
        loop {
            tokio::select! {
                // The event loop drives the socket: every branch below only queues requests.
                ev = el.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if ack.code != ConnectReturnCode::Success {
                            tracing::warn!("broker refused the connection: {:?}", ack.code);
                            break;
                        }
                        tracing::info!("connected to {}:{}", s.host, s.port);
                        connected = true;
                        backoff.reset();
                        if client.try_publish(shared.topic("status"), QoS::AtLeastOnce, true, status_payload(&shared, "online")).is_ok() {
                            infl.requested_untracked();
                        }
                        let _ = client.try_subscribe(shared.topic("cmd/+"), QoS::AtLeastOnce);
                        fill(&client, &shared, &mut infl, &mut last);
                    }
                    Ok(Event::Incoming(Packet::PubAck(a))) => {
                        if let Some(id) = infl.acked(a.pkid) {
                            if let Err(e) = shared.spool.lock().unwrap_or_else(|e| e.into_inner()).remove(id) {
                                tracing::error!("spool remove: {e}");
                            }
                        }
                        fill(&client, &shared, &mut infl, &mut last);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => handle_command(&shared, &p.topic, &p.payload),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        infl.outgoing(pkid);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected {
                            tracing::warn!("MQTT connection lost: {e}");
                        } else {
                            tracing::debug!("MQTT connect failed: {e}");
                        }
                        break;
                    }
                },
                _ = shared.spool_notify.notified(), if connected => fill(&client, &shared, &mut infl, &mut last),
                _ = shared.status_notify.notified(), if connected => {
                    let state = if shared.stopping() { "stopping" } else { "online" };
                    if client.try_publish(shared.topic("status"), QoS::AtLeastOnce, true, status_payload(&shared, state)).is_ok() {
                        infl.requested_untracked();
                    }
                }
                _ = stats_tick.tick(), if connected => {
                    let now = (Instant::now(), verdict_total(&shared));
                    let dt = now.0.duration_since(last_stats.0).as_secs_f64();
                    let fps = if dt > 0.0 { (now.1 - last_stats.1) as f64 / dt } else { 0.0 };
                    last_stats = now;
                    let v = stats_json(&shared, fps);
                    if client.try_publish(shared.topic("stats"), QoS::AtMostOnce, false, v.to_string()).is_ok() {
                        infl.requested_untracked();
                    }
                }
                _ = shutdown.changed() => {
                    if connected {
                        goodbye(&shared, &client, &mut el, &mut infl, &mut last, deadline).await;
                    }
                    return;
                }
            }
        }
        // Disconnected: wait (capped exponential backoff) unless shutting down.
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Drains the spool (bounded by `deadline`), then publishes the final retained status and
/// disconnects cleanly.
async fn goodbye(
    shared: &Shared,
    client: &AsyncClient,
    el: &mut rumqttc::EventLoop,
    infl: &mut Inflight,
    last: &mut u64,
    deadline: Duration,
) {
    let until = tokio::time::Instant::now() + deadline;
    let _ = client.try_publish(
        shared.topic("status"),
        QoS::AtLeastOnce,
        true,
        status_payload(shared, "stopping"),
    );
    infl.requested_untracked();
    fill(client, shared, infl, last);
    while !shared
        .spool
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
    {
        match tokio::time::timeout_at(until, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                if let Some(id) = infl.acked(a.pkid) {
                    let _ = shared
                        .spool
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(id);
                }
                fill(client, shared, infl, last);
            }
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                infl.outgoing(pkid);
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
    let _ = client.try_publish(
        shared.topic("status"),
        QoS::AtLeastOnce,
        true,
        status_payload(shared, "offline"),
    );
    let _ = client.try_disconnect();
    let flush_until = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(flush_until, el.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
    }
}
