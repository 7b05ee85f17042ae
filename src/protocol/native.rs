//! The native protocol over a WebSocket (`/ws`): the socket has already joined the hub (the
//! `/ws` handler connects it before answering 101). As a [`Transport`] it writes frames as text
//! messages and pings as the keep-alive (no answer to the last one within a heartbeat
//! interval ends the socket with 4000), counts a page's acks (`{"ack": id}`), and ends with a
//! close frame carrying a [`CloseReason`] and a bounded wait for the client's close. The loop
//! around it is [`connection::run`].

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::close_watch::CloseWatch;
pub use super::SocketContext;
use crate::connection::{self, Ended, Gone, Inbound, Out, Transport, CLOSE_TIMEOUT};
use crate::hub::Session;
use crate::wire::{self, CloseReason};

/// Bytes tungstenite reads per syscall. Clients only send pongs and the odd small frame, and
/// this buffer is allocated for every idle socket, so it is small (warp's default is 128 KiB;
/// 256 here before, which was 192 bytes more per idle socket): a pong or a page's ack fits. A
/// larger client message grows it to the message's size while it is read, in reads of this
/// size (a Pusher subscription with its signature, about 300 bytes, takes five).
const READ_BUFFER_BYTES: usize = 64;
/// Outbound bytes gathered before a write; a batch of queued frames goes out in few syscalls.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

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
/// for the upgrade, then runs the connection over a [`Native`] transport. Returns the close
/// code it ended with (`None`: the connection was lost, or the upgrade never completed).
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
        let mut native = Native::new(accept(TokioIo::new(upgraded), ctx.ws_config()).await);
        let ended = connection::run(&mut native, &mut session, &ctx).await;
        connection::close_code(ended)
    }
}

/// Serves an upgraded socket that joined the hub as `session` until it closes (tests and
/// fuzzing). Returns why it closed (`None`: the connection was lost).
pub async fn serve<S>(
    ws: Socket<S>,
    mut session: Session,
    ctx: Arc<SocketContext>,
) -> Option<CloseReason>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut native = Native::new(ws);
    match connection::run(&mut native, &mut session, &ctx).await {
        Ended::Close(reason) => Some(reason),
        Ended::Refused(..) | Ended::Lost => None,
    }
}

/// The native protocol's side of a socket.
pub struct Native<S> {
    ws: Socket<S>,
    /// A ping went out and nothing came back since.
    awaiting_pong: bool,
}

impl<S> Native<S> {
    /// The transport of an upgraded socket.
    pub fn new(ws: Socket<S>) -> Native<S> {
        Native {
            ws,
            awaiting_pong: false,
        }
    }
}

impl<S> Transport for Native<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// The id a page acked.
    type Message = String;

    fn timer(&mut self, ctx: &SocketContext) -> (std::time::Duration, std::time::Duration) {
        // A new period (a reload) gives the page a whole new period to answer.
        self.awaiting_pong = false;
        connection::heartbeat(ctx.heartbeat())
    }

    fn tick(&mut self) -> Result<bool, Ended> {
        if self.awaiting_pong {
            return Err(Ended::Close(CloseReason::HeartbeatTimeout));
        }
        self.awaiting_pong = true;
        Ok(true)
    }

    // A `poll_fn` rather than an `async fn`: the future every idle socket waits in is then one
    // pointer.
    fn next(&mut self) -> impl std::future::Future<Output = Inbound<String>> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let inbound = std::task::ready!(self.ws.poll_next_unpin(cx));
            // Anything at all from the client proves it alive; contents are ignored, but for
            // acks of messages that asked for a receipt.
            self.awaiting_pong = false;
            std::task::Poll::Ready(match inbound_of(inbound) {
                Inbound::Message(text) => match wire::ack_of(&text) {
                    Some(id) => Inbound::Message(id),
                    None => Inbound::Alive,
                },
                Inbound::Alive => Inbound::Alive,
                Inbound::End(ended) => Inbound::End(ended),
            })
        })
    }

    async fn answer<'a>(
        &'a mut self,
        id: String,
        session: &'a mut Session,
        ctx: &'a SocketContext,
    ) -> Result<Vec<Out>, Ended> {
        let nack = super::acknowledge(session, ctx, &id).await;
        Ok(nack.map(|f| Out::Frame(f, None)).into_iter().collect())
    }

    async fn write(&mut self, out: Vec<Out>) -> Result<(), Gone> {
        write(&mut self.ws, out, || None).await
    }

    fn close<'a>(
        &'a mut self,
        ended: Ended,
        _ctx: &'a SocketContext,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        close(&mut self.ws, ended)
    }
}

/// What a WebSocket client sent, for a transport: a text message to answer, anything else
/// that only shows it alive, or the end (its close, a protocol error, the connection gone).
pub(crate) fn inbound_of(item: Option<Result<Message, WsError>>) -> Inbound<Utf8Bytes> {
    match item {
        Some(Ok(Message::Close(_))) => Inbound::End(Ended::Close(CloseReason::ClientClosed)),
        Some(Ok(Message::Text(text))) => Inbound::Message(text),
        Some(Ok(_)) => Inbound::Alive,
        Some(Err(e)) => Inbound::End(classify(e)),
        None => Inbound::End(Ended::Lost),
    }
}

/// Writes `out` to a WebSocket as text messages, its keep-alive as a ping frame (`ping`
/// `None`) or as the text `ping` gives, then flushes.
///
/// The frames are made here, in one buffer freed once written, rather than by tungstenite:
/// its write buffer would keep its largest size in every socket for the socket's whole life
/// (see [`CloseWatch`]). What tungstenite queued itself (a pong, a close echo) goes out first.
pub(crate) async fn write<S>(
    ws: &mut Socket<S>,
    out: Vec<Out>,
    ping: impl Fn() -> Option<String>,
) -> Result<(), Gone>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The rest of a write cut short, then tungstenite's own: both were queued before these.
    ws.get_mut().write_unsent().await.map_err(|_| Gone)?;
    ws.flush().await.map_err(|_| Gone)?;
    let pings = out.iter().filter(|o| matches!(o, Out::Ping)).count();
    let ping = if pings > 0 { ping() } else { None };
    let size: usize = out
        .iter()
        .map(|o| match o {
            Out::Frame(frame, _) => frame_len(frame.len()),
            Out::Text(text) => frame_len(text.len()),
            Out::Ping => frame_len(ping.as_ref().map_or(0, String::len)),
        })
        .sum();
    let mut bytes = Vec::with_capacity(size);
    for o in &out {
        match o {
            Out::Frame(frame, _) => put_frame(&mut bytes, TEXT, frame.as_bytes()),
            Out::Text(text) => put_frame(&mut bytes, TEXT, text.as_bytes()),
            Out::Ping => match &ping {
                Some(text) => put_frame(&mut bytes, TEXT, text.as_bytes()),
                None => put_frame(&mut bytes, PING, &[]),
            },
        }
    }
    drop(out);
    let io = ws.get_mut();
    io.queue(bytes);
    io.write_unsent().await.map_err(|_| Gone)?;
    tokio::io::AsyncWriteExt::flush(io).await.map_err(|_| Gone)
}

/// Opcodes of the frames the server makes itself.
const TEXT: u8 = 0x1;
const PING: u8 = 0x9;

/// The length of a server frame (unmasked, one fragment) carrying `payload` bytes.
fn frame_len(payload: usize) -> usize {
    let header = match payload {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    };
    header + payload
}

/// Appends a server frame (FIN set, unmasked, RFC 6455 5.2) with `opcode` and `payload`.
fn put_frame(bytes: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    bytes.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => bytes.push(n as u8),
        n @ 126..=0xffff => {
            bytes.push(126);
            bytes.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            bytes.push(127);
            bytes.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    bytes.extend_from_slice(payload);
}

/// Why a client's inbound stream failed.
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
    let frame = match ended {
        Ended::Lost => return,
        Ended::Close(CloseReason::ClientClosed) => None,
        Ended::Close(reason) => Some(CloseFrame {
            code: reason.close_code(),
            reason: reason.text().into(),
        }),
        Ended::Refused(code, text) => Some(CloseFrame {
            code: CloseCode::from(code),
            reason: text.into(),
        }),
    };
    close_handshake(ws, frame).await;
}

/// [`close`] with any close frame; `None` when the client closed first (only its echo is
/// flushed).
pub(crate) async fn close_handshake<S>(ws: &mut Socket<S>, frame: Option<CloseFrame>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        // The rest of a write cut short goes first: the client reads whole frames up to ours.
        if ws.get_mut().write_unsent().await.is_err() {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;

    /// The frames made by hand are byte for byte the ones tungstenite makes, on both sides of
    /// each length encoding.
    #[test]
    fn frames_made_by_hand_are_tungstenites() {
        for len in [0, 1, 125, 126, 127, 0xffff, 0x1_0000, 70_000] {
            let payload = vec![b'x'; len];
            let mut ours = Vec::new();
            put_frame(&mut ours, TEXT, &payload);
            assert_eq!(ours.len(), frame_len(len), "length {len}");
            let mut theirs = Vec::new();
            WsFrame::message(payload.clone(), OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .unwrap();
            assert_eq!(ours, theirs, "text frame of {len} bytes");
        }
        let mut ours = Vec::new();
        put_frame(&mut ours, PING, &[]);
        let mut theirs = Vec::new();
        WsFrame::ping(Vec::new()).format(&mut theirs).unwrap();
        assert_eq!(ours, theirs, "ping frame");
    }
}
