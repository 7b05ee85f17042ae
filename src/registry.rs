//! This node's sockets, by the streams they follow (a uid's own stream, topics, broadcast).
//!
//! The registry knows nothing of numbering or history (that is the [`broker`](crate::broker)'s)
//! and nothing of other nodes: it answers "which sockets *here* follow this stream" and hands a
//! message to each of them. A socket joins with [`Registry::join`] and gets a [`Membership`]
//! that leaves every stream when dropped, so no path out of a socket task can forget to leave.
//!
//! Streams live in shards keyed by hash. Each shard is a `std::sync::Mutex`: every critical
//! section is map operations, at most two serializations and `try_send`s, never an `.await`, so
//! a blocking mutex is cheaper than an async one (mini-redis `db.rs` reasons the same way).
//!
//! Delivery never waits: a frame is pushed into each socket's bounded [`Outbox`]. A socket
//! whose queue is full is a slow reader; it is dropped from the stream and told to close
//! (4008), and the delivery goes on to the others.
//!
//! A stream's followers live in the shard its key hashes to, except the broadcast stream's,
//! which every socket follows: each socket's broadcast entry sits in its uid stream's shard,
//! so a broadcast walks the shards one after another and never holds one lock for every
//! socket (a connect waits at most for one shard's share of a broadcast).
//!
//! Each stream also remembers the position of the last message it delivered here. Brokers that
//! deliver from elsewhere (Redis) can lose or repeat messages around a reconnect: a repeat is
//! dropped, and a hole or a new generation makes every resumable follower reconnect (4010) to
//! resume exactly from the broker's history, instead of silently skipping what it missed.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::outbox::{Control, Outbox, Pushed, QueueLimit};
use crate::wire::{CloseReason, Frame, Message, Position, Proto, StreamKey};

const SHARDS: usize = 64;

/// Streams with up to this many sockets drop a leaving socket at once (a short scan). Larger
/// ones (the broadcast stream, a busy topic) let it go lazily: its outbox already refuses
/// frames, so leaving stays O(1), and the leftovers are dropped in one pass when they reach
/// half the list, at the next delivery, or at the next sweep. A scan per leave would make a
/// mass disconnect quadratic, under the lock every connect and broadcast needs.
const EAGER_REMOVAL_MAX: usize = 64;

/// Identifies one registered socket.
pub type SocketId = u64;

/// Told when a socket leaves a stream, so a broker can keep what it publishes about this node
/// (Redis presence) in step. Called with no registry lock held.
pub trait Observer: Send + Sync {
    /// One socket left `key`; [`Registry::followers`] has the new count.
    fn left(&self, key: &StreamKey);
}

/// The registry's side of one socket on one stream.
struct Peer {
    id: SocketId,
    proto: Proto,
    /// This stream's index among the socket's streams (tags its frames; see [`Outbox`]).
    slot: u16,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
struct Followers {
    peers: Vec<Peer>,
    /// Sockets that left but may still be in `peers` (see [`EAGER_REMOVAL_MAX`]).
    dead: usize,
    /// The last message delivered to this stream's sockets on this node.
    last: Option<Position>,
    /// Each peer's place in `peers`, for a large stream that sockets leave one at a time while
    /// they stay connected (a busy channel's unsubscribes, a room's moves): such a leave is then
    /// O(1) instead of a scan of every follower under the shard lock. Built by the first such
    /// leave; the broadcast stream, which sockets leave only for good (lazily), never has one.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<SocketId, usize>>>,
}

impl Followers {
    /// Adds a follower. A stream's first gets a list of one, not of four: most streams (a
    /// uid's, a Pusher socket's own channel) have one follower per node, and every idle socket
    /// pays for that allocation.
    fn add(&mut self, peer: Peer) {
        if self.peers.capacity() == 0 {
            self.peers.reserve_exact(1);
        }
        if let Some(index) = &mut self.index {
            index.insert(peer.id, self.peers.len());
        }
        self.peers.push(peer);
    }

    /// Takes socket `id` off this stream now: found by a short scan in a small stream, through
    /// the index in a large one (built here the first time).
    fn take(&mut self, id: SocketId) {
        let found = match &mut self.index {
            Some(index) => index.remove(&id),
            None if self.peers.len() <= EAGER_REMOVAL_MAX => {
                self.peers.iter().position(|p| p.id == id)
            }
            None => {
                let mut index: HashMap<SocketId, usize> = self
                    .peers
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (p.id, i))
                    .collect();
                let found = index.remove(&id);
                self.index = Some(Box::new(index));
                found
            }
        };
        let Some(i) = found else {
            return;
        };
        self.peers.swap_remove(i);
        if let (Some(index), Some(moved)) = (&mut self.index, self.peers.get(i)) {
            index.insert(moved.id, i);
        }
    }

    /// After `peers` lost members in place (a delivery dropping slow readers, a compaction):
    /// the index, if any, is made again.
    fn reindex(&mut self) {
        if let Some(index) = &mut self.index {
            index.clear();
            index.extend(self.peers.iter().enumerate().map(|(i, p)| (p.id, i)));
        }
    }

    /// Takes socket `id` (whose outbox is already detached) off this stream.
    fn remove_peer(&mut self, id: SocketId) {
        if self.peers.len() <= EAGER_REMOVAL_MAX {
            self.take(id);
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
        self.reindex();
    }

    fn live(&self) -> usize {
        if self.dead == 0 {
            self.peers.len()
        } else {
            self.peers.iter().filter(|p| !p.outbox.is_gone()).count()
        }
    }

    /// Tells every resumable follower to reconnect and resume (it would miss messages here).
    fn resync(&mut self) {
        for peer in self.peers.iter().filter(|p| p.proto == Proto::Resumable) {
            peer.outbox.evict(CloseReason::Resync);
        }
    }
}

type Shard = HashMap<StreamKey, Followers>;

/// One shard of every socket's outbox, by id.
type Outboxes = HashMap<SocketId, Arc<Outbox>>;

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

    /// A Pusher socket: it follows nothing until it subscribes to channels
    /// ([`Membership::follow`]), and gets Pusher frames.
    pub fn pusher() -> Subscription {
        Subscription {
            uid: String::new(),
            topics: Vec::new(),
            proto: Proto::Pusher,
        }
    }

    /// The streams it follows, in slot order: its uid's, broadcast, then its topics (none for a
    /// Pusher socket, which has no uid).
    pub fn keys(&self) -> impl Iterator<Item = StreamKey> + '_ {
        let base = match self.proto {
            Proto::Pusher => None,
            _ => Some([
                StreamKey::User(self.uid.as_str().into()),
                StreamKey::Broadcast,
            ]),
        };
        base.into_iter().flatten().chain(
            self.topics
                .iter()
                .map(|t| StreamKey::Topic(t.as_str().into())),
        )
    }
}

/// One socket's place in the registry; leaves every stream when dropped. Frames for it arrive
/// in [`Membership::outbox`].
pub struct Membership {
    registry: Arc<Registry>,
    id: SocketId,
    outbox: Arc<Outbox>,
    sub: Subscription,
    /// Streams followed after joining ([`Membership::follow`]), by slot after the
    /// subscription's own; `None` where one was left again.
    extra: Vec<Option<StreamKey>>,
    /// Left already ([`Membership::leave`]); dropping it then does nothing more.
    left: bool,
}

impl Membership {
    /// This socket's id.
    pub fn id(&self) -> SocketId {
        self.id
    }

    /// This socket's id across the cluster, `<node>.<id>` (a Pusher `socket_id`): what a
    /// message names to skip this socket ([`Message::except`]).
    pub fn socket_id(&self) -> String {
        format!("{}.{}", self.registry.node, self.id)
    }

    /// Live frames, in order per stream; also tells the socket task it was evicted.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// What the socket follows.
    pub fn subscription(&self) -> &Subscription {
        &self.sub
    }

    /// Every stream the socket follows now, with its slot.
    pub fn streams(&self) -> impl Iterator<Item = (u16, StreamKey)> + '_ {
        let base = self.sub.keys().count();
        self.sub
            .keys()
            .enumerate()
            .chain(
                self.extra
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, k)| k.clone().map(|k| (base + i, k))),
            )
            .map(|(slot, key)| (slot as u16, key))
    }

    /// Starts following `key` too (a room the server moved the socket into, a channel the
    /// page subscribed to): from now on every message delivered to it on this node reaches
    /// the socket. Returns the stream's slot, or `None` if the socket already follows it.
    pub fn follow(&mut self, key: StreamKey) -> Option<u16> {
        if self.streams().any(|(_, k)| k == key) {
            return None;
        }
        let base = self.sub.keys().count();
        let i = match self.extra.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                // Most sockets follow one stream after joining (a Pusher socket its channel):
                // room for one, not four, in every such socket.
                if self.extra.capacity() == 0 {
                    self.extra.reserve_exact(1);
                }
                self.extra.push(None);
                self.extra.len() - 1
            }
        };
        let slot = (base + i) as u16;
        self.registry.add_peer(self, &key, slot);
        self.extra[i] = Some(key);
        Some(slot)
    }

    /// Stops following `key`, one the socket followed with [`Membership::follow`]; `false` if
    /// it did not. A frame of it already queued is still written.
    pub fn unfollow(&mut self, key: &StreamKey) -> bool {
        let Some(i) = self.extra.iter().position(|k| k.as_ref() == Some(key)) else {
            return false;
        };
        self.extra[i] = None;
        self.registry.remove_peer(self, key, false);
        true
    }
}

impl Membership {
    /// Leaves every stream now (a closing socket stops taking frames before it flushes what it
    /// has). Dropping the membership does the same if this was not called.
    pub fn leave(&mut self) {
        if !self.left {
            self.left = true;
            self.registry.leave(self);
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.leave();
    }
}

/// One message's frames, each serialized at most once per delivery (on first use).
struct Frames<'a> {
    msg: &'a Message<'a>,
    seq: u64,
    key: &'a StreamKey,
    seed: Option<Frame>,
    numbered: Option<Frame>,
    pusher: Option<Frame>,
}

impl Frames<'_> {
    fn get(&mut self, proto: Proto) -> Frame {
        match proto {
            Proto::Seed => self.seed.get_or_insert_with(|| self.msg.seed_frame()),
            Proto::Pusher => {
                let (msg, key) = (self.msg, self.key);
                self.pusher.get_or_insert_with(|| match key {
                    StreamKey::Channel { name, .. } => msg.pusher_frame(name),
                    key => msg.pusher_frame(&key.name()),
                })
            }
            Proto::Resumable => {
                let (msg, seq, key) = (self.msg, self.seq, self.key);
                self.numbered
                    .get_or_insert_with(|| msg.stream_frame(seq, &key.name()))
            }
        }
        .clone()
    }
}

/// Outcome of one delivery on this node.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Sockets the message was queued to.
    pub sockets: usize,
}

/// This node's sockets by stream, with counters for logging and the stats endpoint.
pub struct Registry {
    /// This process's number: the first half of its sockets' [`Membership::socket_id`]s, and,
    /// with a cluster store, the node's name there (see [`Registry::node`]).
    node: u64,
    shards: Box<[Mutex<Shard>]>,
    /// Every socket's outbox, by id (sharded by id): how a node-wide signal (a shutdown, a new
    /// heartbeat period) reaches every socket's task through the one thing it waits on, so
    /// that no idle socket carries a receiver of its own for it (about 136 bytes each).
    all: Box<[Mutex<Outboxes>]>,
    queue: QueueLimit,
    next_id: AtomicU64,
    sockets: AtomicUsize,
    /// Frames queued since start, added once per delivery call (not per socket).
    delivered: AtomicU64,
    /// Sockets evicted as slow readers since start.
    evicted: AtomicU64,
    observer: OnceLock<Arc<dyn Observer>>,
}

impl Registry {
    /// An empty registry; each socket queues at most `queue` before it counts as a slow
    /// reader.
    pub fn new(queue: QueueLimit) -> Registry {
        Registry {
            // Fifteen digits: unique among a cluster's nodes, and exact as a JavaScript number.
            node: rand::random::<u64>() % 1_000_000_000_000_000,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            all: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            queue,
            next_id: AtomicU64::new(1),
            sockets: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            observer: OnceLock::new(),
        }
    }

    /// This process's number, the one node identity: its sockets' ids start with it, and a
    /// cluster store names the node (and each incarnation of it) after it.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Makes every socket here following `key` close with `reason` (a user's connections
    /// terminated by the backend, say).
    pub fn evict(&self, key: &StreamKey, reason: CloseReason) -> usize {
        self.each(key, |stream| {
            for peer in &stream.peers {
                peer.outbox.evict(reason);
            }
            stream.peers.len()
        })
        .into_iter()
        .sum()
    }

    /// Hands `control()` to the task of every socket here following `key` (a room move for a
    /// uid's sockets, say): each task acts on it itself, since it owns its membership. Returns
    /// how many sockets took it.
    pub fn control(&self, key: &StreamKey, control: impl Fn() -> Control) -> usize {
        self.each(key, |stream| {
            stream
                .peers
                .iter()
                .filter(|peer| peer.outbox.control(control()))
                .count()
        })
        .into_iter()
        .sum()
    }

    /// Sets who is told about leaves (once; later calls are ignored).
    pub fn set_observer(&self, observer: Arc<dyn Observer>) {
        let _ = self.observer.set(observer);
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // Each critical section leaves the map consistent at every step it could panic in
        // (none is expected), so a poisoned lock is still safe to use.
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index(key: &StreamKey) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() as usize) % SHARDS
    }

    /// The shard holding `uid`'s socket on stream `key` (broadcast entries sit with the uid's).
    fn home(key: &StreamKey, uid: &str) -> usize {
        match key {
            StreamKey::Broadcast => Registry::index(&StreamKey::User(uid.into())),
            key => Registry::index(key),
        }
    }

    /// The shards holding followers of `key`: one, or all of them for broadcast.
    fn spread(key: &StreamKey) -> std::ops::Range<usize> {
        match key {
            StreamKey::Broadcast => 0..SHARDS,
            key => {
                let i = Registry::index(key);
                i..i + 1
            }
        }
    }

    /// Runs `f` on `key`'s followers in each of its shards.
    fn each<T>(&self, key: &StreamKey, mut f: impl FnMut(&mut Followers) -> T) -> Vec<T> {
        Registry::spread(key)
            .filter_map(|i| self.lock(i).get_mut(key).map(&mut f))
            .collect()
    }

    fn all_of(&self, id: SocketId) -> MutexGuard<'_, Outboxes> {
        self.all[id as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every socket's task, once: it then reads what changed for all of them (a
    /// shutdown, a new heartbeat period) from the socket context. Never waits: each shard's
    /// outboxes are woken after its lock is released.
    pub fn wake_all(&self) {
        for shard in self.all.iter() {
            let outboxes: Vec<Arc<Outbox>> = shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            for outbox in outboxes {
                outbox.poke();
            }
        }
    }

    /// Adds a socket to every stream of `sub`. From now on it receives every message delivered
    /// to those streams on this node.
    pub fn join(self: &Arc<Self>, sub: Subscription) -> Membership {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::default());
        for (slot, key) in sub.keys().enumerate() {
            let mut shard = self.lock(Registry::home(&key, &sub.uid));
            shard.entry(key).or_default().add(Peer {
                id,
                proto: sub.proto,
                slot: slot as u16,
                outbox: outbox.clone(),
            });
        }
        self.all_of(id).insert(id, outbox.clone());
        self.sockets.fetch_add(1, Ordering::Relaxed);
        Membership {
            registry: self.clone(),
            id,
            outbox,
            sub,
            extra: Vec::new(),
            left: false,
        }
    }

    /// Adds socket `m` to one more stream, as `slot`.
    fn add_peer(&self, m: &Membership, key: &StreamKey, slot: u16) {
        let mut shard = self.lock(Registry::home(key, &m.sub.uid));
        shard.entry(key.clone()).or_default().add(Peer {
            id: m.id,
            proto: m.sub.proto,
            slot,
            outbox: m.outbox.clone(),
        });
    }

    /// Takes socket `m` off one stream and tells the observer. `detached`: the socket is
    /// leaving every stream and its outbox already refuses frames, so a large stream may let it
    /// go lazily (O(1)); otherwise (one stream left, the socket stays) it must be found now.
    fn remove_peer(&self, m: &Membership, key: &StreamKey, detached: bool) {
        {
            let mut shard = self.lock(Registry::home(key, &m.sub.uid));
            let Some(stream) = shard.get_mut(key) else {
                return;
            };
            if detached {
                stream.remove_peer(m.id);
            } else {
                // Its outbox still takes frames, so lazy removal cannot tell it left.
                stream.take(m.id);
            }
            if stream.peers.is_empty() {
                shard.remove(key);
            }
        }
        if let Some(observer) = self.observer.get() {
            observer.left(key);
        }
    }

    /// Removes a socket from every stream (it may already be gone from some, evicted as a slow
    /// reader). Its outbox refuses new frames from here on but keeps those already queued (a
    /// shutting-down socket still writes them).
    fn leave(&self, m: &Membership) {
        m.outbox.detach();
        for (_, key) in m.streams() {
            self.remove_peer(m, &key, true);
        }
        self.all_of(m.id).remove(&m.id);
        self.sockets.fetch_sub(1, Ordering::Relaxed);
    }

    /// Queues `msg`, at `pos` in stream `key`, to every socket here following it (never
    /// waiting). Frames are serialized at most once per kind; `numbered` is the numbered frame
    /// if the caller built it already (to keep it as history). `pos.seq == 0` means an
    /// unnumbered message (no socket here needs numbers).
    pub fn deliver(
        &self,
        key: &StreamKey,
        pos: Position,
        msg: &Message<'_>,
        numbered: Option<Frame>,
    ) -> Delivered {
        let mut frames = Frames {
            msg,
            seq: pos.seq,
            key,
            seed: None,
            numbered,
            pusher: None,
        };
        // The one socket this message skips, if it is here.
        let except = msg.except.and_then(|sid| {
            let (node, id) = sid.split_once('.')?;
            (node.parse() == Ok(self.node)).then(|| id.parse().ok())?
        });
        let mut sockets = 0;
        for i in Registry::spread(key) {
            let mut shard = self.lock(i);
            if let Some(stream) = shard.get_mut(key) {
                sockets += self.deliver_here(stream, key, pos, &mut frames, except);
            }
        }
        self.delivered.fetch_add(sockets as u64, Ordering::Relaxed);
        Delivered { sockets }
    }

    /// [`Registry::deliver`] to one shard's followers of `key`.
    fn deliver_here(
        &self,
        stream: &mut Followers,
        key: &StreamKey,
        pos: Position,
        frames: &mut Frames<'_>,
        except: Option<SocketId>,
    ) -> usize {
        if pos.seq > 0 {
            match stream.last {
                Some(last) if last.generation == pos.generation && pos.seq <= last.seq => {
                    // Already delivered here (a cluster broker around a reconnect).
                    return 0;
                }
                Some(last) if last.generation != pos.generation || pos.seq != last.seq + 1 => {
                    log::debug!(
                        "stream {} jumped from {last} to {pos} on this node: resumable sockets resync",
                        key.name()
                    );
                    stream.resync();
                }
                _ => {}
            }
            stream.last = Some(pos);
        }
        let mut sockets = 0;
        let queue = self.queue;
        let msg_id = frames.msg.id;
        let before = stream.peers.len();
        stream.peers.retain(|peer| {
            if Some(peer.id) == except {
                return true;
            }
            let frame = frames.get(peer.proto);
            // A resumable page's frame carries the id, and the page may ack it: its outbox
            // remembers that it got it.
            let id = msg_id.filter(|_| peer.proto == Proto::Resumable);
            match peer.outbox.push(frame, peer.slot, pos.seq, queue, id) {
                Pushed::Queued => {
                    sockets += 1;
                    true
                }
                // Slow reader: cut loose (its task is woken to close it) so it cannot hold
                // memory or delay anyone.
                Pushed::Evicted => {
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                    false
                }
                // It left (or is leaving) this stream.
                Pushed::Closed => false,
            }
        });
        if stream.peers.len() != before {
            stream.reindex();
        }
        // Every peer that left was just dropped.
        stream.dead = 0;
        sockets
    }

    /// Records that this node's sockets of `key` are served through `pos`, unless it already
    /// knows a position (set when a socket attaches, before any message arrived).
    pub fn note_position(&self, key: &StreamKey, pos: Position) {
        self.each(key, |stream| {
            stream.last.get_or_insert(pos);
        });
    }

    /// After this node was away from the broker: if stream `key` is now at `pos` and this node
    /// delivered less than that here (or another generation), its resumable sockets missed
    /// messages; they reconnect and resume (4010). The stream's position here becomes `pos`.
    pub fn resync_if_behind(&self, key: &StreamKey, pos: Position) {
        self.each(key, |stream| match stream.last {
            Some(last) if last.generation == pos.generation && last.seq >= pos.seq => {}
            Some(_) => {
                stream.resync();
                stream.last = Some(pos);
            }
            None => stream.last = Some(pos),
        });
    }

    /// Every stream with a socket here: its live followers and last delivered position.
    pub fn streams(&self) -> Vec<(StreamKey, usize, Option<Position>)> {
        let mut out = Vec::new();
        let mut broadcast = (0, None);
        for i in 0..SHARDS {
            let shard = self.lock(i);
            for (key, s) in shard.iter() {
                match (key, s.live()) {
                    (_, 0) => {}
                    (StreamKey::Broadcast, n) => {
                        broadcast.0 += n;
                        broadcast.1 = broadcast.1.or(s.last);
                    }
                    (key, n) => out.push((key.clone(), n, s.last)),
                }
            }
        }
        if broadcast.0 > 0 {
            out.push((StreamKey::Broadcast, broadcast.0, broadcast.1));
        }
        out
    }

    /// Drops peers that left large streams lazily. Called periodically.
    pub fn sweep(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, stream| {
                if stream.dead > 0 {
                    stream.compact();
                }
                !stream.peers.is_empty()
            });
        }
    }

    /// How many sockets here follow `key`.
    pub fn followers(&self, key: &StreamKey) -> usize {
        self.each(key, |s| s.live()).into_iter().sum()
    }

    /// How many sockets `uid` has open here.
    pub fn sockets_of(&self, uid: &str) -> usize {
        self.followers(&StreamKey::User(uid.into()))
    }

    /// Live sockets on this node.
    pub fn socket_count(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }

    /// Frames queued to sockets here since start.
    pub fn deliveries(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Sockets evicted here as slow readers since start.
    pub fn evictions(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Counts over all streams here: (uids with a socket, topics with a follower).
    pub fn totals(&self) -> (usize, usize) {
        let (mut uids, mut topics) = (0, 0);
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (key, stream) in shard.iter() {
                if stream.live() == 0 {
                    continue;
                }
                match key {
                    StreamKey::User(_) => uids += 1,
                    StreamKey::Topic(_) | StreamKey::Channel { .. } => topics += 1,
                    StreamKey::Broadcast => {}
                }
            }
        }
        (uids, topics)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    pub(crate) fn frames(n: usize) -> QueueLimit {
        QueueLimit {
            frames: n,
            bytes: 1 << 20,
        }
    }

    fn user(uid: &str) -> StreamKey {
        StreamKey::User(uid.into())
    }

    fn at(seq: u64) -> Position {
        Position { generation: 1, seq }
    }

    fn deliver(r: &Registry, key: &StreamKey, seq: u64, contents: &str) -> usize {
        let c = raw(contents);
        r.deliver(key, at(seq), &Message::new("t", &c), None)
            .sockets
    }

    #[test]
    fn frames_reach_every_socket_of_the_uid_only() {
        let r = Arc::new(Registry::new(frames(4)));
        let a1 = r.join(Subscription::seed("a"));
        let a2 = r.join(Subscription::seed("a"));
        let b = r.join(Subscription::seed("b"));
        assert_eq!(deliver(&r, &user("a"), 1, "1"), 2);
        let expected = r#"{"topic":"t","number":1,"contents":1}"#;
        assert_eq!(a1.outbox().pop().unwrap().as_str(), expected);
        assert_eq!(a2.outbox().pop().unwrap().as_str(), expected);
        assert!(b.outbox().pop().is_none());
        drop(a1);
        assert_eq!(r.sockets_of("a"), 1);
        drop(a2);
        assert_eq!(deliver(&r, &user("a"), 2, "2"), 0);
        assert_eq!(r.socket_count(), 1);
        assert_eq!(r.totals().0, 1);
    }

    #[test]
    fn leaving_a_crowded_stream_is_exact_and_memory_stays_bounded() {
        let r = Arc::new(Registry::new(frames(4)));
        const N: usize = 1000;
        let mut members: Vec<Option<Membership>> = (0..N)
            .map(|i| Some(r.join(Subscription::seed(format!("u{i}")))))
            .collect();
        assert_eq!(r.followers(&StreamKey::Broadcast), N);
        // Leave in an order that is neither the join order nor its reverse (7 is coprime
        // with 1000, so this visits every socket once).
        for (left, i) in (0..N).map(|k| (k * 7) % N).enumerate() {
            members[i] = None;
            let live = N - left - 1;
            assert_eq!(r.followers(&StreamKey::Broadcast), live);
            assert_eq!(r.sockets_of(&format!("u{i}")), 0);
            let kept = r
                .each(&StreamKey::Broadcast, |s| s.peers.len())
                .into_iter()
                .sum::<usize>();
            assert!(kept <= 2 * live + 2, "{kept} entries for {live} sockets");
            if left == N / 3 {
                // A broadcast now reaches exactly the sockets still there, once each.
                assert_eq!(deliver(&r, &StreamKey::Broadcast, 1, "1"), live);
                let got = members
                    .iter()
                    .flatten()
                    .filter(|m| m.outbox().pop().is_some())
                    .count();
                assert_eq!(got, live);
            }
        }
        assert_eq!(r.socket_count(), 0);
        r.sweep();
        assert_eq!(r.totals(), (0, 0));
        assert!(r.streams().is_empty());
    }

    /// A socket leaving a stream of many followers does not look for itself in the list: its
    /// entry goes lazily (the leave was a scan of every follower once, so a mass disconnect cost
    /// more per socket the more sockets there were), and counts and deliveries stay exact.
    #[test]
    fn leaving_a_crowded_topic_is_lazy_and_exact() {
        let r = Arc::new(Registry::new(frames(4)));
        let topic = StreamKey::Topic("crowd".into());
        let mut members: Vec<Option<Membership>> = (0..200)
            .map(|i| {
                Some(r.join(Subscription {
                    topics: vec!["crowd".into()],
                    ..Subscription::seed(format!("u{i}"))
                }))
            })
            .collect();
        members[7] = None;
        assert_eq!(r.followers(&topic), 199);
        let kept: usize = r.each(&topic, |s| s.peers.len()).into_iter().sum();
        assert_eq!(kept, 200, "the leaver's entry waits for the next pass");
        assert_eq!(deliver(&r, &topic, 1, "1"), 199);
        let kept: usize = r.each(&topic, |s| s.peers.len()).into_iter().sum();
        assert_eq!(kept, 199, "a delivery drops it");
        for m in members.iter_mut().take(150) {
            *m = None;
        }
        assert_eq!(r.followers(&topic), 50);
        let kept: usize = r.each(&topic, |s| s.peers.len()).into_iter().sum();
        assert!(kept <= 2 * 50 + 2, "{kept} entries for 50 sockets");
    }

    #[test]
    fn a_broadcast_never_holds_one_lock_for_every_socket() {
        let r = Arc::new(Registry::new(frames(4)));
        let members: Vec<Membership> = (0..1000)
            .map(|i| r.join(Subscription::seed(format!("u{i}"))))
            .collect();
        let per_shard = r.each(&StreamKey::Broadcast, |s| s.peers.len());
        assert_eq!(per_shard.iter().sum::<usize>(), 1000);
        let busiest = per_shard.iter().max().copied().unwrap_or(0);
        assert!(busiest < 100, "{busiest} of 1000 sockets behind one lock");
        assert_eq!(deliver(&r, &StreamKey::Broadcast, 1, "1"), 1000);
        assert!(members.iter().all(|m| m.outbox().pop().is_some()));
        assert_eq!(
            r.streams()
                .iter()
                .filter(|s| s.0 == StreamKey::Broadcast)
                .count(),
            1
        );
    }

    #[test]
    fn pusher_sockets_follow_only_their_channels_and_a_message_skips_its_sender() {
        let r = Arc::new(Registry::new(frames(4)));
        let channel = StreamKey::Channel {
            app: "1".into(),
            name: "room".into(),
        };
        let mut a = r.join(Subscription::pusher());
        let mut b = r.join(Subscription::pusher());
        assert_eq!(r.followers(&StreamKey::Broadcast), 0);
        a.follow(channel.clone()).unwrap();
        b.follow(channel.clone()).unwrap();
        let c = raw(r#""hi""#);
        let sid = a.socket_id();
        let msg = Message::new("client-x", &c).except(Some(&sid));
        let unnumbered = Position {
            generation: 0,
            seq: 0,
        };
        assert_eq!(r.deliver(&channel, unnumbered, &msg, None).sockets, 1);
        assert!(a.outbox().pop().is_none());
        assert_eq!(
            b.outbox().pop().unwrap().as_str(),
            r#"{"event":"client-x","channel":"room","data":"hi"}"#
        );
        // Another node's socket of the same number is not skipped.
        let other = format!("{}.{}", r.node.wrapping_add(1), a.id());
        let msg = Message::new("e", &c).except(Some(&other));
        assert_eq!(r.deliver(&channel, unnumbered, &msg, None).sockets, 2);
    }

    #[test]
    fn full_queue_evicts_only_that_socket() {
        let r = Arc::new(Registry::new(frames(1)));
        let slow = r.join(Subscription::seed("a"));
        let fast = r.join(Subscription::seed("a"));
        assert_eq!(deliver(&r, &user("a"), 1, "1"), 2);
        fast.outbox().pop().unwrap();
        assert_eq!(deliver(&r, &user("a"), 2, "2"), 1);
        assert_eq!(slow.outbox().evicted(), Some(CloseReason::SlowConsumer));
        assert_eq!(r.sockets_of("a"), 1);
        drop(slow);
        assert_eq!(r.socket_count(), 1);
    }

    #[test]
    fn a_receipt_id_is_remembered_by_the_resumable_sockets_it_was_queued_to() {
        let r = Arc::new(Registry::new(frames(8)));
        let seed = r.join(Subscription::seed("a"));
        let resumable = |uid: &str| {
            r.join(Subscription {
                uid: uid.into(),
                topics: vec![],
                proto: Proto::Resumable,
            })
        };
        let (page, other) = (resumable("a"), resumable("b"));
        let c = raw("1");
        let id = "0123456789abcdef0123456789abcdef";
        let msg = Message::new("t", &c).with_id(id);
        assert_eq!(r.deliver(&user("a"), at(1), &msg, None).sockets, 2);
        assert!(page.outbox().was_sent(id));
        assert!(!seed.outbox().was_sent(id), "a seed page cannot ack");
        assert!(!other.outbox().was_sent(id));
        let late = resumable("a");
        assert!(!late.outbox().was_sent(id), "opened after it was sent");
    }

    #[test]
    fn repeats_are_dropped_and_holes_make_resumable_sockets_resync() {
        let r = Arc::new(Registry::new(frames(8)));
        let seed = r.join(Subscription::seed("a"));
        let resumable = r.join(Subscription {
            uid: "a".into(),
            topics: vec![],
            proto: Proto::Resumable,
        });
        assert_eq!(deliver(&r, &user("a"), 5, "5"), 2);
        assert_eq!(deliver(&r, &user("a"), 5, "5"), 0, "a repeat is dropped");
        assert_eq!(deliver(&r, &user("a"), 6, "6"), 2);
        assert_eq!(resumable.outbox().evicted(), None);
        // 7 never came: the resumable socket must resume from history; the seed one goes on.
        assert_eq!(deliver(&r, &user("a"), 8, "8"), 1);
        assert_eq!(resumable.outbox().evicted(), Some(CloseReason::Resync));
        assert_eq!(seed.outbox().evicted(), None);
        let texts: Vec<String> = std::iter::from_fn(|| seed.outbox().pop())
            .map(|f| f.to_string())
            .collect();
        assert_eq!(texts.len(), 3);
    }

    #[test]
    fn sockets_leaving_a_large_stream_one_by_one_leave_exactly_themselves() {
        // A busy room that sockets leave while they stay connected: past EAGER_REMOVAL_MAX the
        // stream finds them through its index, which must stay right through swaps, joins,
        // slow readers dropped by a delivery, and sockets that leave for good.
        let r = Arc::new(Registry::new(frames(2)));
        let room = StreamKey::Topic("room".into());
        let mut sockets: Vec<Membership> = (0..300)
            .map(|i| {
                let mut m = r.join(Subscription::seed(format!("u{i}")));
                m.follow(room.clone());
                m
            })
            .collect();
        // Every third leaves the room; every fifth of the rest closes.
        for (i, m) in sockets.iter_mut().enumerate() {
            if i % 3 == 0 {
                assert!(m.unfollow(&room));
            }
        }
        let closed: Vec<Membership> = (0..300)
            .rev()
            .filter(|i| i % 3 != 0 && i % 5 == 0)
            .map(|i| sockets.remove(i))
            .collect();
        drop(closed);
        // Two sockets read nothing: the next deliveries drop them as slow readers.
        let following = |m: &Membership| m.streams().any(|(_, k)| k == room);
        let expected = sockets.iter().filter(|m| following(m)).count();
        assert_eq!(deliver(&r, &room, 1, "1"), expected);
        for m in &sockets {
            assert_eq!(m.outbox().pop().is_some(), following(m));
        }
        let slow: Vec<u64> = sockets
            .iter()
            .filter(|m| following(m))
            .take(2)
            .map(|m| m.id())
            .collect();
        for seq in 2..=4 {
            deliver(&r, &room, seq, "2");
            for m in sockets.iter().filter(|m| !slow.contains(&m.id())) {
                while m.outbox().pop().is_some() {}
            }
        }
        // More leave after the index was made again, and one joins.
        for m in sockets.iter_mut().filter(|m| following(m)).step_by(4) {
            assert!(m.unfollow(&room));
        }
        let mut late = r.join(Subscription::seed("late"));
        late.follow(room.clone());
        sockets.push(late);
        let reached: Vec<u64> = sockets
            .iter()
            .filter(|m| following(m) && !slow.contains(&m.id()))
            .map(|m| m.id())
            .collect();
        assert_eq!(deliver(&r, &room, 5, "5"), reached.len());
        for m in &sockets {
            let got = m
                .outbox()
                .pop()
                .is_some_and(|f| f.as_str().contains(r#""contents":5"#));
            assert_eq!(got, reached.contains(&m.id()), "socket {}", m.id());
        }
        assert_eq!(r.followers(&room), reached.len());
    }
}
