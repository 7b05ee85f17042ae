//! The native protocol: one WebSocket's life. The socket has already joined the hub (the
//! `/ws` handler connects it before answering 101); this task writes its preamble, then runs a
//! single `select!` over the outbound queue, inbound frames, the heartbeat tick, eviction and
//! shutdown; then exactly one cleanup path (leave the registry, close frame with a
//! [`CloseReason`], bounded wait for the client's close).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use super::close_watch::CloseWatch;
pub use super::SocketContext;
use crate::connection::{self, heartbeat_tick, CLOSE_TIMEOUT};
use crate::hub::Session;
use crate::outbox::Outbox;
use crate::wire::{self, CloseReason, Frame};

/// Bytes tungstenite reads per syscall. Clients only send pongs and the odd small frame, and
/// this buffer is allocated for every idle socket, so it is small (warp's default is 128 KiB);
/// a larger client message grows it to the message's size while it is read.
const READ_BUFFER_BYTES: usize = 256;
/// Outbound bytes gathered before a write; a batch of queued frames goes out in few syscalls.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Most queued frames written before one flush, so one busy socket cannot starve its reads.
const MAX_BATCH: usize = 64;

/// tungstenite settings for a server-side socket.
pub fn ws_config(max_client_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(max_client_frame_bytes))
        .max_frame_size(Some(max_client_frame_bytes))
}

/// A server-side WebSocket over `S`, its reads watched for the client's close frame.
pub type Socket<S> = WebSocketStream<CloseWatch<S>>;

/// Takes `io`, an upgraded connection, as a server-side WebSocket.
pub async fn accept<S>(io: S, config: WebSocketConfig) -> Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WebSocketStream::from_raw_socket(CloseWatch::new(io), Role::Server, Some(config)).await
}

/// The task of a socket that joined the hub as `session` and whose `101` is on its way: waits
/// for the upgrade, then [`serve_in_place`]. Returns the close code it ended with (`None`: the
/// connection was lost, or the upgrade never completed).
///
/// A plain `fn` returning an `async move` block, and everything used in place: this future
/// lives as long as the socket, once per socket, and a value moved into a nested future (or an
/// `async fn`'s argument) is a second copy in it for the socket's whole life.
#[allow(clippy::manual_async_fn)]
pub fn upgraded(
    on_upgrade: OnUpgrade,
    mut session: Session,
    ctx: Arc<SocketContext>,
) -> impl std::future::Future<Output = Option<u16>> + Send + 'static {
    async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            // The connection went away before the upgrade completed; dropping the session
            // leaves the hub.
            Err(e) => {
                log::debug!("upgrade failed: {e}");
                return None;
            }
        };
        let mut ws = accept(TokioIo::new(upgraded), ctx.ws_config()).await;
        serve_in_place(&mut ws, &mut session, &ctx)
            .await
            .map(CloseReason::code)
    }
}

/// Serves an upgraded socket that joined the hub as `session` (by value: tests and fuzzing).
pub async fn serve<S>(
    mut ws: Socket<S>,
    mut session: Session,
    ctx: Arc<SocketContext>,
) -> Option<CloseReason>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_in_place(&mut ws, &mut session, &ctx).await
}

/// Serves an upgraded socket until it closes, for whatever reason; leaves the registry on the
/// way out, then closes (flushing its queue first on shutdown). Returns why it closed (`None`:
/// the connection was lost).
pub async fn serve_in_place<S>(
    ws: &mut Socket<S>,
    session: &mut Session,
    ctx: &SocketContext,
) -> Option<CloseReason>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    log::debug!(
        "socket {} opened ({} live)",
        session.membership.id(),
        ctx.hub.socket_count()
    );
    let mut shutdown = ctx.shutdown();
    let ended = drive(ws, session, ctx, &mut shutdown).await;
    log::debug!("socket {} closed: {ended:?}", session.membership.id());
    // Leaving first: from here on nothing new is queued, so what is flushed below is all.
    session.membership.leave();
    // Boxed: the closing steps run once, so their state should not sit in every idle socket's
    // task for its whole life.
    Box::pin(finish(ws, session.membership.outbox(), ended)).await;
    match ended {
        Ended::Close(reason) => Some(reason),
        Ended::Lost => None,
    }
}

/// The one cleanup path: on shutdown, write what was queued (pushes already answered with
/// success); then the close handshake, bounded in time.
async fn finish<S>(ws: &mut Socket<S>, outbox: &Outbox, ended: Ended)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let shutdown = matches!(ended, Ended::Close(CloseReason::ServerShutdown));
    connection::flush_then_close(ws, outbox, shutdown, async |ws| close(ws, ended).await).await;
}

/// Why the loop ended: either a reason we tell the client, or the connection is already gone.
#[derive(Clone, Copy)]
pub(crate) enum Ended {
    Close(CloseReason),
    Lost,
}

impl std::fmt::Debug for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Close(r) => write!(f, "{} {}", r.code(), r.text()),
            Ended::Lost => f.write_str("connection lost"),
        }
    }
}

async fn drive<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session,
    ctx: &SocketContext,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let preamble = std::mem::take(&mut session.preamble);
    let outbox = session.membership.outbox().clone();
    let outbox = &*outbox;
    let mut heartbeat = ctx.heartbeat();
    if *shutdown.borrow() {
        return Ended::Close(CloseReason::ServerShutdown);
    }
    if !preamble.is_empty() {
        // Welcome, gaps and missed messages go out before anything live (which waits in the
        // outbox).
        let sent = async {
            for frame in preamble {
                ws.feed(Message::Text((*frame).clone())).await?;
            }
            ws.flush().await
        };
        if let Some(ended) = guarded(sent, outbox, shutdown, heartbeat).await {
            return ended;
        }
    }
    let mut tick = heartbeat_tick(heartbeat);
    let mut awaiting_pong = false;
    // A page's ack, read in the select below and counted after it.
    let mut acked: Option<String> = None;

    loop {
        // Everything queued goes out before we wait again (so no wake-up is ever missed).
        while let Some(first) = outbox.pop() {
            if let Some(ended) = guarded(
                write_batch(ws, first, outbox, MAX_BATCH),
                outbox,
                shutdown,
                heartbeat,
            )
            .await
            {
                return ended;
            }
        }
        if let Some(reason) = outbox.evicted() {
            return Ended::Close(reason);
        }
        if outbox.has_controls() {
            // Boxed: rare, and its state (a broker attach) would otherwise sit in every idle
            // socket's task.
            let moved = Box::pin(super::apply_controls(session, ctx)).await;
            let told = async {
                for m in moved {
                    ws.feed(Message::Text((*m.frame).clone())).await?;
                    if let Some(snapshot) = m.snapshot {
                        ws.feed(Message::Text((*snapshot).clone())).await?;
                    }
                }
                ws.flush().await
            };
            // Boxed too: the write in flight must not widen every idle socket's task.
            if let Some(ended) = Box::pin(guarded(told, outbox, shutdown, heartbeat)).await {
                return ended;
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return Ended::Close(CloseReason::ServerShutdown);
                }
                // The heartbeat period changed (a config reload): start over with it, giving
                // the page a whole new period to answer.
                heartbeat = ctx.heartbeat();
                tick = heartbeat_tick(heartbeat);
                awaiting_pong = false;
                continue;
            }
            // A frame was queued, or we were evicted: both are handled at the top.
            _ = outbox.ready() => continue,
            inbound = ws.next() => {
                match inbound {
                    // Anything at all from the client proves it alive; contents are ignored,
                    // but for acks of messages that asked for a receipt.
                    Some(Ok(Message::Close(_))) => return Ended::Close(CloseReason::ClientClosed),
                    Some(Ok(Message::Text(text))) => {
                        awaiting_pong = false;
                        acked = wire::ack_of(&text);
                        if acked.is_none() {
                            continue;
                        }
                    }
                    Some(Ok(_)) => {
                        awaiting_pong = false;
                        continue;
                    }
                    Some(Err(e)) => return classify(e),
                    None => return Ended::Lost,
                }
            }
            _ = tick.tick() => {
                if awaiting_pong {
                    return Ended::Close(CloseReason::HeartbeatTimeout);
                }
                awaiting_pong = true;
            }
        }
        if let Some(id) = acked.take() {
            // Boxed, like the room moves: its state (a store call) is not an idle socket's.
            if let Some(nack) = Box::pin(super::acknowledge(session, ctx, &id)).await {
                let told = ws.send(Message::Text((*nack).clone()));
                if let Some(ended) = Box::pin(guarded(told, outbox, shutdown, heartbeat)).await {
                    return ended;
                }
            }
            continue;
        }
        // Only the heartbeat branch gets here.
        if let Some(ended) = guarded(
            ws.send(Message::Ping(Bytes::new())),
            outbox,
            shutdown,
            heartbeat,
        )
        .await
        {
            return ended;
        }
    }
}

/// Runs a write to completion unless the server shuts down, the socket is evicted, or the write
/// stays stuck for `limit` (one heartbeat interval: a client that reads nothing for that long is
/// as dead as one that answers no ping), so a client that stops reading can never pin its task,
/// even when nothing more is pushed to it. `Some` says why the socket must end.
pub(crate) async fn guarded<F>(
    sent: F,
    outbox: &Outbox,
    shutdown: &mut watch::Receiver<bool>,
    limit: Duration,
) -> Option<Ended>
where
    F: std::future::Future<Output = Result<(), WsError>>,
{
    let mut sent = std::pin::pin!(sent);
    // Nearly every write completes at once: the write is polled first, so the timer and the
    // wake-up registrations below are only armed (and paid for) when it actually has to wait.
    let mut stuck = std::pin::pin!(tokio::time::sleep(limit));
    loop {
        tokio::select! {
            biased;
            result = &mut sent => return result.err().map(|_| Ended::Lost),
            _ = &mut stuck => return Some(Ended::Close(CloseReason::HeartbeatTimeout)),
            // `false`: only the heartbeat period changed; this write keeps its own limit.
            _ = shutdown.changed() => if *shutdown.borrow() {
                return Some(Ended::Close(CloseReason::ServerShutdown));
            },
            // Also woken by newly queued frames: those wait for the caller's next drain.
            _ = outbox.ready() => if let Some(reason) = outbox.evicted() {
                return Some(Ended::Close(reason));
            },
        }
    }
}

/// Writes `first` and whatever else is already queued (up to `max` frames), then flushes once.
pub(crate) async fn write_batch<S>(
    ws: &mut WebSocketStream<S>,
    first: Frame,
    outbox: &Outbox,
    max: usize,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.feed(Message::Text((*first).clone())).await?;
    for _ in 1..max {
        match outbox.pop() {
            Some(frame) => ws.feed(Message::Text((*frame).clone())).await?,
            None => break,
        }
    }
    ws.flush().await
}

pub(crate) fn classify(e: WsError) -> Ended {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            Ended::Close(CloseReason::MessageTooBig)
        }
        // The TCP connection ended without a close frame: nobody is left to tell.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ended::Lost,
        WsError::Protocol(_) => Ended::Close(CloseReason::ProtocolError),
        // A text message (or a close reason) that is not UTF-8, in one frame or across
        // fragments: RFC 6455 7.4.1 gives it its own code.
        WsError::Utf8(_) => Ended::Close(CloseReason::InvalidPayload),
        _ => Ended::Lost,
    }
}

/// Ends the close handshake, bounded in time, so that both sides see a clean close.
///
/// When the page closed first, tungstenite has already queued the echo of its close frame (with
/// its code, or 1002 if that code is not one a peer may send) and refuses any other frame, so
/// we only flush that echo; tungstenite then ends the stream and the server drops TCP first, as
/// RFC 6455 asks. Otherwise we send our close frame and wait for the page's: dropping TCP
/// while its frames are still unread would make the kernel answer with a reset, which the page
/// may see instead of our close code. The wait reads raw bytes ([`CloseWatch`] spots the close
/// frame), because after a protocol error tungstenite reads nothing more.
async fn close<S>(ws: &mut Socket<S>, ended: Ended)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ended::Close(reason) = ended else {
        return;
    };
    let frame = (reason != CloseReason::ClientClosed).then(|| CloseFrame {
        code: reason.close_code(),
        reason: reason.text().into(),
    });
    close_handshake(ws, frame).await;
}

/// [`close`] with any close frame; `None` when the client closed first (only its echo is
/// flushed).
pub(crate) async fn close_handshake<S>(ws: &mut Socket<S>, frame: Option<CloseFrame>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        let Some(frame) = frame else {
            let _ = ws.flush().await;
            return;
        };
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        let io = ws.get_mut();
        let mut sink = [0u8; 256];
        while !io.peer_closed() {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake).await;
}
