//! The bounded queue in front of the business server's callbacks and each Pusher webhook
//! target: events that matter are never the ones dropped.
//!
//! Two things keep churn (a stranger subscribing to and leaving a public channel in a loop, a
//! page opening and dropping sockets) from pushing out the events a backend acts on (a presence
//! member joining, a user coming online):
//! - **pairs cancel out**: an event that undoes one still waiting (a channel vacated while its
//!   `channel_occupied` waits, a socket's `disconnect` while its `connect` waits, a uid's
//!   `offline` while its `online` waits) takes that one out and is not queued either, as
//!   Pusher's own webhooks do within their batching window: the endpoint only ever learns the
//!   net change. Counted as `coalesced` (two per pair).
//! - **churn goes first**: each event has a [`Class`]; a full queue makes room by dropping its
//!   oldest [`Class::Churn`] event. A churn event that finds no churn to displace is dropped
//!   itself; a [`Class::Kept`] event that finds none displaces the oldest kept one. So as long
//!   as churn is waiting, no kept event is lost. Counted as `dropped`.
//!
//! One consumer takes events in the order they came ([`EventQueue::pop`], [`EventQueue::take`]).
//! Memory is bounded by the capacity passed to each [`EventQueue::push`] (callbacks take it from
//! the live config, so a reload changes it). Pushing never waits: the lock is held for a few
//! pointer moves and, when a pair cancels, a scan back to the event it cancels.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

/// Which events a full queue drops first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Noise a stranger can make at will (`channel_occupied`/`vacated`, `cache_miss`, a
    /// socket's `connect`/`disconnect`): dropped first.
    Churn,
    /// What a backend acts on (presence members, client events, a uid online or offline).
    Kept,
}

/// One event with what the queue needs to know about it.
#[derive(Debug)]
pub struct Entry<E> {
    /// The event itself, handed to the consumer.
    pub event: E,
    /// Its class, for dropping.
    pub class: Class,
    /// `Some((key, up))` for an event of a pair: an event whose key matches the latest waiting
    /// event of that key with the other `up` cancels it (`occupied` is up, `vacated` down).
    pub pair: Option<(Box<str>, bool)>,
}

/// What became of one [`EventQueue::push`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// Events taken out because they cancelled out: 0, or 2 (the new one and the one waiting).
    pub coalesced: u64,
    /// Events dropped to respect the bound: 0 or 1 (the new one or an older one).
    pub dropped: u64,
}

struct State<E> {
    items: VecDeque<Entry<E>>,
    /// Waiting events per pair key, so an event with no partner waiting costs no scan.
    pairs: HashMap<Box<str>, u32>,
}

impl<E> State<E> {
    fn forget(&mut self, entry: &Entry<E>) {
        if let Some((key, _)) = &entry.pair {
            if let Some(n) = self.pairs.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.pairs.remove(key);
                }
            }
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some(entry) = self.items.remove(i) {
            self.forget(&entry);
        }
    }
}

/// A bounded, coalescing queue with one consumer. See the module doc.
pub struct EventQueue<E> {
    /// Held for the queue operations only, never across an await (std `Mutex`: no await
    /// inside, and pushers are socket tasks that must not yield for it).
    state: Mutex<State<E>>,
    ready: Notify,
    closed: AtomicBool,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue::new()
    }
}

impl<E> EventQueue<E> {
    /// An empty queue.
    pub fn new() -> EventQueue<E> {
        EventQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                pairs: HashMap::new(),
            }),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<E>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `entry` unless it cancels a waiting event, keeping at most `capacity` waiting
    /// (at least 1). Never waits.
    pub fn push(&self, entry: Entry<E>, capacity: usize) -> Pushed {
        let mut pushed = Pushed::default();
        {
            let mut state = self.state();
            if let Some((key, up)) = &entry.pair {
                if state.pairs.contains_key(key) {
                    let latest = state
                        .items
                        .iter()
                        .rposition(|e| e.pair.as_ref().is_some_and(|(k, _)| k == key));
                    if let Some(i) = latest {
                        let opposite = state.items[i].pair.as_ref().is_some_and(|(_, u)| u != up);
                        if opposite {
                            state.remove(i);
                            pushed.coalesced = 2;
                            return pushed;
                        }
                    }
                }
            }
            if state.items.len() >= capacity.max(1) {
                let churn = state.items.iter().position(|e| e.class == Class::Churn);
                match (churn, entry.class) {
                    (Some(i), _) => state.remove(i),
                    (None, Class::Churn) => {
                        pushed.dropped = 1;
                        return pushed;
                    }
                    (None, Class::Kept) => state.remove(0),
                }
                pushed.dropped = 1;
            }
            if let Some((key, _)) = &entry.pair {
                *state.pairs.entry(key.clone()).or_insert(0) += 1;
            }
            state.items.push_back(entry);
        }
        self.ready.notify_one();
        pushed
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.state().items.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `n` events, oldest first.
    pub fn take(&self, n: usize) -> Vec<E> {
        let mut state = self.state();
        let n = n.min(state.items.len());
        let taken: Vec<Entry<E>> = state.items.drain(..n).collect();
        for entry in &taken {
            state.forget(entry);
        }
        taken.into_iter().map(|e| e.event).collect()
    }

    /// Waits until at least `n` events wait; `false` if the queue was closed meanwhile.
    pub async fn wait_len(&self, n: usize) -> bool {
        loop {
            let notified = self.ready.notified();
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            if self.len() >= n {
                return true;
            }
            notified.await;
        }
    }

    /// The oldest event, waiting for one; `None` once the queue is closed.
    pub async fn pop(&self) -> Option<E> {
        loop {
            if !self.wait_len(1).await {
                return None;
            }
            if let Some(event) = self.take(1).pop() {
                return Some(event);
            }
        }
    }

    /// Ends the consumer's waits: what its owner drops on its way out.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // A stored permit for a consumer not waiting yet, and a wake-up for one that is.
        self.ready.notify_one();
        self.ready.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn churn(name: &'static str, key: &str, up: bool) -> Entry<&'static str> {
        Entry {
            event: name,
            class: Class::Churn,
            pair: Some((key.into(), up)),
        }
    }

    fn kept(name: &'static str) -> Entry<&'static str> {
        Entry {
            event: name,
            class: Class::Kept,
            pair: None,
        }
    }

    #[test]
    fn a_pair_waiting_together_cancels_out_and_later_ones_still_pair() {
        let q = EventQueue::new();
        assert_eq!(
            q.push(churn("occupied a", "a", true), 10),
            Pushed::default()
        );
        q.push(kept("member_added"), 10);
        let pushed = q.push(churn("vacated a", "a", false), 10);
        assert_eq!(pushed.coalesced, 2);
        assert_eq!(q.take(10), ["member_added"]);
        // Taken: a vacated now has no partner waiting, and is queued.
        q.push(churn("occupied a", "a", true), 10);
        assert_eq!(q.take(10), ["occupied a"]);
        q.push(churn("vacated a", "a", false), 10);
        q.push(churn("occupied a", "a", true), 10);
        assert!(q.is_empty(), "vacated then occupied again: nothing changed");
        // Two of the same direction (a store that double counts) are both kept.
        q.push(churn("occupied b", "b", true), 10);
        q.push(churn("occupied b", "b", true), 10);
        assert_eq!(q.len(), 2);
        assert_eq!(q.push(churn("vacated b", "b", false), 10).coalesced, 2);
        assert_eq!(q.take(10), ["occupied b"]);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_churn_never_a_kept_event_while_churn_waits() {
        let q = EventQueue::new();
        q.push(churn("occupied 1", "1", true), 3);
        q.push(kept("member_added"), 3);
        q.push(churn("occupied 2", "2", true), 3);
        // Full: the oldest churn goes, for churn and for kept events alike.
        assert_eq!(q.push(churn("occupied 3", "3", true), 3).dropped, 1);
        assert_eq!(q.push(kept("member_removed"), 3).dropped, 1);
        assert_eq!(q.take(10), ["member_added", "occupied 3", "member_removed"]);
        // The dropped occupied 1 no longer pairs: its vacated is queued, not cancelled.
        assert_eq!(q.push(churn("vacated 1", "1", false), 3), Pushed::default());
        q.take(10);
        // Only kept events: churn is dropped itself, a kept event displaces the oldest.
        for name in ["k1", "k2", "k3"] {
            q.push(kept(name), 3);
        }
        assert_eq!(q.push(churn("occupied 4", "4", true), 3).dropped, 1);
        assert_eq!(q.push(kept("k4"), 3).dropped, 1);
        assert_eq!(q.take(10), ["k2", "k3", "k4"]);
    }

    #[test]
    fn thousands_of_pairs_leave_nothing_behind() {
        let q = EventQueue::new();
        q.push(kept("member_added"), 8);
        for n in 0..10_000 {
            let key = format!("c{}", n % 7);
            q.push(churn("occupied", &key, true), 8);
            q.push(churn("vacated", &key, false), 8);
        }
        assert_eq!(q.take(100), ["member_added"]);
        assert!(q.state().pairs.is_empty());
    }

    #[tokio::test]
    async fn pop_waits_for_an_event_and_ends_when_closed() {
        let q = std::sync::Arc::new(EventQueue::new());
        let consumer = tokio::spawn({
            let q = q.clone();
            async move {
                let mut got = Vec::new();
                while let Some(e) = q.pop().await {
                    got.push(e);
                }
                got
            }
        });
        q.push(kept("online"), 4);
        while !q.is_empty() {
            tokio::task::yield_now().await;
        }
        q.close();
        assert_eq!(consumer.await.unwrap(), ["online"]);
    }
}
