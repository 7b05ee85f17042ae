//! `GET /push-serve.js`: the browser client library, embedded in the binary, so a page can load
//! the very client that matches the server it talks to.

use warp::http::header::{self, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::{ApiError, Req};

/// `client/push-serve.js` as built into this binary.
pub const CLIENT_JS: &str = include_str!("../../client/push-serve.js");

/// The client library, cacheable for an hour (a new release is picked up within that time).
pub(super) fn client_js(req: &Req) -> Result<Response, ApiError> {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(ApiError::MethodNotAllowed("GET, HEAD"));
    }
    let mut res = Response::new(CLIENT_JS.into());
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/javascript; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    Ok(res)
}
