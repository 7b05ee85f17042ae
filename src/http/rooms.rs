//! `POST /rooms?uid&password` with `{"join": [topics], "leave": [topics][, "notify": true]}`:
//! the backend moves every live socket of a uid, on every node, into or out of rooms (topics),
//! without a new key (seed 003's joinRoom/leaveRoom, done by the server).
//!
//! It is a cluster-wide command: each node hands the move to the task of each of the uid's
//! sockets there ([`Registry::control`]), which follows or leaves the stream itself (it owns its
//! membership) and tells a `proto=2` page with `_join` (naming the position it starts from, so
//! it resumes from there) or `_leave`. Topics granted by the socket's key cannot be left this
//! way; a socket follows at most `max_topics_per_key` rooms besides its key's.

use bytes::{Buf, Bytes};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::reply::Response;

use super::body::read_body;
use super::error::envelope;
use super::{authorized, ApiError, AppState, Req};
use crate::auth::valid_topic;
use crate::outbox::Control;
use crate::registry::Registry;
use crate::wire::{Message, StreamKey};

/// The cluster-wide command this endpoint sends; its payload is a [`Move`] as JSON.
pub const COMMAND: &str = "rooms";

/// A move of one uid's sockets, as the body gives it and as it travels between nodes.
#[derive(Debug, Deserialize, Serialize)]
struct Move {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    join: Vec<String>,
    #[serde(default)]
    leave: Vec<String>,
    /// Body only: also publish `_joined` / `_left` with the uid to each room's followers.
    #[serde(default, skip_serializing)]
    notify: bool,
}

/// What every node does on [`COMMAND`] (registered by `run`): leaves first, then joins, handed
/// to every socket of the uid here.
pub fn on_command(registry: &Registry, payload: &[u8]) {
    let Ok(m) = serde_json::from_slice::<Move>(payload) else {
        log::debug!("ignored a malformed rooms command");
        return;
    };
    let user = StreamKey::User(m.uid.as_str().into());
    for topic in &m.leave {
        registry.control(&user, || {
            Control::Unfollow(StreamKey::Topic(topic.as_str().into()))
        });
    }
    for topic in &m.join {
        registry.control(&user, || {
            Control::Follow(StreamKey::Topic(topic.as_str().into()))
        });
    }
}

/// Checks the move, sends it to every node, and answers with the uid's sockets (every node).
pub(super) async fn rooms<S, B>(state: &AppState, req: &Req, body: S) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let params = authorized(state, req, "POST")?;
    let uid = params.uid()?.to_owned();
    let settings = state.settings();
    let body: Bytes = read_body(body, &req.headers, &settings.body).await?;
    let max = settings.max_topics_per_key;
    let mut m: Move = serde_json::from_slice(&body).map_err(|_| ApiError::BadRooms(max))?;
    for list in [&mut m.join, &mut m.leave] {
        list.sort_unstable();
        list.dedup();
        if list.len() > max || !list.iter().all(|t| valid_topic(t)) {
            return Err(ApiError::BadRooms(max));
        }
    }
    if m.join.is_empty() && m.leave.is_empty() {
        return Err(ApiError::BadRooms(max));
    }
    m.uid = uid;
    let sockets = state.sockets.hub.sockets_of(&m.uid).await?;
    let payload = serde_json::to_vec(&m).expect("a move serializes");
    state
        .sockets
        .hub
        .broker()
        .command(COMMAND, &payload)
        .await?;
    if m.notify {
        notify(state, &m).await?;
    }
    let contents = serde_json::json!({
        "uid": m.uid, "join": m.join, "leave": m.leave, "sockets": sockets,
    });
    Ok(envelope(
        StatusCode::OK,
        "success",
        sockets as u64,
        contents,
    ))
}

/// Seed 003's peopleJoin/peopleLeave: `{"topic":"_joined"|"_left","contents":{"uid"}}` to each
/// room's followers, as a message of the room (numbered, kept, resumable). Whether the uid's
/// own sockets see their own notice depends on whether they joined before it was published.
async fn notify(state: &AppState, m: &Move) -> Result<(), ApiError> {
    let contents =
        serde_json::value::to_raw_value(&serde_json::json!({ "uid": m.uid })).expect("serializes");
    for (topic, list) in [("_left", &m.leave), ("_joined", &m.join)] {
        for room in list {
            let key = StreamKey::Topic(room.as_str().into());
            state
                .sockets
                .hub
                .publish(&key, Message::new(topic, &contents), None)
                .await?;
        }
    }
    Ok(())
}
