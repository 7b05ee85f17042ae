//! `conf.yaml`: the seed's two keys (`addr`, `password`) plus optional tuning, each with a
//! documented default. [`Config::load`] parses and validates; every error names the field.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Longest accepted uid, in bytes. Uids are map keys and part of every access key's MAC input;
/// a bound keeps a hostile query from costing memory.
pub const MAX_UID_BYTES: usize = 256;

/// Why a configuration could not be used. Each message names the field, so an operator can fix
/// `conf.yaml` from the one line `push-serve` prints before exiting.
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
    /// The YAML did not parse or a field had the wrong type (serde names the field).
    #[error("config file {path}: {message}")]
    Parse {
        /// The path that was read.
        path: String,
        /// serde_yaml's description, which names the field and its line.
        message: String,
    },
    /// A field parsed but its value is not usable.
    #[error("config field `{field}`: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The daemon's settings. Only `addr` and `password` are required, as in the seed service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen address, e.g. `0.0.0.0:8080`.
    pub addr: String,
    /// Shared secret of the business backends: required on `/access` and `/push`.
    #[serde(deserialize_with = "scalar_string")]
    pub password: String,
    /// Key for signing access keys. Defaults to one derived from `password`, so keys survive a
    /// restart; set it to rotate keys without changing the password (or vice versa).
    #[serde(default, deserialize_with = "optional_scalar_string")]
    pub secret: Option<String>,
    /// Seconds an access key stays valid for opening sockets (a socket already open is not cut).
    #[serde(default = "defaults::access_key_ttl_secs")]
    pub access_key_ttl_secs: u64,
    /// Seconds between server pings; a socket that has sent nothing (no pong, no frame) for a
    /// whole interval after a ping is closed.
    #[serde(default = "defaults::heartbeat_interval_secs")]
    pub heartbeat_interval_secs: f64,
    /// Frames queued per socket before it counts as a slow reader and is closed (code 4008).
    #[serde(default = "defaults::send_queue_frames")]
    pub send_queue_frames: usize,
    /// Largest `/push` body in bytes (413 above it).
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest message a client may send on its socket (close code 1009 above it).
    #[serde(default = "defaults::max_client_frame_bytes")]
    pub max_client_frame_bytes: usize,
    /// Messages kept per stream (a uid's, a topic's, broadcast) for resuming sockets; 0 turns
    /// history and resume off.
    #[serde(default = "defaults::history_size")]
    pub history_size: usize,
    /// Seconds a message is kept for resuming sockets.
    #[serde(default = "defaults::history_ttl_secs")]
    pub history_ttl_secs: f64,
    /// Bytes of history kept over all streams, a hard bound: past it a stream drops its own
    /// oldest messages, then keeps no new ones until older history expires.
    #[serde(default = "defaults::history_max_bytes")]
    pub history_max_bytes: usize,
    /// Most topics one access key may grant.
    #[serde(default = "defaults::max_topics_per_key")]
    pub max_topics_per_key: usize,
    /// Most uids one `/push` may name.
    #[serde(default = "defaults::max_uids_per_push")]
    pub max_uids_per_push: usize,
    /// Most sockets open at once; further upgrades get 503.
    #[serde(default = "defaults::max_sockets")]
    pub max_sockets: usize,
    /// Most sockets one uid may have open; further upgrades for it get 429.
    #[serde(default = "defaults::max_sockets_per_uid")]
    pub max_sockets_per_uid: usize,
    /// Failed password attempts allowed per client address per minute before that address
    /// gets 429 on `/access`, `/push` and the other backend endpoints; 0 turns it off.
    #[serde(default = "defaults::auth_failures_per_minute")]
    pub auth_failures_per_minute: u32,
    /// Header carrying the client address when push-serve sits behind a reverse proxy
    /// (e.g. `X-Forwarded-For`, first entry used); unset: the TCP peer address.
    #[serde(default)]
    pub real_ip_header: Option<String>,
    /// Page origins allowed to open sockets (e.g. `https://shop.example.com`). Unset: any. A
    /// request without `Origin` (not a browser) is always allowed; others get 403.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// Seconds allowed for a client to send its request headers.
    #[serde(default = "defaults::header_read_timeout_secs")]
    pub header_read_timeout_secs: f64,
    /// Seconds to wait, on SIGTERM/SIGINT, for sockets to close and requests to finish.
    #[serde(default = "defaults::shutdown_timeout_secs")]
    pub shutdown_timeout_secs: f64,
    /// Listen backlog: how many not-yet-accepted connections the kernel queues (capped by
    /// `net.core.somaxconn`). Large, so a burst of reconnects after a restart is not refused.
    #[serde(default = "defaults::listen_backlog")]
    pub listen_backlog: u32,
    /// A second listen address serving `/metrics`, `/health` and `/ready` *without* the
    /// password (for a scraper on a private network); unset: `/metrics` only on `addr`, with it.
    #[serde(default)]
    pub metrics_addr: Option<String>,
}

/// Accepts `password: abc123` and also `password: 123123` (YAML reads the latter as a number;
/// the seed's Go service took it as the string, so we do too).
fn scalar_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    scalar(d, "password")
}

fn optional_scalar_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    scalar(d, "secret").map(Some)
}

fn scalar<'de, D: serde::Deserializer<'de>>(d: D, field: &str) -> Result<String, D::Error> {
    match serde_yaml::Value::deserialize(d)? {
        serde_yaml::Value::String(s) => Ok(s),
        serde_yaml::Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom(format!(
            "`{field}` must be a string (put quotes around it)"
        ))),
    }
}

mod defaults {
    pub fn access_key_ttl_secs() -> u64 {
        3600
    }
    pub fn heartbeat_interval_secs() -> f64 {
        25.0
    }
    pub fn send_queue_frames() -> usize {
        256
    }
    pub fn max_body_bytes() -> usize {
        1 << 20
    }
    pub fn max_client_frame_bytes() -> usize {
        64 << 10
    }
    pub fn history_size() -> usize {
        100
    }
    pub fn history_ttl_secs() -> f64 {
        300.0
    }
    pub fn history_max_bytes() -> usize {
        64 << 20
    }
    pub fn max_topics_per_key() -> usize {
        64
    }
    pub fn max_uids_per_push() -> usize {
        1000
    }
    pub fn max_sockets() -> usize {
        1_000_000
    }
    pub fn max_sockets_per_uid() -> usize {
        64
    }
    pub fn auth_failures_per_minute() -> u32 {
        30
    }
    pub fn header_read_timeout_secs() -> f64 {
        10.0
    }
    pub fn shutdown_timeout_secs() -> f64 {
        10.0
    }
    pub fn listen_backlog() -> u32 {
        4096
    }
}

impl Config {
    /// A config with every optional field at its default; tests and embedders start here.
    pub fn new(addr: impl Into<String>, password: impl Into<String>) -> Config {
        Config {
            addr: addr.into(),
            password: password.into(),
            secret: None,
            access_key_ttl_secs: defaults::access_key_ttl_secs(),
            heartbeat_interval_secs: defaults::heartbeat_interval_secs(),
            send_queue_frames: defaults::send_queue_frames(),
            max_body_bytes: defaults::max_body_bytes(),
            max_client_frame_bytes: defaults::max_client_frame_bytes(),
            history_size: defaults::history_size(),
            history_ttl_secs: defaults::history_ttl_secs(),
            history_max_bytes: defaults::history_max_bytes(),
            max_topics_per_key: defaults::max_topics_per_key(),
            max_uids_per_push: defaults::max_uids_per_push(),
            max_sockets: defaults::max_sockets(),
            max_sockets_per_uid: defaults::max_sockets_per_uid(),
            auth_failures_per_minute: defaults::auth_failures_per_minute(),
            real_ip_header: None,
            allowed_origins: None,
            header_read_timeout_secs: defaults::header_read_timeout_secs(),
            shutdown_timeout_secs: defaults::shutdown_timeout_secs(),
            listen_backlog: defaults::listen_backlog(),
            metrics_addr: None,
        }
    }

    /// Reads and validates a YAML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates YAML text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the first problem found is returned, naming its field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                field,
                reason: reason.into(),
            }
        }
        fn secs(field: &'static str, v: f64, min: f64, max: f64) -> Result<(), ConfigError> {
            if v.is_finite() && v >= min && v <= max {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    format!("must be between {min} and {max} seconds, got {v}"),
                ))
            }
        }
        self.socket_addr()?;
        if self.password.is_empty() {
            return Err(invalid("password", "must not be empty"));
        }
        if matches!(&self.secret, Some(s) if s.is_empty()) {
            return Err(invalid(
                "secret",
                "must not be empty when set (omit it to derive one from password)",
            ));
        }
        if self.access_key_ttl_secs == 0 || self.access_key_ttl_secs > 366 * 24 * 3600 {
            return Err(invalid(
                "access_key_ttl_secs",
                "must be between 1 and 31622400 (a year)",
            ));
        }
        secs(
            "heartbeat_interval_secs",
            self.heartbeat_interval_secs,
            0.01,
            3600.0,
        )?;
        secs(
            "header_read_timeout_secs",
            self.header_read_timeout_secs,
            0.01,
            3600.0,
        )?;
        secs(
            "shutdown_timeout_secs",
            self.shutdown_timeout_secs,
            0.0,
            3600.0,
        )?;
        if self.send_queue_frames == 0 || self.send_queue_frames > 1 << 20 {
            return Err(invalid(
                "send_queue_frames",
                "must be between 1 and 1048576",
            ));
        }
        if self.max_body_bytes < 64 || self.max_body_bytes > 1 << 30 {
            return Err(invalid(
                "max_body_bytes",
                "must be between 64 and 1073741824",
            ));
        }
        if self.max_client_frame_bytes < 125 || self.max_client_frame_bytes > 1 << 30 {
            return Err(invalid(
                "max_client_frame_bytes",
                "must be between 125 and 1073741824",
            ));
        }
        if self.history_size > 1 << 20 {
            return Err(invalid(
                "history_size",
                "must be at most 1048576 (0 turns history off)",
            ));
        }
        secs(
            "history_ttl_secs",
            self.history_ttl_secs,
            0.001,
            7.0 * 24.0 * 3600.0,
        )?;
        if self.history_max_bytes > 1 << 40 {
            return Err(invalid("history_max_bytes", "must be at most 1 TiB"));
        }
        if self.max_topics_per_key == 0 || self.max_topics_per_key > 10_000 {
            return Err(invalid("max_topics_per_key", "must be between 1 and 10000"));
        }
        if self.max_uids_per_push == 0 || self.max_uids_per_push > 1_000_000 {
            return Err(invalid(
                "max_uids_per_push",
                "must be between 1 and 1000000",
            ));
        }
        if self.max_sockets == 0 {
            return Err(invalid("max_sockets", "must be at least 1"));
        }
        if self.max_sockets_per_uid == 0 {
            return Err(invalid("max_sockets_per_uid", "must be at least 1"));
        }
        if let Some(h) = &self.real_ip_header {
            if warp::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(invalid(
                    "real_ip_header",
                    format!("`{h}` is not a header name"),
                ));
            }
        }
        if let Some(origins) = &self.allowed_origins {
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
        if self.listen_backlog == 0 || self.listen_backlog > 65535 {
            return Err(invalid("listen_backlog", "must be between 1 and 65535"));
        }
        self.metrics_socket_addr()?;
        Ok(())
    }

    /// `addr` as a socket address.
    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.addr.parse().map_err(|_| ConfigError::Invalid {
            field: "addr",
            reason: format!(
                "`{}` is not an IP:port address such as 0.0.0.0:8080",
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

    /// Material the access-key signing key is derived from.
    pub fn key_material(&self) -> &str {
        self.secret.as_deref().unwrap_or(&self.password)
    }

    /// `heartbeat_interval_secs` as a Duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_interval_secs)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_config_parses_with_defaults() {
        let c = Config::parse("addr: 0.0.0.0:8080\npassword: abc123\n", "t").unwrap();
        assert_eq!(c.addr, "0.0.0.0:8080");
        assert_eq!(c.access_key_ttl_secs, 3600);
        assert_eq!(c.listen_backlog, 4096);
        let numeric = Config::parse("addr: 0.0.0.0:8080\npassword: 123123\n", "t").unwrap();
        assert_eq!(numeric.password, "123123");
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
