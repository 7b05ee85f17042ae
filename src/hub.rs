//! The registry of live sockets: uid → the sockets (tabs, devices) currently open for it.
//!
//! Sharded by uid hash so that pushes and connects for different users rarely meet on a lock.
//! Each shard is a `std::sync::Mutex`: every critical section is a few map operations and
//! `try_send`s, never an `.await`, so a blocking mutex is cheaper than an async one (the same
//! reasoning as mini-redis `db.rs`).
//!
//! Delivery never waits: a frame is `try_send`-ed into each socket's bounded queue. A socket
//! whose queue is full is a slow reader; it is removed and told to close (code 4008), and the
//! push goes on to the others.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;

const SHARDS: usize = 64;

/// A serialized frame, shared by every socket it goes to. An `Arc` (one word) rather than the
/// 4-word `Utf8Bytes` keeps each socket's queue block at 256 bytes instead of 1 KiB.
pub type Frame = Arc<Utf8Bytes>;

/// Identifies one registered socket.
pub type SocketId = u64;

/// The hub's side of one socket.
struct Peer {
    id: SocketId,
    tx: mpsc::Sender<Frame>,
    evicted: Arc<Notify>,
}

/// The socket task's side of its registration.
pub struct Registration {
    /// This socket's id, for [`Hub::unregister`].
    pub id: SocketId,
    /// Frames to write, in push order.
    pub rx: mpsc::Receiver<Frame>,
    /// Fires when the hub dropped this socket because its queue overflowed.
    pub evicted: Arc<Notify>,
}

/// One shard of the registry: uid → its live sockets.
type Shard = HashMap<Box<str>, Vec<Peer>>;

/// uid → live sockets, with counters for logging and tests.
pub struct Hub {
    shards: Box<[Mutex<Shard>]>,
    queue_len: usize,
    next_id: AtomicU64,
    sockets: AtomicUsize,
}

impl Hub {
    /// An empty hub whose sockets each queue at most `queue_len` frames.
    pub fn new(queue_len: usize) -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            queue_len,
            next_id: AtomicU64::new(1),
            sockets: AtomicUsize::new(0),
        }
    }

    fn shard(&self, uid: &str) -> MutexGuard<'_, Shard> {
        let mut h = DefaultHasher::new();
        uid.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        // A panic while holding a shard lock cannot leave the map half-updated (each section is
        // a single insert/remove/retain), so a poisoned lock is still safe to use.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a socket for `uid`; it receives every frame delivered to `uid` from now on.
    pub fn register(&self, uid: &str) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.queue_len);
        let evicted = Arc::new(Notify::new());
        let peer = Peer {
            id,
            tx,
            evicted: evicted.clone(),
        };
        self.shard(uid).entry(uid.into()).or_default().push(peer);
        self.sockets.fetch_add(1, Ordering::Relaxed);
        Registration { id, rx, evicted }
    }

    /// Removes a socket; the uid disappears only when its last socket goes. Idempotent: a socket
    /// already evicted for overflowing is not counted twice.
    pub fn unregister(&self, uid: &str, id: SocketId) {
        let mut shard = self.shard(uid);
        let Some(peers) = shard.get_mut(uid) else {
            return;
        };
        let before = peers.len();
        peers.retain(|p| p.id != id);
        if peers.len() < before {
            self.sockets.fetch_sub(1, Ordering::Relaxed);
        }
        if peers.is_empty() {
            shard.remove(uid);
        }
    }

    /// Queues `frame` on every socket of `uid` and returns how many took it. Never waits.
    pub fn deliver(&self, uid: &str, frame: &Frame) -> usize {
        let mut shard = self.shard(uid);
        let Some(peers) = shard.get_mut(uid) else {
            return 0;
        };
        let mut delivered = 0;
        peers.retain(|peer| match peer.tx.try_send(frame.clone()) {
            Ok(()) => {
                delivered += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Slow reader: cut it loose so it cannot hold memory or delay anyone.
                peer.evicted.notify_one();
                self.sockets.fetch_sub(1, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // Its task has ended and is about to unregister; treat it as gone.
                self.sockets.fetch_sub(1, Ordering::Relaxed);
                false
            }
        });
        if peers.is_empty() {
            shard.remove(uid);
        }
        delivered
    }

    /// How many sockets `uid` has open.
    pub fn sockets_of(&self, uid: &str) -> usize {
        self.shard(uid).get(uid).map_or(0, Vec::len)
    }

    /// Total live sockets.
    pub fn socket_count(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }

    /// Uids with at least one live socket.
    pub fn uid_count(&self) -> usize {
        (0..SHARDS)
            .map(|i| {
                self.shards[i]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Frame {
        Arc::new(Utf8Bytes::from(s))
    }

    #[tokio::test]
    async fn frames_reach_every_socket_of_the_uid_only() {
        let hub = Hub::new(4);
        let mut a1 = hub.register("a");
        let mut a2 = hub.register("a");
        let mut b = hub.register("b");
        assert_eq!(hub.deliver("a", &frame("x")), 2);
        assert_eq!(a1.rx.recv().await.unwrap().as_str(), "x");
        assert_eq!(a2.rx.recv().await.unwrap().as_str(), "x");
        assert!(b.rx.try_recv().is_err());
        hub.unregister("a", a1.id);
        assert_eq!(hub.sockets_of("a"), 1);
        hub.unregister("a", a2.id);
        hub.unregister("a", a2.id);
        assert_eq!(hub.deliver("a", &frame("y")), 0);
        assert_eq!((hub.socket_count(), hub.uid_count()), (1, 1));
    }

    #[tokio::test]
    async fn full_queue_evicts_only_that_socket() {
        let hub = Hub::new(1);
        let slow = hub.register("a");
        let mut fast = hub.register("a");
        assert_eq!(hub.deliver("a", &frame("1")), 2);
        fast.rx.recv().await.unwrap();
        assert_eq!(hub.deliver("a", &frame("2")), 1);
        slow.evicted.notified().await;
        assert_eq!(hub.sockets_of("a"), 1);
        hub.unregister("a", slow.id);
        assert_eq!(hub.socket_count(), 1);
    }
}
