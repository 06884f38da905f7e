//! `inspectd run`: loads the model, starts the source and inference threads, the MQTT publisher
//! and the local HTTP endpoint, and stops them in order when `shutdown` resolves: source first,
//! then inference (finishing its frame), then the spool is drained to the broker within the
//! deadline and flushed to disk.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::{Config, SourceConfig, Trigger};
use crate::pipeline::{self, InferenceSetup};
use crate::shared::{model_id, Camera, Device, FrameBoard, Inbox, Shared, StatsCell, Status};
use crate::source::{FrameSource, HttpSnapshot, Replay};
use crate::spool::Spool;
use crate::tasks::Supervisor;
use inspectd_cam::error::bad_input;
use inspectd_cam::model::{LoadOptions, Model};
use inspectd_cam::{Explainer, ExplainerOptions};

/// Sees the explainer the daemon is about to run (its model variant), once.
pub(crate) type LoadedHook = Box<dyn FnOnce(&Explainer) + Send>;

/// Optional hooks for embedding the daemon (the demo and tests use them).
#[derive(Default)]
pub struct Hooks {
    /// Called on the inference thread after each verdict with its JSON.
    pub on_verdict: Option<crate::pipeline::VerdictHook>,
    /// Tests: while set, the publisher hangs (awaiting, as on a request that is never answered).
    pub hold_publisher: Option<Arc<AtomicBool>>,
    /// Called once the model is loaded, with the explainer that will run.
    pub on_loaded: Option<LoadedHook>,
    /// Folder of the model-variant timing cache (default: the spool's folder).
    pub state_dir: Option<std::path::PathBuf>,
}

/// Loads the model named by the config and checks its sha256. With `[variants]` in its sidecar
/// the variant `model.variant` names runs, or the fastest on this CPU (timing cached in the
/// spool's folder).
pub fn load_explainer(cfg: &Config, expect_sha: Option<&str>) -> Result<Explainer> {
    load_explainer_in(cfg, expect_sha, cfg.spool.path.parent())
}

/// [`load_explainer`] with the variant timing cache in `state_dir`.
pub fn load_explainer_in(
    cfg: &Config,
    expect_sha: Option<&str>,
    state_dir: Option<&std::path::Path>,
) -> Result<Explainer> {
    let opts = LoadOptions {
        sidecar: cfg.model.sidecar.clone(),
        ..Default::default()
    };
    if let Some(want) = expect_sha.or(cfg.model.sha256.as_deref()) {
        // The hash pins the configured file (the sidecar beside it names any variants).
        let model = Model::load(&cfg.model.path, &opts)?;
        if !model.sha256.eq_ignore_ascii_case(want) {
            return Err(bad_input(format!(
                "model {}: sha256 {} does not match model.sha256 {want}",
                cfg.model.path.display(),
                model.sha256
            )));
        }
    }
    let method = cfg.cam.method;
    let layer = cfg.cam.layer.name().map(str::to_string);
    inspectd_cam::model::variant::load_explainer(
        &cfg.model.path,
        &opts,
        cfg.model.variant,
        state_dir,
        &ExplainerOptions {
            layer,
            topk: None,
            gradients: method.needs_gradients(),
        },
    )
}

/// Everything `check-config` verifies: the file, the model (loaded and planned), the source.
pub fn check(cfg: &Config) -> Result<Explainer> {
    let ex = load_explainer(cfg, None)?;
    cfg.mqtt.settings(&cfg.device_id)?;
    make_sources(cfg)?;
    Ok(ex)
}

/// Every camera's source and its frame rate, in config order.
fn make_sources(cfg: &Config) -> Result<Vec<(Box<dyn FrameSource>, f32)>> {
    (0..cfg.camera_list().len())
        .map(|i| make_source(cfg.camera_list()[i].source, &|k| cfg.source_key(i, k)))
        .collect()
}

/// One camera's source; `key` names its keys in errors (`source.url`, `source[1].url`).
fn make_source(
    source: &SourceConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<(Box<dyn FrameSource>, f32)> {
    let limits = source.limits();
    Ok(match source {
        SourceConfig::Replay { path, fps, looping, .. } => (Box::new(Replay::new(path.clone(), *looping).with_limits(limits)), *fps),
        SourceConfig::Http { url, fps, timeout_ms, .. } => (
            Box::new(
                HttpSnapshot::new(url, Duration::from_millis(*timeout_ms))
                    .map_err(|e| bad_input(format!("{}: {e}", key("url"))))?
                    .with_limits(limits),
            ),
            *fps,
        ),
        #[cfg(feature = "camera")]
        SourceConfig::Camera { device, width, height, fps, format, .. } => {
            let format = match format.as_deref() {
                None => crate::camera::PixelFormat::Mjpeg,
                Some(f) => f.parse().map_err(|e| bad_input(format!("{}: {e}", key("format"))))?,
            };
            let (w, h) = (width.unwrap_or(640), height.unwrap_or(480));
            (Box::new(crate::camera::V4l2Camera::new(device, w, h, *fps, format).with_limits(limits)), *fps)
        }
        #[cfg(not(feature = "camera"))]
        SourceConfig::Camera { device, .. } => {
            return Err(bad_input(format!(
                "source camera {device:?}: this build has no V4L2 support (cargo feature `camera`, which needs libclang-dev); use kind = \"http\" or \"replay\""
            )))
        }
        SourceConfig::Gige { camera_id, exposure_us, gain_db, pixel_format, trigger_mode, timeout_ms, fps, .. } => {
            let s = crate::gige::GigeSettings {
                camera_id: camera_id.clone(),
                exposure_us: *exposure_us,
                gain_db: *gain_db,
                pixel_format: *pixel_format,
                trigger_mode: *trigger_mode,
                timeout: Duration::from_millis(*timeout_ms),
                limits,
                key_prefix: key(""),
            };
            // A triggered camera sends a frame when fired: no pacing but its own.
            let fps = if *trigger_mode == crate::gige::TriggerMode::FreeRun { *fps } else { 0.0 };
            (gige_source(s)?, fps)
        }
        SourceConfig::Rtsp { url, password_file, transport, fps, timeout_ms, .. } => {
            let timeout = Duration::from_millis(*timeout_ms);
            let file = password_file.as_deref();
            let s = crate::rtsp::RtspSettings::new(url, file, *transport, timeout, limits);
            (rtsp_source(s.map_err(bad_input)?, &key("url"))?, *fps)
        }
    })
}

/// An RTSP camera, once its DESCRIBE shows a stream we decode. A camera that does not answer
/// yet is not an error here (it is reported lost and retried); one that answers with only
/// codecs we cannot decode is a setting to fix, refused like a bad key.
#[cfg(feature = "rtsp")]
fn rtsp_source(settings: crate::rtsp::RtspSettings, key: &str) -> Result<Box<dyn FrameSource>> {
    use crate::rtsp::client::{probe, Fault, RtspCamera};
    match probe(&settings) {
        Ok(codec) => tracing::info!("camera {}: offers {codec:?}", settings.url.url),
        Err(Fault::Unsupported(m)) => {
            return Err(bad_input(format!("{key} {}: {m}", settings.url.url)))
        }
        Err(Fault::Lost(m)) => tracing::warn!("camera {} not reachable yet: {m}", settings.url.url),
    }
    Ok(Box::new(RtspCamera::new(settings)))
}

#[cfg(not(feature = "rtsp"))]
fn rtsp_source(settings: crate::rtsp::RtspSettings, _key: &str) -> Result<Box<dyn FrameSource>> {
    Err(bad_input(format!(
        "source.kind = \"rtsp\" ({}): this build has no RTSP support (cargo feature `rtsp`)",
        settings.url.url
    )))
}

/// A GigE camera, once it has taken the settings. One that is not there yet is retried like a
/// lost camera; one that lacks a setting (a pixel format, a trigger line, gain in dB) is a
/// setting to fix, refused like a bad key.
#[cfg(feature = "gige")]
fn gige_source(settings: crate::gige::GigeSettings) -> Result<Box<dyn FrameSource>> {
    use crate::gige::camera::{probe, Fault, GigeCamera};
    match probe(&settings) {
        Ok(what) => tracing::info!("camera {}: {what}", settings.shown()),
        Err(Fault::Unsupported(m)) => return Err(bad_input(m)),
        Err(Fault::Lost(m)) => tracing::warn!("{m} (retrying)"),
    }
    Ok(Box::new(GigeCamera::new(settings)))
}

#[cfg(not(feature = "gige"))]
fn gige_source(settings: crate::gige::GigeSettings) -> Result<Box<dyn FrameSource>> {
    Err(bad_input(format!(
        "source.kind = \"gige\" ({}): this build has no GigE Vision support (cargo feature `gige`, which needs libaravis-dev)",
        settings.shown()
    )))
}

/// Runs the daemon until `shutdown` resolves. Every thread and task it starts is supervised:
/// if one panics or ends on its own, the daemon stops within a short deadline and returns an
/// error naming it, so the process exits non-zero and systemd restarts it.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>, hooks: Hooks) -> Result<()> {
    let state_dir = hooks
        .state_dir
        .clone()
        .or_else(|| cfg.spool.path.parent().map(|p| p.to_path_buf()));
    let ex = load_explainer_in(&cfg, None, state_dir.as_deref())?;
    if let Some(f) = hooks.on_loaded {
        f(&ex);
    }
    let settings = cfg.mqtt.settings(&cfg.device_id)?;
    let sources = make_sources(&cfg)?;
    let spool = Spool::open(&cfg.spool.path, cfg.spool.max_bytes, cfg.spool.fsync)
        .map_err(|e| bad_input(format!("spool.path: {e}")))?;
    if let Some((to, why)) = spool.recovered_from() {
        tracing::error!(
            "spool {} was damaged ({why}): moved to {}, started a new spool (seq continues)",
            cfg.spool.path.display(),
            to.display()
        );
    }
    let depth = spool.len();
    let source_name: Vec<String> = sources.iter().map(|(s, _)| s.describe()).collect();
    let source_name = source_name.join(", ");
    let sha_short: String = ex.model.sha256.chars().take(12).collect();
    tracing::info!(
        "inspectd {} on {}: model {} {} (sha256 {sha_short}), variant {}, layer {}, source {source_name}, broker {}:{}{}, {depth} message(s) waiting in the spool",
        env!("CARGO_PKG_VERSION"),
        cfg.device_id,
        ex.model.name,
        ex.model.version,
        ex.model
            .variant
            .as_ref()
            .map_or("none (no [variants])".into(), |v| v.describe()),
        ex.layer.name,
        settings.host,
        settings.port,
        if settings.tls.is_some() { " (TLS)" } else { "" },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut sup = Supervisor::new(stop.clone());
    let (device, alert_topic) = (
        cfg.device_id.clone(),
        format!("{}/{}/alert", cfg.mqtt.prefix, cfg.device_id),
    );
    let (spool, spool_body) = crate::spooler::start(
        spool,
        Box::new(move |n| pipeline::spool_full_alert(&device, alert_topic.clone(), n)),
    );
    let spool_thread = sup
        .thread("spool", spool_body)
        .context("starting the spool thread")?;
    let cameras = cfg
        .camera_list()
        .iter()
        .zip(&sources)
        .map(|(c, (src, _))| {
            let triggered = c.source.trigger() == Trigger::Triggered;
            let mut cam = Camera::new(c.name.map(str::to_string), triggered, src.describe());
            cam.roi = c.roi.cloned();
            cam.ignore_zones = c.ignore_zones.map(<[_]>::to_vec);
            cam
        })
        .collect::<Vec<_>>();
    let any_triggered = cameras.iter().any(|c| c.triggered);
    let shared = Arc::new(Shared {
        device: Device {
            id: cfg.device_id.clone(),
            prefix: cfg.mqtt.prefix.clone(),
        },
        status: Status::new(model_id(&ex.model), ex.model.variant.clone()),
        stats: StatsCell::default(),
        spool,
        health: Default::default(),
        frames: FrameBoard::new(cameras.len()),
        cameras,
        trigger_camera: cfg.plc_camera(),
        stop: stop.clone(),
        inbox: Inbox::new(any_triggered, cfg.verdict.clone()),
    });

    // The OPC UA variables follow every verdict: the board hears them through the hook.
    #[cfg(feature = "opcua")]
    let opcua_board = cfg
        .plc
        .opcua_listen
        .map(|_| Arc::new(crate::plc::opcua::Board::default()));
    #[cfg(feature = "opcua")]
    let on_verdict: Option<pipeline::VerdictHook> = match (&opcua_board, hooks.on_verdict) {
        (Some(board), next) => {
            let board = board.clone();
            Some(Box::new(move |v, spool_ms| {
                board.verdict(v);
                if let Some(next) = &next {
                    next(v, spool_ms);
                }
            }))
        }
        (None, next) => next,
    };
    #[cfg(not(feature = "opcua"))]
    let on_verdict = hooks.on_verdict;
    let publish_ok = cfg.mqtt.publish_ok;
    let method = cfg.cam.method;
    let reload_cfg = cfg.clone();
    let setup = InferenceSetup {
        method,
        publish_ok,
        // A reload chooses the variant again (the cache key has the files' hashes).
        reload: Box::new(move |sha| load_explainer_in(&reload_cfg, sha, state_dir.as_deref())),
        on_verdict,
        watchdog: crate::sdnotify::Watchdog::from_env(),
        trigger_timeout: Duration::from_millis(cfg.plc.trigger_timeout_ms),
        fire_trigger: sources.iter().map(|(s, _)| s.trigger_hook()).collect(),
    };
    let sh = shared.clone();
    let inference = sup
        .thread("inference", move || pipeline::inference_loop(sh, ex, setup))
        .context("starting the inference thread")?;
    let mut source = vec![];
    for (i, (src, fps)) in sources.into_iter().enumerate() {
        let sh = shared.clone();
        // One thread per camera; the first keeps the name `source` (logs, fault injection).
        let name: &'static str = match (i, &shared.cameras[i].name) {
            (0, _) | (_, None) => "source",
            (_, Some(n)) => Box::leak(format!("source {n}").into_boxed_str()),
        };
        source.push(
            sup.thread(name, move || pipeline::source_loop(sh, i, src, fps))
                .with_context(|| format!("starting the source thread of camera {i}"))?,
        );
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let publisher = sup.task(
        "publisher",
        crate::mqtt::run(
            shared.clone(),
            settings,
            Duration::from_secs(cfg.stats.interval_s),
            stop_rx.clone(),
            Duration::from_secs(5),
            hooks.hold_publisher,
        ),
    );
    let http = if let Some(addr) = cfg.http.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| bad_input(format!("http.listen {addr}: cannot bind: {e}")))?;
        Some(sup.task(
            "http",
            crate::http::serve(listener, shared.clone(), stop_rx.clone()),
        ))
    } else {
        None
    };
    let plc = if let Some(addr) = cfg.plc.modbus_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| {
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < 1024 {
                    " (a port below 1024 needs CAP_NET_BIND_SERVICE: see README, \"On the line\", or use 1502)"
                } else {
                    ""
                };
                bad_input(format!("plc.modbus_listen {addr}: cannot bind: {e}{hint}"))
            })?;
        tracing::info!("Modbus TCP server on {addr}, unit id {}", cfg.plc.unit_id);
        Some(sup.task(
            "plc",
            crate::plc::serve(listener, cfg.plc.unit_id, shared.clone(), stop_rx.clone()),
        ))
    } else {
        None
    };

    #[cfg(feature = "opcua")]
    let opcua = match (cfg.plc.opcua_listen, opcua_board) {
        (Some(listen), Some(board)) => {
            let users = match &cfg.plc.opcua_users_file {
                Some(p) => crate::plc::opcua::read_users(p)
                    .map_err(|e| bad_input(format!("plc.opcua_users_file {}: {e}", p.display())))?,
                None => vec![],
            };
            let pki_dir = cfg.plc.opcua_pki_dir.clone().unwrap_or_else(|| {
                cfg.spool
                    .path
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("opcua-pki")
            });
            let settings = crate::plc::opcua::Settings {
                listen,
                device_id: cfg.device_id.clone(),
                cert: cfg.plc.opcua_cert.clone().zip(cfg.plc.opcua_key.clone()),
                pki_dir,
                anonymous: cfg.plc.opcua_anonymous,
                users,
                trigger_timeout: Duration::from_millis(cfg.plc.trigger_timeout_ms),
            };
            let serve =
                crate::plc::opcua::start(settings, shared.clone(), board, stop_rx.clone()).await?;
            Some(sup.task("opcua", serve))
        }
        _ => None,
    };
    #[cfg(not(feature = "opcua"))]
    let opcua: Option<tokio::task::JoinHandle<()>> = None;

    // The model is loaded, the spool is open and the threads run: verdicts are produced and kept
    // whether or not the broker is reachable yet.
    let model = shared.status.model();
    crate::sdnotify::notify(&format!(
        "READY=1\nSTATUS=inspecting with {} {}, {depth} message(s) in the spool",
        model.name, model.version,
    ));

    // Whichever comes first: the caller's shutdown, or a supervised task failing.
    let failure = tokio::select! {
        _ = shutdown => None,
        f = sup.failed() => Some(f),
    };
    stop.store(true, Ordering::SeqCst);
    shared.status.changed();
    if let Some(f) = failure {
        // Something died: keep what is stored (a bounded flush) and exit so systemd restarts
        // us; the spool sends everything unacknowledged again after the restart.
        crate::sdnotify::notify(&format!("STATUS=failed: {f}"));
        let _ = stop_tx.send(true);
        if let Err(e) = shared.spool.flush(Duration::from_secs(1)) {
            tracing::error!("spool flush after a failure: {e}");
        }
        return Err(anyhow::anyhow!("{f}"));
    }
    crate::sdnotify::notify("STOPPING=1\nSTATUS=draining the spool");
    tracing::info!("stopping: source, inference, then draining the spool");
    let joined = tokio::task::spawn_blocking(move || {
        for s in source {
            let _ = s.join();
        }
        let _ = inference.join();
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), joined).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(8), publisher).await;
    for h in [http, plc, opcua].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(1), h).await;
    }
    let flushed = shared.spool.flush(Duration::from_secs(5));
    // The owner thread ends once every handle is gone and flushes once more.
    drop(shared);
    let joined = tokio::task::spawn_blocking(move || spool_thread.join());
    let _ = tokio::time::timeout(Duration::from_secs(2), joined).await;
    flushed.map_err(|e| anyhow::anyhow!("spool: {e}"))
}
