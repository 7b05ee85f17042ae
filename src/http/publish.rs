//! The endpoints that publish: `/push` (to uids), `/publish` (to a topic), `/broadcast` (to
//! every socket), with body reading and the `Idempotency-Key` header.

use bytes::{Buf, Bytes};
use futures_util::Stream;
use warp::http::header::{HeaderMap, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;

use std::time::Duration;

use super::body::read_body;
use super::error::envelope;
use super::error::ID_HEADER;
use super::{authorized, check_uid, ApiError, AppState, Params, Req, STORED_HEADER};
use crate::auth::valid_topic;
use crate::metrics::{self, PublishKind};
use crate::services::Push;
use crate::wire::{PushBody, StreamKey};

/// Reply text of a successful push, as in the seed.
pub const PUSH_OK: &str = "推送成功";

/// Request header: a backend's id for this publish. A retry with the same key within five
/// minutes (after a timeout, say) publishes nothing and gets the first reply again.
const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Reply header on such a repeat.
const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Method, password, body and idempotency-key checks shared by the endpoints that publish.
async fn authorized_body<S, B>(
    state: &AppState,
    req: &Req,
    body: S,
) -> Result<(Params, Option<String>, Bytes), ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let params = authorized(state, req, "POST")?;
    let idem = idempotency_key(&req.headers)?;
    let body = read_body(body, &req.headers, &state.settings().body).await?;
    Ok((params, idem, body))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > 128 || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadIdempotencyKey);
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

fn parse_body(body: &[u8]) -> Result<PushBody<'_>, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadBody(e.to_string()))
}

/// The reply to a publish: the seed's, or with a receipt `{"id", "sockets", "expect_acks"}`
/// and the id in `X-Push-Id`.
fn success(sockets: usize, repeated: bool, receipt: Option<&str>) -> Response {
    let mut res = match receipt {
        None => envelope(StatusCode::OK, "success", sockets as u64, PUSH_OK),
        Some(id) => {
            let contents = serde_json::json!({
                "id": id, "sockets": sockets, "expect_acks": sockets,
            });
            let mut res = envelope(StatusCode::OK, "success", sockets as u64, contents);
            if let Ok(id) = HeaderValue::from_str(id) {
                res.headers_mut().insert(ID_HEADER, id);
            }
            res
        }
    };
    if repeated {
        res.headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    res
}

/// `POST /push?uid&password` with `{topic, contents[, uids]}`: one frame to every socket of
/// each uid (the query's `uid` and/or the body's `uids`, each pushed once), on every node.
pub(super) async fn push<S, B>(state: &AppState, req: &Req, body: S) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let accepted = metrics::now();
    let (params, idem, body) = authorized_body(state, req, body).await?;
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
    let settings = state.settings();
    let max_uids = settings.max_uids_per_push;
    if uids.len() > max_uids {
        return Err(ApiError::TooManyUids(max_uids));
    }
    let inbox_ttl = match push.inbox {
        None => None,
        Some(secs) if (1..=settings.inbox_max_ttl_secs).contains(&secs) => {
            Some(Duration::from_secs(secs))
        }
        Some(_) => return Err(ApiError::BadInbox(settings.inbox_max_ttl_secs)),
    };
    let parsed = metrics::now();
    let pushed = state
        .sockets
        .push(Push {
            uids: &uids,
            body: &push,
            inbox: inbox_ttl,
            idempotency_key: idem.as_deref(),
        })
        .await?;
    // A repeat (same Idempotency-Key) sent nothing.
    state.sockets.metrics.published(
        PublishKind::Push,
        pushed.results.iter().filter(|p| !p.repeated).count(),
        accepted,
        parsed,
        metrics::now(),
    );
    let sockets = pushed.sockets;
    let stored = pushed
        .results
        .iter()
        .filter(|p| p.sockets == 0 && p.retained)
        .count();
    if let (Some((kept, full)), Some(id)) = (&pushed.inbox, &pushed.id) {
        // Kept for the uids that had no socket: always answered 200, saying who it was kept
        // for.
        let contents = serde_json::json!({
            "id": id, "sockets": sockets, "expect_acks": sockets,
            "inbox": {"kept": kept, "full": full},
        });
        let mut res = envelope(StatusCode::OK, "success", sockets as u64, contents);
        if let Ok(id) = HeaderValue::from_str(id) {
            res.headers_mut().insert(ID_HEADER, id);
        }
        return Ok(res);
    }
    if sockets == 0 {
        return Err(ApiError::Offline {
            stored,
            id: pushed.id,
        });
    }
    let mut res = success(sockets, pushed.repeated, pushed.id.as_deref());
    if stored > 0 {
        res.headers_mut()
            .insert(STORED_HEADER, HeaderValue::from(stored));
    }
    Ok(res)
}

/// Where `/publish` and `/broadcast` send.
#[derive(Clone, Copy)]
pub(super) enum Target {
    Topic,
    Everyone,
}

/// `POST /publish?password` with `{topic, contents}`: every socket whose key grants `topic`.
/// `POST /broadcast?password` with `{topic, contents}`: every socket.
/// Zero receivers is not an error here: the message is still kept for resuming sockets.
pub(super) async fn publish<S, B>(
    state: &AppState,
    req: &Req,
    body: S,
    target: Target,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let accepted = metrics::now();
    let (_, idem, body) = authorized_body(state, req, body).await?;
    let msg = parse_body(&body)?;
    let (key, kind) = match target {
        Target::Topic if !valid_topic(&msg.topic) => return Err(ApiError::InvalidTopic),
        Target::Topic => (
            StreamKey::Topic(msg.topic.as_str().into()),
            PublishKind::Publish,
        ),
        Target::Everyone => (StreamKey::Broadcast, PublishKind::Broadcast),
    };
    if msg.inbox.is_some() {
        return Err(ApiError::InboxNotHere);
    }
    let parsed = metrics::now();
    let (published, receipt) = state
        .sockets
        .publish(&key, &msg, kind.label(), idem.as_deref())
        .await?;
    let sent = usize::from(!published.repeated);
    state
        .sockets
        .metrics
        .published(kind, sent, accepted, parsed, metrics::now());
    Ok(success(
        published.sockets,
        published.repeated,
        receipt.as_deref(),
    ))
}

/// `GET /report/push/<id>?password[&uids=1]`: what became of a message sent with a receipt.
pub(super) async fn report(state: &AppState, req: &Req, id: &str) -> Result<Response, ApiError> {
    let params = authorized(state, req, "GET")?;
    if !crate::wire::valid_message_id(id) {
        return Err(ApiError::UnknownReport);
    }
    let with_uids = matches!(params.uids.as_deref(), Some("1" | "true"));
    let report = state
        .sockets
        .receipts
        .report(id, with_uids)
        .await?
        .ok_or(ApiError::UnknownReport)?;
    Ok(envelope(StatusCode::OK, "report", report.acks, report))
}
