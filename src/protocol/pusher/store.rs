//! What Pusher mode keeps besides the hub's streams, behind one small trait so a cluster shares
//! it: subscription counts per channel (the HTTP API's channel queries, `channel_occupied`
//! once per cluster), presence members (one per `user_id` however many sockets and nodes it
//! has), and the last event of each cache channel.
//!
//! [`MemoryStore`] is one node's; [`RedisStore`] keeps the same in the cluster's Redis, through
//! the broker's [`RedisHandle`] (its connection, key prefix, bounded and metered calls, and
//! its heartbeat). Each node counts under its own id, which the broker's heartbeat keeps alive
//! (on one Redis as `<prefix>:pusher:alive:<node>`); readers skip (and delete) what a node
//! that stopped refreshing left behind, so a killed node's sockets stop counting within 15 s
//! (on a Redis Cluster, within 20 s: scripts there learn the gone ids from the heartbeat).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;

use crate::broker::redis::RedisHandle;
use crate::broker::{BoxFuture, BrokerError};

/// How long a cache channel's last event is kept (Pusher's: 30 minutes).
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);
/// Most cache channels remembered by one node's [`MemoryStore`]; past it, new ones are not
/// cached until old ones expire.
const MEMORY_CACHE_MAX: usize = 100_000;

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
    /// made the channel occupied, or vacated it.
    fn subscribed<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
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

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T, BrokerError>> {
    Box::pin(std::future::ready(Ok(value)))
}

type ChannelId = (Box<str>, Box<str>);

fn id(app: &str, channel: &str) -> ChannelId {
    (app.into(), channel.into())
}

#[derive(Default)]
struct Memory {
    subscriptions: HashMap<ChannelId, usize>,
    /// Per presence channel: user → (sockets, user_info).
    presence: HashMap<ChannelId, HashMap<String, (usize, String)>>,
    cache: HashMap<ChannelId, (String, Instant)>,
}

/// One node's store.
#[derive(Default)]
pub struct MemoryStore {
    // Held for map operations only, never across an await.
    state: Mutex<Memory>,
}

impl MemoryStore {
    fn state(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChannelStore for MemoryStore {
    fn subscribed<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        delta: i64,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let mut state = self.state();
        let key = id(app, channel);
        let before = state.subscriptions.get(&key).copied().unwrap_or(0) as i64;
        let n = before + delta;
        if n > 0 {
            state.subscriptions.insert(key, n as usize);
        } else {
            state.subscriptions.remove(&key);
        }
        ready((before == 0) != (n <= 0))
    }

    fn channels<'a>(
        &'a self,
        app: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, usize>, BrokerError>> {
        let state = self.state();
        let found = state
            .subscriptions
            .iter()
            .filter(|((a, _), _)| &**a == app)
            .map(|((_, c), n)| (c.to_string(), *n))
            .collect();
        ready(found)
    }

    fn join<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        member: &'a Member,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let mut state = self.state();
        let users = state.presence.entry(id(app, channel)).or_default();
        let entry = users
            .entry(member.user_id.clone())
            .or_insert((0, String::new()));
        entry.0 += 1;
        entry.1.clone_from(&member.user_info);
        ready(entry.0 == 1)
    }

    fn leave<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let mut state = self.state();
        let key = id(app, channel);
        let Some(users) = state.presence.get_mut(&key) else {
            return ready(false);
        };
        let last = match users.get_mut(user_id) {
            Some(entry) if entry.0 > 1 => {
                entry.0 -= 1;
                false
            }
            Some(_) => {
                users.remove(user_id);
                true
            }
            None => false,
        };
        if users.is_empty() {
            state.presence.remove(&key);
        }
        ready(last)
    }

    fn members<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>> {
        let state = self.state();
        let members = state
            .presence
            .get(&id(app, channel))
            .map(|users| {
                users
                    .iter()
                    .map(|(user_id, (_, info))| Member {
                        user_id: user_id.clone(),
                        user_info: info.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        ready(members)
    }

    fn cache_put<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        frame: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut state = self.state();
        if state.cache.len() >= MEMORY_CACHE_MAX {
            state.cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        let key = id(app, channel);
        if state.cache.len() < MEMORY_CACHE_MAX || state.cache.contains_key(&key) {
            state.cache.insert(key, (frame.to_owned(), Instant::now()));
        }
        ready(())
    }

    fn cache_get<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BrokerError>> {
        let state = self.state();
        let hit = state
            .cache
            .get(&id(app, channel))
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(frame, _)| frame.clone());
        ready(hit)
    }
}

static COUNT_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("../../broker/lua/pusher_count.lua")));
static TOTALS_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("../../broker/lua/pusher_totals.lua")));

/// The cluster's store, in Redis. See the module doc.
pub struct RedisStore {
    redis: RedisHandle,
    node: String,
}

impl RedisStore {
    /// A store under `redis`'s prefix, with a fresh node id that the broker's heartbeat keeps
    /// alive.
    pub fn start(redis: RedisHandle) -> Arc<RedisStore> {
        // The node's number: its incarnations are `<number>.<n>`, so the two never meet.
        let node = redis.node().to_string();
        let store = RedisStore { redis, node };
        store.redis.keep_alive(&store.node, store.alive_prefix());
        Arc::new(store)
    }

    fn key(&self, app: &str, channel: Option<&str>, what: &str) -> String {
        match channel {
            Some(c) => format!("{}:pusher:{{{app}:{c}}}:{what}", self.redis.prefix()),
            None => format!("{}:pusher:{{{app}}}:{what}", self.redis.prefix()),
        }
    }

    fn alive_prefix(&self) -> String {
        format!("{}:pusher:alive:", self.redis.prefix())
    }

    async fn count(&self, hash: String, member: &str, delta: i64) -> Result<bool, BrokerError> {
        let mut conn = self.redis.conn.clone();
        let mut call = COUNT_SCRIPT.key(hash);
        call.arg(&self.node)
            .arg(member)
            .arg(delta)
            .arg(self.redis.liveness_args(&self.alive_prefix()));
        let edge: i64 = self
            .redis
            .call("pusher_count", call.invoke_async(&mut conn))
            .await?;
        Ok(edge == 1)
    }

    async fn totals(&self, hash: String) -> Result<Vec<(String, usize)>, BrokerError> {
        let mut conn = self.redis.conn.clone();
        let mut call = TOTALS_SCRIPT.key(hash);
        call.arg(self.redis.liveness_args(&self.alive_prefix()));
        let flat: Vec<String> = self
            .redis
            .call("pusher_totals", call.invoke_async(&mut conn))
            .await?;
        Ok(flat
            .chunks_exact(2)
            .map(|p| (p[0].clone(), p[1].parse().unwrap_or(0)))
            .collect())
    }
}

impl ChannelStore for RedisStore {
    fn subscribed<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        delta: i64,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async move {
            self.count(self.key(app, None, "subs"), channel, delta)
                .await
        })
    }

    fn channels<'a>(
        &'a self,
        app: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, usize>, BrokerError>> {
        Box::pin(async move {
            Ok(self
                .totals(self.key(app, None, "subs"))
                .await?
                .into_iter()
                .collect())
        })
    }

    fn join<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        member: &'a Member,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async move {
            let mut conn = self.redis.conn.clone();
            let mut hset = redis::cmd("HSET");
            hset.arg(self.key(app, Some(channel), "info"))
                .arg(&member.user_id)
                .arg(&member.user_info);
            self.redis
                .call("pusher_info", hset.query_async::<()>(&mut conn))
                .await?;
            self.count(self.key(app, Some(channel), "members"), &member.user_id, 1)
                .await
        })
    }

    fn leave<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async move {
            let last = self
                .count(self.key(app, Some(channel), "members"), user_id, -1)
                .await?;
            if last {
                let mut conn = self.redis.conn.clone();
                let mut hdel = redis::cmd("HDEL");
                hdel.arg(self.key(app, Some(channel), "info")).arg(user_id);
                self.redis
                    .call("pusher_info", hdel.query_async::<()>(&mut conn))
                    .await?;
            }
            Ok(last)
        })
    }

    fn members<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>> {
        Box::pin(async move {
            let users = self.totals(self.key(app, Some(channel), "members")).await?;
            if users.is_empty() {
                return Ok(Vec::new());
            }
            let mut conn = self.redis.conn.clone();
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(self.key(app, Some(channel), "info"));
            for (user, _) in &users {
                hmget.arg(user);
            }
            let infos: Vec<Option<String>> = self
                .redis
                .call("pusher_info", hmget.query_async(&mut conn))
                .await?;
            let mut seen = HashSet::new();
            Ok(users
                .into_iter()
                .zip(infos)
                .filter(|((user, _), _)| seen.insert(user.clone()))
                .map(|((user_id, _), info)| Member {
                    user_id,
                    user_info: info.unwrap_or_else(|| "null".into()),
                })
                .collect())
        })
    }

    fn cache_put<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        frame: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut conn = self.redis.conn.clone();
            let mut set = redis::cmd("SET");
            set.arg(self.key(app, Some(channel), "cache"))
                .arg(frame)
                .arg("EX")
                .arg(CACHE_TTL.as_secs());
            self.redis
                .call("pusher_cache", set.query_async::<()>(&mut conn))
                .await
        })
    }

    fn cache_get<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BrokerError>> {
        Box::pin(async move {
            let mut conn = self.redis.conn.clone();
            let mut get = redis::cmd("GET");
            get.arg(self.key(app, Some(channel), "cache"));
            self.redis
                .call("pusher_cache", get.query_async(&mut conn))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_member_per_user_however_many_sockets() {
        let store = MemoryStore::default();
        let alice = Member {
            user_id: "alice".into(),
            user_info: r#"{"n":1}"#.into(),
        };
        assert!(store.join("a", "presence-x", &alice).await.unwrap());
        assert!(!store.join("a", "presence-x", &alice).await.unwrap());
        assert_eq!(store.members("a", "presence-x").await.unwrap(), [alice]);
        assert!(store.members("b", "presence-x").await.unwrap().is_empty());
        assert!(!store.leave("a", "presence-x", "alice").await.unwrap());
        assert!(store.leave("a", "presence-x", "alice").await.unwrap());
        assert!(!store.leave("a", "presence-x", "alice").await.unwrap());
        assert!(store.members("a", "presence-x").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn counts_and_cache_are_per_app() {
        let store = MemoryStore::default();
        assert!(store.subscribed("a", "c", 1).await.unwrap(), "occupied");
        assert!(!store.subscribed("a", "c", 1).await.unwrap());
        store.subscribed("b", "c", 1).await.unwrap();
        assert_eq!(store.channels("a").await.unwrap()["c"], 2);
        assert!(!store.subscribed("a", "c", -1).await.unwrap());
        assert!(store.subscribed("a", "c", -1).await.unwrap(), "vacated");
        assert!(store.channels("a").await.unwrap().is_empty());
        store.cache_put("a", "cache-c", "f").await.unwrap();
        assert_eq!(
            store.cache_get("a", "cache-c").await.unwrap().as_deref(),
            Some("f")
        );
        assert_eq!(store.cache_get("b", "cache-c").await.unwrap(), None);
    }
}
