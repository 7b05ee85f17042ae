//! The admin page: `GET /admin` serves one self-contained HTML file (embedded in the binary;
//! no build step, no CDN), which signs in with the backends' password and then polls two small
//! JSON endpoints with it as a Bearer token:
//! - `GET /admin/series`: one sample a second over the last five minutes (sockets, messages
//!   and deliveries since start; the page turns the last two into rates) and the figures now;
//! - `GET /admin/refusals`: the last refused requests and counts by reason since start.
//!
//! The page itself uses `/online`, `/push`, `/publish` and `/broadcast` like any backend.

use std::sync::OnceLock;

use base64::Engine;
use sha2::{Digest, Sha256};

use warp::http::header::{self, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::envelope;
use super::{allowed, authorized, ApiError, AppState, Req};
use crate::metrics::{REFUSALS, SAMPLES};

/// The page. Everything it shows that came from a client (uids, reasons, addresses) is set as
/// text, never as HTML.
const PAGE: &str = include_str!("admin.html");

/// The page's Content-Security-Policy: its one inline script and one inline style block are
/// allowed by their hashes (so no injected markup could run a script even if some text were
/// ever inserted as HTML), it talks only to this server, and it cannot be framed.
fn csp() -> &'static HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = |open: &str, close: &str| {
            let start = PAGE.find(open).expect("the page has the block") + open.len();
            let end = start + PAGE[start..].find(close).expect("the block is closed");
            let digest = Sha256::digest(&PAGE.as_bytes()[start..end]);
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        };
        let policy = format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("<script>", "</script>"),
            hash("<style>", "</style>"),
        );
        HeaderValue::from_str(&policy).expect("a valid header value")
    })
}

/// `/admin`, `/admin/series`, `/admin/refusals`.
pub(super) fn admin(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    match req.path.trim_end_matches('/') {
        "/admin/series" => series(state, req),
        "/admin/refusals" => refusals(state, req),
        _ => page(req),
    }
}

/// `GET /admin`: the page. It holds no secret, so it needs no password; every figure it shows
/// does.
fn page(req: &Req) -> Result<Response, ApiError> {
    allowed(req, "GET, HEAD")?;
    let mut res = Response::new(PAGE.into());
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, csp().clone());
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(res)
}

/// `GET /admin/series`: `{interval_ms, columns, samples: [[t, sockets, messages,
/// deliveries], …] (oldest first), now: {…}}`.
fn series(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    authorized(state, req, "GET")?;
    let registry = state.sockets.hub.registry();
    let now = state
        .sockets
        .metrics
        .now(registry.socket_count(), registry.deliveries());
    let samples: Vec<[u64; 4]> = state
        .sockets
        .metrics
        .series()
        .iter()
        .map(|s| [s.t, s.sockets, s.messages, s.deliveries])
        .collect();
    let contents = serde_json::json!({
        "interval_ms": 1000,
        "kept": SAMPLES,
        "columns": ["t", "sockets", "messages", "deliveries"],
        "samples": samples,
        "now": {
            "t": now.t,
            "sockets": now.sockets,
            "messages": now.messages,
            "deliveries": now.deliveries,
            "evictions": registry.evictions(),
            "history_bytes": state.sockets.hub.broker().history_bytes(),
            "ready": state.sockets.hub.broker().is_ready(),
            "uptime_secs": state.sockets.metrics.uptime().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
        },
    });
    Ok(envelope(
        StatusCode::OK,
        "series",
        samples.len() as u64,
        contents,
    ))
}

/// `GET /admin/refusals`: `{kept, recent: [{t, status, reason, detail, endpoint, client}, …]
/// (newest first), by_reason: {reason: count since start}}`.
fn refusals(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    authorized(state, req, "GET")?;
    let (mut recent, by_reason) = state.sockets.metrics.refusals();
    recent.reverse();
    let total: u64 = by_reason.values().sum();
    let contents = serde_json::json!({
        "kept": REFUSALS,
        "recent": recent,
        "by_reason": by_reason,
    });
    Ok(envelope(StatusCode::OK, "refusals", total, contents))
}
