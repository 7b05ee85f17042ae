//! Wire types: the `{"topic","number","contents"}` envelope of every reply and pushed frame, the
//! push body, and the WebSocket close codes the server uses (listed once, here).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Utf8Bytes;

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

/// Body of `POST /push`, `/publish` and `/broadcast`. `contents` stays raw JSON text: it is
/// forwarded byte for byte, so integers beyond f64 and any nesting reach the page exactly as the
/// backend sent them.
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
}

/// Serializes a seed frame once; the result is shared (reference-counted) by every socket it
/// is delivered to.
pub fn push_frame(topic: &str, number: u64, contents: &RawValue) -> Utf8Bytes {
    frame_text(topic, number, contents, None)
}

/// A frame for a resumable socket: the seed's three fields, `number` being the message's
/// sequence in its stream, plus `stream` (`user`, `broadcast`, `topic:<name>`).
pub fn stream_frame(topic: &str, seq: u64, contents: &RawValue, stream: &str) -> Utf8Bytes {
    frame_text(topic, seq, contents, Some(stream))
}

fn frame_text(topic: &str, number: u64, contents: &RawValue, stream: Option<&str>) -> Utf8Bytes {
    // Writing a &str as JSON cannot fail.
    let json = |s: &str| serde_json::to_string(s).expect("string serializes");
    let raw = contents.get();
    let mut out = String::with_capacity(raw.len() + topic.len() + 64);
    out.push_str("{\"topic\":");
    out.push_str(&json(topic));
    out.push_str(",\"number\":");
    out.push_str(&number.to_string());
    out.push_str(",\"contents\":");
    out.push_str(raw);
    if let Some(stream) = stream {
        out.push_str(",\"stream\":");
        out.push_str(&json(stream));
    }
    out.push('}');
    Utf8Bytes::from(out)
}

/// First frame on a resumable socket: the position (`generation:seq`) of every stream it
/// follows, as of the moment it joined. The client keeps these and echoes them back in `since`
/// when it reconnects.
pub fn welcome(positions: &[(String, String)]) -> Arc<Utf8Bytes> {
    let streams: serde_json::Map<String, serde_json::Value> = positions
        .iter()
        .map(|(name, pos)| (name.clone(), serde_json::Value::String(pos.clone())))
        .collect();
    control("_welcome", serde_json::json!({ "streams": streams }))
}

/// Tells a resuming client that messages of `stream` after its position `since` and before
/// `next` are no longer kept (too old, or the stream restarted): it should reload its state.
pub fn gap(stream: &str, since: &str, next: u64) -> Arc<Utf8Bytes> {
    control(
        "_gap",
        serde_json::json!({ "stream": stream, "since": since, "next": next }),
    )
}

fn control(topic: &str, contents: serde_json::Value) -> Arc<Utf8Bytes> {
    let text = serde_json::to_string(&Envelope {
        topic,
        number: 0,
        contents,
    })
    .expect("control frame serializes");
    Arc::new(Utf8Bytes::from(text))
}

/// Why the server closes a socket, and the close code the page sees. Pages should reconnect on
/// every one of them (after fetching a new access key on 4001).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed first; we answer with the same normal closure.
    ClientClosed,
    /// The server is shutting down or restarting: 1001 Going Away. Reconnect with backoff.
    ServerShutdown,
    /// The client sent a message larger than `max_client_frame_bytes`: 1009.
    MessageTooBig,
    /// The client broke the WebSocket protocol: 1002.
    ProtocolError,
    /// No pong (or any frame) within one heartbeat interval after a ping: 4000.
    HeartbeatTimeout,
    /// The socket's send queue overflowed because the client reads too slowly: 4008.
    SlowConsumer,
}

impl CloseReason {
    /// The numeric close code sent in the close frame.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ClientClosed => 1000,
            CloseReason::ServerShutdown => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::MessageTooBig => 1009,
            CloseReason::HeartbeatTimeout => 4000,
            CloseReason::SlowConsumer => 4008,
        }
    }

    /// The short reason text sent with the code.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "bye",
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::MessageTooBig => "message too big",
            CloseReason::HeartbeatTimeout => "heartbeat timeout",
            CloseReason::SlowConsumer => "send queue full: client reads too slowly",
        }
    }

    /// As tungstenite's close code.
    pub fn close_code(self) -> CloseCode {
        CloseCode::from(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_keeps_contents_verbatim() {
        let body =
            r#"{"topic":"t\"q","contents":{"n":18446744073709551615,"f":1.0e400,"s":"你好"}}"#;
        let push: PushBody<'_> = serde_json::from_str(body).unwrap();
        let frame = push_frame(&push.topic, 1, push.contents);
        assert_eq!(
            frame.as_str(),
            r#"{"topic":"t\"q","number":1,"contents":{"n":18446744073709551615,"f":1.0e400,"s":"你好"}}"#
        );
    }

    #[test]
    fn push_body_requires_both_fields() {
        assert!(serde_json::from_str::<PushBody<'_>>(r#"{"topic":"t"}"#).is_err());
        assert!(serde_json::from_str::<PushBody<'_>>(r#"{"contents":1}"#).is_err());
        assert!(serde_json::from_str::<PushBody<'_>>(r#"{"topic":1,"contents":1}"#).is_err());
        assert!(serde_json::from_str::<PushBody<'_>>(r#"{"topic":"t","contents":null}"#).is_ok());
    }
}
