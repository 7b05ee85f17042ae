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
//! On a single node reports live in memory: at most `receipt_max`, each for `receipt_ttl_secs`,
//! the oldest dropped first. With `redis_url` they live in the cluster's Redis, shared by every
//! node (an ack counts on whichever node the page is), under `<prefix>:receipt:<id>` (a hash)
//! with the acking sockets and uids in two sets beside it, all expiring with the report.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::broker::redis::RedisHandle;
use crate::broker::redis_conn::tag_part;
use crate::broker::BrokerError;

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
    fn may_ack(&self, target: &Target) -> bool {
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

struct Kept {
    target: Target,
    topic: String,
    created: u64,
    sockets: u64,
    offline: Vec<String>,
    acks: HashSet<String>,
    ack_uids: HashSet<String>,
    at: Instant,
}

#[derive(Default)]
struct Memory {
    reports: HashMap<String, Kept>,
    /// Ids in the order they were opened, for expiry and the count bound.
    order: VecDeque<(Instant, String)>,
}

enum Store {
    /// Held for map operations only, never across an await.
    Memory(Mutex<Memory>),
    Redis(RedisHandle),
}

/// The reports of this node, or of the cluster. See the module doc.
pub struct Receipts {
    store: Store,
    /// How long a report is kept, and (in memory) how many at most.
    bounds: crate::live::Live<(Duration, usize)>,
}

impl Receipts {
    /// Reports in memory: at most `max`, each for `ttl`.
    pub fn memory(ttl: Duration, max: usize) -> Receipts {
        Receipts {
            store: Store::Memory(Mutex::default()),
            bounds: crate::live::Live::new((ttl, max)),
        }
    }

    /// Reports in the cluster's Redis, each for `ttl`.
    pub fn redis(redis: RedisHandle, ttl: Duration) -> Receipts {
        Receipts {
            store: Store::Redis(redis),
            bounds: crate::live::Live::new((ttl, usize::MAX)),
        }
    }

    /// A new message id: random, or, for a publish retried with the same `Idempotency-Key`,
    /// the same id again (so the retry's reply names the report of the message that went out).
    pub fn new_id(endpoint: &str, idempotency_key: Option<&str>) -> String {
        let digest: [u8; 32] = match idempotency_key {
            Some(key) => Sha256::digest(format!("receipt\n{endpoint}\n{key}")).into(),
            None => rand::random(),
        };
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn in_memory(&self) -> Option<std::sync::MutexGuard<'_, Memory>> {
        match &self.store {
            Store::Memory(m) => Some(m.lock().unwrap_or_else(|p| p.into_inner())),
            Store::Redis(_) => None,
        }
    }

    fn key(redis: &RedisHandle, id: &str) -> String {
        // A hash tag: the report's sets (`:a`, `:u`) share its slot on a Redis Cluster.
        format!("{}:receipt:{{{}}}", redis.prefix(), tag_part(id))
    }

    /// How long a report is kept now.
    fn ttl(&self) -> Duration {
        self.bounds.get().0
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl().as_millis().max(1) as u64
    }

    /// New bounds (a config reload): how long reports are kept, and in memory how many at
    /// most. Reports kept already follow them from now on.
    pub fn set_bounds(&self, ttl: Duration, max: usize) {
        let max = match self.store {
            Store::Memory(_) => max,
            Store::Redis(_) => usize::MAX,
        };
        self.bounds.set((ttl, max));
    }

    /// Opens the report of message `id` before it is published (a repeat of an open id
    /// changes nothing).
    pub async fn open(&self, id: &str, target: &Target, topic: &str) -> Result<(), BrokerError> {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(mut m) = self.in_memory() {
            let now = Instant::now();
            let (ttl, max) = *self.bounds.get();
            while m
                .order
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) >= ttl)
                || m.order.len() >= max
            {
                let (_, old) = m.order.pop_front().expect("non-empty");
                m.reports.remove(&old);
            }
            if !m.reports.contains_key(id) {
                m.reports.insert(
                    id.to_owned(),
                    Kept {
                        target: target.clone(),
                        topic: topic.to_owned(),
                        created,
                        sockets: 0,
                        offline: Vec::new(),
                        acks: HashSet::new(),
                        ack_uids: HashSet::new(),
                        at: now,
                    },
                );
                m.order.push_back((now, id.to_owned()));
            }
            return Ok(());
        }
        let Store::Redis(redis) = &self.store else {
            unreachable!()
        };
        let key = Receipts::key(redis, id);
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
            .arg(created)
            .ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(self.ttl_ms()).ignore();
        let mut conn = redis.conn.clone();
        redis
            .call("receipt_open", pipe.query_async::<()>(&mut conn))
            .await
    }

    /// Completes the report of message `id` once it was published: the sockets it was queued
    /// to and the uids that were offline.
    pub async fn complete(
        &self,
        id: &str,
        sockets: u64,
        offline: &[String],
    ) -> Result<(), BrokerError> {
        if let Some(mut m) = self.in_memory() {
            if let Some(r) = m.reports.get_mut(id) {
                r.sockets = sockets;
                r.offline = offline.to_vec();
            }
            return Ok(());
        }
        let Store::Redis(redis) = &self.store else {
            unreachable!()
        };
        let key = Receipts::key(redis, id);
        let offline = serde_json::to_string(offline).expect("serializes");
        let mut hset = redis::cmd("HSET");
        hset.arg(&key)
            .arg("sockets")
            .arg(sockets)
            .arg("offline")
            .arg(offline);
        let mut conn = redis.conn.clone();
        redis
            .call("receipt_complete", hset.query_async::<()>(&mut conn))
            .await
    }

    /// Counts an ack of message `id` by `acker`, unless it is refused.
    pub async fn ack(&self, id: &str, acker: &Acker<'_>) -> Result<Acked, BrokerError> {
        if let Some(mut m) = self.in_memory() {
            let ttl = self.ttl();
            let Some(r) = m.reports.get_mut(id).filter(|r| r.at.elapsed() < ttl) else {
                return Ok(Acked::Unknown);
            };
            if !acker.may_ack(&r.target) {
                return Ok(Acked::NotFor);
            }
            if !r.acks.insert(acker.socket.clone()) {
                return Ok(Acked::Repeat);
            }
            r.ack_uids.insert(acker.uid.to_owned());
            return Ok(Acked::Counted);
        }
        let Store::Redis(redis) = &self.store else {
            unreachable!()
        };
        let key = Receipts::key(redis, id);
        let mut conn = redis.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(&key).arg("target");
        pipe.cmd("PTTL").arg(&key);
        let (target, pttl): (Option<String>, i64) = redis
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
        let (added,): (u64,) = redis
            .call("receipt_ack", pipe.query_async(&mut conn))
            .await?;
        Ok(if added == 1 {
            Acked::Counted
        } else {
            Acked::Repeat
        })
    }

    /// Whether the report of message `id` is kept (it changes nothing).
    pub async fn exists(&self, id: &str) -> Result<bool, BrokerError> {
        if let Some(m) = self.in_memory() {
            let ttl = self.ttl();
            return Ok(m.reports.get(id).is_some_and(|r| r.at.elapsed() < ttl));
        }
        let Store::Redis(redis) = &self.store else {
            unreachable!()
        };
        let mut exists = redis::cmd("EXISTS");
        exists.arg(Receipts::key(redis, id));
        let mut conn = redis.conn.clone();
        let n: u64 = redis
            .call("receipt_exists", exists.query_async(&mut conn))
            .await?;
        Ok(n > 0)
    }

    /// The report of message `id`, with the acking uids if `with_uids`; `None` once expired.
    pub async fn report(&self, id: &str, with_uids: bool) -> Result<Option<Report>, BrokerError> {
        if let Some(m) = self.in_memory() {
            let ttl = self.ttl();
            let Some(r) = m.reports.get(id).filter(|r| r.at.elapsed() < ttl) else {
                return Ok(None);
            };
            let mut ack_uids: Vec<String> = r.ack_uids.iter().cloned().collect();
            ack_uids.sort_unstable();
            return Ok(Some(Report {
                id: id.to_owned(),
                target: r.target.clone(),
                topic: r.topic.clone(),
                created: r.created,
                sockets: r.sockets,
                acks: r.acks.len() as u64,
                offline: r.offline.clone(),
                ack_uids: with_uids.then_some(ack_uids),
            }));
        }
        let Store::Redis(redis) = &self.store else {
            unreachable!()
        };
        let key = Receipts::key(redis, id);
        let mut conn = redis.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(&key);
        pipe.cmd("SCARD").arg(format!("{key}:a"));
        pipe.cmd("SMEMBERS").arg(format!("{key}:u"));
        let (fields, acks, mut ack_uids): (HashMap<String, String>, u64, Vec<String>) = redis
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
    }

    /// Drops expired reports (in memory); called periodically.
    pub fn sweep(&self) {
        if let Some(mut m) = self.in_memory() {
            let now = Instant::now();
            let ttl = self.ttl();
            while m
                .order
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) >= ttl)
            {
                let (_, old) = m.order.pop_front().expect("non-empty");
                m.reports.remove(&old);
            }
        }
    }

    /// Reports held in memory (0 with Redis).
    pub fn len(&self) -> usize {
        self.in_memory().map_or(0, |m| m.reports.len())
    }

    /// Whether no report is held in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acker<'a>(
        uid: &'a str,
        socket: &str,
        follows: &'a (dyn Fn(&str) -> bool + Sync),
    ) -> Acker<'a> {
        Acker {
            uid,
            socket: socket.into(),
            follows,
        }
    }

    #[tokio::test]
    async fn acks_count_once_per_socket_and_only_from_recipients() {
        let r = Receipts::memory(Duration::from_secs(60), 10);
        let target = Target::Uids(vec!["a".into(), "b".into()]);
        r.open("1", &target, "t").await.unwrap();
        r.complete("1", 3, &["c".into()]).await.unwrap();
        let none = |_: &str| false;
        assert_eq!(
            r.ack("1", &acker("a", "s1", &none)).await.unwrap(),
            Acked::Counted
        );
        assert_eq!(
            r.ack("1", &acker("a", "s1", &none)).await.unwrap(),
            Acked::Repeat
        );
        assert_eq!(
            r.ack("1", &acker("a", "s2", &none)).await.unwrap(),
            Acked::Counted
        );
        assert_eq!(
            r.ack("1", &acker("z", "s3", &none)).await.unwrap(),
            Acked::NotFor
        );
        assert_eq!(
            r.ack("2", &acker("a", "s1", &none)).await.unwrap(),
            Acked::Unknown
        );
        let report = r.report("1", true).await.unwrap().unwrap();
        assert_eq!((report.sockets, report.acks), (3, 2));
        assert_eq!(report.ack_uids, Some(vec!["a".to_string()]));
        assert_eq!(report.offline, ["c"]);
        assert!(r.exists("1").await.unwrap());
        assert!(!r.exists("2").await.unwrap());
        // A topic's message may be acked by its followers only.
        r.open("3", &Target::Topic("news".into()), "t")
            .await
            .unwrap();
        let news = |t: &str| t == "news";
        assert_eq!(
            r.ack("3", &acker("z", "s3", &none)).await.unwrap(),
            Acked::NotFor
        );
        assert_eq!(
            r.ack("3", &acker("z", "s3", &news)).await.unwrap(),
            Acked::Counted
        );
    }

    #[tokio::test]
    async fn reports_are_bounded_in_number_and_time() {
        let r = Receipts::memory(Duration::from_secs(60), 3);
        for id in ["1", "2", "3", "4"] {
            r.open(id, &Target::Broadcast, "t").await.unwrap();
        }
        assert_eq!(r.len(), 3);
        assert!(
            r.report("1", false).await.unwrap().is_none(),
            "the oldest went"
        );
        assert!(r.report("4", false).await.unwrap().is_some());
        let r = Receipts::memory(Duration::ZERO, 3);
        r.open("1", &Target::Broadcast, "t").await.unwrap();
        assert!(r.report("1", false).await.unwrap().is_none());
        r.sweep();
        assert!(r.is_empty());
        assert_ne!(
            Receipts::new_id("push", None),
            Receipts::new_id("push", None)
        );
        assert_eq!(
            Receipts::new_id("push", Some("k")),
            Receipts::new_id("push", Some("k"))
        );
        assert_ne!(
            Receipts::new_id("push", Some("k")),
            Receipts::new_id("publish", Some("k"))
        );
    }
}
