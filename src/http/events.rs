//! `GET /sse?uid&access_key[&proto=2&since=…]`: the WebSocket fallback. The same checks as
//! `/ws`, all before the stream starts, so a refused page gets a status and the envelope; the
//! same limits (an event stream is a socket); then the page joins the hub and the SSE protocol
//! streams its frames as events.
//!
//! Pages on another origin read the stream through CORS: every reply carries
//! `Access-Control-Allow-Origin` for an allowed origin (any, unless `allowed_origins` is set),
//! and `OPTIONS` answers a preflight (a browser sends one when it adds `Last-Event-ID`).
//! `HEAD` runs every check without opening a stream: `client/push-serve.js` uses it to tell a
//! network that blocks WebSockets from a refused key.

use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::reply::{Reply, Response};

use super::upgrade::{admit, check_room, join, origin_allowed};
use super::{ApiError, AppState, Req};
use crate::connection;
use crate::protocol::sse;

/// The reply to any `/sse` request, with its CORS headers.
pub(super) async fn events(state: &AppState, req: &Req) -> Response {
    let mut res = match respond(state, req).await {
        Ok(res) => res,
        Err(e) => e.into_response(),
    };
    if let Some(origin) = req.headers.get(header::ORIGIN) {
        if origin_allowed(state, &req.headers) {
            let h = res.headers_mut();
            match state.settings().allowed_origins {
                None => h.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                ),
                Some(_) => {
                    h.insert(header::VARY, HeaderValue::from_static("Origin"));
                    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())
                }
            };
        }
    }
    res
}

async fn respond(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method == Method::OPTIONS {
        return preflight(state, &req.headers);
    }
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed("GET, HEAD, OPTIONS"));
    }
    let last_event_id = req
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok());
    let admission = admit(state, req, last_event_id)?;
    let slot = check_room(
        state,
        req,
        &admission.subscription.uid,
        state.sockets.is_draining(),
    )?;
    if req.method == Method::HEAD {
        return Ok(stream_response(Response::new(Default::default())));
    }
    // Joined before the 200 is written, as a WebSocket joins before its 101.
    let (session, peer) = join(
        state,
        req,
        admission.subscription,
        admission.since.as_ref(),
        crate::metrics::Transport::Sse,
    )
    .await?;
    let (body, run) = sse::start(session, admission.since.as_ref(), state.sockets.clone());
    connection::spawn(&state.sockets, &state.tracker, slot, peer, run);
    Ok(stream_response(warp::reply::stream(body).into_response()))
}

fn stream_response(mut res: Response) -> Response {
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx would otherwise buffer the stream and hold events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

fn preflight(state: &AppState, headers: &HeaderMap) -> Result<Response, ApiError> {
    if !origin_allowed(state, headers) {
        return Err(ApiError::OriginRefused);
    }
    let mut res = Response::new(Default::default());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Last-Event-ID"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    Ok(res)
}
