//! The offline inbox (seed 003's `leaveMessage` + `expire`).
//!
//! A `/push` with `"inbox": N` is kept, for each of its uids that had no socket open, for up
//! to N seconds or until one of that uid's pages acks it. A `proto=2` page that opens fresh
//! (no `since`) gets the unacked messages of its uid right after `_welcome`, marked
//! `"inbox": true`, before anything live; a page that resumes already had them. An ack (by any
//! page of the uid) removes the message for every page of that uid.
//!
//! Bounded twice: at most `inbox_max_per_uid` messages per uid and `inbox_max` in all; a message
//! that would pass either is not kept, and the push's reply says so (it is never made room
//! for by dropping older ones, which the backend was already told were kept).
//!
//! Where the inbox is kept is an [`InboxStore`]: on a single node in memory
//! (`store::memory::inbox`), with Redis in the cluster's Redis (`store::redis::inbox`).
//! `store` chooses, once, from the config.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::broker::{BoxFuture, BrokerError};
use crate::wire::{self, Frame};

/// What became of a message to keep for one uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Kept (or already kept: a retried publish).
    Kept,
    /// The uid's inbox holds `inbox_max_per_uid` messages.
    UidFull,
    /// The inbox holds `inbox_max` messages in all.
    Full,
}

/// One kept message, as stored (JSON in Redis).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The message id (its receipt id).
    pub id: String,
    /// Its topic.
    pub t: String,
    /// Its contents, JSON text.
    pub c: String,
    /// When it was kept, unix milliseconds.
    pub at: u64,
    /// Its place in the uid's inbox: the order pages get them in (milliseconds alone cannot
    /// order pushes made within one). 0 in entries kept before it existed, which go first.
    #[serde(default)]
    pub n: u64,
}

impl Entry {
    /// Message `id` (`topic`, `contents`) kept now, not placed yet.
    pub fn new(id: &str, topic: &str, contents: &str) -> Entry {
        Entry {
            id: id.to_owned(),
            t: topic.to_owned(),
            c: contents.to_owned(),
            at: unix_ms(),
            n: 0,
        }
    }
}

/// Now, unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bounds of the inbox.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most messages kept per uid.
    pub per_uid: usize,
    /// Most messages kept in all.
    pub total: usize,
}

/// This node's inbox, or the cluster's. See the module doc.
pub trait InboxStore: Send + Sync + 'static {
    /// Keeps message `id` (`topic`, `contents`) for `uid` for `ttl`, unless a bound is reached.
    fn keep<'a>(
        &'a self,
        uid: &'a str,
        id: &'a str,
        topic: &'a str,
        contents: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Kept, BrokerError>>;

    /// The unexpired messages kept for `uid`, in any order.
    fn entries<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, BrokerError>>;

    /// The unexpired messages kept for `uid`, oldest first, as frames marked `"inbox": true`,
    /// each with its id.
    fn frames_of<'a>(
        &'a self,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, Frame)>, BrokerError>> {
        Box::pin(async move {
            let mut entries = self.entries(uid).await?;
            entries.sort_by(|a, b| (a.n, a.at, &a.id).cmp(&(b.n, b.at, &b.id)));
            Ok(entries
                .into_iter()
                .filter_map(|e| wire::inbox_frame(&e.t, &e.c, &e.id).map(|frame| (e.id, frame)))
                .collect())
        })
    }

    /// Removes message `id` from `uid`'s inbox (a page of that uid acked it); whether it was
    /// there.
    fn remove<'a>(&'a self, uid: &'a str, id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>>;

    /// New bounds for the messages kept from now on (a config reload); nothing kept is dropped.
    fn set_bounds(&self, bounds: Bounds);

    /// Drops expired messages (in memory; Redis expires its own); called periodically.
    fn sweep(&self) {}

    /// Messages held in memory (0 with Redis).
    fn len(&self) -> usize {
        0
    }

    /// Whether no message is held in memory.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
