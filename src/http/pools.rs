//! `/pool/<name>?password`: data pools (see `pools.rs`). `GET` the document, `PUT` a new one,
//! `POST` a value to append, `DELETE` the pool; each change is published to the pool's topic.

use bytes::Buf;
use futures_util::Stream;
use serde_json::value::RawValue;
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::body::read_body;
use super::error::envelope;
use super::{authorized, ApiError, AppState, Req};
use crate::auth::valid_topic;
use crate::pools::Change;

/// Handles one request to pool `name`.
pub(super) async fn pool<S, B>(
    state: &AppState,
    req: &Req,
    name: &str,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    authorized(state, req, "GET, PUT, POST, DELETE")?;
    if !valid_topic(name) {
        return Err(ApiError::InvalidTopic);
    }
    let pools = &state.sockets.pools;
    if req.method == Method::GET {
        let doc = pools.get(name).await?.ok_or(ApiError::NoPool)?;
        let contents: &RawValue = serde_json::from_str(&doc.json).map_err(|_| ApiError::NoPool)?;
        return Ok(envelope(StatusCode::OK, "pool", doc.seq, contents));
    }
    let body = match req.method {
        Method::DELETE => None,
        _ => Some(read_body(body, &req.headers, &state.settings().body).await?),
    };
    let value: Option<&RawValue> = match &body {
        None => None,
        Some(body) => Some(
            serde_json::from_slice(body)
                .map_err(|e| ApiError::BadBody(format!("the body must be JSON: {e}")))?,
        ),
    };
    let change = match (&req.method, value) {
        (&Method::PUT, Some(v)) => Change::Put(v),
        (&Method::POST, Some(v)) => Change::Append(v),
        _ => Change::Delete,
    };
    let changed = pools
        .change(&state.sockets.hub, name, change)
        .await
        .map_err(super::error::pool_error)?;
    let sockets = changed.published.sockets;
    let contents = serde_json::json!({
        "event": format!("{name}:{}", changed.event), "sockets": sockets,
    });
    Ok(envelope(
        StatusCode::OK,
        "success",
        sockets as u64,
        contents,
    ))
}

/// The pool name in a request path: percent-decoded (`cart%3A1` is `cart:1`); anything that
/// does not decode to UTF-8 is kept as it is, and refused as a name.
pub(super) fn decode(path: &str) -> String {
    String::from_utf8(crate::wire::percent_decode(path)).unwrap_or_else(|_| path.to_owned())
}
