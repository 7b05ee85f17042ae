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
//! One task per stream, like a WebSocket: the connection runtime ([`connection::run`]) over
//! an [`Sse`] transport, which ends when the server stops accepting (draining), and whose
//! inbound side is only the page going away. The response body only relays the chunks the
//! task hands it through a one-chunk channel, so a page that stops reading holds up its own
//! task and nobody else's; if a chunk waits a whole heartbeat interval, or the outbox
//! overflows (4008), the stream ends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Moved, SocketContext};
use crate::connection::{self, Ended, Gone, Inbound, Out, Transport};
use crate::hub::Session;
use crate::wire::{Frame, Position};

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
    mut session: Session,
    since: Option<&HashMap<String, String>>,
    ctx: Arc<SocketContext>,
) -> (
    EventStream,
    impl std::future::Future<Output = Option<u16>> + Send + 'static,
) {
    let (tx, rx) = mpsc::channel(1);
    let positions = Positions::new(&session, since);
    // Used in place (see `native::upgraded`).
    let mut sse = Sse { tx, positions };
    let run = async move {
        let ended = connection::run(&mut sse, &mut session, &ctx).await;
        connection::close_code(ended)
    };
    (EventStream(rx), run)
}

/// An event stream as a [`Transport`]: frames become events (with their `id:` on a resumable
/// stream), the keep-alive is a comment, the page cannot send anything (its only word is going
/// away), and the goodbye is a `close` event.
struct Sse {
    /// The response body's end of the one-chunk channel.
    tx: mpsc::Sender<Bytes>,
    /// `None` for a seed page (its events have no `id:`).
    positions: Option<Positions>,
}

impl Transport for Sse {
    /// The page never sends anything over the stream.
    type Message = std::convert::Infallible;

    // The response is a request in flight, which the server waits for before it shuts
    // sockets down: the stream ends as soon as it stops accepting.
    const ENDS_ON_DRAIN: bool = true;

    fn greeting(&self) -> Option<Out> {
        // A first chunk at once, so the browser sees the stream open (`onopen`) without
        // waiting for a message.
        Some(Out::Text(": push-serve\n\n".to_owned()))
    }

    fn tick(&mut self) -> Result<bool, Ended> {
        Ok(true)
    }

    async fn next(&mut self) -> Inbound<Self::Message> {
        self.tx.closed().await;
        Inbound::End(Ended::Lost)
    }

    async fn answer<'a>(
        &'a mut self,
        message: Self::Message,
        _session: &'a mut Session,
        _ctx: &'a SocketContext,
    ) -> Result<Vec<Out>, Ended> {
        match message {}
    }

    fn write(
        &mut self,
        out: Vec<Out>,
    ) -> impl std::future::Future<Output = Result<(), Gone>> + Send + '_ {
        // The chunk is made before the future: only the send waits.
        let mut chunk = BytesMut::new();
        for o in out {
            match o {
                Out::Frame(frame, placed) => {
                    event(&mut chunk, &frame, self.positions.as_mut(), placed)
                }
                Out::Text(text) => chunk.put_slice(text.as_bytes()),
                Out::Ping => chunk.put_slice(b": heartbeat\n\n"),
            }
        }
        let sent = self.tx.send(chunk.freeze());
        async move { sent.await.map_err(|_| Gone) }
    }

    fn moved(&mut self, m: &Moved) {
        if let Some(positions) = self.positions.as_mut() {
            positions.moved(usize::from(m.slot), m.stream.clone(), m.position);
        }
    }

    async fn close<'a>(&'a mut self, ended: Ended, ctx: &'a SocketContext) {
        let (code, reason) = match ended {
            Ended::Close(reason) => (reason.code(), reason.text()),
            Ended::Refused(code, text) => (code, text),
            Ended::Lost => return,
        };
        let info = serde_json::json!({ "code": code, "reason": reason });
        let mut chunk = BytesMut::new();
        chunk.put_slice(b"event: close\ndata: ");
        chunk.put_slice(info.to_string().as_bytes());
        chunk.put_slice(b"\n\n");
        let _ = tokio::time::timeout(ctx.heartbeat(), self.tx.send(chunk.freeze())).await;
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
