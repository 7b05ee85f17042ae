//! The offline inbox in the cluster's Redis: per uid a sorted set of ids by expiry
//! (`<prefix>:inbox:{<uid>}:z`) and a hash of their messages (`<prefix>:inbox:{<uid>}:m`),
//! expiring with the last of them, and one sorted set of every kept message
//! (`<prefix>:inbox:all`) for the overall bound.

use std::collections::HashMap;
use std::time::Duration;

use redis::Script;

use crate::broker::redis::RedisHandle;
use crate::broker::redis_conn::tag_part;
use crate::broker::{BoxFuture, BrokerError};
use crate::inbox::{unix_ms, Bounds, Entry, InboxStore, Kept};
use crate::live::Current;

/// Keeps a message for a uid, atomically under both bounds (see `keep` below).
static KEEP: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("../../broker/lua/inbox_keep.lua")));

/// The cluster's inbox.
pub struct RedisInbox {
    redis: RedisHandle,
    bounds: Current<Bounds>,
}

impl RedisInbox {
    /// The inbox under `redis`'s prefix.
    pub fn new(redis: RedisHandle, bounds: Bounds) -> RedisInbox {
        RedisInbox {
            redis,
            bounds: Current::new(bounds),
        }
    }

    fn keys(&self, uid: &str) -> (String, String) {
        let base = format!("{}:inbox:{{{}}}", self.redis.prefix(), tag_part(uid));
        (format!("{base}:z"), format!("{base}:m"))
    }

    fn all(&self) -> String {
        format!("{}:inbox:all", self.redis.prefix())
    }
}

impl InboxStore for RedisInbox {
    fn keep<'a>(
        &'a self,
        uid: &'a str,
        id: &'a str,
        topic: &'a str,
        contents: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Kept, BrokerError>> {
        Box::pin(async move {
            let redis = &self.redis;
            let bounds = *self.bounds.get();
            let entry = Entry::new(id, topic, contents);
            let (z, m) = self.keys(uid);
            let now = entry.at;
            let all = self.all();
            let mut conn = redis.conn.clone();
            if redis.is_cluster() {
                // The overall bound's set is in another slot than the uid's keys: checked
                // before, added to after (concurrent keeps may pass the bound by a few).
                let mut pipe = redis::pipe();
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(&all)
                    .arg("-inf")
                    .arg(now)
                    .ignore()
                    .cmd("ZCARD")
                    .arg(&all);
                let (held,): (usize,) = redis
                    .call("inbox_count", pipe.query_async(&mut conn))
                    .await?;
                if held >= bounds.total {
                    return Ok(Kept::Full);
                }
            }
            let mut call = KEEP.key(z);
            call.key(m);
            if !redis.is_cluster() {
                call.key(&all);
            }
            call.arg(now)
                .arg(now + ttl.as_millis() as u64)
                .arg(id)
                .arg(serde_json::to_string(&entry).expect("serializes"))
                .arg(bounds.per_uid)
                .arg(bounds.total)
                .arg(uid);
            let code: i64 = redis
                .call("inbox_keep", call.invoke_async(&mut conn))
                .await?;
            if code == 1 && redis.is_cluster() {
                let mut zadd = redis::cmd("ZADD");
                zadd.arg(&all)
                    .arg(now + ttl.as_millis() as u64)
                    .arg(format!("{uid}\n{id}"));
                redis
                    .call("inbox_count", zadd.query_async::<()>(&mut conn))
                    .await?;
            }
            Ok(match code {
                1 => Kept::Kept,
                -1 => Kept::UidFull,
                _ => Kept::Full,
            })
        })
    }

    fn entries<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, BrokerError>> {
        Box::pin(async move {
            let (z, m) = self.keys(uid);
            let mut pipe = redis::pipe();
            pipe.cmd("ZRANGEBYSCORE")
                .arg(&z)
                .arg(format!("({}", unix_ms()))
                .arg("+inf");
            pipe.cmd("HGETALL").arg(&m);
            let mut conn = self.redis.conn.clone();
            let (live, all): (Vec<String>, HashMap<String, String>) = self
                .redis
                .call("inbox_read", pipe.query_async(&mut conn))
                .await?;
            Ok(live
                .iter()
                .filter_map(|id| all.get(id))
                .filter_map(|json| serde_json::from_str(json).ok())
                .collect())
        })
    }

    fn remove<'a>(&'a self, uid: &'a str, id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async move {
            let redis = &self.redis;
            let (z, m) = self.keys(uid);
            let mut pipe = redis::pipe();
            pipe.cmd("ZREM").arg(&z).arg(id);
            pipe.cmd("HDEL").arg(&m).arg(id).ignore();
            // The overall set is in another slot on a Redis Cluster: a call of its own.
            let mut all = redis::cmd("ZREM");
            all.arg(self.all()).arg(format!("{uid}\n{id}"));
            if !redis.is_cluster() {
                pipe.add_command(all.clone()).ignore();
            }
            let mut conn = redis.conn.clone();
            let (removed,): (u64,) = redis
                .call("inbox_remove", pipe.query_async(&mut conn))
                .await?;
            if redis.is_cluster() {
                redis
                    .call("inbox_remove", all.query_async::<()>(&mut conn))
                    .await?;
            }
            Ok(removed > 0)
        })
    }

    fn set_bounds(&self, bounds: Bounds) {
        self.bounds.set(bounds);
    }
}
