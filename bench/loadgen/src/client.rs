//! Client side: WebSocket sockets (bound to rotating loopback source addresses), the tasks that
//! read them, and a minimal HTTP/1.1 keep-alive client for `/push` and `/access`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::keys::KeyMaker;

/// A client WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since this process's benchmark epoch. Senders put it in each push's `contents`,
/// receivers (in the same process) subtract it from their own reading.
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A latency histogram in nanoseconds (1 µs .. 10 min, 3 significant digits).
pub fn new_hist() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1_000, 600_000_000_000, 3).expect("valid bounds");
    h.auto(true);
    h
}

/// Source addresses for client sockets: 127.0.0.2 .. 127.0.0.(1+n). Each gives its own ~28k
/// ephemeral ports per destination, and `IP_BIND_ADDRESS_NO_PORT` lets the kernel share ports
/// across destinations, so tens of thousands of sockets (plus TIME_WAIT ones) fit.
pub fn source_addrs(n: u8) -> Vec<Ipv4Addr> {
    (0..n.max(1))
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i))
        .collect()
}

/// Opens WebSockets to one server with locally computed keys.
pub struct Connector {
    pub addr: SocketAddr,
    pub keys: KeyMaker,
    sources: Vec<Ipv4Addr>,
    next: AtomicUsize,
    config: WebSocketConfig,
    timeout: Duration,
}

impl Connector {
    pub fn new(addr: SocketAddr, keys: KeyMaker, sources: Vec<Ipv4Addr>) -> Connector {
        Connector {
            addr,
            keys,
            sources,
            next: AtomicUsize::new(0),
            // tungstenite allocates its read buffer eagerly (128 KiB by default): 4 KiB keeps
            // 20k client sockets cheap. Frames here are tiny.
            config: WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0),
            timeout: Duration::from_secs(15),
        }
    }

    /// A TCP connection from the next source address, TCP_NODELAY set.
    pub async fn tcp(&self) -> Result<TcpStream> {
        let src = self.sources[self.next.fetch_add(1, Ordering::Relaxed) % self.sources.len()];
        let sock = TcpSocket::new_v4()?;
        set_bind_no_port(&sock);
        sock.bind(SocketAddr::new(src.into(), 0))
            .with_context(|| format!("bind {src}"))?;
        let stream = sock.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// TCP connect + WebSocket handshake for `uid`, bounded by a timeout.
    pub async fn connect(&self, uid: &str) -> Result<Ws> {
        let target = format!("/ws?uid={uid}&access_key={}", self.keys.key(uid));
        self.open_path(&target).await
    }

    /// TCP connect + WebSocket handshake to `target` (path and query), bounded by a timeout.
    pub async fn open_path(&self, target: &str) -> Result<Ws> {
        let fut = async {
            let stream = self.tcp().await?;
            let url = format!("ws://{}{target}", self.addr);
            let (ws, _resp) =
                tokio_tungstenite::client_async_with_config(url, stream, Some(self.config))
                    .await
                    .map_err(|e| anyhow!("handshake: {e}"))?;
            Ok::<Ws, anyhow::Error>(ws)
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => bail!("connect timed out after {:?}", self.timeout),
        }
    }
}

pub(crate) fn set_bind_no_port(sock: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: plain setsockopt on a socket we own, with a correctly sized c_int.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// What came of opening a batch of sockets.
pub struct OpenStats {
    pub ok: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// TCP connect + handshake durations of the successful ones, in ns.
    pub times: Histogram<u64>,
    pub wall: Duration,
}

/// Opens `count` sockets (uid of each from `uid_of`) with at most `concurrency` in flight and
/// hands each open one to `on_open`.
pub async fn open_many(
    conn: &Arc<Connector>,
    count: usize,
    concurrency: usize,
    uid_of: impl Fn(usize) -> String,
    on_open: impl FnMut(usize, Ws),
) -> OpenStats {
    open_many_with(
        count,
        concurrency,
        |i| {
            let (c, uid) = (conn.clone(), uid_of(i));
            async move { c.connect(&uid).await }
        },
        on_open,
    )
    .await
}

/// Opens `count` sockets with `open(i)` (handshake and whatever the protocol needs before the
/// socket counts as open), at most `concurrency` in flight, and hands each to `on_open`.
pub async fn open_many_with<F>(
    count: usize,
    concurrency: usize,
    open: impl Fn(usize) -> F,
    mut on_open: impl FnMut(usize, Ws),
) -> OpenStats
where
    F: std::future::Future<Output = Result<Ws>> + Send + 'static,
{
    let start = Instant::now();
    let mut stats = OpenStats {
        ok: 0,
        failed: 0,
        first_error: None,
        times: new_hist(),
        wall: Duration::ZERO,
    };
    let mut set: JoinSet<(usize, Result<Ws>, Duration)> = JoinSet::new();
    let mut next = 0;
    loop {
        while next < count && set.len() < concurrency.max(1) {
            let opening = open(next);
            let i = next;
            set.spawn(async move {
                let t = Instant::now();
                let r = opening.await;
                (i, r, t.elapsed())
            });
            next += 1;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        match joined {
            Ok((i, Ok(ws), took)) => {
                stats.ok += 1;
                let _ = stats.times.record(took.as_nanos().max(1) as u64);
                on_open(i, ws);
            }
            Ok((_, Err(e), _)) => {
                stats.failed += 1;
                stats.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                stats.failed += 1;
                stats.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    stats.wall = start.elapsed();
    stats
}

/// Counters shared by the sockets of one scenario.
pub struct RecvStats {
    /// Push frames received (whose send time is at or after `since_ns`).
    pub frames: AtomicU64,
    /// Frames received that did not carry our timestamp.
    pub foreign: AtomicU64,
    /// Sockets the server closed (or that failed) while we still held them.
    pub closed: AtomicU64,
    /// Push→receive latency, ns.
    pub hist: Mutex<Histogram<u64>>,
    pub since_ns: AtomicU64,
}

impl RecvStats {
    pub fn new() -> Arc<RecvStats> {
        Arc::new(RecvStats {
            frames: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            hist: Mutex::new(new_hist()),
            since_ns: AtomicU64::new(0),
        })
    }
}

/// Fan-out bookkeeping: per message, how many sockets got it and when the last one did.
pub struct FanStats {
    /// Sockets each message must reach (set once they are open, before the first push).
    pub sockets: AtomicU32,
    pub sent_ns: Vec<AtomicU64>,
    pub count: Vec<AtomicU32>,
    pub last_ns: Vec<AtomicU64>,
    pub deliveries: AtomicU64,
    pub closed: AtomicU64,
    /// Woken whenever a message reaches its last socket.
    pub complete: Notify,
}

impl FanStats {
    pub fn new(sockets: u32, capacity: usize) -> Arc<FanStats> {
        Arc::new(FanStats {
            sockets: AtomicU32::new(sockets),
            sent_ns: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            count: (0..capacity).map(|_| AtomicU32::new(0)).collect(),
            last_ns: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            deliveries: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            complete: Notify::new(),
        })
    }
}

/// Where a socket's frames are counted.
#[derive(Clone)]
pub enum Sink {
    Recv(Arc<RecvStats>),
    Fan(Arc<FanStats>),
}

/// Reads a socket until it closes (answering pings, which tungstenite does while reading).
pub fn spawn_reader(mut ws: Ws, sink: Sink) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(text)) => on_text(&sink, text.as_str()),
                Ok(Message::Binary(b)) => {
                    if let Ok(s) = std::str::from_utf8(&b) {
                        on_text(&sink, s)
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        match &sink {
            Sink::Recv(s) => s.closed.fetch_add(1, Ordering::Relaxed),
            Sink::Fan(f) => f.closed.fetch_add(1, Ordering::Relaxed),
        };
    })
}

fn on_text(sink: &Sink, text: &str) {
    count_frame(sink, parse_stamp(text));
}

/// Counts one received frame in `sink`: `stamp` is its `(send time, sequence)`, `None` for a
/// frame that carried none.
pub fn count_frame(sink: &Sink, stamp: Option<(u64, u64)>) {
    let now = now_ns();
    let (t, seq) = match stamp {
        Some(v) => v,
        None => {
            if let Sink::Recv(s) = sink {
                s.foreign.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    };
    match sink {
        Sink::Recv(s) => {
            if t < s.since_ns.load(Ordering::Relaxed) {
                return;
            }
            s.frames.fetch_add(1, Ordering::Relaxed);
            let _ = s.hist.lock().unwrap().record(now.saturating_sub(t).max(1));
        }
        Sink::Fan(f) => {
            f.deliveries.fetch_add(1, Ordering::Relaxed);
            let i = seq as usize;
            if i < f.count.len() {
                f.last_ns[i].fetch_max(now, Ordering::Relaxed);
                if f.count[i].fetch_add(1, Ordering::AcqRel) + 1
                    >= f.sockets.load(Ordering::Relaxed)
                {
                    f.complete.notify_one();
                }
            }
        }
    }
}

/// `(t, s)` from a frame `{"topic":..,"number":..,"contents":{"t":T,"s":S}}`, tolerating
/// whitespace a server may have added when re-serializing.
pub fn parse_stamp(text: &str) -> Option<(u64, u64)> {
    let c = text.find("\"contents\"")?;
    let rest = &text[c..];
    Some((num_after(rest, "\"t\"")?, num_after(rest, "\"s\"")?))
}

fn num_after(s: &str, key: &str) -> Option<u64> {
    let i = s.find(key)? + key.len();
    let rest = s[i..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Aborts socket tasks (dropping their sockets) and waits until they are gone.
pub async fn close_all(handles: &mut Vec<JoinHandle<()>>) {
    for h in handles.iter() {
        h.abort();
    }
    for h in handles.drain(..) {
        let _ = h.await;
    }
}

/// One HTTP reply.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// push-serve's `X-Push-Stored` (how many offline uids had the message kept).
    pub stored: Option<u64>,
}

impl Reply {
    /// The envelope's `number` field.
    pub fn number(&self) -> Option<u64> {
        num_after(std::str::from_utf8(&self.body).ok()?, "\"number\"")
    }
}

/// A minimal HTTP/1.1 keep-alive client: one request at a time, Content-Length or chunked
/// replies, reconnects after an error or `Connection: close`.
pub struct HttpClient {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    req: Vec<u8>,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> HttpClient {
        HttpClient {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
            req: Vec::with_capacity(512),
        }
    }

    pub async fn request(&mut self, method: &str, target: &str, body: &[u8]) -> Result<Reply> {
        self.request_with(method, target, "", body).await
    }

    /// [`HttpClient::request`] with extra header lines (each ending in `\r\n`).
    pub async fn request_with(
        &mut self,
        method: &str,
        target: &str,
        headers: &str,
        body: &[u8],
    ) -> Result<Reply> {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            self.try_request(method, target, headers, body),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow!("HTTP request timed out")));
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    async fn try_request(
        &mut self,
        method: &str,
        target: &str,
        headers: &str,
        body: &[u8],
    ) -> Result<Reply> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("connected above");
        self.req.clear();
        self.req.extend_from_slice(
            format!(
                "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        self.req.extend_from_slice(body);
        stream.write_all(&self.req).await?;

        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if read_more(stream, &mut self.buf).await? == 0 {
                bail!("connection closed before the reply");
            }
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("reply head")?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line"))?;
        let (mut length, mut chunked, mut close, mut stored) = (None, false, false, None);
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = v.parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close"),
                "x-push-stored" => stored = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        let body = if chunked {
            let mut out = Vec::new();
            let mut pos = head_end;
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf[pos..], b"\r\n") {
                        break pos + i;
                    }
                    if read_more(stream, &mut self.buf).await? == 0 {
                        bail!("closed inside a chunked reply");
                    }
                };
                let size_text = std::str::from_utf8(&self.buf[pos..line_end])?;
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .context("chunk size")?;
                let data_start = line_end + 2;
                // The data, its CRLF; the last (empty) chunk ends with an empty line (no trailers expected).
                while self.buf.len() < data_start + size + 2 {
                    if read_more(stream, &mut self.buf).await? == 0 {
                        bail!("closed inside a chunk");
                    }
                }
                out.extend_from_slice(&self.buf[data_start..data_start + size]);
                pos = data_start + size + 2;
                if size == 0 {
                    break;
                }
            }
            out
        } else if let Some(n) = length {
            while self.buf.len() < head_end + n {
                if read_more(stream, &mut self.buf).await? == 0 {
                    bail!("closed inside the reply body");
                }
            }
            self.buf[head_end..head_end + n].to_vec()
        } else {
            while read_more(stream, &mut self.buf).await? > 0 {}
            close = true;
            self.buf[head_end..].to_vec()
        };
        if close {
            self.stream = None;
        }
        Ok(Reply {
            status,
            body,
            stored,
        })
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize> {
    let mut tmp = [0u8; 4096];
    let n = stream.read(&mut tmp).await?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_parse_with_or_without_spaces() {
        assert_eq!(
            parse_stamp(r#"{"topic":"bench","number":1,"contents":{"t":123,"s":7}}"#),
            Some((123, 7))
        );
        assert_eq!(
            parse_stamp(r#"{"topic": "bench", "number": 1, "contents": {"t": 5, "s": 0}}"#),
            Some((5, 0))
        );
        assert_eq!(
            parse_stamp(r#"{"topic":"x","number":1,"contents":"hi"}"#),
            None
        );
    }
}
