//! Log lines on stderr: env_logger behind a logger of our own, so that a config reload can
//! change what is logged (`log_level`) and how (`log_format`) without a restart.
//!
//! The level comes from the config's `log_level` when it is set, else from `RUST_LOG`, else
//! `info`. A spec that would silently log nothing of push-serve (a misspelt level reads, to
//! env_logger, as a module name) is reported, and push-serve's own lines stay on at `info`.

use std::io::Write;
use std::sync::{OnceLock, RwLock};

use log::LevelFilter;

use serde::{Deserialize, Serialize};

/// The shape of a log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `[2026-05-01T12:00:00Z INFO  push_serve::http] …`, env_logger's own format.
    #[default]
    Text,
    /// One JSON object per line: `{"time","level","target","message"}`.
    Json,
}

/// The installed logger: env_logger's, swapped whole on a reload.
struct Reloadable {
    inner: RwLock<env_logger::Logger>,
}

impl log::Log for Reloadable {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.current().enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        self.current().log(record)
    }

    fn flush(&self) {
        self.current().flush()
    }
}

impl Reloadable {
    /// A read lock for one line: writers only come with a reload.
    fn current(&self) -> std::sync::RwLockReadGuard<'_, env_logger::Logger> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
}

static LOGGER: OnceLock<Reloadable> = OnceLock::new();

/// Where the level comes from: the config's `log_level`, else `RUST_LOG`, else `info`.
fn spec_for(log_level: Option<&str>) -> Option<String> {
    log_level
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .filter(|s| !s.trim().is_empty())
}

/// Installs the logger (once per process; later calls reconfigure it). A problem with the
/// level spec is printed on stderr, since no line could say it otherwise.
pub fn init(log_level: Option<&str>, format: LogFormat) {
    let spec = spec_for(log_level);
    let (logger, problem) = build(spec.as_deref(), format);
    if let Some(problem) = problem {
        let source = if log_level.is_some() {
            "log_level"
        } else {
            "RUST_LOG"
        };
        eprintln!(
            "push-serve: {source}={:?}: {problem}",
            spec.unwrap_or_default()
        );
    }
    let max = logger.filter();
    if let Err(logger) = LOGGER.set(Reloadable {
        inner: RwLock::new(logger),
    }) {
        // Installed before (a second `init`): swap in the new one.
        swap(logger.inner.into_inner().unwrap_or_else(|p| p.into_inner()));
        return;
    }
    if log::set_logger(LOGGER.get().expect("just set")).is_ok() {
        log::set_max_level(max);
    }
}

/// Applies a reloaded `log_level` and `log_format`. A no-op if [`init`] never ran (a library
/// caller with a logger of its own).
pub fn reconfigure(log_level: Option<&str>, format: LogFormat) {
    if LOGGER.get().is_none() {
        return;
    }
    // The config was validated, so the spec has no problem to report.
    let (logger, _) = build(spec_for(log_level).as_deref(), format);
    swap(logger);
}

fn swap(logger: env_logger::Logger) {
    let Some(installed) = LOGGER.get() else {
        return;
    };
    let max = logger.filter();
    *installed.inner.write().unwrap_or_else(|p| p.into_inner()) = logger;
    log::set_max_level(max);
}

/// Whether `spec` is a usable level spec: `Err` says what is wrong, in words.
pub fn check_spec(spec: &str) -> Result<(), String> {
    if spec.trim().is_empty() {
        return Err("is empty: write a level such as info, or leave the key out".into());
    }
    if spec.contains('/') {
        return Ok(());
    }
    match read_log_spec(spec).1 {
        None => Ok(()),
        Some(problem) => Err(problem),
    }
}

/// env_logger's logger for `spec` (info when `None`), as text or JSON lines, and what is wrong
/// with the spec, if anything.
fn build(spec: Option<&str>, format: LogFormat) -> (env_logger::Logger, Option<String>) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(LevelFilter::Info);
    let mut problem = None;
    if let Some(spec) = spec {
        builder = env_logger::Builder::new();
        if spec.contains('/') {
            // A regex filter: env_logger's own reading (it warns about what it cannot parse).
            builder.parse_filters(spec);
        } else {
            let (directives, found) = read_log_spec(spec);
            problem = found;
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
    (builder.build(), problem)
}

/// A level spec's directives, and what is wrong with it, in words.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_level_is_reported_and_push_serve_still_logs() {
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
            assert_eq!(check_spec(fine), Ok(()));
        }
        assert!(check_spec("").is_err());
        assert!(check_spec("inf0").is_err());
    }
}
