//! The HTTP API's operations, on a request already routed and its signature checked (by
//! [`crate::http`]): trigger (`events`, `batch_events`), channel queries, presence users, and
//! terminating a user's connections. Each answers Pusher's JSON, or an [`ApiFailure`] with
//! its real status (Soketi answers 200 with an error body, so the SDKs take a wrong secret for
//! success).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::codec::{valid_channel, valid_event};
use super::{App, Kind, Pusher};
use crate::broker::BrokerError;

/// Most channels one event may name (Pusher's limit).
pub const MAX_CHANNELS_PER_EVENT: usize = 100;
/// Most events in one `batch_events` (Pusher's limit).
pub const MAX_BATCH: usize = 10;

/// Why an API request failed: its status and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiFailure {
    /// HTTP status.
    pub status: u16,
    /// What was wrong.
    pub message: String,
}

fn bad(message: impl Into<String>) -> ApiFailure {
    ApiFailure {
        status: 400,
        message: message.into(),
    }
}

impl From<BrokerError> for ApiFailure {
    fn from(e: BrokerError) -> ApiFailure {
        log::debug!("pusher api request failed: {e}");
        ApiFailure {
            status: 503,
            message: "message store unavailable: retry".into(),
        }
    }
}

#[derive(Deserialize)]
struct Event<'a> {
    name: String,
    #[serde(borrow)]
    data: &'a RawValue,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    socket_id: Option<String>,
    info: Option<String>,
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    batch: Vec<Event<'a>>,
}

fn valid_socket_id(s: &str) -> bool {
    s.split_once('.').is_some_and(|(a, b)| {
        [a, b]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// What an event asks for, checked before anything is sent.
fn check<'e>(pusher: &Pusher, event: &'e Event<'_>) -> Result<Vec<&'e str>, ApiFailure> {
    if !valid_event(&event.name) {
        return Err(bad(
            "name must be 1 to 200 bytes without control characters",
        ));
    }
    let channels: Vec<&str> = match (&event.channel, &event.channels) {
        (Some(c), None) => vec![c.as_str()],
        (None, Some(cs)) => cs.iter().map(String::as_str).collect(),
        _ => return Err(bad("give exactly one of channel or channels")),
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS_PER_EVENT {
        return Err(bad(format!(
            "channels must list 1 to {MAX_CHANNELS_PER_EVENT} channels"
        )));
    }
    if let Some(c) = channels.iter().find(|c| !valid_channel(c)) {
        return Err(bad(format!(
            "invalid channel name {c:?} (1 to 200 of A-Z a-z 0-9 _ - = @ , . ;)"
        )));
    }
    if event.data.get().len() > pusher.max_event_bytes {
        return Err(ApiFailure {
            status: 413,
            message: format!(
                "event data is larger than the allowed {} bytes",
                pusher.max_event_bytes
            ),
        });
    }
    if event
        .socket_id
        .as_deref()
        .is_some_and(|s| !valid_socket_id(s))
    {
        return Err(bad("socket_id must look like 123.456"));
    }
    Ok(channels)
}

fn parse<'b, T: Deserialize<'b>>(body: &'b [u8]) -> Result<T, ApiFailure> {
    serde_json::from_slice(body).map_err(|e| bad(format!("body is not the expected JSON: {e}")))
}

/// Sends one checked event; answers its channels' info if asked for.
async fn send(
    pusher: &Pusher,
    app: &App,
    event: &Event<'_>,
    channels: &[&str],
) -> Result<Option<Value>, ApiFailure> {
    for channel in channels {
        pusher
            .publish(
                &app.conf.id,
                channel,
                &event.name,
                event.data,
                event.socket_id.as_deref(),
                None,
            )
            .await?;
    }
    let Some(info) = &event.info else {
        return Ok(None);
    };
    let wanted = Wanted::parse(info);
    let counts = pusher.store.channels(&app.conf.id).await?;
    let mut out = Map::new();
    for channel in channels {
        out.insert(
            channel.to_string(),
            Value::Object(describe(pusher, app, channel, &counts, wanted).await?),
        );
    }
    Ok(Some(Value::Object(out)))
}

/// `POST /apps/{id}/events`.
pub async fn events(pusher: &Pusher, app: &App, body: &[u8]) -> Result<Value, ApiFailure> {
    let event: Event<'_> = parse(body)?;
    let channels = check(pusher, &event)?;
    Ok(match send(pusher, app, &event, &channels).await? {
        Some(info) => json!({ "channels": info }),
        None => json!({}),
    })
}

/// `POST /apps/{id}/batch_events`: every event is checked before any is sent.
pub async fn batch_events(pusher: &Pusher, app: &App, body: &[u8]) -> Result<Value, ApiFailure> {
    let batch: Batch<'_> = parse(body)?;
    if batch.batch.is_empty() || batch.batch.len() > MAX_BATCH {
        return Err(bad(format!("batch must hold 1 to {MAX_BATCH} events")));
    }
    let checked = batch
        .batch
        .iter()
        .map(|e| check(pusher, e))
        .collect::<Result<Vec<_>, _>>()?;
    let mut infos = Vec::new();
    let mut any_info = false;
    for (event, channels) in batch.batch.iter().zip(&checked) {
        let info = send(pusher, app, event, channels).await?;
        any_info |= info.is_some();
        // A single-channel event's info is that channel's.
        infos.push(match (info, channels.as_slice()) {
            (Some(Value::Object(mut m)), [one]) => m.remove(*one).unwrap_or_default(),
            (Some(v), _) => v,
            (None, _) => json!({}),
        });
    }
    Ok(if any_info {
        json!({ "batch": infos })
    } else {
        json!({})
    })
}

/// Which attributes an `info` parameter asks for.
#[derive(Debug, Clone, Copy, Default)]
struct Wanted {
    user_count: bool,
    subscription_count: bool,
}

impl Wanted {
    fn parse(info: &str) -> Wanted {
        let mut wanted = Wanted::default();
        for attribute in info.split(',').map(str::trim) {
            match attribute {
                "user_count" => wanted.user_count = true,
                "subscription_count" => wanted.subscription_count = true,
                _ => {}
            }
        }
        wanted
    }
}

async fn describe(
    pusher: &Pusher,
    app: &App,
    channel: &str,
    counts: &HashMap<String, usize>,
    wanted: Wanted,
) -> Result<Map<String, Value>, ApiFailure> {
    let mut out = Map::new();
    if wanted.subscription_count {
        let n = counts.get(channel).copied().unwrap_or(0);
        out.insert("subscription_count".into(), n.into());
    }
    if wanted.user_count && Kind::of(channel) == Kind::Presence {
        let n = pusher.store.members(&app.conf.id, channel).await?.len();
        out.insert("user_count".into(), n.into());
    }
    Ok(out)
}

fn param<'p>(params: &'p [(String, String)], name: &str) -> Option<&'p str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `GET /apps/{id}/channels[?filter_by_prefix=…&info=user_count,subscription_count]`:
/// occupied channels (not the internal `#server-to-user-` ones).
pub async fn channels(
    pusher: &Pusher,
    app: &App,
    params: &[(String, String)],
) -> Result<Value, ApiFailure> {
    let prefix = param(params, "filter_by_prefix").unwrap_or("");
    let wanted = Wanted::parse(param(params, "info").unwrap_or(""));
    if wanted.user_count && !prefix.starts_with("presence-") {
        return Err(bad(
            "info=user_count needs filter_by_prefix=presence- (only presence channels have users)",
        ));
    }
    let counts = pusher.store.channels(&app.conf.id).await?;
    let mut names: Vec<&String> = counts
        .keys()
        .filter(|c| c.starts_with(prefix) && Kind::of(c) != Kind::User)
        .collect();
    names.sort();
    let mut out = Map::new();
    for name in names {
        let info = describe(pusher, app, name, &counts, wanted).await?;
        out.insert(name.clone(), Value::Object(info));
    }
    Ok(json!({ "channels": out }))
}

/// `GET /apps/{id}/channels/{name}`: `occupied`, `subscription_count`, and `user_count` for a
/// presence channel.
pub async fn channel(pusher: &Pusher, app: &App, name: &str) -> Result<Value, ApiFailure> {
    if !valid_channel(name) {
        return Err(bad("invalid channel name"));
    }
    let counts = pusher.store.channels(&app.conf.id).await?;
    let all = Wanted {
        user_count: true,
        subscription_count: true,
    };
    let mut info = describe(pusher, app, name, &counts, all).await?;
    let occupied = counts.get(name).is_some_and(|&n| n > 0);
    info.insert("occupied".into(), occupied.into());
    Ok(Value::Object(info))
}

/// `GET /apps/{id}/channels/{name}/users`: a presence channel's members.
pub async fn users(pusher: &Pusher, app: &App, name: &str) -> Result<Value, ApiFailure> {
    if !valid_channel(name) || Kind::of(name) != Kind::Presence {
        return Err(bad("only presence channels have users"));
    }
    let members = pusher.store.members(&app.conf.id, name).await?;
    let users: Vec<Value> = members.iter().map(|m| json!({ "id": m.user_id })).collect();
    Ok(json!({ "users": users }))
}

/// `POST /apps/{id}/users/{user_id}/terminate_connections`: closes that user's sockets on
/// every node (4009), no one else's.
pub async fn terminate(pusher: &Pusher, app: &App, user_id: &str) -> Result<Value, ApiFailure> {
    if user_id.is_empty() || user_id.len() > 200 {
        return Err(bad("user_id must be 1 to 200 bytes"));
    }
    pusher.terminate(&app.conf.id, user_id).await?;
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_are_two_numbers() {
        assert!(valid_socket_id("123.456"));
        for bad in ["", "1.", ".1", "1.2.3", "a.1", "1"] {
            assert!(!valid_socket_id(bad), "{bad}");
        }
    }
}
