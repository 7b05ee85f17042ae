//! The in-memory broker: one node, no dependency, the default.
//!
//! Each stream numbers its messages (1, 2, 3… within a *generation*, a random id drawn when the
//! stream is created) and keeps the last `history_size` of them for `history_ttl`, so a socket
//! that reconnects with its last position gets what it missed. A publish numbers the message
//! and keeps it under the stream's shard lock, then delivers it to the registry under the
//! shard's delivery lock only, which publishes of the shard take in turn: deliveries of one
//! stream happen in number order, and a connect (which needs the shard lock to read where its
//! streams stand) never waits while a broadcast walks every socket.
//!
//! Memory is bounded by `history_max_bytes`, which counts each remembered stream's metadata
//! as well as its messages: a flood of pushes to uids that never connect cannot grow the
//! number of remembered streams past the budget (a stream that would not fit is not kept; its
//! message still reaches any seed socket following it).
//!
//! Lock order: a shard's delivery lock, then the shard, then a registry shard (inside
//! [`Registry::deliver`] or [`Registry::followers`]); the registry never takes a broker lock.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{
    plan_replay, Attach, Attached, BoxFuture, Broker, BrokerError, ClusterView, Published, Replay,
    Retention,
};
use crate::registry::Registry;
use crate::wire::{Frame, Message, Position, StreamKey};

const SHARDS: usize = 64;

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(300);
/// Most idempotency keys remembered per shard (64 shards); past it, new keys are not
/// remembered until old ones expire.
const IDEMPOTENCY_MAX_PER_SHARD: usize = 2048;

struct Retained {
    seq: u64,
    frame: Frame,
    at: Instant,
}

struct Stream {
    generation: u64,
    seq: u64,
    history: VecDeque<Retained>,
    /// Last publish or attach, or last sweep that saw a follower here. A stream with no
    /// sockets and no history is still kept (about 100 bytes) until this is `meta_ttl` old, so
    /// a client resuming within that time is told exactly what it missed instead of a
    /// precautionary gap.
    touched: Instant,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            generation: rand::random(),
            seq: 0,
            history: VecDeque::new(),
            touched: Instant::now(),
        }
    }

    fn position(&self) -> Position {
        Position {
            generation: self.generation,
            seq: self.seq,
        }
    }
}

struct Recent {
    published: Published,
    at: Instant,
}

#[derive(Default)]
struct Shard {
    streams: HashMap<StreamKey, Stream>,
    /// Outcomes of publishes made with an idempotency key, by stream and key.
    recent: HashMap<(StreamKey, Box<str>), Recent>,
}

fn shard_index(key: &StreamKey) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

/// Streams' numbering and history in this process.
pub struct LocalBroker {
    registry: Arc<Registry>,
    shards: Box<[Mutex<Shard>]>,
    /// Per shard: held by a publish while it delivers (see `publish_now`).
    delivering: Box<[Mutex<()>]>,
    retention: Retention,
    history_bytes: AtomicUsize,
}

impl LocalBroker {
    /// A broker delivering into `registry`, keeping history as `retention` says.
    pub fn new(registry: Arc<Registry>, retention: Retention) -> LocalBroker {
        LocalBroker {
            registry,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            delivering: (0..SHARDS).map(|_| Mutex::default()).collect(),
            retention,
            history_bytes: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &StreamKey) -> MutexGuard<'_, Shard> {
        self.lock(shard_index(key))
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        // Every critical section leaves the maps consistent at each step it could panic in.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_now(&self, key: &StreamKey, msg: Message<'_>, idem: Option<&str>) -> Published {
        let keep = self.retention.history_size > 0 && key.keeps_history();
        let i = shard_index(key);
        // Held until the message reached every socket here: publishes of one shard deliver in
        // the order they were numbered in. The shard itself is held only to number and keep
        // the message, so a connect's attach never waits for a delivery (a broadcast walks
        // every socket of the node).
        let _turn = self.delivering[i].lock().unwrap_or_else(|p| p.into_inner());
        let (pos, numbered, retained) = {
            let mut guard = self.lock(i);
            let shard = &mut *guard;
            if let Some(idem) = idem {
                if let Some(recent) = shard.recent.get(&(key.clone(), idem.into())) {
                    if recent.at.elapsed() < IDEMPOTENCY_TTL {
                        return Published {
                            repeated: true,
                            ..recent.published
                        };
                    }
                }
            }
            if keep && !shard.streams.contains_key(key) && self.charge(meta_cost(key)) {
                // Only a new stream costs a copy of its key.
                shard.streams.insert(key.clone(), Stream::new());
            }
            match shard.streams.get_mut(key) {
                // No history and no resumable socket (it would have made the stream): seed
                // sockets need no number. Or no room to remember one more stream.
                None => (
                    Position {
                        generation: 0,
                        seq: 0,
                    },
                    None,
                    false,
                ),
                Some(stream) => {
                    stream.seq += 1;
                    stream.touched = Instant::now();
                    // Kept before it is delivered: a socket attaching meanwhile reads a
                    // position that its replay covers, and drops the live frame as a repeat.
                    let (numbered, retained) = match keep {
                        true => {
                            let frame = msg.stream_frame(stream.seq, &key.name());
                            let retained = self.retain(stream, frame.clone());
                            (Some(frame), retained)
                        }
                        false => (None, false),
                    };
                    (stream.position(), numbered, retained)
                }
            }
        };
        let delivered = self.registry.deliver(key, pos, &msg, numbered);
        let published = Published {
            sockets: delivered.sockets,
            seq: pos.seq,
            retained,
            repeated: false,
        };
        if let Some(idem) = idem {
            let mut shard = self.lock(i);
            if shard.recent.len() >= IDEMPOTENCY_MAX_PER_SHARD {
                shard.recent.retain(|_, r| r.at.elapsed() < IDEMPOTENCY_TTL);
            }
            if shard.recent.len() < IDEMPOTENCY_MAX_PER_SHARD {
                shard.recent.insert(
                    (key.clone(), idem.into()),
                    Recent {
                        published,
                        at: Instant::now(),
                    },
                );
            }
        }
        published
    }

    /// Counts `cost` bytes against the budget if they fit.
    fn charge(&self, cost: usize) -> bool {
        let budget = self.retention.max_bytes;
        self.history_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + cost <= budget).then_some(used + cost)
            })
            .is_ok()
    }

    /// Adds the stream's newest message to its history, then trims it to `history_size` and,
    /// while all history is over `max_bytes`, drops this stream's oldest messages (the new one
    /// last). So the budget is a hard bound; when other streams fill it, this one keeps nothing
    /// until their messages expire. Returns whether the new message was kept.
    fn retain(&self, stream: &mut Stream, frame: Frame) -> bool {
        let seq = stream.seq;
        let cost = retained_cost(&frame);
        stream.history.push_back(Retained {
            seq,
            frame,
            at: Instant::now(),
        });
        let mut total = self.history_bytes.fetch_add(cost, Ordering::Relaxed) + cost;
        while stream.history.len() > self.retention.history_size
            || (total > self.retention.max_bytes && !stream.history.is_empty())
        {
            let old = stream.history.pop_front().expect("non-empty");
            let freed = retained_cost(&old.frame);
            total = self.history_bytes.fetch_sub(freed, Ordering::Relaxed) - freed;
        }
        stream.history.back().is_some_and(|m| m.seq == seq)
    }

    fn attach_now(&self, streams: &[Attach<'_>]) -> Vec<Attached> {
        streams
            .iter()
            .map(|a| {
                let mut shard = self.shard(a.key);
                let stream = shard.streams.entry(a.key.clone()).or_insert_with(|| {
                    // A socket's own streams are always remembered (bounded by sockets).
                    self.history_bytes
                        .fetch_add(meta_cost(a.key), Ordering::Relaxed);
                    Stream::new()
                });
                stream.touched = Instant::now();
                let position = stream.position();
                let replay = a.since.map(|since| {
                    let oldest = stream.history.front().map_or(position.seq + 1, |m| m.seq);
                    let (from, gap_before) = plan_replay(since, position, oldest);
                    Replay {
                        gap_before,
                        frames: stream
                            .history
                            .iter()
                            .filter(|m| m.seq > from)
                            .map(|m| m.frame.clone())
                            .collect(),
                    }
                });
                Attached { position, replay }
            })
            .collect()
    }
}

impl Broker for LocalBroker {
    fn publish<'a>(
        &'a self,
        key: &'a StreamKey,
        msg: Message<'a>,
        idempotency_key: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Published, BrokerError>> {
        let published = self.publish_now(key, msg, idempotency_key);
        Box::pin(std::future::ready(Ok(published)))
    }

    fn attach<'a>(
        &'a self,
        streams: &'a [Attach<'a>],
        positions: bool,
    ) -> BoxFuture<'a, Result<Option<Vec<Attached>>, BrokerError>> {
        // Seed sockets need nothing from the broker: the registry is this node's presence.
        let attached = positions.then(|| self.attach_now(streams));
        Box::pin(std::future::ready(Ok(attached)))
    }

    fn sockets_of<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<usize, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.registry.sockets_of(uid))))
    }

    fn cluster(&self) -> BoxFuture<'_, Result<Option<ClusterView>, BrokerError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn history_bytes(&self) -> usize {
        self.history_bytes.load(Ordering::Relaxed)
    }

    fn command<'a>(
        &'a self,
        command: &'a crate::commands::Command,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        command.run(&self.registry);
        Box::pin(std::future::ready(Ok(())))
    }

    fn is_ready(&self) -> bool {
        true
    }

    /// Drops history older than the retention time, and streams that have had neither
    /// followers nor history for [`Retention::meta_ttl`].
    fn sweep(&self) {
        let ttl = self.retention.history_ttl;
        let meta_ttl = self.retention.meta_ttl();
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.streams.retain(|key, stream| {
                while stream
                    .history
                    .front()
                    .is_some_and(|m| now.duration_since(m.at) >= ttl)
                {
                    let old = stream.history.pop_front().expect("non-empty");
                    self.history_bytes
                        .fetch_sub(retained_cost(&old.frame), Ordering::Relaxed);
                }
                if self.registry.followers(key) > 0 {
                    stream.touched = now;
                }
                let keep =
                    !stream.history.is_empty() || now.duration_since(stream.touched) < meta_ttl;
                if !keep {
                    self.history_bytes
                        .fetch_sub(meta_cost(key), Ordering::Relaxed);
                }
                keep
            });
            shard
                .recent
                .retain(|_, r| now.duration_since(r.at) < IDEMPOTENCY_TTL);
        }
    }
}

/// Approximate bytes one retained message holds.
fn retained_cost(frame: &Frame) -> usize {
    frame.len() + 64
}

/// Approximate bytes a remembered stream holds besides its messages (map entry, key,
/// generation, position, history ring).
fn meta_cost(key: &StreamKey) -> usize {
    let key_bytes = match key {
        StreamKey::User(s) | StreamKey::Topic(s) => s.len(),
        StreamKey::Broadcast => 0,
        StreamKey::Channel { app, name } => app.len() + name.len(),
    };
    128 + key_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Subscription;
    use crate::wire::Proto;
    use serde_json::value::RawValue;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn user(uid: &str) -> StreamKey {
        StreamKey::User(uid.into())
    }

    fn publish(b: &LocalBroker, key: &StreamKey, contents: &str) -> Published {
        let c = raw(contents);
        b.publish_now(key, Message::new("t", &c), None)
    }

    fn resumable(uid: &str) -> Subscription {
        Subscription {
            uid: uid.into(),
            topics: vec![],
            proto: Proto::Resumable,
        }
    }

    fn retention(history_size: usize, ttl_secs: u64, max_bytes: usize) -> Retention {
        Retention {
            history_size,
            history_ttl: Duration::from_secs(ttl_secs),
            max_bytes,
        }
    }

    fn texts(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(|f| f.as_str().to_string()).collect()
    }

    fn resume(b: &LocalBroker, key: &StreamKey, since: Option<Position>) -> Attached {
        let a = Attach {
            key,
            since: Some(since),
        };
        b.attach_now(&[a]).remove(0)
    }

    /// A connect reads where its streams stand while a publish of the same shard is still
    /// delivering (a broadcast walks every socket of the node): only the delivery lock is held
    /// then, and an attach never takes it. Once it took the shard lock for the whole walk.
    #[test]
    fn an_attach_does_not_wait_for_a_delivery_in_progress() {
        let registry = Arc::new(Registry::new(crate::registry::tests::frames(8)));
        let b = Arc::new(LocalBroker::new(registry, retention(8, 60, 1 << 20)));
        publish(&b, &StreamKey::Broadcast, "1");
        let delivering = b.delivering[shard_index(&StreamKey::Broadcast)]
            .lock()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let attacher = {
            let b = b.clone();
            std::thread::spawn(move || {
                let at = resume(&b, &StreamKey::Broadcast, None).position.seq;
                let _ = tx.send(at);
            })
        };
        let got = rx.recv_timeout(Duration::from_secs(10));
        drop(delivering);
        attacher.join().unwrap();
        assert_eq!(got, Ok(1), "the attach waited for the delivery");
    }

    #[test]
    fn resume_replays_what_was_missed_with_a_gap_when_some_is_gone() {
        let registry = Arc::new(Registry::new(crate::registry::tests::frames(8)));
        let b = LocalBroker::new(registry.clone(), retention(3, 60, 1 << 20));
        let key = user("a");
        let start = b.attach_now(&[Attach {
            key: &key,
            since: None,
        }])[0]
            .position;
        for i in 1..=5 {
            assert_eq!(publish(&b, &key, &i.to_string()).seq, i);
        }
        // Saw up to 3: gets 4 and 5.
        let got = resume(&b, &key, Some(Position { seq: 3, ..start }));
        assert_eq!(got.position.seq, 5);
        let replay = got.replay.unwrap();
        assert_eq!(replay.gap_before, None);
        assert_eq!(
            texts(&replay.frames),
            [
                r#"{"topic":"t","number":4,"contents":4,"stream":"user"}"#,
                r#"{"topic":"t","number":5,"contents":5,"stream":"user"}"#
            ]
        );
        // Saw only 1: 2 is gone (history keeps 3), so a gap before 3, then 3..=5.
        let replay = resume(&b, &key, Some(Position { seq: 1, ..start }))
            .replay
            .unwrap();
        assert_eq!(replay.gap_before, Some(3));
        assert_eq!(replay.frames.len(), 3);
        // A live socket of that uid receives the next one once.
        let m = registry.join(resumable("a"));
        publish(&b, &key, "6");
        assert!(m.outbox().pop().unwrap().contains(r#""number":6"#));
    }

    #[test]
    fn history_never_exceeds_its_byte_budget() {
        let b = LocalBroker::new(
            Arc::new(Registry::new(crate::registry::tests::frames(8))),
            retention(100, 60, 10_000),
        );
        let big = format!("\"{}\"", "x".repeat(900));
        // A stream that exists before the budget fills up.
        assert!(publish(&b, &user("busy"), "0").retained);
        // One message to each of many offline uids: every stream keeps at most what fits.
        let mut kept = 0;
        for i in 0..200 {
            let p = publish(&b, &user(&format!("u{i}")), &big);
            kept += usize::from(p.retained);
            let bytes = b.history_bytes();
            assert!(bytes <= 10_000, "{bytes} bytes after {i}");
        }
        assert!(kept >= 7, "the first messages fit: {kept}");
        assert!(kept < 200, "not all of them can fit: {kept}");
        // A stream over budget drops its own oldest first and keeps the newest.
        for i in 1..50 {
            let p = publish(&b, &user("busy"), &i.to_string());
            assert!(b.history_bytes() <= 10_000);
            assert!(p.retained, "a small message fits once the stream rotates");
        }
    }

    #[test]
    fn pushes_to_uids_that_never_connect_cannot_grow_memory_past_the_budget() {
        let registry = Arc::new(Registry::new(crate::registry::tests::frames(8)));
        let b = LocalBroker::new(registry.clone(), retention(100, 60, 100_000));
        let seed = registry.join(Subscription::seed("online"));
        let mut kept = 0;
        for i in 0..10_000 {
            kept += usize::from(publish(&b, &user(&format!("gone-{i}")), "1").retained);
            assert!(b.history_bytes() <= 100_000);
        }
        let streams: usize = b
            .shards
            .iter()
            .map(|s| s.lock().unwrap().streams.len())
            .sum();
        assert!(streams < 600, "{streams} streams remembered");
        assert!(
            kept > 100 && kept + 1 >= streams,
            "{kept} kept, {streams} streams"
        );
        // With the budget full, a seed socket still gets its pushes.
        assert_eq!(publish(&b, &user("online"), "2").sockets, 1);
        assert!(seed.outbox().pop().is_some());
    }

    #[test]
    fn a_forgotten_stream_is_reported_as_a_gap() {
        let registry = Arc::new(Registry::new(crate::registry::tests::frames(8)));
        let b = LocalBroker::new(registry.clone(), retention(10, 0, 1 << 20));
        let key = user("a");
        let member = registry.join(resumable("a"));
        let pos = resume(&b, &key, None).position;
        drop(member);
        // Idle streams are remembered for a while: resuming now is exact (no gap)...
        assert_eq!(resume(&b, &key, Some(pos)).replay.unwrap().gap_before, None);
        // ...until the sweeper forgets them (here: as if meta_ttl had passed).
        for shard in b.shards.iter() {
            for stream in shard.lock().unwrap().streams.values_mut() {
                stream.touched -= b.retention.meta_ttl();
            }
        }
        b.sweep();
        assert!(b
            .shards
            .iter()
            .all(|s| s.lock().unwrap().streams.is_empty()));
        let replay = resume(&b, &key, Some(pos)).replay.unwrap();
        assert_eq!(replay.gap_before, Some(1));
        assert!(replay.frames.is_empty());
    }

    #[test]
    fn a_followed_stream_is_never_forgotten() {
        let registry = Arc::new(Registry::new(crate::registry::tests::frames(8)));
        let b = LocalBroker::new(registry.clone(), retention(10, 0, 1 << 20));
        let _member = registry.join(Subscription::seed("a"));
        let pos = resume(&b, &user("a"), None).position;
        for shard in b.shards.iter() {
            for stream in shard.lock().unwrap().streams.values_mut() {
                stream.touched -= b.retention.meta_ttl();
            }
        }
        b.sweep();
        assert_eq!(resume(&b, &user("a"), None).position, pos);
    }

    #[test]
    fn an_idempotency_key_publishes_once() {
        let registry = Arc::new(Registry::new(crate::registry::tests::frames(8)));
        let b = LocalBroker::new(registry.clone(), retention(10, 60, 1 << 20));
        let m = registry.join(Subscription::seed("a"));
        let c = raw("1");
        let msg = Message::new("t", &c);
        let first = b.publish_now(&user("a"), msg, Some("k1"));
        let again = b.publish_now(&user("a"), msg, Some("k1"));
        assert!(!first.repeated && again.repeated);
        assert_eq!((again.seq, again.sockets), (first.seq, first.sockets));
        // The same key on another stream is another publish.
        assert!(!b.publish_now(&user("b"), msg, Some("k1")).repeated);
        assert!(m.outbox().pop().is_some());
        assert!(m.outbox().pop().is_none(), "delivered once");
    }
}
