//! `inspectd-supervisor loadgen`: publishes synthetic verdicts (the real schema, with a real PNG map) from
//! several devices as fast as the broker takes them, then waits until the supervisor has stored
//! every one and reports the ingest rate. The supervisor benchmark of the operations guide.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use base64::Engine as _;
use clap::Args;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use inspectd_cam::error::bad_input;
use inspectd_contract::v1;

#[derive(Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Broker URL (mqtt://host:port).
    #[arg(long)]
    pub broker: String,
    /// The supervisor's web address: wait until it stored everything and report its rate.
    #[arg(long)]
    pub supervisor: Option<String>,
    /// Verdicts to publish in all.
    #[arg(long, default_value_t = 20_000)]
    pub verdicts: u64,
    /// Devices they come from.
    #[arg(long, default_value_t = 8)]
    pub devices: u64,
    /// Publish at most this many messages per second (0: as fast as the broker takes them).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Publish every verdict twice (a redelivery storm): the supervisor must store each once.
    #[arg(long)]
    pub duplicate: bool,
    #[arg(long, default_value = "inspect")]
    pub prefix: String,
}

/// `GET path` on `addr` (host:port); the body parsed as JSON.
pub fn get_json(addr: &str, path: &str) -> Result<Value> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("GET {path}: no HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(anyhow!("GET {path}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(serde_json::from_str(body)?)
}

fn stored(addr: &str) -> Result<i64> {
    get_json(addr, "/api/stats")?["rows"]["verdicts"]
        .as_i64()
        .ok_or_else(|| anyhow!("/api/stats has no rows.verdicts"))
}

/// A verdict payload like the daemon's, with a 16×16 map.
fn payload(device: &str, seq: u64, map_b64: &str) -> Vec<u8> {
    let kind = match seq % 10 {
        0 => v1::Kind::Defect,
        1 => v1::Kind::Suspect,
        _ => v1::Kind::Ok,
    };
    let reasons = if kind == v1::Kind::Suspect {
        vec![v1::Reason {
            code: "marginal".into(),
            text: "confidence 0.55 is in the suspect band [0.5, 0.7]".into(),
            ..v1::Reason::default()
        }]
    } else {
        Vec::new()
    };
    let scores = [
        ("ok", 0.03),
        ("scratch", 0.97),
        ("dent", 0.0),
        ("stain", 0.0),
        ("crack", 0.0),
    ];
    v1::Verdict {
        camera: None,
        cam: v1::Cam {
            class: 1,
            h: 16,
            layer: "conv6".into(),
            method: "gradcam".into(),
            peak: [5, 9],
            png: Some(map_b64.into()),
            raw_max: 1.2,
            roi_fraction: 1.0,
            w: 16,
        },
        confidence: if kind == v1::Kind::Suspect {
            0.55
        } else {
            0.97
        },
        device: device.into(),
        frame: v1::FrameInfo {
            height: 128,
            origin: "loadgen".into(),
            width: 128,
        },
        label: if kind == v1::Kind::Ok {
            "ok"
        } else {
            "scratch"
        }
        .into(),
        latency_ms: Some(v1::Latency {
            cam: 0.4,
            decode: 0.5,
            forward: 5.4,
            preprocess: 0.1,
            queue: 0.1,
            total: 6.7,
            verdict: 0.2,
        }),
        model: v1::ModelId {
            name: "surface-defect".into(),
            sha256: "0".repeat(64),
            version: "3".into(),
        },
        p_defect: Some(0.97),
        p_label: Some(0.97),
        part_id: Some(format!("LOAD-{seq}")),
        reasons,
        schema: v1::VerdictSchema,
        scores: scores.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
        seq,
        ts: inspectd_contract::timefmt::now(),
        verdict: kind,
    }
    .to_json()
}

pub fn run(a: LoadgenArgs) -> Result<()> {
    if a.verdicts == 0 || a.devices == 0 {
        return Err(bad_input("--verdicts and --devices must be at least 1"));
    }
    let cfg = inspectd_contract::client::BrokerConfig {
        url: a.broker.clone(),
        client_id: Some(format!("inspectd-loadgen-{}", std::process::id())),
        keep_alive_s: 30,
        ..Default::default()
    };
    let s = inspectd_contract::client::settings(&cfg, "inspectd-loadgen")
        .map_err(|e| bad_input(format!("--broker: {e:#}")))?;
    let sup = a.supervisor.as_deref().map(|u| {
        u.trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    });
    let before = match &sup {
        Some(addr) => {
            Some(stored(addr).map_err(|e| bad_input(format!("--supervisor {addr}: {e:#}")))?)
        }
        None => None,
    };
    let mut map = inspectd_cam::tensor::Tensor::zeros(&[16, 16]);
    for (i, v) in map.data_mut().iter_mut().enumerate() {
        let (y, x) = ((i / 16) as f32 - 9.0, (i % 16) as f32 - 5.0);
        *v = (-(x * x + y * y) / 8.0).exp();
    }
    let map_b64 =
        base64::engine::general_purpose::STANDARD.encode(inspectd_cam::heatmap::map_png(&map)?);
    let copies = if a.duplicate { 2 } else { 1 };
    let total = a.verdicts * copies;
    // Each run's devices are new ones (`load-<run>-<k>`) counting from seq 1, as boxes do: with
    // the same names, a second run's seqs had to jump above the first's, and the supervisor
    // rightly counted the jump as billions of missing verdicts.
    let run = format!(
        "{:x}",
        inspectd_contract::timefmt::now_ms() / 1000 % 0x10000
    );
    let base = 1;
    let rt = inspectd_contract::client::runtime()?;
    let (t0, published) = rt.block_on(async {
        let mut opts = MqttOptions::new(
            cfg.client_id.clone().unwrap_or_default(),
            s.host.clone(),
            s.port,
        );
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(200);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(opts, 1024);
        let t0 = Instant::now();
        let producer = {
            let client = client.clone();
            let (prefix, devices, n, rate) = (a.prefix.clone(), a.devices, a.verdicts, a.rate);
            let run = run.clone();
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                for i in 0..n {
                    if rate > 0 && i % 50 == 0 {
                        // Paced in steps of 50 messages.
                        let due =
                            start + Duration::from_secs_f64((i * copies) as f64 / rate as f64);
                        tokio::time::sleep_until(due).await;
                    }
                    let device = format!("load-{run}-{}", i % devices);
                    let p = payload(&device, base + i / devices, &map_b64);
                    for _ in 0..copies {
                        client
                            .publish(
                                format!("{prefix}/{device}/verdict"),
                                QoS::AtLeastOnce,
                                false,
                                p.clone(),
                            )
                            .await?;
                    }
                }
                anyhow::Ok(())
            })
        };
        let mut acked = 0u64;
        while acked < total {
            match tokio::time::timeout(Duration::from_secs(30), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(anyhow!("broker: {e}")),
                Err(_) => {
                    return Err(anyhow!(
                        "no progress for 30 s ({acked}/{total} acknowledged)"
                    ))
                }
            }
        }
        producer.await??;
        let published = t0.elapsed();
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(200), el.poll()).await;
        Ok::<_, anyhow::Error>((t0, published))
    })?;
    println!(
        "published {total} verdict messages ({} distinct, {} devices) in {:.2} s: {:.0} msg/s",
        a.verdicts,
        a.devices,
        published.as_secs_f64(),
        total as f64 / published.as_secs_f64()
    );
    if let (Some(addr), Some(before)) = (sup, before) {
        let want = before + a.verdicts as i64;
        let mut last = (Instant::now(), before);
        loop {
            let n = stored(&addr)?;
            if n >= want {
                let t = t0.elapsed().as_secs_f64();
                println!(
                    "supervisor stored {} new verdicts in {t:.2} s from the first publish: {:.0} verdicts/s{}",
                    n - before,
                    (n - before) as f64 / t,
                    if a.duplicate { format!(" ({} duplicates dropped)", total - a.verdicts) } else { String::new() }
                );
                if n > want {
                    return Err(anyhow!(
                        "stored {} verdicts, {} more than sent (another publisher?)",
                        n - before,
                        n - want
                    ));
                }
                return Ok(());
            }
            if n != last.1 {
                last = (Instant::now(), n);
            } else if last.0.elapsed() > Duration::from_secs(30) {
                return Err(anyhow!(
                    "the supervisor stalled at {}/{} new verdicts",
                    n - before,
                    a.verdicts
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{classify, Incoming};

    #[test]
    fn synthetic_verdicts_pass_the_supervisors_contract_checks() {
        let png = inspectd_cam::heatmap::map_png(&inspectd_cam::tensor::Tensor::zeros(&[16, 16]))
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(png);
        for seq in [10, 11, 12] {
            let p = payload("load-0", seq, &b64);
            match classify("inspect", "inspect/load-0/verdict", &p) {
                Ok(Some(Incoming::Verdict(v))) => assert_eq!(v.seq, seq as i64),
                other => panic!("seq {seq}: {other:?}"),
            }
        }
    }
}
