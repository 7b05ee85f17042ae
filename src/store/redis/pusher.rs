//! Pusher mode's counts, presence members and cache in the cluster's Redis, through the
//! broker's [`RedisHandle`] (its connection, key prefix, bounded and metered calls, and its
//! heartbeat). Each node counts under its own id, which the broker's heartbeat keeps alive (on
//! one Redis as `<prefix>:pusher:alive:<node>`); readers skip (and delete) what a node that
//! stopped refreshing left behind, so a killed node's sockets stop counting within 15 s (on a
//! Redis Cluster, within 20 s: scripts there learn the gone ids from the heartbeat).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use redis::Script;

use crate::broker::redis::RedisHandle;
use crate::broker::{BoxFuture, BrokerError};
use crate::protocol::pusher::store::{ChannelStore, Member, CACHE_TTL};

static COUNT_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("../../broker/lua/pusher_count.lua")));
static TOTALS_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(include_str!("../../broker/lua/pusher_totals.lua")));

/// The cluster's Pusher state. See the module doc.
pub struct RedisChannels {
    redis: RedisHandle,
    node: String,
}

impl RedisChannels {
    /// A store under `redis`'s prefix, with a fresh node id that the broker's heartbeat keeps
    /// alive.
    pub fn start(redis: RedisHandle) -> Arc<RedisChannels> {
        // The node's number: its incarnations are `<number>.<n>`, so the two never meet.
        let node = redis.node().to_string();
        let store = RedisChannels { redis, node };
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

impl ChannelStore for RedisChannels {
    fn subscribed<'a>(
        &'a self,
        app: &'a str,
        channel: &'a Arc<str>,
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
