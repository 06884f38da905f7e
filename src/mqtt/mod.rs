//! The MQTT side (rumqttc): connection lifecycle with capped backoff, the retained status with
//! an `offline` last will, streaming the spool with PUBACK tracking, commands, and stats.
//! rumqttc types stay in this module.

pub mod commands;
pub mod feed;
pub mod state;
pub mod twins;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use inspectd_contract::v1;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, LastWill, MqttOptions, Outgoing, Packet, QoS,
};

use crate::health::Broker;
use crate::shared::Shared;
use crate::spool::{Message, Priority};
use commands::Command;
use feed::{Feed, READ_AHEAD};
use inspectd_contract::client::{Backoff, Settings};
use state::Inflight;
use twins::{Twins, TWIN_BACKOFF};

/// Spool entries in flight at once on a connection.
const WINDOW: usize = 32;
/// MQTT's largest packet (remaining length 268 435 455 bytes).
const MAX_PACKET: usize = 268_435_455;
/// A connection that lasted this long resets the reconnect backoff; one that drops sooner
/// (a broker that accepts then closes) keeps backing off.
const STABLE: Duration = Duration::from_secs(10);
/// Connect failures are logged at `warn` at most this often (the rest at `debug`).
const CONNECT_WARN_EVERY: Duration = Duration::from_secs(30);

/// A random id for this daemon process (`instance` in its status and last will).
fn new_instance() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness; the pid and the time make it unique
    // even if it were not.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_i64(inspectd_contract::timefmt::now_ms());
    format!("{:016x}", h.finish())
}

fn status_payload(shared: &Shared, instance: &str, state: v1::State) -> Vec<u8> {
    let model = shared.status.model();
    let variant = shared.status.variant().map(|v| {
        use inspectd_cam::model::variant::How;
        v1::Variant {
            forward_ms: v.forward_ms.clone(),
            how: match v.how {
                How::Timed => "timed",
                How::Cached => "cached",
                How::Forced => "forced",
            }
            .into(),
            name: v.name.clone(),
        }
    });
    v1::Status {
        camera: if shared.status.camera_ok() {
            "ok"
        } else {
            "lost"
        }
        .into(),
        cameras: if shared.named_cameras() {
            shared
                .cameras
                .iter()
                .map(|c| v1::CameraState {
                    camera: if c.ok() { "ok" } else { "lost" }.into(),
                    name: c.label(),
                    source: c.source.clone(),
                    trigger: if c.triggered {
                        "triggered"
                    } else {
                        "continuous"
                    }
                    .into(),
                })
                .collect()
        } else {
            vec![]
        },
        device: shared.device.id.clone(),
        inference: shared.health.inference_state().into(),
        instance: instance.into(),
        model: v1::StatusModel {
            name: model.name,
            sha256: model.sha256,
            variant,
            version: model.version,
        },
        // Only a live connection publishes this; the last will (`offline`) says the rest.
        mqtt: if state == v1::State::Offline {
            "disconnected"
        } else {
            "connected"
        }
        .into(),
        paused: shared.status.paused(),
        schema: v1::StatusSchema,
        state,
        // The last will is built while the box runs; only the final status of a clean stop
        // says it stopped.
        stopped: state == v1::State::Offline && shared.stopping(),
        ts: inspectd_contract::timefmt::now(),
        uptime_s: shared.status.uptime().as_secs(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
    .to_json()
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
pub fn stats_json(shared: &Shared, fps: f64) -> v1::Stats {
    let st = shared.stats.lock();
    let latency_ms = st
        .latency
        .iter()
        .map(|(k, ring)| {
            let p = v1::Percentiles {
                p50: ring.percentile(50.0),
                p95: ring.percentile(95.0),
                p99: ring.percentile(99.0),
            };
            (k.to_string(), p)
        })
        .collect();
    let sp = shared.spool.counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let cameras = if shared.named_cameras() {
        let counts = |v: &[std::sync::atomic::AtomicU64; 3]| v1::VerdictCounts {
            defect: load(&v[1]),
            ok: load(&v[0]),
            suspect: load(&v[2]),
        };
        shared
            .cameras
            .iter()
            .enumerate()
            .map(|(i, c)| v1::CameraStats {
                bad_frames: load(&c.bad_frames),
                dropped_frames: shared.frames.dropped(i),
                frames: load(&c.frames),
                name: c.label(),
                verdicts: counts(&c.verdicts),
            })
            .collect()
    } else {
        vec![]
    };
    v1::Stats {
        bad_frames: st.bad_frames,
        cameras,
        commands_unanswered: st.commands_unanswered,
        device: shared.device.id.clone(),
        dropped_frames: shared.frames.dropped_total(),
        errors: st.errors,
        fps,
        frames: st.frames,
        latency_ms,
        paused: shared.status.paused(),
        rss_bytes: rss_bytes(),
        schema: v1::StatsSchema,
        spool: v1::SpoolStats {
            bytes: load(&sp.bytes),
            depth: load(&sp.depth),
            dropped: load(&sp.dropped),
            errors: load(&sp.errors),
            max_bytes: load(&sp.max_bytes),
            refused: load(&sp.refused),
        },
        ts: inspectd_contract::timefmt::now(),
        unpublished_ok: st.unpublished_ok,
        uptime_s: shared.status.uptime().as_secs_f64(),
        verdicts: v1::VerdictCounts {
            defect: st.verdicts[1],
            ok: st.verdicts[0],
            suspect: st.verdicts[2],
        },
    }
}

fn verdict_total(shared: &Shared) -> u64 {
    shared.stats.lock().verdicts.iter().sum()
}

/// Answers a command on `{p}/cmd_result`, through the spool (awaiting room in its channel).
async fn cmd_result(
    shared: &Shared,
    name: &str,
    id: Option<String>,
    result: Result<String, String>,
) {
    let v = v1::CmdResult::new(
        &shared.device.id,
        inspectd_contract::timefmt::now(),
        name,
        id,
        &result,
    );
    if let Err(e) = &result {
        tracing::warn!("command {name:?} refused: {e}");
    }
    shared
        .spool
        .push_async(Message {
            topic: shared.device.topic("cmd_result"),
            payload: v.to_json(),
            retain: false,
            priority: Priority::High,
        })
        .await;
}

/// Bounds the answers to a flood of commands: a token bucket of [`ANSWERS_PER_S`] per second
/// (burst [`ANSWER_BURST`]). Answers past it are not sent (each would take a place in the
/// spool, ahead of verdicts); they are counted in stats as `commands_unanswered` and logged.
pub struct AnswerBudget {
    tokens: f64,
    at: Instant,
    last_log: Option<Instant>,
}

const ANSWERS_PER_S: f64 = 20.0;
const ANSWER_BURST: f64 = 100.0;

impl AnswerBudget {
    pub fn new() -> AnswerBudget {
        AnswerBudget {
            tokens: ANSWER_BURST,
            at: Instant::now(),
            last_log: None,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * ANSWERS_PER_S)
            .min(ANSWER_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Default for AnswerBudget {
    fn default() -> Self {
        Self::new()
    }
}

/// Handles one incoming message on `{p}/cmd/…`. Never blocks the runtime: it awaits room in
/// the spool's channel at most.
async fn handle_command(
    shared: &Arc<Shared>,
    budget: &mut AnswerBudget,
    topic: &str,
    payload: &[u8],
    retained: bool,
) {
    let prefix = shared.device.topic("cmd/");
    let Some(level) = topic.strip_prefix(&prefix) else {
        return;
    };
    if !budget.take() {
        let n = {
            let mut st = shared.stats.lock();
            st.commands_unanswered += 1;
            st.commands_unanswered
        };
        if budget
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            budget.last_log = Some(Instant::now());
            tracing::warn!(
                "command flood: over {ANSWERS_PER_S}/s, {n} command(s) left unanswered so far"
            );
        }
        return;
    }
    let rules = shared.inbox.rules();
    let (name, id, parsed) = commands::route(level, payload, retained, &rules);
    let result = match parsed {
        Err(e) => Err(e),
        Ok(Command::Trigger { part_id, camera }) => {
            // Answered once the trigger has its verdict (or is refused: paused, camera lost,
            // timed out), off this loop.
            let (tx, rx) = flume::bounded(1);
            let reply = crate::shared::Reply::new(&part_id, Instant::now(), move |o| {
                let _ = tx.send(o);
            });
            let _ = shared.trigger_named(camera.as_deref(), part_id, reply);
            let sh = shared.clone();
            tokio::spawn(async move {
                let r = match rx.recv_async().await {
                    Ok(o) => match o.result {
                        Ok(i) => Ok(format!(
                            "part {}: {} {} (seq {})",
                            o.part_id,
                            v1::Kind::from(i.kind).as_str(),
                            i.label,
                            i.seq
                        )),
                        Err(e) => Err(format!("part {}: {e}", o.part_id)),
                    },
                    Err(_) => Err("trigger dropped".into()),
                };
                cmd_result(&sh, &name, id, r).await;
            });
            return;
        }
        Ok(Command::Set(r)) => {
            shared.inbox.set_rules(*r);
            Ok("rules updated".into())
        }
        Ok(Command::Pause) => {
            shared.status.set_paused(true);
            Ok("paused".into())
        }
        Ok(Command::Resume) => {
            shared.status.set_paused(false);
            Ok("resumed".into())
        }
        Ok(Command::Rebirth) => {
            shared.status.changed();
            Ok("status re-sent".into())
        }
        Ok(Command::ReloadModel { sha256 }) => {
            let rx = match shared.inbox.reload(sha256) {
                Ok(rx) => rx,
                Err(e) => return cmd_result(shared, &name, id, Err(e)).await,
            };
            let sh = shared.clone();
            // The inference thread loads the model between frames; its answer is awaited off
            // this loop (one at a time: `reloading` is set until it answers).
            tokio::spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(120), rx.recv_async())
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or_else(|| Err("model reload timed out".into()));
                sh.inbox.reload_answered();
                cmd_result(&sh, &name, id, r).await;
            });
            return;
        }
    };
    cmd_result(shared, &name, id, result).await;
}

/// A read of the spool under way (its answer arrives as a select branch).
type Fetch = Option<flume::Receiver<Vec<(u64, Message)>>>;

/// Hands entries read ahead to the client until the window is full, then asks the spool for
/// more if the feed wants it (without waiting). Returns how many were handed over.
fn pump(
    client: &AsyncClient,
    shared: &Shared,
    feed: &mut Feed,
    fetch: &mut Fetch,
    infl: &mut Inflight,
) -> usize {
    let Some(n) = hand_over(client, feed, infl) else {
        // The client's queue was full: the feed rewound, forget the read under way.
        *fetch = None;
        return 0;
    };
    if fetch.is_none() {
        if let Some((after, limit)) = feed.want() {
            if let Some(rx) = shared.spool.try_after(after, limit) {
                feed.asked(limit);
                *fetch = Some(rx);
            }
        }
    }
    n
}

/// Hands entries read ahead to the client while the window has room; returns how many, or
/// `None` when the client's queue was full (the feed is rewound to read that entry again).
fn hand_over(client: &AsyncClient, feed: &mut Feed, infl: &mut Inflight) -> Option<usize> {
    let mut n = 0;
    while infl.len() < WINDOW {
        let Some((id, m)) = feed.pop() else { break };
        if client
            .try_publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload)
            .is_err()
        {
            feed.rewind(id);
            return None;
        }
        infl.requested(id);
        n += 1;
    }
    Some(n)
}

/// The answer to a spool read, or never without one.
async fn fetched(fetch: Fetch) -> Vec<(u64, Message)> {
    match fetch {
        Some(rx) => rx.recv_async().await.unwrap_or_default(),
        None => std::future::pending().await,
    }
}

/// Runs the MQTT connection until `shutdown` resolves, then says goodbye within `deadline`.
/// The options every connection of the box starts from: its broker, keep-alive, a clean
/// session, credentials and TLS (the publisher and the twin watcher differ only in client id and
/// what they add).
fn broker_options(s: &Settings, client_id: String) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, s.host.clone(), s.port);
    opts.set_keep_alive(s.keep_alive);
    opts.set_clean_session(true);
    if let Some((u, p)) = &s.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    if let Some(tls) = &s.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    opts
}

pub async fn run(
    shared: Arc<Shared>,
    s: Settings,
    stats_every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    deadline: Duration,
    hold: Option<Arc<std::sync::atomic::AtomicBool>>,
) {
    let instance = new_instance();
    let mut opts = broker_options(&s, s.client_id.clone());
    // Incoming: the protocol's maximum. A smaller limit makes rumqttc drop the connection on a
    // larger packet, and the broker sends a retained one again on every subscribe: one
    // oversized retained command meant a reconnect loop and no verdicts. Now it is read,
    // answered with an error and dropped (bound the size at the broker: deploy/mosquitto).
    opts.set_max_packet_size(MAX_PACKET, 8 << 20);
    opts.set_inflight((WINDOW + 16) as u16);
    opts.set_last_will(LastWill::new(
        shared.device.topic("status"),
        status_payload(&shared, &instance, v1::State::Offline),
        QoS::AtLeastOnce,
        true,
    ));
    // Another live process under this device id, as the watcher saw it (`twins`).
    let twin = twins::spawn_watcher(
        shared.clone(),
        &s,
        Twins::new(&instance, inspectd_contract::timefmt::now_ms()),
    );
    let mut backoff = Backoff::new(Duration::from_secs(5));
    let mut budget = AnswerBudget::new();
    let mut last_connect_warn: Option<Instant> = None;
    let mut failures = 0u64;
    // Beats while waiting for the broker too: a publisher that waits out an outage is alive.
    let mut beat = tokio::time::interval(Duration::from_millis(500));
    let mut inference_state = shared.health.inference_state();
    loop {
        if *shutdown.borrow() {
            return;
        }
        crate::tasks::fault_point("publisher");
        // A fresh client per connection: nothing queued for a dead connection can leak into the
        // bookkeeping of the next one; the spool resends everything unacknowledged in order.
        let (client, mut el) = AsyncClient::new(opts.clone(), 256);
        let mut infl = Inflight::new();
        let mut feed = Feed::new();
        let mut fetch: Fetch = None;
        let mut connected: Option<Instant> = None;
        let mut stats_tick = tokio::time::interval(stats_every);
        let mut last_stats = (Instant::now(), verdict_total(&shared));
        loop {
            shared.health.publisher_beat();
            let ev = if connected.is_none() {
                // Connecting runs to its end: rumqttc's connect is not cancel-safe, and a poll
                // dropped between CONNECT and CONNACK closes a connection the broker accepted,
                // which makes it publish our last will (`offline`) as the box starts. Only the
                // beat and a shutdown run beside it.
                let connect = el.poll();
                tokio::pin!(connect);
                loop {
                    tokio::select! {
                        ev = &mut connect => break ev,
                        _ = beat.tick() => shared.health.publisher_beat(),
                        _ = shutdown.changed() => return,
                    }
                }
            } else {
                tokio::select! {
                    // The event loop drives the socket: every other branch only queues requests.
                    ev = el.poll() => ev,
                    batch = fetched(fetch.clone()), if fetch.is_some() => {
                        fetch = None;
                        feed.arrived(batch);
                        pump(&client, &shared, &mut feed, &mut fetch, &mut infl);
                        continue;
                    }
                    _ = shared.spool.stored() => {
                        feed.stored();
                        pump(&client, &shared, &mut feed, &mut fetch, &mut infl);
                        continue;
                    }
                    _ = shared.status.wait_changed() => {
                        let state = if shared.stopping() { v1::State::Stopping } else { v1::State::Online };
                        if client.try_publish(shared.device.topic("status"), QoS::AtLeastOnce, true, status_payload(&shared, &instance, state)).is_ok() {
                            infl.requested_untracked();
                        }
                        continue;
                    }
                    _ = beat.tick() => {
                        crate::tasks::fault_point("publisher");
                        // Retries a read the spool's full channel refused.
                        pump(&client, &shared, &mut feed, &mut fetch, &mut infl);
                        if let Some(hold) = &hold {
                            while hold.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                        // Inference stalling or recovering changes the retained status.
                        let now = shared.health.inference_state();
                        if now != inference_state {
                            inference_state = now;
                            shared.status.changed();
                        }
                        continue;
                    }
                    _ = stats_tick.tick() => {
                        let now = (Instant::now(), verdict_total(&shared));
                        let dt = now.0.duration_since(last_stats.0).as_secs_f64();
                        let fps = if dt > 0.0 { (now.1 - last_stats.1) as f64 / dt } else { 0.0 };
                        last_stats = now;
                        let v = stats_json(&shared, fps);
                        if client.try_publish(shared.device.topic("stats"), QoS::AtMostOnce, false, v.to_json()).is_ok() {
                            infl.requested_untracked();
                        }
                        continue;
                    }
                    _ = shutdown.changed() => {
                        goodbye(&shared, &instance, &client, &mut el, &mut infl, &mut feed, deadline).await;
                        return;
                    }
                }
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        tracing::warn!(
                            "broker {}:{} refused the connection: {:?}",
                            s.host,
                            s.port,
                            ack.code
                        );
                        break;
                    }
                    tracing::info!("connected to {}:{}", s.host, s.port);
                    connected = Some(Instant::now());
                    failures = 0;
                    shared.health.set_broker(Broker::Connected);
                    if client
                        .try_publish(
                            shared.device.topic("status"),
                            QoS::AtLeastOnce,
                            true,
                            status_payload(&shared, &instance, v1::State::Online),
                        )
                        .is_ok()
                    {
                        infl.requested_untracked();
                    }
                    let _ = client.try_subscribe(shared.device.topic("cmd/+"), QoS::AtLeastOnce);
                    pump(&client, &shared, &mut feed, &mut fetch, &mut infl);
                }
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    let acked = Instant::now();
                    if let Some(id) = infl.acked(a.pkid) {
                        shared.spool.remove(id).await;
                    }
                    // PUBACK → the next spooled message handed to the client: how long a
                    // backlog waits per message (stats `latency_ms.ack_to_publish`).
                    if pump(&client, &shared, &mut feed, &mut fetch, &mut infl) > 0 {
                        let ms = acked.elapsed().as_secs_f64() * 1e3;
                        shared
                            .stats
                            .lock()
                            .latency
                            .entry("ack_to_publish")
                            .or_default()
                            .push(ms);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    handle_command(&shared, &mut budget, &p.topic, &p.payload, p.retain).await
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    infl.outgoing(pkid);
                }
                Ok(_) => {}
                Err(e) => {
                    shared.health.set_broker(Broker::Disconnected);
                    match connected {
                        Some(at) => {
                            tracing::warn!("MQTT connection to {}:{} lost: {e}", s.host, s.port);
                            if at.elapsed() >= STABLE {
                                backoff.reset();
                            }
                            // Not kicked off for this long: the twin is gone.
                            if at.elapsed() >= 2 * TWIN_BACKOFF && twin.clear() {
                                tracing::info!("no other process under device {:?} for {} s: reconnecting as usual", shared.device.id, at.elapsed().as_secs());
                            }
                        }
                        None => {
                            failures += 1;
                            if last_connect_warn.is_none_or(|t| t.elapsed() >= CONNECT_WARN_EVERY) {
                                last_connect_warn = Some(Instant::now());
                                tracing::warn!(
                                        "cannot connect to the broker {}:{}: {e} ({failures} attempt(s); verdicts are kept in the spool, {} waiting)",
                                        s.host, s.port, shared.spool.len()
                                    );
                            } else {
                                tracing::debug!(
                                    "MQTT connect to {}:{} failed: {e}",
                                    s.host,
                                    s.port
                                );
                            }
                        }
                    }
                    break;
                }
            }
        }
        // Disconnected: wait (capped exponential backoff; long beside a twin) unless shutting
        // down.
        let mut delay = backoff.next_delay();
        if let Some(other) = twin.get() {
            delay = delay.max(TWIN_BACKOFF);
            tracing::warn!(
                "device {:?} is also run by process {other}: reconnecting in {} s",
                shared.device.id,
                delay.as_secs()
            );
        }
        let until = tokio::time::Instant::now() + delay;
        loop {
            shared.health.publisher_beat();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = beat.tick() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Drains the spool (bounded by `deadline`), then publishes the final retained status and
/// disconnects cleanly.
async fn goodbye(
    shared: &Shared,
    instance: &str,
    client: &AsyncClient,
    el: &mut rumqttc::EventLoop,
    infl: &mut Inflight,
    feed: &mut Feed,
    deadline: Duration,
) {
    let until = tokio::time::Instant::now() + deadline;
    let _ = client.try_publish(
        shared.device.topic("status"),
        QoS::AtLeastOnce,
        true,
        status_payload(shared, instance, v1::State::Stopping),
    );
    infl.requested_untracked();
    loop {
        if infl.is_empty() && feed.is_empty() {
            // A round trip to the spool thread: every delete sent before it is done, so an
            // empty answer means everything was acknowledged.
            let after = feed.fetched();
            let batch = shared.spool.after(after, READ_AHEAD).await;
            if batch.is_empty() {
                break;
            }
            feed.asked(READ_AHEAD);
            feed.arrived(batch);
        }
        hand_over(client, feed, infl);
        match tokio::time::timeout_at(until, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                if let Some(id) = infl.acked(a.pkid) {
                    shared.spool.remove(id).await;
                }
            }
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                infl.outgoing(pkid);
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
    if client
        .try_publish(
            shared.device.topic("status"),
            QoS::AtLeastOnce,
            true,
            status_payload(shared, instance, v1::State::Offline),
        )
        .is_ok()
    {
        infl.requested_untracked();
    }
    // The final status is acknowledged before DISCONNECT, and the socket is closed only after
    // the broker closed its side: a socket closed with the broker's PUBACKs still unread sends
    // a reset, and the broker then discards the DISCONNECT it had not read yet and publishes our
    // last will (`offline` without `stopped`; Mosquitto logs "disconnected due to out of
    // memory").
    let flush_until = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut last_sent = None;
    loop {
        match tokio::time::timeout_at(flush_until, el.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                infl.outgoing(pkid);
                if infl.all_sent() {
                    last_sent = Some(pkid);
                }
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(a)))) if Some(a.pkid) == last_sent => break,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
    let _ = client.try_disconnect();
    // After DISCONNECT the broker closes the connection: reading up to that end (an error
    // here) leaves nothing unread.
    while let Ok(Ok(_)) = tokio::time::timeout_at(flush_until, el.poll()).await {}
}
