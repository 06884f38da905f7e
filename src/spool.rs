//! Durable store-and-forward queue of outgoing QoS 1 messages (redb). A message is written here
//! before it is published and deleted on its PUBACK; after a reconnect or a restart everything
//! left is sent again in order. The verdict sequence number lives in the same database and is
//! advanced in the same transaction as the message that carries it, so `seq` survives restarts
//! and is never reused. Bounded: when full, the oldest `ok` verdicts are dropped first.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Ids of low-priority (`ok`) messages: the eviction candidates, oldest first.
const LOW: TableDefinition<u64, ()> = TableDefinition::new("low_priority");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Batch mode: the longest a stored message waits for a durable write.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

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

/// The spool.
pub struct Spool {
    db: Database,
    path: String,
    max_bytes: u64,
    bytes: u64,
    count: u64,
    next_id: u64,
    fsync: Fsync,
    last_flush: Instant,
    pending_flush: bool,
    /// Messages dropped because the spool was full, since it was created (persisted).
    dropped: u64,
    /// The last sequence number handed out (persisted with the message that carries it).
    seq: u64,
    /// Batch mode: messages not yet in the database (newest ids, in order), written together in
    /// one durable transaction at most every 100 ms. One acknowledged before that never touches
    /// the disk. A crash loses them exactly as it would lose non-durable commits.
    pending: Vec<(u64, Vec<u8>, Priority)>,
}

impl Spool {
    /// Opens (or creates) the spool at `path`.
    pub fn open(path: &Path, max_bytes: u64, fsync: Fsync) -> Result<Spool, SpoolError> {
        let shown = path.display().to_string();
        let err = |m: String| SpoolError::Db {
            path: shown.clone(),
            msg: m,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create folder: {e}")))?;
        }
        let db = Database::create(path).map_err(|e| err(e.to_string()))?;
        let mut s = Spool {
            db,
            path: shown.clone(),
            max_bytes,
            bytes: 0,
            count: 0,
            next_id: 1,
            fsync,
            last_flush: Instant::now(),
            pending_flush: false,
            dropped: 0,
            seq: 0,
            pending: Vec::new(),
        };
        // Create the tables and recount what survived.
        let tx = s.db.begin_write().map_err(|e| err(e.to_string()))?;
        {
            let msgs = tx.open_table(MESSAGES).map_err(|e| err(e.to_string()))?;
            tx.open_table(LOW).map_err(|e| err(e.to_string()))?;
            let meta = tx.open_table(META).map_err(|e| err(e.to_string()))?;
            for row in msgs.iter().map_err(|e| err(e.to_string()))? {
                let (k, v) = row.map_err(|e| err(e.to_string()))?;
                s.bytes += v.value().len() as u64;
                s.count += 1;
                s.next_id = s.next_id.max(k.value() + 1);
            }
            s.next_id = s.next_id.max(
                meta.get("next_id")
                    .map_err(|e| err(e.to_string()))?
                    .map(|v| v.value())
                    .unwrap_or(1),
            );
            s.seq = meta
                .get("seq")
                .map_err(|e| err(e.to_string()))?
                .map(|v| v.value())
                .unwrap_or(0);
            s.dropped = meta
                .get("dropped")
                .map_err(|e| err(e.to_string()))?
                .map(|v| v.value())
                .unwrap_or(0);
        }
        tx.commit().map_err(|e| err(e.to_string()))?;
        Ok(s)
    }

    fn err(&self, e: impl std::fmt::Display) -> SpoolError {
        SpoolError::Db {
            path: self.path.clone(),
            msg: e.to_string(),
        }
    }

    /// Stores a message whose payload needs the next sequence number: `build(seq)` makes it,
    /// along with any companions (a verdict's evidence picture) that go after it. The sequence
    /// counter and all the messages are committed in one transaction.
    pub fn push_seq(
        &mut self,
        build: impl FnOnce(u64) -> (Message, Vec<Message>),
    ) -> Result<(u64, Pushed), SpoolError> {
        let seq = self.seq + 1;
        let (msg, companions) = build(seq);
        let mut all = Vec::with_capacity(1 + companions.len());
        all.push(msg);
        all.extend(companions);
        let pushed = self.store(&all, Some(seq))?;
        self.seq = seq;
        Ok((seq, pushed))
    }

    /// Stores a message.
    pub fn push(&mut self, msg: Message) -> Result<Pushed, SpoolError> {
        self.store(std::slice::from_ref(&msg), None)
    }

    /// The last sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Stores `msgs` (ids in order); `Pushed::id` is the first one's. Batch mode buffers them
    /// in memory unless the spool must evict; otherwise they are committed in one transaction.
    fn store(&mut self, msgs_in: &[Message], seq: Option<u64>) -> Result<Pushed, SpoolError> {
        let sizes: Vec<u64> = msgs_in.iter().map(|m| m.size()).collect();
        if let Some(&size) = sizes.iter().find(|&&n| n > self.max_bytes) {
            return Err(SpoolError::TooLarge(size as usize));
        }
        let incoming: u64 = sizes.iter().sum();
        if self.fsync == Fsync::Batch && self.bytes + incoming <= self.max_bytes {
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
        self.write_pending(None)?;
        self.store_now(msgs_in, &sizes, seq)
    }

    /// Writes the buffered messages (and the counters) in one durable transaction.
    fn write_pending(&mut self, seq: Option<u64>) -> Result<(), SpoolError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let seq = seq.unwrap_or(0).max(self.seq);
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
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
        self.last_flush = Instant::now();
        self.pending_flush = false;
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
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let durable = self.fsync == Fsync::Always || self.last_flush.elapsed() >= FLUSH_EVERY;
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
                while bytes + size > self.max_bytes && count > 0 {
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
        if durable {
            self.last_flush = Instant::now();
            self.pending_flush = false;
        } else {
            self.pending_flush = true;
        }
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
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        // Deleting after an ack can be lost in a crash at no harm: it is sent again.
        tx.set_durability(Durability::None)
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
        self.pending_flush = true;
        if let Some(n) = removed {
            self.bytes -= n;
            self.count -= 1;
        }
        Ok(())
    }

    /// Up to `limit` messages with id > `after`, in order.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<(u64, Message)>, SpoolError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
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

    /// Makes every commit so far durable (called on a timer in `batch` mode and at shutdown).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        if !self.pending.is_empty() {
            return self.write_pending(None);
        }
        if !self.pending_flush {
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        self.pending_flush = false;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Flushes when the last durable write is older than the batch interval (called on every
    /// turn of the inference loop, so a quiet line does not leave messages in memory).
    pub fn flush_if_due(&mut self) -> Result<(), SpoolError> {
        if (!self.pending.is_empty() || self.pending_flush)
            && self.last_flush.elapsed() >= FLUSH_EVERY
        {
            self.flush()
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

    /// Number of stored messages per table (for tests): (all, low priority).
    pub fn counts(&self) -> Result<(u64, u64), SpoolError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
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
}
