//! Pusher frames, both ways: what a socket sends ([`parse`] into an [`Inbound`]) and the
//! protocol's own frames the server sends (`pusher:connection_established`, `pusher:error`,
//! `pusher_internal:subscription_succeeded`, …). Channel events themselves are built once per
//! message by the registry ([`Message::pusher_frame`](crate::wire::Message::pusher_frame)).
//!
//! Everything a client sends is checked here and a bad frame is an [`Malformed`] the socket
//! answers with `pusher:error`: a missing or malformed `data` must never take a socket task
//! down (it takes Soketi down).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// Longest channel or event name (Pusher allows 164 for channels, 200 for events).
pub const MAX_NAME_BYTES: usize = 200;

/// A frame from a socket.
#[derive(Debug)]
pub enum Inbound {
    /// `pusher:ping`: answer `pusher:pong`.
    Ping,
    /// `pusher:pong`, the answer to our ping (any frame counts as one anyway).
    Pong,
    /// `pusher:subscribe`.
    Subscribe {
        /// The channel.
        channel: String,
        /// `<key>:<signature>` for private and presence channels.
        auth: Option<String>,
        /// Presence: `{"user_id","user_info"}` as JSON text, signed as is.
        channel_data: Option<String>,
    },
    /// `pusher:unsubscribe`.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// `pusher:signin` (user authentication).
    Signin {
        /// `<key>:<signature>` over `socket_id::user::user_data`.
        auth: String,
        /// JSON text with at least a string `id`.
        user_data: String,
    },
    /// A `client-*` event for the other subscribers of `channel`.
    ClientEvent {
        /// The event's name (starts with `client-`).
        event: String,
        /// The channel.
        channel: String,
        /// Its data, raw JSON (any value; pusher-js sends objects).
        data: Box<RawValue>,
    },
}

/// Why a frame was refused; the text goes back in `pusher:error`.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

fn bad(text: impl Into<String>) -> Malformed {
    Malformed(text.into())
}

#[derive(Deserialize)]
struct Frame<'a> {
    event: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    channel: Option<String>,
}

/// `data` as an object whether sent as one (pusher-js) or as a string holding one (some other
/// clients).
fn object(
    event: &str,
    data: Option<&RawValue>,
) -> Result<serde_json::Map<String, Value>, Malformed> {
    let missing = || bad(format!("{event} needs a data object"));
    let value: Value =
        serde_json::from_str(data.ok_or_else(missing)?.get()).map_err(|_| missing())?;
    let value = match value {
        Value::String(s) => serde_json::from_str(&s).map_err(|_| missing())?,
        v => v,
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(missing()),
    }
}

fn text_field(
    map: &serde_json::Map<String, Value>,
    event: &str,
    name: &str,
) -> Result<Option<String>, Malformed> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{event}: data.{name} must be a string"))),
    }
}

/// Whether `name` is a channel name Pusher accepts: 1 to [`MAX_NAME_BYTES`] of
/// `A-Z a-z 0-9 _ - = @ , . ;`, or a `#server-to-user-` channel.
pub fn valid_channel(name: &str) -> bool {
    let body = name.strip_prefix("#server-to-user-").unwrap_or(name);
    !body.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// Whether `name` can be an event's name: 1 to [`MAX_NAME_BYTES`], no control characters.
pub fn valid_event(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && !name.chars().any(char::is_control)
}

fn channel(map: &serde_json::Map<String, Value>, event: &str) -> Result<String, Malformed> {
    let name = text_field(map, event, "channel")?
        .ok_or_else(|| bad(format!("{event} needs data.channel")))?;
    if !valid_channel(&name) {
        return Err(bad(format!(
            "invalid channel name (1 to {MAX_NAME_BYTES} of A-Z a-z 0-9 _ - = @ , . ;)"
        )));
    }
    Ok(name)
}

/// Reads one text frame from a socket.
pub fn parse(text: &str) -> Result<Inbound, Malformed> {
    let frame: Frame<'_> = serde_json::from_str(text)
        .map_err(|_| bad("a frame must be a JSON object with an event"))?;
    let event = frame.event.ok_or_else(|| bad("a frame needs an event"))?;
    match event.as_str() {
        "pusher:ping" => Ok(Inbound::Ping),
        "pusher:pong" => Ok(Inbound::Pong),
        "pusher:subscribe" => {
            let map = object(&event, frame.data)?;
            Ok(Inbound::Subscribe {
                channel: channel(&map, &event)?,
                auth: text_field(&map, &event, "auth")?,
                channel_data: text_field(&map, &event, "channel_data")?,
            })
        }
        "pusher:unsubscribe" => {
            let map = object(&event, frame.data)?;
            Ok(Inbound::Unsubscribe {
                channel: channel(&map, &event)?,
            })
        }
        "pusher:signin" => {
            let map = object(&event, frame.data)?;
            let need = |name| {
                text_field(&map, &event, name)?
                    .ok_or_else(|| bad(format!("pusher:signin needs data.{name}")))
            };
            Ok(Inbound::Signin {
                auth: need("auth")?,
                user_data: need("user_data")?,
            })
        }
        e if e.starts_with("client-") => {
            if !valid_event(e) {
                return Err(bad(format!("event names are 1 to {MAX_NAME_BYTES} bytes")));
            }
            let channel = frame
                .channel
                .filter(|c| valid_channel(c))
                .ok_or_else(|| bad("a client event needs a valid channel"))?;
            let data = frame
                .data
                .map(|d| d.to_owned())
                .ok_or_else(|| bad("a client event needs data"))?;
            Ok(Inbound::ClientEvent {
                event,
                channel,
                data,
            })
        }
        _ => Err(bad(
            "unknown event: a socket sends pusher:ping, pusher:subscribe, pusher:unsubscribe, \
             pusher:signin or client-* events",
        )),
    }
}

/// A protocol frame whose `data` is a JSON string (as Pusher sends them).
fn event(event: &str, channel: Option<&str>, data: &Value) -> String {
    let data = Value::String(data.to_string());
    match channel {
        Some(channel) => json!({ "event": event, "channel": channel, "data": data }),
        None => json!({ "event": event, "data": data }),
    }
    .to_string()
}

/// `pusher:connection_established`.
pub fn connection_established(socket_id: &str, activity_timeout: u64) -> String {
    event(
        "pusher:connection_established",
        None,
        &json!({ "socket_id": socket_id, "activity_timeout": activity_timeout }),
    )
}

/// `pusher:pong`.
pub fn pong() -> String {
    event("pusher:pong", None, &json!({}))
}

/// `pusher:ping`.
pub fn ping() -> String {
    event("pusher:ping", None, &json!({}))
}

/// `pusher:error`; `code` is one of Pusher's (4001 unknown app, 4009 unauthorized, 4301 rate
/// limited…), or null for a refused frame.
pub fn error(code: Option<u16>, message: &str) -> String {
    json!({ "event": "pusher:error", "data": { "code": code, "message": message } }).to_string()
}

/// `pusher_internal:subscription_succeeded`; `presence` the members for a presence channel.
pub fn subscription_succeeded(channel: &str, presence: Option<Value>) -> String {
    let data = match presence {
        Some(p) => json!({ "presence": p }),
        None => json!({}),
    };
    event(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &data,
    )
}

/// `pusher:subscription_error` on `channel` (pusher-js and Laravel Echo's `.error()` see it),
/// shaped as pusher-js reports its own authorization failures.
pub fn subscription_error(channel: &str, status: u16, message: &str) -> String {
    let kind = if status == 401 || status == 403 {
        "AuthError"
    } else {
        "SubscriptionError"
    };
    json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": { "type": kind, "error": message, "status": status },
    })
    .to_string()
}

/// `pusher:cache_miss`: a cache channel had no event to replay.
pub fn cache_miss(channel: &str) -> String {
    json!({ "event": "pusher:cache_miss", "channel": channel }).to_string()
}

/// `pusher:signin_success`.
pub fn signin_success(user_data: &str) -> String {
    event(
        "pusher:signin_success",
        None,
        &json!({ "user_data": user_data }),
    )
}

/// The `data` of a member event: `{"user_id"[, "user_info"]}` as a JSON string, raw.
pub fn member_data(user_id: &str, user_info: Option<&str>) -> Box<RawValue> {
    let inner = match user_info {
        Some(info) => format!(
            "{{\"user_id\":{},\"user_info\":{info}}}",
            Value::String(user_id.into())
        ),
        None => format!("{{\"user_id\":{}}}", Value::String(user_id.into())),
    };
    RawValue::from_string(Value::String(inner).to_string()).expect("a JSON string")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_malformed_data_is_an_error_not_a_crash() {
        for text in [
            r#"{"event":"pusher:subscribe"}"#,
            r#"{"event":"pusher:subscribe","data":null}"#,
            r#"{"event":"pusher:subscribe","data":"not json"}"#,
            r#"{"event":"pusher:subscribe","data":{"channel":7}}"#,
            r#"{"event":"pusher:subscribe","data":{"channel":"a b"}}"#,
            r#"{"event":"pusher:subscribe","data":{"channel":"ok","auth":[]}}"#,
            r#"{"event":"pusher:signin","data":{"auth":"k:s"}}"#,
            r#"{"event":"client-x","channel":"private-a"}"#,
            r#"{"event":"client-x","data":1}"#,
            r#"{"event":"whatever"}"#,
            r#"{"data":{}}"#,
            r#"[1]"#,
            "",
        ] {
            assert!(parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn data_may_be_an_object_or_a_string_holding_one() {
        for text in [
            r#"{"event":"pusher:subscribe","data":{"channel":"presence-a","auth":"k:s","channel_data":"{}"}}"#,
            r#"{"event":"pusher:subscribe","data":"{\"channel\":\"presence-a\",\"auth\":\"k:s\",\"channel_data\":\"{}\"}"}"#,
        ] {
            match parse(text).unwrap() {
                Inbound::Subscribe {
                    channel,
                    auth,
                    channel_data,
                } => {
                    assert_eq!(channel, "presence-a");
                    assert_eq!(auth.as_deref(), Some("k:s"));
                    assert_eq!(channel_data.as_deref(), Some("{}"));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(valid_channel("#server-to-user-42"));
        assert!(!valid_channel("#other"));
        assert!(!valid_channel(&"a".repeat(201)));
    }

    #[test]
    fn protocol_frames_carry_their_data_as_a_json_string() {
        assert_eq!(
            connection_established("1.2", 120),
            r#"{"data":"{\"activity_timeout\":120,\"socket_id\":\"1.2\"}","event":"pusher:connection_established"}"#
        );
        assert_eq!(
            member_data("7", Some(r#"{"n":1}"#)).get(),
            r#""{\"user_id\":\"7\",\"user_info\":{\"n\":1}}""#
        );
    }
}
