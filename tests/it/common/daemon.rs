//! The `push-serve` executable as a child process, as systemd runs it: its config in a file of
//! its own, `addr: 127.0.0.1:0` so the kernel picks the port when the daemon binds (no port is
//! chosen beforehand, so none can be taken meanwhile), and the address read back from its
//! `listening on …` log line. Every line it writes is kept (and echoed, so a failing test shows
//! it), and a test can wait for a given line instead of sleeping.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::*;

pub const BIN: &str = env!("CARGO_BIN_EXE_push-serve");

/// Lines the daemon wrote, on stdout and stderr, in arrival order.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
}

/// A running `push-serve` process; killed when dropped.
pub struct Daemon {
    /// The daemon as a server to talk to: its bound address and password.
    pub server: Server,
    /// Its config file (rewrite it with [`Daemon::write_config`], then SIGHUP).
    pub config_path: PathBuf,
    pid: u32,
    child: Option<Child>,
    lines: Arc<Lines>,
    /// Bumped on every line, and once more at the end of both streams.
    changed: watch::Receiver<usize>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// A scratch file `conf.yaml` for the test `name` with `yaml` in it; its directory is removed
/// when this is dropped (test runs used to leave hundreds of them in `/tmp`).
pub struct TempConfig(PathBuf);

impl TempConfig {
    pub fn to_str(&self) -> Option<&str> {
        self.0.to_str()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A [`TempConfig`] for the test `name` with `yaml` in it.
pub fn temp_config(name: &str, yaml: &str) -> TempConfig {
    TempConfig(scratch_config(name, yaml))
}

/// The scratch config file itself; whoever holds the path removes its directory.
fn scratch_config(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("push-serve-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("conf.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

impl Daemon {
    /// Starts the daemon with `password`, logging at `rust_log`, with `extra` config lines,
    /// and waits until it listens.
    pub async fn start(name: &str, rust_log: &str, password: &str, extra: &str) -> Daemon {
        let yaml = format!("addr: 127.0.0.1:0\npassword: {password}\n{extra}");
        let config_path = scratch_config(name, &yaml);
        let mut child = Command::new(BIN)
            .args(["--config", config_path.to_str().unwrap()])
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the push-serve binary starts");
        let lines = Arc::new(Lines::default());
        let (tx, changed) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let readers = vec![
            read_lines(stdout, lines.clone(), tx.clone()),
            read_lines(stderr, lines.clone(), tx),
        ];
        let mut daemon = Daemon {
            server: Server::external(([127, 0, 0, 1], 0).into(), password),
            config_path,
            pid: child.id(),
            child: Some(child),
            lines,
            changed,
            readers,
        };
        let line = daemon.wait_for_log(0, "listening on").await;
        let addr = listening_addr(&line)
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .parse()
            .unwrap();
        daemon.server = Server::external(addr, password);
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Replaces the config file (a SIGHUP makes the daemon read it).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml).unwrap();
    }

    /// Sends `signal` (`TERM`, `HUP`, `KILL`…) to the daemon.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{signal} {}", self.pid);
    }

    /// How many lines it has written so far: a mark for [`Daemon::wait_for_log`].
    pub fn mark(&self) -> usize {
        self.lines.lines.lock().unwrap().len()
    }

    /// Everything it wrote so far.
    pub fn log(&self) -> String {
        self.lines.lines.lock().unwrap().join("\n")
    }

    /// Waits for the first line from the `from`th on (see [`Daemon::mark`]) that contains
    /// `needle`, and returns it. Panics, with the log, if the daemon ends or nothing comes in
    /// time.
    pub async fn wait_for_log(&self, from: usize, needle: &str) -> String {
        let mut changed = self.changed.clone();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let ended = {
                let lines = self.lines.lines.lock().unwrap();
                if let Some(line) = lines.iter().skip(from).find(|l| l.contains(needle)) {
                    return line.clone();
                }
                changed.has_changed().is_err()
            };
            assert!(
                !ended,
                "the daemon ended without {needle:?}:\n{}",
                self.log()
            );
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(_) => {}
                Err(_) => panic!("no line with {needle:?} in time:\n{}", self.log()),
            }
        }
    }

    /// Waits for the process to exit (after a signal), and returns its status and log.
    pub async fn wait_exit(&mut self, within: Duration) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("still running");
        let waited =
            tokio::time::timeout(within, tokio::task::spawn_blocking(move || child.wait())).await;
        let status = match waited {
            Ok(joined) => joined.unwrap().unwrap(),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &self.pid.to_string()])
                    .status();
                panic!("the daemon did not exit in {within:?}:\n{}", self.log());
            }
        };
        // Both streams are at their end once the process is gone.
        for reader in self.readers.drain(..) {
            let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        }
        (status, self.log())
    }

    /// SIGTERM, then the exit status and everything it wrote.
    pub async fn stop(mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(15)).await
    }

    /// SIGKILL: no shutdown, connections drop at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        // The scratch directory of its config file (one per test run and name).
        if let Some(dir) = self.config_path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The address of a `… listening on 127.0.0.1:41234` line, text or JSON.
fn listening_addr(line: &str) -> Option<&str> {
    let rest = line.split("listening on ").nth(1)?;
    rest.split(|c: char| c.is_whitespace() || c == '"').next()
}

fn read_lines(
    stream: impl std::io::Read + Send + 'static,
    lines: Arc<Lines>,
    tx: Arc<watch::Sender<usize>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            eprintln!("[push-serve] {line}");
            lines.lines.lock().unwrap().push(line);
            tx.send_modify(|n| *n += 1);
        }
        // The last reader to end drops the last sender: waiters see the end.
    })
}
