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
use serde::Deserialize;
use warp::http::StatusCode;
use warp::reply::Response;

use super::body::read_body;
use super::error::envelope;
use super::{authorized, ApiError, AppState, Req};
use crate::auth::valid_topic;
use crate::commands::{Command, Rooms};
use crate::wire::{Message, StreamKey};

/// A move of one uid's sockets, as the body gives it.
#[derive(Debug, Deserialize)]
struct Move {
    #[serde(default)]
    join: Vec<String>,
    #[serde(default)]
    leave: Vec<String>,
    /// Also publish `_joined` / `_left` with the uid to each room's followers.
    #[serde(default)]
    notify: bool,
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
    let body: Move = serde_json::from_slice(&body).map_err(|_| ApiError::BadRooms(max))?;
    let notify_rooms = body.notify;
    let mut m = Rooms {
        uid,
        join: body.join,
        leave: body.leave,
    };
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
    let sockets = state.sockets.hub.sockets_of(&m.uid).await?;
    state
        .sockets
        .hub
        .broker()
        .command(&Command::Rooms(m.clone()))
        .await?;
    if notify_rooms {
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
async fn notify(state: &AppState, m: &Rooms) -> Result<(), ApiError> {
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
