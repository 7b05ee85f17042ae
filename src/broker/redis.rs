//! The cluster broker: numbering, history, presence and fan-out in Redis, so every node sharing
//! a Redis (and a `redis_prefix`) serves the same streams.
//!
//! Borrowed, and judged, from centrifugal/centrifuge's Redis engine (`broker_redis.go`,
//! `internal/redis_lua/broker_history_add_stream.lua`, `presence_redis.go`) by way of
//! `shared/notes/redis-broker.md`, and from Socket.IO's and Soketi's adapters:
//! - **One round trip per publish**: `lua/publish.lua` numbers the message (`HINCRBY`), keeps
//!   it (`XADD … MAXLEN history_size`, expired head trimmed, `PEXPIRE history_ttl`), refreshes
//!   the stream's expiry and `PUBLISH`es it, all atomically.
//! - **Fan-out once per node with receivers** (not per socket, not per stream): each node
//!   subscribes to one channel of its own, `<prefix>:node:<id>`, on one connection. A stream's
//!   meta hash lists, per node, how many sockets there follow it (`n:<id>`); the publish script
//!   publishes to those nodes only and sums their counts for `/push`'s `number`. A node whose
//!   channel has no subscriber any more is dropped from the hash by that same script.
//! - **Presence is written by one task per node** ([`presence_loop`]), which reads each
//!   stream's count from the registry when it writes: absolute values, in order, so a lost or
//!   reordered update cannot leave a count wrong. A socket's `101` waits until its node is in
//!   the hash (so a push right after the upgrade reaches it). Every node keeps a liveness key
//!   (`<prefix>:alive:<id>`, 15 s) fresh every 5 s; readers (`/online`, `/stats`) skip and
//!   forget nodes without one, so a SIGKILLed node stops counting within 15 s.
//! - **Incarnations instead of repair**: any doubt about what Redis holds for this node (its
//!   subscription dropped, its heartbeats failing until its liveness key may have expired)
//!   ends the node's incarnation (a failed presence write is only written again: counts are
//!   absolute).
//!   It subscribes again under a new id, announces every stream it has, and compares each with
//!   what it last delivered: a stream that moved on meanwhile makes its resumable sockets
//!   reconnect (4010) and resume from history. Centrifuge does the same (`checkPosition`,
//!   "insufficient state").
//! - **Generations and the rollback trap.** A stream's generation is minted when its meta is
//!   missing (never published, expired, or Redis lost it), so nodes and restarts don't change
//!   it and a page resumes on any node. A Redis that reloads an older snapshot (RDB, AOF
//!   `everysec`, an async replica's failover) would reuse numbers under the same generation and
//!   tell a page it missed nothing when it did (centrifugo#664, reproduced in the note). So
//!   unless Redis is durable (`appendonly yes` + `appendfsync always`, read at each connect),
//!   generations are tied to Redis's `run_id`: any Redis restart starts new generations and a
//!   resuming page gets `_gap`, never silence.
//! - **A Redis Cluster** (`redis_cluster`, through [`RedisConn`]): the same scripts, each on one
//!   slot (a stream's keys share its hash tag; multi-stream calls are grouped by slot). A node
//!   cannot publish to another node's channel from a script running in the stream's slot, so
//!   there the message goes once to the stream's **shard channel** (`SPUBLISH`), which each node
//!   with followers subscribes to (`SSUBSCRIBE`, by the presence writer, before it writes the
//!   stream's count: the same order as the node channel above). Scripts cannot read liveness
//!   keys in other slots either: they are given the ids the registry found gone. The generation
//!   guard is the run_id of the master the stream is on, which the script reads itself.
//! - **Fail fast**: every call is bounded (1.5 s); a failure is 503 for the caller and one
//!   warning per outage in the log. Open sockets stay open; connects get 503 while the node
//!   is not subscribed. With `Idempotency-Key`, a backend retrying a timed-out publish does
//!   not duplicate it (`<prefix>:{stream}:i:<key>`, five minutes).

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Script, Value};

use super::redis_conn::{self, tag_part, RedisConn, Target};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use super::{
    plan_replay, Attach, Attached, BoxFuture, Broker, BrokerError, ClusterView, Published, Replay,
    Retention,
};
use crate::commands::Command;
use crate::metrics::Metrics;
use crate::registry::{Observer, Registry};
use crate::wire::{self, Message, Position, StreamKey};

/// Bound on every Redis call: a caller gets its 503 within 2 s.
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often a node renews its liveness key and pings its own channel.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Lifetime of a node's liveness key.
const ALIVE_TTL_SECS: u64 = 15;
/// A subscription that hears nothing (not even its own pings) for this long is dead.
const WATCHDOG: Duration = Duration::from_secs(15);
/// Streams per presence script call.
const PRESENCE_BATCH: usize = 256;
/// Least lifetime of a stream's meta hash while a node counts followers in it (when the last
/// one leaves, it is the publish's `meta_ttl` again): each stream is rewritten once a third of
/// it, a slice of the streams at each heartbeat, so the writes at rest are few and even (they
/// were every minute, all at once: at 500,000 sockets 25,000 Redis commands a second, in
/// bursts that timed out).
const PRESENCE_TTL: Duration = Duration::from_secs(60 * 60);
/// Presence updates waiting for the writer; past it, the next heartbeat rewrites them all.
const PRESENCE_QUEUE: usize = 65_536;
/// How long idempotency keys are remembered.
const IDEMPOTENCY_TTL_SECS: u64 = 300;
/// How long the ids of nodes found gone are remembered (on a Redis Cluster, scripts learn from
/// this list which counts to drop, since they cannot look at other slots' liveness keys).
const GONE_MS: u64 = 3_600_000;

static PUBLISH: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/publish.lua")));
static PRESENCE: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/presence.lua")));
static REPLAY: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/replay.lua")));
static ONLINE: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/online.lua")));
static NODES: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("lua/nodes.lua")));

fn unavailable(e: impl Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Runs a Redis call with [`CALL_TIMEOUT`]. A call that may have reached Redis without its
/// answer reaching us (a timeout, a connection dropped under it) is [`BrokerError::Uncertain`].
async fn bounded<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.is_timeout() || e.is_connection_dropped() => {
            Err(BrokerError::Uncertain(e.to_string()))
        }
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(BrokerError::Uncertain("no answer within 1.5 s".into())),
    }
}

fn random_hex() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Key and channel names under one prefix.
#[derive(Clone)]
struct Keys {
    prefix: Arc<str>,
    /// On a Redis Cluster: the node registry's keys share a hash tag, so one script reads them.
    cluster: bool,
}

impl Keys {
    /// A stream's hash tag: its id, escaped so that no name ends the tag early. So all of a
    /// stream's keys (and its shard channel) are in one slot, and no two streams' keys meet.
    fn tag(&self, key: &StreamKey) -> String {
        format!("{}:{{{}}}", self.prefix, tag_part(&key.id()))
    }
    /// The stream's meta hash.
    fn meta(&self, key: &StreamKey) -> String {
        format!("{}:m", self.tag(key))
    }
    fn hist(&self, key: &StreamKey) -> String {
        format!("{}:h", self.tag(key))
    }
    fn idempotency(&self, key: &StreamKey, idem: &str) -> String {
        format!("{}:i:{idem}", self.tag(key))
    }
    /// A Redis Cluster's shard channel of a stream (in the stream's slot).
    fn shard_channel(&self, key: &StreamKey) -> String {
        format!("{}:c", self.tag(key))
    }
    fn channel_prefix(&self) -> String {
        format!("{}:node:", self.prefix)
    }
    fn alive_prefix(&self) -> String {
        if self.cluster {
            format!("{}:{{nodes}}:alive:", self.prefix)
        } else {
            format!("{}:alive:", self.prefix)
        }
    }
    fn nodes(&self) -> String {
        if self.cluster {
            format!("{}:{{nodes}}", self.prefix)
        } else {
            format!("{}:nodes", self.prefix)
        }
    }
    fn gone(&self) -> String {
        format!("{}:gone", self.nodes())
    }
    /// The channel every node subscribes to for cluster-wide commands.
    fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }
}

/// Logs an outage once, and its end once.
#[derive(Default)]
struct Outage {
    since: Mutex<Option<Instant>>,
}

impl Outage {
    fn failed(&self, what: &str, e: &dyn Display) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_none() {
            *since = Some(Instant::now());
            log::warn!(
                "redis unreachable ({what}: {e}); publishes and new sockets get 503 until it is back"
            );
        } else {
            log::debug!("redis still unreachable ({what}: {e})");
        }
    }

    fn ok(&self) {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = since.take() {
            log::info!(
                "redis reachable again after {:.1} s",
                at.elapsed().as_secs_f64()
            );
        }
    }
}

/// What the tasks and the broker share.
struct Shared {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    keys: Keys,
    retention: Retention,
    outage: Outage,
    /// This node's id while it is subscribed and announced (sockets may connect).
    node: RwLock<Option<Arc<str>>>,
    /// The generation guard for scripts: Redis's run_id, or "" when Redis is durable.
    boot: RwLock<Option<Arc<str>>>,
    /// Set when something failed that leaves Redis's view of this node in doubt.
    reincarnate: Notify,
    /// Presence updates were dropped (queue full): the next heartbeat rewrites them all.
    dirty: Arc<AtomicBool>,
    stopping: AtomicBool,
    /// Ids this process keeps alive besides its incarnation, with the liveness key prefix each
    /// uses on one Redis (a Pusher store's).
    members: Mutex<Vec<(Arc<str>, String)>>,
    /// Nodes (and members) found gone in the last [`GONE_MS`], as of the last heartbeat.
    gone: RwLock<Arc<Vec<String>>>,
    /// On a Redis Cluster: the connection this incarnation's (sharded) subscriptions are on.
    subscriber: Mutex<Option<ClusterConnection>>,
    /// Incarnations so far.
    incarnations: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Runs Redis call `op` with [`CALL_TIMEOUT`], and reports its time and outcome to
    /// `/metrics` (`push_serve_broker_call_seconds`, `push_serve_broker_errors_total`).
    async fn call<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        let started = Instant::now();
        let result = bounded(call).await;
        self.metrics
            .broker_call(op, started.elapsed(), result.is_ok());
        result
    }

    /// publish.lua's call for `payload` to stream `key`, through `script`: publish.lua itself,
    /// or a script composed with it ([`RedisHandle::publish_with`]), whose own keys and
    /// arguments (`own_keys`, `own_args`) come first.
    fn publish_call<'s>(
        &self,
        script: &'s Script,
        key: &StreamKey,
        payload: &[u8],
        idem: Option<&str>,
        own_keys: &[String],
        own_args: &[&[u8]],
    ) -> Result<redis::ScriptInvocation<'s>, BrokerError> {
        let boot = self
            .boot()
            .ok_or_else(|| unavailable("not connected to redis yet"))?;
        let keys = &self.keys;
        let retention = &self.retention;
        let mut call = script.prepare_invoke();
        for k in own_keys {
            call.key(k);
        }
        for a in own_args {
            call.arg(*a);
        }
        call.key(keys.meta(key)).key(keys.hist(key));
        if let Some(idem) = idem {
            call.key(keys.idempotency(key, idem));
        }
        call.arg(payload)
            .arg(if key.keeps_history() {
                retention.history_size
            } else {
                0
            })
            .arg(retention.history_ttl.as_millis().max(1) as u64)
            .arg(self.meta_ttl_secs())
            .arg(random_hex())
            .arg(&*boot);
        if keys.cluster {
            call.arg("")
                .arg(IDEMPOTENCY_TTL_SECS)
                .arg(keys.shard_channel(key))
                .arg(&*self.gone());
        } else {
            call.arg(keys.channel_prefix()).arg(IDEMPOTENCY_TTL_SECS);
        }
        Ok(call)
    }

    /// Runs a [`Shared::publish_call`], reporting an outage like every publish does.
    async fn publish_invoke(
        &self,
        op: &'static str,
        call: redis::ScriptInvocation<'_>,
        conn: &mut RedisConn,
    ) -> Result<String, BrokerError> {
        match self.call(op, call.invoke_async(conn)).await {
            Ok(reply) => {
                self.outage.ok();
                Ok(reply)
            }
            Err(e) => {
                self.outage.failed(op, &e);
                Err(e)
            }
        }
    }

    fn node(&self) -> Option<Arc<str>> {
        self.node.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn boot(&self) -> Option<Arc<str>> {
        self.boot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A name for this node's next incarnation: the node's number (the registry's, which its
    /// sockets' ids start with) and how many incarnations it had, e.g. `483920117402.3`.
    fn next_incarnation(&self) -> Arc<str> {
        let n = self.incarnations.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}.{n}", self.registry.node()).into()
    }

    fn gone(&self) -> Arc<Vec<String>> {
        self.gone.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn subscriber(&self) -> Option<ClusterConnection> {
        self.subscriber
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn meta_ttl_secs(&self) -> u64 {
        self.retention.meta_ttl().as_secs().max(1)
    }

    /// The lifetime presence writes give a stream's meta hash.
    fn presence_ttl(&self) -> Duration {
        PRESENCE_TTL.max(self.retention.meta_ttl())
    }

    /// Stops letting sockets connect under the current incarnation.
    fn end_incarnation(&self, why: &str) {
        if self
            .node
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
        {
            log::info!("leaving the cluster to join again: {why}");
        }
    }

    /// Ends the current incarnation and has the subscription start a new one.
    fn reincarnate(&self, why: &str) {
        self.end_incarnation(why);
        self.reincarnate.notify_one();
    }
}

/// Requests to the presence writer.
enum Op {
    /// A socket left this stream: write its new count.
    Left(StreamKey),
    /// A socket joined these streams: write their counts and answer their positions.
    Joined(
        Vec<StreamKey>,
        oneshot::Sender<Result<Vec<Position>, BrokerError>>,
    ),
    /// The pubsub task subscribed as this node: announce everything.
    Incarnate(Arc<str>),
    /// Shutting down: write the last counts and leave the cluster.
    Shutdown(oneshot::Sender<()>),
}

/// Tells the presence writer about leaves (the registry's [`Observer`]). Holds nothing that
/// holds the registry, so the two do not keep each other alive.
struct PresenceObserver {
    tx: mpsc::Sender<Op>,
    dirty: Arc<AtomicBool>,
}

impl Observer for PresenceObserver {
    fn left(&self, key: &StreamKey) {
        if self.tx.try_send(Op::Left(key.clone())).is_err() {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }
}

/// What a feature with shared state of its own (presence members, receipts, documents) needs
/// to keep it in the cluster's Redis: a connection (multiplexed, reconnecting) and the key
/// prefix. Calls made through [`RedisHandle::call`] are bounded and counted like the broker's.
#[derive(Clone)]
pub struct RedisHandle {
    /// A clone of the broker's command connection.
    pub conn: RedisConn,
    shared: Arc<Shared>,
}

impl RedisHandle {
    /// The deployment's key prefix (`redis_prefix`); a feature's keys start with
    /// `<prefix>:<feature>:`.
    pub fn prefix(&self) -> &str {
        &self.shared.keys.prefix
    }

    /// The node's number (the one node identity, [`Registry::node`]): a feature that counts
    /// under an id of its own names it after this.
    pub fn node(&self) -> u64 {
        self.shared.registry.node()
    }

    /// Whether this is a Redis Cluster: keys of one call must share a hash tag, and scripts
    /// learn liveness from [`RedisHandle::liveness_args`] instead of reading other slots.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// Keeps `id` alive in the node registry for as long as this process runs (a feature that
    /// counts under an id of its own, as the Pusher store does). On one Redis its liveness key
    /// is `<alive_prefix><id>`, as the feature's scripts expect.
    pub fn keep_alive(&self, id: &str, alive_prefix: String) {
        self.shared
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id.into(), alive_prefix));
        // Alive from now, not from the next heartbeat (readers drop counts of ids not alive).
        let (shared, mut conn) = (self.shared.clone(), self.conn.clone());
        tokio::spawn(async move { keep_members(&shared, &mut conn).await });
    }

    /// The liveness arguments of a script that counts per node: on one Redis the prefix of
    /// the liveness keys (`alive_prefix`, checked with `EXISTS`); on a Redis Cluster `''` and
    /// then the ids known gone.
    pub fn liveness_args(&self, alive_prefix: &str) -> Vec<String> {
        if self.is_cluster() {
            let mut args = vec![String::new()];
            args.extend(self.shared.gone().iter().cloned());
            args
        } else {
            vec![alive_prefix.to_string()]
        }
    }

    /// Runs Redis call `op` with the broker's bound (1.5 s), counted on `/metrics`.
    pub async fn call<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        self.shared.call(op, call).await
    }

    /// Stream `key`'s hash tag (`<prefix>:{<stream id>}`): a feature's key that starts with it
    /// is in the stream's slot, so one script can change it and publish to the stream. The
    /// broker's own keys under it end in `:m`, `:h`, `:i:<key>` and `:c`.
    pub fn stream_tag(&self, key: &StreamKey) -> String {
        self.shared.keys.tag(key)
    }

    /// Runs `script`, a script composed with publish.lua, on stream `key`: its own keys and
    /// arguments (`own_keys`, `own_args`) first, then publish.lua's, with an empty payload
    /// that the script's own part supplies. Returns the script's answer; an outage is reported
    /// like a publish's.
    pub async fn publish_with(
        &self,
        op: &'static str,
        script: &Script,
        key: &StreamKey,
        own_keys: &[String],
        own_args: &[&[u8]],
    ) -> Result<String, BrokerError> {
        let call = self
            .shared
            .publish_call(script, key, b"", None, own_keys, own_args)?;
        let mut conn = self.conn.clone();
        self.shared.publish_invoke(op, call, &mut conn).await
    }
}

/// The Redis broker. See the module doc.
pub struct RedisBroker {
    shared: Arc<Shared>,
    conn: RedisConn,
    presence: mpsc::Sender<Op>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl RedisBroker {
    /// Connects lazily to `target` (the node starts even while Redis is down, and joins when
    /// it is up), registers with `registry` as its observer, and starts the subscription and
    /// presence tasks.
    pub fn start(
        target: &Target,
        prefix: &str,
        registry: Arc<Registry>,
        retention: Retention,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let (conn, subscriber) = match target {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1));
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
                    .map_err(unavailable)?;
                (RedisConn::Single(conn), Subscriber::Single(client))
            }
            Target::Cluster(urls) => {
                // Fails now on a malformed URL rather than in the connecting task.
                redis_conn::cluster_client(urls, CALL_TIMEOUT, None).map_err(unavailable)?;
                let slot = Arc::new(RwLock::new(None));
                tokio::spawn(redis_conn::connect_cluster(
                    slot.clone(),
                    urls.clone(),
                    CALL_TIMEOUT,
                ));
                (RedisConn::Cluster(slot), Subscriber::Cluster(urls.clone()))
            }
        };
        let shared = Arc::new(Shared {
            registry: registry.clone(),
            metrics,
            keys: Keys {
                prefix: prefix.into(),
                cluster: conn.is_cluster(),
            },
            retention,
            outage: Outage::default(),
            node: RwLock::new(None),
            boot: RwLock::new(None),
            reincarnate: Notify::new(),
            dirty: Arc::new(AtomicBool::new(false)),
            stopping: AtomicBool::new(false),
            members: Mutex::new(Vec::new()),
            gone: RwLock::new(Arc::new(Vec::new())),
            subscriber: Mutex::new(None),
            incarnations: Default::default(),
        });
        let (tx, rx) = mpsc::channel(PRESENCE_QUEUE);
        registry.set_observer(Arc::new(PresenceObserver {
            tx: tx.clone(),
            dirty: shared.dirty.clone(),
        }));
        let tasks = vec![
            tokio::spawn(presence_loop(shared.clone(), conn.clone(), rx)),
            tokio::spawn(subscribe_loop(shared.clone(), subscriber, tx.clone())),
        ];
        log::info!(
            "cluster broker: redis at {}, key prefix `{prefix}`",
            target.shown()
        );
        Ok(Arc::new(RedisBroker {
            shared,
            conn,
            presence: tx,
            tasks: Mutex::new(tasks),
        }))
    }

    async fn publish_now(
        &self,
        key: &StreamKey,
        msg: Message<'_>,
        idem: Option<&str>,
    ) -> Result<Published, BrokerError> {
        let payload = wire::encode_payload(key, &msg);
        let call = self
            .shared
            .publish_call(&PUBLISH, key, &payload, idem, &[], &[])?;
        let mut conn = self.conn.clone();
        let reply: String = self
            .shared
            .publish_invoke("publish", call, &mut conn)
            .await?;
        Ok(published(&reply))
    }

    async fn attach_now(
        &self,
        streams: &[Attach<'_>],
        positions: bool,
    ) -> Result<Option<Vec<Attached>>, BrokerError> {
        if self.shared.node().is_none() {
            return Err(unavailable("this node is not subscribed to redis"));
        }
        let (tx, rx) = oneshot::channel();
        let keys = streams.iter().map(|a| a.key.clone()).collect();
        self.presence
            .send(Op::Joined(keys, tx))
            .await
            .map_err(|_| unavailable("shutting down"))?;
        let now = match tokio::time::timeout(CALL_TIMEOUT * 2, rx).await {
            Ok(Ok(result)) => result?,
            _ => return Err(unavailable("presence write timed out")),
        };
        if !positions {
            return Ok(None);
        }
        let resumed: Vec<usize> = (0..streams.len())
            .filter(|&i| streams[i].since.is_some())
            .collect();
        let mut replays = HashMap::new();
        let keys = &self.shared.keys;
        let groups = batches(keys, resumed.iter().map(|&i| streams[i].key), usize::MAX);
        let calls = groups.iter().map(|group| {
            let mut call = REPLAY.prepare_invoke();
            call.arg(self.shared.retention.history_ttl.as_millis().max(1) as u64);
            for &g in group {
                let a = &streams[resumed[g]];
                call.key(keys.meta(a.key)).key(keys.hist(a.key));
                let since = a.since.flatten().map_or(String::new(), |p| p.to_string());
                call.arg(since).arg(now[resumed[g]].seq);
            }
            let mut conn = self.conn.clone();
            async move {
                self.shared
                    .call::<Vec<Value>>("replay", call.invoke_async(&mut conn))
                    .await
            }
        });
        let replies = futures_util::future::join_all(calls).await;
        for (group, reply) in groups.iter().zip(replies) {
            for (&g, value) in group.iter().zip(reply?) {
                let i = resumed[g];
                let replay =
                    replay_from(value, streams[i].key, streams[i].since.flatten(), now[i])?;
                replays.insert(i, replay);
            }
        }
        Ok(Some(
            now.into_iter()
                .enumerate()
                .map(|(i, position)| Attached {
                    position,
                    replay: replays.remove(&i),
                })
                .collect(),
        ))
    }
}

/// publish.lua's answer, `gen:seq:sockets:retained` (`r:` before it for a repeated
/// idempotency key), as a [`Published`].
pub fn published(reply: &str) -> Published {
    let (repeated, reply) = match reply.strip_prefix("r:") {
        Some(first) => (true, first),
        None => (false, reply),
    };
    let mut parts = reply
        .split(':')
        .skip(1)
        .map(|n| n.parse::<u64>().unwrap_or(0));
    let (seq, sockets, retained) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    Published {
        sockets: sockets as usize,
        seq,
        retained: retained == 1,
        repeated,
    }
}

/// Turns one stream's answer of `lua/replay.lua` into a [`Replay`] for a socket whose live
/// frames start after `now`.
fn replay_from(
    value: Value,
    key: &StreamKey,
    since: Option<Position>,
    now: Position,
) -> Result<Replay, BrokerError> {
    let bad = || unavailable("unexpected replay answer");
    let Value::Array(items) = value else {
        return Err(bad());
    };
    let mut items = items.into_iter();
    let generation = match items.next() {
        Some(Value::BulkString(g)) => parse_generation(&g),
        _ => None,
    };
    if generation != Some(now.generation) {
        // The stream was remade between the two calls: let the client retry.
        return Err(unavailable("stream changed while attaching"));
    }
    let int = |v: Option<Value>| match v {
        Some(Value::Int(n)) => Ok(n.max(0) as u64),
        _ => Err(bad()),
    };
    let _top = int(items.next())?;
    let oldest = int(items.next())?;
    let (from, gap_before) = plan_replay(since, now, oldest.min(now.seq + 1));
    let name = key.name();
    let mut frames = Vec::new();
    while let Some(seq) = items.next() {
        let seq = int(Some(seq))?;
        let Some(Value::BulkString(payload)) = items.next() else {
            return Err(bad());
        };
        if seq <= from || seq > now.seq {
            continue;
        }
        let (_, msg) = wire::decode_payload(&payload).ok_or_else(bad)?;
        frames.push(msg.stream_frame(seq, &name));
    }
    Ok(Replay { gap_before, frames })
}

fn parse_generation(g: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(g).ok()?, 16).ok()
}

/// `gen:seq` as the presence script answers it.
fn parse_position(s: &str) -> Option<Position> {
    let (g, n) = s.split_once(':')?;
    Some(Position {
        generation: parse_generation(g.as_bytes()).unwrap_or(0),
        seq: n.parse().ok()?,
    })
}

impl RedisBroker {
    /// What a feature with shared state of its own needs to keep it next to the broker's.
    pub fn handle(&self) -> RedisHandle {
        RedisHandle {
            conn: self.conn.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// Groups `streams` (by their index) into script calls: on one Redis, chunks of `max`; on a
/// Redis Cluster, streams of one slot together (a script's keys must share a slot), chunks of
/// `max` within it.
fn batches<'k>(
    keys: &Keys,
    streams: impl Iterator<Item = &'k StreamKey>,
    max: usize,
) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    if !keys.cluster {
        for (i, _) in streams.enumerate() {
            match out.last_mut() {
                Some(last) if last.len() < max => last.push(i),
                _ => out.push(vec![i]),
            }
        }
        return out;
    }
    let mut by_slot: HashMap<redis::cluster_routing::Slot, usize> = HashMap::new();
    for (i, key) in streams.enumerate() {
        let slot = redis_conn::slot_of(&keys.tag(key));
        match by_slot.get(&slot) {
            Some(&at) if out[at].len() < max => out[at].push(i),
            _ => {
                by_slot.insert(slot, out.len());
                out.push(vec![i]);
            }
        }
    }
    out
}

impl Shared {
    /// The node registry now: `(id, stats)` pairs of the live nodes (and members), and the ids
    /// found gone lately, which are remembered for scripts that count per node.
    async fn nodes(&self, conn: &mut RedisConn) -> Result<(Vec<String>, Vec<String>), BrokerError> {
        let keys = &self.keys;
        let mut call = NODES.key(keys.nodes());
        call.key(keys.gone())
            .arg(keys.alive_prefix())
            .arg(unix_ms())
            .arg(GONE_MS);
        let (live, gone): (Vec<String>, Vec<String>) =
            self.call("nodes", call.invoke_async(conn)).await?;
        *self.gone.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(gone.clone());
        Ok((live, gone))
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Broker for RedisBroker {
    fn publish<'a>(
        &'a self,
        key: &'a StreamKey,
        msg: Message<'a>,
        idempotency_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Published, BrokerError>> {
        Box::pin(self.publish_now(key, msg, idempotency_key))
    }

    fn attach<'a>(
        &'a self,
        streams: &'a [Attach<'a>],
        positions: bool,
    ) -> BoxFuture<'a, Result<Option<Vec<Attached>>, BrokerError>> {
        Box::pin(self.attach_now(streams, positions))
    }

    fn sockets_of<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<usize, BrokerError>> {
        Box::pin(async move {
            let keys = &self.shared.keys;
            let mut call = ONLINE.key(keys.meta(&StreamKey::User(uid.into())));
            if keys.cluster {
                call.arg("").arg(&*self.shared.gone());
            } else {
                call.arg(keys.alive_prefix());
            }
            let mut conn = self.conn.clone();
            let n: u64 = self
                .shared
                .call("online", call.invoke_async(&mut conn))
                .await?;
            Ok(n as usize)
        })
    }

    fn cluster(&self) -> BoxFuture<'_, Result<Option<ClusterView>, BrokerError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (reply, _gone) = self.shared.nodes(&mut conn).await?;
            // Other nodes' figures are as of their last heartbeat; this node's are live.
            let me = self.shared.node();
            let registry = &self.shared.registry;
            let (uids, topics) = registry.totals();
            let live = serde_json::json!({
                "sockets": registry.socket_count(), "uids": uids, "topics": topics,
            });
            let mut view = ClusterView::default();
            for pair in reply.chunks(2) {
                let [id, stats] = pair else { continue };
                if stats.is_empty() {
                    // A member that is no node (a Pusher store's id).
                    continue;
                }
                let stats = match &me {
                    Some(me) if **me == **id => live.clone(),
                    _ => serde_json::from_str(stats).unwrap_or_default(),
                };
                let n = |k: &str| stats[k].as_u64().unwrap_or(0) as usize;
                view.nodes += 1;
                view.sockets += n("sockets");
                view.uids += n("uids");
                view.topics += n("topics");
            }
            Ok(Some(view))
        })
    }

    fn history_bytes(&self) -> usize {
        0
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn command<'a>(&'a self, command: &'a Command) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let bytes = command.encode();
            let mut conn = self.conn.clone();
            let mut publish = redis::cmd("PUBLISH");
            publish.arg(self.shared.keys.control()).arg(bytes);
            self.shared
                .call("command", publish.query_async::<u64>(&mut conn))
                .await?;
            Ok(())
        })
    }

    fn is_ready(&self) -> bool {
        self.shared.node().is_some()
    }

    fn sweep(&self) {}

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shared.stopping.store(true, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            if self.presence.send(Op::Shutdown(tx)).await.is_ok() {
                let _ = tokio::time::timeout(CALL_TIMEOUT * 2, rx).await;
            }
            for task in self
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
            {
                task.abort();
            }
        })
    }
}

/// How a node hears what is published for it.
enum Subscriber {
    /// One Redis: its own channel, on a pub/sub connection of its own.
    Single(redis::Client),
    /// A Redis Cluster (seed URLs): each of its streams' shard channels, subscribed by the
    /// presence writer as streams gain followers here, on a RESP3 connection of its own.
    Cluster(Vec<String>),
}

/// What a node's subscription brings, one item at a time.
enum Heard {
    /// A message on one Redis's pub/sub connection.
    Message(redis::Msg),
    /// A push on a Redis Cluster's RESP3 connection: a message, a sharded message, or a
    /// disconnection.
    Push(redis::PushInfo),
}

/// A message's channel and payload.
type Parts<'a> = (&'a [u8], &'a [u8]);

impl Heard {
    /// The channel and payload of a message; `Err` with why the subscription is lost; `Ok(None)`
    /// for anything else.
    fn parts(&self) -> Result<Option<Parts<'_>>, &'static str> {
        match self {
            Heard::Message(msg) => Ok(Some((
                msg.get_channel_name().as_bytes(),
                msg.get_payload_bytes(),
            ))),
            Heard::Push(push) => match push.kind {
                redis::PushKind::Message | redis::PushKind::SMessage => match &push.data[..] {
                    [Value::BulkString(channel), Value::BulkString(payload), ..] => {
                        Ok(Some((channel, payload)))
                    }
                    _ => Ok(None),
                },
                redis::PushKind::Disconnection => Err("a connection to the redis cluster dropped"),
                _ => Ok(None),
            },
        }
    }
}

type Hearing = std::pin::Pin<Box<dyn futures_util::Stream<Item = Heard> + Send>>;

impl Subscriber {
    /// How long subscribing may take.
    fn timeout(&self) -> Duration {
        match self {
            Subscriber::Single(_) => CALL_TIMEOUT,
            Subscriber::Cluster(_) => CALL_TIMEOUT * 2,
        }
    }

    /// Subscribes to `channels` (classic pub/sub: on a cluster it reaches every master) on a
    /// connection of this incarnation's own, and returns what it hears. On a cluster the
    /// connection is also left in `shared.subscriber`, through which the presence writer
    /// `SSUBSCRIBE`s each stream's shard channel.
    async fn subscribe(
        &self,
        shared: &Shared,
        channels: &[&str],
    ) -> Result<Hearing, redis::RedisError> {
        match self {
            Subscriber::Single(client) => {
                let mut pubsub = client.get_async_pubsub().await?;
                for channel in channels {
                    pubsub.subscribe(*channel).await?;
                }
                Ok(Box::pin(pubsub.into_on_message().map(Heard::Message)))
            }
            Subscriber::Cluster(urls) => {
                let (tx, pushes) = mpsc::unbounded_channel();
                let client = redis_conn::cluster_client(urls, CALL_TIMEOUT, Some(tx))?;
                let mut conn = client.get_async_connection().await?;
                conn.subscribe(channels).await?;
                *shared.subscriber.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                let pushes = futures_util::stream::unfold(pushes, |mut pushes| async move {
                    let push = pushes.recv().await?;
                    Some((Heard::Push(push), pushes))
                });
                Ok(Box::pin(pushes))
            }
        }
    }
}

/// Keeps this node subscribed, one incarnation at a time: subscribes to the node's own channel
/// (`<prefix><incarnation>`) and the control channel, tells the presence writer the new
/// incarnation (which writes everything again, and on a cluster `SSUBSCRIBE`s each stream's
/// shard channel before its count), and hands what arrives to the registry (messages) or the
/// cluster commands (control). A lost connection, 15 s of silence (the heartbeat pings the
/// node's channel every 5 s), or the writer asking ends the incarnation; the next one starts
/// with backoff.
async fn subscribe_loop(shared: Arc<Shared>, subscriber: Subscriber, presence: mpsc::Sender<Op>) {
    let mut backoff = Duration::from_millis(100);
    let channel_prefix = shared.keys.channel_prefix();
    let control = shared.keys.control();
    while !shared.stopping.load(Ordering::Relaxed) {
        // A request to start over made before this attempt is already served by it.
        let _ = futures_util::FutureExt::now_or_never(shared.reincarnate.notified());
        let id = shared.next_incarnation();
        let own = format!("{channel_prefix}{id}");
        let channels = [own.as_str(), control.as_str()];
        let subscribed = subscriber.subscribe(&shared, &channels);
        let mut heard = match tokio::time::timeout(subscriber.timeout(), subscribed).await {
            Ok(Ok(heard)) => heard,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", subscriber.timeout()),
                };
                shared.outage.failed("subscribe", &why);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        if presence.send(Op::Incarnate(id.clone())).await.is_err() {
            return;
        }
        let lost = loop {
            tokio::select! {
                item = tokio::time::timeout(WATCHDOG, heard.next()) => match item {
                    Ok(Some(item)) => match item.parts() {
                        Ok(Some((channel, payload))) if channel == control.as_bytes() => {
                            Command::run_encoded(&shared.registry, payload);
                        }
                        Ok(Some((_, payload))) => deliver(&shared.registry, payload),
                        Ok(None) => {}
                        Err(why) => break Some(why),
                    },
                    Ok(None) => break Some("subscription connection closed"),
                    Err(_) => break Some("subscription silent for 15 s"),
                },
                // The writer already said why.
                _ = shared.reincarnate.notified() => break None,
            }
        };
        // Dropping the connection drops its subscriptions.
        drop(heard);
        shared
            .subscriber
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(why) = lost.filter(|_| !shared.stopping.load(Ordering::Relaxed)) {
            shared.end_incarnation(why);
            shared.outage.failed("subscription", &why);
            tokio::time::sleep(backoff).await;
        }
    }
}

/// Hands one message from another node (or this one) to the registry: `<gen>:<seq>:<payload>`.
fn deliver(registry: &Registry, bytes: &[u8]) {
    if bytes == b"ping" {
        return;
    }
    let parsed = (|| {
        let mut parts = bytes.splitn(3, |&b| b == b':');
        let generation = parse_generation(parts.next()?)?;
        let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let (key, msg) = wire::decode_payload(parts.next()?)?;
        Some((Position { generation, seq }, key, msg))
    })();
    match parsed {
        Some((pos, key, msg)) => {
            registry.deliver(&key, pos, &msg, None);
        }
        None => log::warn!(
            "ignored a malformed message from redis ({} bytes)",
            bytes.len()
        ),
    }
}

/// The one writer of this node's presence: coalesces joins and leaves, writes absolute counts
/// read from the registry, answers joins with their streams' positions, announces everything
/// at each incarnation, rewrites each stream once per third of [`PRESENCE_TTL`] (a slice of
/// them at each heartbeat, so the load at rest is even), and keeps the liveness key.
async fn presence_loop(shared: Arc<Shared>, conn: RedisConn, mut rx: mpsc::Receiver<Op>) {
    let mut writer = PresenceWriter {
        shared: shared.clone(),
        conn,
        node: None,
        subscribed: HashSet::new(),
        retry: HashSet::new(),
        beat: Instant::now(),
    };
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Every stream is rewritten once per `slices` heartbeats, a slice each time.
    let slices = (shared.presence_ttl().as_secs() / 3 / HEARTBEAT.as_secs()).max(1);
    let mut tick: u64 = 0;
    loop {
        let mut pending: HashSet<StreamKey> = HashSet::new();
        let mut waiters = Vec::new();
        let mut op = tokio::select! {
            op = rx.recv() => op,
            _ = heartbeat.tick() => {
                tick += 1;
                writer.keep_members().await;
                if writer.node.is_some() {
                    // Presence updates that were dropped (a full queue): all; else a slice.
                    let slice = if shared.dirty.swap(false, Ordering::Relaxed) {
                        None
                    } else {
                        Some((tick % slices, slices))
                    };
                    // On a Redis Cluster a slot move can drop a shard subscription's messages
                    // unseen; comparing positions finds such a stream.
                    let check = shared.keys.cluster;
                    writer.refresh(slice, check).await;
                    writer.heartbeat().await;
                }
                continue;
            }
        };
        // Everything already queued goes into this one write.
        loop {
            match op {
                None => return,
                Some(Op::Left(key)) => {
                    pending.insert(key);
                }
                Some(Op::Joined(keys, reply)) => {
                    pending.extend(keys.iter().cloned());
                    waiters.push((keys, reply));
                }
                Some(Op::Incarnate(id)) => {
                    writer.incarnate(id).await;
                }
                Some(Op::Shutdown(done)) => {
                    writer.flush(pending, waiters).await;
                    writer.leave().await;
                    let _ = done.send(());
                    return;
                }
            }
            if pending.len() >= PRESENCE_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(next) => op = Some(next),
                Err(_) => break,
            }
        }
        writer.flush(pending, waiters).await;
    }
}

type Waiter = (
    Vec<StreamKey>,
    oneshot::Sender<Result<Vec<Position>, BrokerError>>,
);

struct PresenceWriter {
    shared: Arc<Shared>,
    conn: RedisConn,
    /// Streams whose last write failed: written again with the next one.
    retry: HashSet<StreamKey>,
    /// When the liveness key was last renewed.
    beat: Instant,
    /// The incarnation this writer announces under (`None` between incarnations).
    node: Option<Arc<str>>,
    /// On a Redis Cluster: the streams whose shard channel this incarnation subscribes to.
    subscribed: HashSet<StreamKey>,
}

impl PresenceWriter {
    /// Writes the current count of each stream in `keys` under this incarnation and returns
    /// each stream's position. On a Redis Cluster, a stream that gained its first follower here
    /// is subscribed to first (so a publish after its position reaches this node), and one
    /// that lost its last is unsubscribed from after.
    async fn write(&mut self, keys: &[StreamKey]) -> Result<Vec<Position>, BrokerError> {
        let node = self
            .node
            .clone()
            .ok_or_else(|| unavailable("this node is not subscribed to redis"))?;
        let boot = self.shared.boot().unwrap_or_default();
        let k = &self.shared.keys;
        let counts: Vec<usize> = keys
            .iter()
            .map(|key| self.shared.registry.followers(key))
            .collect();
        if k.cluster {
            let new: Vec<&StreamKey> = keys
                .iter()
                .zip(&counts)
                .filter(|(key, &n)| n > 0 && !self.subscribed.contains(*key))
                .map(|(key, _)| key)
                .collect();
            self.shard_subscription(&new, true).await?;
            self.subscribed.extend(new.into_iter().cloned());
        }
        let groups = batches(k, keys.iter(), PRESENCE_BATCH);
        let field = format!("n:{node}");
        let calls = groups.iter().map(|group| {
            let mut call = PRESENCE.prepare_invoke();
            call.arg(&field)
                .arg(self.shared.presence_ttl().as_secs())
                .arg(random_hex())
                .arg(&*boot)
                .arg(self.shared.meta_ttl_secs());
            for &i in group {
                call.key(k.meta(&keys[i])).key(k.hist(&keys[i]));
                call.arg(counts[i]);
            }
            let mut conn = self.conn.clone();
            let shared = &self.shared;
            async move {
                shared
                    .call::<Vec<String>>("presence", call.invoke_async(&mut conn))
                    .await
            }
        });
        let replies = futures_util::future::join_all(calls).await;
        let mut positions = vec![
            Position {
                generation: 0,
                seq: 0
            };
            keys.len()
        ];
        for (group, reply) in groups.iter().zip(replies) {
            for (&i, p) in group.iter().zip(reply?) {
                if let Some(p) = parse_position(&p) {
                    positions[i] = p;
                }
            }
        }
        if k.cluster {
            let left: Vec<&StreamKey> = keys
                .iter()
                .zip(&counts)
                .filter(|(key, &n)| n == 0 && self.subscribed.contains(*key))
                .map(|(key, _)| key)
                .collect();
            for key in &left {
                self.subscribed.remove(*key);
            }
            // A failure leaves a subscription whose messages find no follower: harmless.
            let _ = self.shard_subscription(&left, false).await;
        }
        Ok(positions)
    }

    /// `SSUBSCRIBE` (or `SUNSUBSCRIBE`) the shard channels of `streams` on this incarnation's
    /// connection, one command per slot, bounded like every call.
    async fn shard_subscription(
        &self,
        streams: &[&StreamKey],
        subscribe: bool,
    ) -> Result<(), BrokerError> {
        if streams.is_empty() {
            return Ok(());
        }
        let conn = self
            .shared
            .subscriber()
            .ok_or_else(|| unavailable("this node is not subscribed to redis"))?;
        let k = &self.shared.keys;
        let groups = batches(k, streams.iter().copied(), PRESENCE_BATCH);
        let calls = groups.iter().map(|group| {
            let channels: Vec<String> =
                group.iter().map(|&i| k.shard_channel(streams[i])).collect();
            let mut conn = conn.clone();
            async move {
                if subscribe {
                    self.shared
                        .call("ssubscribe", conn.ssubscribe(channels))
                        .await
                } else {
                    self.shared
                        .call("sunsubscribe", conn.sunsubscribe(channels))
                        .await
                }
            }
        });
        for result in futures_util::future::join_all(calls).await {
            result?;
        }
        Ok(())
    }

    /// Writes `pending` (and the waiters' streams) and answers the waiters. A failure ends the
    /// incarnation: what Redis holds for this node is no longer known.
    /// A failed write is tried again with the next one (counts are absolute, so a repeat is
    /// harmless); the waiters get the error (503). What Redis holds for this node is in doubt
    /// only when its subscription or its liveness is, which end the incarnation elsewhere.
    async fn flush(&mut self, mut pending: HashSet<StreamKey>, waiters: Vec<Waiter>) {
        if self.node.is_some() {
            pending.extend(self.retry.drain());
        }
        if pending.is_empty() && waiters.is_empty() {
            return;
        }
        let keys: Vec<StreamKey> = pending.into_iter().collect();
        match self.write(&keys).await {
            Ok(positions) => {
                self.shared.outage.ok();
                let at: HashMap<&StreamKey, Position> = keys.iter().zip(positions).collect();
                for (wanted, reply) in waiters {
                    let _ = reply.send(Ok(wanted.iter().map(|k| at[k]).collect()));
                }
            }
            Err(e) => {
                if self.node.is_some() {
                    self.shared.outage.failed("presence", &e);
                    self.retry.extend(keys);
                }
                for (_, reply) in waiters {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Rewrites the streams of `slice` (`(i, n)`: those whose hash is `i` modulo `n`; `None`:
    /// all), and any whose last write failed. With `check`, compares each one's position with
    /// what this node last delivered, and makes its resumable sockets resync if it moved on.
    async fn refresh(&mut self, slice: Option<(u64, u64)>, check: bool) {
        use std::hash::BuildHasher;
        let hasher =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        let mut keys: Vec<StreamKey> = self
            .shared
            .registry
            .streams()
            .into_iter()
            .map(|(k, _, _)| k)
            .filter(|k| slice.is_none_or(|(i, n)| hasher.hash_one(k) % n == i))
            .collect();
        let mut retry: HashSet<StreamKey> = self.retry.drain().collect();
        keys.retain(|k| !retry.contains(k));
        keys.extend(retry.drain());
        if keys.is_empty() {
            return;
        }
        match self.write(&keys).await {
            Ok(positions) => {
                self.shared.outage.ok();
                if check {
                    for (key, pos) in keys.iter().zip(positions) {
                        self.shared.registry.resync_if_behind(key, pos);
                    }
                }
            }
            Err(e) => {
                self.shared.outage.failed("presence", &e);
                self.retry.extend(keys);
            }
        }
    }

    /// Becomes node `id`: reads the generation guard, announces every stream this node has,
    /// makes resumable sockets of streams that moved on meanwhile resync, then lets sockets
    /// connect.
    async fn incarnate(&mut self, id: Arc<str>) {
        let old = self.node.take();
        // A new subscription connection: it holds no shard subscription yet.
        self.subscribed.clear();
        let boot = match self.shared.call("info", read_boot(&mut self.conn)).await {
            Ok(boot) => boot,
            Err(e) => {
                self.shared.outage.failed("INFO", &e);
                self.shared
                    .reincarnate("could not read the server's identity");
                return;
            }
        };
        *self.shared.boot.write().unwrap_or_else(|p| p.into_inner()) = Some(boot.into());
        self.node = Some(id.clone());
        if !self.announce_all(true).await {
            return;
        }
        *self.shared.node.write().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        // Not registered yet: if this first beat fails (a cluster connection still coming up),
        // join again at once rather than stay out of /stats until the next beat.
        self.beat = Instant::now()
            .checked_sub(Duration::from_secs(ALIVE_TTL_SECS))
            .unwrap_or_else(Instant::now);
        self.heartbeat().await;
        if let Some(old) = old {
            self.forget(&old).await;
        }
        if self.node.is_some() {
            self.shared.outage.ok();
            log::info!("joined the cluster as node {id}");
        }
    }

    /// Writes every local stream's count. With `check`, compares each stream's position with
    /// what this node last delivered, and makes its resumable sockets resync if it moved on.
    async fn announce_all(&mut self, check: bool) -> bool {
        let streams = self.shared.registry.streams();
        let keys: Vec<StreamKey> = streams.iter().map(|(k, _, _)| k.clone()).collect();
        match self.write(&keys).await {
            Ok(positions) => {
                if check {
                    for (key, pos) in keys.iter().zip(positions) {
                        self.shared.registry.resync_if_behind(key, pos);
                    }
                }
                true
            }
            Err(e) => {
                self.shared.outage.failed("announce", &e);
                self.node = None;
                self.shared
                    .reincarnate("announcing this node's streams failed");
                false
            }
        }
    }

    /// See [`keep_members`].
    async fn keep_members(&mut self) {
        keep_members(&self.shared, &mut self.conn).await;
    }

    /// Renews the liveness key with this node's figures and pings its own channel (the
    /// subscription's watchdog hears it).
    async fn heartbeat(&mut self) {
        let Some(node) = self.node.clone() else {
            return;
        };
        if self.shared.node().as_deref() != Some(&*node) {
            // This incarnation is over (its subscription dropped): let it expire.
            return;
        }
        let registry = &self.shared.registry;
        let (uids, topics) = registry.totals();
        let stats = serde_json::json!({
            "sockets": registry.socket_count(), "uids": uids, "topics": topics,
        })
        .to_string();
        let k = &self.shared.keys;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(format!("{}{node}", k.alive_prefix()))
            .arg(stats)
            .arg("EX")
            .arg(ALIVE_TTL_SECS)
            .ignore()
            .cmd("HSET")
            .arg(k.nodes())
            .arg(&*node)
            .arg(1)
            .ignore()
            // A prefix whose nodes are all gone disappears by itself.
            .cmd("EXPIRE")
            .arg(k.nodes())
            .arg(ALIVE_TTL_SECS * 4)
            .ignore();
        let mut ping = redis::cmd("PUBLISH");
        ping.arg(format!("{}{node}", k.channel_prefix()))
            .arg("ping");
        // A cluster routes PUBLISH by its channel, as if it were a key of another slot.
        if !k.cluster {
            pipe.add_command(ping.clone()).ignore();
        }
        let beat = async {
            pipe.query_async::<()>(&mut self.conn).await?;
            if k.cluster {
                ping.query_async::<()>(&mut self.conn).await?;
            }
            Ok(())
        };
        if let Err(e) = self.shared.call("heartbeat", beat).await {
            self.shared.outage.failed("heartbeat", &e);
            // Others take this node for dead once its liveness key expires: before it may
            // have, join again rather than risk it; until then the next beat may do.
            if self.beat.elapsed() + HEARTBEAT * 2 >= Duration::from_secs(ALIVE_TTL_SECS) {
                self.node = None;
                self.shared.reincarnate("heartbeats failed for 10 s");
            }
        } else {
            self.beat = Instant::now();
        }
    }

    /// Removes a past incarnation's liveness, so nobody counts it any more.
    async fn forget(&mut self, node: &str) {
        let k = &self.shared.keys;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(format!("{}{node}", k.alive_prefix()))
            .ignore()
            .cmd("HDEL")
            .arg(k.nodes())
            .arg(node)
            .ignore()
            // Scripts on a Redis Cluster drop its counts from this list.
            .cmd("ZADD")
            .arg(k.gone())
            .arg(unix_ms())
            .arg(node)
            .ignore();
        let _ = self
            .shared
            .call("forget", pipe.query_async::<()>(&mut self.conn))
            .await;
    }

    /// Shutting down: this node's counts are gone from every stream it had, and so is it.
    async fn leave(&mut self) {
        if let Some(node) = self.node.take() {
            self.forget(&node).await;
        }
    }
}

/// Renews the liveness keys of the ids this process keeps alive besides its incarnation
/// (see [`RedisHandle::keep_alive`]); on a Redis Cluster also learns which nodes are gone.
async fn keep_members(shared: &Shared, conn: &mut RedisConn) {
    let members = shared
        .members
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let k = &shared.keys;
    if !members.is_empty() {
        let mut pipe = redis::pipe();
        for (id, single_prefix) in &members {
            if k.cluster {
                pipe.cmd("SET")
                    .arg(format!("{}{id}", k.alive_prefix()))
                    .arg("")
                    .arg("EX")
                    .arg(ALIVE_TTL_SECS)
                    .ignore()
                    .cmd("HSET")
                    .arg(k.nodes())
                    .arg(&**id)
                    .arg(1)
                    .ignore();
            } else {
                pipe.cmd("SET")
                    .arg(format!("{single_prefix}{id}"))
                    .arg(1)
                    .arg("EX")
                    .arg(ALIVE_TTL_SECS)
                    .ignore();
            }
        }
        if let Err(e) = shared
            .call("keep_alive", pipe.query_async::<()>(&mut *conn))
            .await
        {
            log::debug!("renewing liveness failed: {e}");
        }
    }
    if k.cluster {
        if let Err(e) = shared.nodes(conn).await {
            log::debug!("reading the node registry failed: {e}");
        }
    }
}

/// The generation guard: "" if Redis persists every write before answering (a restart keeps
/// every number), else its run_id, so any restart mints new generations.
/// On a Redis Cluster each master has its own: `?`, which the scripts read as "this server's
/// run_id" (a failover or a restart of the stream's master starts new generations).
async fn read_boot(conn: &mut RedisConn) -> redis::RedisResult<String> {
    if conn.is_cluster() {
        return Ok("?".to_string());
    }
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let run_id = info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let durable = async {
        let aof: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(conn)
            .await?;
        let fsync: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async(conn)
            .await?;
        Ok::<_, redis::RedisError>(
            aof.get(1).is_some_and(|v| v == "yes") && fsync.get(1).is_some_and(|v| v == "always"),
        )
    };
    // CONFIG may be disabled (managed Redis): then assume it is not durable.
    Ok(if durable.await.unwrap_or(false) {
        String::new()
    } else {
        run_id
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_from_redis_are_parsed_or_ignored() {
        let registry = Arc::new(Registry::new(crate::registry::tests::frames(8)));
        let m = registry.join(crate::registry::Subscription::seed("a"));
        let raw = serde_json::value::RawValue::from_string("7".into()).unwrap();
        let payload = wire::encode_payload(&StreamKey::User("a".into()), &Message::new("t", &raw));
        let mut bytes = b"00000000000000ab:1:".to_vec();
        bytes.extend_from_slice(&payload);
        deliver(&registry, &bytes);
        deliver(&registry, b"ping");
        deliver(&registry, b"zz:1:junk");
        deliver(&registry, b"00000000000000ab:x:3:u:a1:t7");
        let got = m.outbox().pop().unwrap();
        assert_eq!(got.as_str(), r#"{"topic":"t","number":1,"contents":7}"#);
        assert!(m.outbox().pop().is_none());
    }
}
