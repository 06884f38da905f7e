//! Is another live process publishing under this device id? Two boxes with one `device_id` use
//! one MQTT client id, and a broker keeps one connection per client id: each connection kicks
//! the other off, and the two reconnected in turn forever while the supervisor took their
//! verdicts for one box's.
//!
//! The box's own connection cannot see its twin: the twin is connected exactly while it is
//! not, and a will published on the takeover hides the twin's `online` (rumqttd 0.20 even
//! publishes the *new* connection's own will then). So a watcher connection with a client id of
//! its own (`{client_id}-watch-{instance}`, no will, subscribe only) follows `{p}/status`, and
//! every daemon process has a random `instance` id, carried in its status and its last will. A
//! status of another instance proves a live twin only when it is newer than this process's own
//! `online`:
//! - an `online` (or `stopping`) of another instance that the watcher gets after this
//!   process's own `online`, stamped after this process started (its clock: a process of this
//!   same box before a restart is older);
//! - the last will of one other instance seen twice with this process's `online` standing
//!   between the two (a will is published once: the second proves it connected again).
//!
//! A crashed predecessor of this box (same device, earlier instance) leaves at most its
//! `online` or its will as the retained status, replayed once before this process's own
//! `online` is seen; its late will is seen once and answered by publishing `online` again.
//!
//! On a twin: one error line and a `duplicate_device_id` alert (critical, sent on the watcher's
//! connection at once and through the spool), and the connection
//! reconnects only every [`TWIN_BACKOFF`] (verdicts wait in the spool) until one of its
//! connections lasts twice that long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inspectd_contract::client::{Backoff, Settings};
use inspectd_contract::v1;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS, SubscribeReasonCode,
};

use crate::shared::Shared;

/// The wait between reconnects beside a twin, instead of kicking each other off the broker
/// several times a second. A connection that lasts twice this long means the twin is gone.
pub const TWIN_BACKOFF: Duration = Duration::from_secs(60);

/// What a status seen on the device's own topic asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Nothing,
    /// A last will now stands as the retained status while this process is up: publish
    /// `online` again.
    Republish,
    /// Another live process publishes under this device id (its instance).
    Twin(String),
}

pub struct Twins {
    me: String,
    /// When this process started (ms since the epoch).
    started_ms: i64,
    /// This process's own `online` came back on the current connection / an earlier one.
    echoed: bool,
    echoed_before: bool,
    /// Other instances' last wills seen after this process's `online`: whether this
    /// process's `online` has come back since.
    wills: HashMap<String, bool>,
}

impl Twins {
    pub fn new(me: &str, started_ms: i64) -> Twins {
        Twins {
            me: me.to_string(),
            started_ms,
            echoed: false,
            echoed_before: false,
            wills: HashMap::new(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// A new connection (before its subscription's retained replay).
    pub fn connected(&mut self) {
        self.echoed_before |= self.echoed;
        self.echoed = false;
    }

    /// A status published on the device's own status topic.
    pub fn status(&mut self, s: &v1::Status) -> Seen {
        if s.instance == self.me {
            return match s.state {
                v1::State::Online => {
                    self.echoed = true;
                    self.wills.values_mut().for_each(|since| *since = true);
                    Seen::Nothing
                }
                _ => Seen::Nothing,
            };
        }
        // A box from before instances: nothing tells it apart.
        if s.instance.is_empty() {
            return Seen::Nothing;
        }
        let after_mine = self.echoed || self.echoed_before;
        if !after_mine {
            // The retained status before this process's first `online`: a predecessor's.
            return Seen::Nothing;
        }
        match s.state {
            v1::State::Online | v1::State::Stopping => {
                let newer = inspectd_contract::timefmt::parse_ms(&s.ts)
                    .is_some_and(|t| t >= self.started_ms);
                if newer {
                    Seen::Twin(s.instance.clone())
                } else {
                    Seen::Nothing
                }
            }
            v1::State::Offline => {
                if self.wills.get(&s.instance) == Some(&true) {
                    return Seen::Twin(s.instance.clone());
                }
                self.wills.insert(s.instance.clone(), false);
                if self.echoed {
                    Seen::Republish
                } else {
                    // The replay on subscribing: this connection's `online` follows anyway.
                    Seen::Nothing
                }
            }
        }
    }
}

/// The twin the watcher saw, if any; the watcher ends when this is dropped.
pub struct Watcher {
    twin: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// The other live process's instance, while one is known.
    pub fn get(&self) -> Option<String> {
        self.twin.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets the twin (it has been quiet long enough); true if one was known.
    pub fn clear(&self) -> bool {
        self.twin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .is_some()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the watcher connection on the broker of `s`.
pub fn spawn_watcher(shared: Arc<Shared>, s: &Settings, twins: Twins) -> Watcher {
    let id = format!("{}-watch-{}", s.client_id, &twins.me()[..8]);
    let opts = super::broker_options(s, id);
    let twin: Arc<Mutex<Option<String>>> = Default::default();
    let task = tokio::spawn(watch(shared, opts, twins, twin.clone()));
    Watcher { twin, task }
}

async fn watch(
    shared: Arc<Shared>,
    opts: MqttOptions,
    mut twins: Twins,
    twin: Arc<Mutex<Option<String>>>,
) {
    let topic = shared.device.topic("status");
    let mut backoff = Backoff::new(Duration::from_secs(30));
    let mut refused_logged = false;
    loop {
        let (client, mut el) = AsyncClient::new(opts.clone(), 16);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    if a.code != ConnectReturnCode::Success {
                        tracing::debug!("watcher connection refused: {:?}", a.code);
                        break;
                    }
                    backoff.reset();
                    twins.connected();
                    let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(a))) => {
                    if a.return_codes.contains(&SubscribeReasonCode::Failure) && !refused_logged {
                        refused_logged = true;
                        tracing::warn!(
                            "the broker refused reading {topic}: a second box with this device_id cannot be detected here (allow `read` on it, see deploy/mosquitto/inspectd.acl)"
                        );
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // An empty payload is a cleared retained status; anything else that does
                    // not decode is not ours to judge.
                    let Ok(st) = serde_json::from_slice::<v1::Status>(&p.payload) else {
                        continue;
                    };
                    let seen = twins.status(&st);
                    tracing::debug!(
                        "status of process {:?} ({}): {seen:?}",
                        st.instance,
                        st.state.as_str()
                    );
                    match seen {
                        Seen::Nothing => {}
                        Seen::Republish => shared.status.changed(),
                        Seen::Twin(other) => {
                            let new = twin
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .replace(other.clone())
                                .is_none();
                            if new {
                                twin_found(&shared, &client, twins.me(), &other).await;
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("watcher connection: {e}");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Says so, once per twin episode: an error line and a critical alert. The alert goes out on
/// the watcher's connection at once (the box's own is about to be kicked off, and then waits
/// [`TWIN_BACKOFF`]) and through the spool; the supervisor stores the two identical copies once.
async fn twin_found(shared: &Shared, watcher: &AsyncClient, me: &str, other: &str) {
    let msg = format!(
        "another live process (instance {other}) publishes as device {:?}; this one is {me}: two boxes share a device_id, and each connection kicks the other off the broker. Reconnecting only every {} s, verdicts kept in the spool; give each box its own device_id",
        shared.device.id,
        TWIN_BACKOFF.as_secs()
    );
    tracing::error!("{msg}");
    let alert = shared
        .device
        .new_alert("duplicate_device_id", "critical", &msg);
    let m = shared.device.alert_message(&alert);
    let _ = watcher.try_publish(m.topic.clone(), QoS::AtLeastOnce, false, m.payload.clone());
    shared.spool.push_async(m).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: i64 = 1_800_000_000_000;

    fn status(instance: &str, state: v1::State, ts_ms: i64) -> v1::Status {
        v1::Status {
            camera: "ok".into(),
            cameras: vec![],
            device: "d".into(),
            inference: "running".into(),
            instance: instance.into(),
            model: Default::default(),
            mqtt: "connected".into(),
            paused: false,
            schema: v1::StatusSchema,
            state,
            stopped: false,
            ts: inspectd_contract::timefmt::rfc3339_ms(ts_ms),
            uptime_s: 0,
            version: "0".into(),
        }
    }

    use v1::State::{Offline, Online};

    #[test]
    fn a_crashed_predecessors_online_and_will_are_not_a_twin() {
        let mut t = Twins::new("me", START);
        t.connected();
        // Replayed on subscribing: the old process's online (the broker had not noticed the
        // crash), then its will (on the takeover), then our own online.
        assert_eq!(
            t.status(&status("old", Online, START - 5000)),
            Seen::Nothing
        );
        assert_eq!(
            t.status(&status("old", Offline, START - 90_000)),
            Seen::Nothing
        );
        assert_eq!(t.status(&status("me", Online, START + 10)), Seen::Nothing);
        // Its will published late, after ours: once, and answered with our online again.
        assert_eq!(
            t.status(&status("old", Offline, START - 90_000)),
            Seen::Republish
        );
        assert_eq!(t.status(&status("me", Online, START + 20)), Seen::Nothing);
        // Later (watcher) connections see our own statuses only.
        t.connected();
        assert_eq!(t.status(&status("me", Offline, START)), Seen::Nothing);
        assert_eq!(t.status(&status("me", Online, START + 30)), Seen::Nothing);
        // An old online stamped before we started, arriving late: not proof either.
        assert_eq!(t.status(&status("old", Online, START - 1)), Seen::Nothing);
        // A status from a box without instances never is.
        assert_eq!(t.status(&status("", Online, START + 40)), Seen::Nothing);
    }

    #[test]
    fn a_twin_shows_by_its_online_after_ours_or_its_will_twice() {
        // A broker that lets both connect, or replays the twin's online on our reconnect.
        let mut t = Twins::new("me", START);
        t.connected();
        assert_eq!(t.status(&status("me", Online, START)), Seen::Nothing);
        assert_eq!(
            t.status(&status("twin", Online, START + 5)),
            Seen::Twin("twin".into())
        );
        let mut t = Twins::new("me", START);
        t.connected();
        t.status(&status("me", Online, START));
        t.connected();
        assert_eq!(
            t.status(&status("twin", Online, START + 5)),
            Seen::Twin("twin".into())
        );
        // A broker that kicks the older connection and publishes its will (Mosquitto): each of
        // our reconnects finds the twin's will retained, with our online between two of them.
        let mut t = Twins::new("me", START);
        t.connected();
        assert_eq!(t.status(&status("me", Online, START)), Seen::Nothing);
        t.connected();
        assert_eq!(t.status(&status("twin", Offline, START)), Seen::Nothing);
        assert_eq!(t.status(&status("me", Online, START + 1)), Seen::Nothing);
        t.connected();
        assert_eq!(
            t.status(&status("twin", Offline, START)),
            Seen::Twin("twin".into())
        );
    }
}
