//! One WebSocket's life: register with the hub, then a single `select!` over the outbound
//! queue, inbound frames, the heartbeat tick, eviction and shutdown; then exactly one cleanup
//! path (unregister, close frame with a [`CloseReason`], bounded wait for the client's close).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use crate::frame::CloseReason;
use crate::hub::{Frame, Hub, Subscription};

/// Bytes tungstenite reads per syscall. Clients only send pongs and the odd small frame, and
/// this buffer is allocated for every idle socket, so it is small (warp's default is 128 KiB);
/// a larger client message grows it to the message's size while it is read.
const READ_BUFFER_BYTES: usize = 256;
/// Outbound bytes gathered before a write; a batch of queued frames goes out in few syscalls.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Most queued frames written before one flush, so one busy socket cannot starve its reads.
const MAX_BATCH: usize = 64;
/// How long the close handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// tungstenite settings for a server-side socket.
pub fn ws_config(max_client_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(max_client_frame_bytes))
        .max_frame_size(Some(max_client_frame_bytes))
}

/// What every socket task shares.
#[derive(Clone)]
pub struct SocketContext {
    /// The registry this socket joins.
    pub hub: Arc<Hub>,
    /// Ping period; also how long a ping may go unanswered.
    pub heartbeat: Duration,
    /// Flips to `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// Serves one upgraded seed socket for `uid` (its own stream and broadcasts, seed frames)
/// until it closes.
pub fn serve<S>(
    ws: WebSocketStream<S>,
    uid: String,
    ctx: SocketContext,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    serve_subscription(ws, Subscription::seed(uid), None, ctx)
}

/// Serves one upgraded socket following `sub` until it closes, for whatever reason. With
/// `resume`, it first gets what it missed since those positions.
///
/// A plain `fn` returning an `async move` block rather than an `async fn`: an `async fn` keeps
/// both its argument and its moved copy of the ~300-byte WebSocket in the future, and this
/// future lives as long as the socket, once per socket.
#[allow(clippy::manual_async_fn)]
pub fn serve_subscription<S>(
    mut ws: WebSocketStream<S>,
    sub: Subscription,
    resume: Option<HashMap<String, String>>,
    mut ctx: SocketContext,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let mut registration = ctx.hub.subscribe(&sub, resume.as_ref());
        drop(resume);
        log::debug!(
            "socket {} opened ({} live)",
            registration.id,
            ctx.hub.socket_count()
        );
        let preamble = std::mem::take(&mut registration.preamble);
        let ended = drive(
            &mut ws,
            preamble,
            &mut registration.rx,
            &registration.evicted,
            ctx.heartbeat,
            &mut ctx.shutdown,
        )
        .await;
        ctx.hub.unsubscribe(&sub, registration.id);
        log::debug!("socket {} closed: {:?}", registration.id, ended);
        // Boxed: the closing steps run once, so their state should not sit in every idle
        // socket's task for its whole life.
        Box::pin(finish(ws, registration.rx, ended)).await;
    }
}

/// The one cleanup path: on shutdown, write what was queued (pushes already answered with
/// success); then the close handshake, bounded in time.
async fn finish<S>(mut ws: WebSocketStream<S>, mut rx: mpsc::Receiver<Frame>, ended: Ended)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if matches!(ended, Ended::Close(CloseReason::ServerShutdown)) {
        let flush = async {
            match rx.try_recv() {
                Ok(first) => write_batch(&mut ws, first, &mut rx, usize::MAX).await,
                Err(_) => Ok(()),
            }
        };
        if !matches!(tokio::time::timeout(CLOSE_TIMEOUT, flush).await, Ok(Ok(()))) {
            return;
        }
    }
    close(&mut ws, ended).await;
}

/// Why the loop ended: either a reason we tell the client, or the connection is already gone.
enum Ended {
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
    preamble: Vec<Frame>,
    rx: &mut mpsc::Receiver<Frame>,
    evicted: &Notify,
    heartbeat: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if *shutdown.borrow() {
        return Ended::Close(CloseReason::ServerShutdown);
    }
    if !preamble.is_empty() {
        // Welcome, gaps and missed messages go out before anything live (which waits in `rx`).
        let sent = async {
            for frame in preamble {
                ws.feed(Message::Text((*frame).clone())).await?;
            }
            ws.flush().await
        };
        tokio::select! {
            biased;
            _ = evicted.notified() => return Ended::Close(CloseReason::SlowConsumer),
            _ = shutdown.changed() => return Ended::Close(CloseReason::ServerShutdown),
            result = sent => if result.is_err() { return Ended::Lost },
        }
    }
    // A random phase spreads the pings of thousands of sockets opened together.
    let phase = heartbeat.mul_f64(rand::rng().random_range(0.5..1.0));
    let mut tick = interval_at(Instant::now() + phase, heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut awaiting_pong = false;

    loop {
        // `write` is set by a branch that has something to send; the send itself runs below,
        // raced against eviction and shutdown, so a client that stops reading can never pin us.
        let write = tokio::select! {
            biased;
            _ = evicted.notified() => return Ended::Close(CloseReason::SlowConsumer),
            _ = shutdown.changed() => return Ended::Close(CloseReason::ServerShutdown),
            inbound = ws.next() => {
                match inbound {
                    // Anything at all from the client proves it alive; contents are ignored.
                    Some(Ok(Message::Close(_))) => return Ended::Close(CloseReason::ClientClosed),
                    Some(Ok(_)) => awaiting_pong = false,
                    Some(Err(e)) => return classify(e),
                    None => return Ended::Lost,
                }
                continue;
            }
            frame = rx.recv() => match frame {
                Some(frame) => Outbound::Frames(frame),
                // The hub dropped our sender: we were evicted.
                None => return Ended::Close(CloseReason::SlowConsumer),
            },
            _ = tick.tick() => {
                if awaiting_pong {
                    return Ended::Close(CloseReason::HeartbeatTimeout);
                }
                awaiting_pong = true;
                Outbound::Ping
            }
        };
        let sent = async {
            match write {
                Outbound::Ping => ws.send(Message::Ping(Bytes::new())).await,
                Outbound::Frames(first) => write_batch(ws, first, rx, MAX_BATCH).await,
            }
        };
        tokio::select! {
            biased;
            _ = evicted.notified() => return Ended::Close(CloseReason::SlowConsumer),
            _ = shutdown.changed() => return Ended::Close(CloseReason::ServerShutdown),
            result = sent => if result.is_err() { return Ended::Lost },
        }
    }
}

enum Outbound {
    Ping,
    Frames(Frame),
}

/// Writes `first` and whatever else is already queued (up to `max` frames), then flushes once.
async fn write_batch<S>(
    ws: &mut WebSocketStream<S>,
    first: Frame,
    rx: &mut mpsc::Receiver<Frame>,
    max: usize,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.feed(Message::Text((*first).clone())).await?;
    for _ in 1..max {
        match rx.try_recv() {
            Ok(frame) => ws.feed(Message::Text((*frame).clone())).await?,
            Err(_) => break,
        }
    }
    ws.flush().await
}

fn classify(e: WsError) -> Ended {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            Ended::Close(CloseReason::MessageTooBig)
        }
        WsError::Protocol(_) | WsError::Utf8(_) => Ended::Close(CloseReason::ProtocolError),
        _ => Ended::Lost,
    }
}

/// Sends our close frame (unless the connection is gone) and waits, bounded, for the client's,
/// so that both sides see a clean close.
async fn close<S>(ws: &mut WebSocketStream<S>, ended: Ended)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Ended::Close(reason) = ended else {
        return;
    };
    let handshake = async {
        let frame = CloseFrame {
            code: reason.close_code(),
            reason: reason.text().into(),
        };
        // After the client's close, tungstenite has already queued the echo; this flushes it.
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake).await;
}
