//! `push-bench`: a load generator that compares push-serve with the reference peers in
//! `bench/peers/` on the same wire contract (docs/CONTRACT.md).
//!
//! [`run`] starts each server in turn as a direct child process on a free loopback port, runs
//! every scenario against it, stops it (SIGTERM, then SIGKILL), and returns a [`Report`] with one
//! [`Row`] per (scenario, server). Scenarios, in the order they run on each server:
//!
//! 1. `idle-<N>` / `idle-max`: server RSS per idle socket (one uid each), `(RSS - baseline) / N`.
//!    Sockets are added cumulatively; `idle-max` adds sockets held by two child processes
//!    (`push-bench hold`) up to ~19,000 so neither side passes its 20k open-files limit.
//! 2. `unicast-rate`: pushes at a fixed rate (1,000/s) to uids with one socket each while the
//!    largest idle set is still connected; push→receive latency percentiles.
//! 3. `connect-storm`: N sockets opened as fast as bounded concurrency allows.
//! 4. `unicast-max`: closed-loop pushes from C keep-alive backends to distinct uids; pushes/s
//!    counted by the receivers, and latency.
//! 5. `fanout`: one uid, many sockets; deliveries/s and send→last-delivery latency.
//!    `fanout-topic` and `fanout-broadcast` do the same through `POST /publish` to a topic that
//!    many uids follow and through `POST /broadcast`; push-serve only (the peers implement the
//!    seed contract, so their rows say n/a).
//! 6. `churn`: sockets connect and disconnect while pushes flow; then every churned uid must
//!    answer 404 (no socket leaked) and RSS is compared with before.
//!
//! Each row also carries the loadgen's own CPU (getrusage) and the server's (/proc/pid/stat)
//! over the scenario, since on a small machine both share the cores.

mod client;
mod hold;
mod keys;
pub mod pusher;
pub mod scale;
mod scenarios;
mod server;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

pub use hold::{hold, HoldArgs};
pub use keys::KeyMaker;

/// Errors of this crate.
pub type Result<T> = anyhow::Result<T>;

/// How big and long the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Tiny counts, well under a second per scenario: checks that everything works.
    Smoke,
    /// Realistic counts, a few seconds per scenario (under a minute for three servers).
    Quick,
    /// The real benchmark (about ten minutes for three servers).
    Full,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Mode, String> {
        match s {
            "smoke" => Ok(Mode::Smoke),
            "quick" => Ok(Mode::Quick),
            "full" => Ok(Mode::Full),
            _ => Err(format!("unknown mode `{s}` (smoke, quick or full)")),
        }
    }
}

/// Every count and duration of a run; [`Plan::for_mode`] gives the standard ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Idle sockets held in-process, ascending (cumulative); the last set stays open during
    /// `unicast-rate`.
    pub idle_sizes: Vec<usize>,
    /// Total idle sockets for `idle-max` (the extra ones held by two `hold` child processes).
    pub idle_max_total: Option<usize>,
    /// Wait after opening sockets before reading RSS.
    #[serde(with = "secs")]
    pub settle: Duration,
    /// Handshakes in flight while opening socket sets.
    pub open_concurrency: usize,
    pub rate_per_sec: u32,
    pub rate_uids: usize,
    pub rate_backends: usize,
    #[serde(with = "secs")]
    pub rate_duration: Duration,
    pub storm_sockets: usize,
    pub storm_concurrency: usize,
    pub unicast_uids: usize,
    pub unicast_backends: usize,
    #[serde(with = "secs")]
    pub unicast_duration: Duration,
    pub fanout_sockets: usize,
    /// Messages in flight (not yet delivered to every socket) during fan-out.
    pub fanout_window: usize,
    #[serde(with = "secs")]
    pub fanout_duration: Duration,
    #[serde(with = "secs")]
    pub churn_duration: Duration,
    pub churn_workers: usize,
    pub churn_uids: usize,
    pub churn_push_rate: u32,
    /// Time a server gets between SIGTERM and SIGKILL.
    #[serde(with = "secs")]
    pub stop_grace: Duration,
}

impl Plan {
    pub fn for_mode(mode: Mode) -> Plan {
        let s = Duration::from_secs_f64;
        match mode {
            Mode::Full => Plan {
                idle_sizes: vec![1_000, 10_000],
                idle_max_total: Some(19_000),
                settle: s(2.0),
                open_concurrency: 256,
                rate_per_sec: 1_000,
                rate_uids: 1_000,
                rate_backends: 8,
                rate_duration: s(45.0),
                storm_sockets: 15_000,
                storm_concurrency: 256,
                unicast_uids: 1_000,
                unicast_backends: 32,
                unicast_duration: s(30.0),
                fanout_sockets: 1_000,
                fanout_window: 8,
                fanout_duration: s(20.0),
                churn_duration: s(30.0),
                churn_workers: 64,
                churn_uids: 256,
                churn_push_rate: 1_000,
                stop_grace: s(3.0),
            },
            Mode::Quick => Plan {
                idle_sizes: vec![1_000, 10_000],
                idle_max_total: None,
                settle: s(1.0),
                open_concurrency: 256,
                rate_per_sec: 1_000,
                rate_uids: 500,
                rate_backends: 8,
                rate_duration: s(3.0),
                storm_sockets: 5_000,
                storm_concurrency: 256,
                unicast_uids: 512,
                unicast_backends: 16,
                unicast_duration: s(3.0),
                fanout_sockets: 250,
                fanout_window: 8,
                fanout_duration: s(2.0),
                churn_duration: s(2.0),
                churn_workers: 32,
                churn_uids: 128,
                churn_push_rate: 500,
                stop_grace: s(2.0),
            },
            Mode::Smoke => Plan {
                idle_sizes: vec![20],
                idle_max_total: None,
                settle: s(0.2),
                open_concurrency: 32,
                rate_per_sec: 1_000,
                rate_uids: 20,
                rate_backends: 4,
                rate_duration: s(0.5),
                storm_sockets: 50,
                storm_concurrency: 16,
                unicast_uids: 20,
                unicast_backends: 4,
                unicast_duration: s(0.5),
                fanout_sockets: 20,
                fanout_window: 4,
                fanout_duration: s(0.5),
                churn_duration: s(0.5),
                churn_workers: 8,
                churn_uids: 16,
                churn_push_rate: 200,
                stop_grace: s(1.0),
            },
        }
    }

    /// Changes one field by name: `rate_duration=10` (seconds for durations),
    /// `idle_sizes=1000,5000`, `idle_max_total=none`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let mut v = serde_json::to_value(&*self)?;
        let obj = v.as_object_mut().expect("a struct");
        let slot = obj
            .get_mut(key)
            .ok_or_else(|| anyhow::anyhow!("no plan field `{key}`"))?;
        *slot = if value == "none" {
            serde_json::Value::Null
        } else if key == "idle_sizes" {
            serde_json::Value::Array(
                value
                    .split(',')
                    .map(|n| n.trim().parse::<u64>().map(Into::into))
                    .collect::<std::result::Result<_, _>>()?,
            )
        } else {
            serde_json::from_str(value).map_err(|e| anyhow::anyhow!("`{key}={value}`: {e}"))?
        };
        *self = serde_json::from_value(v)?;
        Ok(())
    }

    /// The scenarios this plan runs, in order.
    pub fn scenarios(&self) -> Vec<Scenario> {
        let mut v = Vec::new();
        for &n in &self.idle_sizes {
            v.push(Scenario::new(
                &format!("idle-{n}"),
                &format!("Idle memory: {n} sockets, one uid each"),
                "KiB/socket",
                false,
            ));
        }
        if let Some(n) = self.idle_max_total {
            v.push(Scenario::new(
                "idle-max",
                &format!("Idle memory: up to {n} sockets (the 20k open-files limit)"),
                "KiB/socket",
                false,
            ));
        }
        let idle = self.idle_sizes.last().copied().unwrap_or(0);
        v.push(Scenario::new(
            "unicast-rate",
            &format!(
                "Unicast at {} pushes/s to {} uids, {idle} idle sockets connected, {} s",
                self.rate_per_sec,
                self.rate_uids,
                self.rate_duration.as_secs_f64()
            ),
            "p99 ms",
            false,
        ));
        v.push(Scenario::new(
            "connect-storm",
            &format!(
                "Connect storm: {} sockets, {} handshakes in flight",
                self.storm_sockets, self.storm_concurrency
            ),
            "handshakes/s",
            true,
        ));
        v.push(Scenario::new(
            "unicast-max",
            &format!(
                "Unicast, max throughput: {} uids, {} keep-alive backends, {} s",
                self.unicast_uids,
                self.unicast_backends,
                self.unicast_duration.as_secs_f64()
            ),
            "pushes/s",
            true,
        ));
        v.push(Scenario::new(
            "fanout",
            &format!(
                "Fan-out: one uid with {} sockets, {} s: latency with 1 message in flight (first 30 %), deliveries/s with {} in flight",
                self.fanout_sockets,
                self.fanout_duration.as_secs_f64(),
                self.fanout_window
            ),
            "deliveries/s",
            true,
        ));
        for (id, what, how) in [
            (
                "fanout-topic",
                "a topic followed by",
                "POST /publish, keys granting the topic",
            ),
            ("fanout-broadcast", "broadcast to", "POST /broadcast"),
        ] {
            let mut sc = Scenario::new(
                id,
                &format!(
                    "Fan-out, {what} {} sockets of as many uids ({how}), {} s; push-serve only",
                    self.fanout_sockets,
                    self.fanout_duration.as_secs_f64()
                ),
                "deliveries/s",
                true,
            );
            sc.push_serve_only = true;
            v.push(sc);
        }
        v.push(Scenario::new(
            "churn",
            &format!(
                "Churn: {} connect/disconnect loops over {} uids with {} pushes/s, {} s",
                self.churn_workers,
                self.churn_uids,
                self.churn_push_rate,
                self.churn_duration.as_secs_f64()
            ),
            "connects/s",
            true,
        ));
        v
    }
}

/// One scenario: its id (stable across servers), a title, and the metric the ratio is taken on.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub id: String,
    pub title: String,
    pub primary: String,
    pub higher_is_better: bool,
    /// Uses push-serve's endpoints beyond the seed contract (topics, broadcast): the peers'
    /// rows are "n/a", not failures.
    pub push_serve_only: bool,
}

impl Scenario {
    fn new(id: &str, title: &str, primary: &str, higher_is_better: bool) -> Scenario {
        Scenario {
            id: id.into(),
            title: title.into(),
            primary: primary.into(),
            higher_is_better,
            push_serve_only: false,
        }
    }

    /// Whether `server` can run this scenario.
    pub fn applies_to(&self, server: &str) -> bool {
        !self.push_serve_only || server.starts_with("push-serve")
    }
}

/// The error of a row for a scenario its server does not implement.
pub const NOT_APPLICABLE: &str = "n/a (seed contract only)";

/// How to start one server: `program args_before_config... <conf.yaml>`, spawned directly (no
/// shell), so the child's pid is the server's.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSpec {
    pub name: String,
    pub program: PathBuf,
    pub args_before_config: Vec<String>,
    /// A two-node cluster on one `redis-server`: backends push to node A, every socket is on
    /// node B (the measured one: its memory; CPU is A + B + Redis). Needs `redis-server`.
    pub cluster: bool,
}

impl ServerSpec {
    /// push-serve: `<bin> --config <conf>`.
    pub fn push_serve(bin: impl Into<PathBuf>) -> ServerSpec {
        ServerSpec {
            name: "push-serve".into(),
            program: bin.into(),
            args_before_config: vec!["--config".into()],
            cluster: false,
        }
    }

    /// push-serve as two nodes on one Redis: `<bin> --config <conf>` twice, plus
    /// `redis-server` (no persistence). Pushes cross from node A to sockets on node B.
    pub fn push_serve_cluster(bin: impl Into<PathBuf>) -> ServerSpec {
        ServerSpec {
            name: "push-serve-cluster".into(),
            cluster: true,
            ..ServerSpec::push_serve(bin)
        }
    }

    /// The Node.js + ws peer: `node <repo>/bench/peers/node/server.js <conf>`.
    pub fn node(repo_root: &Path) -> ServerSpec {
        ServerSpec {
            name: "node".into(),
            program: "node".into(),
            args_before_config: vec![repo_root
                .join("bench/peers/node/server.js")
                .display()
                .to_string()],
            cluster: false,
        }
    }

    /// The Go + gorilla peer: `<repo>/bench/peers/go/push-peer-go <conf>`.
    pub fn go(repo_root: &Path) -> ServerSpec {
        ServerSpec {
            name: "go".into(),
            program: repo_root.join("bench/peers/go/push-peer-go"),
            args_before_config: vec![],
            cluster: false,
        }
    }

    /// The named standard servers (`push-serve`, `push-serve-cluster`, `node`, `go`).
    pub fn standard(
        names: &[&str],
        repo_root: &Path,
        push_serve_bin: &Path,
    ) -> Result<Vec<ServerSpec>> {
        names
            .iter()
            .map(|n| match *n {
                "push-serve" => Ok(ServerSpec::push_serve(push_serve_bin)),
                "push-serve-cluster" => Ok(ServerSpec::push_serve_cluster(push_serve_bin)),
                "node" => Ok(ServerSpec::node(repo_root)),
                "go" => Ok(ServerSpec::go(repo_root)),
                other => anyhow::bail!(
                    "unknown server `{other}` (push-serve, push-serve-cluster, node, go)"
                ),
            })
            .collect()
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    /// Overrides the mode's standard [`Plan`].
    pub plan: Option<Plan>,
    /// Servers, run one at a time in this order. Ratios are taken to the one named `push-serve`.
    pub servers: Vec<ServerSpec>,
    /// An executable with the `hold` subcommand (the `push-bench` binary) for `idle-max`;
    /// without one that step reports an error.
    pub hold_exe: Option<PathBuf>,
    /// Backend password written into each server's config.
    pub password: String,
    /// Extra lines for every config. Peers ignore unknown keys; push-serve needs its per-uid
    /// socket cap (default 64) raised for the fan-out scenario.
    pub extra_conf: String,
    /// Where configs and server logs go (default: a fresh directory under the temp dir).
    pub work_dir: Option<PathBuf>,
    /// Progress lines on stderr.
    pub progress: bool,
    /// Start each server on CPU 0 only. The caller must have restricted its own process to
    /// the other CPUs before starting any thread ([`pin_loadgen`]), so the two never share a
    /// core and neither's numbers depend on how the scheduler split them.
    pub pin: bool,
}

/// CPUs online on the machine (not this process's affinity, which `--pin` narrows).
fn online_cpus() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Restricts the calling process's future threads to every CPU but the server's; call before
/// building the runtime. Errors if the machine has a single CPU.
pub fn pin_loadgen() -> Result<()> {
    let n = online_cpus();
    anyhow::ensure!(n >= 2, "--pin needs at least 2 CPUs, this machine has {n}");
    let others: Vec<usize> = (0..n).filter(|&c| c != server::SERVER_CPU).collect();
    server::pin_to(&others)?;
    Ok(())
}

impl Default for Options {
    fn default() -> Options {
        Options {
            mode: Mode::Smoke,
            plan: None,
            servers: Vec::new(),
            hold_exe: None,
            password: "push-bench-password".into(),
            extra_conf: "max_sockets_per_uid: 1000000\n".into(),
            work_dir: None,
            progress: true,
            pin: false,
        }
    }
}

impl Options {
    pub fn new(mode: Mode, servers: Vec<ServerSpec>) -> Options {
        Options {
            mode,
            servers,
            ..Options::default()
        }
    }
}

/// Named numbers of one row, in table order (serialized as a JSON object).
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub Vec<(String, f64)>);

impl Metrics {
    pub fn set(&mut self, name: &str, value: f64) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

impl Serialize for Metrics {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            if v.is_finite() {
                m.serialize_entry(k, v)?;
            } else {
                m.serialize_entry(k, &Option::<f64>::None)?;
            }
        }
        m.end()
    }
}

/// One (scenario, server) result.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub server: String,
    /// The scenario ran to the end and produced its primary number.
    pub ok: bool,
    pub error: Option<String>,
    /// Name of the primary metric and its value.
    pub primary: String,
    pub value: Option<f64>,
    pub higher_is_better: bool,
    /// `value / push-serve's value` for the same scenario.
    pub ratio_to_push_serve: Option<f64>,
    pub metrics: Metrics,
    pub notes: Vec<String>,
    pub wall_secs: f64,
    /// CPU used over the scenario, 100 = one core (the machine has `machine.cpus` of them).
    pub loadgen_cpu_pct: f64,
    pub server_cpu_pct: f64,
    /// The rest of the machine's busy CPU over the scenario (other processes; `hold` children
    /// in `idle-max`). Well above a few % means the numbers were disturbed.
    pub other_cpu_pct: f64,
}

impl Row {
    fn new(sc: &Scenario, server: &str) -> Row {
        Row {
            scenario: sc.id.clone(),
            server: server.to_string(),
            ok: false,
            error: None,
            primary: sc.primary.clone(),
            value: None,
            higher_is_better: sc.higher_is_better,
            ratio_to_push_serve: None,
            metrics: Metrics::default(),
            notes: Vec::new(),
            wall_secs: 0.0,
            loadgen_cpu_pct: 0.0,
            server_cpu_pct: 0.0,
            other_cpu_pct: 0.0,
        }
    }

    fn failed(sc: &Scenario, server: &str, error: String) -> Row {
        let mut r = Row::new(sc, server);
        r.error = Some(error);
        r
    }
}

/// One server's run: how it was started and stopped, its baseline memory, its log's tail.
#[derive(Debug, Clone, Serialize)]
pub struct ServerRun {
    pub name: String,
    pub command: String,
    pub started: bool,
    pub error: Option<String>,
    pub baseline_rss_kib: Option<u64>,
    pub stop: Option<String>,
    pub log_tail: String,
}

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub loadgen_nofile: u64,
    /// How the server and the load generator were placed on the CPUs.
    pub placement: String,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub started_unix: u64,
    pub machine: Machine,
    pub plan: Plan,
    pub scenarios: Vec<Scenario>,
    pub servers: Vec<ServerRun>,
    pub rows: Vec<Row>,
}

impl Report {
    /// The row of one scenario and server.
    pub fn row(&self, scenario: &str, server: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario && r.server == server)
    }

    /// `scenario/server: why` for every pair that has no finite primary number.
    pub fn missing(&self) -> Vec<String> {
        missing(&self.scenarios, &self.servers, &self.rows)
    }

    /// One table per scenario, one line per server, with the ratio to push-serve.
    pub fn tables(&self) -> String {
        tables(&self.scenarios, &self.rows)
    }
}

/// Sets every row's ratio to the `push-serve` row of the same scenario.
pub(crate) fn set_ratios(scenarios: &[Scenario], rows: &mut [Row]) {
    for sc in scenarios {
        let base = rows
            .iter()
            .find(|r| r.scenario == sc.id && r.server == "push-serve" && r.ok)
            .and_then(|r| r.value);
        for r in rows.iter_mut().filter(|r| r.scenario == sc.id) {
            r.ratio_to_push_serve = match (r.value, base) {
                (Some(v), Some(b)) if b != 0.0 && r.ok => Some(v / b),
                _ => None,
            };
        }
    }
}

/// `scenario/server: why` for every pair that has no finite primary number.
pub(crate) fn missing(scenarios: &[Scenario], servers: &[ServerRun], rows: &[Row]) -> Vec<String> {
    let row = |sc: &str, sv: &str| rows.iter().find(|r| r.scenario == sc && r.server == sv);
    {
        let mut out = Vec::new();
        for sc in scenarios {
            for sv in servers.iter().filter(|sv| sc.applies_to(&sv.name)) {
                match row(&sc.id, &sv.name) {
                    Some(r) if r.ok && r.value.is_some_and(f64::is_finite) => {}
                    Some(r) => out.push(format!(
                        "{}/{}: {}",
                        sc.id,
                        sv.name,
                        r.error.as_deref().unwrap_or("no number")
                    )),
                    None => out.push(format!("{}/{}: no row", sc.id, sv.name)),
                }
            }
        }
        out
    }
}

/// One table per scenario, one line per server, with the ratio to push-serve.
pub(crate) fn tables(scenarios: &[Scenario], all_rows: &[Row]) -> String {
    {
        let mut out = String::new();
        for sc in scenarios {
            let rows: Vec<&Row> = all_rows.iter().filter(|r| r.scenario == sc.id).collect();
            let mut cols: Vec<String> = Vec::new();
            for r in &rows {
                for (k, _) in &r.metrics.0 {
                    if !cols.contains(k) {
                        cols.push(k.clone());
                    }
                }
            }
            let mut header = vec!["server".to_string()];
            header.extend(cols.iter().cloned());
            header.push("÷ push-serve".into());
            header.push("loadgen CPU%".into());
            header.push("server CPU%".into());
            header.push("other CPU%".into());
            let mut grid: Vec<Vec<String>> = vec![header];
            for r in &rows {
                let mut line = vec![r.server.clone()];
                if r.ok {
                    for c in &cols {
                        line.push(r.metrics.get(c).map(fmt_num).unwrap_or_else(|| "-".into()));
                    }
                    line.push(
                        r.ratio_to_push_serve
                            .map(|x| format!("{x:.2}"))
                            .unwrap_or_else(|| "-".into()),
                    );
                    for v in [r.loadgen_cpu_pct, r.server_cpu_pct, r.other_cpu_pct] {
                        line.push(if v.is_finite() {
                            format!("{v:.0}")
                        } else {
                            "-".into()
                        });
                    }
                } else if !sc.applies_to(&r.server) {
                    line.push(NOT_APPLICABLE.into());
                } else {
                    line.push(format!(
                        "FAILED: {}",
                        r.error.as_deref().unwrap_or("no number")
                    ));
                }
                grid.push(line);
            }
            let _ = writeln!(
                out,
                "\n### {} — {}\n\n{} ({} is better); ÷ push-serve = this server's {} divided by push-serve's.\n",
                sc.id,
                sc.title,
                sc.primary,
                if sc.higher_is_better { "higher" } else { "lower" },
                sc.primary
            );
            out.push_str(&markdown_table(&grid));
            for r in &rows {
                for n in &r.notes {
                    let _ = writeln!(out, "- {}: {}", r.server, n);
                }
            }
        }
        out
    }
}

fn markdown_table(grid: &[Vec<String>]) -> String {
    let ncols = grid.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; ncols];
    for line in grid {
        for (i, c) in line.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (li, line) in grid.iter().enumerate() {
        out.push('|');
        for (i, w) in widths.iter().enumerate() {
            let c = line.get(i).map(String::as_str).unwrap_or("");
            let pad = w - c.chars().count();
            if i == 0 {
                let _ = write!(out, " {c}{} |", " ".repeat(pad));
            } else {
                let _ = write!(out, " {}{c} |", " ".repeat(pad));
            }
        }
        out.push('\n');
        if li == 0 {
            out.push('|');
            for (i, w) in widths.iter().enumerate() {
                if i == 0 {
                    let _ = write!(out, "{}|", "-".repeat(w + 2));
                } else {
                    let _ = write!(out, "{}:|", "-".repeat(w + 1));
                }
            }
            out.push('\n');
        }
    }
    out
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if (v == v.trunc() && v.abs() < 1e15) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Durations as (fractional) seconds in the report and in `--set`.
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

pub(crate) fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Machine {
        cpus: online_cpus(),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_default(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        loadgen_nofile: server::raise_nofile(),
        placement: String::new(),
    }
}

/// Runs every scenario of `opts.mode` (or `opts.plan`) against every server, one server at a
/// time, and returns the measurements. A server that fails to start, or a scenario that fails,
/// gives rows with `ok: false` and the reason instead of an error from this function.
pub async fn run(opts: Options) -> Result<Report> {
    let plan = opts
        .plan
        .clone()
        .unwrap_or_else(|| Plan::for_mode(opts.mode));
    let mut machine = machine();
    machine.placement = if opts.pin {
        format!(
            "server pinned to CPU {}, load generator to the other {}",
            server::SERVER_CPU,
            machine.cpus - 1
        )
    } else {
        format!("server and load generator share all {} CPUs", machine.cpus)
    };
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (dir, remove_dir) = match &opts.work_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "push-bench-{}-{}",
                std::process::id(),
                started_unix
            )),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    let scenarios = plan.scenarios();
    let mut rows = Vec::new();
    let mut servers = Vec::new();
    for spec in &opts.servers {
        if opts.progress {
            eprintln!("push-bench: === {} ===", spec.name);
        }
        let (run, mut got) = scenarios::run_server(spec, &plan, &scenarios, &opts, &dir).await;
        for sc in &scenarios {
            if !got.iter().any(|r| r.scenario == sc.id) {
                let why = run
                    .error
                    .clone()
                    .unwrap_or_else(|| "scenario did not run".into());
                got.push(Row::failed(sc, &spec.name, why));
            }
        }
        rows.extend(got);
        servers.push(run);
    }
    set_ratios(&scenarios, &mut rows);
    if remove_dir
        && rows
            .iter()
            .all(|r| r.ok || r.error.as_deref() == Some(NOT_APPLICABLE))
    {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(Report {
        mode: opts.mode,
        started_unix,
        machine,
        plan,
        scenarios,
        servers,
        rows,
    })
}
