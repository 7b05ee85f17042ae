//! `GET /access?uid&password[&topics]`: a signed access key for a page.

use warp::http::header::{self, HeaderValue};
use warp::http::StatusCode;
use warp::reply::Response;

use super::error::envelope;
use super::{authorized, ApiError, AppState, Req};
use crate::auth::valid_topic;

/// A fresh access key for `uid`, granting the comma-separated `topics` if given.
pub(super) fn access(state: &AppState, req: &Req) -> Result<Response, ApiError> {
    let params = authorized(state, req, "GET, POST")?;
    let settings = state.settings();
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
    if topics.len() > settings.max_topics_per_key {
        return Err(ApiError::TooManyTopics(settings.max_topics_per_key));
    }
    let key = settings.auth.issue_with_topics(uid, &topics);
    let mut res = envelope(StatusCode::OK, "_access", 1, key);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}
