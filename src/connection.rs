//! A socket's whole life, whatever its transport (a native WebSocket, a Pusher WebSocket, an
//! SSE stream): one place for it, so the three cannot drift apart again (SSE once counted no
//! socket in the metrics, and a Pusher socket whose upgrade failed was counted opened and never
//! closed). A transport is a codec and an inbound handler ([`Transport`]); everything else is
//! here, once:
//!
//! - [`join`]: the socket joins the hub (before its `101` or `200` is written, so a push that
//!   follows finds it) with what it is told first: missed messages, a fresh page's offline
//!   inbox, its data pools' snapshots;
//! - [`spawn`]: the socket's task on the server's tracker (shutdown waits for it), its slot
//!   under `max_sockets` held until it ends, counted opened and closed (with its close code) in
//!   the metrics, told to the callbacks, and a slow reader's close logged with its address;
//! - [`run`]: the one loop. The preamble first (a transport's greeting, `_welcome`, gaps,
//!   missed messages, the offline inbox), then a `select!` over the outbox (which also brings
//!   the server's node-wide changes: shutdown, or draining for SSE, and a new heartbeat
//!   period), what the client sends and the keep-alive timer; every queued frame goes out in batches, every write bounded by one
//!   heartbeat interval; room moves carried out; then the single cleanup path: leave the hub,
//!   the transport's own leaving (Pusher's store), on shutdown the queue flushed, the close;
//! - [`switching_protocols`]: the `101` of a WebSocket upgrade.
//!
//! **Idle memory.** An idle socket is mostly its task's future, and a future is as large as the
//! largest state it can be in. So the loop keeps one small await inline (the idle `select!`)
//! and boxes every other one (writes, answers, room moves, closing): those states exist for a
//! moment, in one allocation, instead of widening every idle socket for its whole life.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use warp::http::header::{self, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;

use crate::hub::Session;
use crate::metrics;
use crate::outbox::Outbox;
use crate::pools::PoolError;
use crate::protocol::{Moved, SocketContext};
use crate::registry::Subscription;
use crate::wire::Proto;
use crate::wire::{CloseReason, Frame};

/// How long the closing steps (writing what a shutdown leaves queued, the close handshake)
/// may take before the connection is simply dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Most queued frames written before one flush, so one busy socket cannot starve its reads.
const MAX_BATCH: usize = 64;

/// Who a socket is, for the metrics, the callbacks and the log.
pub struct Peer {
    /// What it speaks.
    pub transport: metrics::Transport,
    /// Its uid and its id on this node; `None` for a socket with no uid (Pusher), which the
    /// callbacks do not report.
    pub uid: Option<(String, u64)>,
    /// The client's address, for the slow-reader line.
    pub client: Option<IpAddr>,
}

/// Why a socket's loop ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// One of the server's reasons, told to the client with its close code (see
    /// [`CloseReason`]).
    Close(CloseReason),
    /// A close its transport chose, in its own protocol's codes (Pusher's 4009 for a refused
    /// sign-in, or a socket refused right after its upgrade).
    Refused(u16, &'static str),
    /// The connection is gone: nobody is left to tell.
    Lost,
}

impl std::fmt::Debug for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Close(r) => write!(f, "{} {}", r.code(), r.text()),
            Ended::Refused(code, text) => write!(f, "{code} {text}"),
            Ended::Lost => f.write_str("connection lost"),
        }
    }
}

/// What the loop asks a transport to write.
pub enum Out {
    /// A frame; a live one (from the outbox) with its stream slot and number there.
    Frame(Frame, Option<(u16, u64)>),
    /// Text of the transport's own (a Pusher reply, SSE's opening comment), written as it is.
    Text(String),
    /// The keep-alive: a WebSocket ping, a Pusher `pusher:ping`, an SSE comment.
    Ping,
}

/// What a client sent, as its transport read it.
pub enum Inbound<M> {
    /// Something to answer ([`Transport::answer`]).
    Message(M),
    /// Something that only shows the client is alive (a pong, a frame with nothing to do).
    Alive,
    /// The client closed, broke the protocol, or went away.
    End(Ended),
}

/// A write failed: the connection is gone.
#[derive(Debug)]
pub struct Gone;

/// What a transport is: a codec (how frames, replies and the keep-alive are written, how the
/// close is said) and an inbound handler (what the client's messages mean). [`run`] does the
/// rest.
///
/// The methods that return futures say `+ Send` so that a socket's task can be spawned; their
/// implementations are plain `async` blocks.
pub trait Transport: Send {
    /// A client message that needs an answer.
    type Message: Send;

    /// `true`: the stream ends as soon as the server stops accepting (SSE: the response is a
    /// request in flight, which the server waits for before it shuts sockets down). `false`:
    /// at shutdown, after requests in flight were answered (WebSockets).
    const ENDS_ON_DRAIN: bool = false;

    /// Whether a reload that changes `heartbeat_interval_secs` restarts the keep-alive timer
    /// (Pusher's follows the app's activity timeout instead).
    const FOLLOWS_HEARTBEAT: bool = true;

    /// Written first of all, before the preamble.
    fn greeting(&self) -> Option<Out> {
        None
    }

    /// The keep-alive timer, started after the preamble (and again after a heartbeat change):
    /// when it first fires, and its period after that.
    fn timer(&mut self, ctx: &SocketContext) -> (Duration, Duration) {
        heartbeat(ctx.heartbeat())
    }

    /// The keep-alive timer fired: `Ok(true)` to write [`Out::Ping`], `Ok(false)` for nothing,
    /// or the end (the client did not answer the last one).
    fn tick(&mut self) -> Result<bool, Ended>;

    /// Waits for what the client sends next. Dropped whenever something else happens first,
    /// so it must lose nothing when dropped.
    fn next(&mut self) -> impl Future<Output = Inbound<Self::Message>> + Send + '_;

    /// Answers one message: what to write back, or how the socket ends.
    fn answer<'a>(
        &'a mut self,
        message: Self::Message,
        session: &'a mut Session,
        ctx: &'a SocketContext,
    ) -> impl Future<Output = Result<Vec<Out>, Ended>> + Send + 'a;

    /// Writes `out` in order, then flushes.
    fn write(&mut self, out: Vec<Out>) -> impl Future<Output = Result<(), Gone>> + Send + '_;

    /// A room move was carried out; its frames are written next.
    fn moved(&mut self, _moved: &Moved) {}

    /// The socket left the hub: what the transport keeps elsewhere leaves too (Pusher's store:
    /// subscription counts and presence members).
    fn left<'a>(&'a mut self, _session: &'a Session) -> impl Future<Output = ()> + Send + 'a {
        async {}
    }

    /// Says goodbye as the protocol does (a close frame and its handshake, an SSE `close`
    /// event), bounded in time.
    fn close<'a>(
        &'a mut self,
        ended: Ended,
        ctx: &'a SocketContext,
    ) -> impl Future<Output = ()> + Send + 'a;

    /// The close code the metrics and callbacks report (`None`: the connection was lost).
    fn code(ended: Ended) -> Option<u16> {
        close_code(ended)
    }
}

/// The close code `ended` sends (`None`: the connection was lost).
pub fn close_code(ended: Ended) -> Option<u16> {
    match ended {
        Ended::Close(reason) => Some(reason.code()),
        Ended::Refused(code, _) => Some(code),
        Ended::Lost => None,
    }
}

/// Joins the hub as `sub`, resuming from `since`, and prepares what the socket is told before
/// anything live: the hub's `_welcome`, gaps and missed messages; for a fresh `proto=2` page
/// whose transport can ack (`acks`), its uid's offline inbox, which it may then ack (one that
/// resumes had it already, and `/sse` cannot ack); then the snapshot of every data pool among
/// its topics. Called before the transport's first answer (`101`, or the event stream's `200`)
/// is written: once the page sees its socket open, a push for its uid finds it, and what is
/// queued meanwhile waits in its outbox.
pub async fn join(
    ctx: &SocketContext,
    sub: Subscription,
    since: Option<&HashMap<String, String>>,
    acks: bool,
) -> Result<Session, PoolError> {
    let fresh = acks && since.is_none() && sub.proto == Proto::Resumable;
    let mut session = ctx.hub.connect(sub, since).await?;
    if fresh {
        let uid = &session.membership.subscription().uid;
        let inbox = ctx.inbox.frames_of(uid).await?;
        let outbox = session.membership.outbox();
        outbox.remember_sent(inbox.iter().map(|(id, _)| id.as_str()));
        session
            .preamble
            .extend(inbox.into_iter().map(|(_, frame)| frame));
    }
    crate::protocol::pool_snapshots(&mut session, ctx).await?;
    Ok(session)
}

/// Runs `run`, a socket's task that returns the close code it ended with (`None`: the
/// connection was lost, or the upgrade never completed), on `tracker`, holding `slot` until
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
    let end = End {
        _slot: slot,
        peer,
        ctx: ctx.clone(),
    };
    // One allocation holds the socket's whole state, and the task spawned is a pointer to it:
    // tokio's task cell then fits in 128 bytes instead of 256. `Tracked` is a struct rather
    // than an async block: a future moved into an async block and awaited there is stored
    // twice (an idle socket once went from 3.4 to 7.9 KiB that way).
    let task: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(Tracked {
        run,
        end: Some(end),
    });
    tracker.spawn(task);
}

pin_project_lite::pin_project! {
    /// A socket's task: its transport's future, then what its end is told.
    struct Tracked<F, S> {
        #[pin]
        run: F,
        end: Option<End<S>>,
    }
}

/// What a socket's end is told to, and the slot it holds until then.
struct End<S> {
    _slot: S,
    peer: Peer,
    ctx: Arc<SocketContext>,
}

impl<F, S> Future for Tracked<F, S>
where
    F: Future<Output = Option<u16>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let code = std::task::ready!(this.run.poll(cx));
        if let Some(end) = this.end.take() {
            end.report(code);
        }
        Poll::Ready(())
    }
}

impl<S> End<S> {
    /// The socket ended with close code `code` (`None`: the connection was lost); its slot is
    /// freed as this returns.
    fn report(self, code: Option<u16>) {
        let End { peer, ctx, .. } = &self;
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
    }
}

/// Serves a socket that joined the hub as `session` over `transport` until it ends, for
/// whatever reason; leaves the hub on the way out, then closes (flushing its queue first on
/// shutdown). Returns why it ended.
///
/// Everything by reference: the caller's future holds the transport and the session once, and
/// this one only borrows them (a value moved into a nested future is a second copy of it for
/// the socket's whole life). A plain `fn` returning an `async` block, like [`drive`]: an
/// `async fn` would keep its arguments twice (as arguments, and as the body's locals).
#[allow(clippy::manual_async_fn)]
pub fn run<'a, T: Transport>(
    transport: &'a mut T,
    session: &'a mut Session,
    ctx: &'a SocketContext,
) -> impl Future<Output = Ended> + Send + 'a {
    async move {
        log::debug!(
            "socket {} opened ({} live)",
            session.membership.id(),
            ctx.hub.socket_count()
        );
        let ended = drive(transport, session, ctx).await;
        // Boxed, in one step: the closing steps run once, so their state should not sit in
        // every idle socket's task for its whole life.
        Box::pin(async move {
            log::debug!("socket {} closed: {ended:?}", session.membership.id());
            // Leaving first: from here on nothing new is queued, so what is flushed below is
            // all.
            session.membership.leave();
            transport.left(session).await;
            finish(transport, session.membership.outbox(), ended, ctx).await;
        })
        .await;
        ended
    }
}

/// Whether the server is ending sockets of this transport.
fn stopping<T: Transport>(ctx: &SocketContext) -> bool {
    if T::ENDS_ON_DRAIN {
        ctx.is_draining()
    } else {
        ctx.is_shutting_down()
    }
}

/// The loop. Node-wide changes (a shutdown, a new heartbeat period) come as a wake-up of the
/// outbox ([`crate::registry::Registry::wake_all`]) and are read from `ctx` at the top of each
/// turn; the socket already joined the registry, so either it reads the change here or the
/// wake-up reaches it.
#[allow(clippy::manual_async_fn)]
fn drive<'a, T: Transport>(
    t: &'a mut T,
    session: &'a mut Session,
    ctx: &'a SocketContext,
) -> impl Future<Output = Ended> + Send + 'a {
    async move {
        if stopping::<T>(ctx) {
            return Ended::Close(CloseReason::ServerShutdown);
        }
        // The greeting, then welcome, gaps, missed messages and the inbox go out before anything
        // live (which waits in the outbox).
        // (Its own block: a list that stayed empty, never moved, would otherwise be kept in
        // every state of the loop below.)
        {
            let first: Vec<Out> = t
                .greeting()
                .into_iter()
                .chain(
                    std::mem::take(&mut session.preamble)
                        .into_iter()
                        .map(|f| Out::Frame(f, None)),
                )
                .collect();
            if !first.is_empty() {
                if let Some(ended) = send(t, first, session.membership.outbox(), ctx).await {
                    return ended;
                }
            }
        }
        // A timer in place (this future is pinned) rather than an `Interval`, which boxes its own.
        let mut beats = ctx.heartbeat_changes();
        let (first, mut period) = t.timer(ctx);
        let mut tick = std::pin::pin!(tokio::time::sleep(first));
        loop {
            if stopping::<T>(ctx) {
                return Ended::Close(CloseReason::ServerShutdown);
            }
            if ctx.heartbeat_changes() != beats {
                beats = ctx.heartbeat_changes();
                // The heartbeat period changed (a config reload): start over with it, giving the
                // client a whole new period to answer.
                if T::FOLLOWS_HEARTBEAT {
                    let first;
                    (first, period) = t.timer(ctx);
                    tick.as_mut().reset(Instant::now() + first);
                }
            }
            // Everything queued goes out before we wait again (so no wake-up is ever missed).
            let outbox = session.membership.outbox();
            while let Some(batch) = batch(outbox) {
                if let Some(ended) = send(t, batch, outbox, ctx).await {
                    return ended;
                }
            }
            if let Some(reason) = outbox.evicted() {
                return Ended::Close(reason);
            }
            if outbox.has_controls() {
                // Boxed: rare, and its state (a broker attach, the moves being told) would
                // otherwise sit in every idle socket's task.
                if let Some(ended) = Box::pin(moves(t, session, ctx)).await {
                    return ended;
                }
                continue;
            }
            // The one await an idle socket sits in: keep it small. Its handlers only decide,
            // awaiting nothing, so what woke it is gone before anything else is awaited.
            let respond = tokio::select! {
                biased;
                // A frame was queued, we were evicted, or something changed for every socket:
                // all are handled at the top.
                _ = session.membership.outbox().ready() => continue,
                inbound = t.next() => match inbound {
                    Inbound::Message(m) => Some(m),
                    Inbound::Alive => continue,
                    Inbound::End(ended) => return ended,
                },
                _ = &mut tick => {
                    // The next tick one period from now: a late one (a busy node) is not
                    // followed by a burst to catch up.
                    tick.as_mut().reset(Instant::now() + period);
                    match t.tick() {
                        Ok(true) => None,
                        Ok(false) => continue,
                        Err(ended) => return ended,
                    }
                }
            };
            // Boxed: answering runs for a moment, and its state (store and hub calls, the
            // write) must not sit in every idle socket's task.
            if let Some(ended) = Box::pin(respond_to(t, respond, session, ctx)).await {
                return ended;
            }
        }
    }
}

/// Answers `message` (`None`: the keep-alive is due) and writes what that gives, [`guarded`].
/// `Some` says why the socket must end.
async fn respond_to<T: Transport>(
    t: &mut T,
    message: Option<T::Message>,
    session: &mut Session,
    ctx: &SocketContext,
) -> Option<Ended> {
    let out = match message {
        Some(m) => match t.answer(m, session, ctx).await {
            Ok(out) => out,
            Err(ended) => return Some(ended),
        },
        None => vec![Out::Ping],
    };
    if out.is_empty() {
        return None;
    }
    guarded(
        t.write(out),
        session.membership.outbox(),
        ctx,
        stopping::<T>,
    )
    .await
}

/// Carries out the room moves waiting in the outbox and tells the client, one move at a time:
/// what the transport notes of a move (an SSE stream's positions, which every later event's
/// `id:` carries) is in force for its frames and no earlier ones. `Some` says why the socket
/// must end.
async fn moves<T: Transport>(
    t: &mut T,
    session: &mut Session,
    ctx: &SocketContext,
) -> Option<Ended> {
    for m in crate::protocol::apply_controls(session, ctx).await {
        t.moved(&m);
        let mut told = vec![Out::Frame(m.frame, None)];
        told.extend(m.snapshot.map(|snapshot| Out::Frame(snapshot, None)));
        if let Some(ended) = send(t, told, session.membership.outbox(), ctx).await {
            return Some(ended);
        }
    }
    None
}

/// The next batch of queued frames: up to [`MAX_BATCH`], or fewer once they pass 16 KiB.
fn batch(outbox: &Outbox) -> Option<Vec<Out>> {
    let (frame, slot, seq) = outbox.pop_placed()?;
    let mut bytes = frame.len();
    let mut out = vec![Out::Frame(frame, Some((slot, seq)))];
    while out.len() < MAX_BATCH && bytes < 16 * 1024 {
        let Some((frame, slot, seq)) = outbox.pop_placed() else {
            break;
        };
        bytes += frame.len();
        out.push(Out::Frame(frame, Some((slot, seq))));
    }
    Some(out)
}

/// Writes `out` through the transport, [`guarded`]. Boxed: a write in flight (its frames, its
/// stuck-write timer) is a few hundred bytes that an idle socket's task need not carry. One
/// allocation per batch of up to 64 frames. The box itself is what the caller awaits (an
/// `async fn` around it would keep its arguments too, in every idle socket).
fn send<'a, T: Transport>(
    t: &'a mut T,
    out: Vec<Out>,
    outbox: &'a Outbox,
    ctx: &'a SocketContext,
) -> Pin<Box<impl Future<Output = Option<Ended>> + Send + 'a>> {
    Box::pin(guarded(t.write(out), outbox, ctx, stopping::<T>))
}

/// Runs a write to completion unless the server shuts down, the socket is evicted, or the write
/// stays stuck for `limit` (one heartbeat interval: a client that reads nothing for that long is
/// as dead as one that answers no ping), so a client that stops reading can never pin its task,
/// even when nothing more is pushed to it. `Some` says why the socket must end.
async fn guarded<F>(
    sent: F,
    outbox: &Outbox,
    ctx: &SocketContext,
    stopping: fn(&SocketContext) -> bool,
) -> Option<Ended>
where
    F: Future<Output = Result<(), Gone>>,
{
    let mut sent = std::pin::pin!(sent);
    // Nearly every write completes at once: the write is polled first, so the timer and the
    // wake-up registrations below are only armed (and paid for) when it actually has to wait.
    // A new heartbeat period does not change this write's limit.
    let mut stuck = std::pin::pin!(tokio::time::sleep(ctx.heartbeat()));
    loop {
        tokio::select! {
            biased;
            result = &mut sent => return result.err().map(|_| Ended::Lost),
            _ = &mut stuck => return Some(Ended::Close(CloseReason::HeartbeatTimeout)),
            // Also woken by newly queued frames: those wait for the caller's next drain.
            _ = outbox.ready() => {
                if stopping(ctx) {
                    return Some(Ended::Close(CloseReason::ServerShutdown));
                }
                if let Some(reason) = outbox.evicted() {
                    return Some(Ended::Close(reason));
                }
            }
        }
    }
}

/// The one cleanup path's last steps, once the socket left its streams: on a shutdown, write
/// what its outbox still holds (pushes already answered with success) within
/// [`CLOSE_TIMEOUT`] (if that fails or takes too long, the connection is just dropped); then
/// free the outbox and say goodbye as the transport does.
async fn finish<T: Transport>(t: &mut T, outbox: &Outbox, ended: Ended, ctx: &SocketContext) {
    if ended == Ended::Close(CloseReason::ServerShutdown) {
        let flushed = async {
            while let Some(batch) = batch(outbox) {
                t.write(batch).await?;
            }
            Ok::<_, Gone>(())
        };
        if !matches!(
            tokio::time::timeout(CLOSE_TIMEOUT, flushed).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
    outbox.close();
    if ended != Ended::Lost {
        t.close(ended, ctx).await;
    }
}

/// The heartbeat timer (WebSocket pings, SSE comments) of `period`: the first tick after a
/// random phase, which spreads the heartbeats of thousands of sockets opened (or given a new
/// period) together.
pub fn heartbeat(period: Duration) -> (Duration, Duration) {
    use rand::Rng;
    (period.mul_f64(rand::rng().random_range(0.5..1.0)), period)
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

#[cfg(test)]
mod tests {
    /// The size of what `f` returns, here a socket's task future: an idle socket is mostly
    /// that future, so a field or a local added to it is paid by every idle socket.
    fn returned_size<F, A, B, C, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C) -> R,
    {
        std::mem::size_of::<R>()
    }

    fn returned_size5<F, A, B, C, D, E, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D, E) -> R,
    {
        std::mem::size_of::<R>()
    }

    /// A guard on idle memory (BENCHMARKS.md, "where each byte goes"): the task futures of a
    /// native and of a Pusher socket were 976 and 1056 bytes before the loop's awaits were made
    /// small, and are 816 and 888 now. A local kept across two awaits, or an `async fn`'s
    /// arguments, grow them for every socket; this says so before the benchmark does.
    #[test]
    fn socket_task_futures_stay_small() {
        let native = returned_size(crate::protocol::native::upgraded);
        let pusher = returned_size5(crate::protocol::pusher::socket::upgraded);
        assert!(
            native <= 832,
            "a native socket's task future grew to {native} bytes"
        );
        assert!(
            pusher <= 904,
            "a Pusher socket's task future grew to {pusher} bytes"
        );
    }
}
