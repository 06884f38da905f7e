//! An embedded MQTT broker (rumqttd) on loopback, for `inspectd demo`, `inspectd broker` and the
//! tests. Plants run a real broker (Mosquitto, EMQX, HiveMQ); this one exists so a fresh machine
//! needs nothing installed. rumqttd brings axum and hyper (its console) along, so it is the
//! cargo feature `embedded-broker` (default on for development and `cargo run -- demo`; the
//! `.deb`s leave it out: a box talks to the plant's broker, or to a local Mosquitto).

#[cfg(feature = "embedded-broker")]
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
#[cfg(feature = "embedded-broker")]
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

#[cfg(feature = "embedded-broker")]
fn config(listen: SocketAddr) -> Config {
    let mut v4 = HashMap::new();
    v4.insert(
        "v4".to_string(),
        ServerSettings {
            name: "v4".into(),
            listen,
            tls: None,
            next_connection_delay_ms: 1,
            connections: ConnectionSettings {
                connection_timeout_ms: 5000,
                max_payload_size: 4 * 1024 * 1024,
                max_inflight_count: 500,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        },
    );
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 1000,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(v4),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// A free TCP port on 127.0.0.1 (bound then released: the broker takes it next).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Starts the broker on its own thread and waits until it accepts connections.
#[cfg(feature = "embedded-broker")]
pub fn spawn(listen: SocketAddr) -> Result<()> {
    let cfg = config(listen);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(cfg);
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .context("starting the embedded broker")?;
    wait_listening(listen, Duration::from_secs(5))
}

/// Runs the broker in the foreground (for `inspectd broker`).
#[cfg(feature = "embedded-broker")]
pub fn run_foreground(listen: SocketAddr) -> Result<()> {
    let mut broker = Broker::new(config(listen));
    broker
        .start()
        .map_err(|e| anyhow::anyhow!("broker on {listen}: {e}"))
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let t0 = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if t0.elapsed() > timeout {
            anyhow::bail!("the broker on {addr} did not start within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
