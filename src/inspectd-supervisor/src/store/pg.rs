//! PostgreSQL: the `--db postgres://…` URL (password from a file or the PGPASSFILE, TLS by
//! `sslmode` through rustls), connecting, and the schema with its migrations.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use postgres::config::{Host, SslMode};
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::db::{Db, Pg, MIGRATE_LOCK};
use crate::params;

/// How the server's certificate is checked (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    /// TLS if the server offers it, its certificate not checked (libpq's default).
    Prefer,
    /// TLS or nothing; the certificate checked against `sslrootcert` if one is given.
    Require,
    /// TLS, the certificate chain checked (not the name).
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

/// A PostgreSQL database to connect to.
#[derive(Clone)]
pub struct PgTarget {
    config: postgres::Config,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The URL without its password (logs, the start-up line).
    pub shown: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Whether `--db` names PostgreSQL (`postgres://` or `postgresql://`) rather than a file.
pub fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One `.pgpass` field matches a value: `*`, or the same text (`\:` and `\\` escaped).
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(f)) = (chars.next(), fields.last_mut()) {
                    f.push(n);
                }
            }
            ':' => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c)
                }
            }
        }
    }
    fields
}

/// The password for (host, port, database, user) from a pgpass file, as libpq reads it.
pub fn pgpass_lookup(text: &str, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f = pgpass_fields(line);
        if f.len() < 5 {
            continue;
        }
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        if m(&f[0], host) && m(&f[1], &port) && m(&f[2], db) && m(&f[3], user) {
            return Some(f[4..].join(":"));
        }
    }
    None
}

fn is_loopback(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(h) => {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

impl PgTarget {
    /// Parses `--db`; `password_file` (`--db-password-file`) and then the PGPASSFILE (or
    /// `~/.pgpass`) give the password when the URL has none. `allow_insecure`: a server that is
    /// not on this machine may be reached without a checked TLS certificate.
    pub fn parse(
        url: &str,
        password_file: Option<&Path>,
        allow_insecure: bool,
    ) -> Result<PgTarget> {
        // sslmode and sslrootcert are read here: tokio-postgres knows neither verify-ca nor
        // verify-full, nor a CA file.
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut mode = TlsMode::Prefer;
        let mut root: Option<PathBuf> = None;
        let mut rest = Vec::new();
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "sslmode" => {
                    mode = match v {
                        "disable" => TlsMode::Disable,
                        "prefer" | "allow" => TlsMode::Prefer,
                        "require" => TlsMode::Require,
                        "verify-ca" => TlsMode::VerifyCa,
                        "verify-full" => TlsMode::VerifyFull,
                        _ => bail!("--db: sslmode={v:?}: one of disable, prefer, require, verify-ca, verify-full"),
                    }
                }
                "sslrootcert" => root = Some(PathBuf::from(percent_decode(v))),
                _ => rest.push(kv),
            }
        }
        let clean = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config: postgres::Config = clean
            .parse()
            .map_err(|e| anyhow!("--db: not a PostgreSQL URL: {e}"))?;
        config.ssl_mode(match mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("inspectd-supervisor");
        }
        let user = config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("PGUSER").ok())
            .or_else(|| std::env::var("USER").ok())
            .ok_or_else(|| anyhow!("--db: no user in the URL (postgres://USER@host/db)"))?;
        config.user(&user);
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        let host = config
            .get_hosts()
            .first()
            .cloned()
            .unwrap_or(Host::Tcp("localhost".into()));
        let port = config.get_ports().first().copied().unwrap_or(5432);
        if config.get_hosts().is_empty() {
            // libpq's default: the local socket.
            config.host_path("/var/run/postgresql");
        }
        if config.get_password().is_none() {
            if let Some(f) = password_file {
                let p = std::fs::read_to_string(f)
                    .with_context(|| format!("--db-password-file {}: cannot read", f.display()))?;
                let p = p.trim_end_matches(['\r', '\n']);
                if p.is_empty() {
                    bail!("--db-password-file {}: empty", f.display());
                }
                config.password(p);
            } else if let Some(p) = pgpass(&host, port, &dbname, &user)? {
                config.password(p);
            }
        }
        let remote = config.get_hosts().iter().any(|h| !is_loopback(h));
        if remote && matches!(mode, TlsMode::Disable | TlsMode::Prefer) && !allow_insecure {
            bail!(
                "--db: the server is not on this machine and sslmode is not require, verify-ca or verify-full (add ?sslmode=verify-full&sslrootcert=CA.pem, or --allow-insecure)"
            );
        }
        let tls = match mode {
            TlsMode::Disable => None,
            _ => Some(tls_config(mode, root.as_deref())?),
        };
        let hostname = match &host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        };
        let shown = format!(
            "postgres://{user}@{hostname}{}/{dbname}",
            if matches!(host, Host::Tcp(_)) {
                format!(":{port}")
            } else {
                String::new()
            }
        );
        Ok(PgTarget { config, tls, shown })
    }

    /// A new connection.
    pub fn connect(&self) -> Result<Db> {
        let client = match &self.tls {
            Some(t) => self.config.connect(Rustls(t.clone())),
            None => self.config.connect(postgres::NoTls),
        }
        .with_context(|| format!("--db {}: cannot connect", self.shown))?;
        Ok(Db::Postgres(Box::new(Pg::new(client))))
    }
}

/// The password from PGPASSFILE (or `~/.pgpass`), if it has a line for this connection. libpq
/// ignores a file that others may read; so does this, with a warning.
fn pgpass(host: &Host, port: u16, db: &str, user: &str) -> Result<Option<String>> {
    let file = match std::env::var_os("PGPASSFILE") {
        Some(f) => PathBuf::from(f),
        None => match std::env::var_os("HOME") {
            Some(h) => Path::new(&h).join(".pgpass"),
            None => return Ok(None),
        },
    };
    let Ok(meta) = std::fs::metadata(&file) else {
        return Ok(None);
    };
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access (chmod 600 it): not read",
            file.display()
        );
        return Ok(None);
    }
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("password file {}: cannot read", file.display()))?;
    // libpq matches a socket connection as "localhost".
    let h = match host {
        Host::Tcp(h) => h.as_str(),
        Host::Unix(_) => "localhost",
    };
    Ok(pgpass_lookup(&text, h, port, db, user))
}

/// Accepts any certificate (libpq's `prefer` and `require` without a CA): the link is
/// encrypted, the server not authenticated.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain, not the name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end: &rustls::pki_types::CertificateDer<'_>,
        inter: &[rustls::pki_types::CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end, inter, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn tls_config(mode: TlsMode, root: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS set-up: {e}"))?;
    let check = mode == TlsMode::VerifyCa || mode == TlsMode::VerifyFull || root.is_some();
    let config = if check && mode != TlsMode::Prefer {
        let mut roots = rustls::RootCertStore::empty();
        match root {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("--db sslrootcert {}: cannot read", path.display()))?;
                for c in CertificateDer::pem_slice_iter(&bytes) {
                    let c = c.map_err(|e| {
                        anyhow!("--db sslrootcert {}: bad PEM: {e}", path.display())
                    })?;
                    roots.add(c).map_err(|e| {
                        anyhow!("--db sslrootcert {}: unusable CA: {e}", path.display())
                    })?;
                }
            }
            None => {
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
            }
        }
        if roots.is_empty() {
            bail!("--db: sslmode={mode:?} needs CA certificates: sslrootcert=FILE in the URL");
        }
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow!("--db: TLS set-up: {e}"))?;
        if mode == TlsMode::VerifyFull {
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
                .with_no_client_auth()
        }
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// tokio-postgres over rustls.
#[derive(Clone)]
struct Rustls(Arc<rustls::ClientConfig>);

struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> MakeTlsConnect<S> for Rustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            config: self.0.clone(),
            name: ServerName::try_from(domain.to_string())?,
        })
    }
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = std::io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(s))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    /// No channel binding: SCRAM authenticates without it (channel_binding=prefer).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// The schema, one step per version. A step only ever adds to what the ones before made.
const MIGRATIONS: &[&str] = &[
    // 1: the tables of the SQLite store, in PostgreSQL's types.
    r#"
CREATE TABLE devices (
    device TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'unknown',
    status TEXT,
    status_at BIGINT,
    status_ts BIGINT,
    last_seen BIGINT NOT NULL,
    stats TEXT,
    stats_at BIGINT,
    offline_alert_at BIGINT,
    seq_hi BIGINT,
    instance TEXT,
    prev_instance TEXT
);
CREATE TABLE verdicts (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    received BIGINT NOT NULL,
    part_id TEXT,
    verdict TEXT NOT NULL,
    label TEXT NOT NULL,
    confidence DOUBLE PRECISION NOT NULL,
    reasons TEXT NOT NULL,
    model TEXT NOT NULL,
    latency_ms DOUBLE PRECISION,
    map_png BYTEA,
    raw TEXT NOT NULL,
    UNIQUE (device, seq)
);
CREATE INDEX verdicts_ts ON verdicts (ts_ms);
CREATE INDEX verdicts_received ON verdicts (received);
CREATE INDEX verdicts_device_ts ON verdicts (device, ts_ms);
CREATE TABLE evidence (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    received BIGINT NOT NULL,
    jpeg BYTEA,
    path TEXT,
    PRIMARY KEY (device, seq),
    CHECK (jpeg IS NOT NULL OR path IS NOT NULL)
);
CREATE INDEX evidence_received ON evidence (received);
CREATE TABLE alerts (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    device TEXT NOT NULL,
    ts TEXT NOT NULL,
    received BIGINT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    seq BIGINT,
    raw TEXT NOT NULL,
    acked_by TEXT,
    acked_at BIGINT
);
-- The message (up to 4096 characters) through its digest: a B-tree entry holds at most 2704 bytes.
CREATE UNIQUE INDEX alerts_unique ON alerts (device, ts, kind, md5(message));
CREATE INDEX alerts_open ON alerts (acked_at, received);
CREATE INDEX alerts_group ON alerts (acked_at, device, kind, severity);
CREATE TABLE stats_samples (
    device TEXT NOT NULL,
    at BIGINT NOT NULL,
    ok BIGINT NOT NULL,
    defect BIGINT NOT NULL,
    suspect BIGINT NOT NULL
);
CREATE INDEX stats_samples_at ON stats_samples (device, at);
CREATE TABLE commands (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    command TEXT NOT NULL,
    payload TEXT NOT NULL,
    sent_at BIGINT NOT NULL,
    sent_by TEXT
);
CREATE TABLE conflicts (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    received BIGINT NOT NULL,
    raw TEXT NOT NULL,
    map_png BYTEA
);
CREATE INDEX conflicts_device ON conflicts (device, seq);
CREATE INDEX conflicts_received ON conflicts (received);
CREATE TABLE seq_gaps (
    device TEXT NOT NULL,
    lo BIGINT NOT NULL,
    hi BIGINT NOT NULL,
    noticed BIGINT NOT NULL,
    PRIMARY KEY (device, lo)
);
CREATE TABLE cmd_results (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    device TEXT NOT NULL,
    ts TEXT NOT NULL,
    received BIGINT NOT NULL,
    command TEXT NOT NULL,
    cmd_id TEXT NOT NULL,
    ok BIGINT NOT NULL,
    detail TEXT NOT NULL,
    UNIQUE (device, ts, command, cmd_id)
);
-- Statuses already applied, by digest: with a share group every instance receives every status
-- (a plain subscription), and the one that comes second must not apply it again.
CREATE TABLE statuses_seen (
    device TEXT NOT NULL,
    digest TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (device, digest)
);
CREATE INDEX statuses_seen_at ON statuses_seen (at);
"#,
];

/// Creates or migrates the schema (under [`MIGRATE_LOCK`]: instances starting together take
/// turns).
pub fn migrate(db: &Db, shown: &str) -> Result<()> {
    db.query("SELECT pg_advisory_lock(?1)", params![MIGRATE_LOCK], |_| {
        Ok(())
    })?;
    let r = (|| {
        // (Without the server's NOTICE that the table exists, on every start.)
        db.batch(
            "SET client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS inspectd_schema (version BIGINT NOT NULL)",
        )?;
        let have: i64 = db.one("SELECT coalesce(max(version), 0) FROM inspectd_schema", &[])?;
        if have > MIGRATIONS.len() as i64 {
            bail!(
                "--db {shown}: schema version {have} is newer than this supervisor's ({}): upgrade it",
                MIGRATIONS.len()
            );
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(have as usize) {
            let v = i as i64 + 1;
            db.tx(|t| {
                t.batch(step)?;
                t.execute(
                    "INSERT INTO inspectd_schema (version) VALUES (?1)",
                    params![v],
                )?;
                Ok(())
            })
            .with_context(|| format!("--db {shown}: migrating the schema to version {v}"))?;
            tracing::info!("database {shown}: schema version {v}");
        }
        Ok(())
    })();
    let _ = db.query(
        "SELECT pg_advisory_unlock(?1)",
        params![MIGRATE_LOCK],
        |_| Ok(()),
    );
    r
}

/// Opens a connection for writing and brings the schema up to date.
pub fn open(t: &PgTarget) -> Result<Db> {
    let db = t.connect()?;
    migrate(&db, &t.shown)?;
    Ok(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_match_like_libpq() {
        let text =
            "# comment\nother:5432:*:*:nope\nlocalhost:*:plant:ops:s3cr\\:et\n*:*:*:*:fallback\n";
        assert_eq!(
            pgpass_lookup(text, "localhost", 5432, "plant", "ops").as_deref(),
            Some("s3cr:et")
        );
        assert_eq!(
            pgpass_lookup(text, "db1", 5433, "plant", "ops").as_deref(),
            Some("fallback")
        );
    }

    #[test]
    fn a_url_keeps_its_options_and_loses_its_password_in_the_logs() {
        let t = PgTarget::parse(
            "postgresql://ops:pw@127.0.0.1:5433/plant?sslmode=disable&connect_timeout=3",
            None,
            false,
        )
        .unwrap();
        assert_eq!(t.shown, "postgres://ops@127.0.0.1:5433/plant");
        assert!(t.tls.is_none());
        assert_eq!(t.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        let e = PgTarget::parse("postgres://ops@db.plant/plant", None, false)
            .err()
            .unwrap();
        assert!(format!("{e}").contains("sslmode"), "{e}");
        assert!(
            PgTarget::parse("postgres://ops@db.plant/plant?sslmode=require", None, false).is_ok()
        );
        assert!(
            PgTarget::parse("postgres://ops@db.plant/plant?sslmode=bogus", None, true).is_err()
        );
    }
}
