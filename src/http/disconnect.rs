//! `POST /disconnect?uid&password`: closes every socket of a uid, on every node (a logout, a
//! ban). The sockets close with 4011, which tells a page not to reconnect by itself; the key it
//! holds still opens sockets until it expires, so to keep a user out, also stop giving it keys.

use warp::http::StatusCode;
use warp::reply::Response;

use super::error::envelope;
use super::{authorized, ApiError, AppState, Req};
use crate::commands::Command;

/// Sends the command; answers with how many sockets the uid had (over every node).
pub(super) async fn disconnect(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    let params = authorized(state, req, "POST")?;
    let uid = params.uid()?;
    let had = state.sockets.hub.sockets_of(uid).await?;
    state
        .sockets
        .hub
        .broker()
        .command(&Command::Disconnect {
            uid: uid.to_owned(),
        })
        .await?;
    let contents = serde_json::json!({ "uid": uid, "sockets": had });
    Ok(envelope(StatusCode::OK, "success", had as u64, contents))
}
