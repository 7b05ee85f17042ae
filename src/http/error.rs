//! [`ApiError`]: every way a request can fail, and the one place where a failure becomes the
//! JSON envelope with its status and headers.

use warp::http::header::{self, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;

use crate::auth::KeyError;
use crate::config::MAX_UID_BYTES;
use crate::wire::Envelope;

/// Reply text when the uid has no live socket, as in the seed.
pub const USER_OFFLINE: &str = "此用户不在线";

/// Response header on `/push` replies: how many of the uids without a live socket had the
/// message kept in their history, for a socket that resumes within `history_ttl_secs`.
pub const STORED_HEADER: &str = "x-push-stored";

/// Response header on a publish that asked for a receipt: the message id, whose report is
/// `/report/push/<id>` (also on `/push`'s 404, whose body stays the seed's).
pub const ID_HEADER: &str = "x-push-id";

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
    /// The body did not arrive within `body_timeout_secs`, or came slower than
    /// `body_min_bytes_per_sec`.
    #[error("request body too slow: it must arrive within {0} s, at {1} bytes per second or more")]
    BodyTimeout(u64, usize),
    /// None of the uids has a live socket (the seed's wording). `stored` counts the uids whose
    /// history kept the message for a resuming socket.
    #[error("{USER_OFFLINE}")]
    Offline {
        /// Uids whose stream kept the message.
        stored: usize,
        /// The message id, when the backend asked for a receipt.
        id: Option<String>,
    },
    /// No report for this message id: expired (`receipt_ttl_secs`) or never issued.
    #[error("no report for this message id: expired or never issued")]
    UnknownReport,
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
    /// A `/rooms` body that is not `{"join": [topics], "leave": [topics]}` with at least one.
    #[error("body must be JSON {{\"join\": [topics], \"leave\": [topics]}} naming at least one valid topic, at most {0} in each")]
    BadRooms(usize),
    /// An `Idempotency-Key` header that is empty, too long or not printable ASCII.
    #[error("Idempotency-Key must be 1 to 128 printable ASCII characters")]
    BadIdempotencyKey,
    /// A `/push` whose `inbox` is not 1 to `inbox_max_ttl_secs` seconds.
    #[error("inbox must be whole seconds from 1 to {0} (inbox_max_ttl_secs)")]
    BadInbox(u64),
    /// `inbox` on `/publish` or `/broadcast`: only a uid has an inbox.
    #[error("inbox is for /push only: a message is kept for uids, not topics")]
    InboxNotHere,
    /// No data pool of that name.
    #[error("no such pool")]
    NoPool,
    /// `POST` to a pool whose document is not an array.
    #[error("this pool's document is not an array: POST appends to arrays only (PUT replaces it)")]
    PoolNotArray,
    /// A pool document over `pool_max_bytes`.
    #[error("the pool's document would be larger than pool_max_bytes ({0} bytes)")]
    PoolTooLarge(usize),
    /// `pool_max` pools exist already.
    #[error("pool_max ({0}) pools exist already: delete one first")]
    PoolsFull(usize),
    /// `/ws` without WebSocket upgrade headers.
    #[error("this endpoint takes a WebSocket upgrade (GET with Upgrade: websocket, Sec-WebSocket-Version: 13)")]
    UpgradeRequired,
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// `max_sockets` reached.
    #[error("server is at its socket limit, try again later")]
    ServerFull,
    /// The message store (Redis) cannot be reached: nothing was published; retry.
    #[error("message store unavailable, nothing was sent: retry shortly")]
    Unavailable,
    /// The message store did not answer in time: the message may have been published.
    #[error(
        "message store did not answer in time: it may have been done (a push retried with the \
         same Idempotency-Key is sent once); retry shortly"
    )]
    Uncertain,
    /// `max_sockets_per_uid` reached for this uid.
    #[error("this uid already has {0} sockets open")]
    TooManySockets(usize),
    /// The client's address has `max_sockets_per_address` sockets open.
    #[error("this address has {0} sockets open, the most allowed (max_sockets_per_address)")]
    TooManyAddressSockets(usize),
    /// The client's address opened `new_sockets_per_address_per_minute` sockets within the
    /// last minute; retry after the duration.
    #[error(
        "this address opens sockets faster than allowed (new_sockets_per_address_per_minute), \
         retry in {} s",
        .0.as_secs()
    )]
    TooManyNewSockets(std::time::Duration),
    /// This address failed the password too often; retry after the duration.
    #[error("too many failed password attempts from this address, retry in {} s", .0.as_secs())]
    TooManyFailures(std::time::Duration),
    /// The page's `Origin` is not in `allowed_origins`.
    #[error("origin not allowed")]
    OriginRefused,
    /// Method not allowed on this path.
    #[error("method not allowed, use {0}")]
    MethodNotAllowed(&'static str),
    /// Pusher mode: no app has the path's id.
    #[error("no app with this id")]
    UnknownPusherApp,
    /// Pusher mode: the HTTP API request's signature did not verify.
    #[error("{0}")]
    PusherSignature(crate::protocol::pusher::auth::SignatureError),
    /// Pusher mode: the HTTP API refused the request (its status is inside).
    #[error("{0}")]
    PusherApi(crate::protocol::pusher::api::ApiFailure),
    /// No such path.
    #[error(
        "not found: the endpoints are {} (/app/… and /apps/… in Pusher mode)",
        super::routes::listing()
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
            | ApiError::BadResume(_)
            | ApiError::BadRooms(_)
            | ApiError::BadIdempotencyKey
            | ApiError::BadInbox(_)
            | ApiError::InboxNotHere => StatusCode::BAD_REQUEST,
            ApiError::BadPassword | ApiError::AccessKey(_) => StatusCode::UNAUTHORIZED,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(..) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PoolNotArray => StatusCode::CONFLICT,
            ApiError::PoolTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::PoolsFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Offline { .. }
            | ApiError::NotFound
            | ApiError::UnknownReport
            | ApiError::NoPool => StatusCode::NOT_FOUND,
            ApiError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ApiError::ShuttingDown
            | ApiError::ServerFull
            | ApiError::Unavailable
            | ApiError::Uncertain => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooManySockets(_)
            | ApiError::TooManyAddressSockets(_)
            | ApiError::TooManyNewSockets(_)
            | ApiError::TooManyFailures(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::OriginRefused => StatusCode::FORBIDDEN,
            ApiError::UnknownPusherApp => StatusCode::NOT_FOUND,
            ApiError::PusherSignature(crate::protocol::pusher::auth::SignatureError::Ambiguous) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::PusherSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::PusherApi(f) => {
                StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// A stable, machine-readable name for this failure (the admin page groups refusals by it).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadQuery(_) => "bad_query",
            ApiError::MissingUid => "missing_uid",
            ApiError::UidTooLong => "uid_too_long",
            ApiError::BadPassword => "bad_password",
            ApiError::AccessKey(_) => "bad_access_key",
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::BadBody(_) => "bad_body",
            ApiError::BodyRead => "body_read",
            ApiError::BodyTimeout(..) => "body_timeout",
            ApiError::Offline { .. } => "offline",
            ApiError::UnknownReport => "unknown_report",
            ApiError::NoPool => "no_pool",
            ApiError::PoolNotArray => "pool_not_array",
            ApiError::PoolTooLarge(_) => "pool_too_large",
            ApiError::PoolsFull(_) => "pools_full",
            ApiError::TooManyUids(_) => "too_many_uids",
            ApiError::InvalidTopic => "invalid_topic",
            ApiError::TooManyTopics(_) => "too_many_topics",
            ApiError::BadResume(_) => "bad_resume",
            ApiError::BadRooms(_) => "bad_rooms",
            ApiError::BadIdempotencyKey => "bad_idempotency_key",
            ApiError::BadInbox(_) => "bad_inbox",
            ApiError::InboxNotHere => "inbox_not_here",
            ApiError::UpgradeRequired => "upgrade_required",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::ServerFull => "server_full",
            ApiError::Unavailable => "unavailable",
            ApiError::Uncertain => "uncertain",
            ApiError::TooManySockets(_) => "too_many_sockets",
            ApiError::TooManyAddressSockets(_) => "too_many_address_sockets",
            ApiError::TooManyNewSockets(_) => "too_many_new_sockets",
            ApiError::TooManyFailures(_) => "locked_out",
            ApiError::OriginRefused => "origin_refused",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::NotFound => "not_found",
            ApiError::UnknownPusherApp => "unknown_app",
            ApiError::PusherSignature(_) => "bad_signature",
            ApiError::PusherApi(_) => "pusher_api",
        }
    }

    /// The envelope `{"topic":"error","number":0,"contents":<reason>}` with its status.
    pub fn into_response(self) -> Response {
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
            ApiError::TooManyFailures(wait) | ApiError::TooManyNewSockets(wait) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs()));
            }
            ApiError::Unavailable | ApiError::Uncertain => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Offline { stored, id } => {
                if stored > 0 {
                    headers.insert(STORED_HEADER, HeaderValue::from(stored));
                }
                if let Some(id) = id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                    headers.insert(ID_HEADER, id);
                }
            }
            _ => {}
        }
        res
    }
}

/// A data pool's refusal as the envelope's error.
pub fn pool_error(e: crate::pools::PoolError) -> ApiError {
    use crate::pools::PoolError;
    match e {
        PoolError::NotFound => ApiError::NoPool,
        PoolError::NotArray => ApiError::PoolNotArray,
        PoolError::TooLarge(max) => ApiError::PoolTooLarge(max),
        PoolError::Full(max) => ApiError::PoolsFull(max),
        PoolError::Busy => ApiError::Unavailable,
        PoolError::Broker(e) => e.into(),
    }
}

impl From<crate::broker::BrokerError> for ApiError {
    fn from(e: crate::broker::BrokerError) -> ApiError {
        // The broker logs the outage (once); the client only needs to know to retry.
        log::debug!("request refused: {e}");
        match e {
            crate::broker::BrokerError::Unavailable(_) => ApiError::Unavailable,
            crate::broker::BrokerError::Uncertain(_) => ApiError::Uncertain,
        }
    }
}

/// A JSON envelope reply with `status`.
pub fn envelope<T: serde::Serialize>(
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
