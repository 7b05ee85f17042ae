//! Data pools (seed 000's REST resource per pool): a topic that also holds a JSON document.
//!
//! `PUT` replaces the document, `POST` appends to it (an array), `DELETE` removes it; each
//! change is published to the pool's topic as `<pool>:add` (the pool did not exist: the whole
//! new document), `<pool>:update` (the whole document), `<pool>:append` (the appended value)
//! or `<pool>:delete`. The document remembers the stream number of its last change. An append
//! keeps the document's text as it was and adds `,<value>` before its closing `]`.
//!
//! **No race between snapshot and changes.** A change publishes and stores the document as one
//! step, so the document holds exactly the changes numbered up to the stream's position. A page
//! that follows the topic (its key grants it, or the backend moved it there) is attached to the
//! stream first (every change after that reaches it), then reads the document and where the
//! stream stands (`P`) in one step: its live frames up to `P` are dropped, and the snapshot
//! frame says `number: P`; every later change reaches it once, after the snapshot.
//!
//! Where documents are kept is a [`PoolStore`]: on a single node in memory
//! (`store::memory::pools`), with Redis in the cluster's Redis (`store::redis::pools`), each of
//! which says how it makes a change and its publish one step. `store` chooses, once, from the
//! config.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::broker::{BoxFuture, BrokerError, Published};
use crate::hub::Hub;
use crate::wire::Position;

/// A pool's document and the stream number of its last change.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The document, JSON text.
    pub json: Arc<str>,
    /// Its topic stream's number at its last change.
    pub seq: u64,
}

/// A change to a pool.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Replace the document (`PUT`).
    Put(&'a RawValue),
    /// Append to the array document (`POST`).
    Append(&'a RawValue),
    /// Remove the pool (`DELETE`).
    Delete,
}

/// Why a change was refused. Nothing was published or stored.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// `DELETE` of a pool that does not exist.
    #[error("no such pool")]
    NotFound,
    /// `POST` to a pool whose document is not an array.
    #[error("this pool's document is not an array: POST appends to arrays only (PUT replaces)")]
    NotArray,
    /// The new document would be larger than `pool_max_bytes`.
    #[error("the pool's document would be larger than pool_max_bytes ({0} bytes)")]
    TooLarge(usize),
    /// `pool_max` pools exist already.
    #[error("pool_max ({0}) pools exist already")]
    Full(usize),
    /// Another change held the pool for too long (in memory only: Redis has no lock).
    #[error("the pool is busy: retry")]
    Busy,
    /// The store or the broker could not be reached.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Bounds of the pools.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Largest document, bytes.
    pub max_bytes: usize,
    /// Most pools.
    pub max_pools: usize,
}

/// What a change published.
#[derive(Debug)]
pub struct Changed {
    /// `add`, `update`, `append` or `delete`.
    pub event: &'static str,
    /// The publish's outcome.
    pub published: Published,
}

/// The pools of this node, or of the cluster. See the module doc.
pub trait PoolStore: Send + Sync + 'static {
    /// The document of pool `name` now (`GET`), without waiting for a change in flight.
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Doc>, BrokerError>>;

    /// Which of `names` are pools (one store call at most).
    fn which<'a>(&'a self, names: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<bool>, BrokerError>>;

    /// For a page that follows pool `name`'s topic now: the document and the stream position
    /// it is exact at (`None` if there is no such pool). The caller drops the page's live
    /// frames up to that position.
    fn snapshot<'a>(
        &'a self,
        hub: &'a Hub,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<(Doc, Position)>, PoolError>>;

    /// Applies `change` to pool `name` and publishes its event to the pool's topic.
    fn change<'a>(
        &'a self,
        hub: &'a Hub,
        name: &'a str,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Changed, PoolError>>;

    /// New bounds for the changes that come next (a config reload); nothing kept is dropped.
    fn set_bounds(&self, bounds: Bounds);
}

/// Array document `doc` with `value` appended, or `None` if `doc` is not an array. Text, not
/// a parse: the document keeps its bytes as they were (`lua/pool_change.lua` does the same on
/// Redis). `doc` is valid JSON, so one that opens with `[` is an array that closes with `]`,
/// and what stands before that `]` is `[` only when the array is empty.
pub fn append_to(doc: &str, value: &str) -> Option<String> {
    if !doc.trim_start_matches(json_space).starts_with('[') {
        return None;
    }
    let body = doc.trim_end_matches(json_space);
    let before = body[..body.len() - 1].trim_end_matches(json_space);
    let comma = if before.ends_with('[') { "" } else { "," };
    Some(format!("{before}{comma}{value}]"))
}

fn json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

#[cfg(test)]
mod tests {
    use super::append_to;

    #[test]
    fn an_append_keeps_the_documents_text() {
        assert_eq!(append_to("[]", "1").as_deref(), Some("[1]"));
        assert_eq!(append_to(" [ \n] ", "1").as_deref(), Some(" [1]"));
        assert_eq!(
            append_to("[1]", "{\"a\": 2}").as_deref(),
            Some("[1,{\"a\": 2}]")
        );
        assert_eq!(append_to("[[]]", "[]").as_deref(), Some("[[],[]]"));
        assert_eq!(
            append_to("[1.0e400 , \"]\" ]", "2").as_deref(),
            Some("[1.0e400 , \"]\",2]")
        );
        assert_eq!(append_to("{\"a\":[]}", "1"), None);
        assert_eq!(append_to("\"[\"", "1"), None);
        assert_eq!(append_to("7", "1"), None);
    }
}
