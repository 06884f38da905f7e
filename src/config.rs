//! The daemon's configuration file (TOML). The doc comment of each field is its user
//! documentation; `deploy/inspectd.toml` is the annotated example. Unknown keys are errors, and
//! every error names the file and the key at fault.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::bad_input;
use crate::verdict::Rules;

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This box's id: the second level of every topic (`{prefix}/{device_id}/...`).
    pub device_id: String,
    pub source: SourceConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub cam: CamConfig,
    #[serde(default)]
    pub verdict: Rules,
    pub mqtt: MqttConfig,
    pub spool: SpoolConfig,
    #[serde(default)]
    pub stats: StatsConfig,
    #[serde(default)]
    pub http: HttpConfig,
}

/// Where frames come from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// Replays an image folder (recursively, sorted).
    Replay {
        /// Folder of images.
        path: PathBuf,
        /// Frames per second (0 = as fast as inference allows).
        #[serde(default = "default_fps")]
        fps: f32,
        /// Start again at the end of the folder.
        #[serde(default = "yes", rename = "loop")]
        looping: bool,
        #[serde(default)]
        trigger: Trigger,
    },
    /// A V4L2 camera (cargo feature `camera`).
    Camera {
        /// Device path (`/dev/video0`) or index (`0`).
        device: String,
        #[serde(default)]
        width: Option<u32>,
        #[serde(default)]
        height: Option<u32>,
        #[serde(default = "default_fps")]
        fps: f32,
        /// Pixel format: `mjpeg` or `yuyv`.
        #[serde(default)]
        format: Option<String>,
        #[serde(default)]
        trigger: Trigger,
    },
    /// Polls an HTTP snapshot URL for a JPEG/PNG.
    Http {
        url: String,
        #[serde(default = "default_fps")]
        fps: f32,
        /// Request timeout in milliseconds.
        #[serde(default = "default_http_timeout")]
        timeout_ms: u64,
        #[serde(default)]
        trigger: Trigger,
    },
}

impl SourceConfig {
    pub fn trigger(&self) -> Trigger {
        match self {
            SourceConfig::Replay { trigger, .. }
            | SourceConfig::Camera { trigger, .. }
            | SourceConfig::Http { trigger, .. } => *trigger,
        }
    }

    pub fn fps(&self) -> f32 {
        match self {
            SourceConfig::Replay { fps, .. }
            | SourceConfig::Camera { fps, .. }
            | SourceConfig::Http { fps, .. } => *fps,
        }
    }
}

/// When to inspect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// Every frame the inference keeps up with (stale frames are dropped).
    #[default]
    Continuous,
    /// Only on `cmd/trigger` (the verdict carries the command's `part_id`).
    Mqtt,
}

fn default_fps() -> f32 {
    5.0
}
fn default_http_timeout() -> u64 {
    2000
}
fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// ONNX file; its sidecar `<stem>.toml` is read when present.
    pub path: PathBuf,
    /// Sidecar to use instead of `<stem>.toml`.
    pub sidecar: Option<PathBuf>,
    /// Expected SHA-256 of the model file (hex); a mismatch refuses to load.
    pub sha256: Option<String>,
    /// Which of the sidecar's `[variants]` runs: `auto` (default: the fastest on this CPU,
    /// timed at load and cached beside the spool), `f32` or `int8`.
    #[serde(default)]
    pub variant: crate::model::variant::VariantPref,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CamConfig {
    /// CAM method (gradcam, gradcam++, xgradcam, layercam, hirescam, eigencam, scorecam).
    pub method: String,
    /// Target layer: `auto` or an ONNX tensor name.
    pub layer: String,
}

impl Default for CamConfig {
    fn default() -> CamConfig {
        CamConfig {
            method: "gradcam".into(),
            layer: "auto".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL: `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Client id (default: `inspectd-{device_id}`).
    pub client_id: Option<String>,
    pub username: Option<String>,
    /// File holding the password (never the password itself).
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Topic prefix (first level).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Which `ok` verdicts to publish: `all`, `none`, or `every:N`.
    #[serde(default = "default_publish_ok")]
    pub publish_ok: String,
    /// MQTT keep-alive in seconds (the LWT fires after 1.5×).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Allow plaintext MQTT to a host that is not loopback.
    #[serde(default)]
    pub allow_insecure: bool,
}

fn default_prefix() -> String {
    "inspect".into()
}
fn default_publish_ok() -> String {
    "all".into()
}
fn default_keep_alive() -> u64 {
    10
}

/// Which `ok` verdicts are published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishOk {
    All,
    None,
    EveryNth(u64),
}

impl PublishOk {
    pub fn parse(s: &str) -> Result<PublishOk, String> {
        match s {
            "all" => Ok(PublishOk::All),
            "none" => Ok(PublishOk::None),
            _ => match s.strip_prefix("every:").map(str::parse::<u64>) {
                Some(Ok(n)) if n > 0 => Ok(PublishOk::EveryNth(n)),
                _ => Err(format!("{s:?} is not all, none or every:N (N ≥ 1)")),
            },
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The spool database file (created if missing).
    pub path: PathBuf,
    /// Largest total payload size kept; beyond it `ok` verdicts are dropped first.
    #[serde(default = "default_spool_bytes")]
    pub max_bytes: u64,
    /// `always`: fsync every message before publishing it; `batch`: fsync at most every 100 ms.
    #[serde(default = "default_fsync")]
    pub fsync: String,
}

fn default_spool_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_fsync() -> String {
    "always".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// Seconds between `stats` messages.
    pub interval_s: u64,
}

impl Default for StatsConfig {
    fn default() -> StatsConfig {
        StatsConfig { interval_s: 10 }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the local `/metrics` and `/healthz` endpoint; empty = off.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: "127.0.0.1:9898".into(),
        }
    }
}

impl Config {
    /// Parses and checks a config text; `origin` names the file in errors. Relative paths are
    /// resolved against `base` (the config file's folder).
    pub fn parse(text: &str, origin: &str, base: &Path) -> anyhow::Result<Config> {
        let mut c: Config = toml::from_str(text).map_err(|e| {
            let span = e
                .span()
                .map(|s| line_of(text, s.start))
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            bad_input(format!("config {origin}{span}: {}", e.message().trim()))
        })?;
        c.check(origin)?;
        c.resolve(base);
        Ok(c)
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad_input(format!("config {}: cannot read: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &path.display().to_string(), base)
    }

    fn check(&self, origin: &str) -> anyhow::Result<()> {
        let err = |k: &str, m: String| Err(bad_input(format!("config {origin}: {k}: {m}")));
        if self.device_id.is_empty() || self.device_id.contains(['/', '+', '#']) {
            return err(
                "device_id",
                format!("{:?} must be non-empty and free of / + #", self.device_id),
            );
        }
        if self.mqtt.prefix.is_empty() || self.mqtt.prefix.contains(['+', '#']) {
            return err(
                "mqtt.prefix",
                format!("{:?} must be non-empty and free of + #", self.mqtt.prefix),
            );
        }
        if !(self.mqtt.url.starts_with("mqtt://") || self.mqtt.url.starts_with("mqtts://")) {
            return err(
                "mqtt.url",
                format!("{:?} must start with mqtt:// or mqtts://", self.mqtt.url),
            );
        }
        if let Err(m) = PublishOk::parse(&self.mqtt.publish_ok) {
            return err("mqtt.publish_ok", m);
        }
        if self.mqtt.keep_alive_s < 1 {
            return err("mqtt.keep_alive_s", "must be at least 1".into());
        }
        if !matches!(self.spool.fsync.as_str(), "always" | "batch") {
            return err(
                "spool.fsync",
                format!("{:?} is not always or batch", self.spool.fsync),
            );
        }
        if self.spool.max_bytes < 64 * 1024 {
            return err("spool.max_bytes", "must be at least 65536".into());
        }
        if let Err(m) = self.cam.method.parse::<crate::cam::Method>() {
            return err("cam.method", m);
        }
        if let Err(m) = self.verdict.validate() {
            return Err(bad_input(format!("config {origin}: {m}")));
        }
        if self.stats.interval_s == 0 {
            return err("stats.interval_s", "must be at least 1".into());
        }
        let fps = self.source.fps();
        if !(0.0..=1000.0).contains(&fps) {
            return err("source.fps", format!("{fps} must be within 0..1000"));
        }
        if let SourceConfig::Http { url, .. } = &self.source {
            if !url.starts_with("http://") {
                return err("source.url", format!("{url:?} must be an http:// URL"));
            }
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return err(
                "http.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9898",
                    self.http.listen
                ),
            );
        }
        if self.mqtt.cert_file.is_some() != self.mqtt.key_file.is_some() {
            return err(
                "mqtt.cert_file",
                "cert_file and key_file go together".into(),
            );
        }
        Ok(())
    }

    fn resolve(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.model.path);
        if let Some(p) = self.model.sidecar.as_mut() {
            fix(p);
        }
        fix(&mut self.spool.path);
        if let SourceConfig::Replay { path, .. } = &mut self.source {
            fix(path);
        }
        for p in [
            &mut self.mqtt.password_file,
            &mut self.mqtt.ca_file,
            &mut self.mqtt.cert_file,
            &mut self.mqtt.key_file,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
device_id = "line1-cam1"
[source]
kind = "replay"
path = "samples"
fps = 10
[model]
path = "models/m.onnx"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[spool]
path = "spool.redb"
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "test.toml", Path::new("/etc/inspectd")).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn a_minimal_config_parses_with_defaults_and_resolved_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.mqtt.prefix, "inspect");
        assert_eq!(c.model.path, Path::new("/etc/inspectd/models/m.onnx"));
        assert_eq!(c.source.trigger(), Trigger::Continuous);
        assert_eq!(c.stats.interval_s, 10);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse(&GOOD.replace("fps = 10", "fps = 10\nfsp = 3")).unwrap_err();
        assert!(e.contains("fsp") && e.contains("test.toml"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (from, to, key) in [
            ("mqtt://127", "tcp://127", "mqtt.url"),
            ("line1-cam1", "line1/cam1", "device_id"),
            ("fps = 10", "fps = -1", "source.fps"),
            (
                "[spool]",
                "[verdict]\ndefect_threshold = 2.0\n[spool]",
                "defect_threshold",
            ),
            (
                "[spool]",
                "[cam]\nmethod = \"magic\"\n[spool]",
                "cam.method",
            ),
        ] {
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn model_variant_is_auto_unless_named() {
        use crate::model::variant::VariantPref;
        assert_eq!(parse(GOOD).unwrap().model.variant, VariantPref::Auto);
        let with = |v: &str| {
            GOOD.replace(
                "models/m.onnx\"",
                &format!("models/m.onnx\"\nvariant = {v}"),
            )
        };
        assert_eq!(
            parse(&with("\"int8\"")).unwrap().model.variant,
            VariantPref::Int8
        );
        assert_eq!(
            parse(&with("\"f32\"")).unwrap().model.variant,
            VariantPref::F32
        );
        let e = parse(&with("\"fp16\"")).unwrap_err();
        assert!(e.contains("variant") && e.contains("fp16"), "{e}");
    }

    #[test]
    fn publish_ok_accepts_every_nth() {
        assert_eq!(PublishOk::parse("every:5"), Ok(PublishOk::EveryNth(5)));
        assert!(PublishOk::parse("every:0").is_err());
        assert!(PublishOk::parse("some").is_err());
    }
}
