//! What Pusher mode keeps besides the hub's streams, behind one small trait so a cluster shares
//! it: subscription counts per channel (the HTTP API's channel queries, `channel_occupied`
//! once per cluster), presence members (one per `user_id` however many sockets and nodes it
//! has), and the last event of each cache channel.
//!
//! `store::memory::pusher` keeps it for one node; `store::redis::pusher` in the cluster's
//! Redis. `store` chooses, once, from the config.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::{BoxFuture, BrokerError};

/// How long a cache channel's last event is kept (Pusher's: 30 minutes).
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// A presence member: its `user_id` and `user_info` (JSON text, `null` if none was given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's id.
    pub user_id: String,
    /// JSON text.
    pub user_info: String,
}

/// Shared Pusher state. Every method is cluster-wide with a cluster store.
pub trait ChannelStore: Send + Sync + 'static {
    /// A socket subscribed to (`delta` 1) or left (`-1`) `channel` of `app`: `true` if that
    /// made the channel occupied, or vacated it. The name is shared: a memory store keeps it
    /// as it is rather than a copy (one allocation per channel in every idle socket).
    fn subscribed<'a>(
        &'a self,
        app: &'a str,
        channel: &'a Arc<str>,
        delta: i64,
    ) -> BoxFuture<'a, Result<bool, BrokerError>>;

    /// `app`'s channels with at least one subscriber, and how many.
    fn channels<'a>(
        &'a self,
        app: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, usize>, BrokerError>>;

    /// A socket of `user_id` joined presence `channel`: `true` if the user was not a member
    /// yet (so `member_added` is due).
    fn join<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        member: &'a Member,
    ) -> BoxFuture<'a, Result<bool, BrokerError>>;

    /// A socket of `user_id` left presence `channel`: `true` if that was the user's last one
    /// (so `member_removed` is due).
    fn leave<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>>;

    /// The members of presence `channel`, by `user_id`.
    fn members<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>>;

    /// Keeps `frame` as cache `channel`'s last event for [`CACHE_TTL`].
    fn cache_put<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        frame: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Cache `channel`'s last event, if one is kept.
    fn cache_get<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BrokerError>>;
}
