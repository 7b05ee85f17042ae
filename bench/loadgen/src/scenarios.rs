//! The scenarios, run in order against one started server.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;

use crate::client::{
    close_all, new_hist, now_ns, open_many, source_addrs, spawn_reader, Connector, FanStats,
    HttpClient, RecvStats, Sink, Ws,
};
use crate::keys::KeyMaker;
use crate::server::{Meter, ServerProc};
use crate::{Options, Plan, Result, Row, Scenario, ServerRun, ServerSpec, NOT_APPLICABLE};

/// Loopback source addresses for client sockets.
const SOURCES: u8 = 32;

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Starts `spec`, runs every scenario, stops it. Rows are in scenario order; a scenario that
/// fails gives a row with the error, and later ones still run while the server is alive.
pub async fn run_server(
    spec: &ServerSpec,
    plan: &Plan,
    scenarios: &[Scenario],
    opts: &Options,
    dir: &Path,
) -> (ServerRun, Vec<Row>) {
    let mut run = ServerRun {
        name: spec.name.clone(),
        command: String::new(),
        started: false,
        error: None,
        baseline_rss_kib: None,
        stop: None,
        log_tail: String::new(),
    };
    let mut rows = Vec::new();
    let cluster = match start_cluster_side(spec, dir, opts).await {
        Ok(c) => c,
        Err(e) => {
            run.error = Some(format!("start failed: {e:#}"));
            return (run, rows);
        }
    };
    let mut extra_conf = opts.extra_conf.clone();
    if let Some((redis, _)) = &cluster {
        extra_conf.push_str(&format!("redis_url: {}\n", redis.url()));
    }
    let mut server = match ServerProc::start(spec, dir, &opts.password, &extra_conf, opts.pin).await
    {
        Ok(s) => s,
        Err(e) => {
            run.error = Some(format!("start failed: {e:#}"));
            return (run, rows);
        }
    };
    run.started = true;
    run.command = server.command.clone();
    // Backends push to the cluster's other node; sockets are on `server`.
    let push_addr = match &cluster {
        Some((redis, node_a)) => {
            server.companions = vec![node_a.pid, redis.pid];
            run.command = format!(
                "{} (sockets) + {} (pushes) + redis-server on {}",
                server.command,
                node_a.command,
                redis.url()
            );
            node_a.addr
        }
        None => server.addr,
    };
    let keys = KeyMaker::new(&opts.password, 3600);
    let mut b = Bench {
        conn: Arc::new(Connector::new(server.addr, keys, source_addrs(SOURCES))),
        server: &mut server,
        push_addr,
        plan,
        opts,
        baseline_kib: 0,
    };
    match b.prepare().await {
        Ok(base) => {
            run.baseline_rss_kib = Some(base);
            b.run_all(scenarios, &mut rows).await;
        }
        Err(e) => run.error = Some(format!("{e:#}")),
    }
    if let Some(status) = server.exited() {
        run.error
            .get_or_insert(format!("server exited during the run: {status}"));
    }
    run.stop = Some(server.stop(plan.stop_grace).await);
    run.log_tail = server.log_tail();
    if let Some((_, mut node_a)) = cluster {
        node_a.stop(plan.stop_grace).await;
    }
    (run, rows)
}

/// For a cluster spec: Redis and the node backends push to (node A), both started; the
/// measured node (B) is started by the caller with Redis's URL.
async fn start_cluster_side(
    spec: &ServerSpec,
    dir: &Path,
    opts: &Options,
) -> Result<Option<(crate::server::RedisProc, ServerProc)>> {
    if !spec.cluster {
        return Ok(None);
    }
    let redis = crate::server::RedisProc::start(dir, opts.pin).await?;
    let a = ServerSpec {
        name: format!("{}-a", spec.name),
        ..spec.clone()
    };
    let conf = format!("{}redis_url: {}\n", opts.extra_conf, redis.url());
    let node_a = ServerProc::start(&a, dir, &opts.password, &conf, opts.pin).await?;
    Ok(Some((redis, node_a)))
}

struct Bench<'a> {
    server: &'a mut ServerProc,
    /// Where backends push: the server itself, or a cluster's other node.
    push_addr: std::net::SocketAddr,
    conn: Arc<Connector>,
    plan: &'a Plan,
    opts: &'a Options,
    baseline_kib: u64,
}

/// Tallies of `/push` replies.
#[derive(Default)]
struct PushCounts {
    ok: u64,
    not_found: u64,
    other: u64,
    errors: u64,
    first_problem: Option<String>,
    max_lag_ns: u64,
}

impl PushCounts {
    fn add(&mut self, o: PushCounts) {
        self.ok += o.ok;
        self.not_found += o.not_found;
        self.other += o.other;
        self.errors += o.errors;
        self.max_lag_ns = self.max_lag_ns.max(o.max_lag_ns);
        if self.first_problem.is_none() {
            self.first_problem = o.first_problem;
        }
    }

    fn note(&mut self, r: Result<crate::client::Reply>) -> Option<crate::client::Reply> {
        match r {
            Ok(reply) => {
                match reply.status {
                    200 => self.ok += 1,
                    404 => self.not_found += 1,
                    s => {
                        self.other += 1;
                        self.first_problem.get_or_insert_with(|| {
                            format!(
                                "/push answered {s}: {}",
                                String::from_utf8_lossy(&reply.body)
                            )
                        });
                    }
                }
                Some(reply)
            }
            Err(e) => {
                self.errors += 1;
                self.first_problem
                    .get_or_insert_with(|| format!("/push: {e:#}"));
                None
            }
        }
    }
}

/// What a fan-out message is sent to.
#[derive(Clone, Copy)]
enum FanTarget {
    /// `POST /push?uid=fan`, every socket opened for that one uid.
    Uid,
    /// `POST /publish` to [`FAN_TOPIC`], one socket per uid, each key granting the topic.
    Topic,
    /// `POST /broadcast`, one socket per uid.
    Broadcast,
}

/// The topic of the `fanout-topic` scenario; also the `topic` of every bench message.
const FAN_TOPIC: &str = "bench";

/// Waits for every backend task and adds up their reply counts.
async fn join_backends(backends: Vec<JoinHandle<PushCounts>>) -> Result<PushCounts> {
    let mut counts = PushCounts::default();
    for h in backends {
        counts.add(h.await?);
    }
    Ok(counts)
}

/// Gives the receiving sockets up to `grace` to see all `acked` pushes, closes them, and
/// returns how many frames they got and their push→receive latencies.
async fn collect_receipts(
    stats: &RecvStats,
    handles: &mut Vec<JoinHandle<()>>,
    acked: u64,
    grace: Duration,
) -> (u64, Histogram<u64>) {
    wait_for(grace, || stats.frames.load(Ordering::Relaxed) >= acked).await;
    let received = stats.frames.load(Ordering::Relaxed);
    let hist = stats.hist.lock().unwrap().clone();
    close_all(handles).await;
    (received, hist)
}

/// The delivery columns every unicast row has.
fn set_delivery(m: &mut crate::Metrics, counts: &PushCounts, received: u64) {
    m.set("received", received as f64);
    m.set("lost", counts.ok.saturating_sub(received) as f64);
    m.set(
        "not 200",
        (counts.not_found + counts.other + counts.errors) as f64,
    );
}

fn push_target(uid: &str, password: &str) -> String {
    format!("/push?uid={uid}&password={password}")
}

fn body_at(t: u64, seq: u64) -> String {
    format!("{{\"topic\":\"{FAN_TOPIC}\",\"contents\":{{\"t\":{t},\"s\":{seq}}}}}")
}

/// A small xorshift for jitter; no need for a crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        ms(h.value_at_quantile(q))
    }
}

/// Waits until `cond` holds or `limit` passes; returns whether it held.
async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Bench<'_> {
    fn progress(&self, msg: &str) {
        if self.opts.progress {
            eprintln!("push-bench: [{}] {msg}", self.server.name);
        }
    }

    fn pw(&self) -> &str {
        &self.opts.password
    }

    /// Checks the locally computed keys against `/access`, checks a socket opens, and reads
    /// the baseline RSS.
    async fn prepare(&mut self) -> Result<u64> {
        let mut http = HttpClient::new(self.server.addr);
        let uid = "push-bench-key-check";
        let reply = http
            .request(
                "GET",
                &format!("/access?uid={uid}&password={}", self.pw()),
                b"",
            )
            .await
            .context("GET /access")?;
        if reply.status != 200 {
            bail!(
                "GET /access answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
        let v: serde_json::Value =
            serde_json::from_slice(&reply.body).context("/access reply is not JSON")?;
        let issued = v["contents"]
            .as_str()
            .ok_or_else(|| anyhow!("/access reply has no string contents: {v}"))?;
        self.conn
            .keys
            .verify_against(uid, issued)
            .map_err(|e| anyhow!(e))?;
        drop(http);
        tokio::time::sleep(self.plan.settle.min(Duration::from_secs(1))).await;
        let base = self.server.rss_kib()?;
        self.baseline_kib = base;
        self.progress(&format!(
            "pid {} on {}, key check ok, baseline RSS {:.1} MiB",
            self.server.pid,
            self.server.addr,
            mib(base)
        ));
        Ok(base)
    }

    fn alive(&mut self) -> Result<()> {
        match self.server.exited() {
            Some(status) => bail!("server exited ({status}); log: {}", self.server.log_tail()),
            None => Ok(()),
        }
    }

    /// Fills the row's timing and CPU columns and marks it ok with its primary value.
    fn finish(&self, mut row: Row, meter: &Meter, value: f64) -> Row {
        let cpu = meter.finish();
        row.wall_secs = cpu.wall;
        row.loadgen_cpu_pct = cpu.loadgen;
        row.server_cpu_pct = cpu.server;
        row.other_cpu_pct = cpu.other;
        row.value = Some(value);
        row.metrics.set(&row.primary.clone(), value);
        if row.higher_is_better && cpu.server > 1.0 {
            // On a 2-core machine the loadgen and the server share the cores, so raw rates
            // partly measure how the CPU was split; this is the rate per second of server CPU.
            row.metrics
                .set("per server core-s", value / (cpu.server / 100.0));
        }
        row.ok = value.is_finite();
        if !row.ok {
            row.error = Some(format!("{} could not be computed", row.primary));
        }
        row
    }

    async fn run_all(&mut self, scenarios: &[Scenario], rows: &mut Vec<Row>) {
        let find = |id: &str| {
            scenarios
                .iter()
                .find(|s| s.id == id)
                .expect("planned")
                .clone()
        };
        let name = self.server.name.clone();

        // Idle memory, cumulative; the largest in-process set stays for unicast-rate.
        let idle_stats = RecvStats::new();
        let mut idle: Vec<JoinHandle<()>> = Vec::new();
        let mut next_uid = 0usize;
        for &n in &self.plan.idle_sizes.clone() {
            let sc = find(&format!("idle-{n}"));
            let r = self
                .idle_step(&sc, n, &idle_stats, &mut idle, &mut next_uid)
                .await;
            rows.push(r.unwrap_or_else(|e| Row::failed(&sc, &name, format!("{e:#}"))));
        }
        if let Some(total) = self.plan.idle_max_total {
            let sc = find("idle-max");
            let r = self.idle_max(&sc, total, &idle_stats, idle.len()).await;
            rows.push(r.unwrap_or_else(|e| Row::failed(&sc, &name, format!("{e:#}"))));
        }

        let sc = find("unicast-rate");
        let r = match self.alive() {
            Ok(()) => self.unicast_rate(&sc, &idle_stats, idle.len()).await,
            Err(e) => Err(e),
        };
        rows.push(r.unwrap_or_else(|e| Row::failed(&sc, &name, format!("{e:#}"))));
        close_all(&mut idle).await;
        tokio::time::sleep(self.plan.settle / 2).await;

        for id in [
            "connect-storm",
            "unicast-max",
            "fanout",
            "fanout-topic",
            "fanout-broadcast",
            "churn",
        ] {
            let sc = find(id);
            if !sc.applies_to(&name) {
                rows.push(Row::failed(&sc, &name, NOT_APPLICABLE.into()));
                continue;
            }
            let r = match self.alive() {
                Ok(()) => match id {
                    "connect-storm" => self.storm(&sc).await,
                    "unicast-max" => self.unicast_max(&sc).await,
                    "fanout" => self.fanout(&sc, FanTarget::Uid).await,
                    "fanout-topic" => self.fanout(&sc, FanTarget::Topic).await,
                    "fanout-broadcast" => self.fanout(&sc, FanTarget::Broadcast).await,
                    _ => self.churn(&sc).await,
                },
                Err(e) => Err(e),
            };
            let mut row = r.unwrap_or_else(|e| Row::failed(&sc, &name, format!("{e:#}")));
            if row.ok && name == "push-serve" {
                // Retention is on (push-serve's defaults: 100 messages per stream, 5 min, at
                // most 64 MiB): show what it holds after the scenario.
                match self.history_bytes().await {
                    Ok(b) => row.metrics.set("history MiB", b as f64 / (1 << 20) as f64),
                    Err(e) => row.notes.push(format!("GET /stats: {e:#}")),
                }
            }
            rows.push(row);
        }
    }

    /// push-serve's `history_bytes` from `GET /stats`.
    async fn history_bytes(&self) -> Result<u64> {
        let mut http = HttpClient::new(self.server.addr);
        let reply = http
            .request("GET", &format!("/stats?password={}", self.pw()), b"")
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&reply.body)?;
        v["contents"]["history_bytes"]
            .as_u64()
            .ok_or_else(|| anyhow!("no history_bytes in {v}"))
    }

    /// Opens sockets until `n` are held, waits, reads RSS.
    async fn idle_step(
        &mut self,
        sc: &Scenario,
        n: usize,
        stats: &Arc<RecvStats>,
        held: &mut Vec<JoinHandle<()>>,
        next_uid: &mut usize,
    ) -> Result<Row> {
        self.alive()?;
        let meter = Meter::start(self.server);
        let need = n.saturating_sub(held.len());
        let base_uid = *next_uid;
        *next_uid += need;
        let opened = open_many(
            &self.conn,
            need,
            self.plan.open_concurrency,
            |i| format!("idle-{}", base_uid + i),
            |_, ws| held.push(spawn_reader(ws, Sink::Recv(stats.clone()))),
        )
        .await;
        tokio::time::sleep(self.plan.settle).await;
        self.alive()?;
        let rss = self.server.rss_kib()?;
        let dropped = stats.closed.load(Ordering::Relaxed) as usize;
        let live = held.len().saturating_sub(dropped);
        self.progress(&format!(
            "idle {live} sockets: RSS {:.1} MiB ({} failed)",
            mib(rss),
            opened.failed
        ));
        let mut row = Row::new(sc, &self.server.name);
        row.metrics.set("sockets", live as f64);
        row.metrics.set("failed", opened.failed as f64);
        row.metrics.set("dropped by server", dropped as f64);
        row.metrics.set("baseline MiB", mib(self.baseline_kib));
        row.metrics.set("RSS MiB", mib(rss));
        if let Some(e) = opened.first_error {
            row.notes.push(format!("first connect error: {e}"));
        }
        if live == 0 {
            bail!("no socket opened ({})", row.notes.join("; "));
        }
        let per = (rss as f64 - self.baseline_kib as f64) / live as f64;
        Ok(self.finish(row, &meter, per))
    }

    /// Adds sockets held by two `hold` child processes up to `total`, waits, reads RSS.
    async fn idle_max(
        &mut self,
        sc: &Scenario,
        total: usize,
        stats: &Arc<RecvStats>,
        in_process: usize,
    ) -> Result<Row> {
        self.alive()?;
        let exe = self
            .opts
            .hold_exe
            .clone()
            .ok_or_else(|| anyhow!("no hold executable (run through the push-bench binary)"))?;
        let meter = Meter::start(self.server);
        let extra = total.saturating_sub(in_process);
        let parts = 2;
        let mut children = Vec::new();
        for k in 0..parts {
            let count = extra / parts + usize::from(k < extra % parts);
            let child = tokio::process::Command::new(&exe)
                .arg("hold")
                .args(["--addr", &self.server.addr.to_string()])
                .args(["--password", self.pw()])
                .args(["--count", &count.to_string()])
                .args(["--prefix", &format!("idlemax{k}-")])
                .args([
                    "--concurrency",
                    &(self.plan.open_concurrency / 2).max(1).to_string(),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawn {} hold", exe.display()))?;
            children.push(child);
        }
        let result = async {
            let (mut ok, mut failed, mut notes) = (0usize, 0usize, Vec::new());
            for child in children.iter_mut() {
                let out = child.stdout.take().expect("piped");
                let mut line = String::new();
                tokio::time::timeout(
                    Duration::from_secs(180),
                    BufReader::new(out).read_line(&mut line),
                )
                .await
                .map_err(|_| anyhow!("hold child not ready within 180 s"))??;
                let field = |k: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .and_then(|v| v.parse::<usize>().ok())
                };
                let (o, f) = (
                    field("ok=").ok_or_else(|| anyhow!("hold child said {line:?}"))?,
                    field("failed=").unwrap_or(0),
                );
                ok += o;
                failed += f;
                if f > 0 {
                    if let Some(e) = line.split_once("error=") {
                        notes.push(format!("hold child: first connect error: {}", e.1.trim()));
                    }
                }
            }
            tokio::time::sleep(self.plan.settle).await;
            self.alive()?;
            let rss = self.server.rss_kib()?;
            Ok::<_, anyhow::Error>((ok, failed, notes, rss))
        }
        .await;
        // Closing stdin ends each child, which drops its sockets.
        for child in children.iter_mut() {
            drop(child.stdin.take());
        }
        for child in children.iter_mut() {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        let (ok, failed, notes, rss) = result?;
        let dropped = stats.closed.load(Ordering::Relaxed) as usize;
        let live = in_process.saturating_sub(dropped) + ok;
        self.progress(&format!(
            "idle-max {live} sockets: RSS {:.1} MiB ({failed} failed)",
            mib(rss)
        ));
        let mut row = Row::new(sc, &self.server.name);
        row.metrics.set("sockets", live as f64);
        row.metrics.set("failed", failed as f64);
        row.metrics.set("dropped by server", dropped as f64);
        row.metrics.set("baseline MiB", mib(self.baseline_kib));
        row.metrics.set("RSS MiB", mib(rss));
        row.notes.extend(notes);
        row.notes.push(format!(
            "{in_process} sockets in the loadgen, {ok} in two `push-bench hold` processes"
        ));
        let per = (rss as f64 - self.baseline_kib as f64) / live.max(1) as f64;
        // Let the server release the children's sockets before the next scenario.
        tokio::time::sleep(self.plan.settle / 2).await;
        Ok(self.finish(row, &meter, per))
    }

    /// Opens `n` receiver sockets with uids `<prefix><i>`.
    async fn receivers(
        &self,
        n: usize,
        prefix: &str,
        sink: Sink,
    ) -> Result<(Vec<JoinHandle<()>>, Option<String>)> {
        let mut handles = Vec::with_capacity(n);
        let opened = open_many(
            &self.conn,
            n,
            self.plan.open_concurrency,
            |i| format!("{prefix}{i}"),
            |_, ws| handles.push(spawn_reader(ws, sink.clone())),
        )
        .await;
        if opened.ok == 0 && n > 0 {
            bail!(
                "no receiver socket opened: {}",
                opened.first_error.unwrap_or_default()
            );
        }
        let note = (opened.failed > 0).then(|| {
            format!(
                "{} of {n} receiver sockets failed to open: {}",
                opened.failed,
                opened.first_error.unwrap_or_default()
            )
        });
        Ok((handles, note))
    }

    /// Open-loop pushes at a fixed rate to uids with one socket each.
    async fn unicast_rate(
        &mut self,
        sc: &Scenario,
        idle_stats: &Arc<RecvStats>,
        idle_sockets: usize,
    ) -> Result<Row> {
        let p = self.plan;
        let stats = RecvStats::new();
        let (mut handles, note) = self
            .receivers(p.rate_uids, "rate-", Sink::Recv(stats.clone()))
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let idle_dropped_before = idle_stats.closed.load(Ordering::Relaxed);
        self.progress(&format!(
            "unicast-rate: {} pushes/s for {:.1} s",
            p.rate_per_sec,
            p.rate_duration.as_secs_f64()
        ));
        let meter = Meter::start(self.server);
        stats.since_ns.store(now_ns(), Ordering::Relaxed);
        let total = (p.rate_per_sec as f64 * p.rate_duration.as_secs_f64()).round() as u64;
        let interval_ns = 1e9 / p.rate_per_sec.max(1) as f64;
        let t0 = tokio::time::Instant::now() + Duration::from_millis(20);
        let mut backends = Vec::new();
        for b in 0..p.rate_backends.max(1) as u64 {
            let addr = self.push_addr;
            let pw = self.pw().to_string();
            let (uids, step) = (p.rate_uids as u64, p.rate_backends.max(1) as u64);
            backends.push(tokio::spawn(async move {
                let mut http = HttpClient::new(addr);
                let mut c = PushCounts::default();
                let mut i = b;
                while i < total {
                    let at = t0 + Duration::from_nanos((i as f64 * interval_ns) as u64);
                    tokio::time::sleep_until(at).await;
                    let lag = tokio::time::Instant::now().saturating_duration_since(at);
                    c.max_lag_ns = c.max_lag_ns.max(lag.as_nanos() as u64);
                    let uid = format!("rate-{}", i % uids);
                    let body = body_at(now_ns(), i);
                    c.note(
                        http.request("POST", &push_target(&uid, &pw), body.as_bytes())
                            .await,
                    );
                    i += step;
                }
                c
            }));
        }
        let mut counts = join_backends(backends).await?;
        let send_secs = (tokio::time::Instant::now() - t0).as_secs_f64();
        let (received, h) =
            collect_receipts(&stats, &mut handles, counts.ok, Duration::from_secs(2)).await;
        let mut row = Row::new(sc, &self.server.name);
        let m = &mut row.metrics;
        m.set("idle sockets", idle_sockets as f64);
        m.set("pushes", total as f64);
        m.set("sent/s", total as f64 / send_secs);
        set_delivery(m, &counts, received);
        m.set("p50 ms", pct(&h, 0.50));
        m.set("p99 ms", pct(&h, 0.99));
        m.set("p99.9 ms", pct(&h, 0.999));
        m.set("max ms", if h.is_empty() { f64::NAN } else { ms(h.max()) });
        m.set("send lag max ms", ms(counts.max_lag_ns));
        m.set(
            "idle dropped",
            (idle_stats.closed.load(Ordering::Relaxed) - idle_dropped_before) as f64,
        );
        row.notes.extend(note);
        row.notes.extend(counts.first_problem.take());
        if received == 0 {
            bail!("no push arrived ({})", row.notes.join("; "));
        }
        let p99 = pct(&h, 0.99);
        Ok(self.finish(row, &meter, p99))
    }

    /// N sockets as fast as `storm_concurrency` in flight allows.
    async fn storm(&mut self, sc: &Scenario) -> Result<Row> {
        let p = self.plan;
        self.progress(&format!("connect-storm: {} sockets", p.storm_sockets));
        let meter = Meter::start(self.server);
        let mut held: Vec<Ws> = Vec::with_capacity(p.storm_sockets);
        let opened = open_many(
            &self.conn,
            p.storm_sockets,
            p.storm_concurrency,
            |i| format!("storm-{i}"),
            |_, ws| held.push(ws),
        )
        .await;
        let rate = opened.ok as f64 / opened.wall.as_secs_f64();
        let mut row = Row::new(sc, &self.server.name);
        row.metrics.set("sockets", opened.ok as f64);
        row.metrics.set("failed", opened.failed as f64);
        row.metrics.set("p50 ms", pct(&opened.times, 0.5));
        row.metrics.set("p99 ms", pct(&opened.times, 0.99));
        row.metrics.set(
            "max ms",
            if opened.times.is_empty() {
                f64::NAN
            } else {
                ms(opened.times.max())
            },
        );
        if let Some(e) = opened.first_error {
            row.notes.push(format!("first connect error: {e}"));
        }
        let row = self.finish(row, &meter, rate);
        drop(held);
        tokio::time::sleep(self.plan.settle / 2).await;
        if opened.ok == 0 {
            bail!("no socket opened ({})", row.notes.join("; "));
        }
        Ok(row)
    }

    /// Closed-loop pushes from C keep-alive backends to distinct uids for a fixed time.
    async fn unicast_max(&mut self, sc: &Scenario) -> Result<Row> {
        let p = self.plan;
        let stats = RecvStats::new();
        let (mut handles, note) = self
            .receivers(p.unicast_uids, "uc-", Sink::Recv(stats.clone()))
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.progress(&format!(
            "unicast-max: {} backends for {:.1} s",
            p.unicast_backends,
            p.unicast_duration.as_secs_f64()
        ));
        let meter = Meter::start(self.server);
        stats.since_ns.store(now_ns(), Ordering::Relaxed);
        let start = Instant::now();
        let deadline = start + p.unicast_duration;
        let mut backends = Vec::new();
        let c = p.unicast_backends.max(1);
        for b in 0..c {
            let addr = self.push_addr;
            let pw = self.pw().to_string();
            let uids = p.unicast_uids.max(1);
            backends.push(tokio::spawn(async move {
                let mut http = HttpClient::new(addr);
                let mut counts = PushCounts::default();
                let mut j = 0u64;
                while Instant::now() < deadline {
                    // Backend b owns uids b, b+C, b+2C, ...: no two backends share a uid.
                    let idx = (b + (j as usize) * c) % uids;
                    let uid = format!("uc-{idx}");
                    let body = body_at(now_ns(), j);
                    counts.note(
                        http.request("POST", &push_target(&uid, &pw), body.as_bytes())
                            .await,
                    );
                    j += 1;
                }
                counts
            }));
        }
        let mut counts = join_backends(backends).await?;
        let secs = start.elapsed().as_secs_f64();
        let (received, h) =
            collect_receipts(&stats, &mut handles, counts.ok, Duration::from_secs(3)).await;
        let mut row = Row::new(sc, &self.server.name);
        let m = &mut row.metrics;
        m.set("acked/s", counts.ok as f64 / secs);
        set_delivery(m, &counts, received);
        m.set("p50 ms", pct(&h, 0.50));
        m.set("p99 ms", pct(&h, 0.99));
        m.set("p99.9 ms", pct(&h, 0.999));
        row.notes.extend(note);
        row.notes.extend(counts.first_problem.take());
        let dropped = stats.closed.load(Ordering::Relaxed);
        if dropped > 0 {
            row.notes
                .push(format!("{dropped} receiver sockets closed by the server"));
        }
        if received == 0 {
            bail!("no push arrived ({})", row.notes.join("; "));
        }
        Ok(self.finish(row, &meter, received as f64 / secs))
    }

    /// Many sockets reached by one message each time (one uid's sockets, a topic's followers,
    /// or everyone); at most `fanout_window` messages not yet delivered everywhere.
    async fn fanout(&mut self, sc: &Scenario, to: FanTarget) -> Result<Row> {
        let p = self.plan;
        const CAP: usize = 500_000;
        let fan = FanStats::new(p.fanout_sockets as u32, CAP);
        let mut handles = Vec::with_capacity(p.fanout_sockets);
        let conn = match to {
            FanTarget::Topic => Arc::new(Connector::new(
                self.server.addr,
                self.conn.keys.with_topics(&[FAN_TOPIC]),
                source_addrs(SOURCES),
            )),
            FanTarget::Uid | FanTarget::Broadcast => self.conn.clone(),
        };
        let opened = open_many(
            &conn,
            p.fanout_sockets,
            p.open_concurrency,
            |i| match to {
                FanTarget::Uid => "fan".to_string(),
                FanTarget::Topic => format!("fan-topic-{i}"),
                FanTarget::Broadcast => format!("fan-all-{i}"),
            },
            |_, ws| handles.push(spawn_reader(ws, Sink::Fan(fan.clone()))),
        )
        .await;
        if opened.ok == 0 {
            bail!(
                "no socket opened: {}",
                opened.first_error.unwrap_or_default()
            );
        }
        // Every message must reach the sockets that did open.
        fan.sockets.store(opened.ok as u32, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.progress(&format!(
            "fanout: {} sockets for {:.1} s",
            opened.ok,
            p.fanout_duration.as_secs_f64()
        ));
        let meter = Meter::start(self.server);
        let target = |f: &FanStats| {
            (f.sockets.load(Ordering::Relaxed) as u64)
                .saturating_sub(f.closed.load(Ordering::Relaxed))
                .max(1) as u32
        };
        let mut http = HttpClient::new(self.push_addr);
        let mut counts = PushCounts::default();
        let mut min_queued = u64::MAX;
        let mut window_timeouts = 0u64;
        // Phase 1 (first 30 %): one message at a time, for the send→last-delivery latency.
        // Phase 2: `fanout_window` messages in flight, for deliveries/s.
        let w = p.fanout_window.max(1);
        let start = Instant::now();
        let deadline = start + p.fanout_duration;
        let phase2_at = start + p.fanout_duration.mul_f64(0.3);
        let target_path = match to {
            FanTarget::Uid => push_target("fan", self.pw()),
            FanTarget::Topic => format!("/publish?password={}", self.pw()),
            FanTarget::Broadcast => format!("/broadcast?password={}", self.pw()),
        };
        let mut s = 0usize;
        let mut split: Option<usize> = None;
        while Instant::now() < deadline && s < CAP {
            let window = if split.is_some() { w } else { 1 };
            if s >= window {
                let k = s - window;
                let give_up = Instant::now() + Duration::from_secs(2);
                while fan.count[k].load(Ordering::Acquire) < target(&fan) {
                    let now = Instant::now();
                    if now >= give_up {
                        window_timeouts += 1;
                        break;
                    }
                    let slice = (give_up - now).min(Duration::from_millis(5));
                    let _ = tokio::time::timeout(slice, fan.complete.notified()).await;
                }
            }
            if split.is_none() && Instant::now() >= phase2_at {
                split = Some(s);
            }
            let t = now_ns();
            fan.sent_ns[s].store(t, Ordering::Relaxed);
            let r = http
                .request("POST", &target_path, body_at(t, s as u64).as_bytes())
                .await;
            if let Some(reply) = counts.note(r) {
                if reply.status == 200 {
                    if let Some(n) = reply.number() {
                        min_queued = min_queued.min(n);
                    }
                }
            }
            s += 1;
        }
        let sent = s;
        let split = split.unwrap_or(sent);
        wait_for(Duration::from_secs(3), || {
            (sent.saturating_sub(w)..sent)
                .all(|k| fan.count[k].load(Ordering::Acquire) >= target(&fan))
        })
        .await;
        let full = target(&fan);
        let mut h = new_hist();
        let mut incomplete = 0u64;
        for k in 0..split {
            let last = fan.last_ns[k].load(Ordering::Relaxed);
            if fan.count[k].load(Ordering::Relaxed) >= full {
                let _ = h.record(
                    last.saturating_sub(fan.sent_ns[k].load(Ordering::Relaxed))
                        .max(1),
                );
            } else {
                incomplete += 1;
            }
        }
        let (mut deliveries, mut last_seen) = (0u64, 0u64);
        for k in split..sent {
            deliveries += fan.count[k].load(Ordering::Relaxed) as u64;
            last_seen = last_seen.max(fan.last_ns[k].load(Ordering::Relaxed));
            if fan.count[k].load(Ordering::Relaxed) < full {
                incomplete += 1;
            }
        }
        let closed = fan.closed.load(Ordering::Relaxed);
        close_all(&mut handles).await;
        let first = if split < sent {
            fan.sent_ns[split].load(Ordering::Relaxed)
        } else {
            0
        };
        let secs = (last_seen.saturating_sub(first) as f64 / 1e9).max(1e-9);
        let mut row = Row::new(sc, &self.server.name);
        let m = &mut row.metrics;
        m.set("sockets", opened.ok as f64);
        m.set("messages 1-at-a-time", split as f64);
        m.set(&format!("messages {w} in flight"), (sent - split) as f64);
        m.set("incomplete", incomplete as f64);
        m.set("last p50 ms", pct(&h, 0.5));
        m.set("last p99 ms", pct(&h, 0.99));
        m.set(
            "last max ms",
            if h.is_empty() { f64::NAN } else { ms(h.max()) },
        );
        if opened.failed > 0 {
            row.notes.push(format!(
                "{} sockets failed to open: {}",
                opened.failed,
                opened.first_error.unwrap_or_default()
            ));
        }
        if min_queued != u64::MAX && min_queued < opened.ok as u64 {
            row.notes.push(format!(
                "a /push reported only {min_queued} sockets queued (of {})",
                opened.ok
            ));
        }
        if closed > 0 {
            row.notes
                .push(format!("{closed} sockets closed by the server"));
        }
        if window_timeouts > 0 {
            row.notes.push(format!(
                "{window_timeouts} times a message was not delivered everywhere within 2 s"
            ));
        }
        row.notes.extend(counts.first_problem.take());
        if deliveries == 0 || h.is_empty() {
            bail!("nothing delivered ({})", row.notes.join("; "));
        }
        Ok(self.finish(row, &meter, deliveries as f64 / secs))
    }

    /// Sockets connect and disconnect continuously while pushes flow; then a leak check:
    /// every churned uid must answer 404 (offline) and RSS is compared with before.
    async fn churn(&mut self, sc: &Scenario) -> Result<Row> {
        use futures_util::StreamExt;
        use std::sync::atomic::AtomicU64;
        use std::sync::Mutex;
        use tokio_tungstenite::tungstenite::Message;

        let p = self.plan;
        let pool = p.churn_uids.max(1) as u64;
        let rss_before = self.server.rss_kib()?;
        self.progress(&format!(
            "churn: {} loops for {:.1} s",
            p.churn_workers,
            p.churn_duration.as_secs_f64()
        ));
        let meter = Meter::start(self.server);
        let start = Instant::now();
        let deadline = start + p.churn_duration;
        let connects = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let frames = Arc::new(AtomicU64::new(0));
        let first_error: Arc<Mutex<Option<String>>> = Arc::default();
        let mut tasks = Vec::new();
        for wk in 0..p.churn_workers as u64 {
            let (conn, connects, failures, frames, first_error) = (
                self.conn.clone(),
                connects.clone(),
                failures.clone(),
                frames.clone(),
                first_error.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut rng =
                    Rng(0x9E37_79B9_7F4A_7C15 ^ (wk + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
                while Instant::now() < deadline {
                    let uid = format!("churn-{}", rng.next() % pool);
                    match conn.connect(&uid).await {
                        Ok(mut ws) => {
                            connects.fetch_add(1, Ordering::Relaxed);
                            let until = tokio::time::Instant::now()
                                + Duration::from_millis(rng.next() % 20);
                            while let Ok(Some(Ok(msg))) =
                                tokio::time::timeout_at(until, ws.next()).await
                            {
                                if matches!(msg, Message::Text(_)) {
                                    frames.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            // Half close politely (close frame, wait for the reply), half just drop.
                            if rng.next() & 1 == 0 {
                                let _ = tokio::time::timeout(Duration::from_millis(200), async {
                                    let _ = ws.close(None).await;
                                    while let Some(Ok(_)) = ws.next().await {}
                                })
                                .await;
                            }
                        }
                        Err(e) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(format!("{e:#}"));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }));
        }
        let mut pushers = Vec::new();
        let npush = 2u64;
        let interval_ns = 1e9 / p.churn_push_rate.max(1) as f64;
        let t0 = tokio::time::Instant::now();
        for b in 0..npush {
            let addr = self.push_addr;
            let pw = self.pw().to_string();
            pushers.push(tokio::spawn(async move {
                let mut http = HttpClient::new(addr);
                let mut counts = PushCounts::default();
                let mut rng = Rng(0xDEAD_BEEF ^ (b + 7));
                let mut i = b;
                while Instant::now() < deadline {
                    tokio::time::sleep_until(
                        t0 + Duration::from_nanos((i as f64 * interval_ns) as u64),
                    )
                    .await;
                    let uid = format!("churn-{}", rng.next() % pool);
                    let body = body_at(now_ns(), i);
                    counts.note(
                        http.request("POST", &push_target(&uid, &pw), body.as_bytes())
                            .await,
                    );
                    i += npush;
                }
                counts
            }));
        }
        for t in tasks {
            t.await?;
        }
        let mut counts = PushCounts::default();
        for t in pushers {
            counts.add(t.await?);
        }
        let secs = start.elapsed().as_secs_f64();

        // Leak check: every churned uid must be offline again.
        let mut http = HttpClient::new(self.push_addr);
        let check = Instant::now();
        let mut online;
        let mut odd = None;
        loop {
            online = 0u64;
            for i in 0..pool {
                let r = http
                    .request(
                        "POST",
                        &push_target(&format!("churn-{i}"), self.pw()),
                        body_at(now_ns(), 0).as_bytes(),
                    )
                    .await?;
                match r.status {
                    200 => online += 1,
                    404 => {}
                    s => {
                        odd.get_or_insert(format!("leak check: /push answered {s}"));
                    }
                }
            }
            if online == 0 || check.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let settle_secs = check.elapsed().as_secs_f64();
        let meter_row = meter.finish();
        tokio::time::sleep(self.plan.settle).await;
        let rss_after = self.server.rss_kib()?;
        let n = connects.load(Ordering::Relaxed);
        let mut row = Row::new(sc, &self.server.name);
        let m = &mut row.metrics;
        m.set("connects", n as f64);
        m.set("failed", failures.load(Ordering::Relaxed) as f64);
        m.set("pushes 200", counts.ok as f64);
        m.set("pushes 404", counts.not_found as f64);
        m.set("frames", frames.load(Ordering::Relaxed) as f64);
        m.set("online after", online as f64);
        m.set("offline within s", settle_secs);
        m.set("RSS before MiB", mib(rss_before));
        m.set("RSS after MiB", mib(rss_after));
        m.set("RSS delta MiB", mib(rss_after) - mib(rss_before));
        m.set(
            "RSS after − start MiB",
            mib(rss_after) - mib(self.baseline_kib),
        );
        if online > 0 {
            row.notes.push(format!(
                "LEAK? {online} of {pool} churned uids still answer 200 five seconds after their sockets closed"
            ));
        }
        if let Some(e) = first_error.lock().unwrap().take() {
            row.notes.push(format!("first connect error: {e}"));
        }
        row.notes.extend(counts.first_problem.take());
        row.notes.extend(odd);
        if n == 0 {
            bail!("no socket connected ({})", row.notes.join("; "));
        }
        let value = n as f64 / secs;
        let mut row = self.finish(row, &meter, value);
        // CPU over the churn itself, not the settle wait.
        row.wall_secs = meter_row.wall;
        row.loadgen_cpu_pct = meter_row.loadgen;
        row.server_cpu_pct = meter_row.server;
        row.other_cpu_pct = meter_row.other;
        Ok(row)
    }
}
