//! `GET /ws?uid&access_key[&proto=2&since=…]`: every check before answering 101, so a refused
//! page gets a status and the envelope, never an upgrade followed by a close. The socket joins
//! the hub (and, in a cluster, its node is registered for the socket's streams) before the 101
//! is written, then the upgraded connection is handed to the native protocol's task.

use std::collections::HashMap;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{ApiError, AppState, Params, Req};
use crate::metrics::Credential;
use crate::protocol::native;
use crate::registry::Subscription;
use crate::wire::Proto;

/// Checks, joins the hub, answers 101 and spawns the socket's task.
pub(super) async fn upgrade(
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
        .map_err(|e| {
            state.metrics.auth_failed(Credential::AccessKey);
            ApiError::AccessKey(e)
        })?;
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
    let registry = state.hub.registry();
    if registry.socket_count() >= state.max_sockets {
        return Err(ApiError::ServerFull);
    }
    if registry.sockets_of(uid) >= state.max_sockets_per_uid {
        return Err(ApiError::TooManySockets(state.max_sockets_per_uid));
    }

    let subscription = Subscription {
        uid: uid.to_owned(),
        topics,
        proto,
    };
    // Joined before the 101 is written: once the page sees its socket open, a push for its uid
    // finds it (frames queued meanwhile wait in its outbox), and the resume replay is taken now.
    let session = state.hub.connect(subscription, resume.as_ref()).await?;
    state.metrics.socket_connected();
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
                native::serve(ws, session, ctx).await;
            }
            // The connection went away before the upgrade completed; dropping the session
            // leaves the hub.
            Err(e) => {
                log::debug!("upgrade failed: {e}");
                ctx.metrics.socket_closed(None);
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
