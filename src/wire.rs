//! Everything that crosses a wire, in one place: the message and position types and their
//! encodings.
//!
//! - To pages: the seed frame `{"topic","number","contents"}`, the numbered `proto=2` frame
//!   (plus `stream`), and the `_welcome` / `_gap` control frames. Each is serialized once per
//!   message and shared by every socket it goes to ([`Frame`]).
//! - To backends: the reply [`Envelope`] and the [`PushBody`] they send.
//! - Between nodes: [`encode_payload`] / [`decode_payload`], a message and its stream as bytes
//!   (what a cluster broker stores in history and publishes to other nodes).
//! - Close codes: [`CloseReason`], the one list of why the server ends a socket.
//!
//! This module imports nothing else of the crate, so every other module may use it.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A serialized frame, shared by every socket it goes to. An `Arc` (one word) rather than the
/// 4-word `Utf8Bytes` keeps each socket's queue small.
pub type Frame = Arc<Utf8Bytes>;

/// What a socket speaks. Seed sockets get exactly the original frames (`number` 1, no extra
/// field); resumable sockets (`/ws?…&proto=2`) get sequence numbers, the stream name, and the
/// `_welcome`/`_gap` control frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// The seed's frames, byte for byte.
    Seed,
    /// Numbered frames with a `stream` field; resumable.
    Resumable,
    /// Pusher Channels frames, `{"event","channel","data"}` (`/app/{key}` sockets).
    Pusher,
}

/// Names a stream: what a message is published to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamKey {
    /// One uid's own stream (`/push`).
    User(Box<str>),
    /// A topic (`/publish`), followed by sockets whose access key grants it.
    Topic(Box<str>),
    /// Every socket (`/broadcast`).
    Broadcast,
    /// A Pusher channel of one app: apart from native topics, and from another app's channel
    /// of the same name. App ids hold no `:` (config checks), so the spellings below parse.
    ///
    /// Both names are shared, not copied: the registry's key, the socket's list of streams and
    /// the Pusher store hold one allocation of a channel's name between them, and every
    /// channel of an app points at the app's one id (an idle Pusher socket with a channel of
    /// its own once held five copies).
    Channel {
        /// The app's id.
        app: Arc<str>,
        /// The channel's name, as pages spell it (`private-orders`).
        name: Arc<str>,
    },
}

impl StreamKey {
    /// The stream's name as a socket sees it: `user`, `broadcast` or `topic:<name>` (a socket
    /// only ever follows its own uid's stream, so `user` is unambiguous).
    pub fn name(&self) -> String {
        match self {
            StreamKey::User(_) => "user".into(),
            StreamKey::Topic(t) => format!("topic:{t}"),
            StreamKey::Broadcast => "broadcast".into(),
            StreamKey::Channel { app, name } => format!("pusher:{app}:{name}"),
        }
    }

    /// Whether its messages are kept for resuming sockets. Pusher channels have no positions
    /// (the protocol cannot resume), so keeping their messages would only cost memory.
    pub fn keeps_history(&self) -> bool {
        !matches!(self, StreamKey::Channel { .. })
    }

    /// A spelling that is unique across kinds, for storage keys: `u:<uid>`, `t:<topic>`, `b`.
    pub fn id(&self) -> String {
        match self {
            StreamKey::User(u) => format!("u:{u}"),
            StreamKey::Topic(t) => format!("t:{t}"),
            StreamKey::Broadcast => "b".into(),
            StreamKey::Channel { app, name } => format!("c:{app}:{name}"),
        }
    }

    /// The inverse of [`StreamKey::id`].
    pub fn from_id(id: &str) -> Option<StreamKey> {
        match id.split_once(':') {
            Some(("u", uid)) => Some(StreamKey::User(uid.into())),
            Some(("t", topic)) => Some(StreamKey::Topic(topic.into())),
            Some(("c", rest)) => rest.split_once(':').map(|(app, name)| StreamKey::Channel {
                app: app.into(),
                name: name.into(),
            }),
            None if id == "b" => Some(StreamKey::Broadcast),
            _ => None,
        }
    }
}

/// Where a message sits in its stream: the stream's *generation* (a random id drawn when the
/// stream is created; it changes when the stream's history is lost) and the message's sequence
/// number within it (1, 2, 3…; 0 is "before the first message"). Spelled `<016x>:<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The stream's generation.
    pub generation: u64,
    /// The message's number within the generation.
    pub seq: u64,
}

impl Position {
    /// Parses `generation:seq` as sent back by a resuming client; `None` if malformed.
    pub fn parse(s: &str) -> Option<Position> {
        let (g, n) = s.split_once(':')?;
        if g.is_empty() || g.len() > 16 {
            return None;
        }
        Some(Position {
            generation: u64::from_str_radix(g, 16).ok()?,
            seq: n.parse().ok()?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}:{}", self.generation, self.seq)
    }
}

/// A published message: its topic and its contents as raw JSON text, forwarded byte for byte
/// (so integers beyond f64 and any nesting reach the page exactly as the backend sent them).
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The message's topic (a Pusher event's name).
    pub topic: &'a str,
    /// Valid JSON text.
    contents: &'a str,
    /// A socket (its `socket_id`, `<node>.<id>`) the message skips: a Pusher client event's
    /// sender, or the `socket_id` a backend excluded.
    pub except: Option<&'a str>,
    /// For Pusher frames: the sender's `user_id` (client events on presence channels).
    pub user_id: Option<&'a str>,
    /// The message's id when the backend asked for delivery receipts: numbered frames carry
    /// it, and a page acks it (`{"ack": id}`). At most [`MAX_MESSAGE_ID_BYTES`] of
    /// `[0-9a-f]`.
    pub id: Option<&'a str>,
}

impl<'a> Message<'a> {
    /// A message whose contents were parsed as JSON.
    pub fn new(topic: &'a str, contents: &'a RawValue) -> Message<'a> {
        Message {
            topic,
            contents: contents.get(),
            id: None,
            except: None,
            user_id: None,
        }
    }

    /// The same message, carrying receipt id `id`.
    pub fn with_id(self, id: &'a str) -> Message<'a> {
        Message {
            id: Some(id),
            ..self
        }
    }

    /// The same message, skipping socket `socket_id` wherever it is delivered.
    pub fn except(self, socket_id: Option<&'a str>) -> Message<'a> {
        Message {
            except: socket_id,
            ..self
        }
    }

    /// The same message, its Pusher frame naming the sender's `user_id`.
    pub fn from_user(self, user_id: Option<&'a str>) -> Message<'a> {
        Message { user_id, ..self }
    }

    /// A Pusher frame: `{"event":topic,"channel":channel,"data":contents}` (contents verbatim:
    /// the HTTP API's `data` is a JSON string, which pages parse), plus `user_id` if set.
    pub fn pusher_frame(&self, channel: &str) -> Frame {
        let json = |s: &str| serde_json::to_string(s).expect("string serializes");
        let mut out = String::with_capacity(self.contents.len() + self.topic.len() + 64);
        out.push_str("{\"event\":");
        out.push_str(&json(self.topic));
        out.push_str(",\"channel\":");
        out.push_str(&json(channel));
        out.push_str(",\"data\":");
        out.push_str(self.contents);
        if let Some(user_id) = self.user_id {
            out.push_str(",\"user_id\":");
            out.push_str(&json(user_id));
        }
        out.push('}');
        Arc::new(Utf8Bytes::from(out))
    }

    /// The contents, raw JSON text.
    pub fn contents(&self) -> &'a str {
        self.contents
    }

    /// The seed's frame: `{"topic","number":1,"contents"}`.
    pub fn seed_frame(&self) -> Frame {
        frame_text(self.topic, 1, self.contents, None, None)
    }

    /// A frame for a resumable socket: the seed's three fields, `number` being the message's
    /// sequence in its stream, plus `stream` (`user`, `broadcast`, `topic:<name>`).
    pub fn stream_frame(&self, seq: u64, stream: &str) -> Frame {
        frame_text(self.topic, seq, self.contents, Some(stream), self.id)
    }
}

fn frame_text(
    topic: &str,
    number: u64,
    contents: &str,
    stream: Option<&str>,
    id: Option<&str>,
) -> Frame {
    // Writing a &str as JSON cannot fail.
    let json = |s: &str| serde_json::to_string(s).expect("string serializes");
    let mut out = String::with_capacity(contents.len() + topic.len() + 64);
    out.push_str("{\"topic\":");
    out.push_str(&json(topic));
    out.push_str(",\"number\":");
    out.push_str(&number.to_string());
    out.push_str(",\"contents\":");
    out.push_str(contents);
    if let Some(stream) = stream {
        out.push_str(",\"stream\":");
        out.push_str(&json(stream));
    }
    if let Some(id) = id {
        out.push_str(",\"id\":");
        out.push_str(&json(id));
    }
    out.push('}');
    Arc::new(Utf8Bytes::from(out))
}

/// A data pool's document for a page that starts following it:
/// `{"topic":"<pool>:snapshot","number":<seq>,"contents":<doc>,"stream":"topic:<pool>"}`, its
/// number the stream position it is exact at (live changes after it follow). `None` if
/// `doc` is not JSON.
pub fn snapshot_frame(pool: &str, doc: &str, seq: u64) -> Option<Frame> {
    serde_json::from_str::<&RawValue>(doc).ok()?;
    let topic = format!("{pool}:snapshot");
    let stream = StreamKey::Topic(pool.into()).name();
    Some(frame_text(&topic, seq, doc, Some(&stream), None))
}

/// A message and its stream as bytes: `<id len>:<stream id><topic len>:<topic><contents>`
/// (lengths in decimal bytes), after `x<len>:<socket id>` when it skips a socket and
/// `w<len>:<user id>` when it names its sender. What a cluster broker stores and sends
/// between nodes; the frames are built from it on the node that delivers, once per message.
pub fn encode_payload(key: &StreamKey, msg: &Message<'_>) -> Vec<u8> {
    let id = key.id();
    let mut out = Vec::with_capacity(id.len() + msg.topic.len() + msg.contents.len() + 12);
    for (tag, part) in [(b'i', msg.id), (b'x', msg.except), (b'w', msg.user_id)] {
        if let Some(part) = part {
            out.push(tag);
            out.extend_from_slice(part.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(part.as_bytes());
        }
    }
    push_stream_and_topic(&mut out, &id, msg.topic);
    out.extend_from_slice(msg.contents.as_bytes());
    out
}

/// [`encode_payload`] of a message with no id, `except` or user id, up to its contents: for a
/// script that chooses the contents itself (a data pool's change) and appends them.
pub fn payload_head(key: &StreamKey, topic: &str) -> Vec<u8> {
    let id = key.id();
    let mut out = Vec::with_capacity(id.len() + topic.len() + 8);
    push_stream_and_topic(&mut out, &id, topic);
    out
}

fn push_stream_and_topic(out: &mut Vec<u8>, id: &str, topic: &str) {
    for part in [id, topic] {
        out.extend_from_slice(part.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(part.as_bytes());
    }
}

/// The inverse of [`encode_payload`]. `None` if the bytes are not such a payload (the contents
/// are checked to be JSON, so a corrupt payload can never reach a page).
pub fn decode_payload(bytes: &[u8]) -> Option<(StreamKey, Message<'_>)> {
    fn part(bytes: &[u8]) -> Option<(&str, &[u8])> {
        let colon = bytes.iter().take(21).position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&bytes[..colon]).ok()?.parse().ok()?;
        let rest = &bytes[colon + 1..];
        if rest.len() < len {
            return None;
        }
        Some((std::str::from_utf8(&rest[..len]).ok()?, &rest[len..]))
    }
    let (mut message_id, mut except, mut user_id, mut bytes) = (None, None, None, bytes);
    if let Some(rest) = bytes.strip_prefix(b"i") {
        let (id, rest) = part(rest)?;
        if !valid_message_id(id) {
            return None;
        }
        (message_id, bytes) = (Some(id), rest);
    }
    if let Some(rest) = bytes.strip_prefix(b"x") {
        let (sid, rest) = part(rest)?;
        (except, bytes) = (Some(sid), rest);
    }
    if let Some(rest) = bytes.strip_prefix(b"w") {
        let (uid, rest) = part(rest)?;
        (user_id, bytes) = (Some(uid), rest);
    }
    let (id, rest) = part(bytes)?;
    let (topic, rest) = part(rest)?;
    let contents = std::str::from_utf8(rest).ok()?;
    let raw: &RawValue = serde_json::from_str(contents).ok()?;
    let mut msg = Message::new(topic, raw).except(except).from_user(user_id);
    if let Some(message_id) = message_id {
        msg = msg.with_id(message_id);
    }
    Some((StreamKey::from_id(id)?, msg))
}

/// Longest message id (ids are hex, 32 characters).
pub const MAX_MESSAGE_ID_BYTES: usize = 64;

/// Whether `id` can be a message id: 1 to [`MAX_MESSAGE_ID_BYTES`] of lowercase hex.
pub fn valid_message_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_MESSAGE_ID_BYTES
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The receipt message id a numbered frame ([`Message::stream_frame`]) carries, if any: its
/// last field, `,"id":"<hex>"}`. Read from the end, without parsing the frame (a resume's
/// replay may be long). Nothing else can end that way: within a JSON string (the `stream`
/// before it) every `"` is escaped.
pub fn message_id_of(frame: &str) -> Option<&str> {
    let body = frame.strip_suffix("\"}")?;
    let hex = body
        .bytes()
        .rev()
        .take(MAX_MESSAGE_ID_BYTES + 1)
        .take_while(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .count();
    let (head, id) = body.split_at(body.len() - hex);
    (head.ends_with(",\"id\":\"") && valid_message_id(id)).then_some(id)
}

/// The message id a page acknowledges with a text frame `{"ack": "<id>"}`; `None` for any
/// other frame (which is ignored, as every page frame was before receipts).
pub fn ack_of(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Ack {
        ack: String,
    }
    serde_json::from_str::<Ack>(text).ok().map(|a| a.ack)
}

/// Tells a page its ack was refused: the id is unknown (expired, or never issued) or the
/// message was not for this socket. Nothing was counted.
pub fn nack(id: &str, reason: &str) -> Frame {
    control("_nack", serde_json::json!({ "id": id, "reason": reason }))
}

/// A message from a uid's offline inbox, for a page that opened fresh:
/// `{"topic","number":0,"contents","id","inbox":true}`. No `stream`: it is not numbered in
/// one, and a client must not take its `number` as a position. `None` if `contents` is not
/// JSON (a store that was tampered with).
pub fn inbox_frame(topic: &str, contents: &str, id: &str) -> Option<Frame> {
    serde_json::from_str::<&RawValue>(contents).ok()?;
    let text = frame_text(topic, 0, contents, None, Some(id));
    let mut out = String::with_capacity(text.len() + 14);
    out.push_str(&text[..text.len() - 1]);
    out.push_str(",\"inbox\":true}");
    Some(Arc::new(Utf8Bytes::from(out)))
}

/// The seed's envelope, used for HTTP replies.
#[derive(Debug, Serialize)]
pub struct Envelope<'a, T: Serialize> {
    /// `_access`, `success`, `error`, or a pushed topic.
    pub topic: &'a str,
    /// Sockets reached for `/push`; 1 for `/access`; 0 for errors.
    pub number: u64,
    /// Reply payload or error reason.
    pub contents: T,
}

/// Body of `POST /push`, `/publish` and `/broadcast`. `contents` stays raw JSON text.
#[derive(Debug, Deserialize)]
pub struct PushBody<'a> {
    /// Message topic (required string).
    pub topic: String,
    /// Any JSON value (required; `null` counts as present).
    #[serde(borrow)]
    pub contents: &'a RawValue,
    /// `/push` only: more uids to push to, besides (or instead of) the query's `uid`.
    #[serde(default)]
    pub uids: Option<Vec<String>>,
    /// Ask for delivery receipts: the message gets an id that `proto=2` pages ack, and a
    /// report (`/report/push/<id>`).
    #[serde(default)]
    pub receipt: bool,
    /// `/push` only: keep the message for each uid that has no socket open, for this many
    /// seconds or until one of its pages acks it (implies `receipt`).
    #[serde(default)]
    pub inbox: Option<u64>,
}

impl PushBody<'_> {
    /// The message this body carries.
    pub fn message(&self) -> Message<'_> {
        Message::new(&self.topic, self.contents)
    }
}

/// First frame on a resumable socket: the position of every stream it follows, as of the
/// moment it joined. The client keeps these and echoes them back in `since` when it reconnects.
pub fn welcome(positions: &[(String, Position)]) -> Frame {
    let streams: serde_json::Map<String, serde_json::Value> = positions
        .iter()
        .map(|(name, pos)| (name.clone(), serde_json::Value::String(pos.to_string())))
        .collect();
    control("_welcome", serde_json::json!({ "streams": streams }))
}

/// Tells a resuming client that messages of `stream` after its position `since` and before
/// `next` are no longer kept (too old, or the stream restarted): it should reload its state.
pub fn gap(stream: &str, since: &str, next: u64) -> Frame {
    control(
        "_gap",
        serde_json::json!({ "stream": stream, "since": since, "next": next }),
    )
}

/// Tells a resumable page that the backend moved its socket into `stream` (`POST /rooms`): live
/// messages of it after `position` follow, and the page resumes it from there like any other.
pub fn joined(stream: &str, position: Position) -> Frame {
    control(
        "_join",
        serde_json::json!({ "stream": stream, "position": position.to_string() }),
    )
}

/// Tells a resumable page that the backend took its socket out of `stream`: nothing more of it
/// arrives (a frame of it already queued may still come first).
pub fn left(stream: &str) -> Frame {
    control("_leave", serde_json::json!({ "stream": stream }))
}

fn control(topic: &str, contents: serde_json::Value) -> Frame {
    let text = serde_json::to_string(&Envelope {
        topic,
        number: 0,
        contents,
    })
    .expect("control frame serializes");
    Arc::new(Utf8Bytes::from(text))
}

/// Declares [`CloseReason`] from one table: each reason with its code and its text, so the
/// enum, [`CloseReason::ALL`], [`CloseReason::code`] and [`CloseReason::text`] cannot disagree
/// (the metrics once lacked 1007 and 4011, listed by hand elsewhere).
macro_rules! close_reasons {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, $text:literal; )*) => {
        /// Why the server closes a socket, and the close code the page sees. Pages should
        /// reconnect on every one of them (after fetching a new access key if the reconnect is
        /// refused with 401), but for 4011.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum CloseReason {
            $( $(#[$doc])* $name, )*
        }

        impl CloseReason {
            /// Every reason, by code: the one list of the server's close codes.
            pub const ALL: &'static [CloseReason] = &[$(CloseReason::$name),*];

            /// The numeric close code sent in the close frame.
            pub const fn code(self) -> u16 {
                match self {
                    $(CloseReason::$name => $code,)*
                }
            }

            /// The short reason text sent with the code.
            pub fn text(self) -> &'static str {
                match self {
                    $(CloseReason::$name => $text,)*
                }
            }
        }
    };
}

close_reasons! {
    /// The client closed first; we echo its close code (1002 if it sent one no endpoint may
    /// send). `code()` is only what the logs show.
    ClientClosed = 1000, "bye";
    /// The server is shutting down or restarting: 1001 Going Away. Reconnect with backoff.
    ServerShutdown = 1001, "server shutting down";
    /// The client broke the WebSocket protocol: 1002.
    ProtocolError = 1002, "protocol error";
    /// The client sent a text message (or close reason) that is not valid UTF-8: 1007.
    InvalidPayload = 1007, "text is not valid UTF-8";
    /// The client sent a message larger than `max_client_frame_bytes`: 1009.
    MessageTooBig = 1009, "message too big";
    /// No pong (or any frame) within one heartbeat interval after a ping: 4000.
    HeartbeatTimeout = 4000, "heartbeat timeout";
    /// The socket's send queue overflowed because the client reads too slowly: 4008.
    SlowConsumer = 4008, "send queue full: client reads too slowly";
    /// This node lost its place in one of the socket's streams (a cluster node missed
    /// messages while its Redis subscription was down, or Redis lost the stream): 4010. A
    /// resumable page reconnects with its positions and gets exactly what it missed, or a
    /// `_gap`.
    Resync = 4010, "stream position lost on this node: reconnect to resume";
    /// The backend disconnected this uid (`POST /disconnect`: a logout, a ban): 4011. The
    /// page should not reconnect by itself.
    Disconnected = 4011, "disconnected by the backend: do not reconnect";
}

impl CloseReason {
    /// As tungstenite's close code.
    pub fn close_code(self) -> CloseCode {
        CloseCode::from(self.code())
    }
}

/// `%XX` escapes decoded (a path segment, a URL's userinfo); anything else is kept as it is.
pub fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_keeps_contents_verbatim() {
        let body =
            r#"{"topic":"t\"q","contents":{"n":18446744073709551615,"f":1.0e400,"s":"你好"}}"#;
        let push: PushBody<'_> = serde_json::from_str(body).unwrap();
        let frame = push.message().seed_frame();
        assert_eq!(
            frame.as_str(),
            r#"{"topic":"t\"q","number":1,"contents":{"n":18446744073709551615,"f":1.0e400,"s":"你好"}}"#
        );
    }

    #[test]
    fn a_payload_head_and_contents_are_the_payload() {
        let key = StreamKey::Topic("cart:1".into());
        let raw = RawValue::from_string("[1, 2]".into()).unwrap();
        let mut joined = payload_head(&key, "cart:1:add");
        joined.extend_from_slice(b"[1, 2]");
        assert_eq!(
            joined,
            encode_payload(&key, &Message::new("cart:1:add", &raw))
        );
        let (back, msg) = decode_payload(&joined).unwrap();
        assert_eq!(
            (back, msg.topic, msg.contents),
            (key, "cart:1:add", "[1, 2]")
        );
    }

    #[test]
    fn push_body_requires_both_fields() {
        assert!(serde_json::from_str::<PushBody<'_>>(r#"{"topic":"t"}"#).is_err());
        assert!(serde_json::from_str::<PushBody<'_>>(r#"{"contents":1}"#).is_err());
        assert!(serde_json::from_str::<PushBody<'_>>(r#"{"topic":1,"contents":1}"#).is_err());
        assert!(serde_json::from_str::<PushBody<'_>>(r#"{"topic":"t","contents":null}"#).is_ok());
    }

    #[test]
    fn payload_round_trips_and_refuses_garbage() {
        let raw = RawValue::from_string(r#"{"a":[1,"x:y"]}"#.into()).unwrap();
        for key in [
            StreamKey::User("al:ice{}".into()),
            StreamKey::Topic("room:42".into()),
            StreamKey::Broadcast,
            StreamKey::Channel {
                app: "app-1".into(),
                name: "presence-a:b".into(),
            },
        ] {
            for (except, user) in [
                (None, None),
                (Some("1.2"), None),
                (Some("3.4"), Some("u:1")),
            ] {
                let msg = Message::new("to:pic", &raw).except(except).from_user(user);
                let bytes = encode_payload(&key, &msg);
                let (k, m) = decode_payload(&bytes).unwrap();
                assert_eq!(k, key);
                assert_eq!(m.topic, "to:pic");
                assert_eq!(m.contents(), raw.get());
                assert_eq!((m.except, m.user_id), (except, user));
            }
        }
        let msg = Message::new("t", &raw).with_id("00ff");
        let bytes = encode_payload(&StreamKey::Broadcast, &msg);
        let (_, m) = decode_payload(&bytes).unwrap();
        assert_eq!(m.id, Some("00ff"));
        assert!(m
            .stream_frame(3, "broadcast")
            .ends_with(r#""stream":"broadcast","id":"00ff"}"#));
        assert_eq!(
            m.seed_frame().as_str(),
            r#"{"topic":"t","number":1,"contents":{"a":[1,"x:y"]}}"#
        );
        for bad in [
            &b"i2:0g1:b1:t1"[..],
            b"i0:1:b1:t1",
            b"i99:1:b1:t1",
            &b""[..],
            b"3:u:a",
            b"99:u:a1:t1",
            b"3:u:a1:tnot json",
            b"1:x1:t1",
            b"1:b1:t\xff",
            b"x3:1.2",
            b"x9:1.2",
        ] {
            assert!(decode_payload(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn channels_cannot_clash_with_native_streams() {
        let channel = StreamKey::Channel {
            app: "1".into(),
            name: "user".into(),
        };
        assert_ne!(channel.name(), StreamKey::User("x".into()).name());
        assert_ne!(channel.id(), StreamKey::Topic("1:user".into()).id());
        assert_eq!(StreamKey::from_id(&channel.id()), Some(channel.clone()));
        assert!(!channel.keeps_history());
        let raw = RawValue::from_string(r#""{\"a\":1}""#.into()).unwrap();
        let msg = Message::new("my-event", &raw).from_user(Some("7"));
        assert_eq!(
            msg.pusher_frame("presence-room").as_str(),
            r#"{"event":"my-event","channel":"presence-room","data":"{\"a\":1}","user_id":"7"}"#
        );
    }

    #[test]
    fn a_numbered_frame_tells_its_message_id_and_nothing_else_does() {
        let raw = RawValue::from_string(r#"{"id":"00ff"}"#.into()).unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let msg = Message::new("t", &raw);
        assert_eq!(
            message_id_of(&msg.with_id(id).stream_frame(3, "user")),
            Some(id)
        );
        assert_eq!(
            message_id_of(&msg.with_id("7").stream_frame(3, "user")),
            Some("7")
        );
        assert_eq!(message_id_of(&msg.stream_frame(3, "user")), None);
        // A stream name that looks like an id field is escaped, so it is not one.
        let tricky = msg.stream_frame(3, r#"topic:x","id":"00ff"#);
        assert_eq!(message_id_of(&tricky), None, "{tricky}");
        for frame in [
            &*welcome(&[]),
            &*inbox_frame("t", "1", id).unwrap(),
            r#"{"id":"00ff"}"#,
            "",
            "\"}",
        ] {
            assert_eq!(message_id_of(frame), None, "{frame}");
        }
    }

    #[test]
    fn positions_parse_their_own_spelling_only() {
        let p = Position {
            generation: 0xabc,
            seq: 7,
        };
        assert_eq!(p.to_string(), "0000000000000abc:7");
        assert_eq!(Position::parse(&p.to_string()), Some(p));
        for bad in ["", "x:1", "1", ":1", "1:", "1:-1", "11111111111111111:1"] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }
}
