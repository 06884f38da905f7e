//! Durable store-and-forward queue of outgoing QoS 1 messages (redb). A message is written here
//! before it is published and deleted on its PUBACK; after a reconnect or a restart everything
//! left is sent again in order. Bounded: when full, the oldest `ok` verdicts are dropped first.
//!
//! The spool survives its disk:
//! - **Bound.** The bound is the smaller of `max_bytes` and what still fits on the spool's
//!   filesystem (statvfs of its folder, checked every second or every [`DISK_RECHECK_BYTES`] of
//!   new messages), counting redb's file overhead ([`FILE_OVERHEAD`]) and leaving
//!   [`DISK_MARGIN`] free so deletions and the seq mark can still be written. Eviction therefore
//!   starts before the disk is full. When something else eats the margin (or redb reuses fewer
//!   freed pages than counted) the spool shrinks below what it holds until the margin is back. Every message that cannot be stored is counted
//!   ([`Spool::refused`]), every evicted one too ([`Spool::dropped`]): none is lost silently.
//! - **I/O errors.** redb refuses every call after an I/O error (`PreviousIo`); the spool then
//!   drops and reopens its database, recounts it and retries the operation once. If that fails
//!   too the error is returned (and the messages counted as refused).
//! - **Damage.** A file that redb cannot open (an error that is not the environment's, or a
//!   panic inside redb) is renamed to `<path>.damaged-<unix seconds>` and a new spool is
//!   created; [`Spool::recovered_from`] names the moved file and the reason. Opening never
//!   panics.
//! - **`seq` is never reused.** Its high-water mark lives in its own small file `<path>.seq`
//!   (temp file, fsync, rename, folder fsync), reserved [`SEQ_BLOCK`] at a time *before* a seq
//!   is handed out, in both fsync modes. On open, seq = max(the database's seq, the mark). A
//!   clean [`Spool::flush`] trims the mark to the last seq, so a clean restart leaves no gap; a
//!   crash leaves a gap of at most one block. A missing or damaged spool file therefore cannot
//!   restart seq below what was delivered as long as the `.seq` file survives (it is a separate
//!   file on purpose: whatever damages the database rarely takes the mark with it).

use std::cell::Cell;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Ids of low-priority (`ok`) messages: the eviction candidates, oldest first.
const LOW: TableDefinition<u64, ()> = TableDefinition::new("low_priority");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Batch mode: the longest a stored message waits for a durable write.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Sequence numbers reserved at once in the `.seq` file: one durable file write per block.
pub const SEQ_BLOCK: u64 = 1024;
/// Free space left on the spool's filesystem: room for deletions (redb copies pages on write),
/// redb's repair on reopen and the seq mark.
pub(crate) const DISK_MARGIN: u64 = 192 * 1024;
/// Bytes of redb file on disk per byte of messages: a 2–3 KB verdict takes a 4 KiB leaf page,
/// plus branch pages and pages freed only at the next durable commit (measured on a full
/// 1 MiB tmpfs: 790 KB on disk for 422 KB of messages, 1.87; see the test
/// `a_full_disk_evicts_and_counts_instead_of_killing_the_spool`).
pub(crate) const FILE_OVERHEAD: f64 = 2.0;
/// Commits that are not durable in a row at most: redb frees the pages a commit replaced only
/// at the next durable one, so a burst of deletions (a backlog being acknowledged) on a nearly
/// full disk would otherwise run out of space.
const MAX_UNSYNCED: u32 = 8;
/// The free space is checked again once this many bytes were added since the last check.
pub(crate) const DISK_RECHECK_BYTES: u64 = 32 * 1024;
/// … or once this long has passed.
const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {msg}")]
    Db { path: String, msg: String },
    #[error("spool is full and message of {0} bytes cannot fit")]
    TooLarge(usize),
}

/// How often the spool forces data to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Every message is on disk before it is published.
    Always,
    /// New messages are buffered and written durably between frames once 100 ms have passed
    /// (a power cut may lose the last ~300 ms: the inference loop turns at least every 200 ms).
    Batch,
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Fsync, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "batch" => Ok(Fsync::Batch),
            _ => Err(format!("{s:?} is not always or batch")),
        }
    }
}

/// Low priority messages are evicted first when the spool is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Low,
    High,
}

/// One stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub priority: Priority,
}

impl Message {
    fn encode(&self) -> Vec<u8> {
        let t = self.topic.as_bytes();
        let mut v = Vec::with_capacity(4 + t.len() + self.payload.len());
        v.push(matches!(self.priority, Priority::High) as u8);
        v.push(self.retain as u8);
        v.extend_from_slice(&(t.len() as u16).to_le_bytes());
        v.extend_from_slice(t);
        v.extend_from_slice(&self.payload);
        v
    }

    fn decode(b: &[u8]) -> Option<Message> {
        if b.len() < 4 {
            return None;
        }
        let tl = u16::from_le_bytes([b[2], b[3]]) as usize;
        let topic = std::str::from_utf8(b.get(4..4 + tl)?).ok()?.to_string();
        Some(Message {
            priority: if b[0] == 1 {
                Priority::High
            } else {
                Priority::Low
            },
            retain: b[1] == 1,
            topic,
            payload: b[4 + tl..].to_vec(),
        })
    }

    /// Bytes this message counts against the spool bound.
    pub fn size(&self) -> u64 {
        (4 + self.topic.len() + self.payload.len()) as u64
    }
}

/// What a push did besides storing the message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    pub id: u64,
    /// Messages evicted to make room: (id, priority).
    pub evicted: Vec<(u64, Priority)>,
}

/// What the database holds, counted on open.
#[derive(Default)]
struct Recount {
    bytes: u64,
    count: u64,
    next_id: u64,
    seq: u64,
    dropped: u64,
}

/// Why the database could not be opened.
enum OpenFailure {
    /// The file is not a readable spool: move it aside.
    Damaged(String),
    /// The environment's fault (no space, no permission, another process): keep the file.
    Env(String),
}

/// The spool.
pub struct Spool {
    /// `None` only between a failed reopen and the next attempt.
    db: Option<Database>,
    path: PathBuf,
    shown: String,
    max_bytes: u64,
    /// The effective bound: `max_bytes`, or less when the disk has less room.
    bound: u64,
    /// Set when the free space fell below the margin or a write ran out of space: the bound
    /// stays below it until the margin is free again (plus a quarter, against flapping).
    space_cap: Option<u64>,
    /// The free space when `space_cap` was last lowered.
    free_at_cap: Option<u64>,
    /// Less than twice the margin was free at the last check: check on every write.
    low_space: bool,
    /// Tests turn the free-space bound off to run into ENOSPC.
    disk_bound: bool,
    /// Evictions made outside a push (`make_room`), reported with the next push.
    unreported: Vec<(u64, Priority)>,
    disk_checked: Instant,
    added_since_check: u64,
    bytes: u64,
    count: u64,
    next_id: u64,
    fsync: Fsync,
    last_flush: Instant,
    pending_flush: bool,
    /// Commits since the last durable one.
    unsynced: u32,
    /// Messages dropped because the spool was full, since it was created (persisted).
    dropped: u64,
    /// Messages that could not be stored (too large, write failed), since open.
    refused: u64,
    /// The last sequence number handed out.
    seq: u64,
    /// The durable high-water mark in `<path>.seq`: seqs up to it may be handed out.
    seq_mark: u64,
    /// A read failed: the database is reopened by the next `&mut` call.
    broken: Cell<bool>,
    reopens: u64,
    recovered: Option<(PathBuf, String)>,
    /// Batch mode: messages not yet in the database (newest ids, in order), written together in
    /// one durable transaction at most every 100 ms. One acknowledged before that never touches
    /// the disk. A crash loses them exactly as it would lose non-durable commits.
    pending: Vec<(u64, Vec<u8>, Priority)>,
}

/// `<path><suffix>`, e.g. `spool.redb.seq`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn folder(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn sync_folder(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(folder(path))?.sync_all()
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Bytes available to us on the filesystem holding `dir`.
#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

/// Bytes the file occupies on disk (allocated blocks; redb grows its file sparsely).
fn used_bytes(path: &Path) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path)
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

/// Errors of the environment rather than of the file's contents.
fn is_env_error(e: &redb::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        redb::Error::Io(io) => {
            !matches!(io.kind(), ErrorKind::UnexpectedEof | ErrorKind::InvalidData)
        }
        redb::Error::DatabaseAlreadyOpen
        | redb::Error::LockProtocolMismatch
        | redb::Error::RepairAborted
        | redb::Error::TransactionInProgress
        | redb::Error::DatabaseClosed
        | redb::Error::PreviousIo
        | redb::Error::WouldBlock => true,
        _ => false,
    }
}

/// Opens (or creates) the database and counts what it holds, without writing when the tables
/// exist. A panic inside redb is caught and reported as damage.
fn open_db(path: &Path) -> Result<(Database, Recount), OpenFailure> {
    let run = || -> Result<(Database, Recount), redb::Error> {
        let db = Database::create(path)?;
        let rc = recount(&db)?;
        Ok((db, rc))
    };
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) if is_env_error(&e) => Err(OpenFailure::Env(e.to_string())),
        Ok(Err(e)) => Err(OpenFailure::Damaged(e.to_string())),
        Err(p) => Err(OpenFailure::Damaged(format!(
            "redb panicked: {}",
            panic_text(p.as_ref())
        ))),
    }
}

fn recount(db: &Database) -> Result<Recount, redb::Error> {
    {
        let tx = db.begin_read()?;
        let tables = (
            tx.open_table(MESSAGES),
            tx.open_table(LOW),
            tx.open_table(META),
        );
        match tables {
            (Ok(msgs), Ok(_), Ok(meta)) => return count_tables(&msgs, &meta),
            (Err(redb::TableError::TableDoesNotExist(_)), _, _)
            | (_, Err(redb::TableError::TableDoesNotExist(_)), _)
            | (_, _, Err(redb::TableError::TableDoesNotExist(_))) => {}
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Err(e.into()),
        }
    }
    // A new spool (or one from before a table existed): create the tables.
    let tx = db.begin_write()?;
    let rc = {
        let msgs = tx.open_table(MESSAGES)?;
        tx.open_table(LOW)?;
        let meta = tx.open_table(META)?;
        count_tables(&msgs, &meta)?
    };
    tx.commit()?;
    Ok(rc)
}

fn count_tables(
    msgs: &impl ReadableTable<u64, &'static [u8]>,
    meta: &impl ReadableTable<&'static str, u64>,
) -> Result<Recount, redb::Error> {
    let mut rc = Recount {
        next_id: 1,
        ..Default::default()
    };
    for row in msgs.iter()? {
        let (k, v) = row?;
        rc.bytes += v.value().len() as u64;
        rc.count += 1;
        rc.next_id = rc.next_id.max(k.value() + 1);
    }
    let get = |k: &str| -> Result<Option<u64>, redb::Error> { Ok(meta.get(k)?.map(|v| v.value())) };
    rc.next_id = rc.next_id.max(get("next_id")?.unwrap_or(1));
    rc.seq = get("seq")?.unwrap_or(0);
    rc.dropped = get("dropped")?.unwrap_or(0);
    Ok(rc)
}

/// Renames a damaged file to `<path>.damaged-<unix seconds>` (with `-<n>` if that exists).
fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut to = with_suffix(path, &format!(".damaged-{secs}"));
    let mut n = 1;
    while to.exists() {
        to = with_suffix(path, &format!(".damaged-{secs}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &to)?;
    let _ = sync_folder(path);
    Ok(to)
}

/// The mark in `<path>.seq`: 0 when missing; unreadable content counts as missing.
fn read_mark(path: &Path) -> u64 {
    match std::fs::read_to_string(with_suffix(path, ".seq")) {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(
                "{}: not a sequence number ({:?}); using the spool's own",
                with_suffix(path, ".seq").display(),
                s.trim()
            );
            0
        }),
        Err(_) => 0,
    }
}

/// Writes the mark durably: temp file, fsync, rename over the old one, folder fsync.
fn write_mark(path: &Path, value: u64) -> std::io::Result<()> {
    let tmp = with_suffix(path, ".seq.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{value}\n").as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, with_suffix(path, ".seq"))?;
    sync_folder(path)
}

impl Spool {
    /// Opens (or creates) the spool at `path`. A damaged file is moved aside and replaced by a
    /// new spool (see [`Spool::recovered_from`]); only the environment (no permission, no
    /// space, another process holding it) makes this fail.
    pub fn open(path: &Path, max_bytes: u64, fsync: Fsync) -> Result<Spool, SpoolError> {
        let shown = path.display().to_string();
        let err = |m: String| SpoolError::Db {
            path: shown.clone(),
            msg: m,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create folder: {e}")))?;
        }
        let mut recovered = None;
        let (db, rc) = match open_db(path) {
            Ok(x) => x,
            Err(OpenFailure::Env(m)) => return Err(err(m)),
            Err(OpenFailure::Damaged(reason)) => {
                let to = move_aside(path)
                    .map_err(|e| err(format!("damaged ({reason}) and cannot be moved: {e}")))?;
                recovered = Some((to, reason));
                match open_db(path) {
                    Ok(x) => x,
                    Err(OpenFailure::Env(m) | OpenFailure::Damaged(m)) => return Err(err(m)),
                }
            }
        };
        let mark = read_mark(path);
        let mut s = Spool {
            db: Some(db),
            path: path.to_path_buf(),
            shown,
            max_bytes,
            bound: max_bytes,
            space_cap: None,
            free_at_cap: None,
            low_space: false,
            disk_bound: true,
            unreported: vec![],
            disk_checked: Instant::now(),
            added_since_check: 0,
            bytes: rc.bytes,
            count: rc.count,
            next_id: rc.next_id,
            fsync,
            last_flush: Instant::now(),
            pending_flush: false,
            unsynced: 0,
            dropped: rc.dropped,
            refused: 0,
            seq: rc.seq.max(mark),
            seq_mark: mark,
            broken: Cell::new(false),
            reopens: 0,
            recovered,
            pending: Vec::new(),
        };
        s.check_disk(true);
        Ok(s)
    }

    /// When the spool file was damaged at open: where it was moved and why.
    pub fn recovered_from(&self) -> Option<(PathBuf, String)> {
        self.recovered.clone()
    }

    fn err(&self, e: impl std::fmt::Display) -> SpoolError {
        SpoolError::Db {
            path: self.shown.clone(),
            msg: e.to_string(),
        }
    }

    fn db(&self) -> Result<&Database, SpoolError> {
        self.db
            .as_ref()
            .ok_or_else(|| self.err("closed after an I/O error (reopening on the next write)"))
    }

    /// Drops and reopens the database, recounting it (the buffered messages stay). A file found
    /// damaged now is moved aside like at open.
    fn reopen(&mut self) -> Result<(), SpoolError> {
        self.reopens += 1;
        if let Some(db) = self.db.take() {
            // Dropping a database after an I/O error must not take the process down either.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(db)));
        }
        let (db, rc) = match open_db(&self.path) {
            Ok(x) => x,
            Err(OpenFailure::Env(m)) => return Err(self.err(format!("reopening: {m}"))),
            Err(OpenFailure::Damaged(reason)) => {
                let to = move_aside(&self.path).map_err(|e| {
                    self.err(format!("damaged ({reason}) and cannot be moved: {e}"))
                })?;
                tracing::error!(
                    "spool {} is damaged ({reason}): moved to {}, starting a new one",
                    self.shown,
                    to.display()
                );
                self.recovered = Some((to, reason));
                open_db(&self.path).map_err(|f| match f {
                    OpenFailure::Env(m) | OpenFailure::Damaged(m) => self.err(m),
                })?
            }
        };
        self.db = Some(db);
        self.broken.set(false);
        let pending: u64 = self.pending.iter().map(|p| p.1.len() as u64).sum();
        self.bytes = rc.bytes + pending;
        self.count = rc.count + self.pending.len() as u64;
        self.next_id = self.next_id.max(rc.next_id);
        self.seq = self.seq.max(rc.seq);
        self.dropped = self.dropped.max(rc.dropped);
        self.pending_flush = false;
        self.unsynced = 0;
        self.check_disk(true);
        Ok(())
    }

    /// Runs `op`; on a database error (or a panic inside redb) reopens the database and runs it
    /// once more. `op` must change `self` only once its transaction committed.
    fn retrying<T>(
        &mut self,
        mut op: impl FnMut(&mut Spool) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        if self.broken.get() || self.db.is_none() {
            self.reopen()?;
        }
        match self.guarded(&mut op) {
            Err(SpoolError::Db { msg, .. }) => {
                tracing::warn!("spool {}: {msg}; reopening it", self.shown);
                self.note_space_trouble();
                self.reopen()?;
                // Out of space: evict down to the lowered bound first, on its own.
                if let Err(e) = self.make_room() {
                    tracing::warn!("spool {}: making room: {e}", self.shown);
                }
                self.guarded(&mut op)
            }
            r => r,
        }
    }

    /// After a failed write: when the disk is (nearly) full, the estimate of what fits was too
    /// high (redb does not reuse every page it freed), so the spool caps itself 25% below what it
    /// holds until the disk has room again.
    fn note_space_trouble(&mut self) {
        let free = free_bytes(folder(&self.path)).filter(|_| self.disk_bound);
        if free.is_some_and(|f| f < DISK_MARGIN) {
            let cap = self.bytes - self.bytes / 4;
            self.space_cap = Some(self.space_cap.map_or(cap, |c| c.min(cap)));
            self.bound = self.bound.min(cap);
        }
    }

    /// Evicts (oldest `ok` first, then oldest) until the stored messages fit the bound, in a
    /// durable transaction of its own followed by an empty durable one, so that redb can reuse
    /// the pages before the next message is written.
    fn make_room(&mut self) -> Result<(), SpoolError> {
        if self.bytes <= self.bound {
            return Ok(());
        }
        let mut evicted = vec![];
        let mut tx = self.db()?.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.err(e))?;
        let (mut bytes, mut count) = (self.bytes, self.count);
        {
            let mut msgs = tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
            let mut low = tx.open_table(LOW).map_err(|e| self.err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            while bytes > self.bound {
                let victim = match low.first().map_err(|e| self.err(e))? {
                    Some((k, _)) => (k.value(), Priority::Low),
                    None => match msgs.first().map_err(|e| self.err(e))? {
                        Some((k, _)) => (k.value(), Priority::High),
                        None => break,
                    },
                };
                let removed = msgs.remove(victim.0).map_err(|e| self.err(e))?;
                if let Some(n) = removed.map(|v| v.value().len() as u64) {
                    bytes -= n;
                    count -= 1;
                }
                low.remove(victim.0).map_err(|e| self.err(e))?;
                evicted.push(victim);
            }
            meta.insert("dropped", self.dropped + evicted.len() as u64)
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        self.committed(true);
        (self.bytes, self.count) = (bytes, count);
        self.dropped += evicted.len() as u64;
        self.unreported.extend(evicted);
        let tx = self.db()?.begin_write().map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(())
    }

    fn guarded<T>(
        &mut self,
        op: &mut impl FnMut(&mut Spool) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        match catch_unwind(AssertUnwindSafe(|| op(&mut *self))) {
            Ok(r) => r,
            Err(p) => Err(self.err(format!("redb panicked: {}", panic_text(p.as_ref())))),
        }
    }

    /// Recomputes the bound from the free space when due (or `force`d).
    fn check_disk(&mut self, force: bool) {
        if !force
            && !self.low_space
            && self.disk_checked.elapsed() < DISK_CHECK_EVERY
            && self.added_since_check < DISK_RECHECK_BYTES
        {
            return;
        }
        self.disk_checked = Instant::now();
        self.added_since_check = 0;
        let free = free_bytes(folder(&self.path)).filter(|_| self.disk_bound);
        self.bound = match free {
            // The file may grow into the free space (less the margin); what it already occupies
            // is reused as messages leave.
            Some(free) => {
                let file = (used_bytes(&self.path) + free).saturating_sub(DISK_MARGIN);
                let fits = self.max_bytes.min((file as f64 / FILE_OVERHEAD) as u64);
                self.low_space = free < 2 * DISK_MARGIN;
                if free >= DISK_MARGIN + DISK_MARGIN / 4 {
                    self.space_cap = None;
                    self.free_at_cap = None;
                } else if free < DISK_MARGIN && self.free_at_cap.is_none_or(|f| free < f) {
                    // Something else is eating the margin (or redb did not reuse the pages
                    // counted as reusable): shrink by what is missing, once per new low.
                    let short = ((DISK_MARGIN - free) as f64 / FILE_OVERHEAD) as u64;
                    let cap = self.bytes.saturating_sub(short);
                    self.space_cap = Some(self.space_cap.map_or(cap, |c| c.min(cap)));
                    self.free_at_cap = Some(free);
                }
                self.space_cap.map_or(fits, |c| c.min(fits))
            }
            None => self.max_bytes,
        };
    }

    /// Whether the next commit must be durable: the batch interval has passed, too many commits
    /// were not, or the disk is what bounds the spool (every page counts then).
    fn durable_due(&self) -> bool {
        self.last_flush.elapsed() >= FLUSH_EVERY
            || self.unsynced >= MAX_UNSYNCED
            || self.bound < self.max_bytes
    }

    /// A commit went through: durable (`true`) or not.
    fn committed(&mut self, durable: bool) {
        if durable {
            self.last_flush = Instant::now();
            self.pending_flush = false;
            self.unsynced = 0;
        } else {
            self.pending_flush = true;
            self.unsynced += 1;
        }
    }

    /// The bound in force: `max_bytes`, or less when the disk has less room.
    pub fn bound(&self) -> u64 {
        self.bound
    }

    /// Stores a message whose payload needs the next sequence number: `build(seq)` makes it,
    /// along with any companions (a verdict's evidence picture) that go after it. The sequence
    /// counter and all the messages are committed in one transaction; the seq is covered by
    /// the durable mark in `<path>.seq` before the messages can be read by the publisher.
    pub fn push_seq(
        &mut self,
        build: impl FnOnce(u64) -> (Message, Vec<Message>),
    ) -> Result<(u64, Pushed), SpoolError> {
        let seq = self.seq + 1;
        let (msg, companions) = build(seq);
        let mut all = Vec::with_capacity(1 + companions.len());
        all.push(msg);
        all.extend(companions);
        if seq > self.seq_mark {
            let mark = seq + SEQ_BLOCK - 1;
            if let Err(e) = write_mark(&self.path, mark) {
                self.refused += all.len() as u64;
                return Err(self.err(format!("writing the seq mark: {e}")));
            }
            self.seq_mark = mark;
        }
        let pushed = self.store(&all, Some(seq))?;
        self.seq = seq;
        Ok((seq, pushed))
    }

    /// Stores a message.
    pub fn push(&mut self, msg: Message) -> Result<Pushed, SpoolError> {
        self.store(std::slice::from_ref(&msg), None)
    }

    /// The last sequence number handed out.
    #[cfg(test)]
    pub(crate) fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Stores `msgs` (ids in order); `Pushed::id` is the first one's. Messages that cannot be
    /// stored are counted in `refused`.
    fn store(&mut self, msgs_in: &[Message], seq: Option<u64>) -> Result<Pushed, SpoolError> {
        let r = self.store_counted(msgs_in, seq);
        if r.is_err() {
            self.refused += msgs_in.len() as u64;
        }
        r
    }

    /// Batch mode buffers them in memory unless the spool must evict; otherwise they are
    /// committed in one transaction.
    fn store_counted(
        &mut self,
        msgs_in: &[Message],
        seq: Option<u64>,
    ) -> Result<Pushed, SpoolError> {
        let sizes: Vec<u64> = msgs_in.iter().map(|m| m.size()).collect();
        let incoming: u64 = sizes.iter().sum();
        self.added_since_check += incoming;
        self.check_disk(false);
        if let Some(&size) = sizes.iter().find(|&&n| n > self.bound) {
            return Err(SpoolError::TooLarge(size as usize));
        }
        if self.fsync == Fsync::Batch
            && self.bytes + incoming <= self.bound
            && !self.broken.get()
            && self.db.is_some()
        {
            let first = self.next_id;
            for m in msgs_in {
                let enc = m.encode();
                self.bytes += enc.len() as u64;
                self.count += 1;
                self.pending.push((self.next_id, enc, m.priority));
                self.next_id += 1;
            }
            // Carried by the pending message; written with it. The durable write itself happens
            // in `flush_if_due`, between frames, not inside a frame's cost.
            if let Some(s) = seq {
                self.seq = self.seq.max(s);
            }
            return Ok(Pushed {
                id: first,
                evicted: vec![],
            });
        }
        // Eviction looks at everything stored: put the buffered messages in the database first.
        let mut r = self.retrying(|s| {
            s.write_pending(None)?;
            s.store_now(msgs_in, &sizes, seq)
        });
        match &mut r {
            Ok(p) if !self.unreported.is_empty() => {
                let mut all = std::mem::take(&mut self.unreported);
                all.append(&mut p.evicted);
                p.evicted = all;
            }
            Ok(_) => {}
            // Perhaps the disk filled up faster than the bound followed: look again now.
            Err(_) => self.check_disk(true),
        }
        r
    }

    /// Writes the buffered messages (and the counters) in one durable transaction.
    fn write_pending(&mut self, seq: Option<u64>) -> Result<(), SpoolError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let seq = seq.unwrap_or(0).max(self.seq);
        let mut tx = self.db()?.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.err(e))?;
        {
            let mut msgs = tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
            let mut low = tx.open_table(LOW).map_err(|e| self.err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            for (id, enc, priority) in &self.pending {
                msgs.insert(*id, enc.as_slice()).map_err(|e| self.err(e))?;
                if *priority == Priority::Low {
                    low.insert(*id, ()).map_err(|e| self.err(e))?;
                }
            }
            meta.insert("next_id", self.next_id)
                .map_err(|e| self.err(e))?;
            meta.insert("seq", seq).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        self.pending.clear();
        self.seq = seq;
        self.committed(true);
        Ok(())
    }

    /// Commits `msgs_in` now, evicting to make room: oldest low-priority first.
    fn store_now(
        &mut self,
        msgs_in: &[Message],
        sizes: &[u64],
        seq: Option<u64>,
    ) -> Result<Pushed, SpoolError> {
        let first = self.next_id;
        let mut id = first;
        let mut evicted = vec![];
        let mut tx = self.db()?.begin_write().map_err(|e| self.err(e))?;
        let durable = self.fsync == Fsync::Always || self.durable_due();
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| self.err(e))?;
        let (mut bytes, mut count) = (self.bytes, self.count);
        {
            let mut msgs = tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
            let mut low = tx.open_table(LOW).map_err(|e| self.err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            for (msg, &size) in msgs_in.iter().zip(sizes) {
                // Evict until the message fits: oldest low-priority first, then oldest of all.
                while bytes + size > self.bound && count > 0 {
                    let victim = match low.first().map_err(|e| self.err(e))? {
                        Some((k, _)) => (k.value(), Priority::Low),
                        None => match msgs.first().map_err(|e| self.err(e))? {
                            Some((k, _)) => (k.value(), Priority::High),
                            None => break,
                        },
                    };
                    let removed = msgs
                        .remove(victim.0)
                        .map_err(|e| self.err(e))?
                        .map(|v| v.value().len() as u64);
                    low.remove(victim.0).map_err(|e| self.err(e))?;
                    if let Some(n) = removed {
                        bytes -= n;
                        count -= 1;
                    }
                    evicted.push(victim);
                }
                let enc = msg.encode();
                msgs.insert(id, enc.as_slice()).map_err(|e| self.err(e))?;
                if msg.priority == Priority::Low {
                    low.insert(id, ()).map_err(|e| self.err(e))?;
                }
                bytes += enc.len() as u64;
                count += 1;
                id += 1;
            }
            meta.insert("next_id", id).map_err(|e| self.err(e))?;
            if let Some(seq) = seq {
                meta.insert("seq", seq).map_err(|e| self.err(e))?;
            }
            if !evicted.is_empty() {
                meta.insert("dropped", self.dropped + evicted.len() as u64)
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        self.committed(durable);
        self.bytes = bytes;
        self.count = count;
        self.next_id = id;
        self.dropped += evicted.len() as u64;
        Ok(Pushed { id: first, evicted })
    }

    /// Deletes an acknowledged message (a missing id is fine: it was evicted or already gone).
    pub fn remove(&mut self, id: u64) -> Result<(), SpoolError> {
        if let Ok(i) = self.pending.binary_search_by_key(&id, |p| p.0) {
            let (_, enc, _) = self.pending.remove(i);
            self.bytes -= enc.len() as u64;
            self.count -= 1;
            return Ok(());
        }
        self.retrying(|s| s.remove_now(id))
    }

    fn remove_now(&mut self, id: u64) -> Result<(), SpoolError> {
        let mut tx = self.db()?.begin_write().map_err(|e| self.err(e))?;
        // Deleting after an ack can be lost in a crash at no harm: it is sent again.
        let durable = self.durable_due();
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| self.err(e))?;
        let mut removed = None;
        {
            let mut msgs = tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
            let mut low = tx.open_table(LOW).map_err(|e| self.err(e))?;
            if let Some(v) = msgs.remove(id).map_err(|e| self.err(e))? {
                removed = Some(v.value().len() as u64);
            }
            low.remove(id).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        self.committed(durable);
        if let Some(n) = removed {
            self.bytes -= n;
            self.count -= 1;
        }
        Ok(())
    }

    /// Up to `limit` messages with id > `after`, in order. A failed read marks the database
    /// for a reopen by the next write (`flush_if_due` runs every turn of the inference loop).
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Message)>, SpoolError> {
        let r =
            catch_unwind(AssertUnwindSafe(|| self.read_after(after, limit))).unwrap_or_else(|p| {
                Err(self.err(format!("redb panicked: {}", panic_text(p.as_ref()))))
            });
        if r.is_err() {
            self.broken.set(true);
        }
        r
    }

    fn read_after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Message)>, SpoolError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let msgs = tx.open_table(MESSAGES).map_err(|e| self.err(e))?;
        let mut out = vec![];
        for row in msgs.range(after + 1..).map_err(|e| self.err(e))? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(|e| self.err(e))?;
            if let Some(m) = Message::decode(v.value()) {
                out.push((k.value(), m));
            }
        }
        // The buffered messages are the newest.
        for (id, enc, _) in self.pending.iter().filter(|p| p.0 > after) {
            if out.len() >= limit {
                break;
            }
            if let Some(m) = Message::decode(enc) {
                out.push((*id, m));
            }
        }
        Ok(out)
    }

    /// Makes every commit so far durable, then trims the seq mark to the last seq handed out so
    /// that a clean restart continues without a gap (called at shutdown; the timer in `batch`
    /// mode uses `flush_if_due`).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        self.flush_data()?;
        if self.seq_mark > self.seq {
            write_mark(&self.path, self.seq).map_err(|e| self.err(format!("seq mark: {e}")))?;
            self.seq_mark = self.seq;
        }
        Ok(())
    }

    fn flush_data(&mut self) -> Result<(), SpoolError> {
        if !self.pending.is_empty() {
            return self.retrying(|s| s.write_pending(None));
        }
        if !self.pending_flush && !self.broken.get() && self.db.is_some() {
            return Ok(());
        }
        self.retrying(|s| {
            let mut tx = s.db()?.begin_write().map_err(|e| s.err(e))?;
            tx.set_durability(Durability::Immediate)
                .map_err(|e| s.err(e))?;
            tx.commit().map_err(|e| s.err(e))?;
            s.committed(true);
            Ok(())
        })
    }

    /// Flushes when the last durable write is older than the batch interval (called on every
    /// turn of the inference loop, so a quiet line does not leave messages in memory), and
    /// reopens a database that failed a read.
    pub fn flush_if_due(&mut self) -> Result<(), SpoolError> {
        if self.broken.get() || self.db.is_none() {
            return self.flush_data();
        }
        if (!self.pending.is_empty() || self.pending_flush)
            && self.last_flush.elapsed() >= FLUSH_EVERY
        {
            self.flush_data()
        } else {
            Ok(())
        }
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Messages dropped because the spool was full, over the spool's life.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages that could not be stored at all (larger than the room left, or the write failed
    /// even after a reopen), since open. The caller announces them.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Times the database was reopened after an error, since open.
    #[cfg(test)]
    pub(crate) fn reopens(&self) -> u64 {
        self.reopens
    }

    /// Number of stored messages per table (for tests): (all, low priority).
    pub fn counts(&self) -> Result<(u64, u64), SpoolError> {
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
        let m = tx
            .open_table(MESSAGES)
            .map_err(|e| self.err(e))?
            .len()
            .map_err(|e| self.err(e))?;
        let l = tx
            .open_table(LOW)
            .map_err(|e| self.err(e))?
            .len()
            .map_err(|e| self.err(e))?;
        Ok((m, l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn msg(topic: &str, n: usize, priority: Priority) -> Message {
        Message {
            topic: topic.into(),
            payload: vec![7; n],
            retain: false,
            priority,
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("inspectd-spool-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("spool.redb")
    }

    #[test]
    fn messages_come_back_in_order_and_leave_on_ack() {
        let mut s = Spool::open(&tmp("order"), 1 << 20, Fsync::Always).unwrap();
        let a = s.push(msg("a", 10, Priority::High)).unwrap().id;
        let b = s.push(msg("b", 10, Priority::Low)).unwrap().id;
        let got: Vec<String> = s
            .after(0, 10)
            .unwrap()
            .into_iter()
            .map(|(_, m)| m.topic)
            .collect();
        assert_eq!(got, vec!["a", "b"]);
        s.remove(a).unwrap();
        assert_eq!(s.after(0, 10).unwrap()[0].0, b);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn messages_and_seq_survive_a_reopen() {
        let path = tmp("reopen");
        {
            let mut s = Spool::open(&path, 1 << 20, Fsync::Always).unwrap();
            for _ in 0..3 {
                s.push_seq(|seq| (msg(&format!("v{seq}"), 5, Priority::High), vec![]))
                    .unwrap();
            }
            let first = s.after(0, 1).unwrap()[0].0;
            s.remove(first).unwrap();
            s.flush().unwrap();
        }
        let mut s = Spool::open(&path, 1 << 20, Fsync::Always).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.last_seq(), 3);
        let (seq, _) = s
            .push_seq(|seq| (msg(&format!("v{seq}"), 5, Priority::High), vec![]))
            .unwrap();
        assert_eq!(seq, 4);
        let topics: Vec<String> = s
            .after(0, 10)
            .unwrap()
            .into_iter()
            .map(|(_, m)| m.topic)
            .collect();
        assert_eq!(topics, vec!["v2", "v3", "v4"]);
    }

    #[test]
    fn a_full_spool_drops_ok_verdicts_first_and_counts_them() {
        // Each message is 4 + 1 + 100 = 105 bytes; room for 4.
        let mut s = Spool::open(&tmp("full"), 420, Fsync::Batch).unwrap();
        s.push(msg("d", 100, Priority::High)).unwrap();
        s.push(msg("o", 100, Priority::Low)).unwrap();
        s.push(msg("d", 100, Priority::High)).unwrap();
        s.push(msg("o", 100, Priority::Low)).unwrap();
        let p = s.push(msg("d", 100, Priority::High)).unwrap();
        assert_eq!(p.evicted, vec![(2, Priority::Low)]);
        let p = s.push(msg("d", 100, Priority::High)).unwrap();
        assert_eq!(p.evicted, vec![(4, Priority::Low)]);
        // No ok verdicts left: the oldest message goes.
        let p = s.push(msg("d", 100, Priority::High)).unwrap();
        assert_eq!(p.evicted, vec![(1, Priority::High)]);
        assert_eq!(s.dropped(), 3);
        assert_eq!(s.len(), 4);
        assert_eq!(s.counts().unwrap(), (4, 0));
        assert!(s.bytes() <= 420);
    }

    #[test]
    fn a_verdict_and_its_evidence_are_stored_together_and_survive_a_reopen() {
        let path = tmp("companions");
        {
            let mut s = Spool::open(&path, 1 << 20, Fsync::Batch).unwrap();
            let (seq, p) = s
                .push_seq(|seq| {
                    (
                        msg(&format!("v/{seq}"), 10, Priority::High),
                        vec![msg(&format!("evidence/{seq}"), 50, Priority::Low)],
                    )
                })
                .unwrap();
            assert_eq!((seq, p.id), (1, 1));
            s.flush().unwrap();
        }
        let mut s = Spool::open(&path, 1 << 20, Fsync::Batch).unwrap();
        let all = s.after(0, 10).unwrap();
        let topics: Vec<&str> = all.iter().map(|(_, m)| m.topic.as_str()).collect();
        assert_eq!(topics, ["v/1", "evidence/1"]);
        assert_eq!((all[0].0, all[1].0), (1, 2));
        assert_eq!(s.last_seq(), 1);
        // The next verdict continues both counters.
        let (seq, p) = s
            .push_seq(|seq| (msg(&format!("v/{seq}"), 10, Priority::High), vec![]))
            .unwrap();
        assert_eq!((seq, p.id), (2, 3));
    }

    #[test]
    fn batch_mode_buffers_serves_and_acks_in_memory_then_writes_once() {
        let path = tmp("batch");
        {
            let mut s = Spool::open(&path, 1 << 20, Fsync::Batch).unwrap();
            for _ in 0..3 {
                s.push_seq(|seq| (msg(&format!("v/{seq}"), 10, Priority::High), vec![]))
                    .unwrap();
            }
            // Buffered, yet served in order to the publisher, and an ack just drops it.
            let ids: Vec<u64> = s.after(0, 10).unwrap().iter().map(|m| m.0).collect();
            assert_eq!(ids, [1, 2, 3]);
            assert_eq!(s.after(1, 1).unwrap()[0].0, 2);
            s.remove(2).unwrap();
            assert_eq!(s.len(), 2);
            // Not yet due: nothing is written.
            s.flush_if_due().unwrap();
            std::thread::sleep(FLUSH_EVERY);
            s.flush_if_due().unwrap();
            // Written: an ack now deletes from the database.
            s.remove(1).unwrap();
            s.flush().unwrap();
        }
        let s = Spool::open(&path, 1 << 20, Fsync::Batch).unwrap();
        let left: Vec<(u64, String)> = s
            .after(0, 10)
            .unwrap()
            .into_iter()
            .map(|(id, m)| (id, m.topic))
            .collect();
        assert_eq!(left, [(3, "v/3".to_string())]);
        assert_eq!((s.last_seq(), s.len()), (3, 1));
    }

    #[test]
    fn a_message_larger_than_the_spool_is_refused() {
        let mut s = Spool::open(&tmp("large"), 100, Fsync::Always).unwrap();
        assert!(matches!(
            s.push(msg("x", 200, Priority::High)),
            Err(SpoolError::TooLarge(_))
        ));
        assert!(s.is_empty());
    }

    #[test]
    fn encoding_round_trips() {
        let m = Message {
            topic: "inspect/d1/verdict".into(),
            payload: b"{}".to_vec(),
            retain: true,
            priority: Priority::High,
        };
        assert_eq!(Message::decode(&m.encode()), Some(m));
    }

    /// A small deterministic generator for "random" bytes.
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A spool with 200 verdicts (seq 1..=200), half of them acknowledged, closed cleanly.
    fn filled(path: &Path) {
        let mut s = Spool::open(path, 1 << 20, Fsync::Always).unwrap();
        for i in 0..200 {
            let p = if i % 3 == 0 {
                Priority::High
            } else {
                Priority::Low
            };
            s.push_seq(|seq| (msg(&format!("v/{seq}"), 600, p), vec![]))
                .unwrap();
        }
        for (id, _) in s.after(0, 100).unwrap() {
            s.remove(id).unwrap();
        }
        s.flush().unwrap();
    }

    fn damaged_copies(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".damaged-"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_damaged_spool_file_is_moved_aside_named_and_seq_continues_above_the_mark() {
        // (what, damage): random 4 KiB at several offsets, truncated, emptied.
        type Damage = Box<dyn Fn(&Path)>;
        let overwrite = |at: fn(u64) -> u64| -> Damage {
            Box::new(move |p: &Path| {
                use std::io::{Seek, SeekFrom};
                let len = std::fs::metadata(p).unwrap().len();
                let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                f.seek(SeekFrom::Start(at(len))).unwrap();
                f.write_all(&noise(at(len) + 7, 4096)).unwrap();
            })
        };
        let cases: Vec<(&str, Damage)> = vec![
            ("random header", overwrite(|_| 0)),
            ("random 4 KiB page", overwrite(|_| 4096)),
            ("random middle", overwrite(|len| len / 2 / 4096 * 4096)),
            ("random unaligned middle", overwrite(|len| len / 2 + 1234)),
            (
                "random near the end",
                overwrite(|len| len.saturating_sub(8192)),
            ),
            (
                "truncated",
                Box::new(|p: &Path| {
                    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                    f.set_len(f.metadata().unwrap().len() / 3).unwrap();
                }),
            ),
            (
                "0 bytes",
                Box::new(|p: &Path| std::fs::write(p, b"").unwrap()),
            ),
        ];
        let mut moved = 0;
        for (i, (what, damage)) in cases.iter().enumerate() {
            let path = tmp(&format!("damaged-{i}"));
            filled(&path);
            damage(&path);
            // Never a panic: open succeeds, either on a new spool (the old one moved aside and
            // named) or on what it could still read.
            let mut s = Spool::open(&path, 1 << 20, Fsync::Always)
                .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
            let copies = damaged_copies(path.parent().unwrap());
            match s.recovered_from() {
                Some((to, reason)) => {
                    eprintln!("{what}: moved aside ({reason})");
                    moved += 1;
                    assert_eq!(copies, vec![to.clone()], "{what}");
                    assert!(
                        to.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with("spool.redb.damaged-"),
                        "{what}: {to:?}"
                    );
                    assert!(!reason.is_empty());
                    assert!(s.is_empty(), "{what}: a new spool");
                }
                None => {
                    eprintln!("{what}: still opens");
                    assert!(copies.is_empty(), "{what}");
                    // Still readable: the publisher gets what is left.
                    s.after(0, 1000).unwrap_or_else(|e| panic!("{what}: {e}"));
                }
            }
            assert!(s.last_seq() >= 200, "{what}: seq {}", s.last_seq());
            let (seq, _) = s
                .push_seq(|seq| (msg(&format!("v/{seq}"), 10, Priority::High), vec![]))
                .unwrap_or_else(|e| panic!("{what}: push after recovery: {e}"));
            assert_eq!(seq, 201, "{what}: continues right above the mark");
        }
        // The header and the truncation at least are not silently read as a spool.
        assert!(moved >= 2, "only {moved} cases moved aside");
    }

    #[test]
    fn a_missing_or_empty_spool_file_keeps_seq_from_the_mark_file() {
        for (i, gone) in ["missing", "empty"].into_iter().enumerate() {
            let path = tmp(&format!("gone-{i}"));
            {
                let mut s = Spool::open(&path, 1 << 20, Fsync::Always).unwrap();
                for _ in 0..81 {
                    s.push_seq(|seq| (msg(&format!("v/{seq}"), 10, Priority::High), vec![]))
                        .unwrap();
                }
                s.flush().unwrap();
            }
            if gone == "missing" {
                std::fs::remove_file(&path).unwrap();
            } else {
                std::fs::write(&path, b"").unwrap();
            }
            let mut s = Spool::open(&path, 1 << 20, Fsync::Batch).unwrap();
            assert!(s.is_empty(), "{gone}");
            assert_eq!(s.last_seq(), 81, "{gone}");
            let (seq, _) = s
                .push_seq(|seq| (msg(&format!("v/{seq}"), 10, Priority::High), vec![]))
                .unwrap();
            assert_eq!(seq, 82, "{gone}");
        }
    }

    #[test]
    fn batch_mode_makes_the_seq_reservation_durable_before_push_seq_returns_a_seq() {
        let path = tmp("seqmark");
        let crash = tmp("seqmark-crash");
        std::fs::create_dir_all(crash.parent().unwrap()).unwrap();
        let mark_file = |p: &Path| -> u64 {
            std::fs::read_to_string(with_suffix(p, ".seq"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let mut s = Spool::open(&path, 1 << 20, Fsync::Batch).unwrap();
        for n in 1..=5 {
            let (seq, _) = s
                .push_seq(|seq| (msg(&format!("v/{seq}"), 10, Priority::High), vec![]))
                .unwrap();
            assert_eq!(seq, n);
            // On disk before the publisher can see the message carrying it.
            assert!(mark_file(&path) >= seq);
        }
        assert_eq!(mark_file(&path), SEQ_BLOCK, "one block reserved at once");
        // The publisher can already send seq 1..=5, none of them durable in the database: what
        // a crash now leaves on disk (copied while the spool is open) must not hand them out
        // again.
        assert_eq!(s.after(0, 10).unwrap().len(), 5);
        std::fs::copy(&path, &crash).unwrap();
        std::fs::copy(with_suffix(&path, ".seq"), with_suffix(&crash, ".seq")).unwrap();
        {
            let mut c = Spool::open(&crash, 1 << 20, Fsync::Batch).unwrap();
            let (seq, _) = c
                .push_seq(|seq| (msg(&format!("v/{seq}"), 10, Priority::High), vec![]))
                .unwrap();
            assert!(seq > 5, "seq {seq} reused after a crash");
        }
        // A clean flush trims the mark: a clean restart continues without a gap.
        s.flush().unwrap();
        assert_eq!(mark_file(&path), 5);
        drop(s);
        let mut s = Spool::open(&path, 1 << 20, Fsync::Batch).unwrap();
        let (seq, _) = s
            .push_seq(|seq| (msg(&format!("v/{seq}"), 10, Priority::High), vec![]))
            .unwrap();
        assert_eq!(seq, 6);
    }

    /// A small tmpfs mounted for one test, unmounted when dropped (also when the test fails).
    struct SmallDisk(PathBuf);

    impl SmallDisk {
        fn mount(name: &str, size: &str) -> Result<SmallDisk, String> {
            let dir = std::env::temp_dir()
                .join(format!("inspectd-spool-{}-{name}-mnt", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&dir)
                .output()
                .map_err(|e| format!("cannot run mount: {e}"))?;
            if !out.status.success() {
                let _ = std::fs::remove_dir(&dir);
                return Err(format!(
                    "mount -t tmpfs failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(SmallDisk(dir))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let ok = std::process::Command::new("umount")
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
            }
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn after_no_space_left_the_spool_reopens_and_works_again_once_there_is_room() {
        let disk = match SmallDisk::mount("enospc", "1m") {
            Ok(d) => d,
            Err(why) => {
                eprintln!("SKIPPED after_no_space_left_the_spool_reopens_and_works_again_once_there_is_room: {why} (needs root and tmpfs)");
                return;
            }
        };
        let hog = disk.0.join("hog");
        std::fs::write(&hog, vec![1u8; 256 * 1024]).unwrap();
        let path = disk.0.join("spool.redb");
        let mut s = Spool::open(&path, 64 << 20, Fsync::Always).unwrap();
        // Without the free-space bound (the old behaviour) the disk fills up: ENOSPC.
        s.disk_bound = false;
        s.check_disk(true);
        let (mut stored, mut failed, mut first_error) = (0u64, 0u64, None);
        for _ in 0..400 {
            match s.push_seq(|seq| (msg(&format!("v/{seq}"), 2500, Priority::High), vec![])) {
                Ok(_) => stored += 1,
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                    failed += 1;
                }
            }
        }
        let first_error = first_error.expect("the disk filled up");
        assert_eq!(s.refused(), failed);
        assert_eq!(s.len(), stored);
        // Room again: the spool reopens its database instead of refusing every call for good.
        std::fs::remove_file(&hog).unwrap();
        let ids: Vec<u64> = s
            .after(0, 100)
            .unwrap_or_default()
            .iter()
            .map(|m| m.0)
            .collect();
        for id in ids {
            s.remove(id).unwrap();
        }
        for _ in 0..10 {
            s.push_seq(|seq| (msg(&format!("v/{seq}"), 2500, Priority::High), vec![]))
                .unwrap();
        }
        eprintln!(
            "no space left: {stored} stored, {failed} refused (first: {first_error}); after room: reopens {}, {} left",
            s.reopens(),
            s.len()
        );
        assert!(s.reopens() > 0);
        assert_eq!(s.len(), stored.saturating_sub(100) + 10);
    }

    #[test]
    fn a_full_disk_evicts_and_counts_instead_of_killing_the_spool() {
        for fsync in [Fsync::Always, Fsync::Batch] {
            let disk = match SmallDisk::mount(&format!("full-{fsync:?}"), "1m") {
                Ok(d) => d,
                Err(why) => {
                    eprintln!("SKIPPED a_full_disk_evicts_and_counts_instead_of_killing_the_spool: {why} (needs root and tmpfs)");
                    return;
                }
            };
            let path = disk.0.join("spool.redb");
            // max_bytes far above what the disk holds: only the free space can bound it.
            let mut s = Spool::open(&path, 64 << 20, fsync).unwrap();
            let pushed = 1000u64;
            let mut failed_at = vec![];
            let mut evicted = 0u64;
            for i in 0..pushed {
                let p = if i % 4 == 0 {
                    Priority::High
                } else {
                    Priority::Low
                };
                let n = 2000 + (i as usize * 37) % 1000;
                match s.push_seq(|seq| (msg(&format!("inspect/d/verdict/{seq}"), n, p), vec![])) {
                    Ok((_, pu)) => evicted += pu.evicted.len() as u64,
                    Err(_) => failed_at.push(i),
                }
                s.flush_if_due().unwrap();
            }
            let (stored, refused) = (s.len(), s.refused());
            eprintln!(
                "disk full ({fsync:?}): pushed {pushed}, stored {stored}, evicted {evicted}, refused {refused}; \
                 bound {} B, logical {} B, file {} B ({} B on disk), free {} B, reopens {}",
                s.bound(),
                s.bytes(),
                std::fs::metadata(&path).unwrap().len(),
                used_bytes(&path),
                free_bytes(&disk.0).unwrap(),
                s.reopens()
            );
            assert_eq!(
                stored + evicted + refused,
                pushed,
                "every message accounted for"
            );
            assert_eq!(s.dropped(), evicted);
            assert!(evicted > 0, "the bound followed the disk");
            assert!(
                failed_at.iter().all(|&i| i < 100) || failed_at.len() <= 2,
                "no permanent error: pushes failed at {failed_at:?}"
            );
            // Ok verdicts went first: the high-priority ones are still there.
            let left = s.after(0, 10_000).unwrap();
            assert_eq!(left.len() as u64, stored);
            let high = left
                .iter()
                .filter(|(_, m)| m.priority == Priority::High)
                .count();
            assert!(
                high as u64 >= stored.min(pushed / 4) * 9 / 10,
                "{high} of {stored} high"
            );
            // The broker is back: everything can be deleted, and new pushes work.
            for (id, _) in left {
                s.remove(id).unwrap();
            }
            s.flush().unwrap();
            assert_eq!((s.len(), s.bytes(), s.reopens()), (0, 0, 0));
            for _ in 0..50 {
                s.push_seq(|seq| {
                    (
                        msg(&format!("inspect/d/verdict/{seq}"), 2500, Priority::High),
                        vec![],
                    )
                })
                .unwrap();
            }
            // Something else fills the disk between two checks: the next writes fail with
            // ENOSPC, the spool reopens, sees the disk, evicts and goes on.
            let free = free_bytes(&disk.0).unwrap();
            std::fs::write(disk.0.join("hog"), vec![1u8; (free - 48 * 1024) as usize]).unwrap();
            let (mut ok, mut failed) = (0u64, 0u64);
            let (dropped0, refused0) = (s.dropped(), s.refused());
            for _ in 0..100 {
                match s.push_seq(|seq| {
                    (
                        msg(&format!("inspect/d/verdict/{seq}"), 2500, Priority::High),
                        vec![],
                    )
                }) {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        if failed == 0 {
                            eprintln!(
                                "first failure: {e}; used {} free {:?}",
                                used_bytes(&path),
                                free_bytes(&disk.0)
                            );
                        }
                        failed += 1
                    }
                }
            }
            let (ev, rf) = (s.dropped() - dropped0, s.refused() - refused0);
            eprintln!(
                "disk taken by another file ({fsync:?}): pushed 100, ok {ok}, failed {failed}, evicted {ev}, refused {rf}, \
                 stored {}, bound {} B, reopens {}",
                s.len(),
                s.bound(),
                s.reopens()
            );
            assert_eq!(rf, failed);
            assert_eq!(s.len() + ev + rf, 150, "every message accounted for");
            assert!(ok >= 90, "no permanent error: {failed} of 100 failed");
            // The disk is taken to the last byte: writes fail with ENOSPC (counted as refused,
            // redb poisons itself), and once there is room again the spool reopens and works.
            let free = free_bytes(&disk.0).unwrap();
            std::fs::write(disk.0.join("hog2"), vec![1u8; free as usize]).unwrap();
            let refused0 = s.refused();
            let mut failed_full = 0;
            for _ in 0..20 {
                if s.push_seq(|seq| {
                    (
                        msg(&format!("inspect/d/verdict/{seq}"), 2500, Priority::High),
                        vec![],
                    )
                })
                .is_err()
                {
                    failed_full += 1;
                }
            }
            let _ = s.flush_if_due();
            assert_eq!(s.refused() - refused0, failed_full);
            // Acknowledgements arrive: deleting needs pages too.
            let ids: Vec<u64> = s.after(0, 5).unwrap().iter().map(|m| m.0).collect();
            let failed_removes = ids.iter().filter(|&&id| s.remove(id).is_err()).count();
            std::fs::remove_file(disk.0.join("hog")).unwrap();
            std::fs::remove_file(disk.0.join("hog2")).unwrap();
            for _ in 0..20 {
                s.push_seq(|seq| {
                    (
                        msg(&format!("inspect/d/verdict/{seq}"), 2500, Priority::High),
                        vec![],
                    )
                })
                .unwrap();
            }
            eprintln!(
                "disk taken to the last byte ({fsync:?}): 20 pushes, {failed_full} refused, {failed_removes} of 5 deletions failed; \
                 after it is freed 20 of 20 stored, reopens {}",
                s.reopens()
            );
            assert!(failed_removes == 0 || s.reopens() > 0);
            for (id, _) in s.after(0, 10_000).unwrap() {
                s.remove(id).unwrap();
            }
            for _ in 0..50 {
                s.push_seq(|seq| {
                    (
                        msg(&format!("inspect/d/verdict/{seq}"), 2500, Priority::High),
                        vec![],
                    )
                })
                .unwrap();
            }
            assert_eq!(s.len(), 50);
            s.flush().unwrap();
            drop(s);
            // And it opens again.
            let s = Spool::open(&path, 64 << 20, fsync).unwrap();
            assert_eq!(s.len(), 50);
            assert_eq!(s.last_seq(), pushed + 240 - failed - failed_full);
        }
    }
}
