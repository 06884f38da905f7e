//! `inspectd-supervisor`: the plant-side dashboard. It subscribes to every device's topics,
//! checks each message against the MQTT contract, stores verdicts (de-duplicated by device and
//! sequence number), evidence, alerts and status in SQLite or PostgreSQL, and serves a web UI
//! with live updates (server-sent events), history with CSV export, alert acknowledgement and
//! commands.
//!
//! Delivery: the subscription is QoS 1 on a persistent session, and a message is acknowledged
//! to the broker only after the transaction that stores it commits. A crash loses nothing the
//! broker handed over; a redelivery is recognised by (device, seq) and stored once.
//!
//! Several supervisors (`--share-group`, PostgreSQL): the broker spreads the boxes' messages
//! over them through a shared subscription; statuses reach every one (a plain subscription) and
//! are applied once. Each serves the whole UI from the shared database, and its live views
//! follow the rows every instance stores (`follow`).

pub mod access;
mod follow;
pub mod ingest;
pub mod loadgen;
pub mod pgtest;
pub mod store;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use rumqttc::{AsyncClient, ConnectReturnCode, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use ingest::{classify, Reject, KINDS};
use inspectd_cam::error::bad_input;
use inspectd_contract::client::{Backoff, BrokerConfig};
use store::{ApplyOptions, Db, Event, Item, Retention, Target};

#[derive(Args, Debug, Clone)]
pub struct SuperviseArgs {
    /// Broker URL: mqtt://host:port or mqtts://host:port.
    #[arg(long)]
    pub broker: String,
    /// Address of the web UI. One other machines reach needs --users-file (or
    /// --allow-anonymous-ui).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Operators who may use the UI: `name:password` lines (HTTP Basic login; acknowledgements
    /// and commands record the name).
    #[arg(long)]
    pub users_file: Option<PathBuf>,
    /// Serve the UI without logins on any address (behind a proxy that logs people in).
    #[arg(long)]
    pub allow_anonymous_ui: bool,
    /// The history: a SQLite file (created if missing), or a PostgreSQL database
    /// `postgres://USER@HOST[:PORT]/DB[?sslmode=verify-full&sslrootcert=CA.pem]` (the schema is
    /// created or migrated on start).
    #[arg(long, default_value = "supervisor.sqlite")]
    pub db: PathBuf,
    /// Topic prefix the devices publish under.
    #[arg(long, default_value = "inspect")]
    pub prefix: String,
    /// MQTT client id (the broker keeps this session's subscription while it is away).
    #[arg(long, default_value = "inspectd-supervisor")]
    pub client_id: String,
    #[arg(long)]
    pub username: Option<String>,
    /// File holding the MQTT password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) for mqtts://.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Allow plaintext MQTT to a host that is not loopback.
    #[arg(long)]
    pub allow_insecure: bool,
    /// Keep verdicts, evidence and acknowledged alerts this many days.
    #[arg(long, default_value_t = 30)]
    pub retain_days: u32,
    /// Keep at most this many verdicts (the oldest go first).
    #[arg(long, default_value_t = 1_000_000)]
    pub max_verdicts: u64,
    /// An online device silent this long is shown as stale (seconds).
    #[arg(long, default_value_t = 30)]
    pub stale_after_s: u64,
    // PostgreSQL, and several supervisors on one database.
    /// File holding the PostgreSQL password (when the --db URL has none; otherwise PGPASSFILE or
    /// ~/.pgpass is read, as libpq does).
    #[arg(long)]
    pub db_password_file: Option<PathBuf>,
    /// Share the boxes' verdicts, alerts, evidence, stats and command results with the other
    /// supervisors of this group (MQTT `$share/NAME/...`): the broker gives each message to one
    /// of them. Statuses reach every one. Needs a PostgreSQL --db; give each its own --client-id.
    #[arg(long)]
    pub share_group: Option<String>,
    /// Keep evidence pictures as files under this folder (the row keeps their path) instead of in
    /// the database; retention deletes both. PostgreSQL only. Several supervisors must see the
    /// same folder (one host, or a shared mount) to show each other's pictures.
    #[arg(long)]
    pub evidence_dir: Option<PathBuf>,
}

/// The supervisor's own counters (`/metrics`).
pub struct Metrics {
    pub received: [AtomicU64; KINDS.len()],
    pub dropped: [AtomicU64; Reject::ALL.len()],
    pub duplicates: [AtomicU64; KINDS.len()],
    /// Verdicts whose (device, seq) was stored with other content (kept as conflicts).
    pub conflicts: AtomicU64,
    pub stored: AtomicU64,
    pub db_errors: AtomicU64,
    pub connects: AtomicU64,
    pub connected: AtomicBool,
    /// Since when (ms since the epoch) `connected` has been what it is.
    pub link_since: AtomicI64,
    /// (when, messages received so far): for messages per second.
    rate: Mutex<std::collections::VecDeque<(Instant, u64)>>,
    pub started: Instant,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            received: Default::default(),
            dropped: Default::default(),
            duplicates: Default::default(),
            conflicts: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            db_errors: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            link_since: AtomicI64::new(inspectd_contract::timefmt::now_ms()),
            rate: Mutex::new(Default::default()),
            started: Instant::now(),
        }
    }

    pub fn received_total(&self) -> u64 {
        self.received
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
            + self
                .dropped
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<u64>()
    }

    /// Records a sample (once a second) and returns messages/s over the last 10 s.
    pub fn sample_rate(&self) -> f64 {
        let now = Instant::now();
        let total = self.received_total();
        let mut r = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        r.push_back((now, total));
        while r.len() > 2 && now.duration_since(r[0].0) > Duration::from_secs(10) {
            r.pop_front();
        }
        self.rate_of(&r)
    }

    pub fn rate(&self) -> f64 {
        let r = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        self.rate_of(&r)
    }

    fn rate_of(&self, r: &std::collections::VecDeque<(Instant, u64)>) -> f64 {
        match (r.front(), r.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64(),
            _ => 0.0,
        }
    }

    /// Records the broker link going up or down; true if that is a change.
    pub fn set_link(&self, up: bool) -> bool {
        let was = self.connected.swap(up, Ordering::Relaxed);
        if was != up {
            self.link_since
                .store(inspectd_contract::timefmt::now_ms(), Ordering::Relaxed);
        }
        was != up
    }

    /// Whether the supervisor is connected to the broker, and since when.
    pub fn link(&self) -> (bool, i64) {
        (
            self.connected.load(Ordering::Relaxed),
            self.link_since.load(Ordering::Relaxed),
        )
    }

    fn kind(kind: &str) -> usize {
        KINDS.iter().position(|k| *k == kind).unwrap_or(0)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A PUBACK owed to the broker, valid only on the connection (`epoch`) it came in on.
pub struct Ack {
    epoch: u64,
    publish: rumqttc::Publish,
}

/// Work for the writer thread.
pub enum Work {
    Msg(Item, Option<Ack>),
    /// A message not stored (dropped, or not ours): acknowledged in its turn, because MQTT
    /// wants PUBACKs in the order the messages came (rumqttd drops a client that does not).
    Skip(Ack),
    /// Enforce the retention limits.
    Tick,
    /// Look for boxes gone silent.
    Sweep,
}

/// A command to publish, with the channel for the outcome.
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    pub done: oneshot::Sender<Result<(), String>>,
}

/// Everything the web handlers share.
pub struct Hub {
    pub db: store::Readers,
    /// `--evidence-dir`: where pictures stored as files are read from.
    pub evidence_dir: Option<PathBuf>,
    pub prefix: String,
    pub stale_after_ms: i64,
    pub events: broadcast::Sender<Event>,
    pub commands: mpsc::Sender<Outgoing>,
    pub metrics: Arc<Metrics>,
}

/// Hands queued PUBACKs to the client, in order, until its request channel is full.
fn flush_acks(client: &AsyncClient, pending: &mut std::collections::VecDeque<rumqttc::Publish>) {
    while let Some(p) = pending.front() {
        if client.try_ack(p).is_err() {
            return;
        }
        pending.pop_front();
    }
}

/// The MQTT side: one fresh client per connection, a persistent session, manual acks. Tells the
/// UI (`Event::Link`) when the broker connection goes up or down.
#[allow(clippy::too_many_arguments)] // each is a distinct channel of one long-lived task
async fn link(
    s: inspectd_contract::client::Settings,
    prefix: String,
    share_group: Option<String>,
    work: mpsc::Sender<Work>,
    mut acks: mpsc::UnboundedReceiver<Ack>,
    mut commands: mpsc::Receiver<Outgoing>,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut opts = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
    opts.set_keep_alive(s.keep_alive);
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    // Large enough that an oversized payload reaches us to be counted and dropped, instead of
    // breaking the connection (and coming back forever on the persistent session).
    opts.set_max_packet_size(32 << 20, 1 << 20);
    opts.set_inflight(100);
    if let Some((u, p)) = &s.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    if let Some(tls) = &s.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    // One filter for everything, or with a share group: the broker's shared subscription for
    // what one instance stores for all, and statuses on a plain one (retained messages are not
    // delivered through shared subscriptions, and every instance must learn each box's state).
    let filters: Vec<String> = match &share_group {
        None => vec![format!("{prefix}/+/#")],
        Some(g) => ["verdict", "alert", "stats", "cmd_result", "evidence/+"]
            .iter()
            .map(|leaf| format!("$share/{g}/{prefix}/+/{leaf}"))
            .chain([format!("{prefix}/+/status")])
            .collect(),
    };
    let filter = filters.join(", ");
    // Dropped at shutdown: the writer then stores what it has, acknowledges it and ends.
    let mut work = Some(work);
    let mut backoff = Backoff::new(Duration::from_secs(10));
    let mut epoch = 0u64;
    let mut last_warn = Instant::now() - Duration::from_secs(60);
    loop {
        if *shutdown.borrow() {
            return;
        }
        epoch += 1;
        let (client, mut el) = AsyncClient::new(opts.clone(), 1024);
        let mut pending: std::collections::VecDeque<rumqttc::Publish> = Default::default();
        let mut connected = false;
        loop {
            flush_acks(&client, &mut pending);
            tokio::select! {
                ev = el.poll() => match ev {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => {
                        if ack.code != ConnectReturnCode::Success {
                            tracing::warn!("broker refused the supervisor: {:?}", ack.code);
                            break;
                        }
                        // Subscribe on every connection: a broker restarted without persistence
                        // has forgotten the session.
                        let subs = filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                        if let Err(e) = client.try_subscribe_many(subs) {
                            tracing::warn!("subscribing to {filter}: {e}");
                            break;
                        }
                        connected = true;
                        backoff.reset();
                        metrics.connects.fetch_add(1, Ordering::Relaxed);
                    }
                    // Connected means subscribed: from here on nothing published is missed.
                    Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            tracing::error!("the broker refused a subscription of {filter} ({:?}); a share group needs Mosquitto 2 or another broker with shared subscriptions", ack.return_codes);
                            break;
                        }
                        tracing::info!("connected to {}:{}, subscribed to {filter}", s.host, s.port);
                        if metrics.set_link(true) {
                            let _ = events.send(Event::Link);
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        let ack = (p.qos != QoS::AtMostOnce).then(|| Ack {
                            epoch,
                            publish: rumqttc::Publish { payload: Default::default(), ..p.clone() },
                        });
                        match classify(&prefix, &p.topic, &p.payload) {
                            Ok(Some(msg)) => {
                                metrics.received[Metrics::kind(msg.kind())].fetch_add(1, Ordering::Relaxed);
                                let item = Item { msg, retained: p.retain };
                                let Some(w) = &work else { return };
                                if w.send(Work::Msg(item, ack)).await.is_err() {
                                    return;
                                }
                            }
                            other => {
                                if let Err(d) = other {
                                    metrics.dropped[d.reason as usize].fetch_add(1, Ordering::Relaxed);
                                    if last_warn.elapsed() > Duration::from_secs(1) {
                                        last_warn = Instant::now();
                                        tracing::warn!("dropped a message on {:?} ({}): {}", p.topic, d.reason.name(), d.detail);
                                    }
                                }
                                if let (Some(a), Some(w)) = (ack, &work) {
                                    if w.send(Work::Skip(a)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("broker connection: {e}");
                        break;
                    }
                },
                Some(a) = acks.recv() => {
                    if a.epoch == epoch {
                        pending.push_back(a.publish);
                    }
                }
                Some(c) = commands.recv() => {
                    let r = if connected {
                        client.try_publish(c.topic, QoS::AtLeastOnce, false, c.payload).map_err(|e| e.to_string())
                    } else {
                        Err("the supervisor is not connected to the broker".into())
                    };
                    let _ = c.done.send(r);
                }
                _ = shutdown.changed() => {
                    // Acknowledge what the writer stores from here on (it ends once its queue
                    // is empty); anything not stored in time comes again on the next session.
                    drop(work.take());
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
                    loop {
                        flush_acks(&client, &mut pending);
                        tokio::select! {
                            a = acks.recv() => match a {
                                Some(a) if a.epoch == epoch => pending.push_back(a.publish),
                                Some(_) => {}
                                None => break,
                            },
                            ev = el.poll() => if ev.is_err() { return },
                            _ = tokio::time::sleep_until(deadline) => break,
                        }
                    }
                    while let Some(p) = pending.pop_front() {
                        let _ = client.try_ack(&p);
                    }
                    let _ = client.try_disconnect();
                    let _ = tokio::time::timeout(Duration::from_millis(500), async { while el.poll().await.is_ok() {} }).await;
                    return;
                }
            }
        }
        if metrics.set_link(false) {
            let _ = events.send(Event::Link);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// What the writer thread needs besides its channels.
struct WriterSetup {
    target: Target,
    retention: Retention,
    stale_after_ms: i64,
    apply: ApplyOptions,
    /// This process, in the notifications of stored rows (PostgreSQL).
    instance: String,
}

/// Stores one batch in one transaction; on PostgreSQL, tells every supervisor listening (this
/// one's follower too) at commit.
fn store_batch(conn: &Db, items: &[Item], now: i64, w: &WriterSetup) -> Result<store::Applied> {
    conn.write(|tx| {
        let a = store::apply_with(tx, items, now, &w.apply)?;
        if tx.is_postgres() && (a.stored > 0 || a.conflicts > 0) {
            follow::notify(tx, &w.instance, &a.events)?;
        }
        Ok(a)
    })
}

/// The writer thread: batches whatever is waiting into one transaction, then acknowledges the
/// batch to the broker and tells the UI. A failing database is retried with backoff (a lost
/// PostgreSQL connection is made again); nothing is acknowledged until it is stored.
fn writer(
    mut conn: Db,
    mut rx: mpsc::Receiver<Work>,
    acks: mpsc::UnboundedSender<Ack>,
    events: broadcast::Sender<Event>,
    metrics: Arc<Metrics>,
    w: WriterSetup,
) {
    const BATCH: usize = 4096;
    let mut retain_due = true;
    let mut sweep_due = false;
    // On PostgreSQL the live views' rows come from the follower, in commit order across every
    // supervisor: the writer announces everything else.
    let rows_from_db = conn.is_postgres();
    let reconnect = |conn: &mut Db| {
        if let Db::Postgres(pg) = &*conn {
            if pg.is_closed() {
                match store::open(&w.target) {
                    Ok(db) => *conn = db,
                    Err(e) => tracing::error!("{e:#}"),
                }
            }
        }
    };
    loop {
        let Some(first) = rx.blocking_recv() else {
            return;
        };
        let mut items = Vec::new();
        let mut tokens = Vec::new();
        let mut next = Some(first);
        while let Some(w) = next.take() {
            match w {
                Work::Msg(item, ack) => {
                    items.push(item);
                    tokens.extend(ack);
                }
                Work::Skip(ack) => tokens.push(ack),
                Work::Tick => retain_due = true,
                Work::Sweep => sweep_due = true,
            }
            if items.len() < BATCH && tokens.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !items.is_empty() || !tokens.is_empty() {
            let mut backoff = Backoff::new(Duration::from_secs(10));
            let applied = loop {
                let now = inspectd_contract::timefmt::now_ms();
                match store_batch(&conn, &items, now, &w) {
                    Ok(a) => break a,
                    Err(e) => {
                        metrics.db_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("storing {} messages: {e:#}; retrying", items.len());
                        std::thread::sleep(backoff.next_delay());
                        reconnect(&mut conn);
                    }
                }
            };
            metrics
                .stored
                .fetch_add(applied.stored as u64, Ordering::Relaxed);
            for k in &applied.duplicates {
                metrics.duplicates[Metrics::kind(k)].fetch_add(1, Ordering::Relaxed);
            }
            metrics
                .conflicts
                .fetch_add(applied.conflicts as u64, Ordering::Relaxed);
            for t in tokens {
                let _ = acks.send(t);
            }
            for e in applied.events {
                if rows_from_db && matches!(e, Event::Verdict(_) | Event::Alert(_)) {
                    continue;
                }
                let _ = events.send(e);
            }
        }
        if sweep_due {
            sweep_due = false;
            // Boxes silent past --stale-after-s are lost, unless the supervisor itself was cut
            // off from the broker meanwhile (then their silence says nothing).
            let now = inspectd_contract::timefmt::now_ms();
            let (up, since) = metrics.link();
            if up && now - since >= w.stale_after_ms {
                let r = conn.write(|tx| {
                    let evs = store::sweep_silent(tx, now, w.stale_after_ms)?;
                    if tx.is_postgres() && !evs.is_empty() {
                        follow::notify(tx, &w.instance, &evs)?;
                    }
                    Ok(evs)
                });
                match r {
                    Ok(evs) => {
                        for e in evs {
                            if rows_from_db && matches!(e, Event::Alert(_)) {
                                continue;
                            }
                            let _ = events.send(e);
                        }
                    }
                    Err(e) => {
                        metrics.db_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("looking for silent boxes: {e:#}");
                        reconnect(&mut conn);
                    }
                }
            }
        }
        if retain_due {
            retain_due = false;
            match store::enforce_with(
                &conn,
                w.retention,
                inspectd_contract::timefmt::now_ms(),
                w.apply.evidence_dir.as_deref(),
            ) {
                Ok(0) => {}
                Ok(n) => tracing::info!("retention: {n} verdicts deleted"),
                Err(e) => {
                    metrics.db_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("retention: {e:#}");
                    reconnect(&mut conn);
                }
            }
        }
    }
}

/// Resolved, checked arguments: every bad one is exit 2 with its flag named.
struct Setup {
    mqtt: inspectd_contract::client::Settings,
    listen: SocketAddr,
    users: Option<access::Users>,
    target: Target,
}

fn setup(a: &SuperviseArgs) -> Result<Setup> {
    if a.prefix.is_empty() || a.prefix.contains(['+', '#', '/']) {
        return Err(bad_input(format!(
            "--prefix {:?}: must be one non-empty topic level without + #",
            a.prefix
        )));
    }
    if a.client_id.is_empty() {
        return Err(bad_input("--client-id: must not be empty"));
    }
    if a.retain_days == 0 || a.max_verdicts == 0 || a.stale_after_s == 0 {
        return Err(bad_input(
            "--retain-days, --max-verdicts and --stale-after-s must be at least 1",
        ));
    }
    let cfg = BrokerConfig {
        url: a.broker.clone(),
        client_id: Some(a.client_id.clone()),
        username: a.username.clone(),
        password_file: a.password_file.clone(),
        ca_file: a.ca_file.clone(),
        cert_file: a.cert_file.clone(),
        key_file: a.key_file.clone(),
        keep_alive_s: 10,
        allow_insecure: a.allow_insecure,
    };
    let mqtt = inspectd_contract::client::settings(&cfg, "inspectd-supervisor")
        .map_err(|e| bad_input(format!("--broker: {e:#}")))?;
    let listen: SocketAddr = a.listen.parse().map_err(|_| {
        bad_input(format!(
            "--listen {:?}: not an address like 127.0.0.1:8080",
            a.listen
        ))
    })?;
    let users = match &a.users_file {
        Some(f) => Some(access::Users::load(f).map_err(|e| bad_input(format!("{e:#}")))?),
        None => None,
    };
    access::check_listen(listen, users.as_ref(), a.allow_anonymous_ui)
        .map_err(|e| bad_input(e.to_string()))?;
    let target = Target::parse(&a.db, a.db_password_file.as_deref(), a.allow_insecure)
        .map_err(|e| bad_input(format!("{e:#}")))?;
    if let Target::Sqlite(db) = &target {
        if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(bad_input(format!(
                    "--db {}: folder {} does not exist",
                    db.display(),
                    dir.display()
                )));
            }
        }
        for (flag, set) in [
            ("--share-group", a.share_group.is_some()),
            ("--evidence-dir", a.evidence_dir.is_some()),
            ("--db-password-file", a.db_password_file.is_some()),
        ] {
            if set {
                return Err(bad_input(format!(
                    "{flag}: needs a PostgreSQL --db (postgres://USER@HOST/DB); a SQLite file serves one supervisor"
                )));
            }
        }
    }
    if let Some(g) = &a.share_group {
        if g.is_empty() || g.contains(['+', '#', '/']) {
            return Err(bad_input(format!(
                "--share-group {g:?}: must be one non-empty topic level without + #"
            )));
        }
    }
    if let Some(dir) = &a.evidence_dir {
        if !dir.is_dir() {
            return Err(bad_input(format!(
                "--evidence-dir {}: not a folder",
                dir.display()
            )));
        }
    }
    Ok(Setup {
        mqtt,
        listen,
        users,
        target,
    })
}

/// Runs the supervisor until SIGINT/SIGTERM.
pub fn run(a: SuperviseArgs) -> Result<()> {
    let rt = inspectd_contract::client::runtime()?;
    rt.block_on(serve(a, inspectd_contract::client::signals(), None))
}

/// Runs the supervisor until `shutdown`; `bound` receives the web address once it listens.
pub async fn serve(
    a: SuperviseArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    bound: Option<oneshot::Sender<SocketAddr>>,
) -> Result<()> {
    let Setup {
        mqtt,
        listen,
        users,
        target,
    } = setup(&a)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| bad_input(format!("--listen {listen}: cannot listen: {e}")))?;
    let addr = listener.local_addr()?;
    // Blocking (PostgreSQL's client runs a small runtime of its own): off the async workers.
    let conn = {
        let t = target.clone();
        tokio::task::spawn_blocking(move || store::open(&t))
            .await
            .context("opening the database")?
            .map_err(|e| bad_input(format!("{e:#}")))?
    };
    let instance = format!(
        "{}/{}/{}",
        a.client_id,
        std::process::id(),
        inspectd_contract::timefmt::now_ms()
    );
    let metrics = Arc::new(Metrics::new());
    let (events, _) = broadcast::channel(4096);
    let (work_tx, work_rx) = mpsc::channel(8192);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (stop_tx, stop_rx) = watch::channel(false);
    let setup = WriterSetup {
        target: target.clone(),
        retention: Retention {
            days: a.retain_days,
            max_verdicts: a.max_verdicts,
        },
        stale_after_ms: a.stale_after_s as i64 * 1000,
        apply: ApplyOptions {
            statuses_once: a.share_group.is_some(),
            evidence_dir: a.evidence_dir.clone(),
        },
        instance: instance.clone(),
    };
    // PostgreSQL: the live views follow the rows every supervisor stores.
    let follower = match &target {
        Target::Postgres(_) => Some(follow::start(
            target.clone(),
            instance.clone(),
            events.clone(),
        )?),
        Target::Sqlite(_) => None,
    };
    let writer_thread = {
        let (events, metrics) = (events.clone(), metrics.clone());
        std::thread::Builder::new()
            .name("supervisor-db".into())
            .spawn(move || writer(conn, work_rx, ack_tx, events, metrics, setup))
            .context("starting the database thread")?
    };
    let hub = Arc::new(Hub {
        db: store::Readers::new(target.clone()),
        evidence_dir: a.evidence_dir.clone(),
        prefix: a.prefix.clone(),
        stale_after_ms: a.stale_after_s as i64 * 1000,
        events: events.clone(),
        commands: cmd_tx,
        metrics: metrics.clone(),
    });
    let mqtt_task = tokio::spawn(link(
        mqtt,
        a.prefix.clone(),
        a.share_group.clone(),
        work_tx.clone(),
        ack_rx,
        cmd_rx,
        metrics.clone(),
        events.clone(),
        stop_rx.clone(),
    ));
    // Once a second: the message rate and a fleet refresh (online turns stale by time alone);
    // once a minute: retention.
    let ticker = {
        let (metrics, events, work) = (metrics.clone(), events.clone(), work_tx);
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                metrics.sample_rate();
                n += 1;
                if n.is_multiple_of(5) {
                    let _ = events.send(Event::Fleet);
                }
                if work.send(Work::Sweep).await.is_err() {
                    return;
                }
                if n.is_multiple_of(60) && work.send(Work::Tick).await.is_err() {
                    return;
                }
            }
        })
    };
    tracing::info!("supervisor web UI on http://{addr}/");
    eprintln!(
        "inspectd-supervisor: web UI on http://{addr}/, database {}{}",
        target.shown(),
        match &a.share_group {
            Some(g) => format!(", share group {g}"),
            None => String::new(),
        }
    );
    if let Some(b) = bound {
        let _ = b.send(addr);
    }
    let mut web_stop = stop_rx.clone();
    let app = web::router(hub).layer(axum::middleware::from_fn_with_state(
        users.map(Arc::new),
        access::guard,
    ));
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = web_stop.changed().await;
    });
    let server = tokio::spawn(async move { server.await });
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = mqtt_task.await;
    let _ = ticker.await;
    // Open SSE streams would hold the graceful shutdown forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    // The last batch is stored before the process ends.
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    if let Some(f) = follower {
        let _ = tokio::task::spawn_blocking(move || f.stop()).await;
    }
    Ok(())
}
