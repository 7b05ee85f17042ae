//! Test harness: a real server on a loopback port, a minimal keep-alive HTTP/1.1 client over a
//! real TCP socket, and WebSocket clients (tokio-tungstenite).
//!
//! Contract tests call [`Server::start_default`]: in-process push-serve normally, or any
//! server implementing the contract when `PUSH_SERVE_TARGET=host:port` (and
//! `PUSH_SERVE_PASSWORD`) are set, so the benchmark's peer servers pass the same tests.

#![allow(dead_code)]

pub mod cluster;
pub mod daemon;
pub mod raw_ws;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use push_serve::reload::{Outcome, ReloadError, Reloader};
use push_serve::Config;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const PASSWORD: &str = "test-password";
/// Upper bound for anything a test waits on; a hang fails instead of blocking CI.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Server {
    pub addr: SocketAddr,
    pub password: String,
    /// The password-free `/metrics` listener, if started with one.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// In-process only: the config it runs with, and the way to change it while it runs.
    reload: Option<(std::sync::Mutex<Config>, Reloader)>,
}

impl Server {
    /// The server under contract test: external if `PUSH_SERVE_TARGET` is set.
    pub async fn start_default() -> Server {
        if let Ok(target) = std::env::var("PUSH_SERVE_TARGET") {
            let password = std::env::var("PUSH_SERVE_PASSWORD").unwrap_or_else(|_| PASSWORD.into());
            return Server::external(
                target.parse().expect("PUSH_SERVE_TARGET is host:port"),
                &password,
            );
        }
        Server::start(|_| {}).await
    }

    /// A server running elsewhere (another process) at `addr`.
    pub fn external(addr: SocketAddr, password: &str) -> Server {
        Server {
            addr,
            password: password.into(),
            metrics_addr: None,
            stop: None,
            task: None,
            reload: None,
        }
    }

    /// In-process push-serve on 127.0.0.1:0 with `tweak` applied to the default config.
    /// With `PUSH_SERVE_TEST_REDIS=redis://…` set, every such server is a cluster node on that
    /// Redis (each under its own key prefix), so the whole suite runs against the Redis broker;
    /// with `PUSH_SERVE_TEST_REDIS_CLUSTER=redis://…,redis://…`, on that Redis Cluster.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Server {
        Server::start_inner(tweak, false).await
    }

    /// Like [`Server::start`], also serving `/metrics` without a password on a second
    /// loopback port ([`Server::metrics_addr`]), as `metrics_addr` does.
    pub async fn start_with_metrics_listener(tweak: impl FnOnce(&mut Config)) -> Server {
        Server::start_inner(tweak, true).await
    }

    async fn start_inner(tweak: impl FnOnce(&mut Config), metrics_listener: bool) -> Server {
        // `PUSH_SERVE_TEST_LOG=debug` (a RUST_LOG filter): the in-process servers' log on stderr.
        if let Ok(filter) = std::env::var("PUSH_SERVE_TEST_LOG") {
            let _ = env_logger::Builder::new()
                .parse_filters(&filter)
                .is_test(true)
                .try_init();
        }
        let mut config = Config::new("127.0.0.1:0", PASSWORD);
        if let Ok(url) = std::env::var("PUSH_SERVE_TEST_REDIS") {
            config.redis_url = Some(url.into());
            config.redis_prefix = format!("test-{:016x}", rand_u64());
        }
        // `redis://host:port,redis://host:port,…`: the same on a Redis Cluster.
        if let Ok(urls) = std::env::var("PUSH_SERVE_TEST_REDIS_CLUSTER") {
            config.redis_cluster = urls.split(',').map(|u| u.trim().into()).collect();
            config.redis_prefix = format!("test-{:016x}", rand_u64());
        }
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let listener = push_serve::server::bind(config.socket_addr().unwrap(), 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = metrics_listener
            .then(|| push_serve::server::bind("127.0.0.1:0".parse().unwrap(), 64).unwrap());
        let metrics_addr = metrics.as_ref().map(|l| l.local_addr().unwrap());
        let password = config.password.expose().to_owned();
        let (stop, stopped) = oneshot::channel::<()>();
        let (reloader, reloads) = push_serve::reload::channel();
        let running = config.clone();
        let task = tokio::spawn(async move {
            push_serve::run_reloadable(listener, metrics, config, reloads, async {
                let _ = stopped.await;
            })
            .await
            .expect("run accepts the test config")
        });
        Server {
            addr,
            password,
            metrics_addr,
            stop: Some(stop),
            task: Some(task),
            reload: Some((std::sync::Mutex::new(running), reloader)),
        }
    }

    /// Changes the running config as a reload of its file would (SIGHUP on the binary), and
    /// returns once it is applied.
    pub async fn reload(&self, tweak: impl FnOnce(&mut Config)) -> Result<Outcome, ReloadError> {
        let (config, reloader) = self.reload.as_ref().expect("an in-process server");
        let next = {
            let mut config = config.lock().unwrap();
            tweak(&mut config);
            config.clone()
        };
        reloader.reload(next).await
    }

    /// The same server, as a client that presents `password`.
    pub fn clone_with_password(&self, password: &str) -> Server {
        Server::external(self.addr, password)
    }

    pub fn is_external(&self) -> bool {
        self.task.is_none()
    }

    /// Triggers a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Triggers a graceful shutdown and waits for `run` to return.
    pub async fn shutdown(&mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE * 3, task)
                .await
                .expect("run() returned after shutdown")
                .unwrap();
        }
    }

    pub async fn http(&self) -> Http {
        Http::connect(self.addr).await
    }

    /// A fresh access key for `uid` from `/access`.
    pub async fn key(&self, uid: &str) -> String {
        let r = self
            .http()
            .await
            .get(&format!(
                "/access?uid={}&password={}",
                enc(uid),
                enc(&self.password)
            ))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.text());
        let json = r.json();
        assert_eq!(json["topic"], "_access");
        json["contents"].as_str().unwrap().to_string()
    }

    pub fn ws_url(&self, uid: &str, key: &str) -> String {
        format!(
            "ws://{}/ws?uid={}&access_key={}",
            self.addr,
            enc(uid),
            enc(key)
        )
    }

    /// Opens a socket for `uid` with a fresh key.
    pub async fn connect(&self, uid: &str) -> Ws {
        let key = self.key(uid).await;
        self.connect_with_key(uid, &key).await
    }

    pub async fn connect_with_key(&self, uid: &str, key: &str) -> Ws {
        let (ws, resp) = tokio::time::timeout(
            PATIENCE,
            tokio_tungstenite::connect_async(self.ws_url(uid, key)),
        )
        .await
        .expect("connect in time")
        .expect("upgrade accepted");
        assert_eq!(resp.status(), 101);
        ws
    }

    /// How many sockets `uid` has open, from `GET /online` (asks without pushing anything).
    pub async fn sockets_of(&self, uid: &str) -> u64 {
        let target = format!("/online?uid={}&password={}", enc(uid), enc(&self.password));
        self.http().await.get(&target).await.json()["number"]
            .as_u64()
            .unwrap()
    }

    /// `POST /push` on a fresh connection.
    pub async fn push(&self, uid: &str, body: &str) -> Reply {
        self.http().await.push(uid, &self.password, body).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Whether a suite's outside tool is here: `false` (after one line saying what is missing) lets
/// `cargo test` pass on a machine without Go, Node, Chromium, PHP or Redis. `.ci/run` installs
/// them all and sets `PUSH_SERVE_REQUIRE_ALL=1`, under which a missing tool fails the test
/// instead, so CI cannot go green by skipping.
pub fn require(suite: &str, what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var_os("PUSH_SERVE_REQUIRE_ALL").is_some_and(|v| v != "0") {
        panic!("{suite}: {what} is missing, and PUSH_SERVE_REQUIRE_ALL is set");
    }
    eprintln!("skipped {suite}: {what} is missing (bash .ci/run installs it)");
    false
}

/// Whether `program` runs (with `arg`, e.g. `--version`).
pub fn runs(program: &str, arg: &str) -> bool {
    std::process::Command::new(program)
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// A random number from the OS (tests need no rand dependency of their own).
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the error envelope: status, JSON content type, topic "error", a reason.
    pub fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "content-type of {self:?}"
        );
        let json = self.json();
        assert_eq!(json["topic"], "error", "{json}");
        assert!(json["number"].is_u64(), "{json}");
        let reason = json["contents"]
            .as_str()
            .expect("reason is a string")
            .to_string();
        assert!(!reason.is_empty());
        reason
    }
}

/// Reads HTTP responses off any byte stream.
pub struct RawReply<R> {
    reader: BufReader<R>,
}

impl<R: tokio::io::AsyncRead + Unpin> RawReply<R> {
    pub fn new(read: R) -> Self {
        RawReply {
            reader: BufReader::new(read),
        }
    }

    pub async fn read(&mut self) -> Reply {
        tokio::time::timeout(PATIENCE, read_reply(&mut self.reader))
            .await
            .expect("HTTP reply in time")
    }
}

/// A keep-alive HTTP/1.1 client on one real TCP connection: requests on it are sent in order,
/// like a backend's connection pool entry.
pub struct Http {
    reader: BufReader<TcpStream>,
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Http {
            reader: BufReader::new(stream),
        }
    }

    pub async fn get(&mut self, target: &str) -> Reply {
        self.request("GET", target, &[], b"").await
    }

    pub async fn push(&mut self, uid: &str, password: &str, body: &str) -> Reply {
        let target = format!("/push?uid={}&password={}", enc(uid), enc(password));
        self.request(
            "POST",
            &target,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await
    }

    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        tokio::time::timeout(PATIENCE, self.request_inner(method, target, headers, body))
            .await
            .expect("HTTP reply in time")
    }

    async fn request_inner(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        self.send(method, target, headers, body).await;
        let (status, headers) = read_head(&mut self.reader).await;
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            read_body(&mut self.reader, &headers).await
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Writes a request without reading the reply: for a reply that streams
    /// ([`Http::read_head`], then [`Http::reader`]), or requests pipelined on one connection.
    pub async fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let bytes = request_bytes(method, target, headers, body);
        self.reader
            .get_mut()
            .write_all(&bytes)
            .await
            .expect("send request");
    }

    /// The status line and headers of the next reply, leaving its body unread.
    pub async fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        tokio::time::timeout(PATIENCE, read_head(&mut self.reader))
            .await
            .expect("HTTP reply in time")
    }

    /// The body of a reply whose head [`Http::read_head`] read.
    pub async fn read_body(&mut self, headers: &[(String, String)]) -> Vec<u8> {
        tokio::time::timeout(PATIENCE, read_body(&mut self.reader, headers))
            .await
            .expect("HTTP body in time")
    }

    /// The connection, for reading a streamed body line by line.
    pub fn reader(&mut self) -> &mut BufReader<TcpStream> {
        &mut self.reader
    }

    pub fn into_reader(self) -> BufReader<TcpStream> {
        self.reader
    }
}

/// An HTTP/1.1 request's bytes (`Content-Length` added for a body, and for every POST).
pub fn request_bytes(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The headers of a WebSocket upgrade request, with RFC 6455 1.3's sample key (so the answer
/// is `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`).
pub const UPGRADE_HEADERS: [(&str, &str); 4] = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// `Sec-WebSocket-Accept` for [`UPGRADE_HEADERS`]' key.
pub const UPGRADE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Reads one response (Content-Length or chunked body).
async fn read_reply<R: tokio::io::AsyncRead + Unpin>(reader: &mut BufReader<R>) -> Reply {
    let (status, headers) = read_head(reader).await;
    let body = read_body(reader, &headers).await;
    Reply {
        status,
        headers,
        body,
    }
}

/// A response's status line and headers.
async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header has a colon");
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    (status, headers)
}

/// A response's body, as its headers describe it (Content-Length, chunked, or none).
async fn read_body<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    headers: &[(String, String)],
) -> Vec<u8> {
    let mut line = String::new();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = find("content-length") {
        body.resize(len.parse().unwrap(), 0);
        reader.read_exact(&mut body).await.expect("body");
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            let n = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    body
}

/// The next text frame, skipping pings/pongs; panics on close or timeout.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket still open")
            .expect("frame reads");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Tries to open a socket at `url`: `Ok` with the socket, or `Err` with the refusal's status
/// and its envelope's reason.
pub async fn try_connect(url: &str) -> Result<Ws, (u16, String)> {
    match tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
        .await
        .expect("an answer in time")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            let json: Value = serde_json::from_slice(body).expect("the refusal is the envelope");
            assert_eq!(json["topic"], "error", "{json}");
            Err((
                resp.status().as_u16(),
                json["contents"].as_str().unwrap_or_default().to_string(),
            ))
        }
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// Reads until the server's close frame and returns its code (skipping data frames).
pub async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket failed before a close frame: {e}"),
            None => return None,
        }
    }
}

/// Waits until `cond` holds, polling; panics after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, PATIENCE, cond).await
}

/// [`eventually`] with its own bound.
pub async fn eventually_within<F, Fut>(what: &str, within: Duration, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        wait_until(within, cond).await,
        "timed out waiting for {what}"
    );
}

/// Waits until `cond` holds or `within` has passed; whether it held. The one place tests poll:
/// for what only a query shows (a count in `/stats`, a key expiring in Redis), asked again
/// every 20 ms. Anything that announces itself (a frame, a log line, a reply) is awaited
/// instead.
pub async fn wait_until<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Upgrades a fresh connection to `/ws` for `uid` with `key` by hand, checks the 101 and its
/// `Sec-WebSocket-Accept`, and returns the connection with nothing read past the handshake:
/// what the page does next (or does not do) is up to the test. `recv_buffer` shrinks the
/// socket's receive buffer, for a client that stops reading.
pub async fn raw_upgrade(
    s: &Server,
    uid: &str,
    key: &str,
    recv_buffer: Option<u32>,
) -> BufReader<TcpStream> {
    let (status, headers, io) = try_raw_upgrade(s, uid, key, recv_buffer).await;
    assert_eq!(status, 101, "{headers:?}");
    let accept = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, v)| v.as_str());
    assert_eq!(accept, Some(UPGRADE_ACCEPT));
    io
}

/// [`raw_upgrade`] without the checks: the status and headers of the reply, and the
/// connection (with the body of a refusal unread).
pub async fn try_raw_upgrade(
    s: &Server,
    uid: &str,
    key: &str,
    recv_buffer: Option<u32>,
) -> (u16, Vec<(String, String)>, BufReader<TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket.connect(s.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut http = Http {
        reader: BufReader::new(stream),
    };
    let target = format!("/ws?uid={}&access_key={}", enc(uid), enc(key));
    http.send("GET", &target, &UPGRADE_HEADERS, b"").await;
    let (status, headers) = http.read_head().await;
    (status, headers, http.reader)
}

/// Performs the WebSocket handshake by hand and then never reads or answers anything: a
/// half-open or frozen client.
pub async fn silent_client(s: &Server, uid: &str, recv_buffer: Option<u32>) -> TcpStream {
    let key = s.key(uid).await;
    // Whatever the reader buffered past the handshake is dropped: this client reads nothing.
    raw_upgrade(s, uid, &key, recv_buffer).await.into_inner()
}
