//! The daemon's configuration file (TOML). The doc comment of each field is its user
//! documentation; `deploy/inspectd.toml` is the annotated example. Unknown keys are errors, and
//! every error names the file and the key at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

pub use crate::spool::Fsync;
use crate::verdict::{Polygon, Rules, Zone};
use inspectd_cam::error::bad_input;
use inspectd_cam::Method;

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This box's id: the second level of every topic (`{prefix}/{device_id}/...`).
    pub device_id: String,
    /// The first (or only) camera's source. The file has one `[source]` table (one camera) or
    /// `[[source]]` entries (several cameras, each with its `camera` name, zones and trigger).
    #[serde(deserialize_with = "first_source")]
    pub source: SourceConfig,
    /// Every camera in file order: its name and zones, and from the second on its source (the
    /// first camera's source is `source`, which wins over `cameras[0].source`). Filled by
    /// [`Config::parse`]; see [`Config::camera_list`].
    #[serde(skip)]
    pub cameras: Vec<CameraConfig>,
    /// The sources were written as `[[source]]` entries (their keys are named `source[i].key`).
    #[serde(skip)]
    pub source_array: bool,
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
    #[serde(default)]
    pub plc: PlcConfig,
}

/// One camera of the box: a `[source]` table or one `[[source]]` entry — its source (by `kind`),
/// and what is the camera's own besides: its name and its zones.
#[derive(Clone, Debug, Deserialize)]
pub struct CameraConfig {
    /// The camera's name (`[a-z0-9_-]{1,32}`, unique on the box): required with several
    /// cameras; verdicts and alerts carry it as `camera`. Without a name (one camera) messages
    /// have no `camera` field, as before.
    #[serde(default)]
    pub camera: Option<String>,
    /// This camera's ROI (instead of `verdict.roi`).
    #[serde(default)]
    pub roi: Option<Polygon>,
    /// This camera's ignore zones (instead of `verdict.ignore_zones`).
    #[serde(default)]
    pub ignore_zones: Option<Vec<Zone>>,
    #[serde(flatten)]
    pub source: SourceConfig,
}

/// One camera of [`Config::camera_list`]: its name, zones and source.
#[derive(Clone, Copy, Debug)]
pub struct Camera<'a> {
    pub name: Option<&'a str>,
    pub roi: Option<&'a Polygon>,
    pub ignore_zones: Option<&'a [Zone]>,
    pub source: &'a SourceConfig,
}

impl Camera<'_> {
    /// The verdict rules for this camera's frames: `rules` with the camera's ROI and ignore
    /// zones in place of the `[verdict]` ones, where it has its own.
    pub fn rules(&self, mut rules: Rules) -> Rules {
        if let Some(roi) = self.roi {
            rules.roi = Some(roi.clone());
        }
        if let Some(z) = self.ignore_zones {
            rules.ignore_zones = z.to_vec();
        }
        rules
    }
}

/// `[source]` (one camera) or `[[source]]` (several): every entry is checked here; the first
/// one's source is the one this field keeps (the rest are read again by [`Config::parse`]).
fn first_source<'de, D: Deserializer<'de>>(d: D) -> Result<SourceConfig, D::Error> {
    let (mut cams, _) = cameras(d)?;
    if cams.is_empty() {
        return Err(serde::de::Error::custom(
            "[[source]] needs at least one entry",
        ));
    }
    Ok(cams.swap_remove(0).source)
}

/// Every camera, and whether they were written as an array of tables.
fn cameras<'de, D: Deserializer<'de>>(d: D) -> Result<(Vec<CameraConfig>, bool), D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = (Vec<CameraConfig>, bool);
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a [source] table or [[source]] entries")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
            let c = CameraConfig::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
            Ok((vec![c], false))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut s: A,
        ) -> Result<Self::Value, A::Error> {
            let mut v = vec![];
            while let Some(c) = s.next_element::<CameraConfig>()? {
                v.push(c);
            }
            Ok((v, true))
        }
    }
    d.deserialize_any(V)
}

/// The `source` key alone, read a second time for the cameras after the first.
#[derive(Deserialize)]
struct SourcesOnly {
    #[serde(deserialize_with = "cameras")]
    source: (Vec<CameraConfig>, bool),
}

/// A camera name: what may follow in a topic, an ACL, a file name and a metric label.
fn valid_camera_name(n: &str) -> bool {
    (1..=32).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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
        /// Largest frame accepted, in pixels (at most 16384): a larger one is refused before its
        /// pixels are allocated, counted as a bad frame and named in a warning.
        #[serde(default = "default_max_side")]
        max_width: u32,
        #[serde(default = "default_max_side")]
        max_height: u32,
        /// Bad frames (empty, undecodable, too large) in a row after which the source is
        /// reported lost (`camera_lost`); a good frame reports it back.
        #[serde(default = "default_max_bad_frames")]
        max_bad_frames: u32,
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
        /// Largest frame accepted, in pixels (at most 16384): a larger one is refused before its
        /// pixels are allocated, counted as a bad frame and named in a warning.
        #[serde(default = "default_max_side")]
        max_width: u32,
        #[serde(default = "default_max_side")]
        max_height: u32,
        /// Bad frames (empty, undecodable, too large) in a row after which the source is
        /// reported lost (`camera_lost`); a good frame reports it back.
        #[serde(default = "default_max_bad_frames")]
        max_bad_frames: u32,
    },
    /// An RTSP IP camera (cargo feature `rtsp`): H.264 or MJPEG (RTP/JPEG), the newest picture
    /// taken at `fps`, the rest dropped and counted.
    Rtsp {
        /// `rtsp://[user@]host[:port]/path`. The password goes in `password_file`, never here.
        url: String,
        /// File holding the password of the URL's user (never the password itself).
        #[serde(default)]
        password_file: Option<PathBuf>,
        /// `tcp` (RTP interleaved on the RTSP connection; default) or `udp`.
        #[serde(default)]
        transport: crate::rtsp::Transport,
        /// Frames per second taken from the stream (0 = every picture inference keeps up with).
        #[serde(default = "default_fps")]
        fps: f32,
        /// Connecting (DESCRIBE to PLAY) and the gap between two pictures, in milliseconds;
        /// past either the camera is lost.
        #[serde(default = "default_http_timeout")]
        timeout_ms: u64,
        #[serde(default)]
        trigger: Trigger,
        /// Largest frame accepted, in pixels (at most 16384): a larger one is refused before its
        /// pixels are allocated, counted as a bad frame and named in a warning.
        #[serde(default = "default_max_side")]
        max_width: u32,
        #[serde(default = "default_max_side")]
        max_height: u32,
        /// Bad frames (undecodable, too large) in a row after which the source is reported lost
        /// (`camera_lost`); a good frame reports it back.
        #[serde(default = "default_max_bad_frames")]
        max_bad_frames: u32,
    },
    /// A GigE Vision / GenICam camera through libaravis 0.8 (cargo feature `gige`).
    Gige {
        /// Which camera: its aravis device id (`Vendor-Model-Serial`), serial number or IP
        /// address. Absent: the first camera found.
        #[serde(default)]
        camera_id: Option<String>,
        /// Exposure time in microseconds (`ExposureTime`; auto exposure is turned off).
        /// Absent: left as the camera has it.
        #[serde(default)]
        exposure_us: Option<f64>,
        /// Gain in dB (`Gain`; auto gain is turned off). Absent: left as the camera has it.
        #[serde(default)]
        gain_db: Option<f64>,
        /// `Mono8`, `RGB8`, `BGR8`, `BayerRG8`, `BayerBG8`, `BayerGB8` or `BayerGR8`, converted
        /// to RGB for the model. Absent: the camera's current format, if it is one of these.
        #[serde(default)]
        pixel_format: Option<crate::gige::PixelFormat>,
        /// `free_run` (default; the camera streams, the newest frame is taken), `software`
        /// (each box trigger fires the camera once; needs `trigger = "triggered"`) or a hardware
        /// line `line0`..`line7` (each exposure the line fires is one verdict; needs
        /// `trigger = "continuous"`).
        #[serde(default)]
        trigger_mode: crate::gige::TriggerMode,
        /// The longest silence (no frame in free run; no answer to a control read while it
        /// waits for a trigger), in milliseconds; past it the camera is lost. Opening the camera
        /// (a discovery, about a second) may take 5 s or this, whichever is longer.
        #[serde(default = "default_gige_timeout")]
        timeout_ms: u64,
        /// Frames per second taken in free run (0 = every frame inference keeps up with).
        #[serde(default = "default_fps")]
        fps: f32,
        #[serde(default)]
        trigger: Trigger,
        /// Largest frame accepted, in pixels (at most 16384): a larger one is refused before it
        /// is converted, counted as a bad frame and named in a warning.
        #[serde(default = "default_max_side")]
        max_width: u32,
        #[serde(default = "default_max_side")]
        max_height: u32,
        /// Bad frames (incomplete, too large) in a row after which the source is reported lost
        /// (`camera_lost`); a good frame reports it back.
        #[serde(default = "default_max_bad_frames")]
        max_bad_frames: u32,
    },
    /// Polls an HTTP snapshot URL for a JPEG/PNG.
    Http {
        url: String,
        #[serde(default = "default_fps")]
        fps: f32,
        /// Time for one whole snapshot — connect, request, headers and body — in milliseconds;
        /// a camera that has not delivered by then is lost.
        #[serde(default = "default_http_timeout")]
        timeout_ms: u64,
        #[serde(default)]
        trigger: Trigger,
        /// Largest frame accepted, in pixels (at most 16384): a larger one is refused before its
        /// pixels are allocated, counted as a bad frame and named in a warning.
        #[serde(default = "default_max_side")]
        max_width: u32,
        #[serde(default = "default_max_side")]
        max_height: u32,
        /// Bad frames (empty, undecodable, too large) in a row after which the source is
        /// reported lost (`camera_lost`); a good frame reports it back.
        #[serde(default = "default_max_bad_frames")]
        max_bad_frames: u32,
    },
}

impl SourceConfig {
    pub fn trigger(&self) -> Trigger {
        match self {
            SourceConfig::Replay { trigger, .. }
            | SourceConfig::Camera { trigger, .. }
            | SourceConfig::Rtsp { trigger, .. }
            | SourceConfig::Gige { trigger, .. }
            | SourceConfig::Http { trigger, .. } => *trigger,
        }
    }

    /// Frame size and bad-frame limits (`max_width`, `max_height`, `max_bad_frames`).
    pub fn limits(&self) -> crate::source::SourceLimits {
        match self {
            SourceConfig::Replay {
                max_width,
                max_height,
                max_bad_frames,
                ..
            }
            | SourceConfig::Camera {
                max_width,
                max_height,
                max_bad_frames,
                ..
            }
            | SourceConfig::Rtsp {
                max_width,
                max_height,
                max_bad_frames,
                ..
            }
            | SourceConfig::Gige {
                max_width,
                max_height,
                max_bad_frames,
                ..
            }
            | SourceConfig::Http {
                max_width,
                max_height,
                max_bad_frames,
                ..
            } => crate::source::SourceLimits {
                max_width: *max_width,
                max_height: *max_height,
                max_bad_frames: *max_bad_frames,
            },
        }
    }

    pub fn fps(&self) -> f32 {
        match self {
            SourceConfig::Replay { fps, .. }
            | SourceConfig::Camera { fps, .. }
            | SourceConfig::Rtsp { fps, .. }
            | SourceConfig::Gige { fps, .. }
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
    /// Only on a trigger, from every enabled path: MQTT `cmd/trigger` and the PLC's Modbus
    /// `trigger_seq` (the verdict carries the trigger's `part_id`). `"mqtt"` is its old name.
    #[serde(alias = "mqtt")]
    Triggered,
}

fn default_fps() -> f32 {
    5.0
}
fn default_http_timeout() -> u64 {
    2000
}
/// A lost GigE camera is reported within 2 s: one second of silence, plus the source loop's turn.
fn default_gige_timeout() -> u64 {
    1000
}
fn default_max_side() -> u32 {
    crate::source::SourceLimits::default().max_width
}
fn default_max_bad_frames() -> u32 {
    crate::source::SourceLimits::default().max_bad_frames
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
    pub variant: inspectd_cam::model::variant::VariantPref,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CamConfig {
    /// CAM method (gradcam, gradcam++, xgradcam, layercam, hirescam, eigencam, scorecam).
    #[serde(deserialize_with = "from_str")]
    pub method: Method,
    /// Target layer: `auto` or an ONNX tensor name.
    #[serde(deserialize_with = "from_str")]
    pub layer: Layer,
}

impl Default for CamConfig {
    fn default() -> CamConfig {
        CamConfig {
            method: Method::GradCam,
            layer: Layer::Auto,
        }
    }
}

/// The CAM target layer: the model's default (`auto`) or an ONNX tensor by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layer {
    Auto,
    Named(String),
}

impl Layer {
    /// The tensor name, or `None` for the model's default.
    pub fn name(&self) -> Option<&str> {
        match self {
            Layer::Auto => None,
            Layer::Named(n) => Some(n),
        }
    }
}

impl std::str::FromStr for Layer {
    type Err = String;
    fn from_str(s: &str) -> Result<Layer, String> {
        match s {
            "" => Err("must be auto or a tensor name".into()),
            "auto" => Ok(Layer::Auto),
            n => Ok(Layer::Named(n.to_string())),
        }
    }
}

/// A string key read through `FromStr`: the value is checked once, here, and the refusal's
/// message gets the key and line added by the config's error report.
fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
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
    #[serde(default = "default_publish_ok", deserialize_with = "from_str")]
    pub publish_ok: PublishOk,
    /// MQTT keep-alive in seconds (the LWT fires after 1.5×).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Allow plaintext MQTT to a host that is not loopback.
    #[serde(default)]
    pub allow_insecure: bool,
}

impl MqttConfig {
    /// The broker part of this section.
    pub fn broker(&self) -> inspectd_contract::client::BrokerConfig {
        inspectd_contract::client::BrokerConfig {
            url: self.url.clone(),
            client_id: self.client_id.clone(),
            username: self.username.clone(),
            password_file: self.password_file.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            keep_alive_s: self.keep_alive_s,
            allow_insecure: self.allow_insecure,
        }
    }

    /// Checks and resolves the broker settings (client id `inspectd-<device>` by default); a
    /// setting that cannot be used is bad input naming its key.
    pub fn settings(&self, device: &str) -> anyhow::Result<inspectd_contract::client::Settings> {
        inspectd_contract::client::settings(&self.broker(), &format!("inspectd-{device}"))
            .map_err(inspectd_cam::error::bad_input)
    }
}

fn default_prefix() -> String {
    "inspect".into()
}
fn default_publish_ok() -> PublishOk {
    PublishOk::All
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

impl std::str::FromStr for PublishOk {
    type Err = String;
    fn from_str(s: &str) -> Result<PublishOk, String> {
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
    #[serde(default = "default_fsync", deserialize_with = "from_str")]
    pub fsync: Fsync,
}

fn default_spool_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_fsync() -> Fsync {
    Fsync::Always
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
    #[serde(deserialize_with = "address_or_off")]
    pub listen: Option<std::net::SocketAddr>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            listen: Some(([127, 0, 0, 1], 9898).into()),
        }
    }
}

/// An address like `127.0.0.1:9898`, or the empty string for "off".
fn address_or_off<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!("{s:?} is not an address like 127.0.0.1:9898"))
    })
}

/// The line's controller (PLC): a Modbus TCP server, an OPC UA server (cargo feature `opcua`),
/// and how long a trigger waits for its frame (every trigger path: MQTT, Modbus, OPC UA). Each
/// server is off unless its `*_listen` is set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlcConfig {
    /// Address of the Modbus TCP server (`0.0.0.0:502`); empty or absent = off.
    #[serde(deserialize_with = "plc_address")]
    pub modbus_listen: Option<std::net::SocketAddr>,
    /// The Modbus unit id this box answers to (1..=255; requests to another get exception 0x0B).
    pub unit_id: u8,
    /// Listen on an address that is not loopback (Modbus has no logins and no encryption:
    /// only on the machine network).
    pub allow_remote: bool,
    /// A trigger whose frame has not arrived this many milliseconds after the trigger is
    /// answered with an error (Modbus `error_code` 3) and raises a `trigger_timeout` alert.
    pub trigger_timeout_ms: u64,
    /// The camera the PLC's triggers inspect with (a `[[source]]` entry's `camera`; it must be
    /// triggered). Default: the first triggered camera.
    pub camera: Option<String>,
    /// Address of the OPC UA server (`opc.tcp://0.0.0.0:4840`); empty or absent = off. Loopback
    /// only unless `allow_remote`.
    #[serde(deserialize_with = "opcua_address")]
    pub opcua_listen: Option<std::net::SocketAddr>,
    /// The server's application instance certificate (DER or PEM) and its private key (PEM):
    /// with both, the one endpoint is Basic256Sha256 Sign&Encrypt; without, SecurityPolicy None.
    pub opcua_cert: Option<PathBuf>,
    pub opcua_key: Option<PathBuf>,
    /// Clients trusted for Sign&Encrypt: their certificates in `<dir>/trusted/`; an unknown one
    /// is refused and left in `<dir>/rejected/` for an operator to move to `trusted/`.
    /// Default: `opcua-pki` beside the spool.
    pub opcua_pki_dir: Option<PathBuf>,
    /// Sessions without a user name (default true).
    pub opcua_anonymous: bool,
    /// File of `user:password` lines (`#` comments) for OPC UA logins; never the passwords here.
    pub opcua_users_file: Option<PathBuf>,
}

impl Default for PlcConfig {
    fn default() -> PlcConfig {
        PlcConfig {
            modbus_listen: None,
            unit_id: 1,
            allow_remote: false,
            trigger_timeout_ms: 5000,
            camera: None,
            opcua_listen: None,
            opcua_cert: None,
            opcua_key: None,
            opcua_pki_dir: None,
            opcua_anonymous: true,
            opcua_users_file: None,
        }
    }
}

/// An OPC UA endpoint URL with an IP address, `opc.tcp://0.0.0.0:4840` (a trailing `/` is
/// allowed), or the empty string for "off".
fn opcua_address<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.strip_prefix("opc.tcp://")
        .map(|rest| rest.strip_suffix('/').unwrap_or(rest))
        .and_then(|a| a.parse().ok())
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{s:?} is not an endpoint like opc.tcp://0.0.0.0:4840"
            ))
        })
}

/// An address like `0.0.0.0:502`, or the empty string for "off".
fn plc_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an address like 0.0.0.0:502")))
}

impl Config {
    /// Parses and checks a config text; `origin` names the file in errors. Relative paths are
    /// resolved against `base` (the config file's folder).
    pub fn parse(text: &str, origin: &str, base: &Path) -> anyhow::Result<Config> {
        let headers = |h: &str| text.lines().any(|l| l.trim().starts_with(h));
        if headers("[source]") && headers("[[source]]") {
            return Err(bad_input(format!(
                "config {origin}: source: one [source] table (one camera) or [[source]] entries (several), not both"
            )));
        }
        let mut c: Config = toml::from_str(text)
            .map_err(|e| bad_input(format!("config {origin}{}", parse_error(text, &e))))?;
        // The cameras after the first (`source` holds the first's source); this cannot fail
        // where the whole file parsed.
        let s: SourcesOnly = toml::from_str(text)
            .map_err(|e| bad_input(format!("config {origin}{}", parse_error(text, &e))))?;
        (c.cameras, c.source_array) = s.source;
        c.check(origin)?;
        c.resolve(base);
        Ok(c)
    }

    /// Reads and checks a config file, and that the files it names are there (a replay folder
    /// that does not exist is a typo, not a camera that went away).
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad_input(format!("config {}: cannot read: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let origin = path.display().to_string();
        let c = Config::parse(&text, &origin, base)?;
        for (i, cam) in c.camera_list().iter().enumerate() {
            if let SourceConfig::Replay { path: dir, .. } = cam.source {
                if !dir.is_dir() {
                    return Err(bad_input(format!(
                        "config {origin}: {}: {} is not a folder",
                        c.source_key(i, "path"),
                        dir.display()
                    )));
                }
            }
        }
        Ok(c)
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
        if !(1..=u16::MAX as u64).contains(&self.mqtt.keep_alive_s) {
            return err(
                "mqtt.keep_alive_s",
                format!("{} must be within 1..65535", self.mqtt.keep_alive_s),
            );
        }
        if self.spool.max_bytes < 64 * 1024 {
            return err("spool.max_bytes", "must be at least 65536".into());
        }
        if let Err(m) = self.verdict.validate() {
            return Err(bad_input(format!("config {origin}: {m}")));
        }
        if !(1..=86_400).contains(&self.stats.interval_s) {
            return err(
                "stats.interval_s",
                format!("{} must be within 1..86400", self.stats.interval_s),
            );
        }
        let cams = self.camera_list();
        let named = cams.iter().filter(|c| c.name.is_some()).count();
        for (i, cam) in cams.iter().enumerate() {
            let key = |k: &str| self.source_key(i, k);
            match cam.name {
                Some(n) if !valid_camera_name(n) => {
                    return err(
                        &key("camera"),
                        format!("{n:?} must be 1 to 32 of a-z, 0-9, _ and -"),
                    );
                }
                Some(n) if cams[..i].iter().any(|c| c.name == Some(n)) => {
                    return err(&key("camera"), format!("{n:?} names two cameras"));
                }
                None if cams.len() > 1 || named > 0 => {
                    return err(
                        &key("camera"),
                        "missing: with several cameras each needs its own name".into(),
                    );
                }
                _ => {}
            }
            for (j, z) in cam.ignore_zones.unwrap_or_default().iter().enumerate() {
                if let Err(m) = z.polygon.validate() {
                    return err(&key(&format!("ignore_zones[{j}]")), m);
                }
            }
            if let Some(Err(m)) = cam.roi.map(Polygon::validate) {
                return err(&key("roi"), m);
            }
            self.check_source(cam.source, &key, origin)?;
        }
        if let Some(addr) = self.plc.modbus_listen {
            if !addr.ip().is_loopback() && !self.plc.allow_remote {
                return err(
                    "plc.modbus_listen",
                    format!("{addr} is not loopback: Modbus has no logins, set plc.allow_remote = true to serve the machine network"),
                );
            }
            if self.plc.camera.is_none() && self.plc_camera().is_none() {
                return err(
                    "plc.modbus_listen",
                    "the PLC triggers inspections: set source.trigger = \"triggered\"".into(),
                );
            }
        }
        if let Some(n) = &self.plc.camera {
            let cams = self.camera_list();
            match cams.iter().position(|c| c.name == Some(n.as_str())) {
                None => {
                    let names: Vec<&str> = cams.iter().filter_map(|c| c.name).collect();
                    return err(
                        "plc.camera",
                        format!("{n:?} is not a camera of this box ({})", names.join(", ")),
                    );
                }
                Some(i) if cams[i].source.trigger() != Trigger::Triggered => {
                    return err(
                        "plc.camera",
                        format!(
                            "camera {n:?} inspects continuously: set {} = \"triggered\"",
                            self.source_key(i, "trigger")
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        if let Some(addr) = self.plc.opcua_listen {
            if !cfg!(feature = "opcua") {
                return err(
                    "plc.opcua_listen",
                    "this inspectd is built without its OPC UA server (cargo feature opcua)".into(),
                );
            }
            if !addr.ip().is_loopback() && !self.plc.allow_remote {
                return err(
                    "plc.opcua_listen",
                    format!("{addr} is not loopback: set plc.allow_remote = true to serve the machine network"),
                );
            }
        }
        if self.plc.opcua_cert.is_some() != self.plc.opcua_key.is_some() {
            return err(
                "plc.opcua_cert",
                "opcua_cert and opcua_key go together".into(),
            );
        }
        if !self.plc.opcua_anonymous && self.plc.opcua_users_file.is_none() {
            return err(
                "plc.opcua_anonymous",
                "false needs plc.opcua_users_file (nobody could log in)".into(),
            );
        }
        if self.plc.unit_id == 0 {
            return err(
                "plc.unit_id",
                "0 is the broadcast address: use 1..255".into(),
            );
        }
        if !(1..=600_000).contains(&self.plc.trigger_timeout_ms) {
            return err(
                "plc.trigger_timeout_ms",
                format!("{} must be within 1..600000", self.plc.trigger_timeout_ms),
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

    /// The checks of one camera's source; `key` names its keys (`source.fps`, `source[1].fps`).
    fn check_source(
        &self,
        source: &SourceConfig,
        key: &dyn Fn(&str) -> String,
        origin: &str,
    ) -> anyhow::Result<()> {
        let err = |k: &str, m: String| Err(bad_input(format!("config {origin}: {k}: {m}")));
        let fps = source.fps();
        if !(fps == 0.0 || (MIN_FPS..=MAX_FPS).contains(&fps)) {
            return err(
                &key("fps"),
                format!(
                    "{fps:?} must be 0 (as fast as inference allows) or within {MIN_FPS}..{MAX_FPS}"
                ),
            );
        }
        let limits = source.limits();
        let side = inspectd_cam::model::preprocess::MAX_IMAGE_SIDE;
        for (k, v) in [
            (key("max_width"), limits.max_width),
            (key("max_height"), limits.max_height),
        ] {
            if !(1..=side).contains(&v) {
                return err(&k, format!("{v} must be within 1..{side}"));
            }
        }
        if limits.max_bad_frames == 0 {
            return err(&key("max_bad_frames"), "must be at least 1".into());
        }
        match source {
            SourceConfig::Http {
                url, timeout_ms, ..
            } => {
                if !url.starts_with("http://") {
                    return err(&key("url"), format!("{url:?} must be an http:// URL"));
                }
                if !(1..=600_000).contains(timeout_ms) {
                    return err(
                        &key("timeout_ms"),
                        format!("{timeout_ms} must be within 1..600000"),
                    );
                }
            }
            SourceConfig::Rtsp {
                url, timeout_ms, ..
            } => {
                if let Err(e) = crate::rtsp::parse_url(url) {
                    return err(&key("url"), e);
                }
                if !(1..=600_000).contains(timeout_ms) {
                    return err(
                        &key("timeout_ms"),
                        format!("{timeout_ms} must be within 1..600000"),
                    );
                }
            }
            SourceConfig::Gige {
                camera_id,
                exposure_us,
                gain_db,
                trigger_mode,
                timeout_ms,
                trigger,
                ..
            } => {
                if camera_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
                    return err(
                        &key("camera_id"),
                        "is empty: leave it out for the first camera found".into(),
                    );
                }
                if let Some(us) = exposure_us.filter(|us| !(us.is_finite() && *us > 0.0)) {
                    return err(
                        &key("exposure_us"),
                        format!("{us} must be a positive number of microseconds"),
                    );
                }
                if let Some(db) = gain_db.filter(|db| !(-100.0..=100.0).contains(db)) {
                    return err(&key("gain_db"), format!("{db} must be within -100..100 dB"));
                }
                if !(1..=600_000).contains(timeout_ms) {
                    return err(
                        &key("timeout_ms"),
                        format!("{timeout_ms} must be within 1..600000"),
                    );
                }
                use crate::gige::TriggerMode;
                match (trigger_mode, trigger) {
                    (TriggerMode::Software, Trigger::Continuous) => {
                        return err(
                            &key("trigger_mode"),
                            format!("\"software\" fires the camera on the box's triggers: set {} = \"triggered\"", key("trigger")),
                        )
                    }
                    (TriggerMode::Line(n), Trigger::Triggered) => {
                        return err(
                            &key("trigger_mode"),
                            format!("\"line{n}\": the camera's input line triggers it and each exposure is one verdict: leave {} = \"continuous\"", key("trigger")),
                        )
                    }
                    _ => {}
                }
            }
            SourceConfig::Camera { width, height, .. } => {
                for (k, v) in [(key("width"), width), (key("height"), height)] {
                    if let Some(v) = v.filter(|v| !(1..=side).contains(v)) {
                        return err(&k, format!("{v} must be within 1..{side}"));
                    }
                }
            }
            SourceConfig::Replay { path, .. } => {
                if path.as_os_str().is_empty() {
                    return err(&key("path"), "must name a folder".into());
                }
            }
        }
        Ok(())
    }

    /// The key `k` of camera `i` as the file spells it: `source.k`, or `source[i].k` for
    /// `[[source]]` entries.
    pub fn source_key(&self, i: usize, k: &str) -> String {
        if self.source_array {
            format!("source[{i}].{k}")
        } else {
            format!("source.{k}")
        }
    }

    /// Every camera of the box, in file order (one, unnamed, for a plain `[source]` table).
    pub fn camera_list(&self) -> Vec<Camera<'_>> {
        if self.cameras.is_empty() {
            return vec![Camera {
                name: None,
                roi: None,
                ignore_zones: None,
                source: &self.source,
            }];
        }
        self.cameras
            .iter()
            .enumerate()
            .map(|(i, c)| Camera {
                name: c.camera.as_deref(),
                roi: c.roi.as_ref(),
                ignore_zones: c.ignore_zones.as_deref(),
                source: if i == 0 { &self.source } else { &c.source },
            })
            .collect()
    }

    /// The camera the PLC's triggers inspect with: `plc.camera`, or the first triggered one.
    pub fn plc_camera(&self) -> Option<usize> {
        let cams = self.camera_list();
        match &self.plc.camera {
            Some(n) => cams.iter().position(|c| c.name == Some(n.as_str())),
            None => cams
                .iter()
                .position(|c| c.source.trigger() == Trigger::Triggered),
        }
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
        let rest = self.cameras.iter_mut().skip(1).map(|c| &mut c.source);
        for source in std::iter::once(&mut self.source).chain(rest) {
            match source {
                SourceConfig::Replay { path, .. } => fix(path),
                SourceConfig::Rtsp {
                    password_file: Some(p),
                    ..
                } => fix(p),
                _ => {}
            }
        }
        for p in [
            &mut self.mqtt.password_file,
            &mut self.mqtt.ca_file,
            &mut self.mqtt.cert_file,
            &mut self.mqtt.key_file,
            &mut self.plc.opcua_cert,
            &mut self.plc.opcua_key,
            &mut self.plc.opcua_pki_dir,
            &mut self.plc.opcua_users_file,
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

/// Slowest and fastest `source.fps` besides 0: below 0.01 (one frame in 100 s) a value is a
/// typo, and the frame period would overflow well before 1e-30.
const MIN_FPS: f32 = 0.01;
const MAX_FPS: f32 = 1000.0;

/// The key a line of the file sets, with its table (`source.fps`), if it sets one.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    let mut entries: HashMap<String, usize> = HashMap::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with("[[") {
            // An array of tables: its entries are named `source[0]`, `source[1]`, …
            let name = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            let n = entries.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        } else if i + 1 == line {
            let (k, _) = t.split_once('=').filter(|_| !t.starts_with('#'))?;
            let k = k.trim().trim_matches('"');
            return Some(if table.is_empty() {
                k.to_string()
            } else {
                format!("{table}.{k}")
            });
        }
        if i + 1 >= line {
            break;
        }
    }
    None
}

/// ` (line N): key: message` for a TOML or type error. toml points at the value when it can,
/// but at the whole table inside `[source]` (a tagged enum); then the key is the one line of
/// that table whose removal makes the error go away (or turn into "missing field" for it).
fn parse_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    let Some(span) = e.span() else {
        return format!(": {msg}");
    };
    let (first, last) = (
        line_of(text, span.start),
        line_of(text, span.end.saturating_sub(1)),
    );
    let keyed: Vec<(usize, String)> = (first..=last.max(first))
        .filter_map(|l| key_on_line(text, l).map(|k| (l, k)))
        .collect();
    let culprit = if keyed.len() <= 1 || first == last {
        keyed.into_iter().next()
    } else {
        // The kind of value the message complains about ("invalid type: string …").
        let wrong = msg
            .strip_prefix("invalid type: ")
            .and_then(|m| m.split_whitespace().next());
        let without = |skip: usize| -> String {
            text.lines()
                .enumerate()
                .filter(|(i, _)| i + 1 != skip)
                .map(|(_, l)| format!("{l}\n"))
                .collect()
        };
        let mut fixed = None;
        let mut missing = vec![];
        for (l, k) in keyed {
            let t = without(l);
            if toml::from_str::<toml::Table>(&t).is_err() {
                continue;
            }
            let leaf = k.rsplit('.').next().unwrap_or(&k).to_string();
            match toml::from_str::<Config>(&t) {
                Ok(_) => {
                    fixed = Some((l, k));
                    break;
                }
                Err(e2) if e2.message().contains(&format!("missing field `{leaf}`")) => {
                    missing.push((l, k))
                }
                Err(_) => {}
            }
        }
        fixed.or_else(|| {
            let matches_type = |(l, _): &(usize, String)| {
                let value = text.lines().nth(l - 1).and_then(|x| x.split_once('='));
                let value = value.map(|(_, v)| v.trim()).unwrap_or("");
                match wrong {
                    Some("string") => value.starts_with('"') || value.starts_with('\''),
                    Some("integer") | Some("floating") => {
                        value.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+')
                    }
                    Some("boolean") => value == "true" || value == "false",
                    Some("sequence") => value.starts_with('['),
                    _ => true,
                }
            };
            let typed: Vec<_> = missing
                .iter()
                .filter(|c| matches_type(c))
                .cloned()
                .collect();
            typed
                .into_iter()
                .next()
                .or_else(|| missing.into_iter().next())
        })
    };
    match culprit {
        Some((l, k)) => format!(" (line {l}): {k}: {msg}"),
        None => format!(" (line {first}): {msg}"),
    }
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
    fn out_of_range_values_name_their_key() {
        for (from, to, key) in [
            ("fps = 10", "fps = 1e-30", "source.fps"),
            ("fps = 10", "fps = 0.001", "source.fps"),
            ("fps = 10", "fps = nan", "source.fps"),
            ("fps = 10", "fps = 10\nmax_width = 0", "source.max_width"),
            (
                "fps = 10",
                "fps = 10\nmax_height = 100000",
                "source.max_height",
            ),
            (
                "fps = 10",
                "fps = 10\nmax_bad_frames = 0",
                "source.max_bad_frames",
            ),
            (
                "[spool]",
                "[stats]\ninterval_s = 0\n[spool]",
                "stats.interval_s",
            ),
            (
                "1883\"",
                "1883\"\nkeep_alive_s = 70000",
                "mqtt.keep_alive_s",
            ),
        ] {
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        assert!(parse(&GOOD.replace("fps = 10", "fps = 0")).is_ok());
        assert!(parse(&GOOD.replace("fps = 10", "fps = 0.01")).is_ok());
    }

    #[test]
    fn type_errors_name_the_key_and_its_line() {
        // Inside [source] (a tagged enum) toml only knows the table; the key is found.
        let e = parse(&GOOD.replace("fps = 10", "fps = \"5\"")).unwrap_err();
        assert!(e.contains("source.fps") && e.contains("line 6"), "{e}");
        let e = parse(&GOOD.replace("path = \"samples\"", "path = 5")).unwrap_err();
        assert!(e.contains("source.path"), "{e}");
        // In a plain table toml points at the value.
        let e =
            parse(&GOOD.replace("[spool]", "[stats]\ninterval_s = \"x\"\n[spool]")).unwrap_err();
        assert!(e.contains("stats.interval_s"), "{e}");
        let e = parse(&GOOD.replace("fps = 10", "fps = 10\nmax_width = \"big\"")).unwrap_err();
        assert!(e.contains("source.max_width"), "{e}");
    }

    #[test]
    fn the_source_limits_default_to_4096_and_3_bad_frames() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.source.limits(), crate::source::SourceLimits::default());
        assert_eq!(
            (
                c.source.limits().max_width,
                c.source.limits().max_bad_frames
            ),
            (4096, 3)
        );
    }

    #[test]
    fn model_variant_is_auto_unless_named() {
        use inspectd_cam::model::variant::VariantPref;
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
    fn plc_is_off_by_default_and_its_bad_values_name_their_key() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.plc.modbus_listen, None);
        assert_eq!((c.plc.unit_id, c.plc.trigger_timeout_ms), (1, 5000));
        let triggered = GOOD.replace("fps = 10", "fps = 10\ntrigger = \"triggered\"");
        let plc = |body: &str| format!("{triggered}[plc]\n{body}\n");
        let c = parse(&plc("modbus_listen = \"127.0.0.1:1502\"\nunit_id = 7")).unwrap();
        assert_eq!(c.plc.modbus_listen, Some(([127, 0, 0, 1], 1502).into()));
        assert_eq!(c.source.trigger(), Trigger::Triggered);
        // The old name of "triggered".
        let old = GOOD.replace("fps = 10", "fps = 10\ntrigger = \"mqtt\"");
        assert_eq!(parse(&old).unwrap().source.trigger(), Trigger::Triggered);
        assert!(parse(&plc("modbus_listen = \"0.0.0.0:502\"\nallow_remote = true")).is_ok());
        for (body, key) in [
            ("modbus_listen = \"0.0.0.0:502\"", "plc.modbus_listen"),
            ("modbus_listen = \"port 502\"", "plc.modbus_listen"),
            ("unit_id = 0", "plc.unit_id"),
            ("unit_id = 300", "plc.unit_id"),
            ("trigger_timeout_ms = 0", "plc.trigger_timeout_ms"),
            ("opcua_listen = \"x\"", "plc.opcua_listen"),
            ("opcua_listen = \"opc.tcp://plc:4840\"", "plc.opcua_listen"),
            (
                "opcua_listen = \"opc.tcp://0.0.0.0:4840\"",
                "plc.opcua_listen",
            ),
            ("opcua_cert = \"server.der\"", "plc.opcua_cert"),
            ("opcua_key = \"server.pem\"", "plc.opcua_cert"),
            ("opcua_anonymous = false", "plc.opcua_anonymous"),
            ("opcua_anonymous = \"no\"", "plc.opcua_anonymous"),
            ("opcua_users = \"u\"", "opcua_users"),
        ] {
            let e = parse(&plc(body)).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let c = parse(&plc(
            "opcua_listen = \"opc.tcp://127.0.0.1:4840/\"\nopcua_anonymous = false\nopcua_users_file = \"users\"",
        ));
        if cfg!(feature = "opcua") {
            let c = c.unwrap();
            assert_eq!(c.plc.opcua_listen, Some(([127, 0, 0, 1], 4840).into()));
            assert!(!c.plc.opcua_anonymous && c.plc.opcua_users_file.is_some());
        } else {
            let e = c.unwrap_err();
            assert!(
                e.contains("plc.opcua_listen") && e.contains("feature opcua"),
                "{e}"
            );
        }
        // A Modbus server on a box that inspects continuously has nothing to trigger.
        let e = parse(&format!(
            "{GOOD}[plc]\nmodbus_listen = \"127.0.0.1:1502\"\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("plc.modbus_listen") && e.contains("triggered"),
            "{e}"
        );
    }

    #[test]
    fn rtsp_sources_parse_and_their_bad_keys_are_named() {
        let rtsp = |keys: &str| {
            GOOD.replace(
                "kind = \"replay\"\npath = \"samples\"",
                &format!("kind = \"rtsp\"\n{keys}"),
            )
        };
        let c = parse(&rtsp(
            "url = \"rtsp://viewer@10.0.0.7:554/ch1\"\npassword_file = \"cam.pw\"\ntransport = \"udp\"",
        ))
        .unwrap();
        match &c.source {
            SourceConfig::Rtsp {
                password_file,
                transport,
                timeout_ms,
                ..
            } => {
                assert_eq!(
                    password_file.as_deref(),
                    Some(Path::new("/etc/inspectd/cam.pw"))
                );
                assert_eq!(*transport, crate::rtsp::Transport::Udp);
                assert_eq!(*timeout_ms, 2000);
            }
            other => panic!("{other:?}"),
        }
        for (keys, key) in [
            ("url = \"http://cam/x\"", "source.url"),
            ("url = \"rtsp://a:b@cam/x\"", "source.url"),
            (
                "url = \"rtsp://cam/x\"\ntransport = \"quic\"",
                "source.transport",
            ),
            (
                "url = \"rtsp://cam/x\"\ntimeout_ms = 0",
                "source.timeout_ms",
            ),
        ] {
            let e = parse(&rtsp(keys)).unwrap_err();
            assert!(e.contains(key), "{keys}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    const TWO: &str = r#"
device_id = "line4"
[[source]]
camera = "top"
kind = "replay"
path = "top"
ignore_zones = [{ name = "sticker", polygon = [[0.0, 0.0], [0.3, 0.0], [0.3, 0.3]] }]
[[source]]
camera = "side"
kind = "rtsp"
url = "rtsp://viewer@10.0.0.22:554/ch1"
password_file = "side.pw"
trigger = "triggered"
[model]
path = "models/m.onnx"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[spool]
path = "spool.redb"
"#;

    #[test]
    fn several_cameras_parse_each_with_its_name_zones_source_and_trigger() {
        let c = parse(TWO).unwrap();
        let cams = c.camera_list();
        assert_eq!(cams.len(), 2);
        assert_eq!((cams[0].name, cams[1].name), (Some("top"), Some("side")));
        assert!(
            matches!(cams[0].source, SourceConfig::Replay { path, .. } if path == Path::new("/etc/inspectd/top"))
        );
        assert!(
            matches!(cams[1].source, SourceConfig::Rtsp { password_file: Some(p), .. } if p == Path::new("/etc/inspectd/side.pw"))
        );
        assert_eq!(cams[0].source.trigger(), Trigger::Continuous);
        assert_eq!(cams[1].source.trigger(), Trigger::Triggered);
        // The camera's zones replace the [verdict] ones for its frames only.
        let r = cams[0].rules(c.verdict.clone());
        assert_eq!(r.ignore_zones[0].name, "sticker");
        assert_eq!(cams[1].rules(c.verdict.clone()), c.verdict);
        // The PLC defaults to the first triggered camera.
        assert_eq!(c.plc_camera(), Some(1));
        // One plain [source] table is one unnamed camera, as before.
        let one = parse(GOOD).unwrap();
        assert_eq!(one.camera_list().len(), 1);
        assert_eq!(one.camera_list()[0].name, None);
    }

    #[test]
    fn bad_camera_entries_name_their_key() {
        for (from, to, key) in [
            ("camera = \"side\"\n", "", "source[1].camera"),
            ("camera = \"side\"", "camera = \"top\"", "source[1].camera"),
            (
                "camera = \"side\"",
                "camera = \"Side Cam\"",
                "source[1].camera",
            ),
            ("camera = \"top\"", "camera = \"a/b\"", "source[0].camera"),
            (
                "path = \"top\"",
                "path = \"top\"\nfps = -3",
                "source[0].fps",
            ),
            (
                "trigger = \"triggered\"",
                "trigger = \"triggered\"\ntimeout_ms = 0",
                "source[1].timeout_ms",
            ),
            ("[0.3, 0.3]]", "[3.0, 0.3]]", "source[0].ignore_zones[0]"),
            ("[model]", "[plc]\ncamera = \"top\"\n[model]", "plc.camera"),
            ("[model]", "[plc]\ncamera = \"back\"\n[model]", "plc.camera"),
        ] {
            assert!(TWO.contains(from), "{from}");
            let e = parse(&TWO.replacen(from, to, 1)).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        // Unknown keys of an entry are named with its index.
        let e = parse(&TWO.replace("path = \"top\"", "path = \"top\"\nfsp = 3")).unwrap_err();
        assert!(e.contains("fsp"), "{e}");
        // [source] and [[source]] together is refused, naming the key.
        let mixed = format!("{TWO}[source]\nkind = \"replay\"\npath = \"x\"\n");
        let e = parse(&mixed).unwrap_err();
        assert!(e.contains("source") && e.contains("not both"), "{e}");
        // A single [[source]] entry needs no name; a named plain [source] keeps its name.
        let single = TWO.split("[[source]]\ncamera = \"side\"").next().unwrap().to_string()
            + "[model]\npath = \"m.onnx\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n[spool]\npath = \"s\"\n";
        assert_eq!(parse(&single).unwrap().camera_list().len(), 1);
        let unnamed = single.replace("camera = \"top\"\n", "");
        assert_eq!(parse(&unnamed).unwrap().camera_list()[0].name, None);
        let named = GOOD.replace("[source]", "[source]\ncamera = \"top\"");
        assert_eq!(parse(&named).unwrap().camera_list()[0].name, Some("top"));
    }

    #[test]
    fn gige_sources_parse_and_their_bad_keys_are_named() {
        let gige = |keys: &str| {
            GOOD.replace(
                "kind = \"replay\"\npath = \"samples\"",
                &format!("kind = \"gige\"\n{keys}"),
            )
        };
        let c = parse(&gige(
            "camera_id = \"192.168.10.21\"\nexposure_us = 1500.5\ngain_db = 6\npixel_format = \"BayerRG8\"\ntrigger_mode = \"software\"\ntrigger = \"triggered\"",
        ))
        .unwrap();
        match &c.source {
            SourceConfig::Gige {
                camera_id,
                exposure_us,
                gain_db,
                pixel_format,
                trigger_mode,
                timeout_ms,
                ..
            } => {
                assert_eq!(camera_id.as_deref(), Some("192.168.10.21"));
                assert_eq!((*exposure_us, *gain_db), (Some(1500.5), Some(6.0)));
                assert_eq!(*pixel_format, Some(crate::gige::PixelFormat::BayerRG8));
                assert_eq!(*trigger_mode, crate::gige::TriggerMode::Software);
                assert_eq!(*timeout_ms, 1000);
            }
            other => panic!("{other:?}"),
        }
        let c = parse(&gige("trigger_mode = \"line1\"")).unwrap();
        assert!(matches!(
            c.source,
            SourceConfig::Gige {
                trigger_mode: crate::gige::TriggerMode::Line(1),
                camera_id: None,
                ..
            }
        ));
        for (keys, key) in [
            ("camera_id = \"\"", "source.camera_id"),
            ("exposure_us = 0", "source.exposure_us"),
            ("exposure_us = -3.5", "source.exposure_us"),
            ("gain_db = 300", "source.gain_db"),
            ("pixel_format = \"YUV422\"", "source.pixel_format"),
            ("trigger_mode = \"hardware\"", "source.trigger_mode"),
            ("trigger_mode = \"software\"", "source.trigger_mode"),
            (
                "trigger_mode = \"line1\"\ntrigger = \"triggered\"",
                "source.trigger_mode",
            ),
            ("timeout_ms = 0", "source.timeout_ms"),
            ("serial = \"x\"", "serial"),
        ] {
            let e = parse(&gige(keys)).unwrap_err();
            assert!(e.contains(key), "{keys}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn publish_ok_accepts_every_nth() {
        assert_eq!("every:5".parse::<PublishOk>(), Ok(PublishOk::EveryNth(5)));
        assert!("every:0".parse::<PublishOk>().is_err());
        assert!("some".parse::<PublishOk>().is_err());
    }
}
