//! The SSE protocol: a page's socket as one `text/event-stream` response, for networks where
//! WebSockets do not get through (a proxy that strips `Upgrade`). The page has already joined
//! the hub (the `/sse` handler connects it before answering 200); this module turns the same
//! frames a WebSocket would get into events.
//!
//! - each frame is one event: `data:` is the frame's JSON (split over several `data:` lines
//!   where the backend's `contents` had line breaks, which the browser joins back);
//! - on a resumable socket (`proto=2`) every event has an `id:`, the page's position in every
//!   stream it follows, spelled as the `since` parameter (`{"user":"…:41","broadcast":"…:3"}`),
//!   so a browser's own reconnect (`Last-Event-ID`) resumes exactly where it stopped;
//! - a comment line every heartbeat interval keeps proxies from timing the response out, and
//!   finds a page that went away;
//! - when the server ends the stream it says why in a last `close` event, with the WebSocket
//!   close code (`{"code":1001,"reason":"server shutting down"}`).
//!
//! One task per stream, like a WebSocket: a `select!` over the outbox, the heartbeat, the
//! server's drain and the page's departure, and one cleanup path (leave the hub, then write
//! what was queued on shutdown, then the `close` event). The response body only relays the
//! chunks the task hands it through a one-chunk channel, so a page that stops reading holds
//! up its own task and nobody else's; if a chunk waits a whole heartbeat interval, or the
//! outbox overflows (4008), the stream ends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::SocketContext;
use crate::connection::heartbeat_tick;
use crate::hub::Session;
use crate::outbox::Outbox;
use crate::wire::{CloseReason, Frame, Position};

/// The response body of an event stream: the chunks its task writes.
pub struct EventStream(mpsc::Receiver<Bytes>);

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

/// The event stream of a page that joined as `session`: the body to answer with, and the task
/// that feeds it (to run as the socket's task, see [`crate::connection::spawn`]), which returns
/// the close code it ended with (`None`: the page went away). `since` is what the page asked
/// to resume from (its `since` parameter or `Last-Event-ID`), which the first `id:` starts
/// from.
pub fn start(
    session: Session,
    since: Option<&HashMap<String, String>>,
    ctx: Arc<SocketContext>,
) -> (
    EventStream,
    impl std::future::Future<Output = Option<u16>> + Send + 'static,
) {
    let (tx, rx) = mpsc::channel(1);
    let positions = Positions::new(&session, since);
    (EventStream(rx), run(session, positions, ctx, tx))
}

/// Why a stream ended: a reason the page is told, or the page is gone.
#[derive(Debug)]
enum Ended {
    Close(CloseReason),
    Lost,
}

async fn run(
    mut session: Session,
    mut positions: Option<Positions>,
    ctx: Arc<SocketContext>,
    tx: mpsc::Sender<Bytes>,
) -> Option<u16> {
    let mut draining = ctx.draining();
    let outbox = session.membership.outbox().clone();
    let id = session.membership.id();
    log::debug!("event stream {id} opened");
    let ended = drive(
        &mut session,
        &outbox,
        positions.as_mut(),
        &ctx,
        &mut draining,
        &tx,
    )
    .await;
    log::debug!("event stream {id} closed: {ended:?}");
    // Leaving first: from here on nothing new is queued, so what is drained below is all.
    drop(session);
    let Ended::Close(reason) = ended else {
        return None;
    };
    let mut chunk = BytesMut::new();
    if reason == CloseReason::ServerShutdown {
        // Pushes already answered with success are delivered, as on a WebSocket.
        while let Some((frame, slot, seq)) = outbox.pop_placed() {
            event(&mut chunk, &frame, positions.as_mut(), Some((slot, seq)));
        }
    }
    outbox.close();
    let info = serde_json::json!({ "code": reason.code(), "reason": reason.text() });
    chunk.put_slice(b"event: close\ndata: ");
    chunk.put_slice(info.to_string().as_bytes());
    chunk.put_slice(b"\n\n");
    let _ = tokio::time::timeout(ctx.heartbeat(), tx.send(chunk.freeze())).await;
    Some(reason.code())
}

async fn drive(
    session: &mut Session,
    outbox: &Outbox,
    mut positions: Option<&mut Positions>,
    ctx: &SocketContext,
    draining: &mut watch::Receiver<bool>,
    tx: &mpsc::Sender<Bytes>,
) -> Ended {
    let preamble = std::mem::take(&mut session.preamble);
    if *draining.borrow() {
        return Ended::Close(CloseReason::ServerShutdown);
    }
    // A first chunk at once, so the browser sees the stream open (`onopen`) without waiting
    // for a message; then the welcome, gaps and missed messages, before anything live.
    let mut chunk = BytesMut::from(&b": push-serve\n\n"[..]);
    for frame in &preamble {
        event(&mut chunk, frame, positions.as_deref_mut(), None);
    }
    if let Some(ended) = send(chunk.split().freeze(), tx, outbox, ctx, draining).await {
        return ended;
    }
    let mut tick = heartbeat_tick(ctx.heartbeat());
    loop {
        // Everything queued goes out before we wait again (so no wake-up is ever missed).
        while let Some((frame, slot, seq)) = outbox.pop_placed() {
            event(
                &mut chunk,
                &frame,
                positions.as_deref_mut(),
                Some((slot, seq)),
            );
            if chunk.len() >= 16 * 1024 {
                break;
            }
        }
        if !chunk.is_empty() {
            if let Some(ended) = send(chunk.split().freeze(), tx, outbox, ctx, draining).await {
                return ended;
            }
            continue;
        }
        if let Some(reason) = outbox.evicted() {
            return Ended::Close(reason);
        }
        if outbox.has_controls() {
            // Boxed, as on a WebSocket: rare, and large.
            for m in Box::pin(super::apply_controls(session, ctx)).await {
                if let Some(positions) = positions.as_deref_mut() {
                    positions.moved(usize::from(m.slot), m.stream, m.position);
                }
                event(&mut chunk, &m.frame, positions.as_deref_mut(), None);
                if let Some(snapshot) = &m.snapshot {
                    event(&mut chunk, snapshot, positions.as_deref_mut(), None);
                }
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = draining.changed() => {
                if *draining.borrow() {
                    return Ended::Close(CloseReason::ServerShutdown);
                }
                // The heartbeat period changed (a config reload): start over with it.
                tick = heartbeat_tick(ctx.heartbeat());
            }
            _ = tx.closed() => return Ended::Lost,
            // A frame was queued, or we were evicted: both are handled at the top.
            _ = outbox.ready() => continue,
            _ = tick.tick() => {
                let beat = Bytes::from_static(b": heartbeat\n\n");
                if let Some(ended) = send(beat, tx, outbox, ctx, draining).await {
                    return ended;
                }
            }
        }
    }
}

/// Hands `chunk` to the response body unless the page is gone, the server drains, the socket
/// is evicted, or the chunk waits a whole heartbeat interval (a page that reads nothing for
/// that long is as dead as one that answers no ping). `Some` says why the stream must end.
async fn send(
    chunk: Bytes,
    tx: &mpsc::Sender<Bytes>,
    outbox: &Outbox,
    ctx: &SocketContext,
    draining: &mut watch::Receiver<bool>,
) -> Option<Ended> {
    let sent = tx.send(chunk);
    let mut sent = std::pin::pin!(sent);
    let mut stuck = std::pin::pin!(tokio::time::sleep(ctx.heartbeat()));
    loop {
        tokio::select! {
            biased;
            result = &mut sent => return result.err().map(|_| Ended::Lost),
            _ = &mut stuck => return Some(Ended::Close(CloseReason::HeartbeatTimeout)),
            // `false`: only the heartbeat period changed; this chunk keeps its own limit.
            _ = draining.changed() => if *draining.borrow() {
                return Some(Ended::Close(CloseReason::ServerShutdown));
            },
            _ = outbox.ready() => if let Some(reason) = outbox.evicted() {
                return Some(Ended::Close(reason));
            },
        }
    }
}

/// Appends `frame` as one event, with the page's positions after it as its `id:` on a
/// resumable stream. `placed` is where the frame sits (slot, number), for a live frame.
fn event(
    out: &mut BytesMut,
    frame: &Frame,
    positions: Option<&mut Positions>,
    placed: Option<(u16, u64)>,
) {
    if let Some(positions) = positions {
        match placed {
            Some((slot, seq)) => positions.advance(usize::from(slot), seq),
            None => positions.note(frame),
        }
        out.put_slice(b"id: ");
        positions.write_id(out);
        out.put_slice(b"\n");
    }
    // A JSON text can only have line breaks as whitespace between tokens (inside a string
    // they are escaped), so splitting on them and joining with '\n' keeps the same JSON.
    for line in frame.as_str().split(['\n', '\r']) {
        if !line.is_empty() {
            out.put_slice(b"data: ");
            out.put_slice(line.as_bytes());
            out.put_slice(b"\n");
        }
    }
    out.put_slice(b"\n");
}

/// Where a resumable page stands in each stream it follows, by the socket's stream slots: what
/// its next `id:` says.
struct Positions {
    names: Vec<String>,
    at: Vec<Option<Position>>,
}

impl Positions {
    /// `None` for a seed socket (its events have no `id:`). The start is what the page says it
    /// has seen (`since`) where that is still the stream's generation, else the start of the
    /// stream's generation when it changed, else (a stream it did not name) the present: the
    /// same rule the welcome frame gives `client/push-serve.js`.
    fn new(session: &Session, since: Option<&HashMap<String, String>>) -> Option<Positions> {
        #[derive(Deserialize)]
        struct Welcome {
            contents: WelcomeContents,
        }
        #[derive(Deserialize)]
        struct WelcomeContents {
            streams: HashMap<String, String>,
        }
        let welcome: Welcome = serde_json::from_str(session.preamble.first()?.as_str()).ok()?;
        let names: Vec<String> = session
            .membership
            .subscription()
            .keys()
            .map(|k| k.name())
            .collect();
        let at = names
            .iter()
            .map(|name| {
                let now = welcome
                    .contents
                    .streams
                    .get(name)
                    .and_then(|p| Position::parse(p))?;
                match since
                    .and_then(|s| s.get(name))
                    .and_then(|p| Position::parse(p))
                {
                    Some(seen) if seen.generation == now.generation => Some(seen),
                    Some(_) => Some(Position { seq: 0, ..now }),
                    None => Some(now),
                }
            })
            .collect();
        Some(Positions { names, at })
    }

    /// The socket joined (`position` set) or left stream `name` in `slot` after it opened.
    fn moved(&mut self, slot: usize, name: String, position: Option<Position>) {
        if self.names.len() <= slot {
            self.names.resize(slot + 1, String::new());
            self.at.resize(slot + 1, None);
        }
        self.names[slot] = name;
        self.at[slot] = position;
    }

    /// A live frame: number `seq` of the stream in `slot`.
    fn advance(&mut self, slot: usize, seq: u64) {
        if let Some(Some(pos)) = self.at.get_mut(slot) {
            if seq > 0 {
                pos.seq = seq;
            }
        }
    }

    /// A frame of the preamble: a replayed message moves its stream on (the welcome and
    /// gaps do not).
    fn note(&mut self, frame: &Frame) {
        #[derive(Deserialize)]
        struct Numbered<'a> {
            number: u64,
            #[serde(borrow)]
            stream: Option<&'a str>,
        }
        let Ok(Numbered {
            number,
            stream: Some(stream),
        }) = serde_json::from_str::<Numbered<'_>>(frame.as_str())
        else {
            return;
        };
        if let Some(slot) = self.names.iter().position(|n| n == stream) {
            self.advance(slot, number);
        }
    }

    fn write_id(&self, out: &mut BytesMut) {
        let id: serde_json::Map<String, serde_json::Value> = self
            .names
            .iter()
            .zip(&self.at)
            .filter_map(|(name, pos)| Some((name.clone(), pos.as_ref()?.to_string().into())))
            .collect();
        out.put_slice(serde_json::Value::Object(id).to_string().as_bytes());
    }
}
