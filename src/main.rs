//! `push-serve [--config PATH]`: load the config, raise the open-files limit, bind, serve until
//! SIGTERM/SIGINT, exit 0 after a graceful shutdown. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use push_serve::{server, Config};

const USAGE: &str = "usage: push-serve [--config PATH]   (default ./conf.yaml)";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let path = match parse_args(std::env::args().skip(1)) {
        Ok(Some(path)) => path,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("push-serve: {msg}\n{USAGE}");
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
        push_serve::run_with_metrics(
            listener,
            metrics_listener,
            config,
            push_serve::shutdown_signal(),
        )
        .await;
        ExitCode::SUCCESS
    })
}

/// `Ok(None)` means `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<PathBuf>, String> {
    let mut path = PathBuf::from("conf.yaml");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => path = args.next().ok_or("--config needs a path")?.into(),
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(path))
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
