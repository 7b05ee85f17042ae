//! What must be shared between nodes: each stream's numbering and history, which nodes have
//! followers of it (presence), and the delivery of every publish to those nodes' registries.
//!
//! [`Broker`] is the seam. [`local::LocalBroker`] keeps it all in this process (one node, the
//! default, no dependency); [`redis::RedisBroker`] keeps it in Redis so several nodes are one
//! service. The arrows run one way: a broker delivers into the node's
//! [`Registry`](crate::registry::Registry); the registry never calls a broker (it only tells an
//! [`Observer`](crate::registry::Observer) that a socket left).
//!
//! Publishing asks the broker for a position and lets it deliver, on every node, to the local
//! sockets. Connecting is the other way round: the socket joins the registry first (so nothing
//! published from then on can pass it by), then [`Broker::attach`] says where each stream
//! stands and what the socket missed; the socket's outbox drops live frames that the replay
//! already holds. So "missed messages, then live ones, none twice" holds whichever node
//! published what.

pub mod local;
pub mod redis;
pub mod redis_conn;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::commands::Command;
use crate::wire::{Frame, Message, Position, StreamKey};

/// A boxed future borrowing from the broker and its arguments. One allocation per call (per
/// publish, per connect), never per delivery.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Retention settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Messages kept per stream (0: no history, no resume).
    pub history_size: usize,
    /// How long a message is kept.
    pub history_ttl: Duration,
    /// Bytes of history kept across all streams on one node (in-memory broker only).
    pub max_bytes: usize,
}

impl Retention {
    /// No history at all.
    pub const NONE: Retention = Retention {
        history_size: 0,
        history_ttl: Duration::ZERO,
        max_bytes: 0,
    };

    /// How long an idle stream's generation and position are remembered after its last
    /// message expired and its last socket left: twice the history time, at least a minute.
    pub fn meta_ttl(&self) -> Duration {
        (self.history_ttl * 2).max(Duration::from_secs(60))
    }
}

/// Why a broker call failed. Only a cluster broker fails: its store is unreachable, slow, or
/// answered something unexpected. The caller answers 503.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The store cannot be reached, or refused the call: nothing was done.
    #[error("message store unavailable: {0}")]
    Unavailable(String),
    /// The call went out but no answer came in time (or the connection dropped while it was
    /// in flight): the store may have done it. A publish retried with the same idempotency key
    /// is still done once.
    #[error("message store did not answer in time: {0}")]
    Uncertain(String),
}

/// Outcome of one publish, over every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Sockets the message was queued to, on every node.
    pub sockets: usize,
    /// The message's number in its stream (0 if the stream does not exist and nothing was
    /// kept).
    pub seq: u64,
    /// Whether it went into the stream's history.
    pub retained: bool,
    /// A repeat of an earlier publish with the same idempotency key: nothing was sent now,
    /// and this is the earlier outcome.
    pub repeated: bool,
}

/// Where a stream stood when a socket attached, and what the socket missed.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The stream's position as of the attach: live frames after it reach the socket.
    pub position: Position,
    /// Present when the socket asked to resume this stream: the messages after its position
    /// (up to `position`), and the first one it must be told it lost, if any.
    pub replay: Option<Replay>,
}

/// What a resuming socket missed on one stream.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// Set if messages after the socket's position were lost before this number.
    pub gap_before: Option<u64>,
    /// Numbered frames of what is still kept, oldest first.
    pub frames: Vec<Frame>,
}

/// One stream a socket attaches to.
#[derive(Debug, Clone)]
pub struct Attach<'a> {
    /// The stream.
    pub key: &'a StreamKey,
    /// `None`: the socket does not resume this stream. `Some(None)`: it sent a position that
    /// does not parse (treated as another generation). `Some(Some(p))`: resume after `p`.
    pub since: Option<Option<Position>>,
}

/// This node and, with a cluster broker, the cluster.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterView {
    /// Nodes alive in the cluster (this one included).
    pub nodes: usize,
    /// Sockets open over all nodes.
    pub sockets: usize,
    /// Sum over nodes of uids with a socket there (a uid on two nodes counts twice).
    pub uids: usize,
    /// Sum over nodes of topics with a follower there.
    pub topics: usize,
}

/// The shared side of streams. See the module doc.
pub trait Broker: Send + Sync + 'static {
    /// Numbers `msg` in stream `key`, keeps it in history if retention is on, and delivers it
    /// to every follower on every node. With `idempotency_key`, a repeat within a few minutes
    /// publishes nothing and returns the first outcome.
    fn publish<'a>(
        &'a self,
        key: &'a StreamKey,
        msg: Message<'a>,
        idempotency_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Published, BrokerError>>;

    /// Called after a socket joined the registry for `streams` (and before its `101`): makes
    /// sure this node receives their messages, and with `positions`, says where each stands
    /// and what the socket missed (`None` when positions are not wanted: seed sockets).
    fn attach<'a>(
        &'a self,
        streams: &'a [Attach<'a>],
        positions: bool,
    ) -> BoxFuture<'a, Result<Option<Vec<Attached>>, BrokerError>>;

    /// Sockets `uid` has open, on every node.
    fn sockets_of<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<usize, BrokerError>>;

    /// The cluster's totals, or `None` for a single node.
    fn cluster(&self) -> BoxFuture<'_, Result<Option<ClusterView>, BrokerError>>;

    /// Bytes of history this node holds (0 when history lives elsewhere).
    fn history_bytes(&self) -> usize;

    /// Whether publishes can succeed now (false while a cluster store is unreachable).
    fn is_ready(&self) -> bool;

    /// Periodic housekeeping: expired history, forgotten streams.
    fn sweep(&self);

    /// Runs `command` on every node (this one too), each on its own registry. Ok once it is
    /// on its way to every node (delivery is at most once, in send order).
    fn command<'a>(&'a self, command: &'a Command) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Whether other nodes share this broker's streams (a cluster store).
    fn is_shared(&self) -> bool {
        false
    }

    /// After every socket closed: tell the other nodes this one is gone, stop background work.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// The replay plan shared by every broker: a socket that last saw `since` in a stream now at
/// `current`, whose oldest kept message is `oldest` (`current.seq + 1` if none), gets the kept
/// messages after the returned number, after a gap notice if the returned `Option` is set.
pub fn plan_replay(since: Option<Position>, current: Position, oldest: u64) -> (u64, Option<u64>) {
    match since {
        // Same generation: resume after its position (a position from the future means
        // nothing was missed). Anything between it and the oldest kept message is lost.
        Some(p) if p.generation == current.generation => {
            let from = p.seq.min(current.seq);
            (from, (from + 1 < oldest).then_some(oldest))
        }
        // Another generation (the stream was dropped and made again, or its store lost it) or
        // a malformed position: everything kept is new to the client, and whatever it missed
        // before that is lost.
        _ => (0, Some(oldest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_plan_covers_every_case() {
        let at = |generation, seq| Position { generation, seq };
        let now = at(7, 10);
        // Caught up, behind but kept, behind and partly lost, from the future.
        assert_eq!(plan_replay(Some(at(7, 10)), now, 6), (10, None));
        assert_eq!(plan_replay(Some(at(7, 5)), now, 6), (5, None));
        assert_eq!(plan_replay(Some(at(7, 2)), now, 6), (2, Some(6)));
        assert_eq!(plan_replay(Some(at(7, 99)), now, 6), (10, None));
        // Nothing kept at all: a client at the top misses nothing, one behind lost it all.
        assert_eq!(plan_replay(Some(at(7, 10)), now, 11), (10, None));
        assert_eq!(plan_replay(Some(at(7, 9)), now, 11), (9, Some(11)));
        // Other generation, malformed.
        assert_eq!(plan_replay(Some(at(8, 10)), now, 6), (0, Some(6)));
        assert_eq!(plan_replay(None, now, 1), (0, Some(1)));
    }
}
