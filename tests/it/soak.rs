//! Soak: sockets connect and disconnect continuously while pushes flow, against the real
//! `push-serve` binary; afterwards the registry is empty and no task, file descriptor or memory
//! was left behind.
//!
//! CI runs 20,000 cycles. The long run is the same test with more:
//! `SOAK_CYCLES=1000000 cargo test --release --test it soak:: -- --nocapture`
//! (figures in README.md). Clients spread over 127.0.0.2-9 so loopback ports never run out.

use crate::common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::net::TcpSocket;

const BIN: &str = env!("CARGO_BIN_EXE_push-serve");

fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

async fn stats(s: &Server) -> serde_json::Value {
    let r = s
        .http()
        .await
        .get(&format!("/stats?password={}", enc(&s.password)))
        .await;
    r.json()["contents"].clone()
}

struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One connect → receive-or-not → disconnect cycle from `src`.
async fn cycle(s: &Server, src: IpAddr, uid: &str, key: &str) -> bool {
    let socket = TcpSocket::new_v4().unwrap();
    if socket.bind(SocketAddr::new(src, 0)).is_err() {
        return false;
    }
    let Ok(stream) = socket.connect(s.addr).await else {
        return false;
    };
    let Ok((mut ws, _)) = tokio_tungstenite::client_async(s.ws_url(uid, key), stream).await else {
        return false;
    };
    // Sometimes wait for a frame, sometimes leave at once; sometimes close politely, sometimes
    // just drop the connection.
    if uid.ends_with('0') {
        let _ = tokio::time::timeout(Duration::from_millis(20), ws.next()).await;
    }
    if uid.ends_with('1') {
        drop(ws);
    } else {
        let _ = ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {}
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_nothing_behind() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let cycles: u64 = std::env::var("SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = common::daemon::temp_config(
        "soak",
        &format!("addr: 127.0.0.1:{port}\npassword: soak\nhistory_ttl_secs: 2\nheartbeat_interval_secs: 5\n"),
    );
    let daemon = Daemon(
        Command::new(BIN)
            .args(["--config", conf.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let pid = daemon.0.id();
    let s = Arc::new(Server::external(([127, 0, 0, 1], port).into(), "soak"));
    eventually("the daemon to listen", || async {
        tokio::net::TcpStream::connect(s.addr).await.is_ok()
    })
    .await;

    // Warm up (allocator arenas, runtime workers) before taking the baseline.
    const UIDS: usize = 500;
    let mut keys = Vec::new();
    for u in 0..UIDS {
        keys.push(s.key(&format!("soak-{u}")).await);
    }
    let keys = Arc::new(keys);
    for u in 0..200 {
        cycle(
            &s,
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            &format!("soak-{u}"),
            &keys[u],
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (base_rss, base_fds) = (proc_status(pid, "VmRSS"), open_fds(pid));
    let base_tasks = stats(&s).await["tasks"].as_u64().unwrap();

    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let pushes = Arc::new(AtomicU64::new(0));
    let stop_pushing = Arc::new(tokio::sync::Notify::new());
    let pusher = {
        let (s, pushes, stop) = (s.clone(), pushes.clone(), stop_pushing.clone());
        tokio::spawn(async move {
            let mut http = s.http().await;
            let mut i = 0u64;
            loop {
                let uid = format!("soak-{}", i % UIDS as u64);
                let push = http.push(&uid, "soak", r#"{"topic":"soak","contents":{"n":1}}"#);
                tokio::select! {
                    r = push => assert!(r.status == 200 || r.status == 404),
                    _ = stop.notified() => return,
                }
                pushes.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    const WORKERS: u64 = 64;
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (s, keys, done, failed) = (s.clone(), keys.clone(), done.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (w % 8) as u8));
            let mut n = w;
            while n < cycles {
                let u = (n as usize * 7919) % UIDS;
                if !cycle(&s, src, &format!("soak-{u}"), &keys[u]).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
                n += WORKERS;
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    stop_pushing.notify_one();
    pusher.await.unwrap();
    let elapsed = started.elapsed();

    // Let closing handshakes, history (2 s) and idle streams settle.
    let mut after = stats(&s).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (after["sockets"] != 0 || after["uids"] != 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = stats(&s).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = stats(&s).await;
    let (rss, fds) = (proc_status(pid, "VmRSS"), open_fds(pid));
    let tasks = after["tasks"].as_u64().unwrap();
    println!(
        "soak: {} cycles ({} failed) and {} pushes in {:.1} s ({:.0} cycles/s); \
         RSS {} -> {} KiB, fds {} -> {}, tasks {} -> {}, stats after: {}",
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        pushes.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        base_rss,
        rss,
        base_fds,
        fds,
        base_tasks,
        tasks,
        after
    );
    assert_eq!(done.load(Ordering::Relaxed), cycles);
    assert!(
        failed.load(Ordering::Relaxed) * 100 < cycles,
        "more than 1% of cycles failed"
    );
    assert_eq!(after["sockets"], 0, "registry empty");
    assert_eq!(after["uids"], 0, "registry empty");
    assert!(
        fds <= base_fds + 4,
        "file descriptors leaked: {base_fds} -> {fds}"
    );
    assert!(
        tasks <= base_tasks + 4,
        "tasks leaked: {base_tasks} -> {tasks}"
    );
    // A leak check, not a speed check: a few MiB of allocator slack is normal, a per-cycle
    // leak of even 100 bytes would show as 2 MB per 20,000 cycles and grow with SOAK_CYCLES.
    assert!(
        rss < base_rss + 16 * 1024,
        "RSS grew from {base_rss} KiB to {rss} KiB"
    );
}
