//! push-serve: a real-time push daemon. Business backends `POST /push` JSON for a uid; every
//! WebSocket that uid has open receives it as `{"topic","number","contents"}`.
//!
//! How a push flows through the modules (`ARCHITECTURE.md` draws it):
//! - [`config`]: `conf.yaml`, its defaults, and validation in plain words naming the key.
//! - [`server`]: binds the listener (large backlog) and runs the accept loop, tagging each
//!   request with its peer address.
//! - [`http`]: warp routes. Backend endpoints check the password ([`auth`]) behind the
//!   per-address lockout ([`limits`]). `GET /access` signs a key; `GET /ws` checks the key and
//!   the limits (a `max_sockets` permit held for the socket's life), connects the socket to the
//!   [`hub`] and upgrades, handing it to a [`protocol`]; `POST /push`, `/publish` and
//!   `/broadcast` parse the body and ask the hub to publish it; `/online` and `/stats` read it.
//! - [`hub`]: the two verbs every protocol uses, `connect` and `publish`, over this node's
//!   [`registry`] (streams → local sockets, each with a bounded [`outbox`]) and the [`broker`]
//!   (numbering, history, presence and delivery across nodes: in memory, or Redis).
//! - [`protocol::native`]: one task per socket writes its queue, answers/sends pings, and
//!   closes with a documented code ([`wire::CloseReason`]). [`protocol::sse`] does the same
//!   as a `text/event-stream` response (`GET /sse`), for networks that block WebSockets.
//! - [`wire`]: every encoding, serialized once per message.
//! - [`metrics`]: counters and latency histograms for `/metrics` (Prometheus), and the recent
//!   history behind the admin page.
//!
//! - [`event_queue`]: the bounded queue in front of callbacks and webhooks, where churn cancels
//!   out and is dropped first.
//! - [`reload`]: a new config applied to the running server (SIGHUP in `main`): what can
//!   change live does, the rest is logged as needing a restart; [`logging`] is the logger
//!   whose level and format a reload changes.
//!
//! [`run`] validates the config, ties the modules together, and is what both `main` and the
//! integration tests call.

#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod auth;
pub mod broker;
pub mod callbacks;
pub mod commands;
pub mod config;
pub mod connection;
pub mod event_queue;
pub mod http;
pub mod http_client;
pub mod hub;
pub mod inbox;
pub mod limits;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod pools;
pub mod protocol;
pub mod receipts;
pub mod registry;
pub mod reload;
pub mod server;
pub mod services;
pub mod store;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use config::{Config, ConfigError, PusherApp, PusherConfig};

/// How long a cluster node waits to join Redis before it serves anyway.
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// Serves on `listener` until `shutdown` resolves, then shuts down gracefully: stop accepting,
/// let requests in flight finish, flush what each socket has queued, close every socket with
/// 1001, and return within `config.shutdown_timeout_secs`.
///
/// `config` is validated first (a caller may have built it in code rather than with
/// [`Config::load`]); an unusable one is returned as the error before anything is served.
/// Like `addr`, `metrics_addr` is the caller's to bind: see [`run_with_metrics`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConfigError> {
    run_with_metrics(listener, None, config, shutdown).await
}

/// [`run`], also serving `/metrics`, `/health` and `/ready` without a password on
/// `metrics_listener` (bound to `metrics_addr`) until `run` returns, so a scraper sees the
/// shutdown through.
pub async fn run_with_metrics(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConfigError> {
    let (_reloader, reloads) = reload::channel();
    run_reloadable(listener, metrics_listener, config, reloads, shutdown).await
}

/// [`run_with_metrics`], also applying every config sent through the [`reload::Reloader`]
/// paired with `reloads` (what `main` does on SIGHUP) while it serves.
pub async fn run_reloadable(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: Config,
    reloads: reload::Reloads,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConfigError> {
    config.validate()?;
    // Made first: a cluster broker reports its calls to it (`Metrics::broker_call`).
    let metrics = Arc::new(metrics::Metrics::new());
    let services = Arc::new(services::Services::start(&config, metrics.clone()));
    let hub = services.hub.clone();
    // A cluster node joins Redis before it takes connections, so pages reconnecting to a node
    // that just restarted are not refused meanwhile (their connects wait in the backlog).
    // If Redis is down, serve anyway after a while: keys need no Redis, /ready says 503.
    let joining = Instant::now();
    while !hub.broker().is_ready() && joining.elapsed() < JOIN_WAIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !hub.broker().is_ready() {
        log::warn!("serving before joining the cluster: sockets and publishes get 503 until redis is reachable");
    }
    let tracker = TaskTracker::new();
    let sockets = Arc::new(
        protocol::SocketContext::with_services(
            services.clone(),
            config.live().heartbeat_interval(),
            protocol::native::ws_config(config.max_client_frame_bytes),
        )
        .with_max_rooms(config.max_topics_per_key),
    );
    let state = Arc::new(http::AppState::new(
        &config,
        sockets.clone(),
        tracker.clone(),
    ));
    // Expired history, forgotten streams, finished rate-limit windows and buffered histogram
    // values go periodically.
    let sweeper = tokio::spawn({
        let (hub, state, metrics) = (hub.clone(), state.clone(), metrics.clone());
        let services = services.clone();
        let period = Duration::from_secs_f64((config.history_ttl_secs / 4.0).clamp(0.05, 5.0));
        async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                hub.sweep();
                state.sweep();
                services.sweep();
                metrics.upkeep();
            }
        }
    });
    // The admin page's charts: one sample a second.
    let sampler = tokio::spawn({
        let (hub, metrics) = (hub.clone(), metrics.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let registry = hub.registry();
                metrics.sample(registry.socket_count(), registry.deliveries());
            }
        }
    });
    let reloader = tokio::spawn(reload::serve(
        reloads,
        config.clone(),
        reload::Targets {
            state: state.clone(),
            sockets: sockets.clone(),
        },
    ));
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_server = metrics_listener.map(|listener| {
        tokio::spawn(server::serve(
            listener,
            http::metrics_routes(state.clone()),
            config.header_read_timeout(),
            async {
                let _ = metrics_stopped.await;
            },
            // Nothing to wait for but a scrape in flight.
            Duration::from_secs(1),
        ))
    });

    // Half the budget for HTTP requests in flight, half for sockets to flush and close.
    let phase = config.shutdown_timeout() / 2;
    server::serve(
        listener,
        http::routes(state.clone()),
        config.header_read_timeout(),
        async {
            shutdown.await;
            sockets.begin_draining();
            state.stop_accepting();
            log::info!("shutting down: {} sockets open", hub.socket_count());
        },
        phase,
    )
    .await;

    sockets.shut_down();
    tracker.close();
    if tokio::time::timeout(phase, tracker.wait()).await.is_err() {
        log::warn!(
            "{} sockets still closing after the shutdown timeout",
            hub.socket_count()
        );
    }
    hub.shutdown().await;
    sweeper.abort();
    sampler.abort();
    reloader.abort();
    let _ = stop_metrics.send(());
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    log::info!("shutdown complete");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd stop).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config built in code skips `Config::load`; `run` must refuse it rather than panic
    /// later (a zero heartbeat used to panic in `tokio::time::interval`).
    #[tokio::test]
    async fn run_refuses_an_invalid_config_instead_of_panicking() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = Config::new("127.0.0.1:0", "pw");
        config.heartbeat_interval_secs = 0.0;
        let err = run(listener, config, std::future::pending())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("heartbeat_interval_secs"), "{err}");
    }
}
