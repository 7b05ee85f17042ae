//! push-serve: a real-time push daemon. Business backends `POST /push` JSON for a uid; every
//! WebSocket that uid has open receives it as `{"topic","number","contents"}`.
//!
//! How a push flows through the modules (`ARCHITECTURE.md` draws it):
//! - [`config`]: `conf.yaml`, validated, every error naming its field.
//! - [`server`]: binds the listener (large backlog) and runs the accept loop.
//! - [`http`]: warp routes. `GET /access` signs a key with [`auth`]; `GET /ws` checks the key,
//!   connects the socket to the [`hub`] and upgrades, handing it to a [`protocol`];
//!   `POST /push` parses the body and asks the hub to publish it.
//! - [`hub`]: the two verbs every protocol uses, `connect` and `publish`, over this node's
//!   [`registry`] (streams → local sockets, each with a bounded [`outbox`]) and the [`broker`]
//!   (numbering, history, presence and delivery across nodes: in memory, or Redis).
//! - [`protocol::native`]: one task per socket writes its queue, answers/sends pings, and
//!   closes with a documented code ([`wire::CloseReason`]).
//! - [`wire`]: every encoding, serialized once per message.
//! - [`metrics`]: counters and latency histograms for `/metrics` (Prometheus), and the recent
//!   history behind the admin page.
//!
//! [`run`] ties them together and is what both `main` and the integration tests call.

#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod auth;
pub mod broker;
pub mod config;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Serves on `listener` until `shutdown` resolves, then shuts down gracefully: stop accepting,
/// let requests in flight finish, flush what each socket has queued, close every socket with
/// 1001, and return within `config.shutdown_timeout_secs`.
///
/// Like `addr`, `metrics_addr` is the caller's to bind: see [`run_with_metrics`].
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) {
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
) {
    // Made first: a cluster broker reports its calls to it (`Metrics::broker_call`).
    let metrics = Arc::new(metrics::Metrics::new());
    let hub = Arc::new(hub::Hub::local(
        config.send_queue_frames,
        config.retention(),
    ));
    let (stop_sockets, stopping) = watch::channel(false);
    let tracker = TaskTracker::new();
    let sockets = protocol::native::SocketContext {
        hub: hub.clone(),
        heartbeat: config.heartbeat_interval(),
        shutdown: stopping,
        metrics: metrics.clone(),
    };
    let state = Arc::new(http::AppState::new(
        &config,
        hub.clone(),
        sockets,
        tracker.clone(),
    ));
    // Expired history, forgotten streams, finished rate-limit windows and buffered histogram
    // values go periodically.
    let sweeper = tokio::spawn({
        let (hub, state, metrics) = (hub.clone(), state.clone(), metrics.clone());
        let period = Duration::from_secs_f64((config.history_ttl_secs / 4.0).clamp(0.05, 5.0));
        async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                hub.sweep();
                state.sweep();
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
            state.stop_accepting();
            log::info!("shutting down: {} sockets open", hub.socket_count());
        },
        phase,
    )
    .await;

    let _ = stop_sockets.send(true);
    tracker.close();
    if tokio::time::timeout(phase, tracker.wait()).await.is_err() {
        log::warn!(
            "{} sockets still closing after the shutdown timeout",
            hub.socket_count()
        );
    }
    sweeper.abort();
    sampler.abort();
    let _ = stop_metrics.send(());
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    log::info!("shutdown complete");
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
