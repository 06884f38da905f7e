//! The line's controller (PLC) side: a Modbus TCP server (tokio-modbus) on the daemon's
//! runtime, serving the register map of [`registers`] (README, "The line's controller: Modbus
//! TCP"). A write that changes `trigger_seq` is a trigger like MQTT `cmd/trigger`
//! ([`Shared::trigger`]); its answer lands in the result registers, in trigger order.
//!
//! Each connection is its own task: a malformed frame (wrong protocol id, bad length, unknown
//! encoding) closes that connection only. At most [`MAX_CONNECTIONS`] at once; one silent for
//! [`IDLE`] is closed (a PLC polls far more often; a cable pulled leaves no FIN).

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
    shared.inbox.triggered()
        && !shared.stopping()
        && !shared.status.paused()
        && shared.status.camera_ok()
        && shared.health.inference_running()
        && shared.inbox.pending_triggers() < MAX_TRIGGERS
}

/// Healthy as `/healthz` says it: what the `heartbeat` counts.
fn healthy(shared: &Shared) -> bool {
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

/// A connection's stream that fails a read once the peer has been silent for `limit`.
struct Idle {
    io: TcpStream,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Idle {
    fn new(io: TcpStream, limit: Duration) -> Idle {
        Idle {
            io,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl AsyncRead for Idle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let until = tokio::time::Instant::now() + this.limit;
                this.timer.as_mut().reset(until);
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
}
