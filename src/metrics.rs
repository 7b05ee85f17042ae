//! What an operator watches: the Prometheus metrics behind `/metrics`, and the short history
//! the admin page draws (one sample of sockets and traffic a second, recent refusals).
//!
//! Each server owns one [`Metrics`]: a `metrics-exporter-prometheus` recorder that is *not*
//! installed as the process's global recorder, so two servers in one process (the tests) count
//! apart. Every series is registered once, up front or on its first use, and kept as a handle,
//! so counting is an atomic add with no lookup or lock, and nothing at all is done per
//! delivered frame. A publish costs about 0.1 µs of metrics (three TSC clock reads, three
//! histogram values, one atomic add; histogram values go into lock-free blocks, one allocated
//! per 64 values), a request 4 ns.
//!
//! Where the figures come from:
//! - events are counted where they happen, through handles: connects, closes by close code,
//!   HTTP requests by endpoint and status, auth failures and lockouts, publish latency per
//!   stage, and a cluster broker's calls to its store ([`Metrics::broker_call`]);
//! - what the registry and the broker already keep (sockets open, frames queued, slow-reader
//!   evictions, history bytes, readiness) and messages published are plain atomics, copied into
//!   the exporter when `/metrics` is rendered.
//!
//! Histograms are buffered by the exporter until they are rendered; [`Metrics::upkeep`] (from
//! `run`'s periodic sweep) also drains them, so memory stays bounded when nobody scrapes.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::wire::CloseReason;
use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
    with_local_recorder, Counter, Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde::Serialize;

/// Histogram buckets, in seconds: 50 µs to 5 s. A push is queued in microseconds; a cluster
/// broker's round trip takes a fraction of a millisecond to milliseconds.
const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Samples kept for the admin page's charts: five minutes at one a second.
pub const SAMPLES: usize = 300;
/// Refusals kept for the admin page.
pub const REFUSALS: usize = 100;
/// Longest refusal reason kept, in bytes.
const REASON_MAX: usize = 160;

/// A timestamp for latency on the push path. quanta reads the CPU's time-stamp counter (about
/// 10 ns, against 40-70 ns for `std::time::Instant::now()` on the build machine) and falls back
/// to the OS clock where that counter is not reliable.
pub type Instant = quanta::Instant;

/// Now, as an [`Instant`].
pub fn now() -> Instant {
    quanta::Instant::now()
}

/// What a socket speaks: sockets are counted by it (`transport` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/ws`: the native WebSocket.
    Native = 0,
    /// `/app/{key}`: a Pusher-protocol WebSocket.
    Pusher = 1,
    /// `/sse`: an event stream.
    Sse = 2,
}

impl Transport {
    /// Every transport, in label order.
    pub const ALL: [Transport; 3] = [Transport::Native, Transport::Pusher, Transport::Sse];

    /// Its `transport` label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Native => "ws",
            Transport::Pusher => "pusher",
            Transport::Sse => "sse",
        }
    }
}

/// Declares [`Endpoint`] from one table of endpoint and label, so the enum, `ALL` (every label
/// `/metrics` shows, even at zero) and [`Endpoint::label`] cannot disagree.
macro_rules! endpoints {
    ($( $(#[$doc:meta])* $name:ident = $label:literal; )*) => {
        /// The endpoints requests are counted by ([`crate::http::routes`] maps each path to
        /// one). Any other path counts as `other`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Endpoint {
            $( $(#[$doc])* $name, )*
        }

        impl Endpoint {
            const ALL: &'static [Endpoint] = &[$(Endpoint::$name),*];

            /// Its label value.
            pub fn label(self) -> &'static str {
                match self {
                    $(Endpoint::$name => $label,)*
                }
            }
        }
    };
}

endpoints! {
    /// `/access`
    Access = "access";
    /// `/ws`
    Ws = "ws";
    /// `/push`
    Push = "push";
    /// `/publish`
    Publish = "publish";
    /// `/broadcast`
    Broadcast = "broadcast";
    /// `/online`
    Online = "online";
    /// `/stats`
    Stats = "stats";
    /// `/health`
    Health = "health";
    /// `/ready`
    Ready = "ready";
    /// `/metrics`
    Metrics = "metrics";
    /// `/admin` and its JSON under `/admin/`
    Admin = "admin";
    /// `/sse`
    Sse = "sse";
    /// `/push-serve.js`
    Client = "push-serve.js";
    /// `/disconnect`
    Disconnect = "disconnect";
    /// `/rooms`
    Rooms = "rooms";
    /// `/report/push/<id>`
    Report = "report";
    /// `/pool/<name>`.
    Pool = "pool";
    /// Pusher-compatible mode: `/app/{key}` sockets
    PusherSocket = "pusher_socket";
    /// Pusher-compatible mode: the HTTP API under `/apps/`
    PusherApi = "pusher_api";
    /// Anything else (404).
    Other = "other";
}

/// Statuses counted under their own label; any other is counted as `other`.
const STATUSES: [u16; 15] = [
    101, 200, 204, 400, 401, 403, 404, 405, 413, 426, 429, 500, 502, 503, 504,
];

/// The three ways to publish, each timed and counted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    /// `/push`: to uids.
    Push,
    /// `/publish`: to a topic.
    Publish,
    /// `/broadcast`: to every socket.
    Broadcast,
}

impl PublishKind {
    const ALL: [PublishKind; 3] = [
        PublishKind::Push,
        PublishKind::Publish,
        PublishKind::Broadcast,
    ];

    /// Its label value (also the endpoint's name).
    pub fn label(self) -> &'static str {
        match self {
            PublishKind::Push => "push",
            PublishKind::Publish => "publish",
            PublishKind::Broadcast => "broadcast",
        }
    }
}

/// What credential failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The backends' password (`?password=` or `Authorization: Bearer`).
    Password,
    /// A page's access key on `/ws`.
    AccessKey,
}

/// Close codes counted under their own label: [`CloseReason::ALL`]'s. Any other code (Pusher
/// mode's own) counts as `other`, and a connection that ended without a close frame as `lost`.
const CLOSE_CODES: [u16; CloseReason::ALL.len()] = {
    let mut codes = [0; CloseReason::ALL.len()];
    let mut i = 0;
    while i < codes.len() {
        codes[i] = CloseReason::ALL[i].code();
        i += 1;
    }
    codes
};

/// One point of the admin page's charts.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Unix time, milliseconds.
    pub t: u64,
    /// Sockets open.
    pub sockets: u64,
    /// Messages published since start (one per stream a publish went to).
    pub messages: u64,
    /// Frames queued to sockets since start.
    pub deliveries: u64,
}

/// A refused request, as the admin page lists it. Never holds a query string, a header, a
/// password or an access key: only the status, the stable reason code and text, the endpoint
/// and the client's address.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// Unix time, milliseconds.
    pub t: u64,
    /// HTTP status.
    pub status: u16,
    /// Stable reason code ([`crate::http::ApiError::code`]).
    pub reason: &'static str,
    /// The reason text the client got (cut to 160 bytes).
    pub detail: String,
    /// The endpoint asked.
    pub endpoint: &'static str,
    /// The client's address (the proxy header's, if configured), if known.
    pub client: Option<IpAddr>,
}

#[derive(Default)]
struct Refusals {
    recent: VecDeque<Refusal>,
    /// Since start, by reason code (a fixed, small set of keys).
    counts: HashMap<&'static str, u64>,
}

/// This server's metrics and recent history. See the module doc.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    started: std::time::Instant,

    /// By [`Transport`].
    connects: [Counter; 3],
    /// By [`Transport`], then by [`CLOSE_CODES`] index, then `other`, then `lost`.
    closes: [Vec<Counter>; 3],
    /// By endpoint, then by [`STATUSES`] index (last: other); registered on first use so that
    /// only statuses that happened are exported.
    requests: Vec<[OnceLock<Counter>; STATUSES.len() + 1]>,
    password_failures: Counter,
    access_key_failures: Counter,
    lockouts: Counter,
    /// Latency by publish kind: accepted → body read, parsed → queued, accepted → queued.
    stages: Vec<[Histogram; 3]>,
    /// Messages published by publish kind: kept here (the admin page reads them) and copied
    /// to `published` when rendered.
    messages: [AtomicU64; 3],
    published: Vec<Counter>,

    // Copied in when rendered.
    sockets: Gauge,
    deliveries: Counter,
    evictions: Counter,
    history_bytes: Gauge,
    broker_ready: Gauge,
    tasks: Gauge,

    // Held for a push or a copy; never across an await.
    series: Mutex<VecDeque<Sample>>,
    refusals: Mutex<Refusals>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set, every counter at zero.
    pub fn new() -> Metrics {
        let recorder = Arc::new(
            PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder(),
        );
        let handle = recorder.handle();
        // The macros register with whatever recorder is current on this thread: ours, for the
        // duration of this closure.
        with_local_recorder(&*recorder, || {
            describe();
            gauge!("push_serve_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Metrics {
                handle,
                started: std::time::Instant::now(),
                connects: Transport::ALL.map(
                    |t| counter!("push_serve_socket_connects_total", "transport" => t.label()),
                ),
                closes: Transport::ALL.map(|t| {
                    CLOSE_CODES
                        .iter()
                        .map(|c| c.to_string())
                        .chain(["other".to_string(), "lost".to_string()])
                        .map(|code| {
                            counter!("push_serve_socket_closes_total",
                                "transport" => t.label(), "code" => code)
                        })
                        .collect()
                }),
                requests: Endpoint::ALL
                    .iter()
                    .map(|_| std::array::from_fn(|_| OnceLock::new()))
                    .collect(),
                password_failures: counter!("push_serve_auth_failures_total", "credential" => "password"),
                access_key_failures: counter!("push_serve_auth_failures_total", "credential" => "access_key"),
                lockouts: counter!("push_serve_auth_lockouts_total"),
                stages: PublishKind::ALL
                    .iter()
                    .map(|k| {
                        ["read", "queue", "total"].map(|stage| {
                            histogram!("push_serve_publish_seconds",
                                "endpoint" => k.label(), "stage" => stage)
                        })
                    })
                    .collect(),
                messages: Default::default(),
                published: PublishKind::ALL
                    .iter()
                    .map(|k| counter!("push_serve_messages_total", "endpoint" => k.label()))
                    .collect(),
                sockets: gauge!("push_serve_sockets"),
                deliveries: counter!("push_serve_deliveries_total"),
                evictions: counter!("push_serve_slow_reader_evictions_total"),
                history_bytes: gauge!("push_serve_history_bytes"),
                broker_ready: gauge!("push_serve_broker_ready"),
                tasks: gauge!("push_serve_runtime_tasks"),
                series: Mutex::new(VecDeque::with_capacity(SAMPLES)),
                refusals: Mutex::default(),
                recorder: recorder.clone(),
            }
        })
    }

    /// A socket was upgraded (an event stream started).
    pub fn socket_connected(&self, transport: Transport) {
        self.connects[transport as usize].increment(1);
    }

    /// A socket ended: with the close code the server sent or echoed, or `None` when the
    /// connection went away without a close.
    pub fn socket_closed(&self, transport: Transport, code: Option<u16>) {
        let i = match code {
            Some(c) => CLOSE_CODES
                .iter()
                .position(|&k| k == c)
                .unwrap_or(CLOSE_CODES.len()),
            None => CLOSE_CODES.len() + 1,
        };
        self.closes[transport as usize][i].increment(1);
    }

    /// One HTTP request answered.
    pub fn request(&self, endpoint: Endpoint, status: u16) {
        let e = Endpoint::ALL
            .iter()
            .position(|&x| x == endpoint)
            .unwrap_or(Endpoint::ALL.len() - 1);
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(STATUSES.len());
        self.requests[e][s]
            .get_or_init(|| {
                let status = STATUSES.get(s).map_or("other".into(), u16::to_string);
                with_local_recorder(&*self.recorder, || {
                    counter!("push_serve_http_requests_total",
                        "endpoint" => endpoint.label(), "status" => status)
                })
            })
            .increment(1);
    }

    /// A wrong or missing credential.
    pub fn auth_failed(&self, credential: Credential) {
        match credential {
            Credential::Password => self.password_failures.increment(1),
            Credential::AccessKey => self.access_key_failures.increment(1),
        }
    }

    /// A client address reached `auth_failures_per_minute` and is now refused for a while.
    pub fn locked_out(&self) {
        self.lockouts.increment(1);
    }

    /// A publish request was accepted at `accepted`, its body read and parsed at `parsed`, and
    /// `messages` messages (one per stream) were queued to every socket at `queued`.
    pub fn published(
        &self,
        kind: PublishKind,
        messages: usize,
        accepted: Instant,
        parsed: Instant,
        queued: Instant,
    ) {
        let k = kind as usize;
        self.messages[k].fetch_add(messages as u64, Ordering::Relaxed);
        let [read, queue, total] = &self.stages[k];
        read.record(parsed.duration_since(accepted));
        queue.record(queued.duration_since(parsed));
        total.record(queued.duration_since(accepted));
    }

    /// `n` callback events to the business server were `sent`, `failed` (every attempt),
    /// `dropped` (its queue was full) or `coalesced` (it cancelled out with one waiting):
    /// `push_serve_callbacks_total{outcome}`.
    pub fn callback(&self, outcome: &'static str, n: u64) {
        with_local_recorder(&*self.recorder, || {
            counter!("push_serve_callbacks_total", "outcome" => outcome).increment(n);
        });
    }

    /// `n` Pusher webhook events were `sent`, `failed` (every attempt), `dropped` (their
    /// target's queue was full) or `coalesced` (a pair that cancelled out while waiting):
    /// `push_serve_webhook_events_total{outcome}`.
    pub fn webhook_events(&self, outcome: &'static str, n: u64) {
        with_local_recorder(&*self.recorder, || {
            counter!("push_serve_webhook_events_total", "outcome" => outcome).increment(n);
        });
    }

    /// **The cluster broker's hook.** A broker that talks to a store (Redis) reports each call
    /// here: `op` names it (`"publish"`, `"attach"`, `"sockets_of"`, `"presence"`,
    /// `"subscribe"`…; a small fixed set, since each becomes a series), `elapsed` is the round
    /// trip, `ok` whether it succeeded. Exported as `push_serve_broker_call_seconds{op}` and
    /// `push_serve_broker_errors_total{op}`. The in-memory broker has no store and does not
    /// call it.
    ///
    /// A broker gets the server's `Arc<Metrics>` when `run` builds it. A call looks the series
    /// up in the exporter's registry (a hash and a read lock), which is nothing next to a
    /// network round trip.
    pub fn broker_call(&self, op: &'static str, elapsed: Duration, ok: bool) {
        with_local_recorder(&*self.recorder, || {
            histogram!("push_serve_broker_call_seconds", "op" => op).record(elapsed);
            let errors = counter!("push_serve_broker_errors_total", "op" => op);
            if ok {
                // Registered at zero, so that `rate()` sees the series before the first error.
                errors.increment(0);
            } else {
                errors.increment(1);
            }
        });
    }

    /// Remembers a refused request for the admin page (the last [`REFUSALS`]).
    pub fn refused(
        &self,
        status: u16,
        reason: &'static str,
        detail: &str,
        endpoint: Endpoint,
        client: Option<IpAddr>,
    ) {
        let mut end = detail.len().min(REASON_MAX);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        let refusal = Refusal {
            t: unix_ms(),
            status,
            reason,
            detail: detail[..end].to_string(),
            endpoint: endpoint.label(),
            client,
        };
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        *refusals.counts.entry(reason).or_default() += 1;
        if refusals.recent.len() == REFUSALS {
            refusals.recent.pop_front();
        }
        refusals.recent.push_back(refusal);
    }

    /// The refusals kept, oldest first, and counts by reason since start.
    pub fn refusals(&self) -> (Vec<Refusal>, HashMap<&'static str, u64>) {
        let refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        (
            refusals.recent.iter().cloned().collect(),
            refusals.counts.clone(),
        )
    }

    /// Messages published since start, over all endpoints.
    pub fn messages(&self) -> u64 {
        self.messages
            .iter()
            .map(|m| m.load(Ordering::Relaxed))
            .sum()
    }

    /// The current figures as a sample (not kept).
    pub fn now(&self, sockets: usize, deliveries: u64) -> Sample {
        Sample {
            t: unix_ms(),
            sockets: sockets as u64,
            messages: self.messages(),
            deliveries,
        }
    }

    /// Keeps one sample for the admin page's charts (called once a second).
    pub fn sample(&self, sockets: usize, deliveries: u64) {
        let sample = self.now(sockets, deliveries);
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if series.len() == SAMPLES {
            series.pop_front();
        }
        series.push_back(sample);
    }

    /// Drains the histogram values buffered since the last call into their buckets; called
    /// periodically so that they do not pile up between scrapes (or without any).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The samples kept, oldest first.
    pub fn series(&self) -> Vec<Sample> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series.iter().copied().collect()
    }

    /// Seconds since this server started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The Prometheus text exposition of everything, with the figures owned elsewhere as of
    /// now.
    pub fn render(&self, now: &Scraped) -> String {
        self.sockets.set(now.sockets as f64);
        self.deliveries.absolute(now.deliveries);
        self.evictions.absolute(now.evictions);
        self.history_bytes.set(now.history_bytes as f64);
        self.broker_ready
            .set(if now.broker_ready { 1.0 } else { 0.0 });
        self.tasks.set(now.tasks as f64);
        for (counter, n) in self.published.iter().zip(&self.messages) {
            counter.absolute(n.load(Ordering::Relaxed));
        }
        self.handle.render()
    }
}

/// Figures that live in the registry, the broker and the runtime, read when rendering.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scraped {
    /// Sockets open.
    pub sockets: usize,
    /// Frames queued to sockets since start.
    pub deliveries: u64,
    /// Sockets closed as slow readers since start.
    pub evictions: u64,
    /// Bytes of history held.
    pub history_bytes: usize,
    /// Whether the broker can publish now.
    pub broker_ready: bool,
    /// Tasks alive in the runtime.
    pub tasks: usize,
}

/// HELP lines (and units) for every metric.
fn describe() {
    describe_counter!(
        "push_serve_callbacks_total",
        "Callback events to the business server by outcome: sent, failed (every attempt), \
         dropped (queue full), coalesced (a pair that cancelled out while waiting)"
    );
    describe_counter!(
        "push_serve_webhook_events_total",
        "Pusher webhook events by outcome: sent, failed (every attempt), dropped (queue full), \
         coalesced (a pair that cancelled out while waiting)"
    );
    describe_gauge!(
        "push_serve_build_info",
        "Always 1; the version label says which push-serve this is"
    );
    describe_gauge!("push_serve_sockets", "WebSockets open on this node");
    describe_counter!(
        "push_serve_socket_connects_total",
        "WebSockets upgraded (101) since start"
    );
    describe_counter!(
        "push_serve_socket_closes_total",
        "WebSockets ended since start, by the close code sent or echoed (lost: no close frame)"
    );
    describe_counter!(
        "push_serve_http_requests_total",
        "HTTP requests answered, by endpoint and status"
    );
    describe_counter!(
        "push_serve_messages_total",
        "Messages published, one per stream (a push to 3 uids is 3), by endpoint"
    );
    describe_counter!(
        "push_serve_deliveries_total",
        "Frames queued to sockets on this node"
    );
    describe_counter!(
        "push_serve_slow_reader_evictions_total",
        "Sockets closed with 4008 because their send queue overflowed"
    );
    describe_counter!(
        "push_serve_auth_failures_total",
        "Wrong or missing credentials, by credential (password, access_key)"
    );
    describe_counter!(
        "push_serve_auth_lockouts_total",
        "Client addresses locked out after auth_failures_per_minute wrong passwords"
    );
    describe_gauge!(
        "push_serve_history_bytes",
        Unit::Bytes,
        "Bytes of history kept for resuming sockets on this node"
    );
    describe_histogram!(
        "push_serve_publish_seconds",
        Unit::Seconds,
        "Publish latency by endpoint and stage: read (accepted to body read and parsed), \
         queue (parsed to queued to every socket), total (accepted to queued)"
    );
    describe_gauge!(
        "push_serve_broker_ready",
        "1 when the broker can publish (always, without a cluster store)"
    );
    describe_histogram!(
        "push_serve_broker_call_seconds",
        Unit::Seconds,
        "Round trips of the cluster broker to its store, by operation"
    );
    describe_counter!(
        "push_serve_broker_errors_total",
        "Failed calls of the cluster broker to its store, by operation"
    );
    describe_gauge!(
        "push_serve_runtime_tasks",
        "Tasks alive in the runtime (about one per socket)"
    );
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn broker_hook_exports_latency_and_errors_by_operation() {
        let m = Metrics::new();
        m.broker_call("publish", Duration::from_micros(300), true);
        m.broker_call("publish", Duration::from_millis(30), false);
        m.broker_call("attach", Duration::from_micros(200), true);
        let text = m.render(&Scraped::default());
        assert_eq!(
            line(&text, r#"push_serve_broker_errors_total{op="publish"}"#),
            Some(r#"push_serve_broker_errors_total{op="publish"} 1"#)
        );
        assert_eq!(
            line(&text, r#"push_serve_broker_errors_total{op="attach"}"#),
            Some(r#"push_serve_broker_errors_total{op="attach"} 0"#)
        );
        assert_eq!(
            line(
                &text,
                r#"push_serve_broker_call_seconds_count{op="publish"}"#
            ),
            Some(r#"push_serve_broker_call_seconds_count{op="publish"} 2"#)
        );
        // 300 µs falls in the 0.0005 bucket, 30 ms does not.
        assert_eq!(
            line(
                &text,
                r#"push_serve_broker_call_seconds_bucket{op="publish",le="0.0005"}"#
            ),
            Some(r#"push_serve_broker_call_seconds_bucket{op="publish",le="0.0005"} 1"#)
        );
    }

    #[test]
    fn two_servers_count_apart() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.socket_connected(Transport::Pusher);
        a.request(Endpoint::Push, 200);
        let (ta, tb) = (a.render(&Scraped::default()), b.render(&Scraped::default()));
        let pusher = r#"push_serve_socket_connects_total{transport="pusher"}"#;
        assert!(ta.contains(&format!("{pusher} 1")), "{ta}");
        assert!(tb.contains(&format!("{pusher} 0")), "{tb}");
        assert!(ta.contains(r#"push_serve_http_requests_total{endpoint="push",status="200"} 1"#));
        assert!(!tb.contains("push_serve_http_requests_total{"));
    }

    #[test]
    fn refusals_are_bounded_and_counted_by_reason() {
        let m = Metrics::new();
        for i in 0..REFUSALS + 5 {
            m.refused(401, "bad_password", &"é".repeat(i), Endpoint::Push, None);
        }
        let (recent, counts) = m.refusals();
        assert_eq!(recent.len(), REFUSALS);
        assert_eq!(counts["bad_password"], (REFUSALS + 5) as u64);
        assert!(recent.iter().all(|r| r.detail.len() <= REASON_MAX));
    }

    #[test]
    fn series_keeps_the_last_five_minutes() {
        let m = Metrics::new();
        for i in 0..SAMPLES + 3 {
            m.sample(i, i as u64);
        }
        let series = m.series();
        assert_eq!(series.len(), SAMPLES);
        assert_eq!(series[0].sockets, 3);
    }
}
