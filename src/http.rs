//! The HTTP surface: `/access`, `/ws`, `/push`, `/publish`, `/broadcast`, `/online`, `/stats` as
//! warp filters, and [`ApiError`], the one place where every failure becomes the JSON envelope
//! with its status.
//!
//! Routes are matched on path only; each handler checks its own method, so a wrong method is a
//! 405 and an unknown path a 404, both with the envelope, and no warp rejection ever escapes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;
use warp::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::auth::{valid_topic, Auth, KeyError};
use crate::config::{Config, MAX_UID_BYTES};
use crate::frame::{Envelope, PushBody};
use crate::hub::{Hub, Proto, StreamKey, Subscription};
use crate::limits::{FailureLimiter, PeerAddr};
use crate::socket::{self, SocketContext};

/// Reply text of a successful push, as in the seed.
pub const PUSH_OK: &str = "推送成功";
/// Reply text when the uid has no live socket, as in the seed.
pub const USER_OFFLINE: &str = "此用户不在线";

/// Response header on `/push` replies: how many of the uids without a live socket had the
/// message kept in their history, for a socket that resumes within `history_ttl_secs`.
pub const STORED_HEADER: &str = "x-push-stored";

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
}

impl AppState {
    /// Forgets rate-limit windows that are over; called periodically.
    pub fn sweep(&self) {
        self.limiter.sweep();
    }

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
            ws_config: socket::ws_config(config.max_client_frame_bytes),
            sockets,
            tracker,
        }
    }
}

/// Every way a request can fail, with its status and the reason shown in `contents`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Query string could not be decoded (e.g. a parameter given twice).
    #[error("bad query string: {0}")]
    BadQuery(String),
    /// `uid` absent or empty.
    #[error("missing uid")]
    MissingUid,
    /// `uid` over [`MAX_UID_BYTES`].
    #[error("uid longer than {MAX_UID_BYTES} bytes")]
    UidTooLong,
    /// No password, or the wrong one.
    #[error("wrong or missing password")]
    BadPassword,
    /// The socket's access key did not verify.
    #[error("{0}")]
    AccessKey(KeyError),
    /// The `/push` body is over `max_body_bytes`.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The `/push` body is not `{"topic": string, "contents": any}`.
    #[error("body must be JSON {{\"topic\": string, \"contents\": any}}: {0}")]
    BadBody(String),
    /// The body could not be read off the connection.
    #[error("could not read request body")]
    BodyRead,
    /// None of the uids has a live socket (the seed's wording). `stored` counts the uids whose
    /// history kept the message for a resuming socket.
    #[error("{USER_OFFLINE}")]
    Offline {
        /// Uids whose stream kept the message.
        stored: usize,
    },
    /// More uids in one push than `max_uids_per_push`.
    #[error("more than {0} uids in one push")]
    TooManyUids(usize),
    /// A topic name outside the allowed form.
    #[error("invalid topic name (1 to 100 of A-Z a-z 0-9 _ - . : @ /)")]
    InvalidTopic,
    /// More topics than `max_topics_per_key`.
    #[error("more than {0} topics in one access key")]
    TooManyTopics(usize),
    /// `proto` other than 2, or `since` not a JSON object of stream → position.
    #[error("bad resume parameters: {0}")]
    BadResume(&'static str),
    /// `/ws` without WebSocket upgrade headers.
    #[error("this endpoint takes a WebSocket upgrade (GET with Upgrade: websocket, Sec-WebSocket-Version: 13)")]
    UpgradeRequired,
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// `max_sockets` reached.
    #[error("server is at its socket limit, try again later")]
    ServerFull,
    /// `max_sockets_per_uid` reached for this uid.
    #[error("this uid already has {0} sockets open")]
    TooManySockets(usize),
    /// This address failed the password too often; retry after the duration.
    #[error("too many failed password attempts from this address, retry in {} s", .0.as_secs())]
    TooManyFailures(std::time::Duration),
    /// The page's `Origin` is not in `allowed_origins`.
    #[error("origin not allowed")]
    OriginRefused,
    /// Method not allowed on this path.
    #[error("method not allowed, use {0}")]
    MethodNotAllowed(&'static str),
    /// No such path.
    #[error(
        "not found: the endpoints are /access, /ws, /push, /publish, /broadcast, /online, /stats"
    )]
    NotFound,
}

impl ApiError {
    /// The HTTP status of this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadQuery(_)
            | ApiError::MissingUid
            | ApiError::UidTooLong
            | ApiError::BadBody(_)
            | ApiError::BodyRead
            | ApiError::TooManyUids(_)
            | ApiError::InvalidTopic
            | ApiError::TooManyTopics(_)
            | ApiError::BadResume(_) => StatusCode::BAD_REQUEST,
            ApiError::BadPassword | ApiError::AccessKey(_) => StatusCode::UNAUTHORIZED,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Offline { .. } | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::ShuttingDown | ApiError::ServerFull => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManySockets(_) | ApiError::TooManyFailures(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::OriginRefused => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn into_response(self) -> Response {
        let mut res = envelope(self.status(), "error", 0, self.to_string());
        let headers = res.headers_mut();
        match self {
            ApiError::MethodNotAllowed(allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::UpgradeRequired => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
            }
            ApiError::BadPassword => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::TooManyFailures(wait) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs()));
            }
            ApiError::Offline { stored } if stored > 0 => {
                headers.insert(STORED_HEADER, HeaderValue::from(stored));
            }
            _ => {}
        }
        res
    }
}

fn envelope<T: serde::Serialize>(
    status: StatusCode,
    topic: &str,
    number: u64,
    contents: T,
) -> Response {
    let body = serde_json::to_vec(&Envelope {
        topic,
        number,
        contents,
    })
    .expect("envelope serializes");
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
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
            if let Some(ip) = ip {
                state.limiter.failed(ip);
            }
            Err(ApiError::BadPassword)
        }
    }
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

/// All routes, with a 404 envelope for anything else. Never rejects.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let state = warp::any().map(move || state.clone());
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let common = warp::method()
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<PeerAddr>())
        .map(|method, query, headers, peer: Option<PeerAddr>| Req {
            method,
            query,
            headers,
            peer: peer.map(|p| p.0),
        })
        .and(state);

    let access_route = warp::path!("access")
        .and(common.clone())
        .map(|req: Req, state: Arc<AppState>| respond(access(&state, &req)));
    let push_route = warp::path!("push")
        .and(common.clone())
        .and(warp::body::stream())
        .then(|req: Req, state: Arc<AppState>, body| async move {
            respond(push(&state, &req, body).await)
        });
    let publish_route = warp::path!("publish")
        .and(common.clone())
        .and(warp::body::stream())
        .then(|req: Req, state: Arc<AppState>, body| async move {
            respond(publish(&state, &req, body, Target::Topic).await)
        });
    let broadcast_route = warp::path!("broadcast")
        .and(common.clone())
        .and(warp::body::stream())
        .then(|req: Req, state: Arc<AppState>, body| async move {
            respond(publish(&state, &req, body, Target::Everyone).await)
        });
    let online_route = warp::path!("online")
        .and(common.clone())
        .map(|req: Req, state: Arc<AppState>| respond(online(&state, &req)));
    let stats_route = warp::path!("stats")
        .and(common.clone())
        .map(|req: Req, state: Arc<AppState>| respond(stats(&state, &req)));
    let ws_route = warp::path!("ws")
        .and(common)
        .and(warp::ext::optional::<OnUpgrade>())
        .map(|req: Req, state: Arc<AppState>, on_upgrade| {
            respond(upgrade(&state, &req, on_upgrade))
        });
    let not_found_route = warp::any().map(|| ApiError::NotFound.into_response());

    access_route
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
        .or(not_found_route)
        .unify()
        // Path and status only: query strings carry passwords and access keys.
        .with(warp::log::custom(|info| {
            log::debug!(
                target: "push_serve::http",
                "{} {} {} {:?}",
                info.method(),
                info.path(),
                info.status().as_u16(),
                info.elapsed()
            )
        }))
        .map(warp::Reply::into_response)
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// `GET /access?uid&password`: a fresh access key for `uid`.
fn access(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET && req.method != Method::POST {
        return Err(ApiError::MethodNotAllowed("GET, POST"));
    }
    let params = Params::parse(&req.query)?;
    check_password(state, &params, req)?;
    let uid = params.uid()?;
    let mut topics: Vec<String> = Vec::new();
    for topic in params
        .topics
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
    {
        if !valid_topic(topic) {
            return Err(ApiError::InvalidTopic);
        }
        if !topics.iter().any(|t| t == topic) {
            topics.push(topic.to_owned());
        }
    }
    if topics.len() > state.max_topics_per_key {
        return Err(ApiError::TooManyTopics(state.max_topics_per_key));
    }
    let key = state.auth.issue_with_topics(uid, &topics);
    let mut res = envelope(StatusCode::OK, "_access", 1, key);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Method, password and body checks shared by the endpoints that publish.
async fn authorized_body<S, B>(
    state: &AppState,
    req: &Req,
    body: S,
) -> Result<(Params, Bytes), ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if req.method != Method::POST {
        return Err(ApiError::MethodNotAllowed("POST"));
    }
    let params = Params::parse(&req.query)?;
    check_password(state, &params, req)?;
    let body = read_body(body, &req.headers, state.max_body_bytes).await?;
    Ok((params, body))
}

fn parse_body(body: &[u8]) -> Result<PushBody<'_>, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadBody(e.to_string()))
}

/// `POST /push?uid&password` with `{topic, contents[, uids]}`: one frame to every socket of
/// each uid (the query's `uid` and/or the body's `uids`, each pushed once).
async fn push<S, B>(state: &AppState, req: &Req, body: S) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let (params, body) = authorized_body(state, req, body).await?;
    let push = parse_body(&body)?;
    let mut uids: Vec<&str> = Vec::new();
    if let Some(uid) = params.uid.as_deref() {
        uids.push(check_uid(uid)?);
    }
    for uid in push.uids.iter().flatten() {
        uids.push(check_uid(uid)?);
    }
    if uids.is_empty() {
        return Err(ApiError::MissingUid);
    }
    uids.sort_unstable();
    uids.dedup();
    if uids.len() > state.max_uids_per_push {
        return Err(ApiError::TooManyUids(state.max_uids_per_push));
    }
    let (mut sockets, mut stored) = (0, 0);
    for uid in uids {
        let delivery = state
            .hub
            .publish(&StreamKey::User(uid.into()), &push.topic, push.contents);
        sockets += delivery.sockets;
        if delivery.sockets == 0 && delivery.retained {
            stored += 1;
        }
    }
    if sockets == 0 {
        return Err(ApiError::Offline { stored });
    }
    let mut res = envelope(StatusCode::OK, "success", sockets as u64, PUSH_OK);
    if stored > 0 {
        res.headers_mut()
            .insert(STORED_HEADER, HeaderValue::from(stored));
    }
    Ok(res)
}

/// Where `/publish` and `/broadcast` send.
#[derive(Clone, Copy)]
enum Target {
    Topic,
    Everyone,
}

/// `POST /publish?password` with `{topic, contents}`: every socket whose key grants `topic`.
/// `POST /broadcast?password` with `{topic, contents}`: every socket.
/// Zero receivers is not an error here: the message is still kept for resuming sockets.
async fn publish<S, B>(
    state: &AppState,
    req: &Req,
    body: S,
    target: Target,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let (_, body) = authorized_body(state, req, body).await?;
    let msg = parse_body(&body)?;
    let key = match target {
        Target::Topic if !valid_topic(&msg.topic) => return Err(ApiError::InvalidTopic),
        Target::Topic => StreamKey::Topic(msg.topic.as_str().into()),
        Target::Everyone => StreamKey::Broadcast,
    };
    let delivery = state.hub.publish(&key, &msg.topic, msg.contents);
    Ok(envelope(
        StatusCode::OK,
        "success",
        delivery.sockets as u64,
        PUSH_OK,
    ))
}

/// `GET /online?uid&password`: whether `uid` has sockets open, and how many.
fn online(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    let params = Params::parse(&req.query)?;
    check_password(state, &params, req)?;
    let uid = params.uid()?;
    let n = state.hub.sockets_of(uid);
    let contents = serde_json::json!({ "uid": uid, "online": n > 0, "sockets": n });
    Ok(envelope(StatusCode::OK, "online", n as u64, contents))
}

/// `GET /stats?password`: totals.
fn stats(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    let params = Params::parse(&req.query)?;
    check_password(state, &params, req)?;
    let sockets = state.hub.socket_count();
    let (uids, topics, history_bytes) = state.hub.totals();
    // Tasks alive in the runtime: one per socket plus a handful; a leak check for soak runs.
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let contents = serde_json::json!({
        "sockets": sockets, "uids": uids, "topics": topics, "history_bytes": history_bytes,
        "tasks": tasks,
    });
    Ok(envelope(StatusCode::OK, "stats", sockets as u64, contents))
}

/// Collects the body, refusing (413) as soon as it is known to exceed `limit`, so an oversized
/// upload costs at most `limit` bytes of memory.
async fn read_body<S, B>(body: S, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| ApiError::BodyRead)?;
        if buf.len() + chunk.remaining() > limit {
            return Err(ApiError::BodyTooLarge(limit));
        }
        buf.put(chunk);
    }
    Ok(buf.freeze())
}

/// `GET /ws?uid&access_key`: everything is checked before answering 101, so a refused page gets
/// a status and the envelope, never an upgrade followed by a close.
fn upgrade(
    state: &AppState,
    req: &Req,
    on_upgrade: Option<OnUpgrade>,
) -> Result<Response, ApiError> {
    if req.method != Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    if let (Some(allowed), Some(origin)) = (&state.allowed_origins, req.headers.get(header::ORIGIN))
    {
        if !allowed
            .iter()
            .any(|a| origin.as_bytes().eq_ignore_ascii_case(a.as_bytes()))
        {
            return Err(ApiError::OriginRefused);
        }
    }
    let params = Params::parse(&req.query)?;
    let uid = params.uid()?;
    let topics = state
        .auth
        .verify(uid, params.access_key.as_deref().unwrap_or(""))
        .map_err(ApiError::AccessKey)?;
    let proto = match params.proto.as_deref() {
        None | Some("1") => Proto::Seed,
        Some("2") => Proto::Resumable,
        Some(_) => return Err(ApiError::BadResume("proto must be 1 or 2")),
    };
    let resume: Option<HashMap<String, String>> = match params.since.as_deref() {
        None | Some("") => None,
        Some(_) if proto == Proto::Seed => return Err(ApiError::BadResume("since needs proto=2")),
        Some(json) => Some(serde_json::from_str(json).map_err(|_| {
            ApiError::BadResume(
                "since must be a JSON object of stream name to \"generation:number\"",
            )
        })?),
    };
    let accept = websocket_accept(&req.headers).ok_or(ApiError::UpgradeRequired)?;
    let on_upgrade = on_upgrade.ok_or(ApiError::UpgradeRequired)?;
    if *state.sockets.shutdown.borrow() {
        return Err(ApiError::ShuttingDown);
    }
    // Soft limits: checked before the upgrade, so concurrent upgrades may overshoot slightly.
    if state.hub.socket_count() >= state.max_sockets {
        return Err(ApiError::ServerFull);
    }
    if state.hub.sockets_of(uid) >= state.max_sockets_per_uid {
        return Err(ApiError::TooManySockets(state.max_sockets_per_uid));
    }

    let subscription = Subscription {
        uid: uid.to_owned(),
        topics,
        proto,
    };
    // Joined before the 101 is written: once the page sees its socket open, a push for its uid
    // finds it (frames queued meanwhile wait in its outbox), and the resume replay is taken now.
    let registration = state.hub.subscribe(&subscription, resume.as_ref());
    drop(resume);
    let ctx = state.sockets.clone();
    let config = state.ws_config;
    state.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                socket::serve_registered(ws, subscription, registration, ctx).await;
            }
            Err(e) => {
                // The connection went away before the upgrade completed.
                ctx.hub.unsubscribe(&subscription, &registration);
                log::debug!("upgrade failed: {e}");
            }
        }
    });

    let mut res = Response::new(Default::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(res)
}

/// The `Sec-WebSocket-Accept` value if `headers` are a valid RFC 6455 upgrade request.
fn websocket_accept(headers: &HeaderMap) -> Option<HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return None;
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION)? != "13" {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok()
}
