//! Cluster test harness: real `redis-server` processes on free ports, push-serve nodes in this
//! process or as the real binary (so one can be SIGKILLed), and a resuming `proto=2` client
//! that keeps positions the way `client/push-serve.js` does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::*;

/// A `redis-server` child process, killed when dropped.
pub struct Redis {
    pub port: u16,
    dir: std::path::PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    /// Starts a throwaway Redis without persistence, or `None` (after saying so once) when
    /// `redis-server` is not installed: `.ci/run` installs it, so CI never skips.
    pub async fn start() -> Option<Redis> {
        Redis::start_with(&["--save", "", "--appendonly", "no"]).await
    }

    /// Starts Redis with `extra` arguments (persistence settings).
    pub async fn start_with(extra: &[&str]) -> Option<Redis> {
        if !require(
            "a cluster test",
            "redis-server",
            runs("redis-server", "--version"),
        ) {
            return None;
        }
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("push-serve-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        redis.spawn().await;
        Some(redis)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let port = self.port;
        eventually("redis to answer", || async move {
            redis_cmd(port, &["PING"])
                .await
                .is_some_and(|r| r.contains("PONG"))
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// SIGKILL: no save, connections drop at once.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (and data directory).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Runs one command, returning the raw RESP reply text.
    pub async fn cmd(&self, args: &[&str]) -> Option<String> {
        redis_cmd(self.port, args).await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One command over a fresh connection, in RESP; the reply's raw text.
async fn redis_cmd(port: u16, args: &[&str]) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![0; 65536];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An in-process node of the cluster on `redis`.
pub async fn node(redis: &Redis, tweak: impl FnOnce(&mut Config)) -> Server {
    let url = redis.url();
    let server = Server::start(move |c| {
        c.redis_url = Some(url);
        tweak(c);
    })
    .await;
    wait_ready(&server).await;
    server
}

/// The push-serve binary as a node of the cluster on `redis`; killed when dropped.
pub struct BinaryNode {
    pub server: Server,
    child: Option<Child>,
}

impl BinaryNode {
    pub async fn start(redis: &Redis, name: &str) -> BinaryNode {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("push-serve-node-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("conf.yaml");
        std::fs::write(
            &path,
            format!(
                "addr: 127.0.0.1:{port}\npassword: {PASSWORD}\nredis_url: {}\n",
                redis.url()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_push-serve"))
            .args(["--config", path.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let server = Server::external(([127, 0, 0, 1], port).into(), PASSWORD);
        let addr = server.addr;
        eventually("the node to listen", || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        // Listening comes before joining the cluster: wait until it takes sockets.
        let node = BinaryNode {
            server,
            child: Some(child),
        };
        wait_ready(&node.server).await;
        node
    }

    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        c.wait().unwrap()
    }
}

impl Drop for BinaryNode {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Waits until `server` accepts sockets (a cluster node joins Redis after it starts listening).
pub async fn wait_ready(server: &Server) {
    let key = server.key("readiness-probe").await;
    let url = server.ws_url("readiness-probe", &key);
    eventually("the node to accept sockets", || {
        let url = url.clone();
        async move { tokio_tungstenite::connect_async(url).await.is_ok() }
    })
    .await;
}

pub fn body(topic: &str, contents: &str) -> String {
    format!(r#"{{"topic":"{topic}","contents":{contents}}}"#)
}

/// `POST path` with the password, on a fresh connection.
pub async fn post(s: &Server, path: &str, body: &str) -> Reply {
    let sep = if path.contains('?') { '&' } else { '?' };
    let target = format!("{path}{sep}password={}", enc(&s.password));
    s.http()
        .await
        .request("POST", &target, &[], body.as_bytes())
        .await
}

/// A `proto=2` client that keeps each stream's position as `client/push-serve.js` does, and
/// records what it received.
pub struct Resumer {
    pub uid: String,
    pub key: String,
    pub positions: HashMap<String, String>,
    /// `(stream, number, contents)` of every message, in arrival order.
    pub received: Vec<(String, u64, Value)>,
    pub gaps: Vec<Value>,
}

impl Resumer {
    pub fn new(uid: &str, key: &str) -> Resumer {
        Resumer {
            uid: uid.into(),
            key: key.into(),
            positions: HashMap::new(),
            received: Vec::new(),
            gaps: Vec::new(),
        }
    }

    pub fn url(&self, addr: SocketAddr) -> String {
        let mut q = format!(
            "ws://{addr}/ws?uid={}&access_key={}&proto=2",
            enc(&self.uid),
            enc(&self.key)
        );
        if !self.positions.is_empty() {
            q.push_str(&format!(
                "&since={}",
                enc(&serde_json::to_string(&self.positions).unwrap())
            ));
        }
        q
    }

    /// Connects to `server` with its positions and reads the welcome.
    pub async fn connect(&mut self, server: &Server) -> Ws {
        let (mut ws, _) = tokio_tungstenite::connect_async(self.url(server.addr))
            .await
            .expect("upgrade");
        let welcome: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(welcome["topic"], "_welcome", "{welcome}");
        self.apply(&welcome);
        ws
    }

    /// Applies one frame.
    pub fn apply(&mut self, frame: &Value) {
        match frame["topic"].as_str() {
            Some("_welcome") => {
                for (stream, pos) in frame["contents"]["streams"].as_object().unwrap() {
                    let pos = pos.as_str().unwrap();
                    let generation = pos.split(':').next().unwrap();
                    match self.positions.get(stream) {
                        None => {
                            self.positions.insert(stream.clone(), pos.to_string());
                        }
                        Some(old) if !old.starts_with(&format!("{generation}:")) => {
                            self.positions
                                .insert(stream.clone(), format!("{generation}:0"));
                        }
                        Some(_) => {}
                    }
                }
            }
            Some("_gap") => self.gaps.push(frame.clone()),
            _ => {
                let stream = frame["stream"].as_str().unwrap().to_string();
                let n = frame["number"].as_u64().unwrap();
                let pos = &self.positions[&stream];
                let (generation, seen) = pos.split_once(':').unwrap();
                assert!(
                    n > seen.parse::<u64>().unwrap(),
                    "{stream} message {n} arrived again after {pos}"
                );
                self.positions
                    .insert(stream.clone(), format!("{generation}:{n}"));
                self.received.push((stream, n, frame["contents"].clone()));
            }
        }
    }

    /// Reads frames until `want` messages have been received in all, or the socket closes
    /// (returns its close code then).
    pub async fn read_until(&mut self, ws: &mut Ws, want: usize) -> Option<u16> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        while self.received.len() < want {
            let msg = tokio::time::timeout(PATIENCE, ws.next())
                .await
                .expect("a frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => self.apply(&serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(f))) => return Some(f.map_or(1005, |f| f.code.into())),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Some(1006),
            }
        }
        None
    }
}
