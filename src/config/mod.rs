//! `conf.yaml`: the seed's two keys (`addr`, `password`) plus optional settings. Their defaults
//! are written once, in [`Config::new`] (serde fills absent keys from it; a unit test holds the
//! shipped `conf.yaml` and the README's table to the same values). [`Config::load`] parses and
//! validates; every error is one line in plain words naming the key and its line.
//!
//! `schema.rs`: every key once, in its reload group ([`Startup`] or [`Live`]), which makes
//! [`Config`]; here: the `pusher:` section, the defaults, and what the settings mean in units
//! the code uses; `validate.rs`: the checks and numeric ranges; `yaml.rs`: reading a file and
//! the error text; `secret.rs`: values that never print.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

mod schema;
mod secret;
mod validate;
mod yaml;

pub use crate::logging::LogFormat;
pub use schema::{Config, Live, Reload, Startup};
pub use secret::{redacted, Secret, HIDDEN};
pub use yaml::known_keys;

/// Longest accepted uid, in bytes. Uids are map keys and part of every access key's MAC input;
/// a bound keeps a hostile query from costing memory.
pub const MAX_UID_BYTES: usize = 256;

/// The password of the shipped `conf.yaml` and the README's examples. It is public, so
/// [`Config::validate`] refuses it on any address but loopback.
pub const SAMPLE_PASSWORD: &str = "abc123";

/// Why a configuration could not be used. Each message is one line in plain words that names
/// the key (and, from a file, its line), so an operator can fix `conf.yaml` from the line
/// `push-serve` prints before exiting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path that was tried.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Something in a config file: not YAML, an unknown key, a value of the wrong kind or out
    /// of range.
    #[error("config file {path}{}: {message}", at_line(.line))]
    Parse {
        /// The path that was read.
        path: String,
        /// The line the problem is on, when it is known.
        line: Option<usize>,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A field's value is not usable ([`Config::validate`]); from a file, it comes wrapped in
    /// `Parse` with the path and line.
    #[error("`{field}` {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

fn at_line(line: &Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

/// The `pusher:` section: the apps pusher-js and the Pusher server SDKs connect to, and the
/// protocol's limits. Defaults are written once, in [`PusherConfig::new`] and
/// [`PusherApp::new`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default = "PusherConfig::new")]
pub struct PusherConfig {
    /// The apps served; at least one.
    pub apps: Vec<PusherApp>,
    /// Seconds of silence after which a socket is pinged (`activity_timeout` in
    /// `pusher:connection_established`); a socket silent for as long again is closed (4201).
    pub activity_timeout_secs: u64,
    /// Largest event `data` in bytes, for client events and the HTTP API (Pusher's is 10 KB).
    pub max_event_bytes: usize,
    /// Client events (`client-*`) one socket may send per second; over it they are refused
    /// with `pusher:error` 4301 (Pusher's documented limit is 10).
    pub client_events_per_second: u32,
    /// Most channels one socket may be subscribed to at once (each costs the server an entry
    /// in every channel's list); a subscription past it gets `pusher:subscription_error` 400.
    pub max_channels_per_socket: usize,
    /// Subscribe and unsubscribe frames one socket may send per second, after a first burst
    /// of `max_channels_per_socket` (a page resubscribing everything after a reconnect); a
    /// subscription over it gets `pusher:error` 4301 and `pusher:subscription_error` 429.
    pub subscriptions_per_second: u32,
    /// The share of `max_sockets` Pusher sockets may take together; the rest stays for native
    /// and SSE pages, whose keys were checked (a Pusher socket is anonymous when it connects).
    pub max_sockets_share: f64,
}

/// One app: its credentials and per-app switches.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default = "PusherApp::unset")]
pub struct PusherApp {
    /// The app id of the HTTP API's paths (`/apps/{id}/events`).
    pub id: String,
    /// The public key pages connect with (`/app/{key}`).
    pub key: String,
    /// Signs channel auth, user sign-in and HTTP API requests; never leaves the server.
    pub secret: Secret,
    /// Whether sockets may send `client-*` events on private and presence channels.
    pub enable_client_messages: bool,
    /// Most sockets this app may have open on this node (4004 above); `null`: only
    /// `max_sockets` bounds it.
    pub max_connections: Option<usize>,
    /// Where to send this app's webhooks.
    pub webhooks: Vec<PusherWebhook>,
}

/// `max_connections` of an app that does not set it: on a node, one app's sockets cannot take
/// every Pusher slot from the others.
pub const DEFAULT_APP_CONNECTIONS: usize = 100_000;

/// A webhook target.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PusherWebhook {
    /// `http://` URL that receives the batched events.
    pub url: String,
    /// Which events it gets (see [`WEBHOOK_EVENTS`]).
    pub event_types: Vec<String>,
}

/// The webhook event types Pusher defines.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
];

impl PusherConfig {
    /// The section with its defaults and no app (validation asks for one).
    pub fn new() -> PusherConfig {
        PusherConfig {
            apps: Vec::new(),
            activity_timeout_secs: 120,
            max_event_bytes: 10 * 1024,
            client_events_per_second: 10,
            max_channels_per_socket: 100,
            subscriptions_per_second: 10,
            max_sockets_share: 0.9,
        }
    }

    /// The app pages connect to with `key`.
    pub fn app_by_key(&self, key: &str) -> Option<&PusherApp> {
        self.apps.iter().find(|a| a.key == key)
    }

    /// The app of the HTTP API's path.
    pub fn app_by_id(&self, id: &str) -> Option<&PusherApp> {
        self.apps.iter().find(|a| a.id == id)
    }
}

impl Default for PusherConfig {
    fn default() -> PusherConfig {
        PusherConfig::new()
    }
}

impl PusherApp {
    /// An app with these credentials and every switch at its default.
    pub fn new(
        id: impl Into<String>,
        key: impl Into<String>,
        secret: impl Into<String>,
    ) -> PusherApp {
        PusherApp {
            id: id.into(),
            key: key.into(),
            secret: Secret::from(secret.into()),
            enable_client_messages: false,
            max_connections: Some(DEFAULT_APP_CONNECTIONS),
            webhooks: Vec::new(),
        }
    }

    fn unset() -> PusherApp {
        PusherApp::new("", "", "")
    }
}

impl Config {
    /// A config with every optional field at its default; tests and embedders start here.
    /// These are the defaults the README's table and the shipped `conf.yaml` document (a unit
    /// test compares them).
    pub fn new(addr: impl Into<String>, password: impl Into<String>) -> Config {
        Config {
            addr: addr.into(),
            password: Secret::from(password.into()),
            secret: None,
            access_key_ttl_secs: 3600,
            jwt_secret: None,
            secret_overlap_secs: 3600,
            heartbeat_interval_secs: 25.0,
            send_queue_frames: 256,
            send_queue_bytes: 4 << 20,
            max_body_bytes: 1 << 20,
            body_timeout_secs: 30.0,
            body_min_bytes_per_sec: 4096,
            max_client_frame_bytes: 64 << 10,
            history_size: 100,
            history_ttl_secs: 300.0,
            history_max_bytes: 64 << 20,
            max_topics_per_key: 64,
            max_uids_per_push: 1000,
            receipt_ttl_secs: 3600,
            receipt_max: 100_000,
            inbox_max_ttl_secs: 7 * 24 * 3600,
            inbox_max_per_uid: 100,
            inbox_max: 10_000,
            callback_url: None,
            callback_secret: None,
            callback_sockets: false,
            callback_grace_secs: 5.0,
            callback_queue: 10_000,
            pool_max_bytes: 64 * 1024,
            pool_max: 10_000,
            max_sockets: 1_000_000,
            max_sockets_per_address: 10_000,
            new_sockets_per_address_per_minute: 3_000,
            max_sockets_per_uid: 64,
            auth_failures_per_minute: 30,
            real_ip_header: None,
            trusted_proxies: 1,
            allowed_origins: None,
            header_read_timeout_secs: 10.0,
            shutdown_timeout_secs: 10.0,
            listen_backlog: 4096,
            log_format: LogFormat::Text,
            log_level: None,
            redis_url: None,
            redis_cluster: Vec::new(),
            redis_prefix: "push-serve".into(),
            metrics_addr: None,
            pusher: None,
        }
    }

    /// What serde starts from: the defaults, with the two required keys empty so that
    /// [`Config::validate`] reports them missing.
    fn unset() -> Config {
        Config::new("", "")
    }

    /// The keys whose values differ in `next`, each with how a reload takes it.
    pub fn changes(&self, next: &Config) -> Vec<(&'static str, Reload)> {
        let restart = self.startup().differing(&next.startup());
        let live = self.live().differing(&next.live());
        let restart = restart.into_iter().map(|key| (key, Reload::Restart));
        restart
            .chain(live.into_iter().map(|key| (key, Reload::Live)))
            .collect()
    }

    /// How much one socket may have queued before it counts as a slow reader.
    pub fn queue_limit(&self) -> crate::outbox::QueueLimit {
        crate::outbox::QueueLimit {
            frames: self.send_queue_frames,
            bytes: self.send_queue_bytes,
        }
    }

    /// `addr` as a socket address.
    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.addr.parse().map_err(|_| ConfigError::Invalid {
            field: "addr",
            reason: format!(
                "must be an IP:port address such as 127.0.0.1:8080, got `{}`",
                self.addr
            ),
        })
    }

    /// `metrics_addr` as a socket address, if set.
    pub fn metrics_socket_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(addr) = &self.metrics_addr else {
            return Ok(None);
        };
        addr.parse().map(Some).map_err(|_| ConfigError::Invalid {
            field: "metrics_addr",
            reason: format!("`{addr}` is not an IP:port address such as 127.0.0.1:9090"),
        })
    }

    /// History settings for the hub.
    pub fn retention(&self) -> crate::broker::Retention {
        crate::broker::Retention {
            history_size: self.history_size,
            history_ttl: Duration::from_secs_f64(self.history_ttl_secs),
            max_bytes: self.history_max_bytes,
        }
    }

    /// `header_read_timeout_secs` as a Duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_read_timeout_secs)
    }

    /// `shutdown_timeout_secs` as a Duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_timeout_secs)
    }
}

impl Live {
    /// `secret_overlap_secs` as a Duration.
    pub fn secret_overlap(&self) -> Duration {
        Duration::from_secs(self.secret_overlap_secs)
    }

    /// Material the access-key signing key is derived from.
    pub fn key_material(&self) -> &str {
        self.secret
            .as_ref()
            .map_or(self.password.expose(), Secret::expose)
    }

    /// The offline inbox's bounds.
    pub fn inbox_bounds(&self) -> crate::inbox::Bounds {
        crate::inbox::Bounds {
            per_uid: self.inbox_max_per_uid,
            total: self.inbox_max,
        }
    }

    /// The data pools' bounds.
    pub fn pool_bounds(&self) -> crate::pools::Bounds {
        crate::pools::Bounds {
            max_bytes: self.pool_max_bytes,
            max_pools: self.pool_max,
        }
    }

    /// `heartbeat_interval_secs` as a Duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_interval_secs)
    }

    /// `receipt_ttl_secs` as a Duration.
    pub fn receipt_ttl(&self) -> Duration {
        Duration::from_secs(self.receipt_ttl_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::validate::RANGES;
    use super::yaml::line_of;
    use super::*;

    #[test]
    fn seed_config_parses_with_defaults() {
        let c = Config::parse("addr: 0.0.0.0:8080\npassword: s3cret\n", "t").unwrap();
        assert_eq!(c, Config::new("0.0.0.0:8080", "s3cret"));
        let numeric = Config::parse("addr: 0.0.0.0:8080\npassword: 123123\n", "t").unwrap();
        assert_eq!(numeric.password, "123123");
    }

    #[test]
    fn the_sample_password_is_refused_off_loopback() {
        for addr in ["0.0.0.0:8080", "[::]:8080", "192.0.2.7:80"] {
            let err = Config::new(addr, SAMPLE_PASSWORD)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("`password` is still the published sample"),
                "{err}"
            );
            assert!(err.contains("openssl rand"), "{err}");
        }
        for addr in ["127.0.0.1:8080", "[::1]:8080"] {
            Config::new(addr, SAMPLE_PASSWORD).validate().unwrap();
        }
    }

    /// Keys that replace another (and cannot be set with it): conf.yaml shows them commented.
    const ALTERNATIVES: [&str; 1] = ["redis_cluster"];

    /// The shipped conf.yaml is the documented example: every key is in it, and uncommented it
    /// gives the defaults (keys unset by default show an example instead). The README's table
    /// has a row for every key.
    #[test]
    fn shipped_conf_yaml_and_readme_list_every_key_at_its_default() {
        let root = env!("CARGO_MANIFEST_DIR");
        let shipped = std::fs::read_to_string(format!("{root}/conf.yaml")).unwrap();
        let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
        let uncommented: String = shipped
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if known_keys()
                        .iter()
                        .any(|k| !ALTERNATIVES.contains(k) && line_of(rest, k).is_some()) =>
                {
                    rest
                }
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let config = Config::parse(&uncommented, "conf.yaml").unwrap();
        let defaults =
            serde_yaml::to_value(Config::new(&config.addr, config.password.expose())).unwrap();
        let shown = serde_yaml::to_value(&config).unwrap();
        for key in known_keys() {
            let shown_in = if ALTERNATIVES.contains(key) {
                // Stays commented out: it cannot be set with the key it replaces.
                uncommented.replace("\n# ", "\n")
            } else {
                uncommented.clone()
            };
            assert!(line_of(&shown_in, key).is_some(), "conf.yaml lacks `{key}`");
            if !defaults[key].is_null() {
                assert_eq!(
                    shown[key], defaults[key],
                    "conf.yaml shows `{key}` off its default"
                );
            }
            assert!(
                readme.contains(&format!("| `{key}` |")),
                "README lacks `{key}`"
            );
        }
        assert!(config.socket_addr().unwrap().ip().is_loopback());
    }

    fn error(yaml: &str) -> String {
        let yaml = format!("addr: 127.0.0.1:8080\npassword: x\n{yaml}");
        Config::parse(&yaml, "conf.yaml").unwrap_err().to_string()
    }

    #[test]
    fn an_unknown_key_gets_the_closest_known_one_not_the_whole_list() {
        let err = error("heartbeat_secs: 3\n");
        assert_eq!(
            err,
            "config file conf.yaml, line 3: unknown key `heartbeat_secs`: \
             did you mean `heartbeat_interval_secs`?"
        );
        assert!(error("max_socket: 3\n").ends_with("did you mean `max_sockets`?"));
        let unrelated = error("colour: blue\n");
        assert!(unrelated.contains("unknown key `colour`"), "{unrelated}");
        assert!(!unrelated.contains("listen_backlog"), "{unrelated}");
    }

    #[test]
    fn type_errors_are_in_plain_words_with_the_range() {
        let err = error("send_queue_frames: many\n");
        assert_eq!(
            err,
            "config file conf.yaml, line 3: `send_queue_frames` must be a whole number of \
             frames from 1 to 1048576, got \"many\""
        );
        let err = error("access_key_ttl_secs: 0\n");
        assert!(
            err.contains("must be a whole number of seconds from 1 to"),
            "{err}"
        );
        assert!(error("history_ttl_secs: soon\n").contains("must be a number of seconds"));
        assert!(error("max_sockets: -1\n").contains("got -1"));
        assert!(error("secret: [a]\n").ends_with("`secret` must be a string"));
        for yaml in [
            "max_body_bytes: x\n",
            "heartbeat_interval_secs: x\n",
            "secret: [a]\n",
        ] {
            let err = error(yaml);
            for rust in ["u64", "usize", "f64", "invalid type", "expected"] {
                assert!(!err.contains(rust), "{err}");
            }
        }
    }

    #[test]
    fn a_password_yaml_reads_as_a_number_must_be_quoted() {
        for value in ["0x1F", "1e3", "1.5", "true", "null", "~", "0o17"] {
            let yaml = format!("addr: 127.0.0.1:8080\npassword: {value}\n");
            let err = Config::parse(&yaml, "t").unwrap_err().to_string();
            assert!(err.contains("put it in quotes"), "{value}: {err}");
            if value.bytes().any(|b| b.is_ascii_digit()) {
                assert!(
                    !err.contains(value),
                    "the error repeats the password: {err}"
                );
            }
            let quoted = format!("addr: 127.0.0.1:8080\npassword: \"{value}\"\n");
            assert_eq!(Config::parse(&quoted, "t").unwrap().password, value);
        }
        let secret = "addr: 127.0.0.1:8080\npassword: x\nsecret: 0x1F\n";
        assert!(Config::parse(secret, "t").is_err());
    }

    #[test]
    fn an_empty_allowed_origins_list_is_refused() {
        let err = error("allowed_origins: []\n");
        assert!(err.contains("would refuse every browser"), "{err}");
        let one = "addr: 127.0.0.1:8080\npassword: x\nallowed_origins: [\"https://a.example\"]\n";
        assert!(Config::parse(one, "t").is_ok());
    }

    #[test]
    fn every_numeric_range_is_a_key_and_the_defaults_are_in_range() {
        for range in RANGES {
            assert!(known_keys().contains(&range.key), "{}", range.key);
        }
        Config::new("127.0.0.1:1", "x").validate().unwrap();
    }

    #[test]
    fn a_reload_applies_live_settings_and_keeps_the_rest_until_a_restart() {
        let running = Config::new("127.0.0.1:8080", "old");
        let mut next = Config::new("127.0.0.1:9090", "new");
        next.max_sockets = 5;
        next.history_size = 7;
        next.log_level = Some("debug".into());
        let mut changes = running.changes(&next);
        changes.sort();
        assert_eq!(
            changes,
            [
                ("addr", Reload::Restart),
                ("history_size", Reload::Restart),
                ("log_level", Reload::Live),
                ("max_sockets", Reload::Live),
                ("password", Reload::Live),
            ]
        );
        let merged = running.with_live(next.live());
        assert_eq!(merged.addr, "127.0.0.1:8080");
        assert_eq!(merged.history_size, 100);
        assert_eq!(merged.password, "new");
        assert_eq!(merged.max_sockets, 5);
        assert_eq!(merged.log_level.as_deref(), Some("debug"));
        assert!(merged.changes(&merged).is_empty());
        // Every key is one or the other, and the listeners are never live.
        for key in known_keys() {
            let _ = Reload::of(key);
        }
        assert_eq!(Reload::of("metrics_addr"), Reload::Restart);
    }

    /// Every key has one reload decision, and the README's reload table puts each key in the
    /// column of that decision.
    #[test]
    fn every_key_has_one_reload_decision_and_the_readme_says_it() {
        let decisions: Vec<(&str, Reload)> = Startup::KEYS
            .iter()
            .map(|&k| (k, Reload::Restart))
            .chain(Live::KEYS.iter().map(|&k| (k, Reload::Live)))
            .collect();
        let mut listed: Vec<&str> = decisions.iter().map(|(k, _)| *k).collect();
        let mut keys = known_keys().to_vec();
        listed.sort_unstable();
        keys.sort_unstable();
        assert_eq!(
            listed, keys,
            "Startup and Live hold exactly the keys of Config"
        );
        let root = env!("CARGO_MANIFEST_DIR");
        let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
        let section = readme
            .split("### Reloading the config")
            .nth(1)
            .and_then(|s| s.split("\n- ").next())
            .expect("the README has a reload section");
        let (mut live, mut restart) = (Vec::new(), Vec::new());
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').collect();
            for (cell, column) in [(cells[1], &mut live), (cells[2], &mut restart)] {
                column.extend(cell.split('`').skip(1).step_by(2).map(str::to_owned));
            }
        }
        for (key, how) in &decisions {
            let column = match how {
                Reload::Live => &live,
                Reload::Restart => &restart,
            };
            assert!(
                column.iter().any(|k| k == key),
                "README's reload table: `{key}` ({how:?})"
            );
        }
        assert_eq!(
            live.len() + restart.len(),
            decisions.len(),
            "each key once: {live:?} {restart:?}"
        );
    }

    #[test]
    fn a_log_level_that_is_not_one_is_refused() {
        assert!(error("log_level: inf0\n").contains("`log_level`"));
        let ok = "addr: 127.0.0.1:8080\npassword: x\nlog_level: info,push_serve::http=debug\n";
        assert!(Config::parse(ok, "t").is_ok());
    }

    #[test]
    fn the_pusher_section_is_off_unless_set_and_names_its_fields() {
        assert_eq!(Config::new("127.0.0.1:1", "x").pusher, None);
        let ok =
            error_or_config("pusher:\n  apps:\n    - id: \"1\"\n      key: k\n      secret: s\n")
                .unwrap();
        let pusher = ok.pusher.unwrap();
        assert_eq!(pusher.activity_timeout_secs, 120);
        assert_eq!(pusher.apps[0], PusherApp::new("1", "k", "s"));
        assert_eq!(
            pusher.apps[0].max_connections,
            Some(DEFAULT_APP_CONNECTIONS)
        );
        let unlimited = error_or_config(
            "pusher:\n  apps:\n    - {id: \"1\", key: k, secret: s, max_connections: null}\n",
        )
        .unwrap();
        assert_eq!(unlimited.pusher.unwrap().apps[0].max_connections, None);
        for (yaml, named) in [
            ("pusher:\n  apps: []\n", "`pusher.apps`"),
            (
                "pusher:\n  apps:\n    - id: a\n      key: k\n",
                "`pusher.apps.secret`",
            ),
            (
                "pusher:\n  apps:\n    - id: a b\n      key: k\n      secret: s\n",
                "`pusher.apps.id`",
            ),
            (
                "pusher:\n  apps:\n    - {id: a, key: k, secret: s}\n    - {id: b, key: k, secret: t}\n",
                "`pusher.apps.key`",
            ),
            (
                "pusher:\n  apps:\n    - {id: a, key: k, secret: s, colour: red}\n",
                "`pusher.apps[0]`: unknown key `colour`",
            ),
            (
                "pusher:\n  apps:\n    - id: a\n      key: k\n      secret: s\n      webhooks:\n        - {url: 'ftp://x', event_types: []}\n",
                "`pusher.apps.webhooks.url`",
            ),
            (
                "pusher:\n  apps:\n    - id: a\n      key: k\n      secret: s\n      webhooks:\n        - {url: 'http://x', event_types: [nope]}\n",
                "`nope` is not one of",
            ),
            (
                "pusher:\n  max_event_bytes: 1\n  apps: [{id: a, key: k, secret: s}]\n",
                "`pusher.max_event_bytes`",
            ),
        ] {
            let err = error_or_config(yaml).unwrap_err();
            assert!(err.contains(named), "{yaml:?} gave {err:?}");
            assert!(err.contains("line 3"), "{err}");
        }
    }

    fn error_or_config(yaml: &str) -> Result<Config, String> {
        let yaml = format!("addr: 127.0.0.1:8080\npassword: x\n{yaml}");
        Config::parse(&yaml, "conf.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("addr: nope\npassword: x\n", "`addr`"),
            ("addr: 127.0.0.1:1\npassword: ''\n", "`password`"),
            (
                "addr: 127.0.0.1:1\npassword: x\nheartbeat_interval_secs: 0\n",
                "`heartbeat_interval_secs`",
            ),
            (
                "addr: 127.0.0.1:1\npassword: x\nsend_queue_frames: 0\n",
                "`send_queue_frames`",
            ),
            ("addr: 127.0.0.1:1\n", "password"),
            ("addr: 127.0.0.1:1\npassword: x\npasword: y\n", "pasword"),
            ("addr: 127.0.0.1:1\npassword: [1]\n", "password"),
            (
                "addr: 127.0.0.1:1\npassword: x\nmetrics_addr: localhost\n",
                "`metrics_addr`",
            ),
        ];
        for (yaml, field) in cases {
            let err = Config::parse(yaml, "t").unwrap_err().to_string();
            assert!(
                err.contains(field),
                "{yaml:?} gave {err:?}, expected it to name {field}"
            );
        }
    }
}
