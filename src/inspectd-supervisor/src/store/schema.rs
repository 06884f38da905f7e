//! The tables, and opening the database (creating and migrating the schema).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::Connection;

use super::db::Db;
use super::pg::{self, PgTarget};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'unknown',
    status TEXT,
    status_at INTEGER,
    status_ts INTEGER,
    last_seen INTEGER NOT NULL,
    stats TEXT,
    stats_at INTEGER
);
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    received INTEGER NOT NULL,
    part_id TEXT,
    verdict TEXT NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    reasons TEXT NOT NULL,
    model TEXT NOT NULL,
    latency_ms REAL,
    map_png BLOB,
    raw TEXT NOT NULL,
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS verdicts_ts ON verdicts (ts_ms);
CREATE INDEX IF NOT EXISTS verdicts_received ON verdicts (received);
CREATE INDEX IF NOT EXISTS verdicts_device_ts ON verdicts (device, ts_ms);
CREATE TABLE IF NOT EXISTS evidence (
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received INTEGER NOT NULL,
    jpeg BLOB NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    ts TEXT NOT NULL,
    received INTEGER NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    seq INTEGER,
    raw TEXT NOT NULL,
    acked_by TEXT,
    acked_at INTEGER,
    UNIQUE (device, ts, kind, message)
);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (acked_at, received);
CREATE INDEX IF NOT EXISTS alerts_group ON alerts (acked_at, device, kind, severity);
CREATE TABLE IF NOT EXISTS stats_samples (
    device TEXT NOT NULL,
    at INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    defect INTEGER NOT NULL,
    suspect INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS stats_samples_at ON stats_samples (device, at);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    command TEXT NOT NULL,
    payload TEXT NOT NULL,
    sent_at INTEGER NOT NULL,
    sent_by TEXT
);
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received INTEGER NOT NULL,
    raw TEXT NOT NULL,
    map_png BLOB
);
CREATE INDEX IF NOT EXISTS conflicts_device ON conflicts (device, seq);
CREATE INDEX IF NOT EXISTS conflicts_received ON conflicts (received);
CREATE TABLE IF NOT EXISTS seq_gaps (
    device TEXT NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    noticed INTEGER NOT NULL,
    PRIMARY KEY (device, lo)
);
CREATE TABLE IF NOT EXISTS cmd_results (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    ts TEXT NOT NULL,
    received INTEGER NOT NULL,
    command TEXT NOT NULL,
    cmd_id TEXT NOT NULL,
    ok INTEGER NOT NULL,
    detail TEXT NOT NULL,
    UNIQUE (device, ts, command, cmd_id)
);
"#;

/// Where the history is: `--db`, a SQLite file or a PostgreSQL URL.
#[derive(Clone, Debug)]
pub enum Target {
    Sqlite(PathBuf),
    Postgres(Box<PgTarget>),
}

impl Target {
    /// `--db` (with `--db-password-file`, and whether a remote server may go unchecked).
    pub fn parse(db: &Path, password_file: Option<&Path>, allow_insecure: bool) -> Result<Target> {
        match db.to_str().filter(|s| pg::is_url(s)) {
            Some(url) => Ok(Target::Postgres(Box::new(PgTarget::parse(
                url,
                password_file,
                allow_insecure,
            )?))),
            None => Ok(Target::Sqlite(db.to_path_buf())),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Target::Postgres(_))
    }

    /// What to call it in messages (a URL without its password).
    pub fn shown(&self) -> String {
        match self {
            Target::Sqlite(p) => p.display().to_string(),
            Target::Postgres(t) => t.shown.clone(),
        }
    }
}

/// Opens (creating or migrating the schema) the database for writing.
pub fn open(t: &Target) -> Result<Db> {
    match t {
        Target::Sqlite(p) => Ok(Db::Sqlite(open_sqlite(p)?)),
        Target::Postgres(t) => pg::open(t),
    }
}

/// A connection for a web request.
pub fn open_read(t: &Target) -> Result<Db> {
    match t {
        Target::Sqlite(p) => Ok(Db::Sqlite(open_read_sqlite(p)?)),
        Target::Postgres(t) => t.connect(),
    }
}

/// The database's size on disk: the SQLite file and its WAL, or PostgreSQL's database.
pub fn db_bytes(db: &Db, t: &Target) -> Result<u64> {
    match t {
        Target::Sqlite(path) => Ok(["", "-wal"]
            .iter()
            .filter_map(|ext| std::fs::metadata(format!("{}{ext}", path.display())).ok())
            .map(|m| m.len())
            .sum()),
        Target::Postgres(_) => Ok(db
            .one::<i64>("SELECT pg_database_size(current_database())", &[])?
            .max(0) as u64),
    }
}

/// Connections for web requests: SQLite opens one per request (cheap); PostgreSQL keeps a few
/// idle ones (a new one costs a server process and a login).
pub struct Readers {
    pub target: Target,
    idle: std::sync::Mutex<Vec<Db>>,
}

/// PostgreSQL connections kept idle for web requests.
const IDLE_READERS: usize = 8;

impl Readers {
    pub fn new(target: Target) -> Readers {
        Readers {
            target,
            idle: Default::default(),
        }
    }

    /// `f` on a connection (blocking: call from a blocking thread).
    pub fn with<T>(&self, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
        let pooled = match &self.target {
            Target::Sqlite(_) => None,
            Target::Postgres(_) => self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop(),
        };
        let db = match pooled {
            Some(db) => db,
            None => open_read(&self.target)?,
        };
        let r = f(&db);
        if let Db::Postgres(pg) = &db {
            if !pg.is_closed() {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < IDLE_READERS {
                    idle.push(db);
                }
            }
        }
        r
    }
}

/// Opens (creating if needed) the SQLite database for writing.
pub fn open_sqlite(path: &Path) -> Result<Connection> {
    let conn =
        Connection::open(path).with_context(|| format!("--db {}: cannot open", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // The writer's statements, the retention's and a page's: all kept prepared.
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "journal_mode", "WAL")
        .with_context(|| format!("--db {}: not a usable SQLite database", path.display()))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)
        .with_context(|| format!("--db {}: cannot create the schema", path.display()))?;
    // Databases from before logins: commands gain who sent them.
    let has_sent_by: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('commands') WHERE name = 'sent_by'",
        [],
        |r| r.get(0),
    )?;
    if !has_sent_by {
        conn.execute_batch("ALTER TABLE commands ADD COLUMN sent_by TEXT")?;
    }
    // Columns added to `devices` since its first version: when the last `device_offline` was
    // raised; the highest seq seen (where gap counting stands); the process (`instance`) that
    // sent the latest `online` status and the one before it.
    for (col, ty) in [
        ("offline_alert_at", "INTEGER"),
        ("seq_hi", "INTEGER"),
        ("instance", "TEXT"),
        ("prev_instance", "TEXT"),
    ] {
        let has: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info('devices') WHERE name = ?1",
            [col],
            |r| r.get(0),
        )?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE devices ADD COLUMN {col} {ty}"))?;
        }
    }
    Ok(conn)
}

fn open_read_sqlite(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}
