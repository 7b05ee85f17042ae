//! The registry of streams and the sockets that follow them.
//!
//! A *stream* is what a message is published to: one uid's own stream (the seed's `/push`), a
//! topic, or the broadcast stream that every socket follows. Each stream numbers its messages
//! (1, 2, 3… within a *generation*, a random id drawn when the stream is created) and keeps the
//! last `history_size` of them for `history_ttl`, so a socket that reconnects with its last
//! position gets what it missed, in order, exactly once, before anything live.
//!
//! Streams live in shards keyed by hash. Each shard is a `std::sync::Mutex`: every critical
//! section is map operations, one serialization and `try_send`s, never an `.await`, so a blocking
//! mutex is cheaper than an async one (mini-redis `db.rs` reasons the same way). Registering a
//! socket and computing its replay happen under the stream's lock, which is what makes "missed
//! messages, then live ones, none twice" exact.
//!
//! Delivery never waits: a frame is `try_send`-ed into each socket's bounded queue. A socket
//! whose queue is full is a slow reader; it is removed and told to close (code 4008), and the
//! publish goes on to the others.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::frame;
use crate::outbox::{Outbox, Pushed};

const SHARDS: usize = 64;

/// Streams with up to this many sockets drop a leaving socket at once (a short scan). Larger
/// ones (the broadcast stream, a busy topic) let it go lazily: its outbox already refuses
/// frames, so leaving stays O(1), and the leftovers are dropped in one pass when they reach
/// half the list, at the next publish, or at the next sweep. A scan per leave would make a mass
/// disconnect quadratic, under the lock every connect and broadcast needs.
const EAGER_REMOVAL_MAX: usize = 64;

/// A serialized frame, shared by every socket it goes to. An `Arc` (one word) rather than the
/// 4-word `Utf8Bytes` keeps each socket's queue block at 256 bytes instead of 1 KiB.
pub type Frame = Arc<Utf8Bytes>;

/// Identifies one registered socket.
pub type SocketId = u64;

/// What a socket speaks. Seed sockets get exactly the original frames (`number` 1, no extra
/// field); resumable sockets (`/ws?…&proto=2`) get sequence numbers, the stream name, and the
/// `_welcome`/`_gap` control frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// The seed's frames, byte for byte.
    Seed,
    /// Numbered frames with a `stream` field; resumable.
    Resumable,
}

/// Names a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamKey {
    /// One uid's own stream (`/push`).
    User(Box<str>),
    /// A topic (`/publish`), followed by sockets whose access key grants it.
    Topic(Box<str>),
    /// Every socket (`/broadcast`).
    Broadcast,
}

impl StreamKey {
    /// The stream's name as a socket sees it: `user`, `broadcast` or `topic:<name>` (a socket
    /// only ever follows its own uid's stream, so `user` is unambiguous).
    pub fn name(&self) -> String {
        match self {
            StreamKey::User(_) => "user".into(),
            StreamKey::Topic(t) => format!("topic:{t}"),
            StreamKey::Broadcast => "broadcast".into(),
        }
    }
}

/// Retention settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Messages kept per stream (0: no history, no resume).
    pub history_size: usize,
    /// How long a message is kept.
    pub history_ttl: Duration,
    /// Bytes of history kept across all streams; past it, a stream's oldest messages go first.
    pub max_bytes: usize,
}

impl Retention {
    /// How long an idle stream's generation and position are remembered after its last
    /// message expired: twice the history time, at least a minute.
    pub fn meta_ttl(&self) -> Duration {
        (self.history_ttl * 2).max(Duration::from_secs(60))
    }
}

impl Retention {
    /// No history at all.
    pub const NONE: Retention = Retention {
        history_size: 0,
        history_ttl: Duration::ZERO,
        max_bytes: 0,
    };
}

/// The hub's side of one socket.
struct Peer {
    id: SocketId,
    proto: Proto,
    outbox: Arc<Outbox>,
}

struct Retained {
    seq: u64,
    frame: Frame,
    at: Instant,
}

struct Stream {
    generation: u64,
    seq: u64,
    peers: Vec<Peer>,
    /// Sockets that left but may still be in `peers` (at most this many; see
    /// [`EAGER_REMOVAL_MAX`]).
    dead: usize,
    history: VecDeque<Retained>,
    /// Last publish or unsubscribe. A stream with no sockets and no history is still kept
    /// (about 100 bytes) until this is `meta_ttl` old, so a client resuming within that time is
    /// told exactly what it missed instead of a precautionary gap.
    touched: Instant,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            generation: rand::random(),
            seq: 0,
            peers: Vec::new(),
            dead: 0,
            history: VecDeque::new(),
            touched: Instant::now(),
        }
    }

    fn position(&self) -> String {
        format!("{:016x}:{}", self.generation, self.seq)
    }

    /// Takes socket `id` (whose outbox is already detached) off this stream.
    fn remove_peer(&mut self, id: SocketId) {
        if self.peers.len() <= EAGER_REMOVAL_MAX {
            if let Some(i) = self.peers.iter().position(|p| p.id == id) {
                self.peers.swap_remove(i);
            }
        } else {
            self.dead += 1;
            if self.dead * 2 >= self.peers.len() {
                self.compact();
            }
        }
    }

    /// Drops every peer that left or was evicted.
    fn compact(&mut self) {
        self.peers.retain(|p| !p.outbox.is_gone());
        self.dead = 0;
    }

    /// Sockets following this stream.
    fn live(&self) -> usize {
        if self.dead == 0 {
            self.peers.len()
        } else {
            self.peers.iter().filter(|p| !p.outbox.is_gone()).count()
        }
    }
}

type Shard = HashMap<StreamKey, Stream>;

/// What a socket follows and how it wants its frames.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The socket's uid.
    pub uid: String,
    /// Topics its access key grants.
    pub topics: Vec<String>,
    /// Frame format.
    pub proto: Proto,
}

impl Subscription {
    /// The seed's kind of socket: its uid's stream and broadcasts, seed frames.
    pub fn seed(uid: impl Into<String>) -> Subscription {
        Subscription {
            uid: uid.into(),
            topics: Vec::new(),
            proto: Proto::Seed,
        }
    }

    fn keys(&self) -> impl Iterator<Item = StreamKey> + '_ {
        [
            StreamKey::User(self.uid.as_str().into()),
            StreamKey::Broadcast,
        ]
        .into_iter()
        .chain(
            self.topics
                .iter()
                .map(|t| StreamKey::Topic(t.as_str().into())),
        )
    }
}

/// The socket task's side of its registration.
pub struct Registration {
    /// This socket's id, for [`Hub::unregister`].
    pub id: SocketId,
    /// Frames to write first, before anything from `outbox`: for a resumable socket the
    /// `_welcome` frame, then per stream any `_gap` frame and the missed messages.
    pub preamble: Vec<Frame>,
    /// Live frames, in publish order per stream; also tells the task it was evicted.
    pub outbox: Arc<Outbox>,
}

/// Outcome of one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Sockets the frame was queued to.
    pub sockets: usize,
    /// The message's sequence number in its stream (0 if the stream does not exist and
    /// nothing was kept).
    pub seq: u64,
    /// Whether it went into the stream's history.
    pub retained: bool,
}

/// All streams, with counters for logging and the stats endpoint.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    queue_len: usize,
    retention: Retention,
    next_id: AtomicU64,
    sockets: AtomicUsize,
    history_bytes: AtomicUsize,
}

impl Hub {
    /// An empty hub without history; each socket queues at most `queue_len` frames.
    pub fn new(queue_len: usize) -> Hub {
        Hub::with_retention(queue_len, Retention::NONE)
    }

    /// An empty hub keeping history as `retention` says.
    pub fn with_retention(queue_len: usize, retention: Retention) -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            queue_len,
            retention,
            next_id: AtomicU64::new(1),
            sockets: AtomicUsize::new(0),
            history_bytes: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &StreamKey) -> MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        // Each critical section leaves the map consistent at every step it could panic in
        // (none is expected), so a poisoned lock is still safe to use.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A seed socket for `uid` (its own stream and broadcasts).
    pub fn register(&self, uid: &str) -> Registration {
        self.subscribe(&Subscription::seed(uid), None)
    }

    /// Adds a socket to every stream of `sub`. With `resume` (stream name → `generation:seq`,
    /// the last message the client saw), the preamble carries what it missed.
    pub fn subscribe(
        &self,
        sub: &Subscription,
        resume: Option<&HashMap<String, String>>,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::default());
        let mut positions = Vec::new();
        let mut catch_up = Vec::new();
        for key in sub.keys() {
            let mut shard = self.shard(&key);
            let stream = shard.entry(key.clone()).or_insert_with(Stream::new);
            stream.peers.push(Peer {
                id,
                proto: sub.proto,
                outbox: outbox.clone(),
            });
            if sub.proto == Proto::Resumable {
                let name = key.name();
                if let Some(since) = resume.and_then(|r| r.get(&name)) {
                    replay(stream, &name, since, &mut catch_up);
                }
                positions.push((name, stream.position()));
            }
        }
        self.sockets.fetch_add(1, Ordering::Relaxed);
        let mut preamble = Vec::new();
        if sub.proto == Proto::Resumable {
            preamble.push(frame::welcome(&positions));
            preamble.append(&mut catch_up);
        }
        Registration {
            id,
            preamble,
            outbox,
        }
    }

    /// Removes a seed socket registered with [`Hub::register`].
    pub fn unregister(&self, uid: &str, registration: &Registration) {
        self.unsubscribe(&Subscription::seed(uid), registration)
    }

    /// Removes a socket from every stream of `sub` (it may already be gone from some, evicted
    /// as a slow reader). Its outbox refuses new frames from here on but keeps those already
    /// queued (a shutting-down socket still writes them). Streams left idle are dropped later by
    /// [`Hub::sweep`]. Call exactly once per [`Hub::subscribe`]: the socket task's one cleanup
    /// path does.
    pub fn unsubscribe(&self, sub: &Subscription, registration: &Registration) {
        registration.outbox.detach();
        for key in sub.keys() {
            let mut shard = self.shard(&key);
            let Some(stream) = shard.get_mut(&key) else {
                continue;
            };
            stream.remove_peer(registration.id);
            stream.touched = Instant::now();
        }
        self.sockets.fetch_sub(1, Ordering::Relaxed);
    }

    /// Publishes `contents` under `topic` to stream `key`: queued to every socket following it
    /// (never waiting), and kept in its history if retention is on.
    pub fn publish(&self, key: &StreamKey, topic: &str, contents: &RawValue) -> Delivery {
        let keep = self.retention.history_size > 0;
        let mut shard = self.shard(key);
        if keep && !shard.contains_key(key) {
            // Only a new stream costs a copy of its key.
            shard.insert(key.clone(), Stream::new());
        }
        let Some(stream) = shard.get_mut(key) else {
            return Delivery {
                sockets: 0,
                seq: 0,
                retained: false,
            };
        };
        stream.seq += 1;
        stream.touched = Instant::now();
        let seq = stream.seq;
        let mut seed_frame = None;
        let mut numbered = None;
        let mut sockets = 0;
        stream.peers.retain(|peer| {
            let frame = match peer.proto {
                Proto::Seed => seed_frame
                    .get_or_insert_with(|| Arc::new(frame::push_frame(topic, 1, contents))),
                Proto::Resumable => numbered.get_or_insert_with(|| {
                    Arc::new(frame::stream_frame(topic, seq, contents, &key.name()))
                }),
            };
            match peer.outbox.push(frame.clone(), self.queue_len) {
                Pushed::Queued => {
                    sockets += 1;
                    true
                }
                // Slow reader: cut loose (its task is woken to close it) so it cannot hold
                // memory or delay anyone.
                Pushed::Evicted => false,
                // It left (or is leaving) this stream.
                Pushed::Closed => false,
            }
        });
        // Every peer that left was just dropped.
        stream.dead = 0;
        let retained = keep && {
            let frame = numbered.unwrap_or_else(|| {
                Arc::new(frame::stream_frame(topic, seq, contents, &key.name()))
            });
            self.retain(stream, seq, frame)
        };
        Delivery {
            sockets,
            seq,
            retained,
        }
    }

    /// Adds message `seq` to the stream's history, then trims it to `history_size` and, while
    /// all history is over `max_bytes`, drops this stream's oldest messages (the new one last).
    /// So the budget is a hard bound; when other streams fill it, this one keeps nothing until
    /// their messages expire. Returns whether the new message was kept.
    fn retain(&self, stream: &mut Stream, seq: u64, frame: Frame) -> bool {
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

    /// Drops history older than the retention time, and streams that have had neither sockets
    /// nor history for [`Retention::meta_ttl`]. Called periodically.
    pub fn sweep(&self) {
        let ttl = self.retention.history_ttl;
        let meta_ttl = self.retention.meta_ttl();
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, stream| {
                if stream.dead > 0 {
                    stream.compact();
                }
                while stream
                    .history
                    .front()
                    .is_some_and(|m| now.duration_since(m.at) >= ttl)
                {
                    let old = stream.history.pop_front().expect("non-empty");
                    self.history_bytes
                        .fetch_sub(retained_cost(&old.frame), Ordering::Relaxed);
                }
                !stream.peers.is_empty()
                    || !stream.history.is_empty()
                    || now.duration_since(stream.touched) < meta_ttl
            });
        }
    }

    /// How many sockets follow `key`.
    pub fn followers(&self, key: &StreamKey) -> usize {
        self.shard(key).get(key).map_or(0, Stream::live)
    }

    /// How many sockets `uid` has open.
    pub fn sockets_of(&self, uid: &str) -> usize {
        self.followers(&StreamKey::User(uid.into()))
    }

    /// Total live sockets.
    pub fn socket_count(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }

    /// Counts over all streams: (uids with a socket, topics with a follower, history bytes).
    pub fn totals(&self) -> (usize, usize, usize) {
        let (mut uids, mut topics) = (0, 0);
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (key, stream) in shard.iter() {
                if stream.live() == 0 {
                    continue;
                }
                match key {
                    StreamKey::User(_) => uids += 1,
                    StreamKey::Topic(_) => topics += 1,
                    StreamKey::Broadcast => {}
                }
            }
        }
        (uids, topics, self.history_bytes.load(Ordering::Relaxed))
    }
}

/// Approximate bytes one retained message holds.
fn retained_cost(frame: &Frame) -> usize {
    frame.len() + 64
}

/// Appends to `out` what a client that last saw `since` (`generation:seq`) in this stream
/// missed: a `_gap` frame if some of it is no longer kept, then every kept message after it.
fn replay(stream: &Stream, name: &str, since: &str, out: &mut Vec<Frame>) {
    let parsed = since
        .split_once(':')
        .and_then(|(g, s)| Some((u64::from_str_radix(g, 16).ok()?, s.parse::<u64>().ok()?)));
    let oldest = stream.history.front().map_or(stream.seq + 1, |m| m.seq);
    let from = match parsed {
        // Same generation: resume after its position (a position from the future means
        // nothing was missed). Anything between it and the oldest kept message is lost.
        Some((generation, seq)) if generation == stream.generation => {
            let from = seq.min(stream.seq);
            if from + 1 < oldest {
                out.push(frame::gap(name, since, oldest));
            }
            from
        }
        // Another generation (the stream was dropped and made again, or the server
        // restarted) or a malformed position: everything kept is new to the client, and
        // whatever it missed before that is lost.
        _ => {
            out.push(frame::gap(name, since, oldest));
            0
        }
    };
    out.extend(
        stream
            .history
            .iter()
            .filter(|m| m.seq > from)
            .map(|m| m.frame.clone()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn user(uid: &str) -> StreamKey {
        StreamKey::User(uid.into())
    }

    #[tokio::test]
    async fn frames_reach_every_socket_of_the_uid_only() {
        let hub = Hub::new(4);
        let a1 = hub.register("a");
        let a2 = hub.register("a");
        let b = hub.register("b");
        assert_eq!(hub.publish(&user("a"), "t", &raw("1")).sockets, 2);
        let expected = r#"{"topic":"t","number":1,"contents":1}"#;
        assert_eq!(a1.outbox.pop().unwrap().as_str(), expected);
        assert_eq!(a2.outbox.pop().unwrap().as_str(), expected);
        assert!(b.outbox.pop().is_none());
        hub.unregister("a", &a1);
        assert_eq!(hub.sockets_of("a"), 1);
        hub.unregister("a", &a2);
        assert_eq!(hub.publish(&user("a"), "t", &raw("2")).sockets, 0);
        assert_eq!(hub.socket_count(), 1);
        assert_eq!(hub.totals().0, 1);
    }

    #[tokio::test]
    async fn leaving_a_crowded_stream_is_exact_and_memory_stays_bounded() {
        let hub = Hub::new(4);
        const N: usize = 1000;
        let regs: Vec<Registration> = (0..N).map(|i| hub.register(&format!("u{i}"))).collect();
        assert_eq!(hub.followers(&StreamKey::Broadcast), N);
        // Leave in an order that is neither the join order nor its reverse (7 is coprime
        // with 1000, so this visits every socket once).
        for (left, i) in (0..N).map(|k| (k * 7) % N).enumerate() {
            hub.unregister(&format!("u{i}"), &regs[i]);
            let live = N - left - 1;
            assert_eq!(hub.followers(&StreamKey::Broadcast), live);
            assert_eq!(hub.sockets_of(&format!("u{i}")), 0);
            let kept = hub.shard(&StreamKey::Broadcast)[&StreamKey::Broadcast]
                .peers
                .len();
            assert!(kept <= 2 * live + 2, "{kept} entries for {live} sockets");
            if left == N / 3 {
                // A broadcast now reaches exactly the sockets still there, once each.
                let d = hub.publish(&StreamKey::Broadcast, "t", &raw("1"));
                assert_eq!(d.sockets, live);
                let got = regs.iter().filter(|r| r.outbox.pop().is_some()).count();
                assert_eq!(got, live);
            }
        }
        assert_eq!(hub.socket_count(), 0);
        hub.sweep();
        assert_eq!(hub.totals(), (0, 0, 0));
    }

    #[tokio::test]
    async fn full_queue_evicts_only_that_socket() {
        let hub = Hub::new(1);
        let slow = hub.register("a");
        let fast = hub.register("a");
        assert_eq!(hub.publish(&user("a"), "t", &raw("1")).sockets, 2);
        fast.outbox.pop().unwrap();
        assert_eq!(hub.publish(&user("a"), "t", &raw("2")).sockets, 1);
        assert!(slow.outbox.is_evicted());
        assert_eq!(hub.sockets_of("a"), 1);
        hub.unregister("a", &slow);
        assert_eq!(hub.socket_count(), 1);
    }

    fn resumable(uid: &str) -> Subscription {
        Subscription {
            uid: uid.into(),
            topics: vec![],
            proto: Proto::Resumable,
        }
    }

    fn texts(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(|f| f.as_str().to_string()).collect()
    }

    #[tokio::test]
    async fn resume_replays_missed_then_live_exactly_once() {
        let retention = Retention {
            history_size: 3,
            history_ttl: Duration::from_secs(60),
            max_bytes: 1 << 20,
        };
        let hub = Hub::with_retention(8, retention);
        // Another tab keeps the stream (and its generation) alive meanwhile.
        let _other_tab = hub.register("a");
        let first = hub.subscribe(&resumable("a"), None);
        let welcome: serde_json::Value = serde_json::from_str(first.preamble[0].as_str()).unwrap();
        let pos0 = welcome["contents"]["streams"]["user"]
            .as_str()
            .unwrap()
            .to_string();
        let generation = pos0.split(':').next().unwrap().to_string();
        hub.unsubscribe(&resumable("a"), &first);
        for i in 1..=5 {
            assert_eq!(hub.publish(&user("a"), "t", &raw(&i.to_string())).seq, i);
        }
        // Saw up to 3: gets 4 and 5.
        let resume = HashMap::from([("user".to_string(), format!("{generation}:3"))]);
        let again = hub.subscribe(&resumable("a"), Some(&resume));
        let got = texts(&again.preamble[1..]);
        assert_eq!(
            got,
            [
                r#"{"topic":"t","number":4,"contents":4,"stream":"user"}"#,
                r#"{"topic":"t","number":5,"contents":5,"stream":"user"}"#
            ]
        );
        hub.publish(&user("a"), "t", &raw("6"));
        assert!(again.outbox.pop().unwrap().contains(r#""number":6"#));
        // Saw only 1: 2 and 3 are gone (history keeps 3), so a gap, then 4..=6.
        let resume = HashMap::from([("user".to_string(), format!("{generation}:1"))]);
        let late = hub.subscribe(&resumable("a"), Some(&resume));
        let got = texts(&late.preamble[1..]);
        assert!(got[0].starts_with(r#"{"topic":"_gap""#), "{got:?}");
        assert!(got[0].contains(r#""next":4"#), "{got:?}");
        assert_eq!(got.len(), 1 + 3);
    }

    #[tokio::test]
    async fn history_never_exceeds_its_byte_budget() {
        let retention = Retention {
            history_size: 100,
            history_ttl: Duration::from_secs(60),
            max_bytes: 10_000,
        };
        let hub = Hub::with_retention(8, retention);
        let big = raw(&format!("\"{}\"", "x".repeat(900)));
        // One message to each of many offline uids: every stream keeps at most what fits.
        let mut kept = 0;
        for i in 0..200 {
            let d = hub.publish(&user(&format!("u{i}")), "t", &big);
            kept += usize::from(d.retained);
            let bytes = hub.totals().2;
            assert!(bytes <= retention.max_bytes, "{bytes} bytes after {i}");
        }
        assert!(kept >= 9, "the first messages fit: {kept}");
        assert!(kept < 200, "not all of them can fit: {kept}");
        // A stream over budget drops its own oldest first and keeps the newest.
        for i in 0..50 {
            let d = hub.publish(&user("busy"), "t", &raw(&i.to_string()));
            assert!(hub.totals().2 <= retention.max_bytes);
            if i > 0 {
                assert!(d.retained, "a small message fits once the stream rotates");
            }
        }
    }

    #[tokio::test]
    async fn a_forgotten_stream_is_reported_as_a_gap() {
        let retention = Retention {
            history_size: 10,
            history_ttl: Duration::ZERO,
            max_bytes: 1 << 20,
        };
        let hub = Hub::with_retention(8, retention);
        let first = hub.subscribe(&resumable("a"), None);
        let welcome: serde_json::Value = serde_json::from_str(first.preamble[0].as_str()).unwrap();
        let pos = welcome["contents"]["streams"]["user"]
            .as_str()
            .unwrap()
            .to_string();
        hub.unsubscribe(&resumable("a"), &first);
        // Idle streams are remembered for a while: resuming now is exact (no gap)...
        let resume = HashMap::from([("user".to_string(), pos.clone())]);
        let again = hub.subscribe(&resumable("a"), Some(&resume));
        assert_eq!(again.preamble.len(), 1, "welcome only");
        hub.unsubscribe(&resumable("a"), &again);
        // ...until the sweeper forgets them (here: as if meta_ttl had passed).
        for shard in hub.shards.iter() {
            for stream in shard.lock().unwrap().values_mut() {
                stream.touched -= retention.meta_ttl();
            }
        }
        hub.sweep();
        assert_eq!(hub.totals(), (0, 0, 0));
        assert!(hub.shards.iter().all(|s| s.lock().unwrap().is_empty()));
        let resume = HashMap::from([("user".to_string(), pos)]);
        let again = hub.subscribe(&resumable("a"), Some(&resume));
        let got = texts(&again.preamble[1..]);
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with(r#"{"topic":"_gap""#), "{got:?}");
    }
}
