//! What operators and their tools ask: `/health` (is the process alive), `/ready` (should it get
//! traffic) and `/metrics` (Prometheus text format).

use std::sync::atomic::Ordering;

use warp::http::header::{self, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::envelope;
use super::{allowed, authorized, ApiError, AppState, Req};
use crate::metrics::Scraped;

/// The Prometheus text exposition format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `GET /health`: 200 whenever the process answers HTTP at all. No password, no details.
pub(super) fn health(req: &Req) -> Result<Response, ApiError> {
    allowed(req, "GET, HEAD")?;
    Ok(no_store(envelope(StatusCode::OK, "health", 1, "ok")))
}

/// `GET /ready`: 200 while the server accepts work and its broker can publish; 503 once
/// shutdown has begun, or while a cluster store is unreachable.
pub(super) fn ready(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    allowed(req, "GET, HEAD")?;
    if !state.accepting.load(Ordering::Relaxed) || state.sockets.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    if !state.sockets.hub.broker().is_ready() {
        return Err(ApiError::Unavailable);
    }
    Ok(no_store(envelope(StatusCode::OK, "ready", 1, "ready")))
}

/// `GET /metrics`: every metric in the Prometheus text format. On the public listener
/// (`public`) it asks for the backends' password, as a Bearer token or `?password=`; on the
/// separate `metrics_addr` listener, none.
pub(super) fn metrics(state: &AppState, req: &Req, public: bool) -> Result<Response, ApiError> {
    if public {
        authorized(state, req, "GET")?;
    } else {
        allowed(req, "GET")?;
    }
    let registry = state.sockets.hub.registry();
    let scraped = Scraped {
        sockets: registry.socket_count(),
        deliveries: registry.deliveries(),
        evictions: registry.evictions(),
        history_bytes: state.sockets.hub.broker().history_bytes(),
        broker_ready: state.sockets.hub.broker().is_ready(),
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
    };
    let mut res = Response::new(state.sockets.metrics.render(&scraped).into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_TEXT),
    );
    Ok(no_store(res))
}
