//! Cluster test harness: real `redis-server` processes, push-serve nodes in this process or as
//! the real binary (so one can be SIGKILLed), and a resuming `proto=2` client that keeps
//! positions the way `client/push-serve.js` does.

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
        // Redis cannot bind port 0 and report the port (0 turns TCP off), so a free port is
        // picked and, should another process take it first, Redis fails to bind and exits
        // before saying it is ready: then another port is tried. Only a Redis that says it is
        // ready on our port is ours.
        let cluster = extra.contains(&"--cluster-enabled");
        for _ in 0..5 {
            let port = if cluster {
                free_cluster_port()
            } else {
                free_port()
            };
            let dir = std::env::temp_dir()
                .join(format!("push-serve-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut redis = Redis {
                port,
                dir,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            if redis.spawn().await {
                return Some(redis);
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts redis-server on `self.port`; whether it is up and listening (false: it exited,
    /// most likely because the port was taken).
    async fn spawn(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let stdout = child.stdout.take().unwrap();
        self.child = Some(child);
        // Its log says when it accepts connections; the rest is read and dropped (a full pipe
        // would stall it).
        let ready = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut lines = std::io::BufReader::new(stdout).lines();
            let ready = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.contains("Ready to accept connections"));
            std::thread::spawn(move || lines.for_each(drop));
            ready
        });
        let ready = tokio::time::timeout(PATIENCE, ready)
            .await
            .expect("redis-server starts in time")
            .unwrap();
        if !ready {
            self.kill();
        }
        ready
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

    /// Starts again on the same port (and data directory): the nodes know it by its port.
    pub async fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn().await,
            "redis-server restarts on port {}",
            self.port
        );
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

/// A port free a moment ago, for redis-server (which cannot report a port it chose itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free a moment ago whose cluster bus port (+10,000) is a port and free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = 20_000 + (rand_u64() % 35_000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// An in-process node of the cluster on `redis`.
pub async fn node(redis: &Redis, tweak: impl FnOnce(&mut Config)) -> Server {
    let url = redis.url();
    let server = Server::start(move |c| {
        c.redis_url = Some(url.into());
        c.redis_cluster.clear();
        tweak(c);
    })
    .await;
    wait_ready(&server).await;
    server
}

/// The push-serve binary as a node of the cluster on `redis`; killed when dropped.
pub struct BinaryNode {
    pub server: Server,
    daemon: Option<daemon::Daemon>,
}

impl BinaryNode {
    pub async fn start(redis: &Redis, name: &str) -> BinaryNode {
        BinaryNode::start_with(&format!("redis_url: {}\n", redis.url()), name).await
    }

    /// The binary with `yaml` (the Redis settings) added to its config.
    pub async fn start_with(yaml: &str, name: &str) -> BinaryNode {
        let daemon = daemon::Daemon::start(
            &format!("node-{name}"),
            "warn,push_serve=info",
            PASSWORD,
            yaml,
        )
        .await;
        let node = BinaryNode {
            server: daemon.server.clone_with_password(PASSWORD),
            daemon: Some(daemon),
        };
        // Listening comes before joining the cluster: wait until it takes sockets.
        wait_ready(&node.server).await;
        node
    }

    pub fn sigkill(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.kill();
        }
    }

    pub async fn sigterm(&mut self) -> std::process::ExitStatus {
        let daemon = self.daemon.take().expect("running");
        daemon.stop().await.0
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
        self.try_connect(server).await.expect("upgrade")
    }

    /// [`Resumer::connect`], or `None` if the upgrade is refused (a node between
    /// incarnations answers 503).
    pub async fn try_connect(&mut self, server: &Server) -> Option<Ws> {
        let (mut ws, _) = tokio_tungstenite::connect_async(self.url(server.addr))
            .await
            .ok()?;
        let welcome: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
        assert_eq!(welcome["topic"], "_welcome", "{welcome}");
        self.apply(&welcome);
        Some(ws)
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

/// A Redis Cluster on loopback: three masters and three replicas, made with
/// `redis-cli --cluster create` from Debian's `redis-server`. Every process is killed when
/// dropped.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Starts it, or `None` (after saying so) without `redis-server`.
    pub async fn start() -> Option<RedisCluster> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(
                Redis::start_with(&[
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    // Replicas in sync at once (a replica that never synced cannot take over).
                    "--repl-diskless-sync-delay",
                    "0",
                ])
                .await?,
            );
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = tokio::task::spawn_blocking(move || create.output())
            .await
            .unwrap()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        for n in &cluster.nodes {
            eventually("the redis cluster to be ok", || async {
                n.cmd(&["CLUSTER", "INFO"])
                    .await
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            })
            .await;
            // Every replica synced with its master, so that it can take over.
            eventually("the replicas to be in sync", || async {
                n.cmd(&["INFO", "replication"]).await.is_some_and(|i| {
                    i.contains("role:master") || i.contains("master_link_status:up")
                })
            })
            .await;
        }
        Some(cluster)
    }

    /// Seed URLs, as `redis_cluster` lists them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The `redis_cluster:` setting in YAML.
    pub fn yaml(&self) -> String {
        format!("redis_cluster: [{}]\n", self.urls().join(", "))
    }

    /// The index in [`RedisCluster::nodes`] of the master that serves `key` now.
    pub async fn master_of(&self, key: &str) -> usize {
        let any = self.nodes.iter().find(|n| n.child.is_some()).unwrap();
        let slot: u16 = any.cmd(&["CLUSTER", "KEYSLOT", key]).await.unwrap()[1..]
            .trim()
            .parse()
            .unwrap();
        let nodes = any.cmd(&["CLUSTER", "NODES"]).await.unwrap();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
                    (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let port: u16 = fields[1]
                    .split('@')
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap();
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no master serves slot {slot}: {nodes}");
    }
}

/// An in-process node on the Redis Cluster `cluster`.
pub async fn cluster_node(cluster: &RedisCluster, tweak: impl FnOnce(&mut Config)) -> Server {
    let urls = cluster.urls();
    let server = Server::start(move |c| {
        c.redis_url = None;
        c.redis_cluster = urls.into_iter().map(Into::into).collect();
        tweak(c);
    })
    .await;
    wait_ready(&server).await;
    server
}

/// Issue 19's colliding pair, pushed to on `a`: uid `a`'s idempotency record for key `Q}:m`
/// was the same Redis key as the metadata of uid `a}:i:Q`. Both uids must work, the retry must
/// still be recognised as one, and the node must stay ready.
pub async fn colliding_uids_both_work(a: &Server) {
    let mut plain = a.connect("a").await;
    let mut http = a.http().await;
    let r = http
        .request(
            "POST",
            &format!("/push?uid=a&password={}", enc(&a.password)),
            &[("Idempotency-Key", "Q}:m")],
            body("t", "1").as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        next_text(&mut plain).await,
        r#"{"topic":"t","number":1,"contents":1}"#
    );
    // The other uid's page connects (its meta is written) and gets its push.
    let mut evil = a.connect("a}:i:Q").await;
    let r = a.push("a}:i:Q", &body("t", "2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        next_text(&mut evil).await,
        r#"{"topic":"t","number":1,"contents":2}"#
    );
    // And the first uid's retry is still recognised as one.
    let r = http
        .request(
            "POST",
            &format!("/push?uid=a&password={}", enc(&a.password)),
            &[("Idempotency-Key", "Q}:m")],
            body("t", "1").as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ready = a.http().await.get("/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
}

/// A `proto=2` page of `uid` with access key `key` on `s`, past its `_welcome`.
pub async fn connect_v2(s: &Server, uid: &str, key: &str) -> Ws {
    let url = format!("{}&proto=2", s.ws_url(uid, key));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(welcome["topic"], "_welcome");
    ws
}

/// `method` on `/pool/<name>` of `s` with the password and `body`.
pub async fn pool(s: &Server, method: &str, name: &str, body: &str) -> Reply {
    let target = format!("/pool/{name}?password={}", enc(&s.password));
    s.http()
        .await
        .request(method, &target, &[], body.as_bytes())
        .await
}

/// Data pools as a push-serve before the document moved under its topic stream's hash tag
/// left them: name, document, number of its last change.
pub const OLD_POOLS: [(&str, &str, &str); 4] = [
    ("list", "[1, 2]", "5"),
    ("cfg", r#"{"a":1}"#, "2"),
    ("gone", "[]", "1"),
    ("seen", r#"["x"]"#, "3"),
];

/// The Redis commands (each with its key second) that write [`OLD_POOLS`] as that version
/// did under key prefix `prefix`: a hash `<prefix>:pool:{<name>}` each, and the set of pools.
pub fn old_pool_commands(prefix: &str) -> Vec<Vec<String>> {
    let mut commands: Vec<Vec<String>> = OLD_POOLS
        .iter()
        .map(|(name, doc, seq)| {
            [
                "HSET",
                &format!("{prefix}:pool:{{{name}}}"),
                "doc",
                doc,
                "seq",
                seq,
            ]
            .map(String::from)
            .to_vec()
        })
        .collect();
    let mut set = vec!["SADD".to_string(), format!("{prefix}:pools")];
    set.extend(OLD_POOLS.iter().map(|(name, ..)| name.to_string()));
    commands.push(set);
    commands
}

/// On nodes `a` and `b` of a Redis that holds [`OLD_POOLS`] under the old key names: every
/// pool reads, changes and snapshots as if it had always been under its new name (an upgrade
/// loses no pool), from either node.
pub async fn old_pools_are_moved_on_first_use(a: &Server, b: &Server) {
    let r = pool(b, "GET", "list", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["number"].as_u64(), &r.json()["contents"]),
        (Some(5), &serde_json::json!([1, 2]))
    );
    let r = pool(a, "POST", "list", "3").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["contents"]["event"], "list:append");
    let r = pool(b, "GET", "list", "").await;
    assert_eq!(r.json()["contents"], serde_json::json!([1, 2, 3]));
    // The document keeps its text: the append adds `,3` before its `]`.
    assert!(r.text().contains(r#""contents":[1, 2,3]"#), "{}", r.text());

    let r = pool(a, "PUT", "cfg", r#"{"a":2}"#).await;
    assert_eq!(r.json()["contents"]["event"], "cfg:update", "{}", r.text());
    let r = pool(b, "GET", "cfg", "").await;
    assert_eq!(r.json()["contents"], serde_json::json!({"a": 2}));

    let r = pool(b, "DELETE", "gone", "").await;
    assert_eq!(r.json()["contents"]["event"], "gone:delete", "{}", r.text());
    pool(a, "GET", "gone", "").await.assert_error(404);

    let r = a
        .http()
        .await
        .get(&format!(
            "/access?uid=p&topics=seen&password={}",
            enc(&a.password)
        ))
        .await;
    let key = r.json()["contents"].as_str().unwrap().to_string();
    let mut page = connect_v2(a, "p", &key).await;
    let snapshot: Value = serde_json::from_str(&next_text(&mut page).await).unwrap();
    assert_eq!(snapshot["topic"], "seen:snapshot", "{snapshot}");
    assert_eq!(snapshot["contents"], serde_json::json!(["x"]));
    let r = pool(b, "POST", "seen", r#""y""#).await;
    assert_eq!(r.json()["contents"]["event"], "seen:append", "{}", r.text());
    let change: Value = serde_json::from_str(&next_text(&mut page).await).unwrap();
    assert_eq!(
        (&change["topic"], &change["contents"]),
        (&"seen:append".into(), &"y".into())
    );
}
