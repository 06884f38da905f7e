//! The PLC's OPC UA server (async-opcua, feature `opcua`): one `Inspection` object under
//! Objects, in the namespace `urn:inspectd:<device_id>`, with the last verdict as variables and
//! a `Trigger(partId)` method that runs one inspection through [`Shared::trigger`] — the path
//! MQTT and Modbus triggers take — and returns its answer (README, "OPC UA").
//!
//! The variables follow every verdict, whatever triggered it (the inference thread's verdict
//! hook writes a [`Board`]; the server task copies it into the address space), so a PLC that
//! only subscribes sees Modbus, MQTT and continuous verdicts too. A `Trigger` call waits on a
//! oneshot channel, never on a tokio worker: the inference thread answers it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use inspectd_cam::error::bad_input;
use inspectd_contract::limits::MAX_PART_ID_BYTES;
use inspectd_contract::v1;
use opcua::server::address_space::{AddressSpace, MethodBuilder, ObjectBuilder, VariableBuilder};
use opcua::server::diagnostics::{DiagnosticsNodeManagerBuilder, NamespaceMetadata};
use opcua::server::node_manager::memory::{
    CoreNodeManagerBuilder, InMemoryNodeManager, InMemoryNodeManagerBuilder,
    InMemoryNodeManagerImpl,
};
use opcua::server::node_manager::{MethodCall, RequestContext, ServerContext};
use opcua::server::{ServerBuilder, ServerEndpoint, ServerUserToken, ANONYMOUS_USER_TOKEN_ID};
use opcua::sync::RwLock;
use opcua::types::{
    DataTypeId, DataValue, NodeId, ObjectId, ObjectTypeId, QualifiedName, StatusCode, Variant,
};
use tokio::sync::watch;

use crate::shared::{Outcome, Reply, Shared};

/// The namespace of a box's nodes: `urn:inspectd:<device_id>`.
pub fn namespace_uri(device_id: &str) -> String {
    format!("urn:inspectd:{device_id}")
}

/// The variables of the `Inspection` object, in browse order: (name, data type). Their node
/// ids are `s=Inspection.<name>`.
pub const VARIABLES: [(&str, DataTypeId); 9] = [
    ("Ready", DataTypeId::Boolean),
    ("LastVerdict", DataTypeId::String),
    ("LastLabel", DataTypeId::String),
    ("LastConfidence", DataTypeId::Double),
    ("LastPartId", DataTypeId::String),
    ("LastSeq", DataTypeId::UInt64),
    ("LatencyMs", DataTypeId::Double),
    ("Heartbeat", DataTypeId::UInt32),
    ("ErrorCode", DataTypeId::UInt16),
];

/// A call waits for its answer this much longer than `trigger_timeout_ms`: the time to inspect
/// a frame that came just before the deadline.
pub const CALL_GRACE: Duration = Duration::from_secs(2);

/// The last answer, as the variables show it.
#[derive(Clone, Debug, PartialEq)]
pub struct Last {
    /// `none` before the first, then `ok`, `defect`, `suspect` or `error`.
    pub verdict: &'static str,
    pub label: String,
    /// P(defect) (the Modbus `confidence_permille` / 1000); 0 with an error.
    pub confidence: f64,
    pub part_id: String,
    /// The MQTT `seq` of the verdict; 0 with an error.
    pub seq: u64,
    /// Trigger → answer for a `Trigger` call; frame → verdict for other verdicts.
    pub latency_ms: f64,
    /// The Modbus `error_code`: 0 none, 1 camera lost, 2 model error, 3 trigger timeout, 4 busy.
    pub error_code: u16,
}

impl Default for Last {
    fn default() -> Last {
        Last {
            verdict: "none",
            label: String::new(),
            confidence: 0.0,
            part_id: String::new(),
            seq: 0,
            latency_ms: 0.0,
            error_code: 0,
        }
    }
}

impl Last {
    fn from_outcome(o: &Outcome) -> Last {
        let latency_ms = o.latency.as_secs_f64() * 1000.0;
        match &o.result {
            Ok(i) => Last {
                verdict: v1::Kind::from(i.kind).as_str(),
                label: i.label.clone(),
                confidence: i.p_defect as f64,
                part_id: o.part_id.clone(),
                seq: i.seq,
                latency_ms,
                error_code: 0,
            },
            Err(e) => Last {
                verdict: "error",
                part_id: o.part_id.clone(),
                latency_ms,
                error_code: e.code(),
                ..Last::default()
            },
        }
    }

    /// `Trigger`'s output arguments: verdict, label, confidence, seq, errorCode.
    fn outputs(&self) -> Vec<Variant> {
        vec![
            Variant::from(self.verdict),
            Variant::from(self.label.as_str()),
            Variant::Double(self.confidence),
            Variant::UInt64(self.seq),
            Variant::UInt16(self.error_code),
        ]
    }
}

/// Where verdicts and trigger answers land for the OPC UA variables; written from the
/// inference thread, read by the server task (a watch: only the newest value matters).
pub struct Board {
    tx: watch::Sender<Last>,
}

impl Default for Board {
    fn default() -> Board {
        Board {
            tx: watch::channel(Last::default()).0,
        }
    }
}

impl Board {
    /// Every verdict (the inference thread's hook), from any trigger path or continuous mode.
    pub fn verdict(&self, v: &v1::Verdict) {
        self.tx.send_replace(Last {
            verdict: v.verdict.as_str(),
            label: v.label.clone(),
            confidence: v.p_defect.unwrap_or(f64::NAN),
            part_id: v.part_id.clone().unwrap_or_default(),
            seq: v.seq,
            latency_ms: v.latency_ms.as_ref().map_or(f64::NAN, |l| l.total),
            error_code: 0,
        });
    }

    /// A `Trigger` call's answer (after its verdict, if it has one).
    fn answered(&self, o: &Outcome) {
        self.tx.send_replace(Last::from_outcome(o));
    }

    pub fn last(&self) -> Last {
        self.tx.borrow().clone()
    }
}

/// How the server is set up (`[plc]` opcua keys, resolved).
pub struct Settings {
    pub listen: SocketAddr,
    pub device_id: String,
    /// Certificate and private key: with them, Basic256Sha256 Sign&Encrypt; without, None.
    pub cert: Option<(PathBuf, PathBuf)>,
    pub pki_dir: PathBuf,
    pub anonymous: bool,
    /// (user, password) pairs.
    pub users: Vec<(String, String)>,
    pub trigger_timeout: Duration,
}

/// Reads `user:password` lines (blank lines and `#` comments skipped). Errors name the line,
/// never its content.
pub fn read_users(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut users = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((u, p)) if !u.trim().is_empty() && !p.is_empty() => {
                users.push((u.trim().to_string(), p.to_string()))
            }
            _ => {
                return Err(format!(
                    "line {}: expected user:password (both non-empty)",
                    i + 1
                ))
            }
        }
    }
    if users.is_empty() {
        return Err("no user:password line".into());
    }
    Ok(users)
}

/// The host clients are told to connect to: the listen address, or the host name for a wildcard.
fn endpoint_host(listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into())
    } else {
        listen.ip().to_string()
    }
}

/// The node manager of the box's namespace.
struct Inspection {
    ns: u16,
    uri: String,
    shared: Arc<Shared>,
    board: Arc<Board>,
    timeout: Duration,
}

impl Inspection {
    fn id(&self, name: &str) -> NodeId {
        NodeId::new(self.ns, name)
    }

    /// One `Trigger` call: the answer, or an `error` with code 3 when none comes in time.
    async fn trigger(&self, part_id: String) -> Last {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let board = self.board.clone();
        let at = Instant::now();
        let reply = Reply::new(&part_id, at, move |o: Outcome| {
            board.answered(&o);
            let _ = tx.send(o);
        });
        if let Err(e) = self.shared.trigger(part_id.clone(), reply) {
            tracing::info!("OPC UA trigger for part {part_id} answered with error: {e}");
        }
        match tokio::time::timeout(self.timeout + CALL_GRACE, rx).await {
            Ok(Ok(o)) => Last::from_outcome(&o),
            // Dropped unanswered cannot happen (a Reply answers when dropped); no answer in time:
            // the caller gets a timeout now, the variables the answer when it comes.
            _ => Last {
                verdict: "error",
                part_id,
                latency_ms: at.elapsed().as_secs_f64() * 1000.0,
                error_code: 3,
                ..Last::default()
            },
        }
    }
}

/// A `partId` a trigger takes: 1 to `MAX_PART_ID_BYTES` bytes without control characters.
fn part_id_argument(args: &[Variant]) -> Option<String> {
    match args {
        [Variant::String(s)] => s
            .value()
            .as_ref()
            .filter(|s| {
                !s.is_empty() && s.len() <= MAX_PART_ID_BYTES && !s.chars().any(char::is_control)
            })
            .cloned(),
        _ => None,
    }
}

#[async_trait]
impl InMemoryNodeManagerImpl for Inspection {
    async fn init(&self, space: &mut AddressSpace, _context: ServerContext) {
        let object = self.id("Inspection");
        // Browse names in our namespace (a client's browse path is `1:Inspection`).
        let qn = |name: &str| QualifiedName::new(self.ns, name);
        ObjectBuilder::new(&object, qn("Inspection"), "Inspection")
            .organized_by(ObjectId::ObjectsFolder)
            .has_type_definition(ObjectTypeId::BaseObjectType)
            .insert(space);
        let last = Last::default();
        for (name, data_type) in VARIABLES {
            let value = match name {
                "Ready" => Variant::Boolean(false),
                "Heartbeat" => Variant::UInt32(0),
                _ => variant_of(&last, name),
            };
            VariableBuilder::new(&self.id(&format!("Inspection.{name}")), qn(name), name)
                .component_of(object.clone())
                .data_type(data_type)
                .value(value)
                .insert(space);
        }
        let method = self.id("Inspection.Trigger");
        MethodBuilder::new(&method, qn("Trigger"), "Trigger")
            .component_of(object.clone())
            .executable(true)
            .user_executable(true)
            .input_args(
                space,
                &self.id("Inspection.Trigger.InputArguments"),
                &[("partId", DataTypeId::String).into()],
            )
            .output_args(
                space,
                &self.id("Inspection.Trigger.OutputArguments"),
                &[
                    ("verdict", DataTypeId::String).into(),
                    ("label", DataTypeId::String).into(),
                    ("confidence", DataTypeId::Double).into(),
                    ("seq", DataTypeId::UInt64).into(),
                    ("errorCode", DataTypeId::UInt16).into(),
                ],
            )
            .insert(space);
    }

    fn name(&self) -> &str {
        "inspectd"
    }

    fn namespaces(&self) -> Vec<NamespaceMetadata> {
        vec![NamespaceMetadata {
            namespace_uri: self.uri.clone(),
            namespace_index: self.ns,
            ..Default::default()
        }]
    }

    async fn call(
        &self,
        _context: &RequestContext,
        _space: &RwLock<AddressSpace>,
        methods: &mut [&mut &mut MethodCall],
    ) -> Result<(), StatusCode> {
        let trigger = self.id("Inspection.Trigger");
        for m in methods {
            if m.method_id() != &trigger {
                m.set_status(StatusCode::BadMethodInvalid);
                continue;
            }
            let Some(part_id) = part_id_argument(m.arguments()) else {
                m.set_argument_error(vec![StatusCode::BadInvalidArgument]);
                m.set_status(StatusCode::BadInvalidArgument);
                continue;
            };
            let answer = self.trigger(part_id).await;
            m.set_outputs(answer.outputs());
            m.set_status(StatusCode::Good);
        }
        Ok(())
    }
}

/// A `Last*`/`LatencyMs`/`ErrorCode` variable's value.
fn variant_of(last: &Last, name: &str) -> Variant {
    match name {
        "LastVerdict" => Variant::from(last.verdict),
        "LastLabel" => Variant::from(last.label.as_str()),
        "LastConfidence" => Variant::Double(last.confidence),
        "LastPartId" => Variant::from(last.part_id.as_str()),
        "LastSeq" => Variant::UInt64(last.seq),
        "LatencyMs" => Variant::Double(last.latency_ms),
        "ErrorCode" => Variant::UInt16(last.error_code),
        _ => Variant::Empty,
    }
}

/// Binds the server and checks its certificate, key and users: every problem is a bad input
/// naming its key. The returned future serves until `stop`.
pub async fn start(
    settings: Settings,
    shared: Arc<Shared>,
    board: Arc<Board>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| {
            bad_input(format!(
                "plc.opcua_listen opc.tcp://{}: cannot bind: {e}",
                settings.listen
            ))
        })?;
    let port = listener
        .local_addr()
        .map_or(settings.listen.port(), |a| a.port());
    let uri = namespace_uri(&settings.device_id);
    let mut b = ServerBuilder::new()
        // The core namespace, then ours (so that it is ns=1), then the server's diagnostics.
        .without_node_managers()
        .with_node_manager(InMemoryNodeManagerBuilder::new(CoreNodeManagerBuilder))
        .application_name(format!("inspectd {}", settings.device_id))
        .application_uri(format!("{uri}:server"))
        .product_uri("urn:inspectd")
        .host(endpoint_host(settings.listen))
        .port(port)
        .pki_dir(&settings.pki_dir)
        .create_sample_keypair(false)
        // Clients for Sign&Encrypt are trusted by an operator (pki_dir/trusted/certs), never
        // on first sight.
        .trust_client_certs(false)
        .discovery_urls(vec!["/".to_owned()])
        .max_timeout_ms(
            (settings.trigger_timeout + CALL_GRACE + Duration::from_secs(1)).as_millis() as u32,
        );
    let (ns_uri, sh, bd, timeout) = (
        uri.clone(),
        shared.clone(),
        board.clone(),
        settings.trigger_timeout,
    );
    b = b
        .with_node_manager(InMemoryNodeManagerBuilder::new(
            move |context: ServerContext, space: &mut AddressSpace| {
                let ns = context
                    .type_tree
                    .write()
                    .namespaces_mut()
                    .add_namespace(&ns_uri);
                space.add_namespace(&ns_uri, ns);
                Inspection {
                    ns,
                    uri: ns_uri,
                    shared: sh,
                    board: bd,
                    timeout,
                }
            },
        ))
        .with_node_manager(DiagnosticsNodeManagerBuilder);
    let mut tokens: Vec<String> = vec![];
    if settings.anonymous {
        tokens.push(ANONYMOUS_USER_TOKEN_ID.to_owned());
    }
    for (i, (user, pass)) in settings.users.iter().enumerate() {
        let id = format!("user{i}");
        b = b.add_user_token(
            &id,
            ServerUserToken::user_pass(user.as_str(), pass.as_str()),
        );
        tokens.push(id);
    }
    let endpoint = if let Some((cert, key)) = &settings.cert {
        opcua::crypto::CertificateStore::read_cert(cert)
            .map_err(|e| bad_input(format!("plc.opcua_cert {}: {e}", cert.display())))?;
        opcua::crypto::CertificateStore::read_pkey(key)
            .map_err(|e| bad_input(format!("plc.opcua_key {}: {e}", key.display())))?;
        b = b.certificate_path(cert).private_key_path(key);
        ServerEndpoint::new_basic256sha256_sign_encrypt("/", &tokens)
    } else {
        ServerEndpoint::new_none("/", &tokens)
    };
    let (server, handle) = b
        .add_endpoint("inspection", endpoint)
        .default_endpoint("inspection")
        .build()
        .map_err(|e| {
            bad_input(format!(
                "plc.opcua_listen: the OPC UA server refused its settings: {e}"
            ))
        })?;
    let nm = handle
        .node_managers()
        .get_of_type::<InMemoryNodeManager<Inspection>>()
        .ok_or_else(|| anyhow::anyhow!("OPC UA: the inspection node manager is missing"))?;
    tracing::info!(
        "OPC UA server on opc.tcp://{}:{port}/, namespace {uri}, security {}",
        settings.listen.ip(),
        if settings.cert.is_some() {
            "Basic256Sha256 Sign&Encrypt"
        } else {
            "None"
        }
    );
    Ok(async move {
        let serving = server.run_with(listener);
        tokio::pin!(serving);
        let mut stop = stop;
        let mut rx = board.tx.subscribe();
        let subs = handle.subscriptions().clone();
        let ns = nm.inner().ns;
        let id = |name: &str| NodeId::new(ns, format!("Inspection.{name}"));
        let set = |name: &str, v: Variant| {
            let _ = nm.set_value(&subs, &id(name), None, DataValue::new_now(v));
        };
        let mut ready = None;
        let mut heartbeat: u32 = 0;
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_beat = Instant::now();
        loop {
            tokio::select! {
                r = &mut serving => {
                    if let Err(e) = r {
                        tracing::error!("OPC UA server: {e}");
                    }
                    return;
                }
                // A new verdict or answer: copy it into the variables (one notification each).
                Ok(()) = rx.changed() => {
                    let last = rx.borrow_and_update().clone();
                    for (name, _) in &VARIABLES[1..7] {
                        set(name, variant_of(&last, name));
                    }
                    set("ErrorCode", variant_of(&last, "ErrorCode"));
                }
                // `Ready` within 100 ms of a change; `Heartbeat` + 1 each second while healthy.
                _ = poll.tick() => {
                    let now = super::ready(&shared);
                    if ready != Some(now) {
                        ready = Some(now);
                        set("Ready", Variant::Boolean(now));
                    }
                    if last_beat.elapsed() >= Duration::from_secs(1) {
                        last_beat += Duration::from_secs(1);
                        if super::healthy(&shared) {
                            heartbeat = heartbeat.wrapping_add(1);
                            set("Heartbeat", Variant::UInt32(heartbeat));
                        }
                    }
                }
                _ = stop.changed() => {
                    handle.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut serving).await;
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::{Inspected, TriggerError};
    use opcua::types::UAString;

    #[test]
    fn users_files_take_user_password_lines_and_name_a_bad_line_without_its_content() {
        let dir = std::env::temp_dir().join(format!("inspectd-opcua-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("users");
        std::fs::write(&f, "# line PLCs\nplc1:s3cret:with colon\n\n  op : pw \n").unwrap();
        assert_eq!(
            read_users(&f).unwrap(),
            vec![
                ("plc1".to_string(), "s3cret:with colon".to_string()),
                ("op".to_string(), " pw ".to_string())
            ]
        );
        std::fs::write(&f, "plc1:ok\nhunter2\n").unwrap();
        let e = read_users(&f).unwrap_err();
        assert!(e.contains("line 2") && !e.contains("hunter2"), "{e}");
        std::fs::write(&f, "plc1:\n").unwrap();
        assert!(read_users(&f).unwrap_err().contains("line 1"));
        std::fs::write(&f, "# nobody\n").unwrap();
        assert!(read_users(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn answers_become_the_documented_outputs() {
        let ok = Outcome {
            part_id: "P-1".into(),
            result: Ok(Inspected {
                kind: crate::verdict::Kind::Defect,
                class: 2,
                label: "dent".into(),
                p_defect: 0.75,
                seq: 17,
            }),
            latency: Duration::from_millis(12),
        };
        let last = Last::from_outcome(&ok);
        assert_eq!(
            last.outputs(),
            vec![
                Variant::from("defect"),
                Variant::from("dent"),
                Variant::Double(0.75),
                Variant::UInt64(17),
                Variant::UInt16(0)
            ]
        );
        assert_eq!((last.part_id.as_str(), last.latency_ms), ("P-1", 12.0));
        let paused = Outcome {
            result: Err(TriggerError::Paused),
            ..ok
        };
        let last = Last::from_outcome(&paused);
        assert_eq!((last.verdict, last.error_code, last.seq), ("error", 4, 0));
    }

    #[test]
    fn a_part_id_argument_is_one_printable_string_of_bounded_length() {
        let s = |v: &str| Variant::String(UAString::from(v));
        assert_eq!(part_id_argument(&[s("P-1")]).as_deref(), Some("P-1"));
        assert_eq!(part_id_argument(&[s("")]), None);
        assert_eq!(part_id_argument(&[s("a\nb")]), None);
        assert_eq!(
            part_id_argument(&[s(&"x".repeat(MAX_PART_ID_BYTES + 1))]),
            None
        );
        assert_eq!(part_id_argument(&[Variant::Int32(1)]), None);
        assert_eq!(part_id_argument(&[s("a"), s("b")]), None);
    }
}
