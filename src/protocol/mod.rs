//! What a socket speaks, one module per protocol. Each takes a socket that already joined the
//! [`Hub`] and runs its task; none of them knows another.
//!
//! - [`native`]: a WebSocket (`/ws`), over [`close_watch`] so a failed connection still ends
//!   with a clean close;
//! - [`sse`]: a `text/event-stream` response (`/sse`), the fallback where WebSockets do not get
//!   through.

pub mod close_watch;
pub mod native;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::hub::Hub;

/// What every socket task shares, whatever its protocol.
#[derive(Clone)]
pub struct SocketContext {
    /// The hub the socket joined (for its counters).
    pub hub: Arc<Hub>,
    /// Ping period (WebSocket) or comment heartbeat period (SSE); also how long a ping may go
    /// unanswered, or a write stay stuck.
    pub heartbeat: Duration,
    /// Flips to `true` when the server shuts down its sockets, after requests in flight were
    /// answered (so pushes they made are written first).
    pub shutdown: watch::Receiver<bool>,
    /// Flips to `true` as soon as the server stops accepting. An SSE stream is itself a request
    /// in flight, which the server waits for before `shutdown`, so it ends here.
    pub draining: watch::Receiver<bool>,
    /// Where the socket's end (its close code) is counted.
    pub metrics: Arc<crate::metrics::Metrics>,
}
