//! The v1 messages: what a device publishes on `status`, `verdict`, `alert`, `stats` and
//! `cmd_result`, and the command payloads it accepts on `cmd/{name}`.
//!
//! The wire format is pinned by `tests/golden/`: fields are declared in **alphabetical order**
//! because v1 payloads were first written through `serde_json::Value`, whose objects sort their
//! keys; a struct serializes its fields in declaration order, so this order keeps the bytes.
//! Floats are `f64` on the wire (f32 values were widened by `Value`); a non-finite float is
//! written `null` and read back as NaN. Fields a receiver can do without are `#[serde(default)]`
//! so that a message from an older or simpler publisher still decodes.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `schema` tag: serializes as its string and refuses any other on decoding.
macro_rules! schema_tag {
    ($(#[$m:meta])* $name:ident = $s:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name;

        impl $name {
            pub const SCHEMA: &'static str = $s;
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let got = String::deserialize(d)?;
                if got == $s {
                    Ok($name)
                } else {
                    Err(serde::de::Error::custom(format_args!(
                        "expected schema {}, got {got:?}",
                        $s
                    )))
                }
            }
        }
    };
}

schema_tag!(
    /// `inspect.status/1`
    StatusSchema = "inspect.status/1"
);
schema_tag!(
    /// `inspect.verdict/1`
    VerdictSchema = "inspect.verdict/1"
);
schema_tag!(
    /// `inspect.alert/1`
    AlertSchema = "inspect.alert/1"
);
schema_tag!(
    /// `inspect.stats/1`
    StatsSchema = "inspect.stats/1"
);
schema_tag!(
    /// `inspect.cmd_result/1`
    CmdResultSchema = "inspect.cmd_result/1"
);

/// `null` (what a NaN or infinity is written as) reads back as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn scores_nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    Ok(BTreeMap::<String, Option<f64>>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or(f64::NAN)))
        .collect())
}

/// A key that may be absent (`None`), present and `null` (`Some(None)`), or set.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn serialize_message<T: Serialize>(m: &T) -> Vec<u8> {
    // Only maps with non-string keys or failing Serialize impls can fail; ours have neither.
    serde_json::to_vec(m).unwrap_or_default()
}

macro_rules! to_json {
    ($($t:ty),*) => {$(
        impl $t {
            /// The payload as published.
            pub fn to_json(&self) -> Vec<u8> {
                serialize_message(self)
            }
        }
    )*};
}
to_json!(Status, Verdict, Alert, Stats, CmdResult);

// ---------------------------------------------------------------------------------------------
// status

/// `online` while connected, `stopping` on a clean shutdown, `offline` from the last will or at
/// the end of a clean shutdown (then with `stopped: true`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Online,
    Offline,
    Stopping,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Online => "online",
            State::Offline => "offline",
            State::Stopping => "stopping",
        }
    }
}

/// `{p}/status` (QoS 1, retained).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `ok` or `lost`.
    #[serde(default)]
    pub camera: String,
    /// Each camera's state, on a box with named cameras (`[[source]]`): `camera` above is then
    /// `ok` only when every one is. (Added within v1: absent from a box with one unnamed
    /// camera, and ignored by older receivers.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cameras: Vec<CameraState>,
    #[serde(default)]
    pub device: String,
    /// `running` or `stalled`.
    #[serde(default)]
    pub inference: String,
    /// A random id of the daemon process that sent it (its last will carries the same): two
    /// live processes under one `device` show two instances. (Added within v1: absent from an
    /// older box, and ignored by older receivers.)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    #[serde(default)]
    pub model: StatusModel,
    /// `connected`, or `disconnected` in the last will.
    #[serde(default)]
    pub mqtt: String,
    #[serde(default)]
    pub paused: bool,
    pub schema: StatusSchema,
    pub state: State,
    /// On the last status of a clean stop (`state` `offline`): true. The last will leaves it out,
    /// so a receiver tells a box that stopped from one that vanished. (Added within v1: older
    /// receivers ignore it; from an older box it is absent, and every `offline` reads as lost.)
    #[serde(default, skip_serializing_if = "is_false")]
    pub stopped: bool,
    #[serde(default)]
    pub ts: String,
    #[serde(default)]
    pub uptime_s: u64,
    /// The daemon's version.
    #[serde(default)]
    pub version: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One named camera of a box, as its status reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CameraState {
    /// `ok` or `lost`.
    pub camera: String,
    /// The camera's name (`source[i].camera`).
    pub name: String,
    /// The camera's source, as the daemon describes it (`rtsp rtsp://cam-2/…`, no password).
    pub source: String,
    /// `continuous` or `triggered`.
    pub trigger: String,
}

/// The model a device runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusModel {
    pub name: String,
    pub sha256: String,
    /// Which variant (f32, int8) runs and why; `null` for a model without variants.
    pub variant: Option<Variant>,
    pub version: String,
}

/// The running model variant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Variant {
    /// Median forward pass per variant, when they were timed.
    pub forward_ms: BTreeMap<String, f64>,
    /// `timed`, `cached` or `forced`.
    pub how: String,
    pub name: String,
}

// ---------------------------------------------------------------------------------------------
// verdict

/// What a verdict says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ok,
    Defect,
    /// The label may be right but the map does not back it (see `reasons`).
    Suspect,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Defect => "defect",
            Kind::Suspect => "suspect",
        }
    }
}

/// `{p}/verdict` (QoS 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    #[serde(default)]
    pub cam: Cam,
    /// The camera that took the frame, on a box with named cameras (`[[source]]`). (Added
    /// within v1: absent from a box with one unnamed camera, and ignored by older receivers.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// The probability of the decision itself: `p_defect` for a defect (or suspect defect),
    /// P(ok) for an ok verdict. Kept for v1 consumers; new ones read `p_defect` and `p_label`.
    #[serde(deserialize_with = "nan_if_null")]
    pub confidence: f64,
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub frame: FrameInfo,
    pub label: String,
    /// Absent from a publisher that does not measure (the edge always sends it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Latency>,
    #[serde(default)]
    pub model: ModelId,
    /// The probability that the part is defective, as the decision computed it: 1 − P(ok) with
    /// an ok label, the score of a single-output (sigmoid) model, P(top-1) otherwise. Absent
    /// from publishers before it was added (then read `confidence`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_defect: Option<f64>,
    /// The probability of the class `label` names (the top class the verdict is about).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_label: Option<f64>,
    /// The part id of a triggered capture, `null` otherwise.
    #[serde(default)]
    pub part_id: Option<String>,
    /// Why the verdict is suspect (empty otherwise). `null` reads as empty.
    #[serde(default, deserialize_with = "reasons_or_null")]
    pub reasons: Vec<Reason>,
    pub schema: VerdictSchema,
    /// Probability per label.
    #[serde(default, deserialize_with = "scores_nan_if_null")]
    pub scores: BTreeMap<String, f64>,
    /// Monotonic per device, across restarts; (`device`, `seq`) identifies a verdict.
    pub seq: u64,
    /// When the frame was captured (RFC 3339 UTC).
    pub ts: String,
    pub verdict: Kind,
}

fn reasons_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Reason>, D::Error> {
    Ok(Option::<Vec<Reason>>::deserialize(d)?.unwrap_or_default())
}

/// The class activation map behind a verdict.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cam {
    /// The class explained.
    pub class: usize,
    pub h: usize,
    pub layer: String,
    pub method: String,
    /// The hottest cell, `[x, y]`.
    pub peak: [usize; 2],
    /// Base64 of an 8-bit grayscale PNG of the map at feature resolution; `null` if it could
    /// not be encoded.
    pub png: Option<String>,
    #[serde(deserialize_with = "nan_if_null")]
    pub raw_max: f64,
    /// Share of the map's mass inside the ROI (1 without one).
    #[serde(deserialize_with = "nan_if_null")]
    pub roi_fraction: f64,
    pub w: usize,
}

/// Model identity in a verdict.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelId {
    pub name: String,
    pub sha256: String,
    pub version: String,
}

/// Where the frame came from (file name, camera) and its size.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FrameInfo {
    pub height: u32,
    pub origin: String,
    pub width: u32,
}

/// Milliseconds per stage of one frame; `total` is decode → verdict ready.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    #[serde(deserialize_with = "nan_if_null")]
    pub cam: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub decode: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub forward: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub preprocess: f64,
    /// Time the frame waited for the inference thread.
    #[serde(deserialize_with = "nan_if_null")]
    pub queue: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub total: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub verdict: f64,
}

/// Why a prediction is suspect: `code` and the operator's `text`, plus the numbers of that code
/// (`marginal`: confidence, band; `outside_roi`: fraction, min; `on_ignore_zone`: zone,
/// fraction, max; `diffuse`: spread, max). A bare string reads as a reason with that text.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "ReasonRepr")]
pub struct Reason {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub band: Option<[f64; 2]>,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spread: Option<f64>,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ReasonRepr {
    Text(String),
    Full {
        band: Option<[f64; 2]>,
        #[serde(default)]
        code: String,
        confidence: Option<f64>,
        fraction: Option<f64>,
        max: Option<f64>,
        min: Option<f64>,
        spread: Option<f64>,
        #[serde(default)]
        text: String,
        zone: Option<String>,
    },
}

impl From<ReasonRepr> for Reason {
    fn from(r: ReasonRepr) -> Reason {
        match r {
            ReasonRepr::Text(text) => Reason {
                text,
                ..Reason::default()
            },
            ReasonRepr::Full {
                band,
                code,
                confidence,
                fraction,
                max,
                min,
                spread,
                text,
                zone,
            } => Reason {
                band,
                code,
                confidence,
                fraction,
                max,
                min,
                spread,
                text,
                zone,
            },
        }
    }
}

impl Reason {
    /// What to show: the text, else the code.
    pub fn shown(&self) -> &str {
        if self.text.is_empty() {
            &self.code
        } else {
            &self.text
        }
    }
}

// ---------------------------------------------------------------------------------------------
// alert

/// `{p}/alert` (QoS 1): suspect predictions and health problems. `kind` says which, and which
/// of the optional fields come with it (`camera_lost`: source; `trigger_timeout`: part_id;
/// `suspect`: seq, label, confidence, reasons, part_id; `spool_full`: dropped_total).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The camera the alert is about (`camera_lost`, `camera_recovered`, `suspect`,
    /// `trigger_timeout`, `model_error`), on a box with named cameras; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default)]
    pub device: String,
    /// Messages the spool dropped so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_total: Option<u64>,
    /// `suspect`, `camera_lost`, `camera_recovered`, `model_error`, `trigger_timeout`,
    /// `spool_full`, …
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub message: String,
    /// Absent, or present (and `null` when the capture was not triggered).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub part_id: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<Reason>>,
    pub schema: AlertSchema,
    /// The suspect verdict's seq (`null` when it could not be stored).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub seq: Option<Option<u64>>,
    /// `info`, `warning` or `critical`.
    #[serde(default = "warning")]
    pub severity: String,
    /// The camera or folder a `camera_lost` is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub ts: String,
}

fn warning() -> String {
    "warning".into()
}

impl Alert {
    /// An alert with only the fields every kind has.
    pub fn new(device: &str, ts: String, kind: &str, severity: &str, message: &str) -> Alert {
        Alert {
            camera: None,
            confidence: None,
            device: device.into(),
            dropped_total: None,
            kind: kind.into(),
            label: None,
            message: message.into(),
            part_id: None,
            reasons: None,
            schema: AlertSchema,
            seq: None,
            severity: severity.into(),
            source: None,
            ts,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// stats

/// `{p}/stats` (QoS 0), every `stats.interval_s`. Counters are cumulative since start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Frames that did not decode.
    #[serde(default)]
    pub bad_frames: u64,
    /// Per camera, on a box with named cameras (absent otherwise; the totals above count
    /// every camera).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cameras: Vec<CameraStats>,
    /// Command answers not sent (over the answer budget).
    #[serde(default)]
    pub commands_unanswered: u64,
    #[serde(default)]
    pub device: String,
    /// Frames replaced in the slot before inference took them.
    #[serde(default)]
    pub dropped_frames: u64,
    #[serde(default)]
    pub errors: u64,
    /// Verdicts per second over the last interval.
    #[serde(default, deserialize_with = "nan_if_null")]
    pub fps: f64,
    #[serde(default)]
    pub frames: u64,
    /// Percentiles per stage (`decode`, `preprocess`, `forward`, `cam`, `verdict`, `spool`,
    /// `total`).
    #[serde(default)]
    pub latency_ms: BTreeMap<String, Percentiles>,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub rss_bytes: u64,
    pub schema: StatsSchema,
    #[serde(default)]
    pub spool: SpoolStats,
    #[serde(default)]
    pub ts: String,
    /// `ok` verdicts not published (`publish_ok`).
    #[serde(default)]
    pub unpublished_ok: u64,
    #[serde(default, deserialize_with = "nan_if_null")]
    pub uptime_s: f64,
    pub verdicts: VerdictCounts,
}

/// One named camera's counters (cumulative since start).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CameraStats {
    /// Frames that did not decode.
    pub bad_frames: u64,
    /// Frames replaced before inference took them.
    pub dropped_frames: u64,
    /// Frames captured.
    pub frames: u64,
    pub name: String,
    /// Verdicts decided on this camera's frames.
    pub verdicts: VerdictCounts,
}

/// Nearest-rank percentiles over the recent frames; `null` before the first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// The spool's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpoolStats {
    pub bytes: u64,
    pub depth: u64,
    pub dropped: u64,
    pub errors: u64,
    pub max_bytes: u64,
    pub refused: u64,
}

/// Verdicts by kind, published or not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictCounts {
    pub defect: u64,
    pub ok: u64,
    pub suspect: u64,
}

// ---------------------------------------------------------------------------------------------
// cmd_result

/// `{p}/cmd_result` (QoS 1): the answer to a command; `detail` when it ran, `error` when it was
/// refused (and changed nothing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CmdResult {
    /// The command name (cut to [`crate::limits::MAX_NAME_CHARS`] characters).
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default)]
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The request's `id`, echoed; `null` without one.
    #[serde(default)]
    pub id: Option<String>,
    pub ok: bool,
    pub schema: CmdResultSchema,
    pub ts: String,
}

impl CmdResult {
    /// The answer to `command` (request `id`): its detail, or why it was refused.
    pub fn new(
        device: &str,
        ts: String,
        command: &str,
        id: Option<String>,
        result: &Result<String, String>,
    ) -> CmdResult {
        CmdResult {
            command: command.into(),
            detail: result.as_ref().ok().cloned(),
            device: device.into(),
            error: result.as_ref().err().cloned(),
            id,
            ok: result.is_ok(),
            schema: CmdResultSchema,
            ts,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// commands

/// A command as sent on `{p}/cmd/{name}`. Every payload may carry an `id` (echoed in the
/// `cmd_result`; a string of at most [`crate::limits::MAX_ID_BYTES`], or a number, read as its
/// decimal text); an empty payload is an empty object.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Capture now, for this part.
    Trigger(Trigger),
    /// Change verdict rules (only the keys given).
    Set(Set),
    Pause(Plain),
    Resume(Plain),
    /// Reload the model file (only if it has `sha256`, when given).
    ReloadModel(ReloadModel),
    /// Re-send the status.
    Rebirth(Plain),
}

/// `trigger`: `part_id` is 1 to [`crate::limits::MAX_PART_ID_BYTES`] bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Which camera to inspect with (`source[i].camera`); needed on a box with several
    /// triggered cameras, optional with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    #[serde(
        default,
        deserialize_with = "request_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    pub part_id: String,
}

/// `set`: the verdict rules to change. `max_spread` and `suspect_band` may be set to `null`
/// (off).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Set {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_ok_evidence: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defect_threshold: Option<f64>,
    #[serde(
        default,
        deserialize_with = "request_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ignore_fraction: Option<f64>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_spread: Option<Option<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_roi_fraction: Option<f64>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub suspect_band: Option<Option<[f64; 2]>>,
}

/// `reload_model`: `sha256` is 64 hex digits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadModel {
    #[serde(
        default,
        deserialize_with = "request_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `pause`, `resume`, `rebirth`: nothing but the id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plain {
    #[serde(
        default,
        deserialize_with = "request_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
}

/// A request id: a string, or a number (its decimal text, as echoed in the `cmd_result`).
fn request_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a string or a number")]
    enum Id {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(match Option::<Id>::deserialize(d)? {
        None => None,
        Some(Id::Text(s)) => Some(s),
        Some(Id::Number(n)) => Some(n.to_string()),
    })
}

/// The command names a device knows.
pub const COMMANDS: [&str; 6] = [
    "trigger",
    "set",
    "pause",
    "resume",
    "reload_model",
    "rebirth",
];

impl Command {
    /// The topic level after `cmd/`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Trigger(_) => "trigger",
            Command::Set(_) => "set",
            Command::Pause(_) => "pause",
            Command::Resume(_) => "resume",
            Command::ReloadModel(_) => "reload_model",
            Command::Rebirth(_) => "rebirth",
        }
    }

    /// The payload as published.
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            Command::Trigger(c) => serialize_message(c),
            Command::Set(c) => serialize_message(c),
            Command::Pause(c) | Command::Resume(c) | Command::Rebirth(c) => serialize_message(c),
            Command::ReloadModel(c) => serialize_message(c),
        }
    }

    /// Reads the payload of command `name` (shape only; the device checks values and limits).
    pub fn from_json(name: &str, payload: &[u8]) -> Result<Command, String> {
        let payload: &[u8] = if payload.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            payload
        };
        // The error names the key it is about: `set: defect_threshold: invalid type: ...`.
        fn de<'a, T: Deserialize<'a>>(name: &str, p: &'a [u8]) -> Result<T, String> {
            let mut d = serde_json::Deserializer::from_slice(p);
            let t = serde_path_to_error::deserialize(&mut d).map_err(|e| format!("{name}: {e}"))?;
            d.end().map_err(|e| format!("{name}: {e}"))?;
            Ok(t)
        }
        Ok(match name {
            "trigger" => Command::Trigger(de(name, payload)?),
            "set" => Command::Set(de(name, payload)?),
            "pause" => Command::Pause(de(name, payload)?),
            "resume" => Command::Resume(de(name, payload)?),
            "reload_model" => Command::ReloadModel(de(name, payload)?),
            "rebirth" => Command::Rebirth(de(name, payload)?),
            other => return Err(format!("unknown command {other:?}")),
        })
    }
}
