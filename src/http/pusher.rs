//! Pusher-compatible mode's HTTP surface (404 unless `pusher:` is configured):
//! - `GET /app/{key}?protocol=7…`: the socket. The upgrade checks happen before the `101`
//!   (origin, upgrade headers, shutting down, the hub reachable); the Pusher refusals (unknown
//!   key 4001, app over quota 4004, server full 4100, protocol 4007/4008) after it, as
//!   `pusher:error` and a close with that code, which is what pusher-js acts on.
//! - `/apps/{id}/…` (and `/users/{id}/terminate_connections`, where the PyPI SDK posts it): the
//!   HTTP API, signed as the SDKs sign it; a refusal has its real status.

use std::sync::Arc;

use bytes::Buf;
use futures_util::Stream;
use hyper::upgrade::OnUpgrade;
use warp::http::header::{self, HeaderValue};
use warp::http::Method;
use warp::reply::Response;

use super::body::read_body;
use super::upgrade::{address_slot, origin_allowed, websocket_accept};
use super::{ApiError, AppState, Client, Req};
use crate::connection;
use crate::limits::SocketSlots;
use crate::metrics::{Credential, Endpoint};
use crate::protocol::pusher::socket::{self, Refusal};
use crate::protocol::pusher::{api, auth, Pusher};
use crate::registry::Subscription;

fn pusher(state: &AppState) -> Result<&Arc<Pusher>, ApiError> {
    state.pusher.as_ref().ok_or(ApiError::NotFound)
}

/// `GET /app/{key}`.
pub(super) async fn socket(
    state: &AppState,
    req: &Req,
    key: &str,
    on_upgrade: Option<OnUpgrade>,
) -> Result<Response, ApiError> {
    let pusher = pusher(state)?.clone();
    if req.method != Method::GET {
        return Err(ApiError::MethodNotAllowed("GET"));
    }
    if !origin_allowed(state, &req.headers) {
        if let Some(held_back) = state.refusal_log.allow() {
            log::info!(
                "pusher socket refused for {}: origin not in allowed_origins ({held_back} more \
                 refusals without login since the last such line, at most one a minute)",
                Client(state.client_ip(req))
            );
        }
        return Err(ApiError::OriginRefused);
    }
    let accept = websocket_accept(&req.headers).ok_or(ApiError::UpgradeRequired)?;
    let on_upgrade = on_upgrade.ok_or(ApiError::UpgradeRequired)?;
    if state.sockets.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(&req.query).map_err(|e| ApiError::BadQuery(e.to_string()))?;
    let protocol = params
        .iter()
        .find(|(k, _)| k == "protocol")
        .map(|(_, v)| v.as_str());
    let admitted = async {
        let app = pusher.app_by_key(key).ok_or(Refusal::UNKNOWN_APP)?;
        match protocol.map(str::parse::<u32>) {
            None => return Err(Refusal::NO_PROTOCOL),
            Some(Ok(5..=7)) => {}
            Some(_) => return Err(Refusal::BAD_PROTOCOL),
        }
        let address_slot = address_slot(state, req).map_err(|e| match e {
            ApiError::TooManyNewSockets(_) => Refusal::NEW_SOCKETS_RATE,
            _ => Refusal::ADDRESS_FULL,
        })?;
        let slot = app.admit().ok_or(Refusal::APP_FULL)?;
        // Anonymous until it subscribes: a share of max_sockets, the rest kept for native pages.
        let server_slot = SocketSlots::take_share(&state.socket_slots, pusher.max_sockets_share)
            .ok_or(Refusal::SERVER_FULL)?;
        Ok((slot, (server_slot, address_slot)))
    }
    .await;
    let ctx = state.sockets.clone();
    match admitted {
        Ok((slot, server_slot)) => {
            // Joined before the 101, like /ws: a trigger right after the page's
            // connection_established can only miss it if it is not subscribed yet.
            let session = connection::join(&state.sockets, Subscription::pusher(), None, false)
                .await
                .map_err(super::error::pool_error)?;
            let peer = connection::Peer {
                transport: crate::metrics::Transport::Pusher,
                uid: None,
                client: state.client_ip(req),
            };
            let run = socket::upgraded(on_upgrade, session, slot, ctx.clone(), pusher);
            connection::spawn(&ctx, &state.tracker, server_slot, peer, run);
        }
        Err(refusal) => {
            if refusal == Refusal::UNKNOWN_APP {
                state.sockets.metrics.auth_failed(Credential::AccessKey);
            }
            let client = state.client_ip(req);
            // Counted like an HTTP refusal (the admin page's list and counts by reason).
            state.sockets.metrics.refused(
                refusal.code,
                refusal.reason,
                refusal.message,
                Endpoint::PusherSocket,
                client,
            );
            if refusal == Refusal::SERVER_FULL {
                if let Some(held_back) = state.refusal_log.allow() {
                    log::info!(
                        "pusher socket of {} refused with 4100: Pusher sockets hold their share \
                         of max_sockets (pusher.max_sockets_share; {held_back} more refusals \
                         without login since the last such line, at most one a minute)",
                        Client(client)
                    );
                }
            } else {
                log::debug!(
                    "pusher socket of {} refused with {}",
                    Client(client),
                    refusal.code
                );
            }
            // Upgraded only to be told why, as Pusher does: not a socket of the server's.
            state
                .tracker
                .spawn(socket::refused(on_upgrade, refusal, ctx));
        }
    }
    Ok(connection::switching_protocols(accept))
}

/// `/apps/{id}/…`: finds the app, checks the method and the signature, runs the operation.
pub(super) async fn api<S, B>(state: &AppState, req: &Req, body: S) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let pusher = pusher(state)?;
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let (app_id, rest) = match parts.as_slice() {
        ["apps", id, rest @ ..] if !id.is_empty() => (*id, rest),
        // The PyPI SDK (3.3.4) posts terminate_connections to /users/{id}/… without the
        // /apps/{id} prefix; its signed auth_key names the app.
        ["users", ..] => {
            let params: Vec<(String, String)> = serde_urlencoded::from_str(&req.query)
                .map_err(|e| ApiError::BadQuery(e.to_string()))?;
            let key = params.iter().find(|(k, _)| k == "auth_key").map(|(_, v)| v);
            let app = key.and_then(|k| pusher.app_by_key(k));
            (
                app.ok_or(ApiError::UnknownPusherApp)?.conf.id.as_str(),
                &parts[..],
            )
        }
        _ => return Err(ApiError::NotFound),
    };
    let decoded: Vec<String> = rest
        .iter()
        .map(|p| String::from_utf8_lossy(&crate::wire::percent_decode(p)).into_owned())
        .collect();
    let rest: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let allow = match rest.as_slice() {
        ["events"] | ["batch_events"] | ["users", _, "terminate_connections"] => "POST",
        ["channels"] | ["channels", _] | ["channels", _, "users"] => "GET",
        _ => return Err(ApiError::NotFound),
    };
    if req.method.as_str() != allow {
        return Err(ApiError::MethodNotAllowed(allow));
    }
    let app = pusher
        .app_by_id(app_id)
        .ok_or(ApiError::UnknownPusherApp)?
        .clone();
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(&req.query).map_err(|e| ApiError::BadQuery(e.to_string()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let conf = &app.conf;
    let refused = |e: auth::SignatureError| {
        if let Some(held_back) = state.refusal_log.allow() {
            log::info!(
                "pusher api request to {} refused for {}: {e} ({held_back} more refusals \
                 without login since the last such line, at most one a minute)",
                req.path,
                Client(state.client_ip(req))
            );
        }
        state.sockets.metrics.auth_failed(Credential::Password);
        ApiError::PusherSignature(e)
    };
    // The signature first: only a request signed with the app's secret gets its body read
    // (the public app key is on every page).
    auth::check_query(
        req.method.as_str(),
        &req.path,
        &params,
        &conf.key,
        conf.secret.expose(),
        now,
    )
    .map_err(refused)?;
    let body = read_body(body, &req.headers, &state.settings().body).await?;
    auth::check_body(&params, &body).map_err(refused)?;
    let result = match rest.as_slice() {
        ["events"] => api::events(pusher, &app, &body).await,
        ["batch_events"] => api::batch_events(pusher, &app, &body).await,
        ["users", user_id, "terminate_connections"] => api::terminate(pusher, &app, user_id).await,
        ["channels"] => api::channels(pusher, &app, &params).await,
        ["channels", name] => api::channel(pusher, &app, name).await,
        ["channels", name, "users"] => api::users(pusher, &app, name).await,
        _ => return Err(ApiError::NotFound),
    };
    let value = result.map_err(ApiError::PusherApi)?;
    let mut res = Response::new(value.to_string().into());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(res)
}
