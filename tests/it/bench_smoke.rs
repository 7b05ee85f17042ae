//! The benchmark harness (bench/loadgen) in smoke mode against push-serve and both peers, so it
//! cannot rot: every scenario must produce its numbers for every server that implements it.
//! How fast anything was is the benchmark's business (BENCHMARKS.md), never asserted here.
//! The peers' rows need them built (`bash bench/peers/setup.sh`; `.ci/run` does it).

use std::path::Path;

use push_bench::{Mode, Options, ServerSpec};

use crate::common;
use common::{require, runs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_produces_numbers_for_every_server() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The peers' rows need them built (`bash bench/peers/setup.sh`, which .ci/run runs), the
    // cluster rows redis-server; without one, its rows are skipped with a line saying so, and
    // push-serve's own rows still run.
    let mut peers = Vec::new();
    for (name, what, path) in [
        (
            "node",
            "the Node peer (bench/peers/setup.sh)",
            "bench/peers/node/node_modules/ws",
        ),
        (
            "go",
            "the Go peer (bench/peers/setup.sh)",
            "bench/peers/go/push-peer-go",
        ),
    ] {
        let here = repo.join(path).exists() && (name != "node" || runs("node", "--version"));
        if require(
            &format!("the benchmark smoke test's {name} rows"),
            what,
            here,
        ) {
            peers.push(name);
        }
    }
    let with_cluster = require(
        "the benchmark smoke test's push-serve-cluster rows",
        "redis-server",
        runs("redis-server", "--version"),
    );
    let mut names = vec!["push-serve"];
    if with_cluster {
        names.push("push-serve-cluster");
    }
    names.extend(&peers);
    let servers =
        ServerSpec::standard(&names, repo, Path::new(env!("CARGO_BIN_EXE_push-serve"))).unwrap();
    let mut opts = Options::new(Mode::Smoke, servers);
    opts.progress = false;
    let report = push_bench::run(opts).await.unwrap();
    let tables = report.tables();
    println!("{tables}");

    let missing = report.missing();
    assert!(
        missing.is_empty(),
        "no numbers for:\n{}",
        missing.join("\n")
    );
    for server in &report.servers {
        assert!(server.started, "{}: {:?}", server.name, server.error);
        assert!(
            server.stop.as_deref().is_some_and(|s| s.contains("exit")),
            "{} did not stop cleanly: {:?}",
            server.name,
            server.stop
        );
    }
    // Every scenario ran on push-serve (and its cluster), with its traffic delivered: a fan-out
    // that delivered nothing, or unicast pushes that never arrived, would have failed its row
    // above; here the counts that say so must be present and sane.
    let ours: &[&str] = if with_cluster {
        &["push-serve", "push-serve-cluster"]
    } else {
        &["push-serve"]
    };
    for (sc, server) in report
        .scenarios
        .iter()
        .flat_map(|sc| ours.iter().map(move |s| (sc, *s)))
    {
        let row = report.row(&sc.id, server).expect("push-serve row");
        assert!(row.ok, "{}/{server}: {:?}", sc.id, row.error);
        if let Some(lost) = row.metrics.get("lost") {
            assert_eq!(lost, 0.0, "{}/{server}: pushes lost", sc.id);
        }
        if let Some(incomplete) = row.metrics.get("incomplete") {
            assert_eq!(
                incomplete, 0.0,
                "{}/{server}: fan-out messages not delivered everywhere",
                sc.id
            );
        }
        if let Some(online) = row.metrics.get("online after") {
            assert_eq!(online, 0.0, "{}/{server}: churned uids still online", sc.id);
        }
    }
    // The peers answer n/a, not a failure, on the push-serve-only scenarios.
    for sc in report.scenarios.iter().filter(|sc| sc.push_serve_only) {
        for &peer in &peers {
            let row = report.row(&sc.id, peer).expect("peer row");
            assert!(!row.ok && row.value.is_none(), "{}/{peer}", sc.id);
        }
    }
}

/// `push-bench pusher` in smoke mode against push-serve's Pusher mode: every scenario gives its
/// numbers, every trigger is delivered. Soketi's rows too when `PUSH_BENCH_SOKETI` names the run
/// script `../shared/peers/soketi/setup.sh DIR` installed (`DIR/run.sh`); CI does not install it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pusher_scenario_produces_numbers() {
    use push_bench::pusher::{PusherOptions, PusherServer};
    let mut servers = vec![PusherServer::PushServe {
        bin: env!("CARGO_BIN_EXE_push-serve").into(),
    }];
    if let Some(script) = std::env::var_os("PUSH_BENCH_SOKETI") {
        servers.push(PusherServer::Soketi {
            run_script: script.into(),
        });
    }
    let report = push_bench::pusher::run(PusherOptions {
        mode: Mode::Smoke,
        plan: None,
        servers,
        progress: false,
        pin: false,
    })
    .await
    .unwrap();
    println!("{}", report.tables());
    let missing = report.missing();
    assert!(
        missing.is_empty(),
        "no numbers for:\n{}",
        missing.join("\n")
    );
    for row in report.rows.iter().filter(|r| r.scenario != "idle-20") {
        assert_eq!(row.metrics.get("lost").unwrap_or(0.0), 0.0, "{row:?}");
        assert_eq!(row.metrics.get("incomplete").unwrap_or(0.0), 0.0, "{row:?}");
        assert_eq!(row.metrics.get("not 200").unwrap_or(0.0), 0.0, "{row:?}");
    }
}
