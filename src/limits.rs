//! Abuse limits that need state: the sockets open under `max_sockets`, the sockets each client
//! address has open and opens per minute, failed password attempts per client address, and a
//! throttle for log lines about refusals that come in floods. Each limit can be changed while the server runs (a config reload).
//!
//! A client address that fails the password `per_minute` times within a minute is refused
//! (429, with `Retry-After`) on the password-protected endpoints until that minute is over, even
//! with the right password, so the password cannot be brute-forced through `/access` or `/push`.
//! Memory is bounded: at most [`MAX_TRACKED`] addresses are tracked, and windows that ended are
//! swept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most client addresses tracked at once. Past it new offenders are not tracked (an attacker
/// with that many addresses is not stopped by a per-address limit anyway).
pub const MAX_TRACKED: usize = 100_000;
const WINDOW: Duration = Duration::from_secs(60);

/// The address the request comes from, set by the accept loop on every request.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// The sockets open under `max_sockets`. Taking a slot checks and counts in one atomic step,
/// so however many upgrades race, no more than `max` are ever held; lowering `max` refuses new
/// sockets until enough of the open ones have closed (none is cut).
#[derive(Debug)]
pub struct SocketSlots {
    open: AtomicUsize,
    max: AtomicUsize,
}

/// One socket's place under `max_sockets`, given back when dropped, however the socket ends.
/// One pointer, since every open socket holds one.
#[derive(Debug)]
pub struct Slot(Arc<SocketSlots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SocketSlots {
    /// Room for `max` sockets.
    pub fn new(max: usize) -> SocketSlots {
        SocketSlots {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    /// A slot, if fewer than `max` are held.
    pub fn take(slots: &Arc<SocketSlots>) -> Option<Slot> {
        let max = slots.max.load(Ordering::Acquire);
        slots
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot(slots.clone()))
    }

    /// A slot, if fewer than `share` of `max` are held: what an anonymous Pusher socket may
    /// take, so that the rest stays for pages whose keys were checked.
    pub fn take_share(slots: &Arc<SocketSlots>, share: f64) -> Option<Slot> {
        let max = slots.max.load(Ordering::Acquire);
        let cap = (max as f64 * share.clamp(0.0, 1.0)) as usize;
        slots
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < cap).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot(slots.clone()))
    }

    /// Changes the cap for the slots taken from now on.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Release);
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }

    /// Slots held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// The sockets each client address has open (an IPv6 client's /64, see [`client_prefix`]),
/// at most `max` each. Loopback peers are not counted: a proxy on the machine (whose clients
/// are told apart by `real_ip_header`) or a tool.
#[derive(Debug)]
pub struct AddressSlots {
    max: AtomicUsize,
    /// Held for a map operation only.
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One socket's place under its address's cap, given back when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    slots: Arc<AddressSlots>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl AddressSlots {
    /// Room for `max` sockets per address.
    pub fn new(max: usize) -> AddressSlots {
        AddressSlots {
            max: AtomicUsize::new(max),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more socket of `ip`: `Ok(None)` for an address that is not counted
    /// (loopback, or unknown), `Err(max)` when it has `max` open.
    pub fn take(
        slots: &Arc<AddressSlots>,
        ip: Option<IpAddr>,
    ) -> Result<Option<AddressSlot>, usize> {
        let Some(ip) = ip.map(client_prefix).filter(|ip| !ip.is_loopback()) else {
            return Ok(None);
        };
        let max = slots.max.load(Ordering::Acquire);
        let mut open = slots.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                open.remove(&ip);
            }
            return Err(max);
        }
        *n += 1;
        Ok(Some(AddressSlot {
            slots: slots.clone(),
            ip,
        }))
    }

    /// Changes the cap for the sockets opened from now on.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Release);
    }
}

/// New sockets per client address (an IPv6 client's /64): a token bucket of `per_minute`
/// tokens, refilled at `per_minute` a minute, so a whole page fleet behind one NAT may
/// reconnect at once after a restart while one address cannot open and drop sockets without
/// end. Loopback peers are not counted; at most [`MAX_TRACKED`] addresses are (past it, new
/// ones pass uncounted), and buckets full again are swept.
pub struct NewSocketRate {
    per_minute: AtomicU32,
    /// Held for a map operation only.
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Tokens at `now`, at most `cap`.
    fn refill(&mut self, now: Instant, cap: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * cap / 60.0).min(cap);
        self.at = now;
        self.tokens
    }
}

impl NewSocketRate {
    /// `per_minute` new sockets per address per minute; 0 turns the limit off.
    pub fn new(per_minute: u32) -> NewSocketRate {
        NewSocketRate {
            per_minute: AtomicU32::new(per_minute),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one new socket of `ip`; `Err(wait)` when its address has none left, `wait`
    /// being how long until it has one. Addresses not counted (loopback, unknown) pass.
    pub fn take(&self, ip: Option<IpAddr>) -> Result<(), Duration> {
        let per_minute = self.per_minute.load(Ordering::Relaxed);
        let Some(ip) = ip.map(client_prefix).filter(|ip| !ip.is_loopback()) else {
            return Ok(());
        };
        if per_minute == 0 {
            return Ok(());
        }
        let cap = f64::from(per_minute);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&ip) {
            buckets.retain(|_, b| b.refill(now, cap) < cap);
            if buckets.len() >= MAX_TRACKED {
                return Ok(());
            }
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        if bucket.refill(now, cap) >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) * 60.0 / cap;
        Err(Duration::from_secs_f64(wait).max(Duration::from_secs(1)))
    }

    /// Changes the rate from now on.
    pub fn set_per_minute(&self, per_minute: u32) {
        self.per_minute.store(per_minute, Ordering::Relaxed);
    }

    /// Forgets addresses whose bucket is full again.
    pub fn sweep(&self) {
        let cap = f64::from(self.per_minute.load(Ordering::Relaxed));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.retain(|_, b| b.refill(now, cap) < cap);
    }
}

struct Window {
    start: Instant,
    failures: u32,
}

/// What an address counts as for the lockout: itself for IPv4 (and an IPv4-mapped IPv6
/// address), its /64 prefix for IPv6, since one client can take any address of its /64.
pub fn client_prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

/// Counts failed password attempts per address (an IPv6 client's /64) in fixed one-minute
/// windows.
pub struct FailureLimiter {
    per_minute: AtomicU32,
    windows: Mutex<HashMap<IpAddr, Window>>,
    /// `windows.len()`, readable without the lock: with no address tracked (the normal case),
    /// a backend's request does not touch the shared mutex at all.
    tracked: AtomicUsize,
}

impl FailureLimiter {
    /// `per_minute` failures allowed per address per minute; 0 turns the limiter off.
    pub fn new(per_minute: u32) -> FailureLimiter {
        FailureLimiter {
            per_minute: AtomicU32::new(per_minute),
            windows: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
        }
    }

    /// `Err(wait)` if `ip` is locked out for `wait` more.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let ip = client_prefix(ip);
        let per_minute = self.per_minute();
        if per_minute == 0 || self.tracked.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        // No await while held; sections are a lookup or an insert.
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match windows.get(&ip) {
            Some(w) if w.failures >= per_minute && w.start.elapsed() < WINDOW => Err(WINDOW
                .saturating_sub(w.start.elapsed())
                .max(Duration::from_secs(1))),
            _ => Ok(()),
        }
    }

    /// Records one failed attempt from `ip`. `Some(wait)` when this attempt locked the address
    /// out, for `wait` (once per window, so the caller can log the lockout once).
    pub fn failed(&self, ip: IpAddr) -> Option<Duration> {
        let ip = client_prefix(ip);
        let per_minute = self.per_minute();
        if per_minute == 0 {
            return None;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&ip) {
            windows.retain(|_, w| now.duration_since(w.start) < WINDOW);
            if windows.len() >= MAX_TRACKED {
                return None;
            }
        }
        let w = windows.entry(ip).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        let locked =
            (w.failures == per_minute).then(|| WINDOW.saturating_sub(now.duration_since(w.start)));
        self.tracked.store(windows.len(), Ordering::Release);
        locked
    }

    /// The failures allowed per address per minute (0: no lockout).
    pub fn per_minute(&self) -> u32 {
        self.per_minute.load(Ordering::Relaxed)
    }

    /// Changes the failures allowed from now on; windows under way keep their counts.
    pub fn set_per_minute(&self, per_minute: u32) {
        self.per_minute.store(per_minute, Ordering::Relaxed);
    }

    /// Forgets windows that are over.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.retain(|_, w| now.duration_since(w.start) < WINDOW);
        self.tracked.store(windows.len(), Ordering::Release);
    }
}

/// Lets a log line through at most once per period. A full server refuses every reconnect of
/// a burst; one line per period says so, with how many were not logged, instead of one each.
pub struct LogThrottle {
    start: Instant,
    period_ms: u64,
    /// Milliseconds after `start` when the next line may go out.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// At most one line per `period`.
    pub fn new(period: Duration) -> LogThrottle {
        LogThrottle {
            start: Instant::now(),
            period_ms: period.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if a line may be logged now, `n` being how many were held back since the last
    /// one; `None` (and one more held back) otherwise.
    pub fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.period_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv6 client rotating through its /64 is one address to the lockout.
    #[test]
    fn an_ipv6_client_is_its_64_prefix() {
        let limiter = FailureLimiter::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(limiter.failed(ip("2001:db8:1:2::1")).is_none());
        assert!(
            limiter.failed(ip("2001:db8:1:2:ffff::9")).is_some(),
            "same /64: locked"
        );
        assert!(limiter.check(ip("2001:db8:1:2::77")).is_err());
        assert!(limiter.check(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        assert_eq!(client_prefix(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn locks_out_after_the_limit_per_address() {
        let limiter = FailureLimiter::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for i in 1..=3 {
            assert!(limiter.check(a).is_ok());
            // Only the failure that locks says so.
            assert_eq!(limiter.failed(a).is_some(), i == 3);
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(wait <= WINDOW && wait >= Duration::from_secs(1));
        assert!(limiter.check(b).is_ok());
        assert!(FailureLimiter::new(0).check(a).is_ok());
    }

    #[test]
    fn socket_slots_cap_what_is_held_and_a_lower_cap_waits_for_closes() {
        let slots = Arc::new(SocketSlots::new(2));
        let a = SocketSlots::take(&slots).unwrap();
        let b = SocketSlots::take(&slots).unwrap();
        assert!(SocketSlots::take(&slots).is_none());
        drop(a);
        let c = SocketSlots::take(&slots).unwrap();
        // Lowered under what is open: nothing is cut, nothing new gets in.
        slots.set_max(1);
        assert!(SocketSlots::take(&slots).is_none());
        drop(b);
        assert!(SocketSlots::take(&slots).is_none());
        drop(c);
        let _d = SocketSlots::take(&slots).unwrap();
        assert_eq!(slots.open(), 1);
        slots.set_max(3);
        let _e = SocketSlots::take(&slots).unwrap();
        assert_eq!(slots.open(), 2);
    }

    #[test]
    fn new_sockets_per_address_come_in_a_burst_then_at_the_rate() {
        let rate = NewSocketRate::new(3);
        let a: Option<IpAddr> = Some("203.0.113.1".parse().unwrap());
        let b: Option<IpAddr> = Some("2001:db8:1:2::1".parse().unwrap());
        for _ in 0..3 {
            assert!(rate.take(a).is_ok());
        }
        // A fourth within the minute: a third of a minute until the next token.
        let wait = rate.take(a).unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another address, and loopback, are not affected; an IPv6 client is its /64.
        assert!(rate.take(b).is_ok());
        assert!(rate.take(Some("::1".parse().unwrap())).is_ok());
        for _ in 0..2 {
            assert!(rate.take(Some("2001:db8:1:2::99".parse().unwrap())).is_ok());
        }
        assert!(rate.take(b).is_err());
        rate.set_per_minute(0);
        assert!(rate.take(a).is_ok(), "0 turns it off");
    }

    #[test]
    fn a_share_of_the_slots_leaves_the_rest_to_full_takers() {
        let slots = Arc::new(SocketSlots::new(10));
        let shared: Vec<Slot> = (0..9)
            .map(|_| SocketSlots::take_share(&slots, 0.9).unwrap())
            .collect();
        assert!(SocketSlots::take_share(&slots, 0.9).is_none());
        let full = SocketSlots::take(&slots).unwrap();
        assert!(SocketSlots::take(&slots).is_none());
        drop(full);
        drop(shared);
        assert_eq!(slots.open(), 0);
    }

    #[test]
    fn the_log_throttle_lets_one_line_through_per_period_and_counts_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        let every_time = LogThrottle::new(Duration::ZERO);
        assert_eq!(every_time.allow(), Some(0));
        assert_eq!(every_time.allow(), Some(0));
    }
}
