//! `push-bench scale-push`: the backend side of `bench/scale.py`'s unicast phases. Pushes at a
//! fixed rate to random uids of the run (`<prefix><i>`, `i < uids`), each to a node other than
//! the one the uid's socket starts on (socket `i` starts on node `i % nodes`), so every message
//! crosses Redis. `contents` is `{"t": <CLOCK_MONOTONIC ns>, "k": i}`: the holders take the
//! latency from it. A node that refuses a connection is skipped from then on (the kill phase); with
//! `--idempotent` every push carries an `Idempotency-Key` and a failed one is sent again to the
//! next node, so a push is never counted twice nor lost in the retry.
//!
//! Prints one JSON line: what was sent and how each reply counted. `accepted` (200, or 404 with
//! `X-Push-Stored` ≥ 1: kept for the uid's resume) is what the holders must end up receiving.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::HttpClient;
use crate::hold::mono_ns;
use crate::Result;

/// Arguments of `push-bench scale-push`.
#[derive(Debug, Clone)]
pub struct ScalePushArgs {
    pub nodes: Vec<SocketAddr>,
    pub password: String,
    pub prefix: String,
    pub uids: usize,
    /// Pushes per second, over all connections.
    pub rate: f64,
    pub secs: f64,
    /// Keep-alive connections (one worker each, each paced at `rate / conns`).
    pub conns: usize,
    pub idempotent: bool,
}

impl Default for ScalePushArgs {
    fn default() -> Self {
        ScalePushArgs {
            nodes: Vec::new(),
            password: String::new(),
            prefix: "s".into(),
            uids: 0,
            rate: 1000.0,
            secs: 10.0,
            conns: 8,
            idempotent: false,
        }
    }
}

#[derive(Default, Clone)]
struct Counts {
    /// Replies other than 200 and 404, by status, and the first one's body.
    statuses: std::collections::BTreeMap<u16, u64>,
    first_other: Option<String>,
    sent: u64,
    ok: u64,
    sockets: u64,
    stored_404: u64,
    unstored_404: u64,
    other_status: u64,
    errors: u64,
    retries: u64,
    lag_max_us: u64,
}

/// Runs the pushes and returns the JSON report.
pub async fn push(args: ScalePushArgs) -> Result<String> {
    let conns = args.conns.max(1);
    let dead: Arc<Vec<AtomicBool>> =
        Arc::new(args.nodes.iter().map(|_| AtomicBool::new(false)).collect());
    let interval = Duration::from_secs_f64(conns as f64 / args.rate.max(0.001));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs_f64(args.secs);
    let wall = Instant::now();
    let mut workers = Vec::new();
    for w in 0..conns {
        let (args, dead) = (args.clone(), dead.clone());
        workers.push(tokio::spawn(async move {
            let n = args.nodes.len();
            let mut clients: Vec<HttpClient> =
                args.nodes.iter().map(|a| HttpClient::new(*a)).collect();
            let mut c = Counts::default();
            let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ ((w as u64 + 1) << 32) ^ mono_ns();
            let offset = interval.mul_f64(w as f64 / conns as f64);
            let mut k = 0u64;
            loop {
                let due = start + offset + interval * k as u32;
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                let lag = tokio::time::Instant::now().saturating_duration_since(due);
                c.lag_max_us = c.lag_max_us.max(lag.as_micros() as u64);
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                let i = (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % args.uids as u64) as usize;
                let home = i % n;
                let mut node = if n == 1 { 0 } else { (home + 1) % n };
                for _ in 0..n {
                    if !dead[node].load(Ordering::Relaxed) {
                        break;
                    }
                    node = (node + 1) % n;
                }
                let target = format!("/push?uid={}{i}&password={}", args.prefix, args.password);
                let headers = if args.idempotent {
                    format!("Idempotency-Key: scale-{w}-{k}\r\n")
                } else {
                    String::new()
                };
                c.sent += 1;
                let mut attempts = 0;
                loop {
                    let body = format!(
                        r#"{{"topic":"s","contents":{{"t":{},"k":{i}}}}}"#,
                        mono_ns()
                    );
                    match clients[node]
                        .request_with("POST", &target, &headers, body.as_bytes())
                        .await
                    {
                        Ok(r) => {
                            match (r.status, r.stored) {
                                (200, _) => {
                                    c.ok += 1;
                                    c.sockets += r.number().unwrap_or(0);
                                }
                                (404, Some(s)) if s > 0 => c.stored_404 += 1,
                                (404, _) => c.unstored_404 += 1,
                                (status, _) => {
                                    c.other_status += 1;
                                    *c.statuses.entry(status).or_default() += 1;
                                    c.first_other.get_or_insert_with(|| {
                                        String::from_utf8_lossy(&r.body).into_owned()
                                    });
                                }
                            }
                            break;
                        }
                        Err(e) => {
                            c.errors += 1;
                            // A node that refuses connections is gone (the kill phase); one that
                            // is only slow (a timeout) keeps its share of the pushes.
                            if format!("{e:#}").contains("refused") {
                                dead[node].store(true, Ordering::Relaxed);
                            }
                            attempts += 1;
                            if !args.idempotent || attempts >= n {
                                break;
                            }
                            c.retries += 1;
                            node = (node + 1) % n;
                        }
                    }
                }
                k += 1;
            }
            c
        }));
    }
    let mut t = Counts::default();
    for w in workers {
        let c = w.await?;
        t.sent += c.sent;
        t.ok += c.ok;
        t.sockets += c.sockets;
        t.stored_404 += c.stored_404;
        t.unstored_404 += c.unstored_404;
        t.other_status += c.other_status;
        t.errors += c.errors;
        t.retries += c.retries;
        t.lag_max_us = t.lag_max_us.max(c.lag_max_us);
        for (k, v) in c.statuses {
            *t.statuses.entry(k).or_default() += v;
        }
        t.first_other = t.first_other.or(c.first_other);
    }
    let dead_nodes: Vec<usize> = (0..dead.len())
        .filter(|&i| dead[i].load(Ordering::Relaxed))
        .collect();
    Ok(serde_json::json!({
        "sent": t.sent,
        "ok": t.ok,
        "sockets_reached": t.sockets,
        "stored_404": t.stored_404,
        "unstored_404": t.unstored_404,
        "other_status": t.other_status,
        "other_statuses": t.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<std::collections::BTreeMap<_, _>>(),
        "first_other_reply": t.first_other,
        "errors": t.errors,
        "retries": t.retries,
        "accepted": t.ok + t.stored_404,
        "send_lag_max_ms": t.lag_max_us as f64 / 1000.0,
        "secs": wall.elapsed().as_secs_f64(),
        "rate": t.sent as f64 / wall.elapsed().as_secs_f64().max(1e-9),
        "dead_nodes": dead_nodes,
    })
    .to_string())
}
