//! Delivery reports in the cluster's Redis, shared by every node: `<prefix>:receipt:{<id>}` (a
//! hash) with the acking sockets and uids in two sets beside it (`:a`, `:u`, the same hash
//! tag, so one slot on a Redis Cluster), all expiring with the report.

use std::collections::HashMap;
use std::time::Duration;

use crate::broker::redis::RedisHandle;
use crate::broker::redis_conn::tag_part;
use crate::broker::{BoxFuture, BrokerError};
use crate::live::Current;
use crate::receipts::{unix_secs, Acked, Acker, ReceiptStore, Report, Target};

/// The cluster's reports.
pub struct RedisReceipts {
    redis: RedisHandle,
    /// How long a report is kept.
    ttl: Current<Duration>,
}

impl RedisReceipts {
    /// Reports under `redis`'s prefix, each kept for `ttl`.
    pub fn new(redis: RedisHandle, ttl: Duration) -> RedisReceipts {
        RedisReceipts {
            redis,
            ttl: Current::new(ttl),
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}:receipt:{{{}}}", self.redis.prefix(), tag_part(id))
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.get().as_millis().max(1) as u64
    }
}

impl ReceiptStore for RedisReceipts {
    fn open<'a>(
        &'a self,
        id: &'a str,
        target: &'a Target,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let key = self.key(id);
            let target = serde_json::to_string(target).expect("serializes");
            let mut pipe = redis::pipe();
            pipe.cmd("HSETNX")
                .arg(&key)
                .arg("target")
                .arg(target)
                .ignore();
            pipe.cmd("HSETNX")
                .arg(&key)
                .arg("topic")
                .arg(topic)
                .ignore();
            pipe.cmd("HSETNX")
                .arg(&key)
                .arg("created")
                .arg(unix_secs())
                .ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(self.ttl_ms()).ignore();
            let mut conn = self.redis.conn.clone();
            self.redis
                .call("receipt_open", pipe.query_async::<()>(&mut conn))
                .await
        })
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        sockets: u64,
        offline: &'a [String],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let offline = serde_json::to_string(offline).expect("serializes");
            let mut hset = redis::cmd("HSET");
            hset.arg(self.key(id))
                .arg("sockets")
                .arg(sockets)
                .arg("offline")
                .arg(offline);
            let mut conn = self.redis.conn.clone();
            self.redis
                .call("receipt_complete", hset.query_async::<()>(&mut conn))
                .await
        })
    }

    fn ack<'a>(
        &'a self,
        id: &'a str,
        acker: &'a Acker<'a>,
    ) -> BoxFuture<'a, Result<Acked, BrokerError>> {
        Box::pin(async move {
            let key = self.key(id);
            let mut conn = self.redis.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("HGET").arg(&key).arg("target");
            pipe.cmd("PTTL").arg(&key);
            let (target, pttl): (Option<String>, i64) = self
                .redis
                .call("receipt_check", pipe.query_async(&mut conn))
                .await?;
            let Some(target) = target.and_then(|t| serde_json::from_str::<Target>(&t).ok()) else {
                return Ok(Acked::Unknown);
            };
            if !acker.may_ack(&target) {
                return Ok(Acked::NotFor);
            }
            let (acks, uids) = (format!("{key}:a"), format!("{key}:u"));
            let pttl = if pttl > 0 { pttl as u64 } else { self.ttl_ms() };
            let mut pipe = redis::pipe();
            pipe.cmd("SADD").arg(&acks).arg(&acker.socket);
            pipe.cmd("SADD").arg(&uids).arg(acker.uid).ignore();
            pipe.cmd("PEXPIRE").arg(&acks).arg(pttl).ignore();
            pipe.cmd("PEXPIRE").arg(&uids).arg(pttl).ignore();
            let (added,): (u64,) = self
                .redis
                .call("receipt_ack", pipe.query_async(&mut conn))
                .await?;
            Ok(if added == 1 {
                Acked::Counted
            } else {
                Acked::Repeat
            })
        })
    }

    fn exists<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        Box::pin(async move {
            let mut exists = redis::cmd("EXISTS");
            exists.arg(self.key(id));
            let mut conn = self.redis.conn.clone();
            let n: u64 = self
                .redis
                .call("receipt_exists", exists.query_async(&mut conn))
                .await?;
            Ok(n > 0)
        })
    }

    fn report<'a>(
        &'a self,
        id: &'a str,
        with_uids: bool,
    ) -> BoxFuture<'a, Result<Option<Report>, BrokerError>> {
        Box::pin(async move {
            let key = self.key(id);
            let mut conn = self.redis.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("HGETALL").arg(&key);
            pipe.cmd("SCARD").arg(format!("{key}:a"));
            pipe.cmd("SMEMBERS").arg(format!("{key}:u"));
            let (fields, acks, mut ack_uids): (HashMap<String, String>, u64, Vec<String>) = self
                .redis
                .call("receipt_report", pipe.query_async(&mut conn))
                .await?;
            let Some(target) = fields
                .get("target")
                .and_then(|t| serde_json::from_str::<Target>(t).ok())
            else {
                return Ok(None);
            };
            ack_uids.sort_unstable();
            let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
            Ok(Some(Report {
                id: id.to_owned(),
                target,
                topic: field("topic"),
                created: field("created").parse().unwrap_or(0),
                sockets: field("sockets").parse().unwrap_or(0),
                acks,
                offline: serde_json::from_str(&field("offline")).unwrap_or_default(),
                ack_uids: with_uids.then_some(ack_uids),
            }))
        })
    }

    /// Only the time: Redis holds no count bound.
    fn set_bounds(&self, ttl: Duration, _max: usize) {
        self.ttl.set(ttl);
    }
}
