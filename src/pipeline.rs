//! The CPU threads: a source thread per camera fills that camera's latest-frame slot (a stale
//! frame is replaced and counted, never queued); the one inference thread takes the cameras'
//! frames round-robin, explains each, decides the verdict and writes it to the spool, which is
//! the bounded buffer towards the publisher (it drops `ok` verdicts first when full and counts
//! every drop). CPU work stays on these OS threads, never on tokio. What they share is in
//! [`crate::shared`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use inspectd_contract::v1;

use crate::config::PublishOk;
use crate::shared::{model_id, Inspected, Shared};
use crate::source::{Frame, FrameSource, SourceError};
use crate::spool::{Message, Priority};
use crate::verdict::{decide, Kind};
use inspectd_cam::heatmap;
use inspectd_cam::model::preprocess::{fit, to_tensor};
use inspectd_cam::{ClassChoice, Explainer, Method};
use inspectd_contract::client::Backoff;

/// The `spool_full` alert for `dropped` messages dropped so far.
pub fn spool_full_alert(device: &str, topic: String, dropped: u64) -> Message {
    let alert = v1::Alert {
        dropped_total: Some(dropped),
        ..v1::Alert::new(
            device,
            inspectd_contract::timefmt::now(),
            "spool_full",
            "warning",
            &format!("spool full: {dropped} message(s) dropped so far (ok verdicts first)"),
        )
    };
    Message {
        topic,
        payload: alert.to_json(),
        retain: false,
        priority: Priority::High,
    }
}

/// Runs a source until `stop`: paces to `fps`, reports lost/recovered with backoff. A frame that
/// does not decode (empty, garbage, larger than the source's limits) is skipped and counted;
/// `max_bad_frames` of them in a row mean the camera is broken, and it is reported lost like one
/// that does not answer.
/// `cam` is the camera's index in [`Shared::cameras`]: its frames, state and alerts.
pub fn source_loop(shared: Arc<Shared>, cam: usize, mut src: Box<dyn FrameSource>, fps: f32) {
    // Config::check keeps fps at 0 or within 0.01..=1000; a bad value still must not panic here.
    let period = if fps.is_finite() && fps > 0.0 {
        Duration::try_from_secs_f64(1.0 / fps as f64).unwrap_or(Duration::from_secs(100))
    } else {
        Duration::ZERO
    };
    let max_bad = src.limits().max_bad_frames.max(1);
    let mut bad_in_a_row: u32 = 0;
    let mut backoff = Backoff::new(Duration::from_secs(2));
    let mut next_due = Instant::now();
    while !shared.stopping() {
        crate::tasks::fault_point("source");
        let now = Instant::now();
        if next_due > now {
            std::thread::sleep((next_due - now).min(Duration::from_millis(100)));
            continue;
        }
        next_due = now + period;
        let next = src.next_frame();
        shared.frames.count_dropped(cam, src.take_dropped());
        let camera = &shared.cameras[cam];
        let answering = |backoff: &mut Backoff| {
            if shared.set_camera_ok(cam, true) {
                tracing::info!("source {} recovered", src.describe());
                shared.alert(shared.camera_alert(
                    cam,
                    "camera_recovered",
                    "info",
                    &format!("source {} is back", src.describe()),
                ));
            }
            backoff.reset();
        };
        let lost = match next {
            Ok(f) => {
                bad_in_a_row = 0;
                answering(&mut backoff);
                shared.stats.lock().frames += 1;
                camera.frames.fetch_add(1, Ordering::Relaxed);
                shared.frames.put(cam, f);
                None
            }
            // A triggered camera that answers is as good as one that sends frames.
            Err(SourceError::Idle) => {
                answering(&mut backoff);
                None
            }
            Err(SourceError::BadFrame(m)) => {
                tracing::warn!("bad frame: {m}");
                shared.stats.lock().bad_frames += 1;
                camera.bad_frames.fetch_add(1, Ordering::Relaxed);
                bad_in_a_row = bad_in_a_row.saturating_add(1);
                (bad_in_a_row >= max_bad)
                    .then(|| format!("{bad_in_a_row} bad frames in a row, the last: {m}"))
            }
            Err(SourceError::Lost(m)) => Some(m),
        };
        if let Some(m) = lost {
            if shared.set_camera_ok(cam, false) {
                tracing::warn!("source lost: {m}");
                shared.alert(v1::Alert {
                    source: Some(src.describe()),
                    ..shared.camera_alert(cam, "camera_lost", "critical", &m)
                });
            }
            let d = backoff.next_delay();
            let until = Instant::now() + d;
            while Instant::now() < until && !shared.stopping() {
                std::thread::sleep(Duration::from_millis(20));
            }
            next_due = Instant::now();
        }
    }
}

/// Builds a fresh explainer for `reload_model` (argument: an expected sha256).
pub type ReloadFn = Box<dyn Fn(Option<&str>) -> anyhow::Result<Explainer> + Send>;
/// Sees every verdict on the inference thread, with the milliseconds spent writing it
/// (and its evidence) to the spool — the one stage the verdict itself cannot report.
pub type VerdictHook = Box<dyn Fn(&v1::Verdict, f64) + Send>;

/// What the inference thread needs besides the shared state.
pub struct InferenceSetup {
    pub method: Method,
    pub publish_ok: PublishOk,
    /// Builds a fresh explainer (for `reload_model`), given an expected sha256.
    pub reload: ReloadFn,
    /// Called after each verdict (the demo prints a line).
    pub on_verdict: Option<VerdictHook>,
    /// systemd's watchdog, pinged on every turn of the loop while the publisher turns too.
    pub watchdog: crate::sdnotify::Watchdog,
    /// How long a trigger waits for its frame (`plc.trigger_timeout_ms`).
    pub trigger_timeout: Duration,
    /// What fires each camera on a trigger, by camera index (a GigE camera in software
    /// trigger mode; `None` for the others).
    pub fire_trigger: Vec<Option<crate::source::FireTrigger>>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A trigger being served: its request, and when it gives up waiting for a frame.
struct Pending {
    req: crate::shared::TriggerReq,
    deadline: Instant,
}

/// The inference loop: frame → tensor → forward → CAM → verdict → spool. One thread for every
/// camera: it takes the cameras' frames round-robin (after the camera it served last, the next
/// that has a frame ready), so a camera that floods cannot starve another. Triggers are served
/// one at a time in their order, each on the first frame its camera captures after it, while
/// the continuous cameras go on.
pub fn inference_loop(shared: Arc<Shared>, mut ex: Explainer, setup: InferenceSetup) {
    use crate::shared::TriggerError;
    let mut ok_count: u64 = 0;
    let n = shared.cameras.len();
    let mut next = 0;
    let mut pending: Option<Pending> = None;
    while !shared.stopping() {
        crate::tasks::fault_point("inference");
        // Every turn of this loop (a frame, or a 200 ms wait for one) proves inference is
        // alive; the watchdog is fed only while the publisher turns as well, so a hung forward
        // pass or a dead publisher stops the pings and systemd restarts us.
        shared.health.inference_beat();
        if shared.health.publisher_running() {
            setup.watchdog.ping();
        }
        // A pending reload_model runs between frames.
        if let Some((sha, reply)) = shared.inbox.take_reload() {
            match (setup.reload)(sha.as_deref()) {
                Ok(new) => {
                    let id = model_id(&new.model);
                    shared
                        .status
                        .set_model(id.clone(), new.model.variant.clone());
                    ex = new;
                    let short: String = id.sha256.chars().take(12).collect();
                    let _ = reply.send(Ok(format!("loaded {} {} ({short})", id.name, id.version)));
                }
                Err(e) => {
                    let _ = reply.send(Err(format!("{e:#}")));
                }
            }
        }
        if pending.is_none() {
            pending = shared.inbox.next_trigger().and_then(|req| {
                // Refused if the box is paused or the camera lost by now.
                let refused = if shared.status.paused() {
                    Some(TriggerError::Paused)
                } else if !shared.cameras[req.camera].ok() {
                    Some(TriggerError::CameraLost)
                } else {
                    None
                };
                if let Some(e) = refused {
                    req.reply.answer(Err(e));
                    return None;
                }
                // The part is in front of the camera now: use a frame captured after it.
                shared.frames.clear(req.camera);
                if let Some(Some(fire)) = setup.fire_trigger.get(req.camera) {
                    fire();
                }
                let deadline = req.at + setup.trigger_timeout;
                Some(Pending { req, deadline })
            });
        }
        if let Some(p) = pending.take() {
            pending = still_waiting(&shared, &setup, p);
        }
        let want = pending.as_ref().map(|p| p.req.camera);
        let wait = pending.as_ref().map_or(Duration::from_millis(200), |p| {
            p.deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200))
        });
        let taken = shared.frames.take_next(
            next,
            |i| !shared.cameras[i].triggered || want == Some(i),
            wait,
        );
        let Some((cam, frame)) = taken else {
            continue;
        };
        next = (cam + 1) % n;
        if want == Some(cam) {
            if let Some(p) = pending.take_if(|p| frame.captured >= p.req.at) {
                let crate::shared::TriggerReq { part_id, reply, .. } = p.req;
                let r = guarded(
                    &shared,
                    &ex,
                    &setup,
                    cam,
                    frame,
                    Some(part_id),
                    &mut ok_count,
                );
                reply.answer(r.map_err(TriggerError::Model));
            }
            continue;
        }
        if shared.status.paused() {
            continue;
        }
        let _ = guarded(&shared, &ex, &setup, cam, frame, None, &mut ok_count);
    }
}

/// A trigger still waiting for its frame, or `None` once it was answered: past its deadline
/// (`trigger_timeout` alert), the daemon stopping, or its camera lost meanwhile (no frame
/// will come; say so rather than time out).
fn still_waiting(shared: &Shared, setup: &InferenceSetup, p: Pending) -> Option<Pending> {
    use crate::shared::TriggerError;
    let cam = p.req.camera;
    if Instant::now() >= p.deadline {
        let ms = setup.trigger_timeout.as_millis() as u64;
        let part_id = &p.req.part_id;
        shared.alert(v1::Alert {
            part_id: Some(Some(part_id.clone())),
            ..shared.camera_alert(
                cam,
                "trigger_timeout",
                "warning",
                &format!("no frame within {ms} ms of the trigger for part {part_id}"),
            )
        });
        p.req.reply.answer(Err(TriggerError::Timeout(ms)));
        return None;
    }
    if shared.stopping() {
        p.req.reply.answer(Err(TriggerError::Stopping));
        return None;
    }
    if !shared.cameras[cam].ok() {
        p.req.reply.answer(Err(TriggerError::CameraLost));
        return None;
    }
    Some(p)
}

/// One frame, with a panic in it (a tensor shape, a head op) caught: it becomes a
/// `model_error` alert and the loop goes on with the next frame.
fn guarded(
    shared: &Shared,
    ex: &Explainer,
    setup: &InferenceSetup,
    cam: usize,
    frame: Frame,
    part_id: Option<String>,
    ok_count: &mut u64,
) -> Result<Inspected, String> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        process(shared, ex, setup, cam, frame, part_id, ok_count)
    }));
    match r {
        Ok(r) => r,
        Err(p) => {
            let e = anyhow::anyhow!("panicked: {}", crate::tasks::panic_text(&*p));
            Err(model_error(shared, cam, "inference on a frame", &e))
        }
    }
}

/// Counts and alerts a failure of the model on one frame (the loop goes on with the next);
/// returns what the alert says.
fn model_error(shared: &Shared, cam: usize, stage: &str, e: &anyhow::Error) -> String {
    let text = format!("{stage} failed: {e:#}");
    tracing::error!("{text}");
    shared.stats.lock().errors += 1;
    shared.alert(shared.camera_alert(cam, "model_error", "critical", &text));
    text
}

fn process(
    shared: &Shared,
    ex: &Explainer,
    setup: &InferenceSetup,
    cam: usize,
    frame: Frame,
    part_id: Option<String>,
    ok_count: &mut u64,
) -> Result<Inspected, String> {
    let camera = &shared.cameras[cam];
    let queued = frame.captured.elapsed();
    let t0 = Instant::now();
    let spec = &ex.model.input;
    let (fitted, crop) = fit(&frame.image, spec);
    let input = to_tensor(&fitted, spec);
    let t_pre = t0.elapsed();
    let fwd = match ex.forward(&input) {
        Ok(f) => f,
        Err(e) => return Err(model_error(shared, cam, "forward pass", &e)),
    };
    let t1 = Instant::now();
    // Decide which class the verdict is about first, then explain that class.
    // The box's rules, with this camera's own ROI and ignore zones.
    let rules = camera.rules(shared.inbox.rules());
    let labels = &ex.model.output.labels;
    let ok_idx = ex
        .model
        .output
        .ok_label
        .as_ref()
        .and_then(|l| labels.iter().position(|x| x == l));
    let (class, _, _) = crate::verdict::target(&rules, &ex.scores(&fwd.logits), ok_idx);
    let e = match ex.explain_forward(&input, &fwd, &ClassChoice::Index(class), setup.method) {
        Ok(e) => e,
        Err(err) => return Err(model_error(shared, cam, "CAM", &err)),
    };
    let t_cam = t1.elapsed();
    let t2 = Instant::now();
    let (h, w) = (e.map.shape()[0], e.map.shape()[1]);
    let d = decide(&rules, &e.scores, labels, ok_idx, e.map.data(), h, w);
    let png = heatmap::map_png(&e.map).unwrap_or_default();
    let evidence = if d.kind != Kind::Ok {
        let zones = heatmap::Zones {
            roi: rules.roi.as_ref().map(|p| p.0.as_slice()),
            ignore: rules
                .ignore_zones
                .iter()
                .map(|z| z.polygon.0.as_slice())
                .collect(),
        };
        heatmap::evidence_jpeg(&frame.image, &e.map, crop, &zones).ok()
    } else {
        None
    };
    let t_verdict = t2.elapsed();
    let kind_ix = match d.kind {
        Kind::Ok => 0,
        Kind::Defect => 1,
        Kind::Suspect => 2,
    };
    // A triggered verdict is always published: the part it names must have its record
    // (`publish_ok` thins out the ok verdicts of continuous inspection).
    let publish = match (d.kind, setup.publish_ok) {
        _ if part_id.is_some() => true,
        (Kind::Ok, PublishOk::None) => false,
        (Kind::Ok, PublishOk::EveryNth(n)) => {
            *ok_count += 1;
            (*ok_count - 1).is_multiple_of(n)
        }
        _ => true,
    };
    let peak = e.map.argmax();
    let model = shared.status.model();
    // Decode → verdict ready to publish (queue wait in the slot is reported separately).
    let total = frame.decode_ms + ms(t0.elapsed());
    let scores = labels
        .iter()
        .cloned()
        .zip(e.scores.iter().map(|&s| s as f64))
        .collect();
    let reasons: Vec<v1::Reason> = d.reasons.iter().map(v1::Reason::from).collect();
    // The verdict with seq 0: the spool's owner puts the real one in when it stores it.
    let mut v = v1::Verdict {
        camera: camera.name.clone(),
        cam: v1::Cam {
            class: e.class,
            h,
            layer: ex.layer.name.clone(),
            method: e.method.name().into(),
            peak: [peak % w, peak / w],
            png: Some(base64::engine::general_purpose::STANDARD.encode(&png)),
            raw_max: e.raw_max as f64,
            roi_fraction: d.roi_fraction as f64,
            w,
        },
        confidence: d.confidence as f64,
        device: shared.device.id.clone(),
        frame: v1::FrameInfo {
            height: frame.image.height(),
            origin: frame.origin.clone(),
            width: frame.image.width(),
        },
        label: d.label.clone(),
        latency_ms: Some(v1::Latency {
            cam: ms(t_cam),
            decode: frame.decode_ms,
            forward: fwd.ms,
            preprocess: ms(t_pre),
            queue: ms(queued),
            total,
            verdict: ms(t_verdict),
        }),
        model,
        p_defect: Some(d.p_defect as f64),
        p_label: Some(d.p_label as f64),
        part_id: part_id.clone(),
        reasons,
        schema: v1::VerdictSchema,
        scores,
        seq: 0,
        ts: inspectd_contract::timefmt::rfc3339(frame.wall),
        verdict: d.kind.into(),
    };
    let t_spool = Instant::now();
    let mut seq = None;
    if publish {
        let priority = if d.kind == Kind::Ok {
            Priority::Low
        } else {
            Priority::High
        };
        let topic = shared.device.topic("verdict");
        let evidence_topic = shared.device.topic("evidence/");
        let mut payload_v = v.clone();
        let res = shared.spool.push_seq(Box::new(move |seq| {
            payload_v.seq = seq;
            let verdict = Message {
                topic,
                payload: payload_v.to_json(),
                retain: false,
                priority,
            };
            // The evidence picture goes in the same transaction, right after its verdict.
            let evidence = evidence
                .map(|jpg| Message {
                    topic: format!("{evidence_topic}{seq}"),
                    payload: jpg,
                    retain: false,
                    priority: Priority::Low,
                })
                .into_iter()
                .collect();
            (verdict, evidence)
        }));
        match res {
            Ok(s) => {
                v.seq = s;
                seq = Some(s);
            }
            Err(e) => {
                tracing::error!("verdict not stored: {e}");
                shared.stats.lock().errors += 1;
            }
        }
        if d.kind == Kind::Suspect {
            let texts: Vec<String> = d.reasons.iter().map(|r| r.to_string()).collect();
            shared.alert(v1::Alert {
                confidence: Some(v.confidence),
                label: Some(v.label.clone()),
                part_id: Some(part_id),
                reasons: Some(v.reasons.clone()),
                seq: Some(seq),
                ..shared.camera_alert(
                    cam,
                    "suspect",
                    "warning",
                    &format!(
                        "suspect {} ({:.2}): {}",
                        d.label,
                        d.confidence,
                        texts.join("; ")
                    ),
                )
            });
        }
    }
    let spool_ms = ms(t_spool.elapsed());
    {
        let mut st = shared.stats.lock();
        st.verdicts[kind_ix] += 1;
        camera.verdicts[kind_ix].fetch_add(1, Ordering::Relaxed);
        if !publish {
            st.unpublished_ok += 1;
        }
        for (k, v) in [
            ("decode", frame.decode_ms),
            ("preprocess", ms(t_pre)),
            ("forward", fwd.ms),
            ("cam", ms(t_cam)),
            ("verdict", ms(t_verdict)),
            ("spool", spool_ms),
            ("total", total),
        ] {
            st.latency.entry(k).or_default().push(v);
        }
    }
    shared.health.verdict(ms(t0.elapsed()));
    if let Some(cb) = &setup.on_verdict {
        cb(&v, spool_ms);
    }
    Ok(Inspected {
        kind: d.kind,
        class: d.class,
        label: d.label,
        p_defect: d.p_defect,
        seq: v.seq,
    })
}
