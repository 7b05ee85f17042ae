//! The HTTP surface: `/access`, `/push`, `/ws` as warp filters, and [`ApiError`], the one place
//! where every failure becomes the JSON envelope with its status.
//!
//! Routes are matched on path only; each handler checks its own method, so a wrong method is a
//! 405 and an unknown path a 404, both with the envelope, and no warp rejection ever escapes.

use std::convert::Infallible;
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
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::auth::{Auth, KeyError};
use crate::config::{Config, MAX_UID_BYTES};
use crate::frame::{push_frame, Envelope, PushBody};
use crate::hub::Hub;
use crate::socket::{self, SocketContext};

/// Reply text of a successful push, as in the seed.
pub const PUSH_OK: &str = "推送成功";
/// Reply text when the uid has no live socket, as in the seed.
pub const USER_OFFLINE: &str = "此用户不在线";

/// Everything the handlers share.
pub struct AppState {
    auth: Auth,
    hub: Arc<Hub>,
    max_body_bytes: usize,
    ws_config: WebSocketConfig,
    sockets: SocketContext,
    tracker: TaskTracker,
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
    /// The uid has no live socket (the seed's wording).
    #[error("{USER_OFFLINE}")]
    Offline,
    /// `/ws` without WebSocket upgrade headers.
    #[error("this endpoint takes a WebSocket upgrade (GET with Upgrade: websocket, Sec-WebSocket-Version: 13)")]
    UpgradeRequired,
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// Method not allowed on this path.
    #[error("method not allowed, use {0}")]
    MethodNotAllowed(&'static str),
    /// No such path.
    #[error("not found: the endpoints are /access, /ws and /push")]
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
            | ApiError::BodyRead => StatusCode::BAD_REQUEST,
            ApiError::BadPassword | ApiError::AccessKey(_) => StatusCode::UNAUTHORIZED,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Offline | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
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
}

impl Params {
    fn parse(query: &str) -> Result<Params, ApiError> {
        serde_urlencoded::from_str(query).map_err(|e| ApiError::BadQuery(e.to_string()))
    }

    fn uid(&self) -> Result<&str, ApiError> {
        match self.uid.as_deref() {
            None | Some("") => Err(ApiError::MissingUid),
            Some(uid) if uid.len() > MAX_UID_BYTES => Err(ApiError::UidTooLong),
            Some(uid) => Ok(uid),
        }
    }
}

/// Backends authenticate with `?password=` (the seed's way) or `Authorization: Bearer`, which
/// keeps the password out of URLs and proxy logs.
fn check_password(state: &AppState, params: &Params, headers: &HeaderMap) -> Result<(), ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match params.password.as_deref().or(bearer) {
        Some(given) if state.auth.check_password(given) => Ok(()),
        _ => Err(ApiError::BadPassword),
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
        .and(state);

    let access = warp::path!("access").and(common.clone()).map(
        |method, query: String, headers, state: Arc<AppState>| {
            respond(access(&state, &method, &query, &headers))
        },
    );
    let push = warp::path!("push")
        .and(common.clone())
        .and(warp::body::stream())
        .then(
            |method, query: String, headers, state: Arc<AppState>, body| async move {
                respond(push(&state, &method, &query, &headers, body).await)
            },
        );
    let ws = warp::path!("ws")
        .and(common)
        .and(warp::ext::optional::<OnUpgrade>())
        .map(
            |method, query: String, headers, state: Arc<AppState>, on_upgrade| {
                respond(upgrade(&state, &method, &query, &headers, on_upgrade))
            },
        );
    let not_found = warp::any().map(|| ApiError::NotFound.into_response());

    access
        .or(push)
        .unify()
        .or(ws)
        .unify()
        .or(not_found)
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
fn access(
    state: &AppState,
    method: &Method,
    query: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if method != Method::GET && method != Method::POST {
        return Err(ApiError::MethodNotAllowed("GET, POST"));
    }
    let params = Params::parse(query)?;
    check_password(state, &params, headers)?;
    let uid = params.uid()?;
    let mut res = envelope(StatusCode::OK, "_access", 1, state.auth.issue(uid));
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// `POST /push?uid&password` with `{topic, contents}`: one frame to every socket of `uid`.
async fn push<S, B>(
    state: &AppState,
    method: &Method,
    query: &str,
    headers: &HeaderMap,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if method != Method::POST {
        return Err(ApiError::MethodNotAllowed("POST"));
    }
    let params = Params::parse(query)?;
    check_password(state, &params, headers)?;
    let uid = params.uid()?;
    let body = read_body(body, headers, state.max_body_bytes).await?;
    let push: PushBody<'_> =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadBody(e.to_string()))?;
    let frame = Arc::new(push_frame(&push.topic, 1, push.contents));
    match state.hub.deliver(uid, &frame) {
        0 => Err(ApiError::Offline),
        n => Ok(envelope(StatusCode::OK, "success", n as u64, PUSH_OK)),
    }
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
    method: &Method,
    query: &str,
    headers: &HeaderMap,
    on_upgrade: Option<OnUpgrade>,
) -> Result<Response, ApiError> {
    if method != Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    let params = Params::parse(query)?;
    let uid = params.uid()?;
    state
        .auth
        .verify(uid, params.access_key.as_deref().unwrap_or(""))
        .map_err(ApiError::AccessKey)?;
    let accept = websocket_accept(headers).ok_or(ApiError::UpgradeRequired)?;
    let on_upgrade = on_upgrade.ok_or(ApiError::UpgradeRequired)?;
    if *state.sockets.shutdown.borrow() {
        return Err(ApiError::ShuttingDown);
    }

    let uid = uid.to_owned();
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
                socket::serve(ws, uid, ctx).await;
            }
            Err(e) => log::debug!("upgrade failed: {e}"),
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
