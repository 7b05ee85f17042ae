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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Ping period (WebSocket) or comment heartbeat period (SSE), in nanoseconds; also how
    /// long a ping may go unanswered, or a write stay stuck. A reload may change it.
    heartbeat_nanos: AtomicU64,
    /// tungstenite settings for a WebSocket, but for the message size limit, which is
    /// `max_client_frame` (a reload may change it for sockets opened afterwards).
    ws_config: WebSocketConfig,
    max_client_frame: AtomicUsize,
    /// Where the socket's end (its close code) is counted.
    pub metrics: Arc<Metrics>,
    /// `true` once sockets shut down. Also bumped, still `false`, when the heartbeat period
    /// changes: every task already watches this channel, so a reload reaches open sockets
    /// without a byte more per socket.
    shutdown: watch::Sender<bool>,
    /// `true` once the server stops accepting; bumped like `shutdown` (SSE streams watch it).
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
        let max_client_frame = ws_config.max_message_size.unwrap_or(usize::MAX);
        SocketContext {
            hub,
            heartbeat_nanos: AtomicU64::new(nanos(heartbeat)),
            ws_config,
            max_client_frame: AtomicUsize::new(max_client_frame),
            metrics,
            shutdown: watch::channel(false).0,
            draining: watch::channel(false).0,
        }
    }

    /// The heartbeat period in force now.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_nanos(self.heartbeat_nanos.load(Ordering::Relaxed))
    }

    /// Changes the heartbeat period of every socket, open ones included: each restarts its
    /// heartbeat with the new period (and a fresh random phase) when woken by this.
    pub fn set_heartbeat(&self, heartbeat: Duration) {
        if self
            .heartbeat_nanos
            .swap(nanos(heartbeat), Ordering::Relaxed)
            != nanos(heartbeat)
        {
            // Wakes every task once; the value stays what it is (a shutdown under way stays).
            self.shutdown.send_modify(|_| {});
            self.draining.send_modify(|_| {});
        }
    }

    /// tungstenite settings for a socket opening now.
    pub fn ws_config(&self) -> WebSocketConfig {
        let max = self.max_client_frame.load(Ordering::Relaxed);
        self.ws_config
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }

    /// Changes the largest message a page may send, for sockets opened from now on.
    pub fn set_max_client_frame_bytes(&self, max: usize) {
        self.max_client_frame.store(max, Ordering::Relaxed);
    }

    /// Flips to `true` when the server shuts down its sockets, after requests in flight were
    /// answered (so pushes they made are written first). Each task takes its own receiver. A
    /// change that leaves it `false` means the heartbeat period changed.
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

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
