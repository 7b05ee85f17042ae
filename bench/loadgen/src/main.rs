//! `push-bench`: compare push-serve with the Node and Go peers. See the library docs.
//!
//! ```text
//! push-bench [--mode quick|full|smoke] [--servers push-serve,push-serve-cluster,node,go]
//!            [--push-serve-bin PATH] [--repo DIR] [--out results.json]
//!            [--set plan_field=value]...   (e.g. --set unicast_duration=10)
//! push-bench hold (--addr HOST:PORT | --nodes A,B,..) --password P --count N [--first I]
//!            [--prefix P] [--concurrency C] [--sources S] [--source-base B] [--proto 1|2]
//! push-bench scale-push --nodes A,B,.. --password P --uids N [--prefix P] --rate R --secs S
//!            [--conns C] [--idempotent]
//! push-bench pusher [--mode quick|full|smoke] [--servers push-serve,soketi]
//!            [--push-serve-bin PATH] [--soketi DIR/run.sh] [--out results.json] [--pin]
//!            [--set plan_field=value]...
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use push_bench::scale::ScalePushArgs;
use push_bench::{HoldArgs, Mode, Options, ServerSpec};

const USAGE: &str = "usage: push-bench [--mode quick|full|smoke] \
[--servers push-serve,push-serve-cluster,node,go] \
[--push-serve-bin PATH] [--repo DIR] [--out results.json] [--quiet] [--pin] [--set plan_field=value]...
  --pin: server on CPU 0, the load generator on the others (needs 2+ CPUs)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("hold") {
        return hold_main(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("scale-push") {
        return scale_push_main(&args[1..]);
    }
    let result = if args.first().map(String::as_str) == Some("pusher") {
        pusher_main(&args[1..])
    } else {
        bench_main(&args)
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("push-bench: {e:#}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> anyhow::Result<&'a str> {
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
}

fn bench_main(args: &[String]) -> anyhow::Result<ExitCode> {
    let mut mode = Mode::Quick;
    let mut servers = "push-serve,push-serve-cluster,node,go".to_string();
    let mut repo = PathBuf::from(".");
    let mut bin: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    let mut quiet = false;
    let mut pin = false;
    let mut sets: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "--mode" => {
                mode = value(args, &mut i, a)?
                    .parse()
                    .map_err(anyhow::Error::msg)?
            }
            "--servers" => servers = value(args, &mut i, a)?.to_string(),
            "--push-serve-bin" => bin = Some(value(args, &mut i, a)?.into()),
            "--repo" => repo = value(args, &mut i, a)?.into(),
            "--out" => out = Some(value(args, &mut i, a)?.into()),
            "--quiet" => quiet = true,
            "--pin" => pin = true,
            "--set" => {
                let kv = value(args, &mut i, a)?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--set wants field=value"))?;
                sets.push((k.to_string(), v.to_string()));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => anyhow::bail!("unknown argument `{other}`"),
        }
        i += 1;
    }
    let repo = std::fs::canonicalize(&repo)?;
    let bin = bin.unwrap_or_else(|| repo.join("target/release/push-serve"));
    let names: Vec<&str> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let specs = ServerSpec::standard(&names, &repo, &bin)?;
    let mut opts = Options::new(mode, specs);
    opts.hold_exe = std::env::current_exe().ok();
    opts.progress = !quiet;
    if !sets.is_empty() {
        let mut plan = push_bench::Plan::for_mode(mode);
        for (k, v) in &sets {
            plan.set(k, v)?;
        }
        opts.plan = Some(plan);
    }
    if pin {
        // Before the runtime's threads exist, so they all inherit it.
        push_bench::pin_loadgen()?;
    }
    opts.pin = pin;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(push_bench::run(opts))?;
    println!("{}", report.tables());
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("push-bench: wrote {}", path.display());
    }
    let missing = report.missing();
    if missing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("push-bench: no numbers for:\n  {}", missing.join("\n  "));
        Ok(ExitCode::from(1))
    }
}

const PUSHER_USAGE: &str = "usage: push-bench pusher [--mode quick|full|smoke] \
[--servers push-serve,soketi] [--push-serve-bin PATH] [--soketi DIR/run.sh] [--out results.json] \
[--quiet] [--pin] [--set plan_field=value]...
  --soketi: the run script `../shared/peers/soketi/setup.sh DIR` installed (default /work/soketi/run.sh)";

/// The Pusher scenario: push-serve's Pusher mode against Soketi (`push_bench::pusher`).
fn pusher_main(args: &[String]) -> anyhow::Result<ExitCode> {
    use push_bench::pusher::{PusherOptions, PusherPlan, PusherServer};
    let mut mode = Mode::Quick;
    let mut servers = "push-serve,soketi".to_string();
    let mut bin = PathBuf::from("target/release/push-serve");
    let mut soketi = PathBuf::from("/work/soketi/run.sh");
    let mut out: Option<PathBuf> = None;
    let (mut quiet, mut pin) = (false, false);
    let mut sets: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "--mode" => {
                mode = value(args, &mut i, a)?
                    .parse()
                    .map_err(anyhow::Error::msg)?
            }
            "--servers" => servers = value(args, &mut i, a)?.to_string(),
            "--push-serve-bin" => bin = value(args, &mut i, a)?.into(),
            "--soketi" => soketi = value(args, &mut i, a)?.into(),
            "--out" => out = Some(value(args, &mut i, a)?.into()),
            "--quiet" => quiet = true,
            "--pin" => pin = true,
            "--set" => {
                let kv = value(args, &mut i, a)?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--set wants field=value"))?;
                sets.push((k.to_string(), v.to_string()));
            }
            "-h" | "--help" => {
                println!("{PUSHER_USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => anyhow::bail!("unknown argument `{other}`\n{PUSHER_USAGE}"),
        }
        i += 1;
    }
    let servers = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "push-serve" => Ok(PusherServer::PushServe { bin: bin.clone() }),
            "soketi" => Ok(PusherServer::Soketi {
                run_script: soketi.clone(),
            }),
            other => anyhow::bail!("unknown server `{other}` (push-serve, soketi)"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut plan = PusherPlan::for_mode(mode);
    for (k, v) in &sets {
        plan.set(k, v)?;
    }
    if pin {
        push_bench::pin_loadgen()?;
    }
    let opts = PusherOptions {
        mode,
        plan: Some(plan),
        servers,
        progress: !quiet,
        pin,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(push_bench::pusher::run(opts))?;
    println!("{}", report.tables());
    if let Some(path) = out {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("push-bench: wrote {}", path.display());
    }
    let missing = report.missing();
    if missing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("push-bench: no numbers for:\n  {}", missing.join("\n  "));
        Ok(ExitCode::from(1))
    }
}

fn hold_main(args: &[String]) -> ExitCode {
    let parse = || -> anyhow::Result<HoldArgs> {
        let mut h = HoldArgs {
            nodes: Vec::new(),
            password: String::new(),
            count: 0,
            first: 0,
            prefix: "hold-".into(),
            concurrency: 128,
            sources: 32,
            source_base: 2,
            proto2: false,
        };
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            match a {
                "--addr" => h.nodes = vec![value(args, &mut i, a)?.parse()?],
                "--nodes" => {
                    h.nodes = value(args, &mut i, a)?
                        .split(',')
                        .map(|n| n.trim().parse())
                        .collect::<Result<_, _>>()?
                }
                "--password" => h.password = value(args, &mut i, a)?.into(),
                "--count" => h.count = value(args, &mut i, a)?.parse()?,
                "--first" => h.first = value(args, &mut i, a)?.parse()?,
                "--prefix" => h.prefix = value(args, &mut i, a)?.into(),
                "--concurrency" => h.concurrency = value(args, &mut i, a)?.parse()?,
                "--sources" => h.sources = value(args, &mut i, a)?.parse()?,
                "--source-base" => h.source_base = value(args, &mut i, a)?.parse()?,
                "--proto" => h.proto2 = value(args, &mut i, a)? == "2",
                other => anyhow::bail!("hold: unknown argument `{other}`"),
            }
            i += 1;
        }
        Ok(h)
    };
    let result = parse().and_then(|h| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        tokio::task::LocalSet::new().block_on(&rt, push_bench::hold(h))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("push-bench hold: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn scale_push_main(args: &[String]) -> ExitCode {
    let parse = || -> anyhow::Result<ScalePushArgs> {
        let mut p = ScalePushArgs::default();
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            match a {
                "--nodes" => {
                    p.nodes = value(args, &mut i, a)?
                        .split(',')
                        .map(|n| n.trim().parse())
                        .collect::<Result<_, _>>()?
                }
                "--password" => p.password = value(args, &mut i, a)?.into(),
                "--prefix" => p.prefix = value(args, &mut i, a)?.into(),
                "--uids" => p.uids = value(args, &mut i, a)?.parse()?,
                "--rate" => p.rate = value(args, &mut i, a)?.parse()?,
                "--secs" => p.secs = value(args, &mut i, a)?.parse()?,
                "--conns" => p.conns = value(args, &mut i, a)?.parse()?,
                "--idempotent" => p.idempotent = true,
                other => anyhow::bail!("scale-push: unknown argument `{other}`"),
            }
            i += 1;
        }
        if p.nodes.is_empty() || p.uids == 0 {
            anyhow::bail!("scale-push needs --nodes and --uids");
        }
        Ok(p)
    };
    let result = parse().and_then(|p| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(push_bench::scale::push(p))
    });
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("push-bench scale-push: {e:#}");
            ExitCode::from(2)
        }
    }
}
