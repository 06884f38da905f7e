//! The line's controller (PLC) side: a Modbus TCP server (tokio-modbus) on the daemon's
//! runtime, serving the register map of [`registers`] (README, "The line's controller: Modbus
//! TCP"). A write that changes `trigger_seq` is a trigger like MQTT `cmd/trigger`
//! ([`Shared::trigger`]); its answer lands in the result registers, in trigger order.
//!
//! The OPC UA server ([`opcua`], cargo feature `opcua`) serves the same triggers and answers
//! as an `Inspection` object.
//!
//! Each connection is its own task: a malformed frame (wrong protocol id, bad length, unknown
//! encoding) closes that connection only. At most [`MAX_CONNECTIONS`] at once; one silent for
//! [`IDLE`] is closed (a PLC polls far more often; a cable pulled leaves no FIN).

#[cfg(feature = "opcua")]
pub mod opcua;
pub mod registers;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};

use crate::shared::{Reply, Shared, MAX_TRIGGERS};
use registers::Station;

/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection without a request for this long is closed.
pub const IDLE: Duration = Duration::from_secs(60);

/// `ready`: the box runs, inspects on triggers, is not paused, sees its camera, its inference
/// turns and its trigger queue has room.
pub fn ready(shared: &Shared) -> bool {
    let camera = shared.trigger_camera.map(|i| &shared.cameras[i]);
    camera.is_some_and(|c| c.triggered && c.ok())
        && !shared.stopping()
        && !shared.status.paused()
        && shared.health.inference_running()
        && shared.inbox.pending_triggers() < MAX_TRIGGERS
}

/// Healthy as `/healthz` says it: what the `heartbeat` counts (Modbus and OPC UA).
pub(crate) fn healthy(shared: &Shared) -> bool {
    shared.health.pipeline_alive()
        && shared.status.camera_ok()
        && !shared.spool.counters().failing.load(Ordering::Relaxed)
}

/// One client connection's service.
struct Conn {
    station: Arc<Station>,
    shared: Arc<Shared>,
    unit: u8,
    _slot: OwnedSemaphorePermit,
}

impl tokio_modbus::server::Service for Conn {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: SlaveRequest<'static>) -> Self::Future {
        if req.slave != self.unit {
            return std::future::ready(Err(ExceptionCode::GatewayTargetDevice));
        }
        let at = Instant::now();
        let (answer, trigger) = self.station.request(&req.request, ready(&self.shared));
        if let Some(t) = trigger {
            tracing::debug!(
                "Modbus trigger_seq {} for part {}",
                t.trigger_seq,
                t.part_id
            );
            let station = self.station.clone();
            let (ticket, seq) = (t.ticket, t.trigger_seq);
            let reply = Reply::new(&t.part_id, at, move |o| station.apply(ticket, seq, o));
            if let Err(e) = self.shared.trigger(t.part_id, reply) {
                tracing::info!("Modbus trigger_seq {seq} answered with error: {e}");
            }
        }
        std::future::ready(answer)
    }
}

/// Largest Modbus TCP ADU: a 7-byte MBAP header and a PDU of at most 253 bytes, so the
/// header's length field (unit id + PDU) is at most 254.
const MAX_MBAP_LENGTH: usize = 254;

/// A connection's stream that fails a read once the peer has been silent for `limit`, or
/// sends a frame header no Modbus TCP client sends (protocol id not 0, length 0 or over 254).
/// tokio-modbus would wait for the whole of a length like 12 064 (`GET /…` read as a
/// header): such a connection is closed at once instead of holding a slot.
struct Idle {
    io: TcpStream,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// The header of the frame being read, and how much of it is in.
    header: [u8; 7],
    have: usize,
    /// Body bytes of the current frame still to come.
    body: usize,
}

impl Idle {
    fn new(io: TcpStream, limit: Duration) -> Idle {
        Idle {
            io,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            header: [0; 7],
            have: 0,
            body: 0,
        }
    }

    /// Follows the frames through `bytes`; an error names a header that cannot be Modbus TCP.
    fn check(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.body > 0 {
                let n = self.body.min(bytes.len());
                self.body -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (7 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 7 {
                self.have = 0;
                let protocol = u16::from_be_bytes([self.header[2], self.header[3]]);
                let len = u16::from_be_bytes([self.header[4], self.header[5]]) as usize;
                if protocol != 0 || len == 0 || len > MAX_MBAP_LENGTH {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("not a Modbus TCP frame (protocol id {protocol}, length {len})"),
                    ));
                }
                // The unit id was the header's last byte.
                self.body = len - 1;
            }
        }
        Ok(())
    }
}

impl AsyncRead for Idle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let until = tokio::time::Instant::now() + this.limit;
                this.timer.as_mut().reset(until);
                if r.is_ok() {
                    this.check(&buf.filled()[before..])?;
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no request for {} s", this.limit.as_secs()),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Idle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves the register map on `listener` until `stop`, and counts the `heartbeat` once a
/// second while the box is healthy. An accept error ends it (the supervisor then restarts the
/// daemon, naming the task).
pub async fn serve(
    listener: TcpListener,
    unit: u8,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let station = Arc::new(Station::default());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = |stream: TcpStream, peer: SocketAddr| {
        let (station, shared, slots) = (station.clone(), shared.clone(), slots.clone());
        async move {
            let Ok(slot) = slots.try_acquire_owned() else {
                tracing::warn!(
                    "Modbus client {peer} refused: {MAX_CONNECTIONS} connections already open"
                );
                return Ok(None);
            };
            let _ = stream.set_nodelay(true);
            tracing::debug!("Modbus client {peer} connected");
            let conn = Conn {
                station,
                shared,
                unit,
                _slot: slot,
            };
            Ok(Some((conn, Idle::new(stream, IDLE))))
        }
    };
    let on_error = |e: io::Error| tracing::warn!("Modbus connection closed: {e}");
    let serving = server.serve(&on_connected, on_error);
    tokio::pin!(serving);
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = &mut serving => {
                if let Err(e) = r {
                    tracing::error!("Modbus server: accept failed: {e}");
                }
                return;
            }
            _ = second.tick() => {
                if healthy(&shared) {
                    station.beat();
                }
            }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_idle_limit() {
        use tokio::io::AsyncReadExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let mut idle = Idle::new(s, Duration::from_millis(50));
        let mut b = [0u8; 4];
        let e = idle.read(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn frame_headers_no_modbus_client_sends_fail_the_read() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        let mut g = Idle::new(s, IDLE);
        // Two good frames split anywhere, then HTTP.
        let good = [0u8, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 10];
        let mut stream: Vec<u8> = good.iter().chain(good.iter()).copied().collect();
        for chunk in stream.chunks(5) {
            g.check(chunk).unwrap();
        }
        assert_eq!((g.have, g.body), (0, 0));
        stream = b"GET / HTTP/1.1\r\n".to_vec();
        assert!(g
            .check(&stream)
            .unwrap_err()
            .to_string()
            .contains("length 12064"));
        let mut g2 = Idle::new(g.io, IDLE);
        assert!(g2.check(&[0, 1, 0, 7, 0, 6, 1]).is_err(), "protocol id 7");
        let mut g3 = Idle::new(g2.io, IDLE);
        assert!(g3.check(&[0, 1, 0, 0, 0, 0, 1]).is_err(), "length 0");
    }
}
