//! Validation: every field checked, the first problem named with its field, and the numeric
//! ranges ([`Range`]) that validation and the YAML error text share.

use super::*;

impl Config {
    /// Checks every field; the first problem found is returned, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                field,
                reason: reason.into(),
            }
        }
        if self.addr.is_empty() {
            return Err(invalid(
                "addr",
                "is required: the address to listen on, e.g. 127.0.0.1:8080",
            ));
        }
        let addr = self.socket_addr()?;
        if self.password.expose().is_empty() {
            return Err(invalid(
                "password",
                "is required and must not be empty: the backends' password",
            ));
        }
        if self.password == SAMPLE_PASSWORD && !addr.ip().is_loopback() {
            return Err(invalid(
                "password",
                format!(
                    "is still the published sample `{SAMPLE_PASSWORD}` and addr {addr} is \
                     reachable from other machines: set a password of your own in the config \
                     file (e.g. the output of `openssl rand -hex 24`), or listen on 127.0.0.1"
                ),
            ));
        }
        if matches!(&self.secret, Some(s) if s.expose().is_empty()) {
            return Err(invalid(
                "secret",
                "must not be empty when set (leave it out to derive one from password)",
            ));
        }
        if matches!(&self.jwt_secret, Some(s) if s.expose().is_empty()) {
            return Err(invalid(
                "jwt_secret",
                "must not be empty when set (leave it out to refuse JWT access keys)",
            ));
        }
        for (key, value) in [
            ("access_key_ttl_secs", self.access_key_ttl_secs as f64),
            ("secret_overlap_secs", self.secret_overlap_secs as f64),
            ("heartbeat_interval_secs", self.heartbeat_interval_secs),
            ("send_queue_frames", self.send_queue_frames as f64),
            ("send_queue_bytes", self.send_queue_bytes as f64),
            ("max_body_bytes", self.max_body_bytes as f64),
            ("body_timeout_secs", self.body_timeout_secs),
            ("body_min_bytes_per_sec", self.body_min_bytes_per_sec as f64),
            ("max_client_frame_bytes", self.max_client_frame_bytes as f64),
            ("history_size", self.history_size as f64),
            ("history_ttl_secs", self.history_ttl_secs),
            ("history_max_bytes", self.history_max_bytes as f64),
            ("max_topics_per_key", self.max_topics_per_key as f64),
            ("max_uids_per_push", self.max_uids_per_push as f64),
            ("receipt_ttl_secs", self.receipt_ttl_secs as f64),
            ("receipt_max", self.receipt_max as f64),
            ("inbox_max_ttl_secs", self.inbox_max_ttl_secs as f64),
            ("inbox_max_per_uid", self.inbox_max_per_uid as f64),
            ("inbox_max", self.inbox_max as f64),
            ("callback_grace_secs", self.callback_grace_secs),
            ("callback_queue", self.callback_queue as f64),
            ("pool_max_bytes", self.pool_max_bytes as f64),
            ("pool_max", self.pool_max as f64),
            ("max_sockets", self.max_sockets as f64),
            (
                "max_sockets_per_address",
                self.max_sockets_per_address as f64,
            ),
            ("max_sockets_per_uid", self.max_sockets_per_uid as f64),
            (
                "new_sockets_per_address_per_minute",
                f64::from(self.new_sockets_per_address_per_minute),
            ),
            (
                "auth_failures_per_minute",
                f64::from(self.auth_failures_per_minute),
            ),
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("shutdown_timeout_secs", self.shutdown_timeout_secs),
            ("listen_backlog", f64::from(self.listen_backlog)),
            ("trusted_proxies", self.trusted_proxies as f64),
        ] {
            let range = Range::of(key).expect("every numeric setting has a range");
            if !range.contains(value) {
                return Err(invalid(range.key, format!("{}, got {value}", range.rule())));
            }
        }
        if let Some(h) = &self.real_ip_header {
            if warp::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(invalid(
                    "real_ip_header",
                    format!("must be a header name such as X-Forwarded-For, got `{h}`"),
                ));
            }
        }
        if let Some(origins) = &self.allowed_origins {
            if origins.is_empty() {
                return Err(invalid(
                    "allowed_origins",
                    "is an empty list, which would refuse every browser's socket: list your \
                     pages' origins, e.g. [\"https://shop.example.com\"], or leave the key out \
                     to allow any origin",
                ));
            }
            if let Some(bad) = origins
                .iter()
                .find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
            {
                return Err(invalid(
                    "allowed_origins",
                    format!("`{bad}` is not an origin such as https://shop.example.com"),
                ));
            }
        }
        if let Some(url) = &self.callback_url {
            let usable = url.starts_with("http://")
                && url
                    .parse::<warp::http::Uri>()
                    .is_ok_and(|u| u.host().is_some());
            if !usable {
                return Err(invalid(
                    "callback_url",
                    "must be an http:// URL such as http://127.0.0.1:8000/push-events (for \
                     https, point it at a local proxy)",
                ));
            }
            if self
                .callback_secret
                .as_ref()
                .is_none_or(|s| s.expose().is_empty())
            {
                return Err(invalid(
                    "callback_secret",
                    "is required with callback_url: the key the callbacks are signed with \
                     (e.g. the output of `openssl rand -hex 24`)",
                ));
            }
        }
        if let Some(url) = &self.redis_url {
            if !url.expose().starts_with("redis://") {
                return Err(invalid(
                    "redis_url",
                    "must be a redis:// URL such as redis://127.0.0.1:6379/0 (for TLS, connect \
                     through a local stunnel or spiped)",
                ));
            }
            if let Err(e) = redis::Client::open(url.expose()) {
                return Err(invalid("redis_url", format!("is not usable: {e}")));
            }
        }
        if !self.redis_cluster.is_empty() {
            if self.redis_url.is_some() {
                return Err(invalid(
                    "redis_cluster",
                    "cannot be set with redis_url: use one Redis (redis_url) or a Redis \
                     Cluster (redis_cluster), not both",
                ));
            }
            for url in &self.redis_cluster {
                if !url.expose().starts_with("redis://") {
                    return Err(invalid(
                        "redis_cluster",
                        "must be a list of redis:// URLs of cluster nodes such as \
                         [redis://10.0.0.1:7000, redis://10.0.0.2:7000]",
                    ));
                }
                if let Err(e) = redis::Client::open(url.expose()) {
                    return Err(invalid("redis_cluster", format!("is not usable: {e}")));
                }
            }
        }
        if self.redis_prefix.is_empty()
            || self.redis_prefix.len() > 64
            || !self
                .redis_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
        {
            return Err(invalid(
                "redis_prefix",
                "must be 1 to 64 of A-Z a-z 0-9 _ - . :",
            ));
        }
        self.metrics_socket_addr()?;
        if let Some(level) = &self.log_level {
            if let Err(problem) = crate::logging::check_spec(level) {
                return Err(invalid("log_level", problem));
            }
        }
        if let Some(pusher) = &self.pusher {
            pusher.validate()?;
        }
        Ok(())
    }
}

impl PusherConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: String| ConfigError::Invalid { field, reason };
        if self.apps.is_empty() {
            return Err(invalid(
                "pusher.apps",
                "must list at least one app (id, key, secret); leave `pusher` out to turn \
                 Pusher mode off"
                    .into(),
            ));
        }
        for (field, value, min, max) in [
            (
                "pusher.activity_timeout_secs",
                self.activity_timeout_secs as f64,
                1.0,
                3600.0,
            ),
            (
                "pusher.max_event_bytes",
                self.max_event_bytes as f64,
                64.0,
                (1u64 << 30) as f64,
            ),
            (
                "pusher.client_events_per_second",
                f64::from(self.client_events_per_second),
                1.0,
                1e6,
            ),
            (
                "pusher.max_channels_per_socket",
                self.max_channels_per_socket as f64,
                1.0,
                1e5,
            ),
            (
                "pusher.subscriptions_per_second",
                f64::from(self.subscriptions_per_second),
                1.0,
                1e6,
            ),
        ] {
            if !(min..=max).contains(&value) {
                return Err(invalid(
                    field,
                    format!("must be a whole number from {min} to {max}, got {value}"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.max_sockets_share) {
            return Err(invalid(
                "pusher.max_sockets_share",
                format!(
                    "must be a number from 0 to 1 (the share of max_sockets Pusher sockets may \
                     take), got {}",
                    self.max_sockets_share
                ),
            ));
        }
        // App ids and keys appear in paths and in the stream ids nodes share: a plain charset.
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        };
        for (i, app) in self.apps.iter().enumerate() {
            let n = i + 1;
            if !plain(&app.id) {
                return Err(invalid(
                    "pusher.apps.id",
                    format!("of app {n} must be 1 to 64 of A-Z a-z 0-9 _ - ."),
                ));
            }
            if !plain(&app.key) {
                return Err(invalid(
                    "pusher.apps.key",
                    format!(
                        "of app {n} (id {}) must be 1 to 64 of A-Z a-z 0-9 _ - .",
                        app.id
                    ),
                ));
            }
            if app.secret.expose().is_empty() {
                return Err(invalid(
                    "pusher.apps.secret",
                    format!(
                        "of app {n} (id {}) is required and must not be empty",
                        app.id
                    ),
                ));
            }
            if app.max_connections == Some(0) {
                return Err(invalid(
                    "pusher.apps.max_connections",
                    format!(
                        "of app {n} (id {}) must be at least 1 (null for no limit)",
                        app.id
                    ),
                ));
            }
            if self.apps[..i].iter().any(|a| a.id == app.id) {
                return Err(invalid(
                    "pusher.apps.id",
                    format!("`{}` is used by two apps", app.id),
                ));
            }
            if self.apps[..i].iter().any(|a| a.key == app.key) {
                return Err(invalid(
                    "pusher.apps.key",
                    format!("of app {n} (id {}) is used by another app", app.id),
                ));
            }
            for hook in &app.webhooks {
                if !hook.url.starts_with("http://") || hook.url.len() <= "http://".len() {
                    return Err(invalid(
                        "pusher.apps.webhooks.url",
                        format!(
                            "of app {n} (id {}) must be an http:// URL (for HTTPS, send it \
                             through a local TLS proxy)",
                            app.id
                        ),
                    ));
                }
                if let Some(bad) = hook
                    .event_types
                    .iter()
                    .find(|t| !WEBHOOK_EVENTS.contains(&t.as_str()))
                {
                    return Err(invalid(
                        "pusher.apps.webhooks.event_types",
                        format!(
                            "of app {n} (id {}): `{bad}` is not one of {}",
                            app.id,
                            WEBHOOK_EVENTS.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The range a numeric setting accepts. [`Config::validate`] checks values against it and a
/// value of the wrong type (`send_queue_frames: many`) is described with it, so both errors
/// tell the operator the same thing.
pub(super) struct Range {
    pub(super) key: &'static str,
    /// Whole numbers only (the field is an integer).
    whole: bool,
    /// What the number counts, for the message ("seconds", "bytes"); may be empty.
    unit: &'static str,
    min: f64,
    max: f64,
    /// Said after the range, e.g. what 0 means.
    note: &'static str,
}

pub(super) const fn whole(key: &'static str, unit: &'static str, min: u64, max: u64) -> Range {
    Range {
        key,
        whole: true,
        unit,
        min: min as f64,
        max: max as f64,
        note: "",
    }
}

pub(super) const fn seconds(key: &'static str, min: f64, max: f64) -> Range {
    Range {
        key,
        whole: false,
        unit: "seconds",
        min,
        max,
        note: "",
    }
}

pub(super) const fn noted(range: Range, note: &'static str) -> Range {
    Range { note, ..range }
}

pub(super) const RANGES: &[Range] = &[
    noted(
        whole("access_key_ttl_secs", "seconds", 1, 366 * 24 * 3600),
        "a year",
    ),
    noted(
        whole("secret_overlap_secs", "seconds", 0, 366 * 24 * 3600),
        "0 refuses keys of a replaced secret at once",
    ),
    seconds("heartbeat_interval_secs", 0.01, 3600.0),
    whole("send_queue_frames", "frames", 1, 1 << 20),
    whole("send_queue_bytes", "bytes", 1024, 1 << 30),
    whole("max_body_bytes", "bytes", 64, 1 << 30),
    seconds("body_timeout_secs", 0.1, 3600.0),
    noted(
        whole("body_min_bytes_per_sec", "bytes per second", 0, 1 << 30),
        "0 checks only body_timeout_secs",
    ),
    whole("max_client_frame_bytes", "bytes", 125, 1 << 30),
    noted(
        whole("history_size", "messages", 0, 1 << 20),
        "0 turns history off",
    ),
    seconds("history_ttl_secs", 0.001, 7.0 * 24.0 * 3600.0),
    noted(whole("history_max_bytes", "bytes", 0, 1 << 40), "1 TiB"),
    whole("max_topics_per_key", "", 1, 10_000),
    whole("max_uids_per_push", "", 1, 1_000_000),
    noted(
        whole("receipt_ttl_secs", "seconds", 1, 30 * 24 * 3600),
        "30 days",
    ),
    whole("receipt_max", "reports", 1, 100_000_000),
    noted(
        whole("inbox_max_ttl_secs", "seconds", 1, 30 * 24 * 3600),
        "30 days",
    ),
    whole("inbox_max_per_uid", "messages", 1, 1_000_000),
    whole("inbox_max", "messages", 1, 100_000_000),
    seconds("callback_grace_secs", 0.0, 3600.0),
    whole("callback_queue", "events", 1, 10_000_000),
    whole("pool_max_bytes", "bytes", 2, 64 << 20),
    whole("pool_max", "pools", 1, 10_000_000),
    whole("max_sockets", "", 1, 1 << 30),
    whole("max_sockets_per_uid", "", 1, 1 << 30),
    whole("max_sockets_per_address", "", 1, 1 << 30),
    noted(
        whole("new_sockets_per_address_per_minute", "", 0, 100_000_000),
        "0 turns it off",
    ),
    noted(
        whole("auth_failures_per_minute", "", 0, 1_000_000),
        "0 turns the lockout off",
    ),
    seconds("header_read_timeout_secs", 0.01, 3600.0),
    seconds("shutdown_timeout_secs", 0.0, 3600.0),
    whole("listen_backlog", "", 1, 65535),
    whole("trusted_proxies", "", 1, 16),
];

impl Range {
    pub(super) fn of(key: &str) -> Option<&'static Range> {
        RANGES.iter().find(|r| r.key == key)
    }

    pub(super) fn contains(&self, v: f64) -> bool {
        v.is_finite() && v >= self.min && v <= self.max && (!self.whole || v.fract() == 0.0)
    }

    /// "must be a whole number of seconds from 1 to 31622400 (a year)"
    pub(super) fn rule(&self) -> String {
        let kind = if self.whole {
            "a whole number"
        } else {
            "a number"
        };
        let unit = if self.unit.is_empty() {
            String::new()
        } else {
            format!(" of {}", self.unit)
        };
        let note = if self.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.note)
        };
        format!(
            "must be {kind}{unit} from {} to {}{note}",
            self.min, self.max
        )
    }
}
