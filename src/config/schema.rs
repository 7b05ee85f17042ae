//! The schema: every key of `conf.yaml` once, in one of two groups. [`settings!`] makes from
//! them the flat [`Config`] that serde reads (and whose keys the file may use in any order),
//! and the two views a reload works with: [`Startup`] (compared; a change is logged as needing
//! a restart) and [`Live`] (swapped whole, applied at once). Which group a key is in is its
//! reload decision: there is no other list.

use serde::{Deserialize, Serialize};

use super::{LogFormat, PusherConfig, Secret};

/// How a running daemon takes a changed setting when it reloads its config file (SIGHUP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reload {
    /// Applied at once, without dropping a socket: a [`Live`] setting.
    Live,
    /// Only a restart applies it: a [`Startup`] setting (the listeners, the cluster's Redis,
    /// and what every socket or stream was built with: queues, history).
    Restart,
}

impl Reload {
    /// How `key` is taken on a reload; a key that is not a [`Live`] one needs a restart.
    pub fn of(key: &str) -> Reload {
        if Live::KEYS.contains(&key) {
            Reload::Live
        } else {
            Reload::Restart
        }
    }
}

/// Declares the config's keys once, each in its group, and makes [`Config`], [`Startup`],
/// [`Live`] and the conversions between them.
macro_rules! settings {
    (
        startup { $( $(#[$sm:meta])* $sf:ident : $st:ty, )* }
        live { $( $(#[$lm:meta])* $lf:ident : $lt:ty, )* }
    ) => {
        /// The daemon's settings. Only `addr` and `password` are required, as in the seed
        /// service.
        ///
        /// A key absent from the file takes its value from [`Config::new`], the one place
        /// defaults are written (a new field needs a line there, nothing more).
        #[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields, default = "Config::unset")]
        pub struct Config {
            $( $(#[$sm])* pub $sf: $st, )*
            $( $(#[$lm])* pub $lf: $lt, )*
        }

        /// The settings only a restart changes: a reload compares them with the running ones
        /// and logs each one that differs as needing a restart.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Startup {
            $( $(#[$sm])* pub $sf: $st, )*
        }

        /// The settings a reload applies at once: swapped whole
        /// ([`Config::with_live`]), and handed to everything that reconfigures itself.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Live {
            $( $(#[$lm])* pub $lf: $lt, )*
        }

        impl Startup {
            /// Every startup key.
            pub const KEYS: &[&str] = &[$( stringify!($sf) ),*];

            /// The keys whose values differ in `other`.
            pub fn differing(&self, other: &Startup) -> Vec<&'static str> {
                let mut keys = Vec::new();
                $( if self.$sf != other.$sf { keys.push(stringify!($sf)); } )*
                keys
            }
        }

        impl Live {
            /// Every live key.
            pub const KEYS: &[&str] = &[$( stringify!($lf) ),*];

            /// The keys whose values differ in `other`.
            pub fn differing(&self, other: &Live) -> Vec<&'static str> {
                let mut keys = Vec::new();
                $( if self.$lf != other.$lf { keys.push(stringify!($lf)); } )*
                keys
            }
        }

        impl Config {
            /// The settings only a restart changes.
            pub fn startup(&self) -> Startup {
                Startup { $( $sf: self.$sf.clone(), )* }
            }

            /// The settings a reload applies.
            pub fn live(&self) -> Live {
                Live { $( $lf: self.$lf.clone(), )* }
            }

            /// `self` with `live` swapped in: what a running daemon runs with after a reload.
            /// The startup settings keep their running values.
            pub fn with_live(&self, live: Live) -> Config {
                Config {
                    $( $sf: self.$sf.clone(), )*
                    $( $lf: live.$lf, )*
                }
            }
        }
    };
}

settings! {
    startup {
        /// Listen address, e.g. `127.0.0.1:8080`.
        addr: String,
        // Each socket's queue is sized when it opens.
        /// Frames queued per socket before it counts as a slow reader and is closed (code 4008).
        send_queue_frames: usize,
        /// Bytes queued per socket before it counts as a slow reader (4008); a single frame larger
        /// than this is still sent to a socket whose queue is empty.
        send_queue_bytes: usize,
        // History is sized when the broker starts.
        /// Messages kept per stream (a uid's, a topic's, broadcast) for resuming sockets; 0 turns
        /// history and resume off.
        history_size: usize,
        /// Seconds a message is kept for resuming sockets.
        history_ttl_secs: f64,
        /// Bytes of history kept over all streams, a hard bound: past it a stream drops its own
        /// oldest messages, then keeps no new ones until older history expires.
        history_max_bytes: usize,
        // The listeners and how they were built.
        /// Seconds allowed for a client to send its request headers.
        header_read_timeout_secs: f64,
        /// Seconds to wait, on SIGTERM/SIGINT: half for requests in flight to finish, half for
        /// sockets to flush their queues and close.
        shutdown_timeout_secs: f64,
        /// Listen backlog: how many not-yet-accepted connections the kernel queues (capped by
        /// `net.core.somaxconn`). Large, so a burst of reconnects after a restart is not refused.
        listen_backlog: u32,
        // The cluster's Redis is connected to once, at start.
        /// Redis shared by the nodes of a cluster, e.g. `redis://127.0.0.1:6379/0`. Unset: this
        /// process is the whole service (streams, history and presence in memory).
        redis_url: Option<Secret>,
        /// A Redis Cluster (Redis 7 or later) the nodes share instead of one Redis: seed URLs of
        /// some of its masters, e.g. `[redis://10.0.0.1:7000, redis://10.0.0.2:7000]`; the rest of
        /// the cluster is discovered from them. Exclusive with `redis_url`; empty: not used.
        redis_cluster: Vec<Secret>,
        /// Prefix of every Redis key and channel, so several deployments can share one Redis.
        redis_prefix: String,
        /// A second listen address serving `/metrics`, `/health` and `/ready` *without* the
        /// password (for a scraper on a private network); unset: `/metrics` only on `addr`, with it.
        metrics_addr: Option<String>,
        // The apps, their webhooks and the protocol's limits are built into the Pusher module
        // once, at start.
        /// Pusher-compatible mode (`/app/{key}` sockets, `/apps/{id}/…` HTTP API) for the apps
        /// listed; unset: off, and those paths are 404.
        pusher: Option<PusherConfig>,
    }
    live {
        /// Shared secret of the business backends: required on every backend endpoint (`/access`,
        /// `/push`, `/publish`, `/broadcast`, `/online`, `/stats`). YAML text taken as written;
        /// see [`Config::parse`] for numbers.
        password: Secret,
        /// Key for signing access keys. Defaults to one derived from `password`, so keys survive a
        /// restart; set it to rotate keys without changing the password (or vice versa).
        secret: Option<Secret>,
        /// Seconds an access key stays valid for opening sockets (a socket already open is not cut).
        access_key_ttl_secs: u64,
        /// Key of the HS256 JWTs a backend may mint itself and hand to its pages as `access_key`
        /// (claims `uid`, `exp`, optional `nbf` and `topics`). Unset: JWTs are refused.
        jwt_secret: Option<Secret>,
        /// After a reload changes the signing material (`secret`, or `password` without one): for
        /// how many seconds keys signed with the previous material still open sockets. 0: refused
        /// at once.
        secret_overlap_secs: u64,
        /// Seconds between server pings; a socket that has sent nothing (no pong, no frame) for a
        /// whole interval after a ping is closed.
        heartbeat_interval_secs: f64,
        /// Largest `/push`, `/publish` or `/broadcast` body in bytes (413 above it).
        max_body_bytes: usize,
        /// Longest a request body may take to arrive, seconds, however fast it comes (408 after).
        body_timeout_secs: f64,
        /// Slowest a request body may arrive, bytes per second, after its first second (408 below).
        body_min_bytes_per_sec: usize,
        /// Largest message a client may send on its socket (close code 1009 above it).
        max_client_frame_bytes: usize,
        /// Most topics one access key may grant.
        max_topics_per_key: usize,
        /// Most uids one `/push` may name.
        max_uids_per_push: usize,
        /// Seconds a delivery report (`"receipt": true`) is kept, and its acks counted.
        receipt_ttl_secs: u64,
        /// Most delivery reports kept at once on a single node (the oldest go first); with
        /// `redis_url` they live in Redis, bounded by `receipt_ttl_secs`.
        receipt_max: usize,
        /// Longest a `/push` may ask to be kept in an offline uid's inbox (`"inbox": N`), seconds.
        inbox_max_ttl_secs: u64,
        /// Most messages kept in one uid's inbox; further ones are not kept (the reply says so).
        inbox_max_per_uid: usize,
        /// Most messages kept in every inbox together (on a single node, or in Redis).
        inbox_max: usize,
        /// Where events (a uid online/offline, a socket's connect/disconnect) are POSTed; unset:
        /// no callbacks.
        callback_url: Option<String>,
        /// HMAC-SHA256 key of the callbacks' `X-Push-Signature` (required with `callback_url`).
        callback_secret: Option<Secret>,
        /// Also POST every socket's connect and disconnect, not only a uid's online and offline.
        callback_sockets: bool,
        /// How long a uid's last socket may be closed before it counts as offline (a reload within
        /// it is neither offline nor online).
        callback_grace_secs: f64,
        /// Callback events waiting to be sent at most; further ones are dropped (counted).
        callback_queue: usize,
        /// Largest data pool document, bytes (`PUT`/`POST /pool/<name>` past it get 413).
        pool_max_bytes: usize,
        /// Most data pools at once (a new one past it gets 507).
        pool_max: usize,
        /// Most sockets open at once; further upgrades get 503.
        max_sockets: usize,
        /// Most sockets one uid may have open; further upgrades for it get 429.
        max_sockets_per_uid: usize,
        /// Most sockets one client address (an IPv6 client's /64) may have open, native, SSE and
        /// Pusher together; further ones get 429 (Pusher: 4100). Loopback peers are not counted.
        max_sockets_per_address: usize,
        /// New sockets one client address (an IPv6 client's /64) may open per minute, native, SSE
        /// and Pusher together: that many at once, then that many a minute (a token bucket);
        /// further ones get 429 (Pusher: 4100). Loopback peers are not counted; 0 turns it off.
        new_sockets_per_address_per_minute: u32,
        /// Failed password attempts allowed per client address per minute before that address
        /// gets 429 on `/access`, `/push` and the other backend endpoints; 0 turns it off.
        auth_failures_per_minute: u32,
        /// Header carrying the client address when push-serve sits behind a reverse proxy
        /// (e.g. `X-Forwarded-For`); unset: the TCP peer address. See `trusted_proxies`.
        real_ip_header: Option<String>,
        /// How many reverse proxies in front of push-serve append to `real_ip_header`. The client
        /// address is that many entries from the right: entries further left were written by the
        /// client and prove nothing.
        trusted_proxies: usize,
        /// Page origins allowed to open sockets (e.g. `https://shop.example.com`). Unset: any. A
        /// request without `Origin` (not a browser) is always allowed; others get 403.
        allowed_origins: Option<Vec<String>>,
        /// How log lines are written on stderr: `text` for people, `json` for log collectors.
        log_format: LogFormat,
        /// What is logged, as `RUST_LOG` spells it (`info`, `debug`, `info,push_serve::http=debug`).
        /// Unset: `RUST_LOG`, or `info`. When set it wins over `RUST_LOG`, so that a reload can
        /// change it.
        log_level: Option<String>,
    }
}
