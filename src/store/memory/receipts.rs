//! Delivery reports in memory: at most `receipt_max`, each for `receipt_ttl_secs`, the oldest
//! dropped first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::broker::{BoxFuture, BrokerError};
use crate::live::Current;
use crate::receipts::{unix_secs, Acked, Acker, ReceiptStore, Report, Target};

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
struct State {
    reports: HashMap<String, Kept>,
    /// Ids in the order they were opened, for expiry and the count bound.
    order: VecDeque<(Instant, String)>,
}

impl State {
    /// Drops the reports opened `ttl` ago or more, and the oldest past `max - 1`.
    fn expire(&mut self, now: Instant, ttl: Duration, max: usize) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= ttl)
            || self.order.len() >= max
        {
            let (_, old) = self.order.pop_front().expect("non-empty");
            self.reports.remove(&old);
        }
    }
}

/// One node's reports.
pub struct MemoryReceipts {
    /// Held for map operations only, never across an await.
    state: Mutex<State>,
    /// How long a report is kept, and how many at most.
    bounds: Current<(Duration, usize)>,
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T, BrokerError>> {
    Box::pin(std::future::ready(Ok(value)))
}

impl MemoryReceipts {
    /// At most `max` reports, each for `ttl`.
    pub fn new(ttl: Duration, max: usize) -> MemoryReceipts {
        MemoryReceipts {
            state: Mutex::default(),
            bounds: Current::new((ttl, max)),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl(&self) -> Duration {
        self.bounds.get().0
    }
}

impl ReceiptStore for MemoryReceipts {
    fn open<'a>(
        &'a self,
        id: &'a str,
        target: &'a Target,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let now = Instant::now();
        let (ttl, max) = *self.bounds.get();
        let mut m = self.state();
        m.expire(now, ttl, max);
        if !m.reports.contains_key(id) {
            m.reports.insert(
                id.to_owned(),
                Kept {
                    target: target.clone(),
                    topic: topic.to_owned(),
                    created: unix_secs(),
                    sockets: 0,
                    offline: Vec::new(),
                    acks: HashSet::new(),
                    ack_uids: HashSet::new(),
                    at: now,
                },
            );
            m.order.push_back((now, id.to_owned()));
        }
        ready(())
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        sockets: u64,
        offline: &'a [String],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        if let Some(r) = self.state().reports.get_mut(id) {
            r.sockets = sockets;
            r.offline = offline.to_vec();
        }
        ready(())
    }

    fn ack<'a>(
        &'a self,
        id: &'a str,
        acker: &'a Acker<'a>,
    ) -> BoxFuture<'a, Result<Acked, BrokerError>> {
        let ttl = self.ttl();
        let mut m = self.state();
        let Some(r) = m.reports.get_mut(id).filter(|r| r.at.elapsed() < ttl) else {
            return ready(Acked::Unknown);
        };
        if !acker.may_ack(&r.target) {
            return ready(Acked::NotFor);
        }
        if !r.acks.insert(acker.socket.clone()) {
            return ready(Acked::Repeat);
        }
        r.ack_uids.insert(acker.uid.to_owned());
        ready(Acked::Counted)
    }

    fn exists<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let ttl = self.ttl();
        ready(
            self.state()
                .reports
                .get(id)
                .is_some_and(|r| r.at.elapsed() < ttl),
        )
    }

    fn report<'a>(
        &'a self,
        id: &'a str,
        with_uids: bool,
    ) -> BoxFuture<'a, Result<Option<Report>, BrokerError>> {
        let ttl = self.ttl();
        let m = self.state();
        let Some(r) = m.reports.get(id).filter(|r| r.at.elapsed() < ttl) else {
            return ready(None);
        };
        let mut ack_uids: Vec<String> = r.ack_uids.iter().cloned().collect();
        ack_uids.sort_unstable();
        ready(Some(Report {
            id: id.to_owned(),
            target: r.target.clone(),
            topic: r.topic.clone(),
            created: r.created,
            sockets: r.sockets,
            acks: r.acks.len() as u64,
            offline: r.offline.clone(),
            ack_uids: with_uids.then_some(ack_uids),
        }))
    }

    fn set_bounds(&self, ttl: Duration, max: usize) {
        self.bounds.set((ttl, max));
    }

    fn sweep(&self) {
        let ttl = self.ttl();
        self.state().expire(Instant::now(), ttl, usize::MAX);
    }

    fn len(&self) -> usize {
        self.state().reports.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receipts::new_id;

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
        let r = MemoryReceipts::new(Duration::from_secs(60), 10);
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
        let r = MemoryReceipts::new(Duration::from_secs(60), 3);
        for id in ["1", "2", "3", "4"] {
            r.open(id, &Target::Broadcast, "t").await.unwrap();
        }
        assert_eq!(r.len(), 3);
        assert!(
            r.report("1", false).await.unwrap().is_none(),
            "the oldest went"
        );
        assert!(r.report("4", false).await.unwrap().is_some());
        let r = MemoryReceipts::new(Duration::ZERO, 3);
        r.open("1", &Target::Broadcast, "t").await.unwrap();
        assert!(r.report("1", false).await.unwrap().is_none());
        r.sweep();
        assert!(r.is_empty());
        assert_ne!(new_id("push", None), new_id("push", None));
        assert_eq!(new_id("push", Some("k")), new_id("push", Some("k")));
        assert_ne!(new_id("push", Some("k")), new_id("publish", Some("k")));
    }
}
