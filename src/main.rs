//! `push-serve [-c PATH] [--check-config]`: load the config, raise the open-files limit, bind,
//! serve until SIGTERM/SIGINT, exit 0 after a graceful shutdown. Everything else lives in the
//! library.

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::Write;

use log::LevelFilter;
use push_serve::config::LogFormat;
use push_serve::{server, Config};

const HELP: &str = "\
push-serve: real-time push daemon (backends push JSON, pages receive it over WebSockets)

usage: push-serve [-c PATH] [--check-config]

options:
  -c, --config PATH   the config file (default ./conf.yaml); --config=PATH also works
      --check-config  read and validate the config file, print what is wrong or \"ok\",
                      and exit 1 or 0 without starting
  -V, --version       print the version and exit
  -h, --help          print this help and exit

environment:
  RUST_LOG            log level: error, warn, info (default), debug, trace

exit status: 0 after a clean shutdown, 1 when the config or the listen address is unusable,
2 on a command-line error. README.md documents every config key.";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Run(PathBuf),
    Check(PathBuf),
    Help,
    Version,
}

fn main() -> ExitCode {
    let path = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(path)) => path,
        Ok(Command::Check(path)) => return check_config(&path),
        Ok(Command::Help) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("push-serve {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("push-serve: {msg} (push-serve --help lists the options)");
            return ExitCode::from(2);
        }
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("push-serve: {e}");
            return ExitCode::from(1);
        }
    };
    init_logging(config.log_format);
    raise_fd_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("push-serve: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let addr = config.socket_addr().expect("validated");
        let listener = match server::bind(addr, config.listen_backlog) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("push-serve: cannot listen on {addr}: {e}");
                return ExitCode::from(1);
            }
        };
        log::info!(
            "push-serve {} listening on {}",
            env!("CARGO_PKG_VERSION"),
            addr
        );
        let metrics_listener = match config.metrics_socket_addr().expect("validated") {
            None => None,
            Some(addr) => match server::bind(addr, 128) {
                Ok(l) => {
                    log::info!("metrics (no password) on http://{addr}/metrics");
                    Some(l)
                }
                Err(e) => {
                    eprintln!("push-serve: cannot listen on metrics_addr {addr}: {e}");
                    return ExitCode::from(1);
                }
            },
        };
        match push_serve::run_with_metrics(
            listener,
            metrics_listener,
            config,
            push_serve::shutdown_signal(),
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("push-serve: {e}");
                ExitCode::from(1)
            }
        }
    })
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut path = PathBuf::from("conf.yaml");
    let mut check = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => match args.next() {
                Some(p) if !p.is_empty() => path = p.into(),
                _ => return Err(format!("{arg} needs a path")),
            },
            "--check-config" => check = true,
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            other => match other.strip_prefix("--config=") {
                Some("") => return Err("--config= needs a path".into()),
                Some(p) => path = p.into(),
                None => return Err(format!("unknown argument `{other}`")),
            },
        }
    }
    Ok(if check {
        Command::Check(path)
    } else {
        Command::Run(path)
    })
}

/// `--check-config`: the same load and validation as a start, nothing else.
fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("push-serve: {e}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr at the level `RUST_LOG` asks for (info when unset), as text or JSON lines.
fn init_logging(format: LogFormat) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(LevelFilter::Info);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        if spec.contains('/') {
            // A regex filter: env_logger's own reading (it warns about what it cannot parse).
            builder = env_logger::Builder::new();
            builder.parse_filters(&spec);
        } else if !spec.trim().is_empty() {
            let (directives, problem) = read_log_spec(&spec);
            if let Some(problem) = problem {
                eprintln!("push-serve: RUST_LOG={spec:?}: {problem}");
            }
            builder = env_logger::Builder::new();
            for (target, level) in directives {
                builder.filter(target.as_deref(), level);
            }
        }
    }
    if format == LogFormat::Json {
        builder
            .write_style(env_logger::WriteStyle::Never)
            .format(|buf, record| {
                let line = serde_json::json!({
                    "time": buf.timestamp_millis().to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "message": record.args().to_string(),
                });
                writeln!(buf, "{line}")
            });
    }
    builder.init();
}

/// A `RUST_LOG` value's directives, and what is wrong with it, in words.
///
/// env_logger reads a word that is not a level as the name of a module to log in full, so a
/// misspelt level (`RUST_LOG=inf0`) silently turned off every line of push-serve. A directive
/// with an unknown level is dropped (as env_logger does) and said so; a value that leaves
/// push-serve's own lines off without saying `off` gets `push_serve=info` added, and says so.
/// A value with a regex filter (`…/pattern`) is left to env_logger.
fn read_log_spec(spec: &str) -> (Vec<(Option<String>, LevelFilter)>, Option<String>) {
    const LEVELS: &str = "error, warn, info, debug, trace or off";
    let mut directives = Vec::new();
    let mut problems = Vec::new();
    let mut not_levels = Vec::new();
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match directive.split_once('=') {
            Some((target, level)) => match level.trim().parse::<LevelFilter>() {
                Ok(level) => directives.push((Some(target.trim().to_owned()), level)),
                Err(_) => problems.push(format!(
                    "`{}` is not a level ({LEVELS}); `{directive}` is ignored",
                    level.trim()
                )),
            },
            None => match directive.parse::<LevelFilter>() {
                Ok(level) => directives.push((None, level)),
                Err(_) => {
                    not_levels.push(directive);
                    directives.push((Some(directive.to_owned()), LevelFilter::Trace));
                }
            },
        }
    }
    // env_logger applies the directive with the longest name that starts the target.
    let ours = directives
        .iter()
        .filter(|(t, _)| t.as_deref().is_none_or(|t| "push_serve".starts_with(t)))
        .max_by_key(|(t, _)| t.as_ref().map_or(0, String::len));
    if ours.is_none() {
        directives.push((Some("push_serve".to_owned()), LevelFilter::Info));
        let why = match not_levels.as_slice() {
            [] => "no directive covers push_serve".to_owned(),
            words => format!(
                "{} is not a level ({LEVELS}) but a module name",
                words
                    .iter()
                    .map(|w| format!("`{w}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        problems.push(format!(
            "{why}, so push-serve would log nothing; logging push_serve at info"
        ));
    }
    let problem = (!problems.is_empty()).then(|| problems.join("; "));
    (directives, problem)
}

/// Every socket is a file descriptor; the soft limit (often 1024) would cap the server far below
/// what the machine can hold, so raise it to the hard limit and say what that allows.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => log::info!(
            "open-files limit {limit}: room for about {} sockets",
            limit.saturating_sub(64)
        ),
        Err(e) => log::warn!("could not raise the open-files limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn every_spelling_of_the_config_path() {
        let at = |p: &str| Ok(Command::Run(p.into()));
        assert_eq!(parse(&[]), at("conf.yaml"));
        assert_eq!(parse(&["-c", "a.yaml"]), at("a.yaml"));
        assert_eq!(parse(&["--config", "a.yaml"]), at("a.yaml"));
        assert_eq!(parse(&["--config=a.yaml"]), at("a.yaml"));
        assert_eq!(
            parse(&["--check-config", "-c", "a.yaml"]),
            Ok(Command::Check("a.yaml".into()))
        );
        assert_eq!(
            parse(&["--config=a.yaml", "--check-config"]),
            Ok(Command::Check("a.yaml".into()))
        );
        assert!(parse(&["-c"]).is_err());
        assert!(parse(&["--config="]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert_eq!(parse(&["-V"]), Ok(Command::Version));
    }

    #[test]
    fn a_misspelt_rust_log_is_reported_and_push_serve_still_logs() {
        let (directives, problem) = read_log_spec("inf0");
        assert!(problem.unwrap().contains("`inf0` is not a level"));
        assert!(directives.contains(&(Some("push_serve".into()), LevelFilter::Info)));

        let (directives, problem) = read_log_spec("push_serve=verbose");
        assert!(problem.unwrap().contains("`verbose` is not a level"));
        assert!(directives.contains(&(Some("push_serve".into()), LevelFilter::Info)));

        let (_, problem) = read_log_spec("warp=debug");
        assert!(problem.unwrap().contains("no directive covers push_serve"));

        for fine in [
            "info",
            "debug,hyper=warn",
            "push_serve=trace",
            "off",
            "push_serve=off",
        ] {
            let (_, problem) = read_log_spec(fine);
            assert_eq!(problem, None, "{fine}");
        }
    }
}
