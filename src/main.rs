//! `push-serve [-c PATH] [--check-config]`: load the config, raise the open-files limit, bind,
//! serve until SIGTERM/SIGINT, exit 0 after a graceful shutdown; on SIGHUP, read the config
//! file again and hand it to the running server. Everything else lives in the library.

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

signals:
  SIGTERM, SIGINT     graceful shutdown: sockets get close code 1001, exit status 0
  SIGHUP              read the config file again and apply what can change live; an invalid
                      file changes nothing (the log says why and what needs a restart)

environment:
  RUST_LOG            log level: error, warn, info (default), debug, trace (the config's
                      log_level, when set, wins)

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
    push_serve::logging::init(config.log_level.as_deref(), config.log_format);
    raise_fd_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("push-serve: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        // Taken over before anything else: SIGHUP's default action ends the process.
        let (reloader, reloads) = push_serve::reload::channel();
        if let Err(e) = watch_sighup(path.clone(), reloader) {
            eprintln!("push-serve: cannot handle SIGHUP: {e}");
            return ExitCode::from(1);
        }
        let addr = config.socket_addr().expect("validated");
        let listener = match server::bind(addr, config.listen_backlog) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("push-serve: cannot listen on {addr}: {e}");
                return ExitCode::from(1);
            }
        };
        // The address bound, not the one asked for: with port 0 the kernel chose the port.
        log::info!(
            "push-serve {} listening on {}",
            env!("CARGO_PKG_VERSION"),
            listener.local_addr().unwrap_or(addr)
        );
        let metrics_listener = match config.metrics_socket_addr().expect("validated") {
            None => None,
            Some(addr) => match server::bind(addr, 128) {
                Ok(l) => {
                    log::info!(
                        "metrics (no password) on http://{}/metrics",
                        l.local_addr().unwrap_or(addr)
                    );
                    Some(l)
                }
                Err(e) => {
                    eprintln!("push-serve: cannot listen on metrics_addr {addr}: {e}");
                    return ExitCode::from(1);
                }
            },
        };
        match push_serve::run_reloadable(
            listener,
            metrics_listener,
            config,
            reloads,
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

/// On every SIGHUP, reads `path` again and hands it to the server. A file that cannot be read
/// or is invalid changes nothing; the log says why. Errors only if the signal cannot be caught.
#[cfg(unix)]
fn watch_sighup(path: PathBuf, reloader: push_serve::reload::Reloader) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            log::info!("SIGHUP: reading {} again", path.display());
            let config = match Config::load(&path) {
                Ok(config) => config,
                Err(e) => {
                    log::warn!("config reload refused, the running config stays in force: {e}");
                    continue;
                }
            };
            // The server logs what it applied, and what it refused.
            if let Err(push_serve::reload::ReloadError::NotRunning) = reloader.reload(config).await
            {
                break;
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn watch_sighup(_: PathBuf, _: push_serve::reload::Reloader) -> std::io::Result<()> {
    Ok(())
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
