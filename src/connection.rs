//! What every socket's life has, whatever its transport (a native WebSocket, a Pusher
//! WebSocket, an SSE stream): one place for it, so the three cannot drift apart again (SSE once
//! counted no socket in the metrics, and a Pusher socket whose upgrade failed was counted
//! opened and never closed).
//!
//! - [`spawn`]: the socket's task on the server's tracker (shutdown waits for it), its slot
//!   under `max_sockets` held until it ends, counted opened and closed (with its close code) in
//!   the metrics, told to the callbacks, and a slow reader's close logged with its address;
//! - [`switching_protocols`]: the `101` of a WebSocket upgrade;
//! - [`heartbeat_tick`]: the heartbeat's timer;
//! - [`flush_then_close`]: the one cleanup path's last steps, bounded by [`CLOSE_TIMEOUT`].
//!
//! The transports (`protocol::native`, `protocol::pusher`, `protocol::sse`) keep their own
//! loop: what they read and write differs, and an idle socket's task is mostly that loop.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::TaskTracker;
use warp::http::header::{self, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;

use crate::metrics::Transport;
use crate::outbox::Outbox;
use crate::protocol::native::{self, Socket};
use crate::protocol::SocketContext;
use crate::wire::CloseReason;

/// How long the closing steps (writing what a shutdown leaves queued, the close handshake)
/// may take before the connection is simply dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Who a socket is, for the metrics, the callbacks and the log.
pub struct Peer {
    /// What it speaks.
    pub transport: Transport,
    /// Its uid and its id on this node; `None` for a socket with no uid (Pusher), which the
    /// callbacks do not report.
    pub uid: Option<(String, u64)>,
    /// The client's address, for the slow-reader line.
    pub client: Option<IpAddr>,
}

/// Runs `run`, a socket's transport task that returns the close code it ended with (`None`:
/// the connection was lost, or the upgrade never completed), on `tracker`, holding `slot` until
/// it ends, counted in the metrics and told to the callbacks.
pub fn spawn<F>(
    ctx: &Arc<SocketContext>,
    tracker: &TaskTracker,
    slot: impl Send + 'static,
    peer: Peer,
    run: F,
) where
    F: Future<Output = Option<u16>> + Send + 'static,
{
    ctx.metrics.socket_connected(peer.transport);
    if let Some((uid, socket)) = &peer.uid {
        ctx.callbacks.connected(uid, *socket);
    }
    let ctx = ctx.clone();
    // Boxed here, before the task's future is made: a future moved into an async block and
    // awaited there is stored twice (the moved value and the awaited one), and this one is
    // the socket's whole state for its whole life (an idle socket went from 3.4 to 7.9 KiB).
    let run = Box::pin(run);
    tracker.spawn(async move {
        let _slot = slot;
        let code = run.await;
        ctx.metrics.socket_closed(peer.transport, code);
        if let Some((uid, socket)) = &peer.uid {
            ctx.callbacks.disconnected(uid, *socket, code);
        }
        if code == Some(CloseReason::SlowConsumer.code()) {
            let client = peer
                .client
                .map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
            log::warn!(
                "socket of {client} closed as a slow reader (4008): its send queue was full"
            );
        }
    });
}

/// The heartbeat timer (WebSocket pings, SSE comments): the first tick after a random phase,
/// which spreads the heartbeats of thousands of sockets opened (or given a new period)
/// together.
pub fn heartbeat_tick(period: Duration) -> tokio::time::Interval {
    use rand::Rng;
    let phase = period.mul_f64(rand::rng().random_range(0.5..1.0));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade whose key gave `accept`.
pub fn switching_protocols(accept: HeaderValue) -> Response {
    let mut res = Response::new(Default::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    res
}

/// The last steps of a WebSocket that left its streams: on a shutdown (`flush`), write what
/// its outbox still holds (pushes already answered with success) within [`CLOSE_TIMEOUT`] (if
/// that fails or takes too long, the connection is just dropped); then free the outbox and run
/// `close`, the transport's close handshake.
pub async fn flush_then_close<S>(
    ws: &mut Socket<S>,
    outbox: &Outbox,
    flush: bool,
    close: impl AsyncFnOnce(&mut Socket<S>),
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if flush {
        let flushed = async {
            while let Some(first) = outbox.pop() {
                native::write_batch(ws, first, outbox, usize::MAX).await?;
            }
            Ok::<_, tokio_tungstenite::tungstenite::Error>(())
        };
        if !matches!(
            tokio::time::timeout(CLOSE_TIMEOUT, flushed).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
    outbox.close();
    close(ws).await;
}
