//! `GET /ws?uid&access_key[&proto=2&since=…]`: every check before answering 101, so a refused
//! page gets a status and the envelope, never an upgrade followed by a close. The socket joins
//! the hub (and, in a cluster, its node is registered for the socket's streams) before the 101
//! is written, then the upgraded connection is handed to the native protocol's task. The
//! checks a page passes to join are here too ([`admit`], [`check_room`]), shared with `/sse`.

use std::collections::HashMap;

use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::Method;
use warp::reply::Response;

use super::{ApiError, AppState, Client, Params, Req};
use crate::connection;
use crate::hub::Session;
use crate::limits::{AddressSlot, AddressSlots, Slot, SocketSlots};
use crate::metrics::{Credential, Transport};
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
    let admission = admit(state, req, None)?;
    let accept = websocket_accept(&req.headers).ok_or(ApiError::UpgradeRequired)?;
    let on_upgrade = on_upgrade.ok_or(ApiError::UpgradeRequired)?;
    let slot = check_room(
        state,
        req,
        &admission.subscription.uid,
        state.sockets.is_shutting_down(),
    )?;

    // Joined before the 101 is written.
    let (session, peer) = join(
        state,
        req,
        admission.subscription,
        admission.since.as_ref(),
        Transport::Native,
    )
    .await?;
    let ctx = state.sockets.clone();
    let run = native::upgraded(on_upgrade, session, ctx.clone());
    connection::spawn(&ctx, &state.tracker, slot, peer, run);
    Ok(connection::switching_protocols(accept))
}

/// Joins an admitted page to the hub ([`connection::join`]: missed messages, the offline inbox
/// of a fresh page that can ack, which an event stream cannot, its pools' snapshots), and who
/// its socket is for the metrics and callbacks. Shared by `/ws` and `/sse`.
pub(super) async fn join(
    state: &AppState,
    req: &Req,
    subscription: Subscription,
    since: Option<&HashMap<String, String>>,
    transport: Transport,
) -> Result<(Session, connection::Peer), ApiError> {
    let acks = transport == Transport::Native;
    let session = connection::join(&state.sockets, subscription, since, acks)
        .await
        .map_err(super::error::pool_error)?;
    let peer = connection::Peer {
        transport,
        uid: Some((
            session.membership.subscription().uid.clone(),
            session.membership.id(),
        )),
        client: state.client_ip(req),
    };
    Ok((session, peer))
}

/// A page allowed to join: what it follows and where it resumes from.
pub(super) struct Admission {
    /// Its uid, the topics its key grants, its frame format.
    pub subscription: Subscription,
    /// Stream name → last position seen, for a resuming page.
    pub since: Option<HashMap<String, String>>,
}

/// What `/ws` and `/sse` check alike, in this order: the page's `Origin`, `uid`, `access_key`,
/// `proto` and `since`. `last_event_id` (an SSE reconnect's `Last-Event-ID`) stands for `since`
/// when the page asked for `proto=2`.
pub(super) fn admit(
    state: &AppState,
    req: &Req,
    last_event_id: Option<&str>,
) -> Result<Admission, ApiError> {
    if !origin_allowed(state, &req.headers) {
        let origin = req
            .headers
            .get(header::ORIGIN)
            .map_or(&[][..], |o| o.as_bytes());
        let shown = String::from_utf8_lossy(&origin[..origin.len().min(100)]);
        if let Some(held_back) = state.refusal_log.allow() {
            log::info!(
                "socket refused for {}: origin {shown:?} is not in allowed_origins ({held_back} \
                 more refusals without login since the last such line, at most one a minute)",
                Client(state.client_ip(req))
            );
        }
        return Err(ApiError::OriginRefused);
    }
    let params = Params::parse(&req.query)?;
    let uid = params.uid()?;
    let topics = state
        .settings()
        .auth
        .verify(uid, params.access_key.as_deref().unwrap_or(""))
        .map_err(|e| {
            // Routine (an expired key before the page fetches a new one): debug only.
            log::debug!("socket refused for {}: {e}", Client(state.client_ip(req)));
            state.sockets.metrics.auth_failed(Credential::AccessKey);
            ApiError::AccessKey(e)
        })?;
    let proto = match params.proto.as_deref() {
        None | Some("1") => Proto::Seed,
        Some("2") => Proto::Resumable,
        Some(_) => return Err(ApiError::BadResume("proto must be 1 or 2")),
    };
    let last_event_id = last_event_id.filter(|id| proto == Proto::Resumable && !id.is_empty());
    let since: Option<HashMap<String, String>> = match last_event_id.or(params.since.as_deref()) {
        None | Some("") => None,
        Some(_) if proto == Proto::Seed => return Err(ApiError::BadResume("since needs proto=2")),
        Some(json) => Some(serde_json::from_str(json).map_err(|_| {
            ApiError::BadResume(
                "since must be a JSON object of stream name to \"generation:number\"",
            )
        })?),
    };
    Ok(Admission {
        subscription: Subscription {
            uid: uid.to_owned(),
            topics,
            proto,
        },
        since,
    })
}

/// Whether a browser page from this `Origin` may connect (`allowed_origins`); requests without
/// `Origin` (apps, backends) may.
pub(super) fn origin_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    match (
        &state.settings().allowed_origins,
        headers.get(header::ORIGIN),
    ) {
        (Some(allowed), Some(origin)) => allowed
            .iter()
            .any(|a| origin.as_bytes().eq_ignore_ascii_case(a.as_bytes())),
        _ => true,
    }
}

/// A socket's places under `max_sockets` and `max_sockets_per_address`, held for its whole
/// life (dropping them frees them, however the socket ends). The address's is boxed: one
/// pointer in every socket's task, where it would otherwise take four words even when none is
/// held (loopback peers).
pub(super) type Slots = (Slot, Option<Box<AddressSlot>>);

/// The last checks before joining: not shutting down (`stopping`), and room under
/// `max_sockets_per_address`, `max_sockets` and `max_sockets_per_uid`. Returns the socket's
/// places, to be held for its whole life.
pub(super) fn check_room(
    state: &AppState,
    req: &Req,
    uid: &str,
    stopping: bool,
) -> Result<Slots, ApiError> {
    if stopping {
        return Err(ApiError::ShuttingDown);
    }
    let address_slot = address_slot(state, req)?;
    let slot = SocketSlots::take(&state.socket_slots).ok_or_else(|| {
        if let Some(held_back) = state.full_log.allow() {
            log::warn!(
                "socket refused for {}: max_sockets ({}) are open (503; {held_back} more \
                     refused since the last such line, which comes at most every 10 s)",
                Client(state.client_ip(req)),
                state.socket_slots.max()
            );
        }
        ApiError::ServerFull
    })?;
    // Per uid the count is checked, then joined: concurrent upgrades of one uid may pass the
    // check together, so this limit can be overshot by a few (the total above cannot).
    let per_uid = state.settings().max_sockets_per_uid;
    if state.sockets.hub.registry().sockets_of(uid) >= per_uid {
        log::info!(
            "socket refused for {}: its uid has max_sockets_per_uid ({per_uid}) open (429)",
            Client(state.client_ip(req)),
        );
        return Err(ApiError::TooManySockets(per_uid));
    }
    Ok((slot, address_slot))
}

/// The client address's place under `max_sockets_per_address` (none for loopback peers),
/// after counting the new socket under `new_sockets_per_address_per_minute`.
pub(super) fn address_slot(
    state: &AppState,
    req: &Req,
) -> Result<Option<Box<AddressSlot>>, ApiError> {
    let client = state.client_ip(req);
    state.new_sockets.take(client).map_err(|wait| {
        if let Some(held_back) = state.refusal_log.allow() {
            log::info!(
                "socket refused for {}: new_sockets_per_address_per_minute reached (429, retry \
                 in {} s; {held_back} more refusals without login since the last such line, at \
                 most one a minute)",
                Client(client),
                wait.as_secs()
            );
        }
        ApiError::TooManyNewSockets(wait)
    })?;
    let taken = AddressSlots::take(&state.address_slots, client);
    taken.map(|slot| slot.map(Box::new)).map_err(|max| {
        if let Some(held_back) = state.refusal_log.allow() {
            log::info!(
                "socket refused for {}: max_sockets_per_address ({max}) are open from it \
                 (429; {held_back} more refusals without login since the last such line, at \
                 most one a minute)",
                Client(client)
            );
        }
        ApiError::TooManyAddressSockets(max)
    })
}

/// The `Sec-WebSocket-Accept` value if `headers` are a valid RFC 6455 upgrade request.
pub(super) fn websocket_accept(headers: &HeaderMap) -> Option<HeaderValue> {
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
