//! Callbacks to the business server (seed 003's `connect_callback` / `disconnect_callback`).
//!
//! With `callback_url` set, push-serve POSTs a signed JSON event there when a uid comes online
//! (its first socket), when it goes offline (its last socket closed, and no new one opened
//! within `callback_grace_secs`, so a reload is neither), and with `callback_sockets: true`
//! for every socket's connect and disconnect (with the close code).
//!
//! Nothing a socket or a push does ever waits for the business server: an event is put in a
//! bounded queue (`callback_queue`, an [`EventQueue`]) without waiting. One sender takes
//! events off the queue in order and tries each [`ATTEMPTS`] times, each try bounded by
//! [`TIMEOUT`], with backoff between them, and counts it sent or failed. A hanging or failing
//! endpoint therefore slows only the sender: the queue fills. While events wait, a socket's
//! `disconnect` cancels its `connect` and a uid's `offline` its `online` (the endpoint learns
//! the net change only); a full queue drops its oldest `connect`/`disconnect` (what one user
//! can make at will by opening and dropping sockets) before any `online` or `offline`. Both
//! are counted in `/stats` and `/metrics`; drops are logged at most once a minute.
//!
//! Each POST carries `X-Push-Timestamp` (unix seconds) and `X-Push-Signature:
//! sha256=<hex>`, the HMAC-SHA256 under `callback_secret` of `<timestamp>.<body>`; the
//! receiver recomputes it and refuses old timestamps (replays).
//!
//! Online and offline are judged on this node's sockets of the uid; in a cluster, the sender
//! also asks the cluster's count first and leaves out an `online` when the uid already had a
//! socket on another node, and an `offline` when it still has one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use warp::http::Uri;

use crate::event_queue::{Class, Entry, EventQueue};
use crate::hub::Hub;
use crate::limits::LogThrottle;
use crate::live::Current;
use crate::metrics::Metrics;

/// Tries per event (the first and the retries).
pub const ATTEMPTS: u32 = 3;
/// Bound on one POST, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Wait before the first retry; doubled before each next one.
const BACKOFF: Duration = Duration::from_millis(500);

/// What the callbacks are configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where events are POSTed (`http://`).
    pub url: Uri,
    /// The HMAC key of the signature.
    pub secret: String,
    /// Also each socket's connect and disconnect.
    pub sockets: bool,
    /// How long a uid's last socket may be closed before it is offline.
    pub grace: Duration,
    /// Events waiting to be sent at most; past it the oldest `connect`/`disconnect` is dropped
    /// first (counted).
    pub queue: usize,
}

/// One event, as POSTed.
#[derive(Debug, Clone, Serialize)]
struct Event {
    /// `online`, `offline`, `connect` or `disconnect`.
    event: &'static str,
    uid: String,
    /// `connect`/`disconnect`: the socket's id on its node.
    #[serde(skip_serializing_if = "Option::is_none")]
    socket: Option<u64>,
    /// `disconnect`: the close code sent or received (absent: the connection was lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    /// When it happened, unix milliseconds.
    at: u64,
}

#[derive(Default)]
struct Uid {
    /// Sockets of the uid on this node.
    sockets: usize,
    /// Set while its last socket closed less than `grace` ago: which closing it was.
    grace: Option<u64>,
}

/// Counts, as `/stats` shows them.
#[derive(Debug, Default, Serialize)]
pub struct Counts {
    /// Events the endpoint answered with 2xx.
    pub sent: u64,
    /// Events that failed every attempt.
    pub failed: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Events that cancelled out while waiting (a `connect` and its `disconnect`, an `online`
    /// and its `offline`: two each).
    pub coalesced: u64,
}

struct Inner {
    /// `None` while `callback_url` is unset; a reload swaps it.
    settings: Current<Option<Settings>>,
    /// Bounded by `settings.queue` (a reload may change the bound).
    queue: Arc<EventQueue<Event>>,
    /// The "queue full" line: at most one a minute, with how many more drops.
    full_log: LogThrottle,
    /// Uids with sockets here or in their grace period. Held for map operations only.
    uids: Mutex<HashMap<String, Uid>>,
    closings: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    coalesced: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// The callbacks of this node; does nothing while `callback_url` is unset.
#[derive(Clone, Default)]
pub struct Callbacks(Option<Arc<Inner>>);

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `sha256=<hex>`: the signature of `body` sent at `timestamp` under `secret`.
pub fn signature(secret: &str, timestamp: u64, body: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Callbacks {
    /// Callbacks that do nothing.
    pub fn off() -> Callbacks {
        Callbacks(None)
    }

    /// Starts the dispatcher (in the current runtime), sending with `settings` (none: off
    /// until a reload sets them); `hub` answers the cluster's counts.
    pub fn start(settings: Option<Settings>, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Callbacks {
        let queue = Arc::new(EventQueue::new());
        let inner = Arc::new(Inner {
            settings: Current::new(settings),
            queue: queue.clone(),
            full_log: LogThrottle::new(Duration::from_secs(60)),
            uids: Mutex::default(),
            closings: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            coalesced: AtomicU64::new(0),
            metrics,
        });
        // The dispatcher holds the inner state weakly, so it ends when the server drops it
        // (which closes the queue).
        tokio::spawn(dispatch(queue, Arc::downgrade(&inner), hub));
        Callbacks(Some(inner))
    }

    /// New settings (a config reload): events from now on go where they say, queued ones too;
    /// `None` turns callbacks off (queued events are dropped as they come up). Uids count from
    /// the sockets opened while callbacks are on.
    pub fn reconfigure(&self, settings: Option<Settings>) {
        if let Some(inner) = &self.0 {
            if settings.is_none() {
                inner.uids.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
            inner.settings.set(settings);
        }
    }

    /// The settings in force, if callbacks are on.
    fn on(&self) -> Option<(&Arc<Inner>, Arc<Option<Settings>>)> {
        let inner = self.0.as_ref()?;
        let settings = inner.settings.get();
        settings.is_some().then_some((inner, settings))
    }

    /// Whether callbacks are configured.
    pub fn is_on(&self) -> bool {
        self.on().is_some()
    }

    /// Counts so far (`None` when callbacks are off).
    pub fn counts(&self) -> Option<Counts> {
        self.on().map(|(i, _)| Counts {
            sent: i.sent.load(Ordering::Relaxed),
            failed: i.failed.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            coalesced: i.coalesced.load(Ordering::Relaxed),
        })
    }

    /// Socket `socket` of `uid` opened. Never waits.
    pub fn connected(&self, uid: &str, socket: u64) {
        let Some((inner, settings)) = self.on() else {
            return;
        };
        let settings = settings.as_ref().as_ref().expect("on");
        let online = {
            let mut uids = inner.uids.lock().unwrap_or_else(|p| p.into_inner());
            let entry = uids.entry(uid.to_owned()).or_default();
            entry.sockets += 1;
            // A socket within the grace period after the last one closed: a reload.
            entry.sockets == 1 && entry.grace.take().is_none()
        };
        if online {
            inner.queue(settings, Event::new("online", uid));
        }
        if settings.sockets {
            inner.queue(
                settings,
                Event {
                    socket: Some(socket),
                    ..Event::new("connect", uid)
                },
            );
        }
    }

    /// Socket `socket` of `uid` closed with `code` (`None`: lost). Never waits.
    pub fn disconnected(&self, uid: &str, socket: u64, code: Option<u16>) {
        let Some((inner, settings)) = self.on() else {
            return;
        };
        let settings = settings.as_ref().as_ref().expect("on");
        if settings.sockets {
            inner.queue(
                settings,
                Event {
                    socket: Some(socket),
                    code,
                    ..Event::new("disconnect", uid)
                },
            );
        }
        let closing = {
            let mut uids = inner.uids.lock().unwrap_or_else(|p| p.into_inner());
            let Some(entry) = uids.get_mut(uid) else {
                return;
            };
            entry.sockets = entry.sockets.saturating_sub(1);
            if entry.sockets > 0 {
                return;
            }
            let closing = inner.closings.fetch_add(1, Ordering::Relaxed);
            entry.grace = Some(closing);
            closing
        };
        let (inner, uid, grace) = (inner.clone(), uid.to_owned(), settings.grace);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let offline = {
                let mut uids = inner.uids.lock().unwrap_or_else(|p| p.into_inner());
                let still = uids
                    .get(&uid)
                    .is_some_and(|e| e.sockets == 0 && e.grace == Some(closing));
                if still {
                    uids.remove(&uid);
                }
                still
            };
            if let (true, Some(settings)) = (offline, &*inner.settings.get()) {
                inner.queue(settings, Event::new("offline", &uid));
            }
        });
    }
}

impl Event {
    fn new(event: &'static str, uid: &str) -> Event {
        Event {
            event,
            uid: uid.to_owned(),
            socket: None,
            code: None,
            at: unix_ms(),
        }
    }
}

impl Event {
    /// How the queue treats it: a socket's connect/disconnect is churn, paired by socket; a
    /// uid's online/offline is kept, paired by uid.
    fn entry(self) -> Entry<Event> {
        let (class, pair) = match (self.event, self.socket) {
            ("connect", Some(id)) => (Class::Churn, Some((format!("s{id}").into(), true))),
            ("disconnect", Some(id)) => (Class::Churn, Some((format!("s{id}").into(), false))),
            ("online", _) => (Class::Kept, Some((format!("u{}", self.uid).into(), true))),
            ("offline", _) => (Class::Kept, Some((format!("u{}", self.uid).into(), false))),
            _ => (Class::Kept, None),
        };
        Entry {
            event: self,
            class,
            pair,
        }
    }
}

impl Inner {
    /// Queues `event` under `settings.queue` (see the module doc for what a full queue drops).
    fn queue(&self, settings: &Settings, event: Event) {
        let name = event.event;
        let pushed = self.queue.push(event.entry(), settings.queue);
        if pushed.coalesced > 0 {
            self.coalesced
                .fetch_add(pushed.coalesced, Ordering::Relaxed);
            self.metrics.callback("coalesced", pushed.coalesced);
        }
        if pushed.dropped > 0 {
            self.dropped.fetch_add(pushed.dropped, Ordering::Relaxed);
            self.metrics.callback("dropped", pushed.dropped);
            if let Some(held_back) = self.full_log.allow() {
                log::warn!(
                    "callback queue full ({} events): dropped its oldest connect/disconnect (or \
                     this {name}); {held_back} more dropped since the last such line, at most \
                     one a minute",
                    settings.queue
                );
            }
        }
    }
}

async fn dispatch(queue: Arc<EventQueue<Event>>, inner: std::sync::Weak<Inner>, hub: Arc<Hub>) {
    let cluster = hub.broker().is_shared();
    // One event at a time, so the business server sees a uid's events in order.
    while let Some(event) = queue.pop().await {
        let Some(inner) = inner.upgrade() else { return };
        if cluster && !still_true(&hub, &event).await {
            continue;
        }
        let body = serde_json::to_string(&event).expect("serializes");
        let mut wait = BACKOFF;
        let mut attempt = 1;
        let outcome = loop {
            // Read for every try: a reload may have moved the endpoint meanwhile.
            let Some(settings) = Option::clone(&inner.settings.get()) else {
                break "dropped";
            };
            match post(&settings, &body).await {
                Ok(()) => break "sent",
                Err(why) if attempt == ATTEMPTS => {
                    log::warn!(
                        "callback `{}` failed {ATTEMPTS} times, last: {why}",
                        event.event
                    );
                    break "failed";
                }
                Err(why) => log::debug!("callback `{}` failed: {why}; retrying", event.event),
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
            attempt += 1;
        };
        let count = match outcome {
            "sent" => &inner.sent,
            "failed" => &inner.failed,
            _ => &inner.dropped,
        };
        count.fetch_add(1, Ordering::Relaxed);
        inner.metrics.callback(outcome, 1);
    }
}

/// In a cluster: whether an `online` is still a first socket over every node, an `offline`
/// still no socket anywhere (the cluster's count unknown: sent anyway).
async fn still_true(hub: &Hub, event: &Event) -> bool {
    let Ok(sockets) = hub.sockets_of(&event.uid).await else {
        return true;
    };
    match event.event {
        "online" => sockets <= 1,
        "offline" => sockets == 0,
        _ => true,
    }
}

async fn post(settings: &Settings, body: &str) -> Result<(), String> {
    let seconds = unix_ms() / 1000;
    let signature = signature(&settings.secret, seconds, body);
    let timestamp = seconds.to_string();
    let headers = [
        ("x-push-timestamp", timestamp.as_str()),
        ("x-push-signature", signature.as_str()),
    ];
    match crate::http_client::post_json(&settings.url, &headers, body.to_owned(), TIMEOUT).await? {
        status if status.is_success() => Ok(()),
        status => Err(format!("status {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // echo -n '1700000000.{"event":"online"}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature("secret", 1_700_000_000, r#"{"event":"online"}"#),
            format!(
                "sha256={}",
                "857af3da92e3a70c5e71cb6e6133e2738b019b573eb113406a15bad4b9323957"
            )
        );
    }
}
