//! Starting and stopping one server under test, and reading its memory and CPU from /proc.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ServerSpec;

/// A running server: a direct child process, so its pid is the server's.
pub struct ServerProc {
    pub name: String,
    pub addr: SocketAddr,
    pub pid: u32,
    /// Other processes whose CPU counts as this server's (a cluster's other node and Redis).
    pub companions: Vec<u32>,
    pub log_path: PathBuf,
    pub command: String,
    child: Option<Child>,
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl ServerProc {
    /// Writes `<dir>/<name>.yaml`, spawns the server with it and waits until it accepts TCP.
    pub async fn start(
        spec: &ServerSpec,
        dir: &Path,
        password: &str,
        extra_conf: &str,
        pin: bool,
    ) -> Result<ServerProc> {
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let conf = dir.join(format!("{}.yaml", spec.name));
        fs::write(
            &conf,
            format!("addr: \"{addr}\"\npassword: \"{password}\"\n{extra_conf}"),
        )
        .with_context(|| format!("write {}", conf.display()))?;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args_before_config).arg(&conf);
        ServerProc::launch(&spec.name, cmd, addr, dir, pin).await
    }

    /// Spawns `cmd` (which must exec the server itself, so the child's pid is the server's)
    /// with its output in `<dir>/<name>.log`, pinned to [`SERVER_CPU`] when `pin`, and waits
    /// until `addr` accepts TCP.
    pub async fn launch(
        name: &str,
        mut cmd: Command,
        addr: SocketAddr,
        dir: &Path,
        pin: bool,
    ) -> Result<ServerProc> {
        let log_path = dir.join(format!("{name}.log"));
        let log = fs::File::create(&log_path)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if pin {
            use std::os::unix::process::CommandExt;
            // SAFETY: only sched_setaffinity runs between fork and exec (async-signal-safe).
            unsafe {
                cmd.pre_exec(|| pin_to(&[SERVER_CPU]));
            }
        }
        let command = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", cmd.get_program().to_string_lossy()))?;
        let mut server = ServerProc {
            name: name.to_string(),
            addr,
            pid: child.id(),
            companions: Vec::new(),
            log_path,
            command,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.exited() {
                bail!(
                    "{} exited at start ({status}); log: {}",
                    server.name,
                    server.log_tail()
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                server.stop(Duration::ZERO).await;
                bail!("{name} did not accept on {addr} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// VmRSS in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid)
    }

    /// utime + stime in seconds, of the server and its companions.
    pub fn cpu_secs(&self) -> f64 {
        std::iter::once(self.pid)
            .chain(self.companions.iter().copied())
            .map(|pid| proc_cpu_secs(pid).unwrap_or(0.0))
            .sum()
    }

    /// The last lines of the server's output.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join(" | ")
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns how it ended.
    pub async fn stop(&mut self, grace: Duration) -> String {
        let Some(mut child) = self.child.take() else {
            return "already stopped".into();
        };
        if let Ok(Some(status)) = child.try_wait() {
            return format!("had exited: {status}");
        }
        // SAFETY: signalling our own child, which has not been reaped yet (pid still ours).
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return format!("exited after SIGTERM: {status}");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return "killed (SIGKILL) after the SIGTERM grace".into();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// utime + stime of a process (all threads), seconds.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / if tck > 0.0 { tck } else { 100.0 })
}

/// This process's user + system CPU, seconds.
pub fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// Raises this process's open-files soft limit to the hard limit; returns the new soft limit.
/// Restricts the calling thread (and every thread or process it creates afterwards) to `cpus`.
/// Called from `main` before the runtime starts, and in the server child before `exec`.
pub fn pin_to(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t we own, filled with CPU_SET, passed with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPU a pinned server runs on: CPU 0. The load generator takes the others.
pub const SERVER_CPU: usize = 0;

pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit on a zeroed struct we own.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur as u64
    }
}

/// Busy CPU seconds of the whole machine (all cores), from /proc/stat.
pub fn machine_busy_secs() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    // cpu user nice system idle iowait irq softirq steal ...
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy / if tck > 0.0 { tck } else { 100.0 }
}

/// CPU use over one scenario, 100 = one core.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    pub wall: f64,
    pub loadgen: f64,
    pub server: f64,
    /// Everything else on the machine (other processes, `hold` children, the kernel's share
    /// not charged to either process).
    pub other: f64,
}

/// Wall time plus this process's, the server's and the machine's CPU over one scenario.
pub struct Meter {
    t0: Instant,
    self0: f64,
    srv0: f64,
    busy0: f64,
    pids: Vec<u32>,
}

impl Meter {
    pub fn start(server: &ServerProc) -> Meter {
        Meter {
            t0: Instant::now(),
            self0: self_cpu_secs(),
            srv0: server.cpu_secs(),
            busy0: machine_busy_secs(),
            pids: std::iter::once(server.pid)
                .chain(server.companions.iter().copied())
                .collect(),
        }
    }

    pub fn finish(&self) -> CpuUse {
        let wall = self.t0.elapsed().as_secs_f64().max(1e-9);
        let loadgen = (self_cpu_secs() - self.self0) / wall * 100.0;
        let now: f64 = self
            .pids
            .iter()
            .map(|&pid| proc_cpu_secs(pid).unwrap_or(0.0))
            .sum();
        let server = (now - self.srv0).max(0.0) / wall * 100.0;
        let all = (machine_busy_secs() - self.busy0) / wall * 100.0;
        if wall < 0.25 {
            // /proc counts in 10 ms ticks: too coarse for a blink.
            return CpuUse {
                wall,
                loadgen: f64::NAN,
                server: f64::NAN,
                other: f64::NAN,
            };
        }
        CpuUse {
            wall,
            loadgen,
            server,
            other: (all - loadgen - server).max(0.0),
        }
    }
}

/// A throwaway `redis-server` (no persistence) for a cluster run; killed when dropped.
pub struct RedisProc {
    pub port: u16,
    pub pid: u32,
    child: Child,
    dir: PathBuf,
}

impl RedisProc {
    /// Starts it on a free port (pinned like the server when `pin`) and waits for PING.
    pub async fn start(dir: &Path, pin: bool) -> Result<RedisProc> {
        let port = free_port()?;
        let dir = dir.join(format!("redis-{port}"));
        fs::create_dir_all(&dir)?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if pin {
            use std::os::unix::process::CommandExt;
            // SAFETY: only sched_setaffinity runs between fork and exec (async-signal-safe).
            unsafe {
                cmd.pre_exec(|| pin_to(&[SERVER_CPU]));
            }
        }
        let child = cmd
            .spawn()
            .context("spawn redis-server (apt-get install redis-server)")?;
        let redis = RedisProc {
            port,
            pid: child.id(),
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && s.read(&mut buf)
                        .await
                        .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
                {
                    return Ok(redis);
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer on port {port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
