//! What a socket speaks, one module per protocol. Each takes a socket that already joined the
//! [`Hub`] and runs its task; none of them knows another.
//!
//! - [`native`]: a WebSocket (`/ws`), over [`close_watch`] so a failed connection still ends
//!   with a clean close;
//! - [`sse`]: a `text/event-stream` response (`/sse`), the fallback where WebSockets do not get
//!   through;
//! - [`pusher`]: Pusher Channels (`/app/{key}`), for pusher-js and Laravel Echo.

pub mod close_watch;
pub mod native;
pub mod pusher;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::hub::Hub;
use crate::metrics::Metrics;

/// What every socket task shares, whatever its protocol: one per server, behind an `Arc`, so a
/// socket's task holds one pointer to it (an idle socket's memory is mostly its task).
pub struct SocketContext {
    /// The hub the socket joined (for its counters).
    pub hub: Arc<Hub>,
    /// Ping period (WebSocket) or comment heartbeat period (SSE); also how long a ping may go
    /// unanswered, or a write stay stuck.
    pub heartbeat: Duration,
    /// tungstenite settings for a WebSocket.
    pub ws_config: WebSocketConfig,
    /// Where the socket's end (its close code) is counted.
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    draining: watch::Sender<bool>,
}

impl SocketContext {
    /// The context of a server's sockets; nothing is shutting down yet.
    pub fn new(
        hub: Arc<Hub>,
        heartbeat: Duration,
        ws_config: WebSocketConfig,
        metrics: Arc<Metrics>,
    ) -> SocketContext {
        SocketContext {
            hub,
            heartbeat,
            ws_config,
            metrics,
            shutdown: watch::channel(false).0,
            draining: watch::channel(false).0,
        }
    }

    /// Flips to `true` when the server shuts down its sockets, after requests in flight were
    /// answered (so pushes they made are written first). Each task takes its own receiver.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Whether sockets are being shut down.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Flips to `true` as soon as the server stops accepting. An SSE stream is itself a request
    /// in flight, which the server waits for before [`SocketContext::shutdown`], so it ends here.
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Whether the server stopped accepting.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// The server stopped accepting: SSE streams end.
    pub fn begin_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Requests in flight are answered: every socket writes what it has queued and closes.
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }
}
