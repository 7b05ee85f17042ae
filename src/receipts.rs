//! Delivery receipts and push reports (seed 003's `ackPush` and `/report/push/:id`).
//!
//! A publish that asks for a receipt gets a message id. Its report is opened *before* the
//! message is published (so a page that acks at once never finds it missing), completed with
//! the sockets it was queued to and the uids that were offline, and counts acks: each socket
//! once, and the uids that acked. An ack is refused when the id is unknown (expired, never
//! issued) or the message was not for the acking socket (another uid's push, a topic it does
//! not follow). Whether the message was actually sent to the acking socket is checked before,
//! by its outbox (`Outbox::was_sent`), on the node that sent it.
//!
//! Where reports are kept is a [`ReceiptStore`]: on a single node in memory
//! (`store::memory::receipts`), with `redis_url` or `redis_cluster` in the cluster's Redis
//! (`store::redis::receipts`), shared by every node (an ack counts on whichever node the page
//! is). `store` chooses, once, from the config.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::broker::{BoxFuture, BrokerError};

/// Who a message was for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `/push`: these uids (sorted).
    Uids(Vec<String>),
    /// `/publish`: the followers of this topic.
    Topic(String),
    /// `/broadcast`: every socket.
    Broadcast,
}

/// A socket that acks: what is checked against the message's [`Target`].
pub struct Acker<'a> {
    /// The socket's uid.
    pub uid: &'a str,
    /// Unique over the cluster for the socket's life: its `socket_id`, `<node>.<id>`.
    pub socket: String,
    /// Whether the socket follows topic `name` now.
    pub follows: &'a (dyn Fn(&str) -> bool + Sync),
}

impl Acker<'_> {
    /// Whether a message for `target` is this socket's to ack.
    pub fn may_ack(&self, target: &Target) -> bool {
        match target {
            Target::Uids(uids) => uids.binary_search_by(|u| u.as_str().cmp(self.uid)).is_ok(),
            Target::Topic(topic) => (self.follows)(topic),
            Target::Broadcast => true,
        }
    }
}

/// What became of an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// Counted.
    Counted,
    /// This socket had acked it already: counted once.
    Repeat,
    /// No such report: expired, or never issued.
    Unknown,
    /// The message was not for this socket.
    NotFor,
}

impl Acked {
    /// Why a refused ack was refused, for the page's `_nack`.
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            Acked::Counted | Acked::Repeat => None,
            Acked::Unknown => Some("unknown message id (expired or never issued)"),
            Acked::NotFor => Some("this message was not for this socket"),
        }
    }
}

/// A report as `/report/push/<id>` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The message id.
    pub id: String,
    /// Who it was for.
    pub target: Target,
    /// The message's topic.
    pub topic: String,
    /// When it was published, unix seconds.
    pub created: u64,
    /// Sockets it was queued to, on every node.
    pub sockets: u64,
    /// Sockets that acked it (each once).
    pub acks: u64,
    /// `/push` uids that had no socket open.
    pub offline: Vec<String>,
    /// The uids that acked, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_uids: Option<Vec<String>>,
}

/// A message id: random, or, for a publish retried with the same `Idempotency-Key`, the same
/// id again (so the retry's reply names the report of the message that went out).
pub fn new_id(endpoint: &str, idempotency_key: Option<&str>) -> String {
    let digest: [u8; 32] = match idempotency_key {
        Some(key) => Sha256::digest(format!("receipt\n{endpoint}\n{key}")).into(),
        None => rand::random(),
    };
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Now, unix seconds: a report's `created`.
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The reports of this node, or of the cluster. Every method is cluster-wide with a Redis
/// store.
pub trait ReceiptStore: Send + Sync + 'static {
    /// Opens the report of message `id` before it is published (a repeat of an open id
    /// changes nothing).
    fn open<'a>(
        &'a self,
        id: &'a str,
        target: &'a Target,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Completes the report of message `id` once it was published: the sockets it was queued
    /// to and the uids that were offline.
    fn complete<'a>(
        &'a self,
        id: &'a str,
        sockets: u64,
        offline: &'a [String],
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Counts an ack of message `id` by `acker`, unless it is refused.
    fn ack<'a>(
        &'a self,
        id: &'a str,
        acker: &'a Acker<'a>,
    ) -> BoxFuture<'a, Result<Acked, BrokerError>>;

    /// Whether the report of message `id` is kept (it changes nothing).
    fn exists<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>>;

    /// The report of message `id`, with the acking uids if `with_uids`; `None` once expired.
    fn report<'a>(
        &'a self,
        id: &'a str,
        with_uids: bool,
    ) -> BoxFuture<'a, Result<Option<Report>, BrokerError>>;

    /// New bounds (a config reload): how long reports are kept, and in memory how many at
    /// most. Reports kept already follow them from now on.
    fn set_bounds(&self, ttl: Duration, max: usize);

    /// Drops expired reports (in memory; Redis expires its own); called periodically.
    fn sweep(&self) {}

    /// Reports held in memory (0 with Redis).
    fn len(&self) -> usize {
        0
    }

    /// Whether no report is held in memory.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
