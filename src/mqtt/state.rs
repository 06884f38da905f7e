//! Pure bookkeeping of in-flight QoS 1 publishes: no I/O. rumqttc reports a packet id when a
//! publish leaves (`Outgoing::Publish(pkid)`) and again on its PUBACK; it never tells which of
//! our messages that was. Publishes leave in the order they were requested on one connection,
//! so the n-th outgoing packet id belongs to the n-th requested spool entry.

use std::collections::{HashMap, VecDeque};

/// Tracks which spool entries are requested, sent (with their packet id) and acknowledged.
#[derive(Debug, Default)]
pub struct Inflight {
    /// Spool ids requested from the client, not yet seen leaving (`None`: a publish that is not
    /// spooled, such as status or stats, which still takes its place in the order).
    requested: VecDeque<Option<u64>>,
    /// Packet id → spool id, sent and not yet acknowledged.
    sent: HashMap<u16, u64>,
}

impl Inflight {
    pub fn new() -> Inflight {
        Inflight::default()
    }

    /// A publish of spool entry `id` was handed to the client.
    pub fn requested(&mut self, id: u64) {
        self.requested.push_back(Some(id));
    }

    /// A publish that is not in the spool was handed to the client.
    pub fn requested_untracked(&mut self) {
        self.requested.push_back(None);
    }

    /// The client sent the next requested publish with packet id `pkid`.
    /// Returns the spool id, or `None` if nothing was requested (a bookkeeping error upstream).
    pub fn outgoing(&mut self, pkid: u16) -> Option<u64> {
        let id = self.requested.pop_front()??;
        self.sent.insert(pkid, id);
        Some(id)
    }

    /// The broker acknowledged `pkid`: returns the spool id to delete.
    pub fn acked(&mut self, pkid: u16) -> Option<u64> {
        self.sent.remove(&pkid)
    }

    /// Every requested publish (spooled or not) has left.
    pub fn all_sent(&self) -> bool {
        self.requested.is_empty()
    }

    /// Spool entries requested or sent and not yet acknowledged.
    pub fn len(&self) -> usize {
        self.requested.iter().flatten().count() + self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The connection dropped: nothing in flight survives (clean session). The spool still holds
    /// every unacknowledged entry, so they are all sent again on the next connection.
    pub fn reset(&mut self) {
        self.requested.clear();
        self.sent.clear();
    }

    /// Largest spool id handed to the client on this connection, if any.
    pub fn highest(&self) -> Option<u64> {
        self.requested
            .iter()
            .flatten()
            .chain(self.sent.values())
            .copied()
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_map_to_spool_ids_in_request_order() {
        let mut s = Inflight::new();
        s.requested(10);
        s.requested(11);
        assert_eq!(s.outgoing(1), Some(10));
        assert_eq!(s.outgoing(2), Some(11));
        assert_eq!(s.acked(2), Some(11));
        assert_eq!(s.acked(1), Some(10));
        assert!(s.is_empty());
    }

    #[test]
    fn untracked_publishes_keep_their_place_in_the_order() {
        let mut s = Inflight::new();
        s.requested(1);
        s.requested_untracked();
        s.requested(2);
        assert_eq!(s.outgoing(10), Some(1));
        assert_eq!(s.outgoing(11), None);
        assert_eq!(s.outgoing(12), Some(2));
        assert_eq!(s.acked(11), None);
        assert_eq!(s.acked(12), Some(2));
    }

    #[test]
    fn an_unknown_puback_deletes_nothing() {
        let mut s = Inflight::new();
        s.requested(5);
        assert_eq!(s.acked(7), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn packet_ids_are_reused_after_their_ack() {
        let mut s = Inflight::new();
        s.requested(1);
        s.outgoing(1);
        s.acked(1);
        s.requested(2);
        assert_eq!(s.outgoing(1), Some(2));
        assert_eq!(s.acked(1), Some(2));
    }

    #[test]
    fn reset_forgets_everything_in_flight() {
        let mut s = Inflight::new();
        s.requested(1);
        s.requested(2);
        s.outgoing(9);
        assert_eq!(s.highest(), Some(2));
        s.reset();
        assert!(s.is_empty());
        assert_eq!(s.acked(9), None);
    }
}
