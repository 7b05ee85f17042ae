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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::hub::{Hub, Session};
use crate::metrics::Metrics;
use crate::outbox::Control;
use crate::pools::PoolError;
use crate::receipts::{Acked, Acker};
use crate::services::Services;
use crate::wire::{self, Frame, Position, Proto, StreamKey};

/// What every socket task shares, whatever its protocol: one per server, behind an `Arc`, so a
/// socket's task holds one pointer to it (an idle socket's memory is mostly its task). It
/// derefs to the node's [`Services`] (hub, metrics, receipts, inbox, pools, callbacks) and adds
/// the sockets' own settings and shutdown signals.
pub struct SocketContext {
    /// The node's services.
    pub services: Arc<Services>,
    /// Ping period (WebSocket) or comment heartbeat period (SSE), in nanoseconds; also how
    /// long a ping may go unanswered, or a write stay stuck. A reload may change it.
    heartbeat_nanos: AtomicU64,
    /// tungstenite settings for a WebSocket, but for the message size limit, which is
    /// `max_client_frame` (a reload may change it for sockets opened afterwards).
    ws_config: WebSocketConfig,
    max_client_frame: AtomicUsize,
    /// Most streams a socket follows besides those of its key (rooms the backend moved it
    /// into); further moves into rooms are ignored.
    max_rooms: AtomicUsize,
    /// `true` once sockets shut down.
    shutting_down: AtomicBool,
    /// `true` once the server stops accepting (SSE streams end then).
    draining: AtomicBool,
    /// How many times the heartbeat period changed.
    heartbeat_changes: AtomicU64,
}

impl std::ops::Deref for SocketContext {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}

impl SocketContext {
    /// The context of a server's sockets over `services`; nothing is shutting down yet.
    pub fn with_services(
        services: Arc<Services>,
        heartbeat: Duration,
        ws_config: WebSocketConfig,
    ) -> SocketContext {
        let max_client_frame = ws_config.max_message_size.unwrap_or(usize::MAX);
        SocketContext {
            services,
            heartbeat_nanos: AtomicU64::new(nanos(heartbeat)),
            ws_config,
            max_client_frame: AtomicUsize::new(max_client_frame),
            max_rooms: AtomicUsize::new(64),
            shutting_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            heartbeat_changes: AtomicU64::new(0),
        }
    }

    /// A context over in-memory services with default bounds ([`Services::local`]): tests
    /// and fuzzing.
    pub fn new(
        hub: Arc<Hub>,
        heartbeat: Duration,
        ws_config: WebSocketConfig,
        metrics: Arc<Metrics>,
    ) -> SocketContext {
        SocketContext::with_services(
            Arc::new(Services::local(hub, metrics)),
            heartbeat,
            ws_config,
        )
    }

    /// The same context, letting a socket follow at most `max_rooms` rooms.
    pub fn with_max_rooms(self, max_rooms: usize) -> SocketContext {
        self.set_max_rooms(max_rooms);
        self
    }

    /// Applies a reloaded config's live settings: the heartbeat (open sockets too), the
    /// largest client frame and the most rooms (for sockets and moves from now on), and the
    /// services' bounds and callbacks.
    pub fn reconfigure(&self, live: &crate::config::Live) {
        self.set_heartbeat(live.heartbeat_interval());
        self.set_max_client_frame_bytes(live.max_client_frame_bytes);
        self.set_max_rooms(live.max_topics_per_key);
        self.services.reconfigure(live);
    }

    /// Changes how many rooms a socket may be moved into, for moves from now on.
    pub fn set_max_rooms(&self, max_rooms: usize) {
        self.max_rooms.store(max_rooms, Ordering::Relaxed);
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
            self.heartbeat_changes.fetch_add(1, Ordering::SeqCst);
            self.hub.registry().wake_all();
        }
    }

    /// How many times the heartbeat period changed: a socket that sees this move restarts its
    /// keep-alive timer.
    pub fn heartbeat_changes(&self) -> u64 {
        self.heartbeat_changes.load(Ordering::SeqCst)
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

    /// Whether sockets are being shut down: after requests in flight were answered (so pushes
    /// they made are written first), every socket writes what it has queued and closes.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Whether the server stopped accepting. An SSE stream is itself a request in flight,
    /// which the server waits for before [`SocketContext::shut_down`], so it ends here.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The server stopped accepting: SSE streams end.
    pub fn begin_draining(&self) {
        // Set before the sockets are woken; a socket joining meanwhile reads it when it
        // starts (see `connection::run`).
        self.draining.store(true, Ordering::SeqCst);
        self.hub.registry().wake_all();
    }

    /// Requests in flight are answered: every socket writes what it has queued and closes.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.hub.registry().wake_all();
    }
}

/// A room move a socket's task carried out, to tell the page.
pub struct Moved {
    /// `_join` or `_leave`, for a resumable page (a seed page is told nothing).
    pub frame: Frame,
    /// The stream's slot among the socket's streams.
    pub slot: u16,
    /// The stream's name as the page sees it (`topic:<name>`).
    pub stream: String,
    /// Where the page starts in a stream it joined; `None` for a stream it left.
    pub position: Option<Position>,
    /// A data pool joined: its document, sent right after the `_join` (see `pool_snapshot`).
    pub snapshot: Option<Frame>,
}

/// Carries out the instructions a socket's task found in its outbox: follows the streams it
/// was moved into (at most `max_topics_per_key` besides its key's) and leaves those it
/// was moved out of. Returns what a resumable page must be told, in order, before anything
/// else is written to it: its live frames of a joined stream come after the `_join`.
pub async fn apply_controls(session: &mut Session, ctx: &SocketContext) -> Vec<Moved> {
    let mut moved = Vec::new();
    let Some(controls) = session.membership.outbox().take_controls() else {
        return moved;
    };
    let resumable = session.membership.subscription().proto == Proto::Resumable;
    let slot_of = |session: &Session, key: &StreamKey| {
        session
            .membership
            .streams()
            .find(|(_, k)| k == key)
            .map(|(slot, _)| slot)
    };
    for control in controls {
        match control {
            Control::Follow(key) => {
                let own = session.membership.subscription().keys().count();
                let rooms = session.membership.streams().count() - own;
                if rooms >= ctx.max_rooms.load(Ordering::Relaxed)
                    && slot_of(session, &key).is_none()
                {
                    log::debug!(
                        "socket {} not moved into {}: it follows max_topics_per_key rooms",
                        session.membership.id(),
                        key.name()
                    );
                    continue;
                }
                match ctx.hub.follow(session, key.clone(), None).await {
                    Ok(Some(attached)) if resumable => {
                        let Some(slot) = slot_of(session, &key) else {
                            continue;
                        };
                        let stream = key.name();
                        let snapshot = match &key {
                            StreamKey::Topic(name) => pool_snapshot(session, ctx, slot, name)
                                .await
                                .unwrap_or_else(|e| {
                                    log::warn!(
                                        "no snapshot of pool {name} for a moved socket: {e}"
                                    );
                                    None
                                }),
                            _ => None,
                        };
                        moved.push(Moved {
                            frame: wire::joined(&stream, attached.position),
                            slot,
                            stream,
                            position: Some(attached.position),
                            snapshot,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!(
                        "socket {} not moved into {}: {e}",
                        session.membership.id(),
                        key.name()
                    ),
                }
            }
            Control::Unfollow(key) => {
                let slot = slot_of(session, &key);
                if session.membership.unfollow(&key) && resumable {
                    let stream = key.name();
                    moved.push(Moved {
                        frame: wire::left(&stream),
                        slot: slot.expect("it followed the stream"),
                        stream,
                        position: None,
                        snapshot: None,
                    });
                }
            }
        }
    }
    moved
}

/// Counts a page's ack of message `id` (its text frame `{"ack": id}`). Returns the `_nack` to
/// send when it is refused: an unknown or expired id, or a message that was not for this socket
/// (never sent to it, such as a push that came before it opened; another uid's; a topic it does
/// not follow). A store that cannot be reached counts nothing and says nothing (the page cannot
/// do better by retrying), unless the message was never sent to this socket: that is refused
/// all the same.
///
/// Only a socket the message was sent to may ack it (or take it out of its uid's inbox): its
/// outbox remembers the last [`MAX_SENT_IDS`](crate::outbox::MAX_SENT_IDS) receipt ids it
/// queued, replayed or brought from the inbox. An ack of an older one is refused like one of a
/// message never sent to it.
pub async fn acknowledge(session: &Session, ctx: &SocketContext, id: &str) -> Option<Frame> {
    let unknown = Acked::Unknown.refusal().expect("a refusal");
    if !wire::valid_message_id(id) {
        return Some(wire::nack(id, unknown));
    }
    if !session.membership.outbox().was_sent(id) {
        // Refused before the inbox or the report is touched. An id with no report at all
        // (never issued, expired) is still called unknown.
        let refused = match ctx.receipts.exists(id).await {
            Ok(false) => Acked::Unknown,
            Ok(true) | Err(_) => Acked::NotFor,
        };
        return refused.refusal().map(|reason| wire::nack(id, reason));
    }
    let follows = |topic: &str| {
        session
            .membership
            .streams()
            .any(|(_, k)| matches!(&k, StreamKey::Topic(t) if &**t == topic))
    };
    let acker = Acker {
        uid: &session.membership.subscription().uid,
        socket: session.membership.socket_id(),
        follows: &follows,
    };
    // An ack by a page of the uid that got the message takes it out of the uid's inbox, for all
    // its pages (even once its report expired: an inbox may outlive it).
    let unboxed = match ctx.inbox.remove(acker.uid, id).await {
        Ok(removed) => removed,
        Err(e) => {
            log::debug!("ack not taken out of the inbox: {e}");
            false
        }
    };
    match ctx.receipts.ack(id, &acker).await {
        Ok(Acked::Unknown) if unboxed => None,
        Ok(acked) => acked.refusal().map(|reason| wire::nack(id, reason)),
        Err(e) => {
            log::debug!("ack not counted: {e}");
            None
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// For a `proto=2` page that just joined: the snapshot of every data pool among its topics,
/// appended to its preamble, each after which only later changes reach it (see `pools.rs`).
pub async fn pool_snapshots(session: &mut Session, ctx: &SocketContext) -> Result<(), PoolError> {
    if session.membership.subscription().proto != Proto::Resumable {
        return Ok(());
    }
    let topics: Vec<(u16, Box<str>)> = session
        .membership
        .streams()
        .filter_map(|(slot, key)| match key {
            StreamKey::Topic(name) => Some((slot, name)),
            _ => None,
        })
        .collect();
    let names: Vec<&str> = topics.iter().map(|(_, name)| &**name).collect();
    let which = ctx.pools.which(&names).await?;
    for ((slot, name), is_pool) in topics.iter().zip(which) {
        if is_pool {
            if let Some(frame) = snapshot_at(session, ctx, *slot, name).await? {
                session.preamble.push(frame);
            }
        }
    }
    Ok(())
}

/// For a `proto=2` page moved into topic `name` (in stream slot `slot`): the snapshot frame if
/// the topic is a data pool.
async fn pool_snapshot(
    session: &Session,
    ctx: &SocketContext,
    slot: u16,
    name: &str,
) -> Result<Option<Frame>, PoolError> {
    if ctx.pools.which(&[name]).await?.first() != Some(&true) {
        return Ok(None);
    }
    snapshot_at(session, ctx, slot, name).await
}

/// Pool `name`'s document as a frame, exact at a stream position: the socket's live frames of
/// that stream up to it are dropped, so every later change follows it once.
async fn snapshot_at(
    session: &Session,
    ctx: &SocketContext,
    slot: u16,
    name: &str,
) -> Result<Option<Frame>, PoolError> {
    let Some((doc, at)) = ctx.pools.snapshot(&ctx.hub, name).await? else {
        return Ok(None);
    };
    let Some(frame) = wire::snapshot_frame(name, &doc.json, at.seq) else {
        return Ok(None);
    };
    session.membership.outbox().set_floor(slot, at.seq);
    Ok(Some(frame))
}
