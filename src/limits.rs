//! Abuse limits that need state: failed password attempts per client address.
//!
//! A client address that fails the password `per_minute` times within a minute is refused
//! (429, with `Retry-After`) on the password-protected endpoints until that minute is over, even
//! with the right password, so the password cannot be brute-forced through `/access` or `/push`.
//! Memory is bounded: at most [`MAX_TRACKED`] addresses are tracked, and windows that ended are
//! swept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most client addresses tracked at once. Past it new offenders are not tracked (an attacker
/// with that many addresses is not stopped by a per-address limit anyway).
pub const MAX_TRACKED: usize = 100_000;
const WINDOW: Duration = Duration::from_secs(60);

/// The address the request comes from, set by the accept loop on every request.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

struct Window {
    start: Instant,
    failures: u32,
}

/// Counts failed password attempts per address in fixed one-minute windows.
pub struct FailureLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, Window>>,
    /// `windows.len()`, readable without the lock: with no address tracked (the normal case),
    /// a backend's request does not touch the shared mutex at all.
    tracked: AtomicUsize,
}

impl FailureLimiter {
    /// `per_minute` failures allowed per address per minute; 0 turns the limiter off.
    pub fn new(per_minute: u32) -> FailureLimiter {
        FailureLimiter {
            per_minute,
            windows: Mutex::new(HashMap::new()),
            tracked: AtomicUsize::new(0),
        }
    }

    /// `Err(wait)` if `ip` is locked out for `wait` more.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.per_minute == 0 || self.tracked.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        // No await while held; sections are a lookup or an insert.
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match windows.get(&ip) {
            Some(w) if w.failures >= self.per_minute && w.start.elapsed() < WINDOW => Err(WINDOW
                .saturating_sub(w.start.elapsed())
                .max(Duration::from_secs(1))),
            _ => Ok(()),
        }
    }

    /// Records one failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if self.per_minute == 0 {
            return;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if windows.len() >= MAX_TRACKED && !windows.contains_key(&ip) {
            windows.retain(|_, w| now.duration_since(w.start) < WINDOW);
            if windows.len() >= MAX_TRACKED {
                return;
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
        self.tracked.store(windows.len(), Ordering::Release);
    }

    /// Forgets windows that are over.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.retain(|_, w| now.duration_since(w.start) < WINDOW);
        self.tracked.store(windows.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_out_after_the_limit_per_address() {
        let limiter = FailureLimiter::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
            limiter.failed(a);
        }
        let wait = limiter.check(a).unwrap_err();
        assert!(wait <= WINDOW && wait >= Duration::from_secs(1));
        assert!(limiter.check(b).is_ok());
        assert!(FailureLimiter::new(0).check(a).is_ok());
    }
}
