//! The offline inbox in memory.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::{BoxFuture, BrokerError};
use crate::inbox::{Bounds, Entry, InboxStore, Kept};
use crate::live::Current;

#[derive(Default)]
struct State {
    /// Uid → its messages, oldest first, each with its expiry.
    by_uid: HashMap<String, Vec<(Instant, Entry)>>,
    total: usize,
    /// The last entry's `n`.
    last: u64,
}

/// One node's inbox.
pub struct MemoryInbox {
    /// Held for map operations only, never across an await.
    state: Mutex<State>,
    bounds: Current<Bounds>,
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T, BrokerError>> {
    Box::pin(std::future::ready(Ok(value)))
}

impl MemoryInbox {
    /// An empty inbox.
    pub fn new(bounds: Bounds) -> MemoryInbox {
        MemoryInbox {
            state: Mutex::default(),
            bounds: Current::new(bounds),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl InboxStore for MemoryInbox {
    fn keep<'a>(
        &'a self,
        uid: &'a str,
        id: &'a str,
        topic: &'a str,
        contents: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Kept, BrokerError>> {
        let bounds = *self.bounds.get();
        let mut m = self.state();
        let now = Instant::now();
        let State {
            by_uid,
            total,
            last,
        } = &mut *m;
        let list = by_uid.entry(uid.to_owned()).or_default();
        let before = list.len();
        list.retain(|(expires, _)| *expires > now);
        *total -= before - list.len();
        if list.iter().any(|(_, e)| e.id == id) {
            return ready(Kept::Kept);
        }
        if list.len() >= bounds.per_uid {
            return ready(Kept::UidFull);
        }
        if *total >= bounds.total {
            if list.is_empty() {
                by_uid.remove(uid);
            }
            return ready(Kept::Full);
        }
        *last += 1;
        let entry = Entry {
            n: *last,
            ..Entry::new(id, topic, contents)
        };
        list.push((now + ttl, entry));
        *total += 1;
        ready(Kept::Kept)
    }

    fn entries<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, BrokerError>> {
        let now = Instant::now();
        let entries = self.state().by_uid.get(uid).map_or_else(Vec::new, |list| {
            list.iter()
                .filter(|(expires, _)| *expires > now)
                .map(|(_, e)| e.clone())
                .collect()
        });
        ready(entries)
    }

    fn remove<'a>(&'a self, uid: &'a str, id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let mut m = self.state();
        let State { by_uid, total, .. } = &mut *m;
        let Some(list) = by_uid.get_mut(uid) else {
            return ready(false);
        };
        let before = list.len();
        list.retain(|(_, e)| e.id != id);
        let removed = before - list.len();
        *total -= removed;
        if list.is_empty() {
            by_uid.remove(uid);
        }
        ready(removed > 0)
    }

    fn set_bounds(&self, bounds: Bounds) {
        self.bounds.set(bounds);
    }

    fn sweep(&self) {
        let mut m = self.state();
        let now = Instant::now();
        let State { by_uid, total, .. } = &mut *m;
        by_uid.retain(|_, list| {
            let before = list.len();
            list.retain(|(expires, _)| *expires > now);
            *total -= before - list.len();
            !list.is_empty()
        });
    }

    fn len(&self) -> usize {
        self.state().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keeps_under_both_bounds_until_removed_or_expired() {
        let inbox = MemoryInbox::new(Bounds {
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
