//! The HTTP surface as warp filters: `/access` ([`access`]), `/ws` ([`upgrade`]), `/push`,
//! `/publish`, `/broadcast` ([`publish`]), `/online`, `/stats` ([`query`]), `/health`,
//! `/ready`, `/metrics` ([`ops`]), `/admin` ([`admin`]); every failure is an [`ApiError`]
//! turned into the JSON envelope in one place ([`error`]). Every request is counted by endpoint
//! and status, and every refusal but "user offline" is remembered for the admin page.
//!
//! Routes are matched on path only; each handler checks its own method, so a wrong method is a
//! 405 and an unknown path a 404, both with the envelope, and no warp rejection ever escapes.

mod access;
mod admin;
pub mod error;
mod ops;
mod publish;
mod query;
mod upgrade;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::task::TaskTracker;
use warp::http::header::{self, HeaderMap, HeaderName};
use warp::http::Method;
use warp::reply::Response;
use warp::Filter;

use crate::auth::Auth;
use crate::config::{Config, MAX_UID_BYTES};
use crate::hub::Hub;
use crate::limits::{FailureLimiter, PeerAddr};
use crate::metrics::{Credential, Endpoint, Metrics};
use crate::protocol::native::{self, SocketContext};

pub use error::{ApiError, STORED_HEADER, USER_OFFLINE};
pub use publish::PUSH_OK;

/// Everything the handlers share.
pub struct AppState {
    auth: Auth,
    hub: Arc<Hub>,
    max_body_bytes: usize,
    max_uids_per_push: usize,
    max_topics_per_key: usize,
    max_sockets: usize,
    max_sockets_per_uid: usize,
    limiter: FailureLimiter,
    real_ip_header: Option<HeaderName>,
    allowed_origins: Option<Vec<String>>,
    ws_config: WebSocketConfig,
    sockets: SocketContext,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    /// False once shutdown has begun: `/ready` answers 503.
    accepting: AtomicBool,
}

impl AppState {
    /// Handler state for `config`; socket tasks are spawned on `tracker` so shutdown can wait.
    pub fn new(
        config: &Config,
        hub: Arc<Hub>,
        sockets: SocketContext,
        tracker: TaskTracker,
    ) -> AppState {
        AppState {
            auth: Auth::new(
                config.key_material(),
                &config.password,
                config.access_key_ttl_secs,
            ),
            hub,
            max_body_bytes: config.max_body_bytes,
            max_uids_per_push: config.max_uids_per_push,
            max_topics_per_key: config.max_topics_per_key,
            max_sockets: config.max_sockets,
            max_sockets_per_uid: config.max_sockets_per_uid,
            limiter: FailureLimiter::new(config.auth_failures_per_minute),
            real_ip_header: config
                .real_ip_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            allowed_origins: config.allowed_origins.clone(),
            ws_config: native::ws_config(config.max_client_frame_bytes),
            metrics: sockets.metrics.clone(),
            sockets,
            tracker,
            accepting: AtomicBool::new(true),
        }
    }

    /// Shutdown has begun: from now on `/ready` says 503, so a load balancer stops sending.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Relaxed);
    }

    /// Forgets rate-limit windows that are over; called periodically.
    pub fn sweep(&self) {
        self.limiter.sweep();
    }
}

/// The query parameters any endpoint reads; others are ignored.
#[derive(Debug, Default, Deserialize)]
struct Params {
    uid: Option<String>,
    password: Option<String>,
    access_key: Option<String>,
    /// `/access`: comma-separated topics the key grants.
    topics: Option<String>,
    /// `/ws`: `2` for numbered, resumable frames.
    proto: Option<String>,
    /// `/ws?proto=2`: JSON object, stream name → last position seen.
    since: Option<String>,
}

impl Params {
    fn parse(query: &str) -> Result<Params, ApiError> {
        serde_urlencoded::from_str(query).map_err(|e| ApiError::BadQuery(e.to_string()))
    }

    fn uid(&self) -> Result<&str, ApiError> {
        check_uid(self.uid.as_deref().unwrap_or(""))
    }
}

fn check_uid(uid: &str) -> Result<&str, ApiError> {
    match uid {
        "" => Err(ApiError::MissingUid),
        uid if uid.len() > MAX_UID_BYTES => Err(ApiError::UidTooLong),
        uid => Ok(uid),
    }
}

/// Backends authenticate with `?password=` (the seed's way) or `Authorization: Bearer`, which
/// keeps the password out of URLs and proxy logs.
/// An address that failed too often is refused before its password is even looked at.
fn check_password(state: &AppState, params: &Params, req: &Req) -> Result<(), ApiError> {
    let ip = req.client_ip(state.real_ip_header.as_ref());
    if let Some(ip) = ip {
        state.limiter.check(ip).map_err(ApiError::TooManyFailures)?;
    }
    let bearer = req
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match params.password.as_deref().or(bearer) {
        Some(given) if state.auth.check_password(given) => Ok(()),
        _ => {
            state.metrics.auth_failed(Credential::Password);
            if let Some(ip) = ip {
                state.limiter.failed(ip);
                // Checked only after a failure, and an address already locked out never gets
                // here: so this counts each lockout once.
                if state.limiter.check(ip).is_err() {
                    state.metrics.locked_out();
                }
            }
            Err(ApiError::BadPassword)
        }
    }
}

/// 405 unless the request's method is in `allow` (comma-separated).
fn allowed(req: &Req, allow: &'static str) -> Result<(), ApiError> {
    if !allow.split(", ").any(|m| m == req.method.as_str()) {
        return Err(ApiError::MethodNotAllowed(allow));
    }
    Ok(())
}

/// Checks the method and the password, and parses the query.
fn authorized(state: &AppState, req: &Req, allow: &'static str) -> Result<Params, ApiError> {
    allowed(req, allow)?;
    let params = Params::parse(&req.query)?;
    check_password(state, &params, req)?;
    Ok(params)
}

/// What every handler looks at.
struct Req {
    method: Method,
    query: String,
    headers: HeaderMap,
    peer: Option<SocketAddr>,
}

impl Req {
    /// The client's address: the configured proxy header's first entry if set and present,
    /// else the TCP peer.
    fn client_ip(&self, real_ip_header: Option<&HeaderName>) -> Option<IpAddr> {
        let forwarded = real_ip_header
            .and_then(|h| self.headers.get(h))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok());
        forwarded.or(self.peer.map(|p| p.ip()))
    }
}

/// Every request's method, query, headers and peer, with the shared state.
fn request(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Req, Arc<AppState>), Error = Infallible> + Clone + Send + Sync + 'static
{
    let state = warp::any().map(move || state.clone());
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .map(|method, query, headers, peer: Option<PeerAddr>| Req {
            method,
            query,
            headers,
            peer: peer.map(|p| p.0),
        })
        .and(state)
}

/// All routes, with a 404 envelope for anything else. Never rejects.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    all_routes(state, true)
}

/// The routes of the separate `metrics_addr` listener: `/metrics`, `/health` and `/ready`,
/// without a password (that listener is meant for a private network); 404 for anything else.
/// Never rejects.
pub fn metrics_routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    all_routes(state, false)
}

/// Both listeners' routes: one filter *type*, so that the server (hyper's connection machinery
/// included) is compiled once, not once per listener; `public` decides at run time what is
/// served.
fn all_routes(
    state: Arc<AppState>,
    public: bool,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let metrics = state.metrics.clone();
    let common = request(state);

    let access_route =
        warp::path!("access")
            .and(common.clone())
            .map(|req: Req, state: Arc<AppState>| {
                let result = access::access(&state, &req);
                respond(&state, &req, Endpoint::Access, result)
            });
    let push_route = warp::path!("push")
        .and(common.clone())
        .and(warp::body::stream())
        .then(|req: Req, state: Arc<AppState>, body| async move {
            let result = publish::push(&state, &req, body).await;
            respond(&state, &req, Endpoint::Push, result)
        });
    let publish_route = warp::path!("publish")
        .and(common.clone())
        .and(warp::body::stream())
        .then(|req: Req, state: Arc<AppState>, body| async move {
            let result = publish::publish(&state, &req, body, publish::Target::Topic).await;
            respond(&state, &req, Endpoint::Publish, result)
        });
    let broadcast_route = warp::path!("broadcast")
        .and(common.clone())
        .and(warp::body::stream())
        .then(|req: Req, state: Arc<AppState>, body| async move {
            let result = publish::publish(&state, &req, body, publish::Target::Everyone).await;
            respond(&state, &req, Endpoint::Broadcast, result)
        });
    let online_route = warp::path!("online").and(common.clone()).then(
        |req: Req, state: Arc<AppState>| async move {
            let result = query::online(&state, &req).await;
            respond(&state, &req, Endpoint::Online, result)
        },
    );
    let stats_route = warp::path!("stats").and(common.clone()).then(
        |req: Req, state: Arc<AppState>| async move {
            let result = query::stats(&state, &req).await;
            respond(&state, &req, Endpoint::Stats, result)
        },
    );
    let ws_route = warp::path!("ws")
        .and(common.clone())
        .and(warp::ext::optional::<OnUpgrade>())
        .then(|req: Req, state: Arc<AppState>, on_upgrade| async move {
            let result = upgrade::upgrade(&state, &req, on_upgrade).await;
            respond(&state, &req, Endpoint::Ws, result)
        });
    let not_found_route = warp::any().map(|| ApiError::NotFound.into_response());

    // The API proper is not served on the metrics listener.
    let api_here = warp::any()
        .and_then(move || async move {
            if public {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one();
    let api = access_route
        .or(push_route)
        .unify()
        .or(publish_route)
        .unify()
        .or(broadcast_route)
        .unify()
        .or(online_route)
        .unify()
        .or(stats_route)
        .unify()
        .or(ws_route)
        .unify()
        // Boxed, like the ops routes below: off the push path, and its type stays out of
        // every symbol of the server.
        .or(admin::routes(common.clone()).boxed())
        .unify();
    let guard = if public {
        ops::Guard::Password
    } else {
        ops::Guard::Open
    };

    // Boxed: off the push path, and erasing its type keeps the route chain's type (spelt out in
    // every symbol of the server that is generic over it) from growing by a third.
    let ops = ops::routes(common, guard).boxed();

    api_here
        .and(api)
        .or(ops)
        .unify()
        .or(not_found_route)
        .unify()
        .with(counted(metrics))
        .map(warp::Reply::into_response)
}

/// Counts every request by endpoint and status, and logs it at `debug`: path and status only,
/// never the query string (it carries passwords and access keys).
fn counted(metrics: Arc<Metrics>) -> warp::log::Log<impl Fn(warp::log::Info<'_>) + Clone> {
    warp::log::custom(move |info| {
        let status = info.status().as_u16();
        metrics.request(Endpoint::of_path(info.path()), status);
        log::debug!(
            target: "push_serve::http",
            "{} {} {} {:?}",
            info.method(),
            info.path(),
            status,
            info.elapsed()
        )
    })
}

/// The reply for `result`; a refusal is also remembered for the admin page, with the client's
/// address (never the query or headers). "User offline" is a normal outcome of `/push`, not a
/// refusal, so it is not kept (it would crowd out everything else).
fn respond(
    state: &AppState,
    req: &Req,
    endpoint: Endpoint,
    result: Result<Response, ApiError>,
) -> Response {
    result.unwrap_or_else(|e| {
        if !matches!(e, ApiError::Offline { .. }) {
            state.metrics.refused(
                e.status().as_u16(),
                e.code(),
                &e.to_string(),
                endpoint,
                req.client_ip(state.real_ip_header.as_ref()),
            );
        }
        e.into_response()
    })
}
