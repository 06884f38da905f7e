//! At-least-once delivery across broker outages and daemon crashes. The daemon reaches the
//! broker through a TCP proxy the test can cut (the broker is "down" for the daemon while the
//! observer stays subscribed), so nothing depends on who reconnects first.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{broker, replay_config, Daemon};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to the broker that can be cut: while down it refuses (closes) new connections
/// and kills the open ones.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    epoch: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    async fn start(host: String, port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let epoch = Arc::new(tx);
        let (up2, epoch2) = (up.clone(), epoch.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = epoch2.subscribe();
                let target = format!("{host}:{port}");
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut c, mut s) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port: local,
            up,
            epoch,
        }
    }

    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn config_text(device: &str, port: u16, spool: &Path) -> String {
    replay_config(
        device,
        10,
        &format!("url = \"mqtt://127.0.0.1:{port}\"\nkeep_alive_s = 2"),
        spool,
        "",
    )
}

/// One delivered verdict: (seq, frame origin, ts).
type Delivery = (u64, String, String);

/// Subscribes to a device's verdicts and status; returns a handle collecting seqs and states.
struct Observer {
    seqs: Arc<std::sync::Mutex<Vec<u64>>>,
    /// Every verdict delivery, redeliveries included, in arrival order.
    deliveries: Arc<std::sync::Mutex<Vec<Delivery>>>,
    states: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Observer {
    async fn start(host: &str, port: u16, device: &str) -> Observer {
        let mut opts = MqttOptions::new(format!("obs-{}-{device}", std::process::id()), host, port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(8 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(opts, 64);
        client
            .subscribe(format!("inspect/{device}/verdict"), QoS::AtLeastOnce)
            .await
            .unwrap();
        client
            .subscribe(format!("inspect/{device}/status"), QoS::AtLeastOnce)
            .await
            .unwrap();
        let seqs = Arc::new(std::sync::Mutex::new(vec![]));
        let deliveries = Arc::new(std::sync::Mutex::new(vec![]));
        let states = Arc::new(std::sync::Mutex::new(vec![]));
        let (s2, d2, st2) = (seqs.clone(), deliveries.clone(), states.clone());
        let ready = Arc::new(tokio::sync::Notify::new());
        let r2 = ready.clone();
        tokio::spawn(async move {
            let _client = client;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => r2.notify_one(),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&p.payload).unwrap_or_default();
                        if p.topic.ends_with("/verdict") {
                            let seq = v["seq"].as_u64().unwrap();
                            s2.lock().unwrap().push(seq);
                            let text = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
                            d2.lock().unwrap().push((
                                seq,
                                text(&v["frame"]["origin"]),
                                text(&v["ts"]),
                            ));
                        } else if let Some(s) = v["state"].as_str() {
                            st2.lock().unwrap().push(s.to_string());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        ready.notified().await;
        Observer {
            seqs,
            deliveries,
            states,
        }
    }

    fn distinct(&self) -> BTreeSet<u64> {
        self.seqs.lock().unwrap().iter().copied().collect()
    }

    async fn wait_for(&self, what: &str, timeout: Duration, cond: impl Fn(&Observer) -> bool) {
        let t0 = Instant::now();
        while !cond(self) {
            assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// No gap from 1 to the largest seq seen.
fn assert_contiguous(seqs: &BTreeSet<u64>) {
    let max = *seqs.iter().max().expect("some verdicts");
    let missing: Vec<u64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "lost seqs {missing:?} of 1..={max}");
}

/// The seqs of the verdicts a (stopped) daemon left in its spool.
fn spooled_seqs(spool: &Path) -> Vec<u64> {
    let s = inspectd::spool::Spool::open(spool, 64 << 20, inspectd::spool::Fsync::Always).unwrap();
    s.after(0, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|(_, m)| m.topic.ends_with("/verdict"))
        .map(|(_, m)| {
            serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_20_second_broker_outage_loses_no_verdict() {
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (host, port) = broker();
        let proxy = Proxy::start(host.clone(), port).await;
        let obs = Observer::start(&host, port, "dur-outage").await;
        let dir = common::tmp("dur", "outage");
        let cfg = inspectd::config::Config::parse(
            &config_text("dur-outage", proxy.port, &dir.join("spool.redb")),
            "test",
            Path::new("."),
        )
        .unwrap();
        let daemon = Daemon::start(cfg);

        obs.wait_for("first verdicts", Duration::from_secs(30), |o| {
            o.distinct().len() >= 20
        })
        .await;
        proxy.down();
        let before = obs.distinct().len();
        tokio::time::sleep(Duration::from_secs(21)).await;
        let during = obs.distinct().len();
        proxy.restore();
        // The backlog (≈ 20 s × 10 fps) arrives once the daemon reconnects.
        let target = before + 150;
        obs.wait_for("the backlog", Duration::from_secs(60), |o| {
            o.distinct().len() >= target
        })
        .await;
        daemon.stop().await;
        obs.wait_for("the final status", Duration::from_secs(10), |o| {
            o.states.lock().unwrap().iter().any(|s| s == "offline")
        })
        .await;

        let seqs = obs.distinct();
        assert!(
            during <= before + 15,
            "nothing gets through while the broker is cut ({before} → {during}; a few already in flight may land)"
        );
        assert!(seqs.len() >= target, "{} verdicts", seqs.len());
        assert_contiguous(&seqs);
        assert_eq!(*seqs.iter().max().unwrap() as usize, seqs.len());
    });
}

fn spawn_daemon(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_inspectd"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("INSPECTD_LOG", "warn")
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_while_the_broker_is_down_loses_nothing_and_seq_continues() {
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (host, port) = broker();
        let proxy = Proxy::start(host.clone(), port).await;
        let obs = Observer::start(&host, port, "dur-kill").await;
        let dir = common::tmp("dur", "kill");
        let cfg = dir.join("inspectd.toml");
        std::fs::write(
            &cfg,
            config_text("dur-kill", proxy.port, &dir.join("spool.redb")),
        )
        .unwrap();

        let mut d = spawn_daemon(&cfg);
        obs.wait_for("first verdicts", Duration::from_secs(30), |o| {
            o.distinct().len() >= 10
        })
        .await;
        proxy.down();
        tokio::time::sleep(Duration::from_secs(3)).await;
        d.kill().unwrap(); // SIGKILL: no goodbye, no flush beyond what fsync already did
        d.wait().unwrap();
        let seen_before_restart = obs.distinct().len();
        // Every verdict of the first run was delivered or is in the spool: 1..=last.
        let last = obs
            .distinct()
            .into_iter()
            .chain(spooled_seqs(&dir.join("spool.redb")))
            .max()
            .unwrap();

        let mut d = spawn_daemon(&cfg);
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.restore();
        obs.wait_for("verdicts after the restart", Duration::from_secs(60), |o| {
            o.distinct().len() >= seen_before_restart + 60
        })
        .await;
        d.kill().unwrap();
        d.wait().unwrap();
        // Nothing of the first run is lost; the second continues above it, past the block of
        // seqs the first had reserved (a crash leaves a gap, never a reuse), without holes.
        let seqs = obs.distinct();
        let first: BTreeSet<u64> = seqs.iter().copied().filter(|&s| s <= last).collect();
        assert_contiguous(&first);
        assert_eq!(first.len() as u64, last);
        let second: Vec<u64> = seqs.iter().copied().filter(|&s| s > last).collect();
        assert!(!second.is_empty());
        assert!(
            second[0] <= last + inspectd::spool::SEQ_BLOCK + 1,
            "restarted at {} after {last}",
            second[0]
        );
        assert_eq!(
            second.len() as u64,
            second[second.len() - 1] - second[0] + 1,
            "holes in {second:?}"
        );
        // The LWT: a SIGKILLed daemon becomes offline once its keep-alive runs out.
        obs.wait_for("the last will", Duration::from_secs(15), |o| {
            o.states
                .lock()
                .unwrap()
                .last()
                .is_some_and(|s| s == "offline")
        })
        .await;
    });
}

#[test]
fn batch_mode_sigkill_with_the_broker_up_six_times_never_reuses_a_seq() {
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (host, port) = broker();
        let obs = Observer::start(&host, port, "dur-batch").await;
        let dir = common::tmp("dur", "batch");
        let cfg = dir.join("inspectd.toml");
        let text = config_text("dur-batch", port, &dir.join("spool.redb"))
            .replace("[spool]\n", "[spool]\nfsync = \"batch\"\n");
        assert!(text.contains("fsync = \"batch\""));
        std::fs::write(&cfg, text).unwrap();
        // Seven runs, each SIGKILLed with the broker up (messages in flight, some not yet
        // durable in the spool): six restarts.
        for run in 0..7u64 {
            let before = obs.deliveries.lock().unwrap().len();
            let mut d = spawn_daemon(&cfg);
            obs.wait_for("verdicts of this run", Duration::from_secs(60), |o| {
                o.deliveries.lock().unwrap().len() >= before + 8
            })
            .await;
            // Kill at a different point of the batch cycle each time.
            tokio::time::sleep(Duration::from_millis(40 + 67 * run)).await;
            d.kill().unwrap();
            d.wait().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let deliveries = obs.deliveries.lock().unwrap().clone();
        // A seq delivered twice is a redelivery of the same verdict, never another frame.
        let mut by_seq: std::collections::BTreeMap<u64, (String, String)> = Default::default();
        let mut reused = vec![];
        for (seq, origin, ts) in &deliveries {
            let this = (origin.clone(), ts.clone());
            match by_seq.get(seq) {
                Some(first) if *first != this => reused.push((*seq, first.clone(), this)),
                Some(_) => {}
                None => {
                    by_seq.insert(*seq, this);
                }
            }
        }
        assert!(
            reused.is_empty(),
            "seqs reused for other frames: {reused:?}"
        );
        // Seqs never go backwards across restarts: a higher seq is never an older frame.
        let mut last: Option<(u64, &str)> = None;
        for (seq, (_, ts)) in &by_seq {
            if let Some((prev, prev_ts)) = last {
                assert!(
                    prev_ts <= ts.as_str(),
                    "seq {seq} ({ts}) is older than seq {prev} ({prev_ts})"
                );
            }
            last = Some((*seq, ts));
        }
        assert!(by_seq.len() >= 7 * 8, "{} verdicts", by_seq.len());
        eprintln!(
            "batch SIGKILL x6: {} deliveries, {} distinct seqs up to {}",
            deliveries.len(),
            by_seq.len(),
            by_seq.keys().last().unwrap()
        );
    });
}

#[test]
fn a_damaged_spool_is_moved_aside_at_start_named_once_and_seq_continues() {
    let rt = inspectd_contract::client::runtime().unwrap();
    rt.block_on(async {
        let (host, port) = broker();
        let obs = Observer::start(&host, port, "dur-damaged").await;
        let dir = common::tmp("dur", "damaged");
        let spool = dir.join("spool.redb");
        let cfg = dir.join("inspectd.toml");
        std::fs::write(&cfg, config_text("dur-damaged", port, &spool)).unwrap();
        let mut d = spawn_daemon(&cfg);
        obs.wait_for("first verdicts", Duration::from_secs(60), |o| {
            o.distinct().len() >= 10
        })
        .await;
        d.kill().unwrap();
        d.wait().unwrap();
        let before = *obs.distinct().iter().max().unwrap();
        // 4 KiB of noise over the file's first page.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&spool)
            .unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::io::Write::write_all(&mut f, &noise).unwrap();
        drop(f);

        let mut d = Command::new(env!("CARGO_BIN_EXE_inspectd"))
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("INSPECTD_LOG", "warn")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = d.stderr.take().unwrap();
        let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        obs.wait_for("verdicts after the restart", Duration::from_secs(60), |o| {
            o.distinct().iter().filter(|&&s| s > before).count() >= 5
        })
        .await;
        assert!(d.try_wait().unwrap().is_none(), "the daemon exited");
        d.kill().unwrap();
        d.wait().unwrap();
        let log = log.join().unwrap();
        let moved: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("spool.redb.damaged-"))
            .collect();
        assert_eq!(moved.len(), 1, "{moved:?}");
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("damaged")).collect();
        assert_eq!(lines.len(), 1, "{log}");
        assert!(
            lines[0].contains("ERROR") && lines[0].contains(&moved[0]),
            "{log}"
        );
        // No seq of the first run comes again for another frame: the new spool continues above
        // the mark kept beside it.
        let again: Vec<u64> = obs
            .seqs
            .lock()
            .unwrap()
            .iter()
            .copied()
            .skip_while(|&s| s <= before)
            .filter(|&s| s <= before)
            .collect();
        assert!(again.is_empty(), "seqs {again:?} again after the damage");
    });
}
