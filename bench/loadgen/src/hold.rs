//! `push-bench hold`: a child process that opens idle sockets and holds them (answering pings)
//! until its standard input closes. Lets `idle-max` pass the loadgen's own 20k open-files limit.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use crate::client::{close_all, open_many, source_addrs, spawn_reader, Connector, RecvStats, Sink};
use crate::keys::KeyMaker;
use crate::Result;

/// Arguments of the `hold` subcommand.
#[derive(Debug, Clone)]
pub struct HoldArgs {
    pub addr: SocketAddr,
    pub password: String,
    pub count: usize,
    /// Uids are `<prefix><i>`.
    pub prefix: String,
    pub concurrency: usize,
    /// Number of loopback source addresses (127.0.0.2 ..) to spread sockets over.
    pub sources: u8,
}

/// Opens the sockets, prints `ready ok=<n> failed=<m>` on stdout, holds them until stdin
/// reaches end of file, then exits.
pub async fn hold(args: HoldArgs) -> Result<()> {
    crate::server::raise_nofile();
    let conn = Arc::new(Connector::new(
        args.addr,
        KeyMaker::new(&args.password, 3600),
        source_addrs(args.sources),
    ));
    let stats = RecvStats::new();
    let mut handles = Vec::with_capacity(args.count);
    let prefix = args.prefix.clone();
    let opened = open_many(
        &conn,
        args.count,
        args.concurrency,
        |i| format!("{prefix}{i}"),
        |_, ws| handles.push(spawn_reader(ws, Sink::Recv(stats.clone()))),
    )
    .await;
    println!(
        "ready ok={} failed={} error={}",
        opened.ok,
        opened.failed,
        opened
            .first_error
            .as_deref()
            .unwrap_or("-")
            .replace('\n', " ")
    );
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    close_all(&mut handles).await;
    Ok(())
}
