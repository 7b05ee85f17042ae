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
//! On a single node the inbox is in memory. With `redis_url` it is in the cluster's Redis:
//! per uid a sorted set of ids by expiry (`<prefix>:inbox:{<uid>}:z`) and a hash of their
//! messages (`<prefix>:inbox:{<uid>}:m`), expiring with the last of them, and one sorted set of
//! every kept message (`<prefix>:inbox:all`) for the overall bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::broker::redis::RedisHandle;
use crate::broker::redis_conn::tag_part;
use crate::broker::BrokerError;
use crate::wire::{self, Frame};

/// Keeps a message for a uid, atomically under both bounds (see `keep` below).
static KEEP: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("broker/lua/inbox_keep.lua")));

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
struct Entry {
    /// The message id (its receipt id).
    id: String,
    /// Its topic.
    t: String,
    /// Its contents, JSON text.
    c: String,
    /// When it was kept, unix milliseconds.
    at: u64,
    /// Its place in the uid's inbox: the order pages get them in (milliseconds alone cannot
    /// order pushes made within one). 0 in entries kept before it existed, which go first.
    #[serde(default)]
    n: u64,
}

/// Bounds of the inbox.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most messages kept per uid.
    pub per_uid: usize,
    /// Most messages kept in all.
    pub total: usize,
}

#[derive(Default)]
struct Memory {
    /// Uid → its messages, oldest first, each with its expiry.
    by_uid: HashMap<String, Vec<(Instant, Entry)>>,
    total: usize,
    /// The last entry's `n`.
    last: u64,
}

enum Store {
    /// Held for map operations only, never across an await.
    Memory(Mutex<Memory>),
    Redis(RedisHandle),
}

/// This node's inbox, or the cluster's. See the module doc.
pub struct Inbox {
    store: Store,
    bounds: crate::live::Live<Bounds>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Inbox {
    /// An inbox in memory.
    pub fn memory(bounds: Bounds) -> Inbox {
        Inbox {
            store: Store::Memory(Mutex::default()),
            bounds: crate::live::Live::new(bounds),
        }
    }

    /// An inbox in the cluster's Redis.
    pub fn redis(redis: RedisHandle, bounds: Bounds) -> Inbox {
        Inbox {
            store: Store::Redis(redis),
            bounds: crate::live::Live::new(bounds),
        }
    }

    /// New bounds for the messages kept from now on (a config reload); nothing kept is dropped.
    pub fn set_bounds(&self, bounds: Bounds) {
        self.bounds.set(bounds);
    }

    fn keys(redis: &RedisHandle, uid: &str) -> (String, String) {
        let base = format!("{}:inbox:{{{}}}", redis.prefix(), tag_part(uid));
        (format!("{base}:z"), format!("{base}:m"))
    }

    fn all(redis: &RedisHandle) -> String {
        format!("{}:inbox:all", redis.prefix())
    }

    /// Keeps message `id` (`topic`, `contents`) for `uid` for `ttl`, unless a bound is reached.
    pub async fn keep(
        &self,
        uid: &str,
        id: &str,
        topic: &str,
        contents: &str,
        ttl: Duration,
    ) -> Result<Kept, BrokerError> {
        let entry = Entry {
            id: id.to_owned(),
            t: topic.to_owned(),
            c: contents.to_owned(),
            at: unix_ms(),
            n: 0,
        };
        let bounds = *self.bounds.get();
        let redis = match &self.store {
            Store::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let Memory {
                    by_uid,
                    total,
                    last,
                } = &mut *m;
                let list = by_uid.entry(uid.to_owned()).or_default();
                let before = list.len();
                list.retain(|(expires, _)| *expires > now);
                *total -= before - list.len();
                if list.iter().any(|(_, e)| e.id == id) {
                    return Ok(Kept::Kept);
                }
                if list.len() >= bounds.per_uid {
                    return Ok(Kept::UidFull);
                }
                if *total >= bounds.total {
                    if list.is_empty() {
                        by_uid.remove(uid);
                    }
                    return Ok(Kept::Full);
                }
                *last += 1;
                list.push((now + ttl, Entry { n: *last, ..entry }));
                *total += 1;
                return Ok(Kept::Kept);
            }
            Store::Redis(redis) => redis,
        };
        let (z, m) = Inbox::keys(redis, uid);
        let now = entry.at;
        let all = Inbox::all(redis);
        let mut conn = redis.conn.clone();
        if redis.is_cluster() {
            // The overall bound's set is in another slot than the uid's keys: checked before,
            // added to after (concurrent keeps may pass the bound by a few).
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
    }

    /// The unexpired messages kept for `uid`, oldest first, as frames marked `"inbox": true`,
    /// each with its id.
    pub async fn frames_of(&self, uid: &str) -> Result<Vec<(String, Frame)>, BrokerError> {
        let mut entries: Vec<Entry> = match &self.store {
            Store::Memory(m) => {
                let m = m.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                m.by_uid.get(uid).map_or_else(Vec::new, |list| {
                    list.iter()
                        .filter(|(expires, _)| *expires > now)
                        .map(|(_, e)| e.clone())
                        .collect()
                })
            }
            Store::Redis(redis) => {
                let (z, m) = Inbox::keys(redis, uid);
                let mut pipe = redis::pipe();
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(&z)
                    .arg(format!("({}", unix_ms()))
                    .arg("+inf");
                pipe.cmd("HGETALL").arg(&m);
                let mut conn = redis.conn.clone();
                let (live, all): (Vec<String>, HashMap<String, String>) = redis
                    .call("inbox_read", pipe.query_async(&mut conn))
                    .await?;
                live.iter()
                    .filter_map(|id| all.get(id))
                    .filter_map(|json| serde_json::from_str(json).ok())
                    .collect()
            }
        };
        entries.sort_by(|a, b| (a.n, a.at, &a.id).cmp(&(b.n, b.at, &b.id)));
        Ok(entries
            .into_iter()
            .filter_map(|e| wire::inbox_frame(&e.t, &e.c, &e.id).map(|frame| (e.id, frame)))
            .collect())
    }

    /// Removes message `id` from `uid`'s inbox (a page of that uid acked it); whether it was
    /// there.
    pub async fn remove(&self, uid: &str, id: &str) -> Result<bool, BrokerError> {
        let redis = match &self.store {
            Store::Memory(m) => {
                let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
                let Memory { by_uid, total, .. } = &mut *m;
                let Some(list) = by_uid.get_mut(uid) else {
                    return Ok(false);
                };
                let before = list.len();
                list.retain(|(_, e)| e.id != id);
                let removed = before - list.len();
                *total -= removed;
                if list.is_empty() {
                    by_uid.remove(uid);
                }
                return Ok(removed > 0);
            }
            Store::Redis(redis) => redis,
        };
        let (z, m) = Inbox::keys(redis, uid);
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM").arg(&z).arg(id);
        pipe.cmd("HDEL").arg(&m).arg(id).ignore();
        // The overall set is in another slot on a Redis Cluster: a call of its own.
        let mut all = redis::cmd("ZREM");
        all.arg(Inbox::all(redis)).arg(format!("{uid}\n{id}"));
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
    }

    /// Drops expired messages (in memory; Redis expires its own); called periodically.
    pub fn sweep(&self) {
        if let Store::Memory(m) = &self.store {
            let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let Memory { by_uid, total, .. } = &mut *m;
            by_uid.retain(|_, list| {
                let before = list.len();
                list.retain(|(expires, _)| *expires > now);
                *total -= before - list.len();
                !list.is_empty()
            });
        }
    }

    /// Messages held in memory (0 with Redis).
    pub fn len(&self) -> usize {
        match &self.store {
            Store::Memory(m) => m.lock().unwrap_or_else(|p| p.into_inner()).total,
            Store::Redis(_) => 0,
        }
    }

    /// Whether no message is held in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keeps_under_both_bounds_until_removed_or_expired() {
        let inbox = Inbox::memory(Bounds {
            per_uid: 2,
            total: 3,
        });
        let ttl = Duration::from_secs(10);
        assert_eq!(
            inbox.keep("a", "1", "t", "1", ttl).await.unwrap(),
            Kept::Kept
        );
        assert_eq!(
            inbox.keep("a", "1", "t", "1", ttl).await.unwrap(),
            Kept::Kept
        );
        assert_eq!(
            inbox.keep("a", "2", "t", "2", ttl).await.unwrap(),
            Kept::Kept
        );
        assert_eq!(
            inbox.keep("a", "3", "t", "3", ttl).await.unwrap(),
            Kept::UidFull
        );
        assert_eq!(
            inbox.keep("b", "4", "t", "4", ttl).await.unwrap(),
            Kept::Kept
        );
        assert_eq!(
            inbox.keep("c", "5", "t", "5", ttl).await.unwrap(),
            Kept::Full
        );
        assert_eq!(inbox.len(), 3);
        let frames = inbox.frames_of("a").await.unwrap();
        assert_eq!(frames[0].0, "1");
        assert_eq!(
            frames[0].1.as_str(),
            r#"{"topic":"t","number":0,"contents":1,"id":"1","inbox":true}"#
        );
        assert_eq!(frames.len(), 2);
        assert!(inbox.remove("a", "1").await.unwrap());
        assert!(!inbox.remove("a", "1").await.unwrap());
        assert!(!inbox.remove("b", "1").await.unwrap());
        assert_eq!(inbox.frames_of("a").await.unwrap().len(), 1);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(inbox.frames_of("a").await.unwrap().is_empty());
        inbox.sweep();
        assert!(inbox.is_empty());
        assert_eq!(
            inbox.keep("c", "5", "t", "5", ttl).await.unwrap(),
            Kept::Kept
        );
    }
}
