//! Bodies of the cargo-fuzz targets, one plain function per target: `config`, `access_key`,
//! `http` and `ws_frames`. Each takes the fuzzer's raw bytes and panics on a failed check.
//!
//! This file is compiled twice: as the library `push_serve_fuzz_targets` of `fuzz/` (what the
//! libFuzzer binaries in `fuzz/fuzz_targets/` call), and as a module of the root package's
//! `tests/fuzz_corpus.rs`, which replays the committed corpus with a plain `cargo test` on stable.
//! So it uses only crates the root package already depends on, and structured inputs are decoded
//! with the small [`Input`] reader below (not the `arbitrary` crate): both paths decode a corpus
//! file the same way.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use hyper::body::{Body, Bytes, Frame};
use hyper_util::service::TowerToHyperService;
use push_serve::auth::{valid_topic, Auth};
use push_serve::broker::Retention;
use push_serve::config::{Config, MAX_UID_BYTES};
use push_serve::http::{routes, AppState};
use push_serve::hub::Hub;
use push_serve::limits::PeerAddr;
use push_serve::protocol::native::{self, ws_config, SocketContext};
use push_serve::registry::Subscription;
use push_serve::wire::{self, Proto, StreamKey};
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::task::TaskTracker;
use warp::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};

/// Reads a fuzz input as a sequence of small decisions. Past the end every read yields zeros
/// or empty slices, so any byte string decodes to exactly one case.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input(data)
    }

    /// The next byte, or 0 at the end.
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// One of `items`, picked by the next byte.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.byte()) % items.len()]
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.0.split_at(n.min(self.0.len()));
        self.0 = tail;
        head
    }

    /// A length byte, then that many bytes (fewer at the end).
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.bytes(n)
    }

    /// [`Input::chunk`] as text (invalid UTF-8 replaced).
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.chunk()).into_owned()
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------------
// config

/// `conf.yaml` text into [`Config::parse`]: never panics, and whatever it accepts the daemon can
/// start with (every conversion `main` and `run` make succeeds).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let config = match Config::parse(&text, "fuzz.yaml") {
        Ok(config) => config,
        Err(e) => {
            // The one line the daemon prints before exiting.
            let _ = e.to_string();
            return;
        }
    };
    config.validate().expect("an accepted config validates");
    config
        .socket_addr()
        .expect("an accepted config has a listen address");
    assert!(
        !config.password.expose().is_empty(),
        "empty password accepted"
    );
    assert!(
        !config.live().key_material().is_empty(),
        "empty secret accepted"
    );
    // Duration::from_secs_f64 panics on NaN, negative or huge values: validation must rule
    // them out for every duration the daemon derives.
    let _ = config.live().heartbeat_interval();
    let _ = config.header_read_timeout();
    let _ = config.shutdown_timeout();
    let _ = config.retention();
    let _ = ws_config(config.max_client_frame_bytes);
    let auth = Auth::new(
        config.live().key_material(),
        config.password.expose(),
        config.access_key_ttl_secs,
    );
    assert!(auth.check_password(config.password.expose()));
    let key = auth.issue("u");
    assert!(auth.verify("u", &key).is_ok(), "a fresh key is refused");
}

// ---------------------------------------------------------------------------------------------
// access_key

/// 2100-01-01: "far in the future" for issued keys.
const FAR_EXPIRY: u64 = 4_102_444_800;

/// When `true`, an accepted key must also be spelled exactly as the server issues it. Once off,
/// while `Auth::verify` accepted leading zeros in the expiry (`v1.0<expiry>.<mac>`); see
/// FUZZING.md, finding 2.
const STRICT_KEY_SPELLING: bool = true;

/// Arbitrary uid and key strings into `Auth::verify`: never panics; a key issued for a uid
/// verifies for that uid and no other; no edit of a genuine key yields another accepted key; and
/// any accepted key is one the server could have issued for that uid.
pub fn access_key(data: &[u8]) {
    let mut input = Input::new(data);
    let uid = input.text();
    let other = input.text();
    let topics: Vec<String> = match input.byte() % 3 {
        0 => Vec::new(),
        1 => vec!["news".into(), "room:42".into()],
        // `/access` passes only valid topic names (`issue_with_topics` asks its caller to).
        _ => input
            .text()
            .split(',')
            .filter(|t| valid_topic(t))
            .map(str::to_owned)
            .collect(),
    };
    let expiry = FAR_EXPIRY + u64::from(input.byte()) * 1_000_003;
    let edit = (input.byte(), input.byte(), input.byte());
    let guess = String::from_utf8_lossy(input.rest()).into_owned();
    let auth = Auth::new("fuzz secret", "fuzz password", 3600);

    // Any string: no panic, and only a genuine key is accepted.
    if let Ok(granted) = auth.verify(&uid, &guess) {
        check_genuine(&auth, &uid, &guess, &granted);
    }

    // A key issued for `uid` verifies for `uid`, with its topics, and for no other uid.
    let key = auth.issue_with_topics_at(&uid, &topics, expiry);
    match auth.verify(&uid, &key) {
        Ok(granted) => assert_eq!(granted, topics, "key {key:?} grants other topics"),
        Err(e) => panic!("key {key:?} issued for {uid:?} refused: {e}"),
    }
    if other != uid {
        assert!(
            auth.verify(&other, &key).is_err(),
            "key {key:?} issued for {uid:?} accepted for {other:?}"
        );
    }
    let plain = auth.issue_at(&uid, expiry);
    assert!(auth.verify(&uid, &plain).is_ok());

    // An edited genuine key is refused, or is that same key (same uid, expiry, topics, MAC).
    let edited = edit_key(&key, edit);
    if edited != key {
        if let Ok(granted) = auth.verify(&uid, &edited) {
            check_genuine(&auth, &uid, &edited, &granted);
        }
        if other != uid {
            assert!(auth.verify(&other, &edited).is_err());
        }
    }
}

/// Replaces, inserts or deletes one byte of `key`, or swaps two of its `.`-separated fields.
fn edit_key(key: &str, (op, at, value): (u8, u8, u8)) -> String {
    let mut bytes = key.as_bytes().to_vec();
    let at = usize::from(at) % (bytes.len() + 1);
    const EDITS: &[u8] = b"0123456789abcdefv.,+-ABCDEF_ \n";
    let value = EDITS[usize::from(value) % EDITS.len()];
    match op % 4 {
        0 if at < bytes.len() => bytes[at] = value,
        1 => bytes.insert(at, value),
        2 if at < bytes.len() => {
            bytes.remove(at);
        }
        _ => {
            let mut parts: Vec<&str> = key.split('.').collect();
            let n = parts.len();
            parts.swap(usize::from(value) % n, at % n);
            return parts.join(".");
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `key` was accepted for `uid`: it must carry a future expiry and exactly the MAC the server
/// would issue for that uid, expiry and topic list.
fn check_genuine(auth: &Auth, uid: &str, key: &str, granted: &[String]) {
    let parts: Vec<&str> = key.split('.').collect();
    let expiry: u64 = match parts.get(1).map(|e| e.parse()) {
        Some(Ok(expiry)) => expiry,
        _ => panic!("accepted key {key:?} has no numeric expiry"),
    };
    assert!(expiry > now_secs(), "expired key {key:?} accepted");
    let canonical = match parts[0] {
        "v1" => {
            assert!(granted.is_empty(), "v1 key {key:?} granted topics");
            auth.issue_at(uid, expiry)
        }
        "v2" => auth.issue_with_topics_at(uid, granted, expiry),
        _ => panic!("accepted key {key:?} has an unknown version"),
    };
    let mac = |k: &str| k.rsplit('.').next().unwrap_or("").to_owned();
    assert_eq!(
        mac(key),
        mac(&canonical),
        "accepted key {key:?} for {uid:?} is not the issued {canonical:?}"
    );
    if STRICT_KEY_SPELLING {
        assert_eq!(key, canonical, "accepted key is spelled differently");
    }
}

// ---------------------------------------------------------------------------------------------
// http

const PASSWORD: &str = "fuzz-pw";
/// Bytes `/push`, `/publish` and `/broadcast` accept (small, so the fuzzer reaches 413).
const MAX_BODY: usize = 256;
/// Every status the README documents for the HTTP endpoints.
const DOCUMENTED: &[u16] = &[101, 200, 400, 401, 403, 404, 405, 413, 426, 429, 503];
/// The one origin allowed when the flags turn the allow-list on.
const GOOD_ORIGIN: &str = "https://good.example";
const SAMPLE_WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", "get", "PURGE",
    "M-SEARCH",
];

const PATHS: &[&str] = &[
    "/access",
    "/push",
    "/ws",
    "/publish",
    "/broadcast",
    "/online",
    "/stats",
    "/",
    "/access/",
    "/ws/",
    "//ws",
    "/ws/x",
    "/%61ccess",
    "/WS",
    "/push.json",
    "*",
    "http://example.com/ws",
];

thread_local! {
    /// One runtime per thread, made once (libFuzzer runs one input after another on one thread).
    static HTTP_RT: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
}

/// Bytes a URI's query or path may hold as they are; anything else is percent-encoded. `%`
/// stays raw, so malformed escapes (`%`, `%zz`, `%ff`) reach the query decoder.
fn uri_text(raw: &[u8]) -> String {
    let mut out = String::new();
    for &b in raw {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every byte percent-encoded: decodes back to exactly `raw`.
fn encoded(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("%{b:02X}")).collect()
}

/// The bytes a header value may hold (no control characters but tab).
fn header_value(raw: &[u8]) -> HeaderValue {
    let clean: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        .collect();
    HeaderValue::from_bytes(&clean).expect("filtered header value")
}

/// A request body handed over in chunks of a fuzz-chosen size, like a chunked upload.
struct ChunkedBody {
    data: Bytes,
    chunk: usize,
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.chunk.min(self.data.len());
        let part = self.data.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(part))))
    }
}

/// One decoded request, kept for the checks on its response.
struct HttpCase {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    upgradable: bool,
    shutting_down: bool,
    alice_online: bool,
    /// `allowed_origins: [GOOD_ORIGIN]`, one socket per uid, two in all.
    strict: bool,
    /// The TCP peer address hyper's server attaches (the rate limiter's key).
    peer: bool,
    /// Times the same request is sent to the same server (the third wrong password is a 429).
    repeat: usize,
}

fn decode_request(input: &mut Input<'_>, auth: &Auth) -> (HttpCase, Bytes, usize) {
    let method: Method = input.pick(METHODS).parse().expect("valid method");
    let path_choice = usize::from(input.byte()) % (PATHS.len() + 1);
    let path = match PATHS.get(path_choice) {
        Some(p) => (*p).to_owned(),
        None => format!("/{}", uri_text(input.chunk()).replace('?', "%3F")),
    };
    let flags = input.byte();

    let mut query: Option<String> = None;
    for _ in 0..input.byte() % 7 {
        let part = match input.byte() % 20 {
            0 => "uid=alice".to_owned(),
            1 => "uid=bob".to_owned(),
            2 => format!("uid={}", uri_text(input.chunk())),
            3 => "uid=".to_owned(),
            4 => format!("uid={}", "a".repeat(MAX_UID_BYTES + 1)),
            5 => format!("password={PASSWORD}"),
            6 => format!("password={}", uri_text(input.chunk())),
            7 => format!("access_key={}", auth.issue_at("alice", FAR_EXPIRY)),
            8 => format!("access_key={}", auth.issue_at("bob", FAR_EXPIRY)),
            9 => format!("access_key={}", auth.issue_at("alice", 1)),
            10 => format!("access_key={}", uri_text(input.chunk())),
            11 => {
                // Any uid with its own genuine key.
                let raw = input.chunk();
                let uid = String::from_utf8_lossy(raw);
                let topics = vec!["news".to_owned()];
                let key = auth.issue_with_topics_at(&uid, &topics, FAR_EXPIRY);
                format!("uid={}&access_key={key}", encoded(raw))
            }
            12 => uri_text(input.chunk()),
            13 => "proto=2".to_owned(),
            14 => format!("proto={}", uri_text(input.chunk())),
            15 => format!("since={}", uri_text(input.chunk())),
            16 => format!("since={}", encoded(br#"{"user":"0123456789abcdef:1"}"#)),
            17 => format!("topics={}", uri_text(input.chunk())),
            18 => "topics=news,room:42".to_owned(),
            _ => "&".to_owned(),
        };
        let q = query.get_or_insert_with(String::new);
        if !q.is_empty() {
            q.push('&');
        }
        q.push_str(&part);
    }
    let target = match &query {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let uri: Uri = target
        .parse()
        .or_else(|_| path.parse())
        .unwrap_or_else(|_| Uri::from_static("/"));

    let body_kind = input.byte();
    let chunk = usize::from(input.byte() % 64) + 1;
    let mut headers = HeaderMap::new();
    let mut header_specs = Vec::new();
    for _ in 0..input.byte() % 8 {
        header_specs.push((input.byte(), input.chunk()));
    }
    let rest = input.rest();
    let body: Vec<u8> = match body_kind % 5 {
        0 | 1 => rest.to_vec(),
        2 => [br#"{"topic":"t","contents":"#, rest, b"}"].concat(),
        3 => [br#"{"topic":"#, rest, br#","contents":null}"#].concat(),
        _ => [
            br#"{"topic":"news","contents":{"n":1},"uids":["alice","#,
            rest,
            b"]}",
        ]
        .concat(),
    };
    // Set first, so a Content-Length below can contradict it, as a lying client would.
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    for (kind, raw) in header_specs {
        let (name, value) = match kind % 24 {
            0 => (
                header::AUTHORIZATION,
                HeaderValue::from_static("Bearer fuzz-pw"),
            ),
            1 => (
                header::AUTHORIZATION,
                header_value(&[b"Bearer ", raw].concat()),
            ),
            2 => (header::AUTHORIZATION, header_value(raw)),
            3 => (
                header::CONTENT_LENGTH,
                HeaderValue::from(body.len() + raw.len()),
            ),
            4 => (
                header::CONTENT_LENGTH,
                HeaderValue::from(body.len().saturating_sub(raw.len() + 1)),
            ),
            5 => (
                header::CONTENT_LENGTH,
                HeaderValue::from_static("18446744073709551616"),
            ),
            6 => (header::CONTENT_LENGTH, header_value(raw)),
            7 => (header::CONNECTION, HeaderValue::from_static("Upgrade")),
            8 => (
                header::CONNECTION,
                HeaderValue::from_static("keep-alive, upgrade"),
            ),
            9 => (header::CONNECTION, header_value(raw)),
            10 => (header::UPGRADE, HeaderValue::from_static("websocket")),
            11 => (header::UPGRADE, header_value(raw)),
            12 => (
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            ),
            13 => (header::SEC_WEBSOCKET_VERSION, header_value(raw)),
            14 => (
                header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_static(SAMPLE_WS_KEY),
            ),
            15 => (header::SEC_WEBSOCKET_KEY, header_value(raw)),
            16 => {
                // A complete, valid upgrade request in one step.
                headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
                (
                    header::SEC_WEBSOCKET_KEY,
                    HeaderValue::from_static(SAMPLE_WS_KEY),
                )
            }
            17 => (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json;charset='utf-8'"),
            ),
            18 => (
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            ),
            19 => (header::ORIGIN, HeaderValue::from_static(GOOD_ORIGIN)),
            20 => (header::ORIGIN, header_value(raw)),
            21 => (
                HeaderName::from_static("x-real-ip"),
                HeaderValue::from_static("192.0.2.7"),
            ),
            22 => (HeaderName::from_static("x-real-ip"), header_value(raw)),
            _ => match HeaderName::from_bytes(raw) {
                Ok(name) => (name, header_value(raw)),
                Err(_) => continue,
            },
        };
        headers.insert(name, value);
    }
    let case = HttpCase {
        method,
        uri,
        headers,
        // hyper's HTTP/1 server attaches an upgrade handle to every request.
        upgradable: flags & 1 == 0,
        shutting_down: flags & 2 != 0,
        alice_online: flags & 4 == 0,
        strict: flags & 8 != 0,
        peer: flags & 16 == 0,
        repeat: if flags & 32 != 0 { 3 } else { 1 },
    };
    (case, Bytes::from(body), chunk)
}

/// A structured request (method, path, query, headers, body) through the real warp routes, the
/// way the server calls them (hyper service over `warp::service`). Never panics; every status is
/// a documented one; 101 only for a valid upgrade with a genuine key; every other reply is the
/// JSON envelope; 200 only with the right password.
pub fn http(data: &[u8]) {
    let mut input = Input::new(data);
    let mut config = Config::new("127.0.0.1:0", PASSWORD);
    config.max_body_bytes = MAX_BODY;
    config.send_queue_frames = 4;
    config.auth_failures_per_minute = 2;
    config.real_ip_header = Some("x-real-ip".into());
    let auth = Auth::new(
        config.live().key_material(),
        config.password.expose(),
        config.access_key_ttl_secs,
    );
    let (case, body, chunk) = decode_request(&mut input, &auth);
    if case.strict {
        config.allowed_origins = Some(vec![GOOD_ORIGIN.into()]);
        config.max_sockets = 1;
        config.max_sockets_per_uid = 1;
    }

    HTTP_RT.with(|rt| {
        rt.block_on(async {
            let hub = Arc::new(Hub::local(config.queue_limit(), config.retention()));
            // alice has a socket open (so /push can reach someone), unless the flags say not.
            let alice = match case.alice_online {
                true => Some(
                    hub.connect(Subscription::seed("alice"), None)
                        .await
                        .unwrap(),
                ),
                false => None,
            };
            let tracker = TaskTracker::new();
            let sockets = Arc::new(SocketContext::new(
                hub.clone(),
                config.live().heartbeat_interval(),
                ws_config(config.max_client_frame_bytes),
                Default::default(),
            ));
            if case.shutting_down {
                sockets.begin_draining();
                sockets.shut_down();
            }
            let state = Arc::new(AppState::new(&config, sockets.clone(), tracker.clone()));
            let service = TowerToHyperService::new(warp::service(routes(state)));

            for _ in 0..case.repeat {
                let mut request = Request::new(ChunkedBody {
                    data: body.clone(),
                    chunk,
                });
                *request.method_mut() = case.method.clone();
                *request.uri_mut() = case.uri.clone();
                *request.headers_mut() = case.headers.clone();
                if case.upgradable {
                    // Without a hyper connection this handle resolves to an error at once, so
                    // the spawned socket task ends; what matters is the reply before it.
                    let mut template = Request::new(());
                    let on_upgrade = hyper::upgrade::on(&mut template);
                    request.extensions_mut().insert(on_upgrade);
                }
                if case.peer {
                    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
                    request.extensions_mut().insert(PeerAddr(peer));
                }
                let response = hyper::service::Service::call(&service, request)
                    .await
                    .expect("warp routes never fail");
                let (parts, body) = response.into_parts();
                let mut body = std::pin::pin!(body);
                let mut bytes = Vec::new();
                while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                    let frame = frame.expect("in-memory body");
                    if let Ok(data) = frame.into_data() {
                        bytes.extend_from_slice(&data);
                    }
                }
                check_http(&case, &auth, parts.status.as_u16(), &parts.headers, &bytes);
            }

            tracker.close();
            tokio::time::timeout(Duration::from_secs(5), tracker.wait())
                .await
                .expect("socket tasks end when the upgrade fails");
            drop(alice);
            assert_eq!(hub.socket_count(), 0, "a socket outlived its request");
        })
    });
}

fn check_http(case: &HttpCase, auth: &Auth, status: u16, headers: &HeaderMap, body: &[u8]) {
    let what = || {
        format!(
            "{} {} {:?} -> {status} {:?}",
            case.method,
            case.uri,
            case.headers,
            String::from_utf8_lossy(body)
        )
    };
    assert!(
        DOCUMENTED.contains(&status),
        "undocumented status: {}",
        what()
    );
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(case.uri.query().unwrap_or("")).unwrap_or_default();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let bearer = case
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let password_ok = param("password").or(bearer) == Some(PASSWORD);

    if status == 101 {
        let has_token = |name: HeaderName, token: &str| {
            case.headers.get(name).is_some_and(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            })
        };
        assert!(case.method == Method::GET, "101 for {}", what());
        assert!(
            has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket"),
            "101 without upgrade headers: {}",
            what()
        );
        assert_eq!(
            case.headers
                .get(header::SEC_WEBSOCKET_VERSION)
                .map(|v| v.as_bytes()),
            Some(&b"13"[..]),
            "101 without version 13: {}",
            what()
        );
        let key = case
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .unwrap_or_else(|| panic!("101 without Sec-WebSocket-Key: {}", what()));
        assert_eq!(
            headers
                .get(header::SEC_WEBSOCKET_ACCEPT)
                .map(|v| v.as_bytes()),
            Some(derive_accept_key(key.as_bytes()).as_bytes()),
            "101 with a wrong Sec-WebSocket-Accept: {}",
            what()
        );
        let uid = param("uid").unwrap_or("");
        assert!(
            !uid.is_empty() && uid.len() <= MAX_UID_BYTES,
            "101 for uid {uid:?}: {}",
            what()
        );
        assert!(
            auth.verify(uid, param("access_key").unwrap_or("")).is_ok(),
            "101 without a genuine key: {}",
            what()
        );
        assert!(case.upgradable && !case.shutting_down, "101: {}", what());
        assert!(body.is_empty(), "101 with a body: {}", what());
        return;
    }

    assert_eq!(
        headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/json"[..]),
        "reply not JSON: {}",
        what()
    );
    let reply: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("reply body is not JSON ({e}): {}", what()));
    let topic = reply["topic"]
        .as_str()
        .unwrap_or_else(|| panic!("reply without a string topic: {}", what()));
    let number = reply["number"]
        .as_u64()
        .unwrap_or_else(|| panic!("reply without an integer number: {}", what()));
    assert!(
        reply.get("contents").is_some(),
        "reply without contents: {}",
        what()
    );
    if status != 200 {
        assert!(
            topic == "error" && number == 0,
            "failure not in the error envelope: {}",
            what()
        );
    }
    match status {
        200 => {
            assert!(password_ok, "200 without the password: {}", what());
            if topic == "_access" {
                let key = reply["contents"].as_str().expect("key is a string");
                let uid = param("uid").unwrap_or("");
                assert!(
                    auth.verify(uid, key).is_ok(),
                    "issued key does not verify for {uid:?}: {}",
                    what()
                );
            }
        }
        405 => assert!(
            headers.contains_key(header::ALLOW),
            "405 without Allow: {}",
            what()
        ),
        426 => assert_eq!(
            headers.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..]),
            "426 without Upgrade: {}",
            what()
        ),
        503 => assert!(
            case.shutting_down || case.strict,
            "503 while running and under the socket cap: {}",
            what()
        ),
        429 => assert!(
            case.repeat > 1 || case.strict,
            "429 for a first request under the socket cap: {}",
            what()
        ),
        403 => {
            let origin = case.headers.get(header::ORIGIN).map(|v| v.as_bytes());
            assert!(
                case.strict
                    && origin.is_some_and(|o| !o.eq_ignore_ascii_case(GOOD_ORIGIN.as_bytes())),
                "403 without a foreign Origin: {}",
                what()
            );
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// ws_frames

/// Virtual time a socket gets to end after its client stops: heartbeats (100 ms here), the close
/// handshake's 2 s, and slack. The runtime's clock is paused, so this costs no real time.
const SOCKET_DEADLINE: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_millis(100);
const FRAME_LIMIT: usize = 1024;
const DUPLEX_BYTES: usize = 1024;

thread_local! {
    /// Paused clock: timers fire as soon as every task is idle, in virtual time.
    static WS_RT: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
}

/// Bytes a client sends after the handshake, into the real socket task (`native::serve`) over an
/// in-memory pipe, with pushes and a shutdown mixed in as the first byte says. The task always
/// ends (within [`SOCKET_DEADLINE`] of virtual time), leaves no socket in the hub, and what it
/// wrote is a valid server-side WebSocket stream with at most one close frame, last.
pub fn ws_frames(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let client_closes = flags & 1 == 0;
    let client_reads = flags & 2 == 0;
    let shutdown_after = flags & 4 != 0;
    let resumable = flags & 8 != 0;
    let pushes = usize::from(flags >> 4 & 7);
    let write_chunk = [1, 7, 100, usize::MAX][usize::from(input.byte() & 3)];
    let payload = input.rest();

    WS_RT.with(|rt| {
        rt.block_on(async {
            let retention = Retention {
                history_size: 4,
                history_ttl: Duration::from_secs(60),
                max_bytes: 4096,
            };
            let queue = push_serve::outbox::QueueLimit {
                frames: 4,
                bytes: 1 << 20,
            };
            let hub = Arc::new(Hub::local(queue, retention));
            let ctx = Arc::new(SocketContext::new(
                hub.clone(),
                HEARTBEAT,
                ws_config(FRAME_LIMIT),
                Default::default(),
            ));
            let stop = ctx.clone();
            let (client, server) = tokio::io::duplex(DUPLEX_BYTES);
            let ws = native::accept(server, ws_config(FRAME_LIMIT)).await;
            let (mut client_rd, mut client_wr) = tokio::io::split(client);
            let user = StreamKey::User("fuzz".into());
            let contents = RawValue::from_string(r#"{"n":1}"#.to_owned()).expect("raw JSON");

            let serve = async {
                let sub = if resumable {
                    Subscription {
                        uid: "fuzz".into(),
                        topics: vec!["news".into()],
                        proto: Proto::Resumable,
                    }
                } else {
                    Subscription::seed("fuzz")
                };
                let session = hub.connect(sub, None).await.expect("local hub");
                native::serve(ws, session, ctx).await;
            };
            let client_writes = async {
                // Let the socket task register first.
                tokio::task::yield_now().await;
                for _ in 0..pushes {
                    let msg = wire::Message::new("t", &contents);
                    hub.publish(&user, msg, None).await.expect("local hub");
                }
                for part in payload.chunks(write_chunk.min(payload.len()).max(1)) {
                    if client_wr.write_all(part).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                if shutdown_after {
                    stop.shut_down();
                }
                if client_closes {
                    let _ = client_wr.shutdown().await;
                }
                client_wr
            };
            let client_reads_all = async {
                let mut out = Vec::new();
                if client_reads {
                    let _ = client_rd.read_to_end(&mut out).await;
                }
                (client_rd, out)
            };
            let (_, client_wr, (client_rd, out)) = tokio::time::timeout(SOCKET_DEADLINE, async {
                tokio::join!(serve, client_writes, client_reads_all)
            })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "socket still open {SOCKET_DEADLINE:?} after its client stopped \
                     (closes: {client_closes}, reads: {client_reads})"
                )
            });
            drop((client_wr, client_rd));
            assert_eq!(hub.socket_count(), 0, "socket left in the hub");
            assert_eq!(
                hub.registry().followers(&user),
                0,
                "socket left on its stream"
            );
            if client_reads {
                check_server_stream(&out).await;
            }
        })
    });
}

/// Parses what the server wrote as a client would: valid frames, at most one close, and nothing
/// after it.
async fn check_server_stream(out: &[u8]) {
    let io = tokio::io::join(out, tokio::io::sink());
    let mut client = WebSocketStream::from_raw_socket(io, Role::Client, None).await;
    let mut closes = 0;
    while let Some(message) = client.next().await {
        match message {
            Ok(Message::Close(_)) => closes += 1,
            Ok(other) => assert_eq!(closes, 0, "server sent {other:?} after its close"),
            Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))
            | Err(WsError::ConnectionClosed)
            | Err(WsError::AlreadyClosed) => break,
            Err(e) => panic!("server wrote an invalid WebSocket stream: {e}"),
        }
    }
    assert!(closes <= 1, "server sent {closes} close frames");
}
