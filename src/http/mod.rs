//! The HTTP surface: one warp filter extracts what a handler reads, and `dispatch` picks the
//! handler from the route table (`routes.rs`): `/access` (`access`), `/ws` (`upgrade`), `/sse`
//! (`events`), `/push`, `/publish`, `/broadcast` (`publish`), `/online`, `/stats` (`query`),
//! `/push-serve.js` ([`client`]), `/health`, `/ready`, `/metrics` (`ops`), `/admin` (`admin`),
//! the rooms, pools, reports and Pusher paths; every
//! failure is an [`ApiError`] turned into the JSON envelope in one place ([`error`]). Every
//! request is counted by endpoint and status, and every refusal but "user offline" is
//! remembered for the admin page.
//!
//! Routes are matched on path only; each handler checks its own method, so a wrong method is a
//! 405 and an unknown path a 404, both with the envelope, and no warp rejection ever escapes.

mod access;
mod admin;
mod body;
pub mod client;
pub mod disconnect;
pub mod error;
mod events;
mod ops;
mod pools;
mod publish;
mod pusher;
mod query;
pub mod rooms;
pub mod routes;
mod upgrade;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use hyper::upgrade::OnUpgrade;
use serde::Deserialize;
use tokio_util::task::TaskTracker;
use warp::http::header::{self, HeaderMap, HeaderName};
use warp::http::Method;
use warp::path::FullPath;
use warp::reply::Response;
use warp::Filter;

use crate::auth::Auth;
use crate::config::{Config, Live, MAX_UID_BYTES};
use crate::limits::{
    AddressSlots, FailureLimiter, LogThrottle, NewSocketRate, PeerAddr, SocketSlots,
};
use crate::metrics::{Credential, Endpoint};
use crate::protocol::SocketContext;

pub use error::{ApiError, STORED_HEADER, USER_OFFLINE};
pub use publish::PUSH_OK;

/// Everything the handlers share.
pub struct AppState {
    /// What a config reload may change, swapped whole ([`AppState::reconfigure`]).
    settings: RwLock<Arc<Settings>>,
    /// One slot per open socket, `max_sockets` in all. Taken before the upgrade and held by
    /// the socket's task, so the cap holds however many upgrades race (a count checked before
    /// joining let concurrent upgrades pass it together).
    socket_slots: Arc<SocketSlots>,
    /// Sockets per client address, `max_sockets_per_address` each; taken and held like a slot.
    address_slots: Arc<AddressSlots>,
    /// New sockets per client address per minute (`new_sockets_per_address_per_minute`).
    new_sockets: NewSocketRate,
    /// The "server full" line: at most one per period while refusals last.
    full_log: LogThrottle,
    /// The "body too slow" line (408): a stranger stalling bodies cannot flood the log.
    slow_body_log: LogThrottle,
    /// Lines about refusals that need no login (a foreign `Origin`, a bad Pusher API
    /// signature): at most one a minute, with how many were held back.
    refusal_log: LogThrottle,
    limiter: FailureLimiter,
    /// The sockets' context, and through it the node's services (hub, metrics, receipts…).
    sockets: Arc<SocketContext>,
    tracker: TaskTracker,
    /// Pusher-compatible mode, when configured.
    pusher: Option<Arc<crate::protocol::pusher::Pusher>>,
    /// False once shutdown has begun: `/ready` answers 503.
    accepting: AtomicBool,
}

/// The handlers' settings that a config reload changes while the server runs. A request reads
/// them once ([`AppState::settings`]) and so sees one consistent set.
pub(crate) struct Settings {
    auth: Auth,
    /// How much of a request body, for how long, at what pace.
    body: body::Limits,
    max_uids_per_push: usize,
    /// Longest a push may be kept in an offline uid's inbox, seconds.
    inbox_max_ttl_secs: u64,
    max_topics_per_key: usize,
    max_sockets_per_uid: usize,
    real_ip_header: Option<HeaderName>,
    trusted_proxies: usize,
    allowed_origins: Option<Vec<String>>,
}

impl Settings {
    fn new(config: &Live, auth: Auth) -> Settings {
        Settings {
            auth,
            body: body::Limits {
                max_bytes: config.max_body_bytes,
                timeout: std::time::Duration::from_secs_f64(config.body_timeout_secs),
                min_bytes_per_sec: config.body_min_bytes_per_sec,
            },
            max_uids_per_push: config.max_uids_per_push,
            inbox_max_ttl_secs: config.inbox_max_ttl_secs,
            max_topics_per_key: config.max_topics_per_key,
            max_sockets_per_uid: config.max_sockets_per_uid,
            real_ip_header: config
                .real_ip_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            trusted_proxies: config.trusted_proxies,
            allowed_origins: config.allowed_origins.clone(),
        }
    }
}

/// The access keys `config` asks for: our own, and JWTs when `jwt_secret` is set.
fn auth_of(config: &Live) -> Auth {
    let auth = Auth::new(
        config.key_material(),
        config.password.expose(),
        config.access_key_ttl_secs,
    );
    match &config.jwt_secret {
        Some(secret) => auth.with_jwt(secret.expose(), config.max_topics_per_key),
        None => auth,
    }
}

impl AppState {
    /// Handler state for `config`; socket tasks are spawned on `tracker` so shutdown can wait.
    pub fn new(config: &Config, sockets: Arc<SocketContext>, tracker: TaskTracker) -> AppState {
        let pusher = config
            .pusher
            .as_ref()
            .zip(sockets.pusher_store.clone())
            .map(|(p, store)| {
                Arc::new(crate::protocol::pusher::Pusher::new(
                    p,
                    sockets.hub.clone(),
                    store,
                    sockets.metrics.clone(),
                ))
            });
        let live = config.live();
        AppState {
            settings: RwLock::new(Arc::new(Settings::new(&live, auth_of(&live)))),
            socket_slots: Arc::new(SocketSlots::new(config.max_sockets)),
            address_slots: Arc::new(AddressSlots::new(config.max_sockets_per_address)),
            new_sockets: NewSocketRate::new(config.new_sockets_per_address_per_minute),
            full_log: LogThrottle::new(std::time::Duration::from_secs(10)),
            slow_body_log: LogThrottle::new(std::time::Duration::from_secs(60)),
            refusal_log: LogThrottle::new(std::time::Duration::from_secs(60)),
            limiter: FailureLimiter::new(config.auth_failures_per_minute),
            pusher,
            sockets,
            tracker,
            accepting: AtomicBool::new(true),
        }
    }

    /// Applies a reloaded config's settings to the requests that come next: password and
    /// access keys (keys signed with a replaced secret keep verifying for
    /// `secret_overlap_secs`), limits, origins and the client-address header. Sockets already
    /// open are not touched, even if they are now over a lowered limit.
    pub fn reconfigure(&self, config: &Live) {
        let auth = self
            .settings()
            .auth
            .rotated(auth_of(config), config.secret_overlap());
        let next = Arc::new(Settings::new(config, auth));
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = next;
        self.socket_slots.set_max(config.max_sockets);
        self.address_slots.set_max(config.max_sockets_per_address);
        self.new_sockets
            .set_per_minute(config.new_sockets_per_address_per_minute);
        self.limiter.set_per_minute(config.auth_failures_per_minute);
    }

    /// The settings in force now.
    pub(crate) fn settings(&self) -> Arc<Settings> {
        // Held for a pointer copy only; writers come with a reload.
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Shutdown has begun: from now on `/ready` says 503, so a load balancer stops sending.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Relaxed);
    }

    /// Forgets rate-limit windows that are over; called periodically.
    pub fn sweep(&self) {
        self.limiter.sweep();
        self.new_sockets.sweep();
    }

    /// The address `req` comes from, as far as the configured proxies vouch for it.
    fn client_ip(&self, req: &Req) -> Option<IpAddr> {
        let settings = self.settings();
        req.client_ip(settings.real_ip_header.as_ref(), settings.trusted_proxies)
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
    /// `/report/push/<id>`: `1` to list the uids that acked.
    uids: Option<String>,
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
///
/// A refused password is logged at info with the address and path (never what was given), and
/// the failure that locks an address out at warn; the refusals during a lockout only at debug,
/// since that is where a guesser's flood goes.
fn check_password(state: &AppState, params: &Params, req: &Req) -> Result<(), ApiError> {
    let ip = state.client_ip(req);
    if let Some(ip) = ip {
        state.limiter.check(ip).map_err(|wait| {
            log::debug!(
                "{} refused for {ip}: locked out for {} s more",
                req.path,
                wait.as_secs()
            );
            ApiError::TooManyFailures(wait)
        })?;
    }
    let given = params.password.as_deref().or_else(|| bearer(&req.headers));
    match given {
        Some(given) if state.settings().auth.check_password(given) => Ok(()),
        _ => {
            let client = Client(ip);
            let what = if given.is_some() { "wrong" } else { "no" };
            log::info!("{} refused for {client}: {what} password", req.path);
            state.sockets.metrics.auth_failed(Credential::Password);
            if let Some(wait) = ip.and_then(|ip| state.limiter.failed(ip)) {
                state.sockets.metrics.locked_out();
                log::warn!(
                    "{client} locked out of the password endpoints for {} s after {} failed \
                     passwords within a minute (429 until then)",
                    wait.as_secs().max(1),
                    state.limiter.per_minute()
                );
            }
            Err(ApiError::BadPassword)
        }
    }
}

/// A client address for a log line.
struct Client(Option<IpAddr>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("an unknown address"),
        }
    }
}

/// The token of `Authorization: Bearer <token>`. The scheme is case-insensitive (RFC 9110
/// §11.1), so `bearer` and `BEARER` from some HTTP clients work too.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
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
    /// Path only: the query carries passwords and keys and is never logged.
    path: String,
    query: String,
    headers: HeaderMap,
    peer: Option<SocketAddr>,
}

impl Req {
    /// The client's address: with a proxy header configured and present, the entry
    /// `trusted_proxies` places from its right end; else the TCP peer.
    ///
    /// Each proxy appends the address it was connected from, so the rightmost entries are
    /// written by the proxies we trust and everything to their left by the client, who can put
    /// anything there (taking the first entry let a client choose its own address, and so dodge
    /// the password lockout or lock out someone else). Entries are split on raw bytes, so junk
    /// a client wrote cannot hide the entries after it.
    fn client_ip(&self, real_ip_header: Option<&HeaderName>, trusted: usize) -> Option<IpAddr> {
        let from_proxy = real_ip_header.and_then(|h| {
            let entries = || {
                self.headers
                    .get_all(h)
                    .iter()
                    .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            };
            // Fewer entries than proxies: every entry was written by one of ours.
            let skip = entries().count().saturating_sub(trusted.max(1));
            entries().nth(skip).and_then(parse_ip)
        });
        from_proxy.or(self.peer.map(|p| p.ip()))
    }
}

/// An address as proxies write it: `192.0.2.7`, `2001:db8::1`, and with a port, `192.0.2.7:4711`
/// or `[2001:db8::1]:4711`.
fn parse_ip(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim();
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// Every request's method, path, query, headers and peer, with the shared state.
fn request(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Req, Arc<AppState>), Error = Infallible> + Clone + Send + Sync + 'static
{
    let state = warp::any().map(move || state.clone());
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .map(
            |method, path: FullPath, query, headers, peer: Option<PeerAddr>| Req {
                method,
                path: path.as_str().to_owned(),
                query,
                headers,
                peer: peer.map(|p| p.0),
            },
        )
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

/// Both listeners' routes. warp extracts what a handler reads (method, path, query, headers,
/// peer, body, upgrade) in one filter and [`dispatch`] picks the handler from the route table:
/// one small filter type instead of a chain of a filter per route, whose nested type cost the
/// compiler minutes to check. `public` decides at run time what is served.
fn all_routes(
    state: Arc<AppState>,
    public: bool,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    request(state)
        .and(warp::body::stream())
        .and(warp::ext::optional::<OnUpgrade>())
        .then(move |req, state, body, on_upgrade| dispatch(req, state, body, on_upgrade, public))
        // The body filter rejects only a request whose body was already taken: never here.
        .or(warp::any().map(|| ApiError::NotFound.into_response()))
        .unify()
}

/// Answers one request with the handler its path's route names (404 for none, and for
/// everything but the operators' routes on the `metrics_addr` listener), and counts it by
/// endpoint and status. It logs it at `debug`: method, path and status only, never the query
/// string (it carries passwords and access keys).
async fn dispatch<S, B>(
    req: Req,
    state: Arc<AppState>,
    body: S,
    on_upgrade: Option<OnUpgrade>,
    public: bool,
) -> Response
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send,
    B: bytes::Buf + Send,
{
    let started = std::time::Instant::now();
    let route = routes::route(&req.path).filter(|(r, _)| public || r.ops);
    let endpoint = route.map_or(Endpoint::Other, |(r, _)| r.endpoint);
    let res = answer(&req, &state, route, body, on_upgrade, public).await;
    let status = res.status().as_u16();
    state.sockets.metrics.request(endpoint, status);
    log::debug!(
        target: "push_serve::http",
        "{} {} {status} {:?}",
        req.method,
        req.path,
        started.elapsed()
    );
    res
}

/// The reply to a request for `route` (`None`: no such path here).
async fn answer<S, B>(
    req: &Req,
    state: &AppState,
    route: Option<(&routes::Route, &str)>,
    body: S,
    on_upgrade: Option<OnUpgrade>,
    public: bool,
) -> Response
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send,
    B: bytes::Buf + Send,
{
    // An unknown path is no refusal to remember either.
    let Some((route, param)) = route else {
        return ApiError::NotFound.into_response();
    };
    let endpoint = route.endpoint;
    let result = match endpoint {
        Endpoint::Access => access::access(state, req),
        Endpoint::Push => publish::push(state, req, body).await,
        Endpoint::Publish => publish::publish(state, req, body, publish::Target::Topic).await,
        Endpoint::Broadcast => publish::publish(state, req, body, publish::Target::Everyone).await,
        Endpoint::Online => query::online(state, req).await,
        Endpoint::Stats => query::stats(state, req).await,
        Endpoint::Disconnect => disconnect::disconnect(state, req).await,
        Endpoint::Rooms => Box::pin(rooms::rooms(state, req, body)).await,
        Endpoint::Report if !param.contains('/') => publish::report(state, req, param).await,
        Endpoint::Pool => Box::pin(pools::pool(state, req, &pools::decode(param), body)).await,
        Endpoint::Ws => Box::pin(upgrade::upgrade(state, req, on_upgrade)).await,
        // Its own CORS headers, and no refusal kept: an `EventSource` retries on its own.
        Endpoint::Sse => return Box::pin(events::events(state, req)).await,
        Endpoint::Client => client::client_js(req),
        Endpoint::PusherSocket if !param.is_empty() && !param.contains('/') => {
            Box::pin(pusher::socket(state, req, param, on_upgrade)).await
        }
        Endpoint::PusherApi => Box::pin(pusher::api(state, req, body)).await,
        Endpoint::Admin => admin::admin(state, req),
        // Neither a liveness nor a readiness answer is a refusal to remember: a probe polling a
        // draining server would crowd out everything else on the admin page.
        Endpoint::Health => return ops::health(req).unwrap_or_else(ApiError::into_response),
        Endpoint::Ready => return ops::ready(state, req).unwrap_or_else(ApiError::into_response),
        Endpoint::Metrics => ops::metrics(state, req, public),
        Endpoint::Report | Endpoint::PusherSocket | Endpoint::Other => {
            return ApiError::NotFound.into_response()
        }
    };
    respond(state, req, endpoint, result)
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
        if let (ApiError::BodyTimeout(..), Some(held_back)) = (&e, state.slow_body_log.allow()) {
            log::info!(
                "{} body from {} too slow: 408, connection closed ({held_back} more since the \
                 last such line, which comes at most once a minute)",
                req.path,
                Client(state.client_ip(req))
            );
        }
        if !matches!(e, ApiError::Offline { .. }) {
            state.sockets.metrics.refused(
                e.status().as_u16(),
                e.code(),
                &e.to_string(),
                endpoint,
                state.client_ip(req),
            );
        }
        e.into_response()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn req(forwarded: &[&[u8]]) -> Req {
        let mut headers = HeaderMap::new();
        for v in forwarded {
            headers.append("x-forwarded-for", HeaderValue::from_bytes(v).unwrap());
        }
        Req {
            method: Method::GET,
            path: "/access".into(),
            query: String::new(),
            headers,
            peer: Some("127.0.0.1:5555".parse().unwrap()),
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_client_address_is_the_rightmost_entry_the_trusted_proxies_wrote() {
        let xff = HeaderName::from_static("x-forwarded-for");
        let h = Some(&xff);
        // Whatever the client wrote on the left is ignored.
        let spoofed = req(&[b"198.51.100.66, 203.0.113.9"]);
        assert_eq!(spoofed.client_ip(h, 1), ip("203.0.113.9"));
        // A CDN, then nginx: the CDN's entry is second from the right.
        let two = req(&[b"6.6.6.6, 203.0.113.9, 10.0.0.2"]);
        assert_eq!(two.client_ip(h, 2), ip("203.0.113.9"));
        // Fewer entries than proxies: all of them are ours, the leftmost is the client.
        assert_eq!(req(&[b"203.0.113.9"]).client_ip(h, 2), ip("203.0.113.9"));
        // Several header lines are one list, in order.
        let lines = req(&[b"6.6.6.6, 7.7.7.7", b"203.0.113.9"]);
        assert_eq!(lines.client_ip(h, 1), ip("203.0.113.9"));
        // Bytes that are not text in the client's part do not hide the proxy's entry.
        let junk = req(&[b"\xff\xfe, 203.0.113.9"]);
        assert_eq!(junk.client_ip(h, 1), ip("203.0.113.9"));
        // With ports, as some proxies write them.
        let ported = req(&[b"[2001:db8::1]:4711"]);
        assert_eq!(ported.client_ip(h, 1), ip("2001:db8::1"));
        assert_eq!(req(&[b"203.0.113.9:80"]).client_ip(h, 1), ip("203.0.113.9"));
        // No header, an unreadable entry, or no header configured: the TCP peer.
        assert_eq!(req(&[]).client_ip(h, 1), ip("127.0.0.1"));
        assert_eq!(req(&[b"unknown"]).client_ip(h, 1), ip("127.0.0.1"));
        assert_eq!(spoofed.client_ip(None, 1), ip("127.0.0.1"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            bearer(&h).map(str::to_owned)
        };
        for v in [
            "Bearer pw",
            "bearer pw",
            "BEARER pw",
            "Bearer   pw ",
            " Bearer pw",
        ] {
            assert_eq!(with(v).as_deref(), Some("pw"), "{v:?}");
        }
        for v in ["Basic pw", "Bearer", "Bearer ", "Bearerpw"] {
            assert_eq!(with(v), None, "{v:?}");
        }
    }
}
