//! `push-bench hold`: a child process that opens WebSockets, holds them and counts what they
//! receive, until its standard input closes. `idle-max` uses it to pass the loadgen's own 20k
//! open-files limit; `bench/scale.py` runs dozens of them to hold up to a million sockets.
//!
//! It has to stay cheap per socket, or the load side costs more than the server it measures
//! (the tungstenite client took 5.4 KiB per socket, more than push-serve's 3.4). So:
//! - one thread (a current-thread runtime and a `LocalSet`): no atomics, no `Send` bounds;
//! - no WebSocket library: the client side of RFC 6455 that a push page needs is a handshake,
//!   unmasked frames in (text, ping, close) and a masked pong or close out, a few lines here;
//! - every socket reads into one shared scratch buffer; only an incomplete frame's bytes are
//!   kept per socket, in a `Vec` that is empty (no allocation) when idle;
//! - a socket's resume state (node, positions) is 24 bytes in one `Vec` indexed by socket, and
//!   its task holds the stream and its index; the handshake is boxed, so its buffers exist only
//!   while it runs;
//! - deliveries are counted in place: totals, duplicates and holes by each stream's `number`,
//!   and push→receive latency from the sender's `CLOCK_MONOTONIC` stamp in `contents.t`.
//!
//! Standard input takes one command a line; each is answered with one JSON line on stdout:
//! `stats` (counters and latency histograms), `reset` (zero the counters), `drop` (close every
//! socket at once), `reconnect` (open them all again, resuming with `since` under `--proto 2`),
//! `quit`. A socket the server closes, or whose node dies, reconnects by itself (after a random
//! pause of up to a second, to its node and then the next ones) and resumes.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::keys::KeyMaker;
use crate::Result;

/// Arguments of the `hold` subcommand.
#[derive(Debug, Clone)]
pub struct HoldArgs {
    /// The nodes; socket `i` (global index `first + i`) starts on `nodes[(first + i) % len]`.
    pub nodes: Vec<SocketAddr>,
    pub password: String,
    pub count: usize,
    /// Global index of the first socket: uids are `<prefix><first + i>`.
    pub first: usize,
    pub prefix: String,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Loopback source addresses: 127.0.0.`source_base` .. +`sources`.
    pub sources: u8,
    pub source_base: u8,
    /// `proto=2`: numbered frames, `_welcome`, and `since` on every reconnect.
    pub proto2: bool,
}

/// A monotonic clock shared by every process of the machine (`CLOCK_MONOTONIC`, which is also
/// Python's `time.monotonic_ns()`), in ns: senders stamp it, receivers subtract it.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One socket's state between connections: where it is and what it has seen.
#[derive(Clone, Copy, Default)]
struct Slot {
    node: u16,
    /// Its user stream's generation (0: not seen yet) and the last number received.
    user_gen: u64,
    user_seq: u32,
    /// The last broadcast number received (the generation is the same for every socket).
    bcast_seq: u32,
}

fn hist() -> Histogram<u64> {
    // µs, up to 10 min, 2 significant digits: ~1,500 buckets at most.
    let mut h = Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid bounds");
    h.auto(true);
    h
}

struct Stats {
    connects: u64,
    connect_failed: u64,
    first_error: Option<String>,
    /// Sockets the server closed or lost while not told to (`drop`), and by which close code
    /// (0: no close frame, the connection just ended).
    unexpected_closes: u64,
    close_codes: BTreeMap<u16, u64>,
    /// Sockets that gave up reconnecting.
    abandoned: u64,
    /// First unexpected close and last successful connect since `reset` (mono ns).
    first_close_ns: u64,
    last_connect_ns: u64,
    user: u64,
    bcast: u64,
    other: u64,
    duplicates: u64,
    missing: u64,
    gap_frames: u64,
    welcomes: u64,
    generation_changes: u64,
    user_us: Histogram<u64>,
    bcast_us: Histogram<u64>,
    handshake_us: Histogram<u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            connects: 0,
            connect_failed: 0,
            first_error: None,
            unexpected_closes: 0,
            close_codes: BTreeMap::new(),
            abandoned: 0,
            first_close_ns: 0,
            last_connect_ns: 0,
            user: 0,
            bcast: 0,
            other: 0,
            duplicates: 0,
            missing: 0,
            gap_frames: 0,
            welcomes: 0,
            generation_changes: 0,
            user_us: hist(),
            bcast_us: hist(),
            handshake_us: hist(),
        }
    }
}

struct Shared {
    nodes: Vec<SocketAddr>,
    keys: KeyMaker,
    prefix: String,
    first: usize,
    proto2: bool,
    sources: Vec<Ipv4Addr>,
    next_source: Cell<usize>,
    slots: RefCell<Vec<Slot>>,
    bcast_gen: Cell<u64>,
    stats: RefCell<Stats>,
    /// Sockets connected now.
    open: Cell<usize>,
    handshakes: Semaphore,
    /// A round (`ready`, `reconnect`): sockets whose first attempts have not ended yet.
    round_pending: Cell<usize>,
    round_ok: Cell<usize>,
    round_done: Notify,
    /// Set by `quit`: a closing socket does not reconnect.
    stopping: Cell<bool>,
    rng: Cell<u64>,
}

impl Shared {
    fn new(args: &HoldArgs) -> Shared {
        Shared {
            nodes: args.nodes.clone(),
            keys: KeyMaker::new(&args.password, 3 * 3600),
            prefix: args.prefix.clone(),
            first: args.first,
            proto2: args.proto2,
            sources: (0..args.sources.max(1))
                .map(|i| Ipv4Addr::new(127, 0, 0, args.source_base.saturating_add(i)))
                .collect(),
            next_source: Cell::new(args.first),
            slots: RefCell::new(
                (0..args.count)
                    .map(|i| Slot {
                        node: ((args.first + i) % args.nodes.len()) as u16,
                        ..Slot::default()
                    })
                    .collect(),
            ),
            bcast_gen: Cell::new(0),
            stats: RefCell::new(Stats::new()),
            open: Cell::new(0),
            handshakes: Semaphore::new(args.concurrency.max(1)),
            round_pending: Cell::new(0),
            round_ok: Cell::new(0),
            round_done: Notify::new(),
            stopping: Cell::new(false),
            rng: Cell::new(0x9e37_79b9_7f4a_7c15 ^ (args.first as u64 + 1) ^ mono_ns()),
        }
    }

    fn random(&self, below: u64) -> u64 {
        // xorshift64*
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % below.max(1)
    }

    fn round_attempt_ended(&self, ok: bool) {
        if ok {
            self.round_ok.set(self.round_ok.get() + 1);
        }
        let left = self.round_pending.get().saturating_sub(1);
        self.round_pending.set(left);
        if left == 0 {
            self.round_done.notify_one();
        }
    }
}

thread_local! {
    /// Every socket reads into this one buffer (one thread, and no read awaits while it is held).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// Counts `sockets open` while a connection lives, even when its task is aborted (`drop`).
struct OpenGuard(Rc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
    }
}

/// Opens the sockets, prints `ready ok=<n> failed=<m> secs=<s> error=<first error or ->`,
/// then answers commands on stdin until `quit` or end of file.
pub async fn hold(args: HoldArgs) -> Result<()> {
    crate::server::raise_nofile();
    if args.nodes.is_empty() {
        bail!("hold: no node address");
    }
    let sh = Rc::new(Shared::new(&args));

    let start = Instant::now();
    let mut tasks = start_round(&sh, args.count, false).await;
    {
        let st = sh.stats.borrow();
        println!(
            "ready ok={} failed={} secs={:.3} error={}",
            sh.round_ok.get(),
            args.count - sh.round_ok.get(),
            start.elapsed().as_secs_f64(),
            st.first_error.as_deref().unwrap_or("-").replace('\n', " ")
        );
    }

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match line.trim() {
            "stats" => stats_json(&sh),
            "reset" => {
                *sh.stats.borrow_mut() = Stats::new();
                serde_json::json!({"reset": true})
            }
            "drop" => {
                let t = Instant::now();
                let n = sh.open.get();
                abort_all(&mut tasks).await;
                serde_json::json!({"dropped": n, "open": sh.open.get(), "secs": t.elapsed().as_secs_f64()})
            }
            "reconnect" => {
                let t = Instant::now();
                abort_all(&mut tasks).await;
                tasks = start_round(&sh, args.count, sh.proto2).await;
                serde_json::json!({
                    "back": sh.round_ok.get(),
                    "failed": args.count - sh.round_ok.get(),
                    "open": sh.open.get(),
                    "secs": t.elapsed().as_secs_f64(),
                })
            }
            "quit" => break,
            other => serde_json::json!({"error": format!("unknown command {other:?}")}),
        };
        println!("{reply}");
    }
    sh.stopping.set(true);
    abort_all(&mut tasks).await;
    Ok(())
}

/// Starts a task per socket and waits until each has connected or failed its first attempts.
async fn start_round(sh: &Rc<Shared>, count: usize, resume: bool) -> Vec<JoinHandle<()>> {
    sh.round_pending.set(count);
    sh.round_ok.set(0);
    let tasks: Vec<JoinHandle<()>> = (0..count)
        .map(|i| tokio::task::spawn_local(socket_task(sh.clone(), i, resume)))
        .collect();
    while sh.round_pending.get() > 0 {
        sh.round_done.notified().await;
    }
    tasks
}

async fn abort_all(tasks: &mut Vec<JoinHandle<()>>) {
    for t in tasks.iter() {
        t.abort();
    }
    for t in tasks.drain(..) {
        let _ = t.await;
    }
}

/// One socket for as long as it lives: connect, read until closed, and (unless told to stop)
/// reconnect with its positions.
async fn socket_task(sh: Rc<Shared>, idx: usize, mut resume: bool) {
    let mut in_round = true;
    let mut failures = 0u32;
    loop {
        let opened = {
            // Everything that only lives while connecting or waiting is boxed: the task's
            // future is as large as its largest state, and the reading one is kept for hours.
            let _permit = Box::pin(sh.handshakes.acquire()).await;
            let t = Instant::now();
            let r = Box::pin(tokio::time::timeout(
                Duration::from_secs(15),
                open(&sh, idx, resume),
            ))
            .await
            .unwrap_or_else(|_| Err(anyhow!("connect timed out after 15 s")));
            if r.is_ok() {
                let _ = sh
                    .stats
                    .borrow_mut()
                    .handshake_us
                    .record(t.elapsed().as_micros().max(1) as u64);
            }
            r
        };
        match opened {
            Ok((stream, leftover)) => {
                failures = 0;
                sh.open.set(sh.open.get() + 1);
                {
                    let mut st = sh.stats.borrow_mut();
                    st.connects += 1;
                    st.last_connect_ns = mono_ns();
                }
                if in_round {
                    in_round = false;
                    sh.round_attempt_ended(true);
                }
                let guard = OpenGuard(sh.clone());
                let code = read_loop(&sh, idx, stream, leftover).await;
                drop(guard);
                if sh.stopping.get() {
                    return;
                }
                {
                    let mut st = sh.stats.borrow_mut();
                    st.unexpected_closes += 1;
                    *st.close_codes.entry(code).or_default() += 1;
                    if st.first_close_ns == 0 {
                        st.first_close_ns = mono_ns();
                    }
                }
                resume = sh.proto2;
                // A page waits a little before reconnecting, not all at the same instant.
                Box::pin(tokio::time::sleep(Duration::from_millis(sh.random(1000)))).await;
            }
            Err(e) => {
                failures += 1;
                {
                    let mut st = sh.stats.borrow_mut();
                    st.connect_failed += 1;
                    st.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
                // The next attempt goes to another node, at random (a load balancer would
                // spread a dead node's pages over the others, not pile them on its neighbour).
                let n = sh.nodes.len() as u64;
                if n > 1 {
                    let step = 1 + sh.random(n - 1);
                    let mut slots = sh.slots.borrow_mut();
                    let s = &mut slots[idx];
                    s.node = ((u64::from(s.node) + step) % n) as u16;
                }
                // A first connect gives up after three attempts (the server refuses it for a
                // reason); a page coming back after a drop keeps trying, as pages do.
                if in_round && failures >= if resume { 20 } else { 3 } {
                    sh.round_attempt_ended(false);
                    return;
                }
                if failures >= 60 {
                    sh.stats.borrow_mut().abandoned += 1;
                    return;
                }
                let pause = 100 * u64::from(failures.min(10));
                Box::pin(tokio::time::sleep(Duration::from_millis(
                    pause + sh.random(pause),
                )))
                .await;
            }
        }
    }
}

/// TCP connect from the next source address, the handshake, and whatever bytes followed the
/// `101` (the `_welcome` often comes in the same segment).
async fn open(sh: &Shared, idx: usize, resume: bool) -> Result<(TcpStream, Vec<u8>)> {
    let slot = sh.slots.borrow()[idx];
    let addr = sh.nodes[slot.node as usize];
    let n = sh.next_source.get();
    sh.next_source.set(n.wrapping_add(1));
    let src = sh.sources[n % sh.sources.len()];
    let sock = TcpSocket::new_v4()?;
    crate::client::set_bind_no_port(&sock);
    sock.bind(SocketAddr::new(src.into(), 0))
        .with_context(|| format!("bind {src}"))?;
    let mut stream = sock
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;

    let uid = format!("{}{}", sh.prefix, sh.first + idx);
    let mut target = format!("/ws?uid={uid}&access_key={}", sh.keys.key(&uid));
    if sh.proto2 {
        target.push_str("&proto=2");
        if resume {
            let mut since = Vec::new();
            if slot.user_gen != 0 {
                since.push(format!(
                    "\"user\":\"{:016x}:{}\"",
                    slot.user_gen, slot.user_seq
                ));
            }
            if sh.bcast_gen.get() != 0 {
                since.push(format!(
                    "\"broadcast\":\"{:016x}:{}\"",
                    sh.bcast_gen.get(),
                    slot.bcast_seq
                ));
            }
            if !since.is_empty() {
                target.push_str("&since=");
                percent_encode(&format!("{{{}}}", since.join(",")), &mut target);
            }
        }
    }
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let end = loop {
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 16 * 1024 {
            bail!("handshake reply head over 16 KiB");
        }
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!("closed during the handshake");
        }
        head.extend_from_slice(&buf[..n]);
    };
    if !head.starts_with(b"HTTP/1.1 101") {
        let text = String::from_utf8_lossy(&head);
        bail!(
            "handshake refused: {}",
            text.lines().next().unwrap_or("").trim()
        );
    }
    Ok((stream, head.split_off(end)))
}

fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Reads frames until the connection ends; answers pings; returns the close code (0: none).
async fn read_loop(sh: &Shared, idx: usize, stream: TcpStream, mut pending: Vec<u8>) -> u16 {
    if !pending.is_empty() {
        match frames(sh, idx, &pending, &stream) {
            Step::Closed(code) => return code,
            Step::Consumed(n) => {
                pending.drain(..n);
                pending.shrink_to_fit();
            }
        }
    }
    loop {
        if stream.readable().await.is_err() {
            return 0;
        }
        let step = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let n = match stream.try_read(&mut scratch[..]) {
                Ok(0) => return Some(0),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(_) => return Some(0),
            };
            let data: &[u8] = if pending.is_empty() {
                &scratch[..n]
            } else {
                pending.extend_from_slice(&scratch[..n]);
                &pending
            };
            match frames(sh, idx, data, &stream) {
                Step::Closed(code) => Some(code),
                Step::Consumed(used) => {
                    if pending.is_empty() {
                        pending.extend_from_slice(&scratch[used..n]);
                    } else {
                        pending.drain(..used);
                    }
                    if pending.is_empty() {
                        // An idle socket keeps no buffer.
                        pending = Vec::new();
                    }
                    None
                }
            }
        });
        if let Some(code) = step {
            return code;
        }
    }
}

enum Step {
    /// Bytes of whole frames handled; the rest is an incomplete frame.
    Consumed(usize),
    /// The server closed (its code, or 0).
    Closed(u16),
}

/// Handles every whole frame at the start of `data` (server frames are unmasked).
fn frames(sh: &Shared, idx: usize, data: &[u8], stream: &TcpStream) -> Step {
    let mut pos = 0;
    loop {
        let rest = &data[pos..];
        if rest.len() < 2 {
            return Step::Consumed(pos);
        }
        let opcode = rest[0] & 0x0f;
        let (len, head) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            126 | 127 => return Step::Consumed(pos),
            n => (n as usize, 2),
        };
        let head = head + if rest[1] & 0x80 != 0 { 4 } else { 0 };
        if rest.len() < head + len {
            return Step::Consumed(pos);
        }
        let payload = &rest[head..head + len];
        pos += head + len;
        match opcode {
            0x0..=0x2 => on_text(sh, idx, payload),
            0x9 => {
                // Pong with the same payload, masked with a zero key (as any key may be).
                let mut pong = Vec::with_capacity(6 + payload.len());
                pong.extend_from_slice(&[0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0]);
                pong.extend_from_slice(payload);
                let _ = stream.try_write(&pong);
            }
            0x8 => {
                let code = if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                };
                let reply = [0x88, 0x82, 0, 0, 0, 0, (code >> 8) as u8, code as u8];
                let _ = stream.try_write(if payload.len() >= 2 {
                    &reply[..]
                } else {
                    &[0x88, 0x80, 0, 0, 0, 0][..]
                });
                return Step::Closed(code);
            }
            _ => {}
        }
    }
}

/// `{"topic":…,"number":N,"contents":{"t":T,…},"stream":"user"}` and the control frames.
fn on_text(sh: &Shared, idx: usize, payload: &[u8]) {
    let Ok(text) = std::str::from_utf8(payload) else {
        return;
    };
    let now = mono_ns();
    let mut stats = sh.stats.borrow_mut();
    let st = &mut *stats;
    let mut slots = sh.slots.borrow_mut();
    let slot = &mut slots[idx];
    if text.starts_with("{\"topic\":\"_welcome\"") {
        st.welcomes += 1;
        if let Some((g, p)) = position(text, "\"user\":\"") {
            if slot.user_gen != g {
                if slot.user_gen != 0 {
                    st.generation_changes += 1;
                }
                slot.user_gen = g;
                slot.user_seq = p as u32;
            } else if (p as u32) < slot.user_seq {
                // The stream is behind what we saw: a restarted numbering.
                slot.user_seq = p as u32;
            }
        }
        if let Some((g, p)) = position(text, "\"broadcast\":\"") {
            if sh.bcast_gen.get() != g {
                sh.bcast_gen.set(g);
                slot.bcast_seq = p as u32;
            } else if slot.bcast_seq == 0 || (p as u32) < slot.bcast_seq {
                slot.bcast_seq = p as u32;
            }
        }
        return;
    }
    if text.starts_with("{\"topic\":\"_gap\"") {
        st.gap_frames += 1;
        let next = num_after(text, "\"next\":").unwrap_or(1) as u32;
        if text.contains("\"stream\":\"user\"") {
            slot.user_seq = next.saturating_sub(1);
        } else if text.contains("\"stream\":\"broadcast\"") {
            slot.bcast_seq = next.saturating_sub(1);
        }
        return;
    }
    let latency_us = text
        .find("\"contents\":")
        .and_then(|c| num_after(&text[c..], "\"t\":"))
        .map(|t| now.saturating_sub(t) / 1000);
    let number = num_after(text, "\"number\":").unwrap_or(0) as u32;
    let stream = text
        .rfind(",\"stream\":\"")
        .map(|i| &text[i + 11..])
        .unwrap_or("");
    let (seq, count, hist) = if stream.starts_with("broadcast\"") {
        (&mut slot.bcast_seq, &mut st.bcast, 1)
    } else if stream.starts_with("user\"") || !sh.proto2 {
        (&mut slot.user_seq, &mut st.user, 0)
    } else {
        st.other += 1;
        return;
    };
    *count += 1;
    if sh.proto2 {
        if number <= *seq {
            st.duplicates += 1;
        } else {
            st.missing += u64::from(number - *seq - 1);
            *seq = number;
        }
    }
    if let Some(us) = latency_us {
        let h = if hist == 1 {
            &mut st.bcast_us
        } else {
            &mut st.user_us
        };
        let _ = h.record(us.max(1));
    }
}

/// `generation:number` after `key` (a 16-hex-digit generation).
fn position(text: &str, key: &str) -> Option<(u64, u64)> {
    let i = text.find(key)? + key.len();
    let rest = &text[i..];
    let (g, rest) = rest.split_once(':')?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Some((u64::from_str_radix(g, 16).ok()?, rest[..end].parse().ok()?))
}

fn num_after(s: &str, key: &str) -> Option<u64> {
    let i = s.find(key)? + key.len();
    let rest = s[i..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn buckets(h: &Histogram<u64>) -> Vec<[u64; 2]> {
    h.iter_recorded()
        .map(|v| {
            [
                h.highest_equivalent(v.value_iterated_to()),
                v.count_at_value(),
            ]
        })
        .collect()
}

fn stats_json(sh: &Shared) -> serde_json::Value {
    let st = sh.stats.borrow();
    serde_json::json!({
        "open": sh.open.get(),
        "connects": st.connects,
        "connect_failed": st.connect_failed,
        "first_error": st.first_error,
        "unexpected_closes": st.unexpected_closes,
        "close_codes": st.close_codes.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "abandoned": st.abandoned,
        "first_close_ns": st.first_close_ns,
        "last_connect_ns": st.last_connect_ns,
        "user": st.user,
        "broadcast": st.bcast,
        "other": st.other,
        "duplicates": st.duplicates,
        "missing": st.missing,
        "gap_frames": st.gap_frames,
        "welcomes": st.welcomes,
        "generation_changes": st.generation_changes,
        "user_us": buckets(&st.user_us),
        "broadcast_us": buckets(&st.bcast_us),
        "handshake_us": buckets(&st.handshake_us),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_numbers_parse() {
        let w = r#"{"topic":"_welcome","number":0,"contents":{"streams":{"broadcast":"00000000000000ab:3","user":"9f2c000000000001:41"}}}"#;
        assert_eq!(position(w, "\"user\":\""), Some((0x9f2c000000000001, 41)));
        assert_eq!(position(w, "\"broadcast\":\""), Some((0xab, 3)));
        assert_eq!(num_after(r#"{"next": 30}"#, "\"next\":"), Some(30));
        let mut s = String::new();
        percent_encode(r#"{"user":"ab:1"}"#, &mut s);
        assert_eq!(s, "%7B%22user%22%3A%22ab%3A1%22%7D");
    }
}

#[cfg(test)]
mod lean {
    /// What every held socket's task carries (plus tokio's task header and I/O registration):
    /// the holder stays lean only while this does.
    #[test]
    fn a_socket_task_is_small() {
        let args = super::HoldArgs {
            nodes: vec!["127.0.0.1:1".parse().unwrap()],
            password: "x".into(),
            count: 1,
            first: 0,
            prefix: "p".into(),
            concurrency: 1,
            sources: 1,
            source_base: 2,
            proto2: true,
        };
        let sh = std::rc::Rc::new(super::Shared::new(&args));
        let task = super::socket_task(sh, 0, false);
        assert!(
            std::mem::size_of_val(&task) <= 512,
            "{}",
            std::mem::size_of_val(&task)
        );
    }
}
