//! The PLC's register map (README, "The line's controller: Modbus TCP"), without the network:
//! what a read answers, what a write changes, when a write is a trigger, and how a trigger's
//! answer lands in the result registers — in trigger order, whatever order answers come in.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio_modbus::{ExceptionCode, Request, Response};

use crate::shared::{Outcome, TriggerError};
use crate::verdict::Kind;

/// Holding registers 0..=9: `trigger_seq`, `part_id` (1..=8), `result_ack`.
pub const HOLDING: usize = 10;
/// Input registers 0..=9: `ready`, `result_seq`, `verdict`, `class`, `confidence_permille`,
/// `error_code`, `verdict_seq` (6..=7), `latency_ms`, `heartbeat`.
pub const INPUT: usize = 10;
/// Coils 0..=3: `ok`, `ng`, `suspect`, `ready`.
pub const COILS: usize = 4;
/// Bytes of `part_id`: 8 registers, 2 bytes each.
pub const PART_ID_BYTES: usize = 16;

const TRIGGER_SEQ: usize = 0;
const PART_ID: std::ops::Range<usize> = 1..9;

/// `verdict` register values.
pub const VERDICT_OK: u16 = 1;
pub const VERDICT_DEFECT: u16 = 2;
pub const VERDICT_SUSPECT: u16 = 3;
pub const VERDICT_ERROR: u16 = 4;

/// A write that changed `trigger_seq`: one inspection for `part_id`. `ticket` orders the
/// answers.
#[derive(Debug, PartialEq, Eq)]
pub struct NewTrigger {
    pub ticket: u64,
    pub trigger_seq: u16,
    pub part_id: String,
}

/// The registers one box serves to every connection.
#[derive(Default)]
pub struct Station {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    holding: [u16; HOLDING],
    /// Input registers 1..=8 (0 `ready` and 9 `heartbeat` are live).
    result: [u16; 8],
    /// `ok`, `ng`, `suspect`.
    bits: [bool; 3],
    heartbeat: u16,
    next_ticket: u64,
    /// The ticket whose answer is applied next.
    next_applied: u64,
    /// Answers that came before an earlier trigger's.
    early: BTreeMap<u64, (u16, Outcome)>,
}

/// Checks a range of `qty` items from `addr` in an area of `size`: 03 for a quantity outside
/// `1..=max`, 02 for addresses outside the area.
fn range(addr: u16, qty: usize, max: usize, size: usize) -> Result<usize, ExceptionCode> {
    if qty == 0 || qty > max {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let start = addr as usize;
    if start + qty > size {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(start)
}

/// `part_id` from registers 1..=8: two ASCII bytes per register, high byte first, up to the
/// first NUL. None if empty or not printable ASCII.
pub fn part_id(regs: &[u16]) -> Option<String> {
    let bytes: Vec<u8> = regs
        .iter()
        .flat_map(|r| r.to_be_bytes())
        .take_while(|&b| b != 0)
        .collect();
    if bytes.is_empty() || !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// The registers that hold `id` (what a PLC writes to 1..=8).
pub fn part_id_registers(id: &str) -> [u16; 8] {
    let mut b = [0u8; PART_ID_BYTES];
    for (d, s) in b.iter_mut().zip(id.bytes()) {
        *d = s;
    }
    let mut r = [0u16; 8];
    for (i, x) in r.iter_mut().enumerate() {
        *x = u16::from_be_bytes([b[2 * i], b[2 * i + 1]]);
    }
    r
}

impl Station {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers one request. `ready` is the live `ready` value. A write that changes
    /// `trigger_seq` comes back as the trigger to start (after the lock is let go: a refusal
    /// answers at once, through [`Station::apply`]).
    pub fn request(
        &self,
        req: &Request<'_>,
        ready: bool,
    ) -> (Result<Response, ExceptionCode>, Option<NewTrigger>) {
        let mut st = self.lock();
        match req {
            Request::ReadHoldingRegisters(a, q) => (
                range(*a, *q as usize, 125, HOLDING).map(|s| {
                    Response::ReadHoldingRegisters(st.holding[s..s + *q as usize].to_vec())
                }),
                None,
            ),
            Request::ReadInputRegisters(a, q) => (
                range(*a, *q as usize, 125, INPUT).map(|s| {
                    let all = st.inputs(ready);
                    Response::ReadInputRegisters(all[s..s + *q as usize].to_vec())
                }),
                None,
            ),
            Request::ReadCoils(a, q) => (
                range(*a, *q as usize, 2000, COILS).map(|s| {
                    let all = [st.bits[0], st.bits[1], st.bits[2], ready];
                    Response::ReadCoils(all[s..s + *q as usize].to_vec())
                }),
                None,
            ),
            Request::WriteSingleRegister(a, v) => {
                match range(*a, 1, 1, HOLDING).and_then(|s| st.write(s, &[*v])) {
                    Ok(t) => (Ok(Response::WriteSingleRegister(*a, *v)), t),
                    Err(e) => (Err(e), None),
                }
            }
            Request::WriteMultipleRegisters(a, words) => {
                match range(*a, words.len(), 123, HOLDING).and_then(|s| st.write(s, words)) {
                    Ok(t) => (
                        Ok(Response::WriteMultipleRegisters(*a, words.len() as u16)),
                        t,
                    ),
                    Err(e) => (Err(e), None),
                }
            }
            Request::ReadWriteMultipleRegisters(ra, rq, wa, words) => {
                let checked = range(*ra, *rq as usize, 125, HOLDING)
                    .and_then(|r| range(*wa, words.len(), 121, HOLDING).map(|w| (r, w)));
                match checked.and_then(|(r, w)| st.write(w, words).map(|t| (r, t))) {
                    Ok((r, t)) => (
                        Ok(Response::ReadWriteMultipleRegisters(
                            st.holding[r..r + *rq as usize].to_vec(),
                        )),
                        t,
                    ),
                    Err(e) => (Err(e), None),
                }
            }
            // Coils are the box's: a PLC cannot set a verdict.
            Request::WriteSingleCoil(..) | Request::WriteMultipleCoils(..) => {
                (Err(ExceptionCode::IllegalDataAddress), None)
            }
            _ => (Err(ExceptionCode::IllegalFunction), None),
        }
    }

    /// Applies a trigger's answer. Answers are applied in the order of the triggers' tickets:
    /// one that comes early waits for those before it.
    pub fn apply(&self, ticket: u64, trigger_seq: u16, outcome: Outcome) {
        let mut st = self.lock();
        st.early.insert(ticket, (trigger_seq, outcome));
        loop {
            let next = st.next_applied;
            let Some((seq, o)) = st.early.remove(&next) else {
                break;
            };
            st.set_result(seq, &o);
            st.next_applied += 1;
        }
    }

    /// One second of health: `heartbeat` + 1 (wrapping).
    pub fn beat(&self) {
        let mut st = self.lock();
        st.heartbeat = st.heartbeat.wrapping_add(1);
    }

    /// The input registers as a read sees them now.
    pub fn input_registers(&self, ready: bool) -> [u16; INPUT] {
        self.lock().inputs(ready)
    }
}

impl State {
    fn inputs(&self, ready: bool) -> [u16; INPUT] {
        let mut r = [0u16; INPUT];
        r[0] = ready as u16;
        r[1..9].copy_from_slice(&self.result);
        r[9] = self.heartbeat;
        r
    }

    /// Writes `words` from holding register `start`; a change of `trigger_seq` is a trigger,
    /// refused (03, nothing written) when `part_id` is empty or not printable ASCII.
    fn write(&mut self, start: usize, words: &[u16]) -> Result<Option<NewTrigger>, ExceptionCode> {
        let mut next = self.holding;
        next[start..start + words.len()].copy_from_slice(words);
        let trigger = if next[TRIGGER_SEQ] != self.holding[TRIGGER_SEQ] {
            let Some(part_id) = part_id(&next[PART_ID]) else {
                tracing::warn!(
                    "Modbus trigger_seq {} refused: part_id (holding 1..=8) must be 1 to {PART_ID_BYTES} printable ASCII bytes, NUL-padded",
                    next[TRIGGER_SEQ]
                );
                return Err(ExceptionCode::IllegalDataValue);
            };
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            Some(NewTrigger {
                ticket,
                trigger_seq: next[TRIGGER_SEQ],
                part_id,
            })
        } else {
            None
        };
        self.holding = next;
        Ok(trigger)
    }

    fn set_result(&mut self, trigger_seq: u16, o: &Outcome) {
        let (verdict, class, permille, error, seq) = match &o.result {
            Ok(i) => {
                let v = match i.kind {
                    Kind::Ok => VERDICT_OK,
                    Kind::Defect => VERDICT_DEFECT,
                    Kind::Suspect => VERDICT_SUSPECT,
                };
                let permille = (i.p_defect.clamp(0.0, 1.0) * 1000.0).round() as u16;
                (
                    v,
                    i.class.min(u16::MAX as usize) as u16,
                    permille,
                    0,
                    i.seq as u32,
                )
            }
            Err(e) => (VERDICT_ERROR, 0, 0, TriggerError::code(e), 0),
        };
        let latency = o.latency.as_millis().min(u16::MAX as u128) as u16;
        // result_seq last in the map but set with the rest under one lock: a read sees all
        // of one result or none of it.
        self.result = [
            trigger_seq,
            verdict,
            class,
            permille,
            error,
            (seq >> 16) as u16,
            seq as u16,
            latency,
        ];
        self.bits = [
            verdict == VERDICT_OK,
            verdict == VERDICT_DEFECT,
            verdict == VERDICT_SUSPECT,
        ];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::Inspected;
    use std::borrow::Cow;
    use std::time::Duration;

    fn outcome(result: Result<Inspected, TriggerError>) -> Outcome {
        Outcome {
            part_id: "P".into(),
            result,
            latency: Duration::from_millis(42),
        }
    }

    fn defect(seq: u64) -> Result<Inspected, TriggerError> {
        Ok(Inspected {
            kind: Kind::Defect,
            class: 3,
            label: "stain".into(),
            p_defect: 0.9876,
            seq,
        })
    }

    fn trigger(st: &Station, seq: u16, id: &str) -> NewTrigger {
        let mut words = vec![seq];
        words.extend(part_id_registers(id));
        let (r, t) = st.request(&Request::WriteMultipleRegisters(0, Cow::Owned(words)), true);
        assert_eq!(r, Ok(Response::WriteMultipleRegisters(0, 9)));
        t.expect("a new trigger_seq is a trigger")
    }

    #[test]
    fn part_ids_round_trip_through_the_registers() {
        assert_eq!(
            part_id(&part_id_registers("P-0042")).as_deref(),
            Some("P-0042")
        );
        assert_eq!(
            part_id(&part_id_registers("ABCDEFGHIJKLMNOP")).as_deref(),
            Some("ABCDEFGHIJKLMNOP")
        );
        assert_eq!(part_id_registers("AB")[0], 0x4142, "high byte first");
        assert_eq!(part_id(&[0; 8]), None);
        assert_eq!(part_id(&[0x41ff, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn a_changed_trigger_seq_is_one_trigger_and_the_same_value_again_is_none() {
        let st = Station::default();
        let t = trigger(&st, 7, "P-1");
        assert_eq!((t.ticket, t.trigger_seq, t.part_id.as_str()), (0, 7, "P-1"));
        let (r, t) = st.request(&Request::WriteSingleRegister(0, 7), true);
        assert!(r.is_ok() && t.is_none());
        // result_ack is the PLC's to write, and no trigger.
        let (r, t) = st.request(&Request::WriteSingleRegister(9, 7), true);
        assert!(r.is_ok() && t.is_none());
        let (r, _) = st.request(&Request::ReadHoldingRegisters(9, 1), true);
        assert_eq!(r, Ok(Response::ReadHoldingRegisters(vec![7])));
        assert_eq!(trigger(&st, 8, "P-2").ticket, 1);
    }

    #[test]
    fn a_trigger_without_a_part_id_is_refused_and_changes_nothing() {
        let st = Station::default();
        let (r, t) = st.request(&Request::WriteSingleRegister(0, 1), true);
        assert_eq!((r, t), (Err(ExceptionCode::IllegalDataValue), None));
        let (r, _) = st.request(&Request::ReadHoldingRegisters(0, 1), true);
        assert_eq!(r, Ok(Response::ReadHoldingRegisters(vec![0])));
    }

    #[test]
    fn box_owned_areas_and_addresses_outside_the_map_are_refused() {
        let st = Station::default();
        for (req, want) in [
            (
                Request::WriteSingleCoil(0, true),
                ExceptionCode::IllegalDataAddress,
            ),
            (
                Request::WriteMultipleCoils(0, Cow::Owned(vec![true])),
                ExceptionCode::IllegalDataAddress,
            ),
            (
                Request::WriteSingleRegister(10, 1),
                ExceptionCode::IllegalDataAddress,
            ),
            (
                Request::WriteMultipleRegisters(8, Cow::Owned(vec![1, 2, 3])),
                ExceptionCode::IllegalDataAddress,
            ),
            (
                Request::ReadInputRegisters(5, 6),
                ExceptionCode::IllegalDataAddress,
            ),
            (
                Request::ReadInputRegisters(0, 0),
                ExceptionCode::IllegalDataValue,
            ),
            (
                Request::ReadHoldingRegisters(0, 200),
                ExceptionCode::IllegalDataValue,
            ),
            (Request::ReadCoils(2, 3), ExceptionCode::IllegalDataAddress),
            (
                Request::MaskWriteRegister(0, 0, 1),
                ExceptionCode::IllegalFunction,
            ),
        ] {
            assert_eq!(st.request(&req, true).0, Err(want), "{req:?}");
        }
    }

    #[test]
    fn answers_land_in_trigger_order_with_the_documented_encoding() {
        let st = Station::default();
        let a = trigger(&st, 65535, "A");
        let b = trigger(&st, 0, "B");
        // B's refusal comes first: it waits for A's verdict.
        st.apply(b.ticket, b.trigger_seq, outcome(Err(TriggerError::Paused)));
        assert_eq!(st.input_registers(true)[1], 0);
        st.apply(a.ticket, a.trigger_seq, outcome(defect(0x0001_0002)));
        // Both applied: B's is the one showing, A's went before it.
        let r = st.input_registers(true);
        assert_eq!(r, [1, 0, VERDICT_ERROR, 0, 0, 4, 0, 0, 42, 0]);
        let c = trigger(&st, 1, "C");
        st.apply(c.ticket, c.trigger_seq, outcome(defect(0x0001_0002)));
        assert_eq!(
            st.input_registers(false),
            [0, 1, VERDICT_DEFECT, 3, 988, 0, 1, 2, 42, 0]
        );
        let (r, _) = st.request(&Request::ReadCoils(0, 4), true);
        assert_eq!(r, Ok(Response::ReadCoils(vec![false, true, false, true])));
        st.beat();
        assert_eq!(st.input_registers(true)[9], 1);
    }
}
