//! What operators and their tools ask: `/health` (is the process alive), `/ready` (should it get
//! traffic) and `/metrics` (Prometheus text format).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use warp::http::header::{self, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Filter;

use super::error::envelope;
use super::{allowed, authorized, respond, ApiError, AppState, Req};
use crate::metrics::{Endpoint, Scraped};

/// The Prometheus text exposition format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether `/metrics` asks for the backends' password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Guard {
    /// On the public listener: the password, as a Bearer token (or `?password=`).
    Password,
    /// On the separate `metrics_addr` listener: none.
    Open,
}

/// `/health`, `/ready` and `/metrics`.
pub(super) fn routes(
    common: impl Filter<Extract = (Req, Arc<AppState>), Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    guard: Guard,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    // Neither a liveness nor a readiness answer is a refusal to remember: a probe polling a
    // draining server would crowd out everything else on the admin page.
    let health = warp::path!("health")
        .and(common.clone())
        .map(|req: Req, _: Arc<AppState>| health(&req).unwrap_or_else(ApiError::into_response));
    let ready = warp::path!("ready")
        .and(common.clone())
        .map(|req: Req, state: Arc<AppState>| {
            ready(&state, &req).unwrap_or_else(ApiError::into_response)
        });
    let metrics = warp::path!("metrics")
        .and(common)
        .map(move |req: Req, state: Arc<AppState>| {
            let result = metrics(&state, &req, guard);
            respond(&state, &req, Endpoint::Metrics, result)
        });
    health.or(ready).unify().or(metrics).unify()
}

fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `GET /health`: 200 whenever the process answers HTTP at all. No password, no details.
fn health(req: &Req) -> Result<Response, ApiError> {
    allowed(req, "GET, HEAD")?;
    Ok(no_store(envelope(StatusCode::OK, "health", 1, "ok")))
}

/// `GET /ready`: 200 while the server accepts work and its broker can publish; 503 once
/// shutdown has begun, or while a cluster store is unreachable.
fn ready(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    allowed(req, "GET, HEAD")?;
    if !state.accepting.load(Ordering::Relaxed) || state.sockets.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    if !state.hub.broker().is_ready() {
        return Err(ApiError::Unavailable);
    }
    Ok(no_store(envelope(StatusCode::OK, "ready", 1, "ready")))
}

/// `GET /metrics`: every metric in the Prometheus text format.
fn metrics(state: &AppState, req: &Req, guard: Guard) -> Result<Response, ApiError> {
    match guard {
        Guard::Password => {
            authorized(state, req, "GET")?;
        }
        Guard::Open => allowed(req, "GET")?,
    }
    let registry = state.hub.registry();
    let scraped = Scraped {
        sockets: registry.socket_count(),
        deliveries: registry.deliveries(),
        evictions: registry.evictions(),
        history_bytes: state.hub.broker().history_bytes(),
        broker_ready: state.hub.broker().is_ready(),
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
    };
    let mut res = Response::new(state.metrics.render(&scraped).into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_TEXT),
    );
    Ok(no_store(res))
}
