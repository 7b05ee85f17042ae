//! Changing the config of a running server: `main` reads the file again on SIGHUP and hands
//! the result to a [`Reloader`]; the server swaps in the new [`crate::config::Live`] settings
//! whole and compares the [`crate::config::Startup`] ones, saying in the log and in the
//! [`Outcome`] what was applied and what needs a restart.
//!
//! Which key is which is the group it is declared in (`config/schema.rs`, the one list; the
//! README's reload table is held to it by a test). Applied live, without dropping a
//! socket: the credentials (keys signed with a replaced secret keep opening sockets for
//! `secret_overlap_secs`), the limits and bounds (for what comes next: what is open or kept
//! stays), the callbacks' endpoint and settings, the heartbeat (open sockets too: each restarts
//! its heartbeat with the new period), and the log. Every [`crate::config::Secret`] shows as
//! `(hidden)` in what a reload logs.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, ConfigError};
use crate::http::AppState;
use crate::protocol::SocketContext;

/// Asks a running server to apply a new config. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    tx: mpsc::Sender<Request>,
}

/// The server's end of a [`Reloader`]: what [`crate::run_reloadable`] takes.
pub struct Reloads {
    rx: mpsc::Receiver<Request>,
}

type Request = (Config, oneshot::Sender<Result<Outcome, ConfigError>>);

/// A reloader and the receiving end to give the server.
pub fn channel() -> (Reloader, Reloads) {
    let (tx, rx) = mpsc::channel(1);
    (Reloader { tx }, Reloads { rx })
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Settings that changed and are in force now.
    pub applied: Vec<&'static str>,
    /// Settings that changed in the file but keep their running value until a restart.
    pub need_restart: Vec<&'static str>,
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config is not usable; the running one stays in force.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// The server is not running (any more).
    #[error("the server is not running")]
    NotRunning,
}

impl Reloader {
    /// Applies `config` to the running server: all of it, or (if it is invalid) nothing.
    pub async fn reload(&self, config: Config) -> Result<Outcome, ReloadError> {
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send((config, reply))
            .await
            .map_err(|_| ReloadError::NotRunning)?;
        match outcome.await {
            Ok(result) => result.map_err(ReloadError::Invalid),
            Err(_) => Err(ReloadError::NotRunning),
        }
    }
}

/// What a reload reconfigures.
pub(crate) struct Targets {
    pub state: Arc<AppState>,
    pub sockets: Arc<SocketContext>,
}

/// Serves reload requests until every [`Reloader`] is gone (or the task is aborted).
pub(crate) async fn serve(mut reloads: Reloads, mut running: Config, targets: Targets) {
    while let Some((next, reply)) = reloads.rx.recv().await {
        let result = apply(&mut running, next, &targets);
        let _ = reply.send(result);
    }
}

fn apply(running: &mut Config, next: Config, targets: &Targets) -> Result<Outcome, ConfigError> {
    if let Err(e) = next.validate() {
        log::warn!("config reload refused, the running config stays in force: {e}");
        return Err(e);
    }
    // The startup settings are compared, the live ones swapped whole.
    let (old, live) = (running.live(), next.live());
    let merged = running.with_live(live.clone());
    let mut outcome = Outcome::default();
    for key in running.startup().differing(&next.startup()) {
        log::warn!(
            "config reload: {key} changed in the file but needs a restart to take effect \
             (still {})",
            shown(key, running)
        );
        outcome.need_restart.push(key);
    }
    for key in old.differing(&live) {
        log::info!("config reload: {key} {}", described(key, running, &merged));
        outcome.applied.push(key);
    }
    if old.key_material() != live.key_material() {
        let overlap = live.secret_overlap_secs;
        if overlap > 0 {
            log::info!(
                "config reload: access keys are signed with the new secret from now; keys of \
                 the previous one open sockets for {overlap} s more (secret_overlap_secs)"
            );
        } else {
            log::info!(
                "config reload: access keys are signed with the new secret from now; keys of \
                 the previous one are refused (secret_overlap_secs: 0)"
            );
        }
    }
    targets.state.reconfigure(&live);
    targets.sockets.reconfigure(&live);
    crate::logging::reconfigure(live.log_level.as_deref(), live.log_format);
    log::info!(
        "config reloaded: {} setting(s) applied{}, {} need a restart",
        outcome.applied.len(),
        if outcome.applied.is_empty() {
            String::new()
        } else {
            format!(" ({})", outcome.applied.join(", "))
        },
        outcome.need_restart.len()
    );
    *running = merged;
    Ok(outcome)
}

/// "1000 -> 5"; a secret shows as "changed", or "unset -> (hidden)".
fn described(key: &str, old: &Config, new: &Config) -> String {
    let (old, new) = (shown(key, old), shown(key, new));
    if old == new {
        // Only a secret inside it changed.
        return "changed".to_owned();
    }
    format!("{old} -> {new}")
}

/// A setting's value as a log line shows it: every [`crate::config::Secret`] in it (passwords,
/// signing keys, Pusher app secrets, the Redis URL) as `(hidden)`.
fn shown(key: &str, config: &Config) -> String {
    let value = crate::config::redacted(|| serde_yaml::to_value(config))
        .ok()
        .and_then(|v| v.get(key).cloned())
        .unwrap_or(serde_yaml::Value::Null);
    match value {
        serde_yaml::Value::Null => "unset".to_owned(),
        serde_yaml::Value::String(s) => s,
        other => serde_json::to_string(&other).unwrap_or_else(|_| "?".to_owned()),
    }
}
