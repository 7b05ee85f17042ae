//! `push-serve [-c PATH] [--check-config]`: load the config, raise the open-files limit, bind,
//! serve until SIGTERM/SIGINT, exit 0 after a graceful shutdown. Everything else lives in the
//! library.

use std::path::PathBuf;
use std::process::ExitCode;

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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("push-serve: {e}");
            return ExitCode::from(1);
        }
    };
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
        match push_serve::run(listener, config, push_serve::shutdown_signal()).await {
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
}
