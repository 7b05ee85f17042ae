//! The Pusher scenario: push-serve's Pusher-compatible mode against Soketi, one load client
//! speaking the raw Pusher protocol 7 to both (`/app/{key}` sockets, `pusher:subscribe`,
//! `pusher:ping`/`pusher:pong`) and triggering through the signed HTTP API
//! (`POST /apps/{id}/events`, `auth_signature` over `body_md5`, exactly as the server SDKs do).
//!
//! Per server, in order:
//! 1. `idle-<N>`: server RSS per idle socket subscribed to a public channel of its own,
//!    `(RSS - baseline) / N`.
//! 2. `trigger-rate`: triggers at a fixed rate (1,000/s) to those idle sockets' channels, one
//!    after another, while all of them stay connected; trigger→receive latency percentiles.
//! 3. `fanout-<N>`: one channel with N subscribers, a few triggers in flight; deliveries/s
//!    and send→last-delivery latency.
//! 4. `unicast-max`: one channel per socket, closed-loop triggers from keep-alive backends;
//!    events/s received.
//!
//! Every row carries the server's CPU over the scenario (`/proc/<pid>/stat`) and, where events
//! were delivered, the server CPU-seconds per delivered event: on a small machine where the
//! load client may saturate its own core, that is the measure of the server's efficiency.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{
    close_all, count_frame, new_hist, now_ns, open_many_with, source_addrs, Connector, FanStats,
    HttpClient, RecvStats, Sink, Ws,
};
use crate::server::{free_port, Meter, ServerProc};
use crate::{Machine, Mode, Result, Row, Scenario, ServerRun};

/// The app both servers serve (Soketi's default app; push-serve's config says the same).
pub const APP_ID: &str = "app-id";
pub const APP_KEY: &str = "app-key";
pub const APP_SECRET: &str = "app-secret";
/// The event name of every bench trigger.
const EVENT: &str = "bench";
/// Loopback source addresses for client sockets.
const SOURCES: u8 = 32;

/// Every count and duration of a Pusher run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PusherPlan {
    /// Idle sockets, each subscribed to a public channel of its own; they stay open during
    /// `trigger-rate`.
    pub idle_sockets: usize,
    /// Wait after opening sockets before reading RSS.
    #[serde(with = "crate::secs")]
    pub settle: Duration,
    /// Handshakes (and subscriptions) in flight while opening socket sets.
    pub open_concurrency: usize,
    pub rate_per_sec: u32,
    pub rate_backends: usize,
    #[serde(with = "crate::secs")]
    pub rate_duration: Duration,
    /// Subscribers of the one channel, one `fanout-<N>` scenario each.
    pub fanout_sizes: Vec<usize>,
    /// Triggers in flight (not yet delivered to every subscriber) during fan-out.
    pub fanout_window: usize,
    #[serde(with = "crate::secs")]
    pub fanout_duration: Duration,
    /// Sockets (one channel each) and closed-loop trigger backends of `unicast-max`.
    pub unicast_sockets: usize,
    pub unicast_backends: usize,
    #[serde(with = "crate::secs")]
    pub unicast_duration: Duration,
    /// Time a server gets between SIGTERM and SIGKILL.
    #[serde(with = "crate::secs")]
    pub stop_grace: Duration,
}

impl PusherPlan {
    pub fn for_mode(mode: Mode) -> PusherPlan {
        let s = Duration::from_secs_f64;
        match mode {
            Mode::Full => PusherPlan {
                idle_sockets: 10_000,
                settle: s(3.0),
                open_concurrency: 128,
                rate_per_sec: 1_000,
                rate_backends: 8,
                rate_duration: s(30.0),
                fanout_sizes: vec![1_000, 10_000],
                fanout_window: 8,
                fanout_duration: s(15.0),
                unicast_sockets: 1_000,
                unicast_backends: 32,
                unicast_duration: s(20.0),
                stop_grace: s(5.0),
            },
            Mode::Quick => PusherPlan {
                idle_sockets: 2_000,
                settle: s(1.0),
                open_concurrency: 128,
                rate_per_sec: 1_000,
                rate_backends: 8,
                rate_duration: s(3.0),
                fanout_sizes: vec![250, 1_000],
                fanout_window: 8,
                fanout_duration: s(2.0),
                unicast_sockets: 256,
                unicast_backends: 16,
                unicast_duration: s(2.0),
                stop_grace: s(5.0),
            },
            Mode::Smoke => PusherPlan {
                idle_sockets: 20,
                settle: s(0.3),
                open_concurrency: 16,
                rate_per_sec: 200,
                rate_backends: 2,
                rate_duration: s(0.5),
                fanout_sizes: vec![10, 20],
                fanout_window: 4,
                fanout_duration: s(0.5),
                unicast_sockets: 10,
                unicast_backends: 2,
                unicast_duration: s(0.5),
                stop_grace: s(3.0),
            },
        }
    }

    /// Changes one field by name, as [`crate::Plan::set`] does (`fanout_sizes=1000,10000`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let mut v = serde_json::to_value(&*self)?;
        let obj = v.as_object_mut().expect("a struct");
        let slot = obj
            .get_mut(key)
            .ok_or_else(|| anyhow!("no pusher plan field `{key}`"))?;
        *slot = if key == "fanout_sizes" {
            serde_json::Value::Array(
                value
                    .split(',')
                    .map(|n| n.trim().parse::<u64>().map(Into::into))
                    .collect::<std::result::Result<_, _>>()?,
            )
        } else {
            serde_json::from_str(value).map_err(|e| anyhow!("`{key}={value}`: {e}"))?
        };
        *self = serde_json::from_value(v)?;
        Ok(())
    }

    /// The scenarios this plan runs, in order.
    pub fn scenarios(&self) -> Vec<Scenario> {
        let mut v = vec![
            Scenario::new(
                &format!("idle-{}", self.idle_sockets),
                &format!(
                    "Idle memory: {} sockets, each subscribed to a public channel of its own",
                    self.idle_sockets
                ),
                "KiB/socket",
                false,
            ),
            Scenario::new(
                "trigger-rate",
                &format!(
                    "Triggers at {}/s to the idle sockets' channels (all {} connected), {} s",
                    self.rate_per_sec,
                    self.idle_sockets,
                    self.rate_duration.as_secs_f64()
                ),
                "p99 ms",
                false,
            ),
        ];
        for &n in &self.fanout_sizes {
            v.push(Scenario::new(
                &format!("fanout-{n}"),
                &format!(
                    "Fan-out: one channel, {n} subscribers, {} triggers in flight, {} s",
                    self.fanout_window,
                    self.fanout_duration.as_secs_f64()
                ),
                "deliveries/s",
                true,
            ));
        }
        v.push(Scenario::new(
            "unicast-max",
            &format!(
                "Unicast: {} sockets with a channel each, {} closed-loop trigger backends, {} s",
                self.unicast_sockets,
                self.unicast_backends,
                self.unicast_duration.as_secs_f64()
            ),
            "events/s",
            true,
        ));
        v
    }
}

/// The servers a Pusher run compares.
#[derive(Debug, Clone, Serialize)]
pub enum PusherServer {
    /// push-serve with a `pusher:` section: `<bin> --config <conf>`.
    PushServe { bin: PathBuf },
    /// Soketi through the run script `../shared/peers/soketi/setup.sh DIR` installs
    /// (`DIR/run.sh PORT`), with user authentication off (it would close sockets that do not
    /// sign in within 30 s).
    Soketi { run_script: PathBuf },
}

impl PusherServer {
    pub fn name(&self) -> &'static str {
        match self {
            PusherServer::PushServe { .. } => "push-serve",
            PusherServer::Soketi { .. } => "soketi",
        }
    }
}

/// What a Pusher run does.
#[derive(Debug, Clone)]
pub struct PusherOptions {
    pub mode: Mode,
    pub plan: Option<PusherPlan>,
    pub servers: Vec<PusherServer>,
    pub progress: bool,
    /// Server on CPU 0, the load generator on the others ([`crate::pin_loadgen`] first).
    pub pin: bool,
}

/// Everything a Pusher run measured (`bench/results-pusher-<date>.json`).
#[derive(Debug, Clone, Serialize)]
pub struct PusherReport {
    pub kind: &'static str,
    pub mode: Mode,
    pub started_unix: u64,
    pub machine: Machine,
    pub plan: PusherPlan,
    pub scenarios: Vec<Scenario>,
    pub servers: Vec<ServerRun>,
    pub rows: Vec<Row>,
}

impl PusherReport {
    pub fn tables(&self) -> String {
        crate::tables(&self.scenarios, &self.rows)
    }

    pub fn missing(&self) -> Vec<String> {
        crate::missing(&self.scenarios, &self.servers, &self.rows)
    }
}

/// Runs every scenario against every server, one server at a time.
pub async fn run(opts: PusherOptions) -> Result<PusherReport> {
    let plan = opts
        .plan
        .clone()
        .unwrap_or_else(|| PusherPlan::for_mode(opts.mode));
    let mut machine = crate::machine();
    machine.placement = if opts.pin {
        format!(
            "server pinned to CPU {}, load generator to the other {}",
            crate::server::SERVER_CPU,
            machine.cpus - 1
        )
    } else {
        format!("server and load generator share all {} CPUs", machine.cpus)
    };
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "push-bench-pusher-{}-{started_unix}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let scenarios = plan.scenarios();
    let mut rows = Vec::new();
    let mut servers = Vec::new();
    for spec in &opts.servers {
        if opts.progress {
            eprintln!("push-bench: === {} (Pusher) ===", spec.name());
        }
        let (run, mut got) = run_server(spec, &plan, &scenarios, &opts, &dir).await;
        for sc in &scenarios {
            if !got.iter().any(|r| r.scenario == sc.id) {
                let why = run
                    .error
                    .clone()
                    .unwrap_or_else(|| "scenario did not run".into());
                got.push(Row::failed(sc, spec.name(), why));
            }
        }
        rows.extend(got);
        servers.push(run);
    }
    crate::set_ratios(&scenarios, &mut rows);
    if rows.iter().all(|r| r.ok) {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(PusherReport {
        kind: "pusher",
        mode: opts.mode,
        started_unix,
        machine,
        plan,
        scenarios,
        servers,
        rows,
    })
}

/// Starts one server on a free loopback port.
async fn start(spec: &PusherServer, dir: &Path, pin: bool) -> Result<ServerProc> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}").parse()?;
    let cmd = match spec {
        PusherServer::PushServe { bin } => {
            let conf = dir.join("push-serve-pusher.yaml");
            std::fs::write(
                &conf,
                format!(
                    "addr: \"{addr}\"\npassword: \"push-bench-password\"\n\
                     pusher:\n  apps:\n    - id: \"{APP_ID}\"\n      key: \"{APP_KEY}\"\n      \
                     secret: \"{APP_SECRET}\"\n"
                ),
            )
            .with_context(|| format!("write {}", conf.display()))?;
            let mut cmd = Command::new(bin);
            cmd.arg("--config").arg(&conf);
            cmd
        }
        PusherServer::Soketi { run_script } => {
            let mut cmd = Command::new("bash");
            cmd.arg(run_script)
                .arg(port.to_string())
                .env("SOKETI_DEFAULT_APP_ID", APP_ID)
                .env("SOKETI_DEFAULT_APP_KEY", APP_KEY)
                .env("SOKETI_DEFAULT_APP_SECRET", APP_SECRET)
                .env("SOKETI_DEFAULT_APP_USER_AUTHENTICATION", "false");
            cmd
        }
    };
    ServerProc::launch(spec.name(), cmd, addr, dir, pin).await
}

async fn run_server(
    spec: &PusherServer,
    plan: &PusherPlan,
    scenarios: &[Scenario],
    opts: &PusherOptions,
    dir: &Path,
) -> (ServerRun, Vec<Row>) {
    let mut run = ServerRun {
        name: spec.name().into(),
        command: String::new(),
        started: false,
        error: None,
        baseline_rss_kib: None,
        stop: None,
        log_tail: String::new(),
    };
    let mut rows = Vec::new();
    let mut server = match start(spec, dir, opts.pin).await {
        Ok(s) => s,
        Err(e) => {
            run.error = Some(format!("start failed: {e:#}"));
            return (run, rows);
        }
    };
    run.started = true;
    run.command = server.command.clone();
    let mut b = Bench {
        conn: Arc::new(Connector::new(
            server.addr,
            crate::KeyMaker::new("", 1),
            source_addrs(SOURCES),
        )),
        server: &mut server,
        plan,
        progress: opts.progress,
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
    (run, rows)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The request target of a signed `POST /apps/{id}/events` with `body`, as the Pusher server
/// SDKs sign it: HMAC-SHA256 with the app secret over `POST\n<path>\n<sorted query>`, the
/// query holding `auth_key`, `auth_timestamp`, `auth_version` and the body's MD5.
pub fn signed_events_target(body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    use md5::Digest;
    let path = format!("/apps/{APP_ID}/events");
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let query = format!(
        "auth_key={APP_KEY}&auth_timestamp={ts}&auth_version=1.0&body_md5={}",
        hex(&md5::Md5::digest(body))
    );
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(APP_SECRET.as_bytes()).expect("any key length");
    mac.update(format!("POST\n{path}\n{query}").as_bytes());
    let sig = hex(&mac.finalize().into_bytes());
    format!("{path}?{query}&auth_signature={sig}")
}

/// A trigger's body: the event's `data` is the string `t<send ns>s<sequence>`.
fn trigger_body(channel: &str, t: u64, seq: u64) -> String {
    format!("{{\"name\":\"{EVENT}\",\"channel\":\"{channel}\",\"data\":\"t{t}s{seq}\"}}")
}

/// `(t, s)` from a delivered event `{"event":"bench","channel":..,"data":"t<T>s<S>"}`, with
/// or without spaces after the colons.
pub fn parse_pusher_stamp(text: &str) -> Option<(u64, u64)> {
    let i = text.find("\"data\"")? + 6;
    let rest = text[i..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix("\"t")?;
    let (t, rest) = digits(rest)?;
    let (s, _) = digits(rest.strip_prefix('s')?)?;
    Some((t, s))
}

fn digits(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    Some((s[..end].parse().ok()?, &s[end..]))
}

/// Opens a Pusher socket and subscribes it to `channel`: waits for
/// `pusher:connection_established`, sends `pusher:subscribe`, waits for
/// `pusher_internal:subscription_succeeded`.
async fn subscribed(conn: Arc<Connector>, channel: String) -> Result<Ws> {
    let mut ws = conn
        .open_path(&format!(
            "/app/{APP_KEY}?protocol=7&client=push-bench&version=0.1"
        ))
        .await?;
    let fut = async {
        expect_event(&mut ws, "pusher:connection_established").await?;
        ws.send(Message::text(format!(
            "{{\"event\":\"pusher:subscribe\",\"data\":{{\"auth\":\"\",\"channel\":\"{channel}\"}}}}"
        )))
        .await?;
        expect_event(&mut ws, "pusher_internal:subscription_succeeded").await?;
        Ok::<(), anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .map_err(|_| anyhow!("subscribe to {channel} timed out"))??;
    Ok(ws)
}

async fn expect_event(ws: &mut Ws, event: &str) -> Result<()> {
    let needle = format!("\"event\":\"{event}\"");
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            let t = t.as_str();
            if t.replace("\": \"", "\":\"").contains(&needle) {
                return Ok(());
            }
            if t.contains("pusher:error") || t.contains("subscription_error") {
                bail!("waiting for {event}: {t}");
            }
        }
    }
    bail!("closed while waiting for {event}")
}

/// Reads a subscribed socket until it closes, answering `pusher:ping` with `pusher:pong`
/// (WebSocket pings are answered by tungstenite while reading) and counting bench events.
fn spawn_reader(mut ws: Ws, sink: Sink) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(text)) => {
                    let t = text.as_str();
                    if t.contains("\"pusher:ping\"") {
                        let pong = Message::text("{\"event\":\"pusher:pong\",\"data\":{}}");
                        if ws.send(pong).await.is_err() {
                            break;
                        }
                    } else {
                        count_frame(&sink, parse_pusher_stamp(t));
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        match &sink {
            Sink::Recv(s) => s.closed.fetch_add(1, Ordering::Relaxed),
            Sink::Fan(f) => f.closed.fetch_add(1, Ordering::Relaxed),
        };
    })
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        ms(h.value_at_quantile(q))
    }
}

/// Tallies of trigger replies.
#[derive(Default)]
struct Triggers {
    ok: u64,
    refused: u64,
    errors: u64,
    first_problem: Option<String>,
    max_lag_ns: u64,
}

impl Triggers {
    fn add(&mut self, o: Triggers) {
        self.ok += o.ok;
        self.refused += o.refused;
        self.errors += o.errors;
        self.max_lag_ns = self.max_lag_ns.max(o.max_lag_ns);
        if self.first_problem.is_none() {
            self.first_problem = o.first_problem;
        }
    }

    /// Sends one signed trigger to `channel` stamped with now and `seq`.
    async fn send(&mut self, http: &mut HttpClient, channel: &str, seq: u64) {
        let body = trigger_body(channel, now_ns(), seq);
        let target = signed_events_target(body.as_bytes());
        match http.request("POST", &target, body.as_bytes()).await {
            Ok(r) if r.status == 200 => self.ok += 1,
            Ok(r) => {
                self.refused += 1;
                self.first_problem.get_or_insert_with(|| {
                    format!(
                        "trigger answered {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    )
                });
            }
            Err(e) => {
                self.errors += 1;
                self.first_problem
                    .get_or_insert_with(|| format!("trigger: {e:#}"));
            }
        }
    }
}

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

struct Bench<'a> {
    server: &'a mut ServerProc,
    conn: Arc<Connector>,
    plan: &'a PusherPlan,
    progress: bool,
    baseline_kib: u64,
}

impl Bench<'_> {
    fn progress(&self, msg: &str) {
        if self.progress {
            eprintln!("push-bench: [{}] {msg}", self.server.name);
        }
    }

    fn alive(&mut self) -> Result<()> {
        match self.server.exited() {
            Some(status) => bail!("server exited ({status}); log: {}", self.server.log_tail()),
            None => Ok(()),
        }
    }

    /// Opens `n` sockets subscribed to `channel_of(i)`, each read into `sink`.
    async fn subscribers(
        &self,
        n: usize,
        channel_of: impl Fn(usize) -> String,
        sink: &Sink,
        held: &mut Vec<JoinHandle<()>>,
    ) -> (usize, Option<String>) {
        let opened = open_many_with(
            n,
            self.plan.open_concurrency,
            |i| subscribed(self.conn.clone(), channel_of(i)),
            |_, ws| held.push(spawn_reader(ws, sink.clone())),
        )
        .await;
        let note = (opened.failed > 0).then(|| {
            format!(
                "{} of {n} sockets failed to open: {}",
                opened.failed,
                opened.first_error.unwrap_or_default()
            )
        });
        (opened.failed, note)
    }

    /// One socket, one trigger, one delivery: the signing and the frame parsing work on this
    /// server. Then the baseline RSS.
    async fn prepare(&mut self) -> Result<u64> {
        let stats = RecvStats::new();
        let mut held = Vec::new();
        let (_, note) = self
            .subscribers(
                1,
                |_| "prepare".into(),
                &Sink::Recv(stats.clone()),
                &mut held,
            )
            .await;
        if let Some(n) = note {
            bail!("prepare: {n}");
        }
        let mut http = HttpClient::new(self.server.addr);
        let mut t = Triggers::default();
        t.send(&mut http, "prepare", 0).await;
        if let Some(p) = t.first_problem {
            bail!("prepare: {p}");
        }
        let got = wait_for(Duration::from_secs(5), || {
            stats.frames.load(Ordering::Relaxed) >= 1
        })
        .await;
        close_all(&mut held).await;
        if !got {
            bail!("prepare: the trigger's event did not arrive within 5 s");
        }
        drop(http);
        tokio::time::sleep(self.plan.settle).await;
        let base = self.server.rss_kib()?;
        self.baseline_kib = base;
        self.progress(&format!(
            "pid {} on {}, trigger→event ok, baseline RSS {:.1} MiB",
            self.server.pid,
            self.server.addr,
            mib(base)
        ));
        Ok(base)
    }

    /// Marks the row ok with its primary value, adds the CPU columns and, when `deliveries`
    /// is set, the server CPU per delivered event.
    fn finish(&self, mut row: Row, meter: &Meter, value: f64, deliveries: Option<u64>) -> Row {
        let cpu = meter.finish();
        row.wall_secs = cpu.wall;
        row.loadgen_cpu_pct = cpu.loadgen;
        row.server_cpu_pct = cpu.server;
        row.other_cpu_pct = cpu.other;
        row.value = Some(value);
        row.metrics.set(&row.primary.clone(), value);
        if let Some(d) = deliveries.filter(|&d| d > 0) {
            let cpu_secs = cpu.server / 100.0 * cpu.wall;
            row.metrics.set("server CPU-s", cpu_secs);
            row.metrics
                .set("server CPU µs/delivery", cpu_secs * 1e6 / d as f64);
            row.metrics
                .set("deliveries per server CPU-s", d as f64 / cpu_secs.max(1e-9));
        }
        row.ok = value.is_finite();
        if !row.ok {
            row.error = Some(format!("{} could not be computed", row.primary));
        }
        row
    }

    async fn run_all(&mut self, scenarios: &[Scenario], rows: &mut Vec<Row>) {
        let name = self.server.name.clone();
        let mut it = scenarios.iter();
        let idle_sc = it.next().expect("idle").clone();
        let rate_sc = it.next().expect("trigger-rate").clone();

        let idle_stats = RecvStats::new();
        let mut idle: Vec<JoinHandle<()>> = Vec::new();
        let r = self.idle(&idle_sc, &idle_stats, &mut idle).await;
        rows.push(r.unwrap_or_else(|e| Row::failed(&idle_sc, &name, format!("{e:#}"))));
        let r = match self.alive() {
            Ok(()) => self.trigger_rate(&rate_sc, &idle_stats, idle.len()).await,
            Err(e) => Err(e),
        };
        rows.push(r.unwrap_or_else(|e| Row::failed(&rate_sc, &name, format!("{e:#}"))));
        close_all(&mut idle).await;
        tokio::time::sleep(self.plan.settle).await;

        for sc in it {
            let r = match self.alive() {
                Ok(()) if sc.id == "unicast-max" => self.unicast_max(sc).await,
                Ok(()) => {
                    let n = sc.id["fanout-".len()..].parse().unwrap_or(0);
                    self.fanout(sc, n).await
                }
                Err(e) => Err(e),
            };
            rows.push(r.unwrap_or_else(|e| Row::failed(sc, &name, format!("{e:#}"))));
            tokio::time::sleep(self.plan.settle / 2).await;
        }
    }

    /// Opens the idle sockets (channel `idle-<i>` each), waits, reads RSS.
    async fn idle(
        &mut self,
        sc: &Scenario,
        stats: &Arc<RecvStats>,
        held: &mut Vec<JoinHandle<()>>,
    ) -> Result<Row> {
        self.alive()?;
        let n = self.plan.idle_sockets;
        self.progress(&format!("idle: opening {n} subscribed sockets"));
        let meter = Meter::start(self.server);
        let t = Instant::now();
        let (failed, note) = self
            .subscribers(n, |i| format!("idle-{i}"), &Sink::Recv(stats.clone()), held)
            .await;
        let open_secs = t.elapsed().as_secs_f64();
        tokio::time::sleep(self.plan.settle).await;
        self.alive()?;
        let rss = self.server.rss_kib()?;
        let dropped = stats.closed.load(Ordering::Relaxed) as usize;
        let live = held.len().saturating_sub(dropped);
        self.progress(&format!(
            "idle {live} sockets: RSS {:.1} MiB ({failed} failed)",
            mib(rss)
        ));
        let mut row = Row::new(sc, &self.server.name);
        row.metrics.set("sockets", live as f64);
        row.metrics.set("failed", failed as f64);
        row.metrics.set("dropped by server", dropped as f64);
        row.metrics
            .set("subscribed/s", held.len() as f64 / open_secs.max(1e-9));
        row.metrics.set("baseline MiB", mib(self.baseline_kib));
        row.metrics.set("RSS MiB", mib(rss));
        row.notes.extend(note);
        if live == 0 {
            bail!("no socket opened ({})", row.notes.join("; "));
        }
        let per = (rss as f64 - self.baseline_kib as f64) / live as f64;
        Ok(self.finish(row, &meter, per, None))
    }

    /// Open-loop triggers at a fixed rate, channel `idle-<i mod N>` for the i-th.
    async fn trigger_rate(
        &mut self,
        sc: &Scenario,
        stats: &Arc<RecvStats>,
        idle_sockets: usize,
    ) -> Result<Row> {
        let p = self.plan;
        anyhow::ensure!(idle_sockets > 0, "no idle socket to trigger to");
        let channels = p.idle_sockets as u64;
        self.progress(&format!(
            "trigger-rate: {}/s for {:.1} s",
            p.rate_per_sec,
            p.rate_duration.as_secs_f64()
        ));
        let dropped_before = stats.closed.load(Ordering::Relaxed);
        let meter = Meter::start(self.server);
        stats.since_ns.store(now_ns(), Ordering::Relaxed);
        let received_before = stats.frames.load(Ordering::Relaxed);
        let total = (p.rate_per_sec as f64 * p.rate_duration.as_secs_f64()).round() as u64;
        let interval_ns = 1e9 / p.rate_per_sec.max(1) as f64;
        let t0 = tokio::time::Instant::now() + Duration::from_millis(20);
        let step = p.rate_backends.max(1) as u64;
        let mut backends = Vec::new();
        for b in 0..step {
            let addr = self.server.addr;
            backends.push(tokio::spawn(async move {
                let mut http = HttpClient::new(addr);
                let mut c = Triggers::default();
                let mut i = b;
                while i < total {
                    let at = t0 + Duration::from_nanos((i as f64 * interval_ns) as u64);
                    tokio::time::sleep_until(at).await;
                    let lag = tokio::time::Instant::now().saturating_duration_since(at);
                    c.max_lag_ns = c.max_lag_ns.max(lag.as_nanos() as u64);
                    c.send(&mut http, &format!("idle-{}", i % channels), i)
                        .await;
                    i += step;
                }
                c
            }));
        }
        let mut counts = Triggers::default();
        for h in backends {
            counts.add(h.await?);
        }
        let send_secs = (tokio::time::Instant::now() - t0).as_secs_f64();
        let want = received_before + counts.ok;
        wait_for(Duration::from_secs(3), || {
            stats.frames.load(Ordering::Relaxed) >= want
        })
        .await;
        let received = stats.frames.load(Ordering::Relaxed) - received_before;
        let h = stats.hist.lock().unwrap().clone();
        let mut row = Row::new(sc, &self.server.name);
        let m = &mut row.metrics;
        m.set("idle sockets", idle_sockets as f64);
        m.set("triggers", total as f64);
        m.set("sent/s", total as f64 / send_secs);
        m.set("received", received as f64);
        m.set("lost", counts.ok.saturating_sub(received) as f64);
        m.set("not 200", (counts.refused + counts.errors) as f64);
        m.set("p50 ms", pct(&h, 0.50));
        m.set("p99 ms", pct(&h, 0.99));
        m.set("p99.9 ms", pct(&h, 0.999));
        m.set("max ms", if h.is_empty() { f64::NAN } else { ms(h.max()) });
        m.set("send lag max ms", ms(counts.max_lag_ns));
        m.set(
            "idle dropped",
            (stats.closed.load(Ordering::Relaxed) - dropped_before) as f64,
        );
        row.notes.extend(counts.first_problem.take());
        if received == 0 {
            bail!("no event arrived ({})", row.notes.join("; "));
        }
        let p99 = pct(&h, 0.99);
        Ok(self.finish(row, &meter, p99, Some(received)))
    }

    /// One channel with `n` subscribers; triggers keep `fanout_window` events in flight.
    async fn fanout(&mut self, sc: &Scenario, n: usize) -> Result<Row> {
        let p = self.plan;
        anyhow::ensure!(n > 0, "fan-out of no socket");
        let channel = format!("fan-{n}");
        // Enough slots for any rate this machine reaches; the sender stops when they run out.
        let cap = 400_000;
        let fan = FanStats::new(n as u32, cap);
        let mut handles = Vec::with_capacity(n);
        self.progress(&format!("{}: opening {n} subscribers", sc.id));
        let (_, note) = self
            .subscribers(
                n,
                |_| channel.clone(),
                &Sink::Fan(fan.clone()),
                &mut handles,
            )
            .await;
        let full = handles.len() as u32;
        if full == 0 {
            bail!("no subscriber opened ({})", note.unwrap_or_default());
        }
        fan.sockets.store(full, Ordering::Relaxed);
        self.progress(&format!(
            "{}: {full} subscribers, {:.1} s",
            sc.id,
            p.fanout_duration.as_secs_f64()
        ));
        let meter = Meter::start(self.server);
        let mut http = HttpClient::new(self.server.addr);
        let mut counts = Triggers::default();
        let w = p.fanout_window.max(1);
        let start = Instant::now();
        let deadline = start + p.fanout_duration;
        let (mut sent, mut done, mut window_timeouts) = (0usize, 0usize, 0u64);
        while Instant::now() < deadline && sent < cap {
            while sent - done < w && sent < cap {
                fan.sent_ns[sent].store(now_ns(), Ordering::Relaxed);
                counts.send(&mut http, &channel, sent as u64).await;
                sent += 1;
            }
            let notified = fan.complete.notified();
            while done < sent && fan.count[done].load(Ordering::Acquire) >= full {
                done += 1;
            }
            if sent - done >= w
                && tokio::time::timeout(Duration::from_secs(2), notified)
                    .await
                    .is_err()
            {
                // Not delivered everywhere in 2 s: count it and move the window on.
                window_timeouts += 1;
                done += 1;
            }
            if counts.errors + counts.refused > 0 {
                break;
            }
        }
        wait_for(Duration::from_secs(3), || {
            (done..sent).all(|k| fan.count[k].load(Ordering::Relaxed) >= full)
        })
        .await;
        let deliveries = fan.deliveries.load(Ordering::Relaxed);
        let mut h = new_hist();
        let mut incomplete = 0u64;
        let mut last_seen = 0u64;
        for k in 0..sent {
            let last = fan.last_ns[k].load(Ordering::Relaxed);
            last_seen = last_seen.max(last);
            if fan.count[k].load(Ordering::Relaxed) < full {
                incomplete += 1;
            } else {
                let _ = h.record(
                    last.saturating_sub(fan.sent_ns[k].load(Ordering::Relaxed))
                        .max(1),
                );
            }
        }
        let first = fan.sent_ns[0].load(Ordering::Relaxed);
        let secs = (last_seen.saturating_sub(first) as f64 / 1e9).max(1e-9);
        let row_meter = meter.finish();
        let closed = fan.closed.load(Ordering::Relaxed);
        close_all(&mut handles).await;
        let mut row = Row::new(sc, &self.server.name);
        let m = &mut row.metrics;
        m.set("subscribers", full as f64);
        m.set("triggers", sent as f64);
        m.set("deliveries", deliveries as f64);
        m.set("incomplete", incomplete as f64);
        m.set("last p50 ms", pct(&h, 0.5));
        m.set("last p99 ms", pct(&h, 0.99));
        row.notes.extend(note);
        if closed > 0 {
            row.notes
                .push(format!("{closed} sockets closed by the server"));
        }
        if window_timeouts > 0 {
            row.notes.push(format!(
                "{window_timeouts} times an event was not delivered everywhere within 2 s"
            ));
        }
        row.notes.extend(counts.first_problem.take());
        if deliveries == 0 {
            bail!("nothing delivered ({})", row.notes.join("; "));
        }
        let mut row = self.finish(row, &meter, deliveries as f64 / secs, Some(deliveries));
        row.loadgen_cpu_pct = row_meter.loadgen;
        Ok(row)
    }

    /// Closed-loop triggers from `unicast_backends` keep-alive clients, each to the next of
    /// `unicast_sockets` channels with one subscriber each.
    async fn unicast_max(&mut self, sc: &Scenario) -> Result<Row> {
        let p = self.plan;
        let stats = RecvStats::new();
        let mut handles = Vec::new();
        let n = p.unicast_sockets.max(1);
        self.progress(&format!("unicast-max: opening {n} sockets"));
        let (_, note) = self
            .subscribers(
                n,
                |i| format!("uni-{i}"),
                &Sink::Recv(stats.clone()),
                &mut handles,
            )
            .await;
        if handles.is_empty() {
            bail!("no socket opened ({})", note.unwrap_or_default());
        }
        self.progress(&format!(
            "unicast-max: {} backends for {:.1} s",
            p.unicast_backends,
            p.unicast_duration.as_secs_f64()
        ));
        let meter = Meter::start(self.server);
        stats.since_ns.store(now_ns(), Ordering::Relaxed);
        let start = Instant::now();
        let deadline = start + p.unicast_duration;
        let step = p.unicast_backends.max(1) as u64;
        let mut backends = Vec::new();
        for b in 0..step {
            let addr = self.server.addr;
            backends.push(tokio::spawn(async move {
                let mut http = HttpClient::new(addr);
                let mut c = Triggers::default();
                let mut i = b;
                while Instant::now() < deadline {
                    c.send(&mut http, &format!("uni-{}", i % n as u64), i).await;
                    i += step;
                    if c.errors > 100 {
                        break;
                    }
                }
                c
            }));
        }
        let mut counts = Triggers::default();
        for h in backends {
            counts.add(h.await?);
        }
        let secs = start.elapsed().as_secs_f64();
        wait_for(Duration::from_secs(3), || {
            stats.frames.load(Ordering::Relaxed) >= counts.ok
        })
        .await;
        let received = stats.frames.load(Ordering::Relaxed);
        let h = stats.hist.lock().unwrap().clone();
        let row_meter = meter.finish();
        let closed = stats.closed.load(Ordering::Relaxed);
        close_all(&mut handles).await;
        let mut row = Row::new(sc, &self.server.name);
        let m = &mut row.metrics;
        m.set("sockets", n as f64);
        m.set("triggers 200", counts.ok as f64);
        m.set("received", received as f64);
        m.set("lost", counts.ok.saturating_sub(received) as f64);
        m.set("not 200", (counts.refused + counts.errors) as f64);
        m.set("p50 ms", pct(&h, 0.5));
        m.set("p99 ms", pct(&h, 0.99));
        row.notes.extend(note);
        if closed > 0 {
            row.notes
                .push(format!("{closed} sockets closed by the server"));
        }
        row.notes.extend(counts.first_problem.take());
        if received == 0 {
            bail!("no event arrived ({})", row.notes.join("; "));
        }
        let mut row = self.finish(row, &meter, received as f64 / secs, Some(received));
        row.loadgen_cpu_pct = row_meter.loadgen;
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_parse_from_pusher_events() {
        assert_eq!(
            parse_pusher_stamp(r#"{"event":"bench","channel":"c","data":"t123s7"}"#),
            Some((123, 7))
        );
        assert_eq!(
            parse_pusher_stamp(r#"{"event": "bench", "channel": "c", "data": "t5s0"}"#),
            Some((5, 0))
        );
        assert_eq!(
            parse_pusher_stamp(r#"{"event":"pusher:pong","data":"{}"}"#),
            None
        );
    }

    #[test]
    fn triggers_are_signed_as_the_sdks_sign_them() {
        // The Pusher HTTP API documentation's worked example uses these values; here the
        // shape: the query in sorted order, a 64-hex signature last.
        let t = signed_events_target(b"{}");
        assert!(t.starts_with("/apps/app-id/events?auth_key=app-key&auth_timestamp="));
        assert!(t.contains("&auth_version=1.0&body_md5=99914b932bd37a50b983c5e7c90ae93b&"));
        let sig = t.rsplit_once("auth_signature=").unwrap().1;
        assert_eq!(sig.len(), 64);
    }
}
