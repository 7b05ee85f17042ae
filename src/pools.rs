//! Data pools (seed 000's REST resource per pool): a topic that also holds a JSON document.
//!
//! `PUT` replaces the document, `POST` appends to it (an array), `DELETE` removes it; each
//! change is published to the pool's topic as `<pool>:add` (the pool did not exist: the whole
//! new document), `<pool>:update` (the whole document), `<pool>:append` (the appended value)
//! or `<pool>:delete`. The document remembers the stream number of its last change.
//!
//! **No race between snapshot and changes.** A change takes the pool's lock, publishes, stores
//! the document, and only then unlocks. A page that follows the topic (its key grants it, or
//! the backend moved it there) takes the same lock, reads the document and asks the broker
//! where the topic's stream stands (`P`), then unlocks: the document holds exactly the changes
//! numbered up to `P`. Its live frames up to `P` are dropped, and the snapshot frame says
//! `number: P`; every later change reaches it once, after the snapshot.
//!
//! On a single node the lock is a tokio mutex and documents are in memory. With `redis_url`
//! the lock is a Redis key (`SET NX PX`) and the document a hash beside it
//! (`<prefix>:pool:{<name>}`, fields `doc` and `seq`), with the set of pools
//! (`<prefix>:pools`) for the count bound: any node may change or read any pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use serde_json::value::RawValue;

use crate::broker::redis::RedisHandle;
use crate::broker::redis_conn::tag_part;
use crate::broker::{Attach, BrokerError, Published};
use crate::hub::Hub;
use crate::wire::{Message, Position, StreamKey};

/// How long a change may hold a pool's Redis lock (it is released as soon as it is done; this
/// only bounds how long a node that died holding it blocks the pool). Longer than the three
/// bounded Redis calls a change makes.
const LOCK_MS: u64 = 10_000;
/// Locks of in-memory pools: a pool hashes to one of these, so changes to different pools
/// rarely wait for each other, and the locks take no memory per pool.
const STRIPES: usize = 64;
/// How long a change or a snapshot waits for another change to finish before giving up (503).
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Releases a lock only if it is still ours.
static UNLOCK: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("broker/lua/pool_unlock.lua")));

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
    /// Another change held the pool for too long.
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

enum Store {
    /// Documents by pool; a std mutex for map operations only, and striped tokio ones that a
    /// change holds across its publish (so a snapshot of that pool waits for it).
    Memory {
        docs: std::sync::Mutex<HashMap<String, Doc>>,
        changing: Box<[tokio::sync::Mutex<()>]>,
    },
    Redis(RedisHandle),
}

/// A pool held against changes.
enum Held<'a> {
    Memory(tokio::sync::MutexGuard<'a, ()>),
    Redis { lock: String, token: u64 },
}

/// The pools of this node, or of the cluster. See the module doc.
pub struct Pools {
    store: Store,
    bounds: crate::live::Live<Bounds>,
}

/// What a change published.
#[derive(Debug)]
pub struct Changed {
    /// `add`, `update`, `append` or `delete`.
    pub event: &'static str,
    /// The publish's outcome.
    pub published: Published,
}

impl Pools {
    /// Pools in memory.
    pub fn memory(bounds: Bounds) -> Pools {
        Pools {
            store: Store::Memory {
                docs: std::sync::Mutex::default(),
                changing: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            },
            bounds: crate::live::Live::new(bounds),
        }
    }

    /// Pools in the cluster's Redis.
    pub fn redis(redis: RedisHandle, bounds: Bounds) -> Pools {
        Pools {
            store: Store::Redis(redis),
            bounds: crate::live::Live::new(bounds),
        }
    }

    /// New bounds for the changes that come next (a config reload); nothing kept is dropped.
    pub fn set_bounds(&self, bounds: Bounds) {
        self.bounds.set(bounds);
    }

    fn keys(redis: &RedisHandle, name: &str) -> (String, String) {
        let doc = format!("{}:pool:{{{}}}", redis.prefix(), tag_part(name));
        let lock = format!("{doc}:lock");
        (doc, lock)
    }

    fn set(redis: &RedisHandle) -> String {
        format!("{}:pools", redis.prefix())
    }

    /// The document of pool `name` now (`GET`), without waiting for a change in flight.
    pub async fn get(&self, name: &str) -> Result<Option<Doc>, BrokerError> {
        match &self.store {
            Store::Memory { docs, .. } => Ok(docs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .cloned()),
            Store::Redis(redis) => {
                let (key, _) = Pools::keys(redis, name);
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(&key).arg("doc").arg("seq");
                let mut conn = redis.conn.clone();
                let (doc, seq): (Option<String>, Option<u64>) =
                    redis.call("pool_get", cmd.query_async(&mut conn)).await?;
                Ok(doc.map(|json| Doc {
                    json: json.into(),
                    seq: seq.unwrap_or(0),
                }))
            }
        }
    }

    /// Which of `names` are pools (one store call at most).
    pub async fn which(&self, names: &[&str]) -> Result<Vec<bool>, BrokerError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        match &self.store {
            Store::Memory { docs, .. } => {
                let docs = docs.lock().unwrap_or_else(|p| p.into_inner());
                Ok(names.iter().map(|n| docs.contains_key(*n)).collect())
            }
            Store::Redis(redis) => {
                let mut cmd = redis::cmd("SMISMEMBER");
                cmd.arg(Pools::set(redis)).arg(names);
                let mut conn = redis.conn.clone();
                let found: Vec<bool> = redis.call("pool_which", cmd.query_async(&mut conn)).await?;
                Ok(found)
            }
        }
    }

    /// Holds pool `name` against changes (waiting up to [`LOCK_WAIT`] for one in flight).
    async fn lock(&self, name: &str) -> Result<Held<'_>, PoolError> {
        match &self.store {
            Store::Memory { changing, .. } => {
                let stripe = &changing[stripe(name)];
                tokio::time::timeout(LOCK_WAIT, stripe.lock())
                    .await
                    .map(Held::Memory)
                    .map_err(|_| PoolError::Busy)
            }
            Store::Redis(redis) => {
                let (_, lock) = Pools::keys(redis, name);
                let token: u64 = rand::random();
                let deadline = tokio::time::Instant::now() + LOCK_WAIT;
                loop {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&lock).arg(token).arg("NX").arg("PX").arg(LOCK_MS);
                    let mut conn = redis.conn.clone();
                    let got: Option<String> =
                        redis.call("pool_lock", cmd.query_async(&mut conn)).await?;
                    if got.is_some() {
                        return Ok(Held::Redis { lock, token });
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(PoolError::Busy);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    async fn unlock(&self, held: Held<'_>) {
        let (redis, lock, token) = match (&self.store, held) {
            (_, Held::Memory(guard)) => return drop(guard),
            (Store::Redis(redis), Held::Redis { lock, token }) => (redis, lock, token),
            (Store::Memory { .. }, Held::Redis { .. }) => {
                unreachable!("a memory store locks in memory")
            }
        };
        let mut call = UNLOCK.key(&lock);
        call.arg(token);
        let mut conn = redis.conn.clone();
        // If this fails the lock expires by itself after LOCK_MS.
        let _ = redis
            .call("pool_unlock", call.invoke_async::<i64>(&mut conn))
            .await;
    }

    /// For a page that follows pool `name`'s topic now: the document and the stream position
    /// it is exact at (`None` if there is no such pool). The caller drops the page's live
    /// frames up to that position.
    pub async fn snapshot(
        &self,
        hub: &Hub,
        name: &str,
    ) -> Result<Option<(Doc, Position)>, PoolError> {
        let held = self.lock(name).await?;
        let result = async {
            let Some(doc) = self.get(name).await? else {
                return Ok(None);
            };
            let key = StreamKey::Topic(name.into());
            let attach = [Attach {
                key: &key,
                since: None,
            }];
            let at = hub.broker().attach(&attach, true).await?;
            let position = at.and_then(|a| a.first().map(|a| a.position));
            Ok(position.map(|p| (doc, p)))
        }
        .await;
        self.unlock(held).await;
        result
    }

    /// Applies `change` to pool `name` and publishes its event to the pool's topic.
    pub async fn change(
        &self,
        hub: &Hub,
        name: &str,
        change: Change<'_>,
    ) -> Result<Changed, PoolError> {
        let held = self.lock(name).await?;
        let result = self.locked_change(hub, name, change).await;
        self.unlock(held).await;
        result
    }

    /// [`Pools::change`] with the pool's lock held.
    async fn locked_change(
        &self,
        hub: &Hub,
        name: &str,
        change: Change<'_>,
    ) -> Result<Changed, PoolError> {
        let old = self.get(name).await?;
        let (event, doc, contents): (&'static str, Option<String>, String) = match change {
            Change::Put(value) => {
                let event = if old.is_some() { "update" } else { "add" };
                (event, Some(value.get().to_owned()), value.get().to_owned())
            }
            Change::Append(value) => match &old {
                None => {
                    let doc = format!("[{}]", value.get());
                    ("add", Some(doc.clone()), doc)
                }
                Some(old) => {
                    let mut items: Vec<&RawValue> =
                        serde_json::from_str(&old.json).map_err(|_| PoolError::NotArray)?;
                    items.push(value);
                    let doc = serde_json::to_string(&items).expect("serializes");
                    ("append", Some(doc), value.get().to_owned())
                }
            },
            Change::Delete => {
                if old.is_none() {
                    return Err(PoolError::NotFound);
                }
                ("delete", None, "null".to_owned())
            }
        };
        if let Some(doc) = &doc {
            let bounds = *self.bounds.get();
            if doc.len() > bounds.max_bytes {
                return Err(PoolError::TooLarge(bounds.max_bytes));
            }
            if old.is_none() && self.count().await? >= bounds.max_pools {
                return Err(PoolError::Full(bounds.max_pools));
            }
        }
        let topic = format!("{name}:{event}");
        let raw: &RawValue = serde_json::from_str(&contents).expect("built from JSON");
        let key = StreamKey::Topic(name.into());
        let published = hub.publish(&key, Message::new(&topic, raw), None).await?;
        self.store(name, doc, published.seq).await?;
        Ok(Changed { event, published })
    }

    async fn count(&self) -> Result<usize, BrokerError> {
        match &self.store {
            Store::Memory { docs, .. } => Ok(docs.lock().unwrap_or_else(|p| p.into_inner()).len()),
            Store::Redis(redis) => {
                let mut cmd = redis::cmd("SCARD");
                cmd.arg(Pools::set(redis));
                let mut conn = redis.conn.clone();
                redis.call("pool_count", cmd.query_async(&mut conn)).await
            }
        }
    }

    async fn store(&self, name: &str, doc: Option<String>, seq: u64) -> Result<(), BrokerError> {
        match &self.store {
            Store::Memory { docs, .. } => {
                let mut docs = docs.lock().unwrap_or_else(|p| p.into_inner());
                match doc {
                    Some(json) => {
                        docs.insert(
                            name.to_owned(),
                            Doc {
                                json: json.into(),
                                seq,
                            },
                        );
                    }
                    None => {
                        docs.remove(name);
                    }
                }
                Ok(())
            }
            Store::Redis(redis) => {
                let (key, _) = Pools::keys(redis, name);
                let mut pipe = redis::pipe();
                let mut set = redis::cmd(if doc.is_some() { "SADD" } else { "SREM" });
                set.arg(Pools::set(redis)).arg(name);
                match doc {
                    Some(json) => {
                        pipe.cmd("HSET")
                            .arg(&key)
                            .arg("doc")
                            .arg(json)
                            .arg("seq")
                            .arg(seq)
                            .ignore();
                    }
                    None => {
                        pipe.cmd("DEL").arg(&key).ignore();
                    }
                }
                let mut conn = redis.conn.clone();
                // The set of pools is in another slot than the document on a Redis Cluster.
                if redis.is_cluster() {
                    redis
                        .call("pool_store", set.query_async::<()>(&mut conn))
                        .await?;
                } else {
                    pipe.add_command(set).ignore();
                }
                redis
                    .call("pool_store", pipe.query_async::<()>(&mut conn))
                    .await
            }
        }
    }
}

/// The in-memory lock stripe of pool `name`.
fn stripe(name: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
    (hash % STRIPES as u64) as usize
}
