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
//! On a single node documents are in memory, and that one step is a striped tokio mutex that a
//! change holds across its publish and a snapshot across its read (no network call inside).
//!
//! With Redis (one, or a Redis Cluster) any node may change or read any pool, and the one step
//! is one Lua script: `lua/pool_change.lua`, composed at build time with `lua/publish.lua` (one
//! copy of the publish logic: numbering, history, fan-out, generation guard), reads the
//! document, checks it, publishes the event and stores the new document with its number;
//! `lua/pool_snapshot.lua` reads the document and the stream's position. No lock key, so a
//! dropped request or a node that dies mid-change leaves nothing to wait for: the script ran
//! whole or not at all. The document is a hash (`doc`, `seq`) under the topic stream's hash
//! tag, `<prefix>:{t:<name>}:p`, in the stream's slot on a Redis Cluster. The set of pools
//! (`<prefix>:pools`, for `pool_max` and for telling pools from plain topics) is changed by the
//! same script on one Redis; on a Redis Cluster it is in another slot, so it is counted before
//! and written right after the script (by a task that a dropped request does not cancel), and
//! `pool_max` may be passed by pools created at the same moment on different nodes.
//!
//! **Documents under the old key name.** Before, a document was `<prefix>:pool:{<name>}`. A
//! change, snapshot or read that finds no document moves one from there first
//! (`lua/pool_adopt.lua`): atomically on one Redis; on a Redis Cluster (another slot) by
//! reading it, writing it under the new name unless a document is there already, then deleting
//! it. See the README's migration notes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use serde_json::value::RawValue;

use crate::broker::redis::{published, RedisHandle};
use crate::broker::redis_conn::tag_part;
use crate::broker::{Attach, BrokerError, Published};
use crate::hub::Hub;
use crate::wire::{self, Message, Position, StreamKey};

/// Locks of in-memory pools: a pool hashes to one of these, so changes to different pools
/// rarely wait for each other, and the locks take no memory per pool.
const STRIPES: usize = 64;
/// How long an in-memory change or snapshot waits for another change to finish before giving
/// up (503).
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// A pool change, whole: `lua/pool_change.lua` after `lua/publish.lua` made a function, so the
/// change publishes exactly as a push does, from the one copy of that script.
static CHANGE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(concat!(
        "local function publish(KEYS, ARGV)\n",
        include_str!("broker/lua/publish.lua"),
        "\nend\n",
        include_str!("broker/lua/pool_change.lua"),
    ))
});
/// A document and its stream's position, read together.
static SNAPSHOT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("broker/lua/pool_snapshot.lua")));
/// Moves a document from its old key name.
static ADOPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("broker/lua/pool_adopt.lua")));

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

enum Store {
    /// Documents by pool; a std mutex for map operations only, and striped tokio ones that a
    /// change holds across its publish (so a snapshot of that pool waits for it).
    Memory {
        docs: std::sync::Mutex<HashMap<String, Doc>>,
        changing: Box<[tokio::sync::Mutex<()>]>,
    },
    Redis(RedisHandle),
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

/// A pool's Redis keys.
struct Keys {
    /// Its document, under its topic stream's hash tag.
    doc: String,
    /// Where its document was before it moved there.
    old: String,
    /// Its topic's stream.
    stream: StreamKey,
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

    fn keys(redis: &RedisHandle, name: &str) -> Keys {
        let stream = StreamKey::Topic(name.into());
        Keys {
            doc: format!("{}:p", redis.stream_tag(&stream)),
            old: format!("{}:pool:{{{}}}", redis.prefix(), tag_part(name)),
            stream,
        }
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
                let keys = Pools::keys(redis, name);
                let doc = Pools::read(redis, &keys).await?;
                if doc.is_some() || !Pools::adopt(redis, name, &keys).await? {
                    return Ok(doc);
                }
                Pools::read(redis, &keys).await
            }
        }
    }

    async fn read(redis: &RedisHandle, keys: &Keys) -> Result<Option<Doc>, BrokerError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&keys.doc).arg("doc").arg("seq");
        let mut conn = redis.conn.clone();
        let (doc, seq): (Option<String>, Option<u64>) =
            redis.call("pool_get", cmd.query_async(&mut conn)).await?;
        Ok(doc.map(|json| Doc {
            json: json.into(),
            seq: seq.unwrap_or(0),
        }))
    }

    /// Moves pool `name`'s document from its old key name, if it is there; whether one was
    /// moved. On a Redis Cluster the move is three calls in two slots, made by a task of its own
    /// so that a dropped request cannot stop it half-way.
    async fn adopt(redis: &RedisHandle, name: &str, keys: &Keys) -> Result<bool, BrokerError> {
        if !redis.is_cluster() {
            let mut call = ADOPT.key(&keys.doc);
            call.key(&keys.old);
            let mut conn = redis.conn.clone();
            let moved: i64 = redis
                .call("pool_adopt", call.invoke_async(&mut conn))
                .await?;
            return Ok(moved == 1);
        }
        let (redis, doc_key, old) = (redis.clone(), keys.doc.clone(), keys.old.clone());
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let mut conn = redis.conn.clone();
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(&old).arg("doc").arg("seq");
            let (doc, seq): (Option<String>, Option<u64>) =
                redis.call("pool_adopt", cmd.query_async(&mut conn)).await?;
            let Some(doc) = doc else {
                return Ok(false);
            };
            let mut call = ADOPT.key(&doc_key);
            call.arg(&doc).arg(seq.unwrap_or(0));
            let moved: i64 = redis
                .call("pool_adopt", call.invoke_async(&mut conn))
                .await?;
            let mut del = redis::cmd("DEL");
            del.arg(&old);
            redis
                .call("pool_adopt", del.query_async::<()>(&mut conn))
                .await?;
            log::info!("pool `{name}`: moved its document to its new key name");
            Ok(moved == 1)
        });
        task.await
            .unwrap_or_else(|e| Err(BrokerError::Unavailable(e.to_string())))
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

    /// Holds in-memory pool `name` against changes (waiting up to [`LOCK_WAIT`] for one in
    /// flight).
    async fn lock<'a>(
        changing: &'a [tokio::sync::Mutex<()>],
        name: &str,
    ) -> Result<tokio::sync::MutexGuard<'a, ()>, PoolError> {
        tokio::time::timeout(LOCK_WAIT, changing[stripe(name)].lock())
            .await
            .map_err(|_| PoolError::Busy)
    }

    /// For a page that follows pool `name`'s topic now: the document and the stream position
    /// it is exact at (`None` if there is no such pool). The caller drops the page's live
    /// frames up to that position.
    pub async fn snapshot(
        &self,
        hub: &Hub,
        name: &str,
    ) -> Result<Option<(Doc, Position)>, PoolError> {
        let key = StreamKey::Topic(name.into());
        let attach = [Attach {
            key: &key,
            since: None,
        }];
        match &self.store {
            Store::Memory { changing, .. } => {
                let _held = Pools::lock(changing, name).await?;
                let Some(doc) = self.get(name).await? else {
                    return Ok(None);
                };
                let at = hub.broker().attach(&attach, true).await?;
                let position = at.and_then(|a| a.first().map(|a| a.position));
                Ok(position.map(|p| (doc, p)))
            }
            Store::Redis(redis) => {
                // Attached first: every change numbered after the position read below reaches
                // the page live, and the ones up to it are in the document.
                let at = hub.broker().attach(&attach, true).await?;
                let Some(attached) = at.and_then(|a| a.first().map(|a| a.position)) else {
                    return Ok(None);
                };
                let keys = Pools::keys(redis, name);
                let mut read = Pools::read_snapshot(redis, &keys).await?;
                if read.is_none() && Pools::adopt(redis, name, &keys).await? {
                    read = Pools::read_snapshot(redis, &keys).await?;
                }
                let Some((json, generation, seq)) = read else {
                    return Ok(None);
                };
                let generation = match u64::from_str_radix(&generation, 16) {
                    Ok(g) => g,
                    Err(_) => attached.generation,
                };
                if generation != attached.generation {
                    // The stream was remade between the two calls: let the client retry.
                    return Err(
                        BrokerError::Unavailable("stream changed while attaching".into()).into(),
                    );
                }
                let doc = Doc {
                    json: json.into(),
                    seq,
                };
                Ok(Some((doc, Position { generation, seq })))
            }
        }
    }

    async fn read_snapshot(
        redis: &RedisHandle,
        keys: &Keys,
    ) -> Result<Option<(String, String, u64)>, BrokerError> {
        let mut call = SNAPSHOT.key(&keys.doc);
        call.key(format!("{}:m", redis.stream_tag(&keys.stream)));
        let mut conn = redis.conn.clone();
        redis
            .call("pool_snapshot", call.invoke_async(&mut conn))
            .await
    }

    /// Applies `change` to pool `name` and publishes its event to the pool's topic.
    pub async fn change(
        &self,
        hub: &Hub,
        name: &str,
        change: Change<'_>,
    ) -> Result<Changed, PoolError> {
        match &self.store {
            Store::Memory { docs, changing } => {
                let _held = Pools::lock(changing, name).await?;
                self.memory_change(docs, hub, name, change).await
            }
            Store::Redis(redis) => self.redis_change(redis, name, change).await,
        }
    }

    /// [`Pools::change`] in memory, with the pool's stripe held.
    async fn memory_change(
        &self,
        docs: &std::sync::Mutex<HashMap<String, Doc>>,
        hub: &Hub,
        name: &str,
        change: Change<'_>,
    ) -> Result<Changed, PoolError> {
        let (old, count) = {
            let docs = docs.lock().unwrap_or_else(|p| p.into_inner());
            (docs.get(name).cloned(), docs.len())
        };
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
                    let doc = append_to(&old.json, value.get()).ok_or(PoolError::NotArray)?;
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
            if old.is_none() && count >= bounds.max_pools {
                return Err(PoolError::Full(bounds.max_pools));
            }
        }
        let topic = format!("{name}:{event}");
        let raw: &RawValue = serde_json::from_str(&contents).expect("built from JSON");
        let key = StreamKey::Topic(name.into());
        let published = hub.publish(&key, Message::new(&topic, raw), None).await?;
        let mut docs = docs.lock().unwrap_or_else(|p| p.into_inner());
        match doc {
            Some(json) => {
                let seq = published.seq;
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
        Ok(Changed { event, published })
    }

    /// [`Pools::change`] on Redis: one `lua/pool_change.lua` call. When the pool has no
    /// document yet, the script changes nothing and answers `?`; it is called once more after
    /// a look at the old key name (and, on a Redis Cluster, a count of the pools).
    async fn redis_change(
        &self,
        redis: &RedisHandle,
        name: &str,
        change: Change<'_>,
    ) -> Result<Changed, PoolError> {
        let keys = Pools::keys(redis, name);
        let stream = &keys.stream;
        let (op, value, events): (&[u8], &str, [&str; 2]) = match change {
            Change::Put(v) => (b"put", v.get(), ["add", "update"]),
            Change::Append(v) => (b"append", v.get(), ["add", "append"]),
            Change::Delete => (b"delete", "", ["add", "delete"]),
        };
        let heads = events.map(|e| wire::payload_head(stream, &format!("{name}:{e}")));
        let bounds = *self.bounds.get();
        let (max_bytes, max_pools) = (bounds.max_bytes.to_string(), bounds.max_pools.to_string());
        let mut own_keys = vec![keys.doc.clone()];
        if !redis.is_cluster() {
            own_keys.push(Pools::set(redis));
        }
        let mut checked: &[u8] = b"0";
        let mut counted = String::new();
        let reply = loop {
            let args: [&[u8]; 9] = [
                op,
                value.as_bytes(),
                &heads[0],
                &heads[1],
                max_bytes.as_bytes(),
                max_pools.as_bytes(),
                checked,
                counted.as_bytes(),
                name.as_bytes(),
            ];
            let reply = redis
                .publish_with("pool_change", &CHANGE, stream, &own_keys, &args)
                .await?;
            if reply != "?" || checked == b"1" {
                break reply;
            }
            Pools::adopt(redis, name, &keys).await?;
            if redis.is_cluster() {
                counted = Pools::count(redis).await?.to_string();
            }
            checked = b"1";
        };
        let event = match reply.split_once(':').map_or(reply.as_str(), |(e, _)| e) {
            "add" => "add",
            "update" => "update",
            "append" => "append",
            "delete" => "delete",
            "e" => {
                return Err(match reply.as_str() {
                    "e:not_found" => PoolError::NotFound,
                    "e:not_array" => PoolError::NotArray,
                    "e:too_large" => PoolError::TooLarge(bounds.max_bytes),
                    "e:full" => PoolError::Full(bounds.max_pools),
                    _ => BrokerError::Unavailable(format!("unexpected pool answer {reply}")).into(),
                })
            }
            _ => {
                return Err(
                    BrokerError::Unavailable(format!("unexpected pool answer {reply}")).into(),
                )
            }
        };
        let published = published(&reply[event.len() + 1..]);
        if redis.is_cluster() {
            Pools::list(redis, name, event != "delete").await?;
        }
        Ok(Changed { event, published })
    }

    async fn count(redis: &RedisHandle) -> Result<usize, BrokerError> {
        let mut cmd = redis::cmd("SCARD");
        cmd.arg(Pools::set(redis));
        let mut conn = redis.conn.clone();
        redis.call("pool_count", cmd.query_async(&mut conn)).await
    }

    /// On a Redis Cluster: adds pool `name` to the set of pools, or removes it, after its
    /// change (the set is in another slot than the script's keys). A task of its own, so a
    /// dropped request does not leave the set behind the document.
    async fn list(redis: &RedisHandle, name: &str, exists: bool) -> Result<(), BrokerError> {
        let (redis, name) = (redis.clone(), name.to_owned());
        let task = tokio::spawn(async move {
            let mut cmd = redis::cmd(if exists { "SADD" } else { "SREM" });
            cmd.arg(Pools::set(&redis)).arg(&name);
            let mut conn = redis.conn.clone();
            redis
                .call("pool_store", cmd.query_async::<()>(&mut conn))
                .await
        });
        task.await
            .unwrap_or_else(|e| Err(BrokerError::Unavailable(e.to_string())))
    }
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

/// The in-memory lock stripe of pool `name`.
fn stripe(name: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
    (hash % STRIPES as u64) as usize
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
