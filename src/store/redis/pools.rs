//! Data pools in the cluster's Redis (one, or a Redis Cluster): any node may change or read any pool, and the one step
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

use redis::Script;

use crate::broker::redis::{published, RedisHandle};
use crate::broker::redis_conn::tag_part;
use crate::broker::{Attach, BoxFuture, BrokerError};
use crate::hub::Hub;
use crate::live::Current;
use crate::pools::{Bounds, Change, Changed, Doc, PoolError, PoolStore};
use crate::wire::{self, Position, StreamKey};

/// A pool change, whole: `lua/pool_change.lua` after `lua/publish.lua` made a function, so the
/// change publishes exactly as a push does, from the one copy of that script.
static CHANGE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::new(concat!(
        "local function publish(KEYS, ARGV)\n",
        include_str!("../../broker/lua/publish.lua"),
        "\nend\n",
        include_str!("../../broker/lua/pool_change.lua"),
    ))
});
/// A document and its stream's position, read together.
static SNAPSHOT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("../../broker/lua/pool_snapshot.lua")));
/// Moves a document from its old key name.
static ADOPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("../../broker/lua/pool_adopt.lua")));

/// A pool's Redis keys.
struct Keys {
    /// Its document, under its topic stream's hash tag.
    doc: String,
    /// Where its document was before it moved there.
    old: String,
    /// Its topic's stream.
    stream: StreamKey,
}

/// The cluster's pools.
pub struct RedisPools {
    redis: RedisHandle,
    bounds: Current<Bounds>,
}

impl RedisPools {
    /// The pools under `redis`'s prefix.
    pub fn new(redis: RedisHandle, bounds: Bounds) -> RedisPools {
        RedisPools {
            redis,
            bounds: Current::new(bounds),
        }
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

    /// [`PoolStore::change`]: one `lua/pool_change.lua` call. When the pool has no
    /// document yet, the script changes nothing and answers `?`; it is called once more after
    /// a look at the old key name (and, on a Redis Cluster, a count of the pools).
    async fn redis_change(
        &self,
        redis: &RedisHandle,
        name: &str,
        change: Change<'_>,
    ) -> Result<Changed, PoolError> {
        let keys = RedisPools::keys(redis, name);
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
            own_keys.push(RedisPools::set(redis));
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
            RedisPools::adopt(redis, name, &keys).await?;
            if redis.is_cluster() {
                counted = RedisPools::count(redis).await?.to_string();
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
            RedisPools::list(redis, name, event != "delete").await?;
        }
        Ok(Changed { event, published })
    }

    async fn count(redis: &RedisHandle) -> Result<usize, BrokerError> {
        let mut cmd = redis::cmd("SCARD");
        cmd.arg(RedisPools::set(redis));
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
            cmd.arg(RedisPools::set(&redis)).arg(&name);
            let mut conn = redis.conn.clone();
            redis
                .call("pool_store", cmd.query_async::<()>(&mut conn))
                .await
        });
        task.await
            .unwrap_or_else(|e| Err(BrokerError::Unavailable(e.to_string())))
    }
}

impl PoolStore for RedisPools {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Doc>, BrokerError>> {
        Box::pin(async move {
            let redis = &self.redis;
            let keys = RedisPools::keys(redis, name);
            let doc = RedisPools::read(redis, &keys).await?;
            if doc.is_some() || !RedisPools::adopt(redis, name, &keys).await? {
                return Ok(doc);
            }
            RedisPools::read(redis, &keys).await
        })
    }

    fn which<'a>(&'a self, names: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<bool>, BrokerError>> {
        Box::pin(async move {
            if names.is_empty() {
                return Ok(Vec::new());
            }
            let mut cmd = redis::cmd("SMISMEMBER");
            cmd.arg(RedisPools::set(&self.redis)).arg(names);
            let mut conn = self.redis.conn.clone();
            self.redis
                .call("pool_which", cmd.query_async(&mut conn))
                .await
        })
    }

    fn snapshot<'a>(
        &'a self,
        hub: &'a Hub,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<(Doc, Position)>, PoolError>> {
        Box::pin(async move {
            let redis = &self.redis;
            let key = StreamKey::Topic(name.into());
            let attach = [Attach {
                key: &key,
                since: None,
            }];
            // Attached first: every change numbered after the position read below reaches the
            // page live, and the ones up to it are in the document.
            let at = hub.broker().attach(&attach, true).await?;
            let Some(attached) = at.and_then(|a| a.first().map(|a| a.position)) else {
                return Ok(None);
            };
            let keys = RedisPools::keys(redis, name);
            let mut read = RedisPools::read_snapshot(redis, &keys).await?;
            if read.is_none() && RedisPools::adopt(redis, name, &keys).await? {
                read = RedisPools::read_snapshot(redis, &keys).await?;
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
        })
    }

    fn change<'a>(
        &'a self,
        _hub: &'a Hub,
        name: &'a str,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Changed, PoolError>> {
        Box::pin(self.redis_change(&self.redis, name, change))
    }

    fn set_bounds(&self, bounds: Bounds) {
        self.bounds.set(bounds);
    }
}
