//! Accepting connections: our own loop over a listener we bound with a large backlog, so that
//! every connection gets TCP_NODELAY (pushes are small frames that must not wait for Nagle), a
//! header-read timeout (a client that connects and sends nothing is dropped), and a graceful
//! drain on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use warp::reply::Response;

use crate::limits::PeerAddr;
use warp::Filter;

/// Binds `addr` with `backlog` pending connections (the kernel caps it at
/// `net.core.somaxconn`). `warp::serve(..).run(addr)` would use a small backlog, which a burst of
/// reconnects after a restart overflows.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves HTTP on `listener` until `shutdown` resolves, then stops accepting and lets requests
/// in flight finish for at most `drain`. Upgraded sockets are not waited for here.
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    F: Filter<Extract = (Response,), Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(WithPeer {
            inner: warp::service(filter.clone()),
            peer: PeerAddr(peer),
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("connection ended with error: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!("HTTP requests still in flight after {drain:?}; closing anyway");
    }
}

/// Out of file descriptors is worth a warning and a pause (the next accept would fail the same
/// way); a connection reset before accept is routine.
async fn accept_error(e: io::Error) {
    match e.raw_os_error() {
        Some(code) if code == 24 || code == 23 => {
            // EMFILE / ENFILE
            log::warn!("accept: out of file descriptors ({e}); pausing accepts for 100 ms");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        _ => log::debug!("accept: {e}"),
    }
}

/// Tags every request with the connection's peer address (read by the password rate limiter).
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: PeerAddr,
}

impl<S, B> tower_service::Service<warp::http::Request<B>> for WithPeer<S>
where
    S: tower_service::Service<warp::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: warp::http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.peer);
        self.inner.call(req)
    }
}
