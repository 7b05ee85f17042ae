//! Backends' questions: `/online` (is a uid connected, on any node) and `/stats` (totals).

use warp::http::StatusCode;
use warp::reply::Response;

use super::error::envelope;
use super::{authorized, ApiError, AppState, Req};

/// `GET /online?uid&password`: whether `uid` has sockets open, and how many, over every node.
pub(super) async fn online(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    let params = authorized(state, req, "GET")?;
    let uid = params.uid()?;
    let n = state.sockets.hub.sockets_of(uid).await?;
    let contents = serde_json::json!({ "uid": uid, "online": n > 0, "sockets": n });
    Ok(envelope(StatusCode::OK, "online", n as u64, contents))
}

/// `GET /stats?password`: this node's totals, and the cluster's when there is one.
pub(super) async fn stats(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    authorized(state, req, "GET")?;
    let registry = state.sockets.hub.registry();
    let sockets = registry.socket_count();
    let (uids, topics) = registry.totals();
    let history_bytes = state.sockets.hub.broker().history_bytes();
    // Tasks alive in the runtime: one per socket plus a handful; a leak check for soak runs.
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let mut contents = serde_json::json!({
        "sockets": sockets, "uids": uids, "topics": topics, "history_bytes": history_bytes,
        "tasks": tasks,
    });
    if let Some(counts) = state.sockets.callbacks.counts() {
        contents["callbacks"] = serde_json::to_value(counts).expect("serializes");
    }
    // This node's figures stay available while the cluster store is down.
    match state.sockets.hub.cluster().await {
        Ok(Some(cluster)) => {
            contents["cluster"] = serde_json::to_value(cluster).expect("serializes");
        }
        Ok(None) => {}
        Err(e) => contents["cluster"] = serde_json::json!({ "error": e.to_string() }),
    }
    Ok(envelope(StatusCode::OK, "stats", sockets as u64, contents))
}
