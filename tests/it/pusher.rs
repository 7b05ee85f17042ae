//! Pusher-compatible mode over real sockets:
//! - the real libraries (tests/pusher/): pusher-js's Node build, laravel-echo and the `pusher`
//!   server SDK (sdk.mjs), and the PyPI `pusher` SDK for the HTTP API (sdk.py), against one
//!   node and against two nodes of a cluster on a real Redis (a trigger on node A reaches
//!   subscribers on node B; presence is cluster-wide). A suite whose tool is missing skips with
//!   one line saying what is missing.
//! - the raw protocol with tokio-tungstenite and a raw HTTP client, for what the libraries
//!   never send: malformed frames, forged and replayed API signatures, oversized bodies,
//!   unknown apps, the activity timeout.

use crate::common;

use std::process::Command;

use common::cluster::Redis;
use common::*;
use futures_util::SinkExt;
use push_serve::protocol::pusher::auth::{body_md5, sign};
use push_serve::{Config, PusherApp, PusherConfig};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pusher");
const KEY: &str = "app-key";
const SECRET: &str = "app-secret";

fn pusher_conf(c: &mut Config) {
    let mut app = PusherApp::new("1001", KEY, SECRET);
    app.enable_client_messages = true;
    let mut other = PusherApp::new("1002", "other-key", "other-secret");
    other.max_connections = Some(1);
    let mut pusher = PusherConfig::new();
    pusher.apps = vec![app, other];
    c.pusher = Some(pusher);
}

async fn start() -> Server {
    Server::start(pusher_conf).await
}

async fn socket(s: &Server, key: &str) -> Ws {
    let url = format!(
        "ws://{}/app/{key}?protocol=7&client=js&version=8.6.0",
        s.addr
    );
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn frame(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// `data` of a frame, parsed if it is a JSON string.
fn data(frame: &Value) -> Value {
    match &frame["data"] {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        v => v.clone(),
    }
}

/// A connected socket and its socket_id.
async fn connected(s: &Server, key: &str) -> (Ws, String) {
    let mut ws = socket(s, key).await;
    let hello = frame(&mut ws).await;
    assert_eq!(hello["event"], "pusher:connection_established");
    let id = data(&hello)["socket_id"].as_str().unwrap().to_owned();
    (ws, id)
}

async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

async fn subscribe(ws: &mut Ws, sid: &str, channel: &str) {
    let auth = format!("{KEY}:{}", sign(SECRET, &format!("{sid}:{channel}")));
    send(
        ws,
        json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth}}),
    )
    .await;
    let ok = frame(ws).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signed API request as the SDKs make it; `stamp` and `secret` overridable to forge one.
async fn api(
    s: &Server,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: &str,
    stamp: u64,
    secret: &str,
) -> Reply {
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), KEY.into()),
        ("auth_timestamp".into(), stamp.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), body_md5(body.as_bytes())));
    }
    params.extend(query.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    params.sort();
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    let signature = sign(secret, &format!("{method}\n{path}\n{query}"));
    let target = format!("{path}?{query}&auth_signature={signature}");
    let mut http = Http::connect(s.addr).await;
    http.request(
        method,
        &target,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

async fn trigger(s: &Server, body: Value) -> Reply {
    api(
        s,
        "POST",
        "/apps/1001/events",
        &[],
        &body.to_string(),
        now(),
        SECRET,
    )
    .await
}

#[tokio::test]
async fn pusher_mode_is_off_unless_configured() {
    let s = Server::start(|_| {}).await;
    let mut http = s.http().await;
    http.get("/app/app-key?protocol=7").await.assert_error(404);
    http.get("/apps/1001/channels").await.assert_error(404);
}

#[tokio::test]
async fn unknown_keys_and_protocols_are_refused_with_pushers_codes() {
    let s = start().await;
    for (path, code) in [
        ("/app/nope?protocol=7", 4001),
        ("/app/app-key", 4008),
        ("/app/app-key?protocol=3", 4007),
    ] {
        let url = format!("ws://{}{path}", s.addr);
        let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
        let err = frame(&mut ws).await;
        assert_eq!(err["event"], "pusher:error", "{path}");
        assert_eq!(err["data"]["code"], code, "{path}");
        assert_eq!(
            close_code(&mut ws).await.map(u16::from),
            Some(code),
            "{path}"
        );
    }
    // 1002 takes one connection: a second gets 4004 until the first leaves.
    let (first, _) = connected(&s, "other-key").await;
    let mut second = socket(&s, "other-key").await;
    assert_eq!(frame(&mut second).await["data"]["code"], 4004);
    drop(first);
    eventually("1002's place to free up", || async {
        let mut ws = socket(&s, "other-key").await;
        frame(&mut ws).await["event"] == "pusher:connection_established"
    })
    .await;
}

#[tokio::test]
async fn malformed_frames_get_an_error_and_the_socket_lives_on() {
    let s = start().await;
    let (mut ws, sid) = connected(&s, KEY).await;
    for bad in [
        r#"{"event":"pusher:subscribe"}"#,
        r#"{"event":"pusher:subscribe","data":null}"#,
        r#"{"event":"pusher:subscribe","data":"{"}"#,
        r#"{"event":"pusher:signin","data":{}}"#,
        r#"{"event":"client-x","channel":"private-a"}"#,
        r#"not json"#,
        r#"{"event":"nonsense"}"#,
    ] {
        ws.send(Message::Text(bad.into())).await.unwrap();
        let err = frame(&mut ws).await;
        assert_eq!(err["event"], "pusher:error", "{bad}");
    }
    send(&mut ws, json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(frame(&mut ws).await["event"], "pusher:pong");
    subscribe(&mut ws, &sid, "public").await;
}

#[tokio::test]
async fn private_and_presence_are_prefixes_and_public_channels_take_no_client_events() {
    let s = start().await;
    let (mut ws, sid) = connected(&s, KEY).await;
    // Names that merely contain private-/presence-/cache- are public: no auth needed.
    for name in ["my-private-room", "xpresence-a", "not-cache-b"] {
        send(
            &mut ws,
            json!({"event":"pusher:subscribe","data":{"channel":name}}),
        )
        .await;
        let ok = frame(&mut ws).await;
        assert_eq!(
            ok["event"], "pusher_internal:subscription_succeeded",
            "{name}"
        );
    }
    // A real private channel without auth is refused.
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"private-a"}}),
    )
    .await;
    let refused = frame(&mut ws).await;
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert_eq!(refused["data"]["status"], 401);
    // A signature for another socket is refused too.
    let stolen = format!("{KEY}:{}", sign(SECRET, "1.1:private-a"));
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"private-a","auth":stolen}}),
    )
    .await;
    assert_eq!(frame(&mut ws).await["event"], "pusher:subscription_error");
    // Client events on a public channel are refused.
    send(
        &mut ws,
        json!({"event":"client-x","channel":"my-private-room","data":{}}),
    )
    .await;
    assert_eq!(frame(&mut ws).await["event"], "pusher:error");
    subscribe(&mut ws, &sid, "private-a").await;
}

#[tokio::test]
async fn api_errors_carry_their_real_status() {
    let s = start().await;
    let body = json!({"name":"e","channel":"c","data":"{}"}).to_string();
    let post = |stamp, secret| {
        let body = body.clone();
        let s = &s;
        async move { api(s, "POST", "/apps/1001/events", &[], &body, stamp, secret).await }
    };
    assert_eq!(post(now(), SECRET).await.status, 200);
    // A wrong secret, a replay from 11 minutes ago, a timestamp from the future.
    post(now(), "wrong").await.assert_error(401);
    post(now() - 660, SECRET).await.assert_error(401);
    post(now() + 660, SECRET).await.assert_error(401);
    // Tampered body: the signature covered another body_md5.
    let mut http = Http::connect(s.addr).await;
    let q = format!(
        "auth_key={KEY}&auth_timestamp={}&auth_version=1.0&body_md5={}",
        now(),
        body_md5(body.as_bytes())
    );
    let sig = sign(SECRET, &format!("POST\n/apps/1001/events\n{q}"));
    let tampered = http
        .request(
            "POST",
            &format!("/apps/1001/events?{q}&auth_signature={sig}"),
            &[],
            br#"{"name":"e","channel":"other","data":"{}"}"#,
        )
        .await;
    tampered.assert_error(401);
    // Unknown app, bad JSON, too many channels, data over max_event_bytes, wrong method.
    api(&s, "POST", "/apps/1009/events", &[], &body, now(), SECRET)
        .await
        .assert_error(404);
    let reply = trigger(&s, json!({"name":"e"})).await;
    reply.assert_error(400);
    let mut bad = Http::connect(s.addr).await;
    let q = format!(
        "auth_key={KEY}&auth_timestamp={}&auth_version=1.0&body_md5={}",
        now(),
        body_md5(b"{nope")
    );
    let sig = sign(SECRET, &format!("POST\n/apps/1001/events\n{q}"));
    bad.request(
        "POST",
        &format!("/apps/1001/events?{q}&auth_signature={sig}"),
        &[],
        b"{nope",
    )
    .await
    .assert_error(400);
    let channels: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    trigger(&s, json!({"name":"e","channels":channels,"data":"{}"}))
        .await
        .assert_error(400);
    let big = "x".repeat(11 * 1024);
    trigger(&s, json!({"name":"e","channel":"c","data":big}))
        .await
        .assert_error(413);
    api(&s, "GET", "/apps/1001/events", &[], "", now(), SECRET)
        .await
        .assert_error(405);
    let huge = "x".repeat((1 << 20) + 1);
    api(&s, "POST", "/apps/1001/events", &[], &huge, now(), SECRET)
        .await
        .assert_error(413);
    // Unsigned, its body is not even read: the signature comes first.
    let mut http = Http::connect(s.addr).await;
    http.request("POST", "/apps/1001/events", &[], huge.as_bytes())
        .await
        .assert_error(401);
}

/// Knowing the public app key (every page has it) is not enough to make the server hold a
/// body: a request that is not signed with the app's secret is refused before its body is
/// read, so a body that never comes holds nothing.
#[tokio::test]
async fn an_unsigned_api_request_is_refused_before_its_body_is_read() {
    use tokio::io::AsyncWriteExt;
    let s = start().await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /apps/1001/events?auth_key={KEY}&auth_timestamp={}&auth_version=1.0&auth_signature=0 \
         HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 500000\r\n\r\n{{",
        now()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The rest of the body never comes; the refusal does, at once.
    let reply = tokio::time::timeout(PATIENCE, RawReply::new(stream).read())
        .await
        .expect("refused without waiting for the body");
    reply.assert_error(401);
}

#[tokio::test]
async fn channel_queries_and_triggers_over_the_raw_protocol() {
    let s = start().await;
    let (mut a, sid_a) = connected(&s, KEY).await;
    let (mut b, sid_b) = connected(&s, KEY).await;
    subscribe(&mut a, &sid_a, "private-x").await;
    subscribe(&mut b, &sid_b, "room").await;
    let reply = trigger(
        &s,
        json!({"name":"hello","channels":["room","private-x"],"data":"{\"n\":1}","info":"subscription_count"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["channels"]["room"]["subscription_count"], 1);
    let got = frame(&mut b).await;
    assert_eq!(
        got,
        json!({"event":"hello","channel":"room","data":"{\"n\":1}"})
    );
    let list = api(&s, "GET", "/apps/1001/channels", &[], "", now(), SECRET).await;
    assert_eq!(list.status, 200);
    let list = list.json();
    assert!(list["channels"]["room"].is_object(), "{list}");
    let one = api(
        &s,
        "GET",
        "/apps/1001/channels/room",
        &[],
        "",
        now(),
        SECRET,
    )
    .await
    .json();
    assert_eq!(one["occupied"], true);
    assert_eq!(one["subscription_count"], 1);
    let users = api(
        &s,
        "GET",
        "/apps/1001/channels/room/users",
        &[],
        "",
        now(),
        SECRET,
    )
    .await;
    users.assert_error(400);
}

#[tokio::test]
async fn a_silent_socket_is_pinged_then_closed_with_4201() {
    let s = Server::start(|c| {
        pusher_conf(c);
        c.pusher.as_mut().unwrap().activity_timeout_secs = 1;
    })
    .await;
    let (mut ws, _) = connected(&s, KEY).await;
    assert_eq!(frame(&mut ws).await["event"], "pusher:ping");
    let err = frame(&mut ws).await;
    assert_eq!(err["data"]["code"], 4201);
    assert_eq!(close_code(&mut ws).await.map(u16::from), Some(4201));
}

/// Runs `<tool> <script> <args>` off the runtime and checks it printed `ok`.
/// A config reload (SIGHUP) wakes every socket task once; a Pusher socket takes it in its stride
/// and goes on receiving.
#[tokio::test]
async fn a_config_reload_leaves_pusher_sockets_open() {
    let s = start().await;
    let (mut ws, sid) = connected(&s, KEY).await;
    subscribe(&mut ws, &sid, "room").await;
    let outcome = s.reload(|c| c.heartbeat_interval_secs = 7.0).await.unwrap();
    assert_eq!(outcome.applied, ["heartbeat_interval_secs"]);
    let reply = trigger(&s, json!({"name":"after","channel":"room","data":"{}"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(frame(&mut ws).await["event"], "after");
}

async fn run(tool: &str, script: &str, args: Vec<String>, ok: &str) {
    let script = format!("{DIR}/{script}");
    let tool = tool.to_owned();
    let path = script.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(tool)
            .arg(path)
            .args(args)
            .output()
            .expect("the tool runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains(ok),
        "{script} failed:\n{stdout}\n{stderr}"
    );
}

fn node_ready() -> bool {
    require(
        "pusher (Node)",
        "node or tests/pusher/node_modules (npm ci --prefix tests/pusher)",
        runs("node", "--version")
            && std::path::Path::new(DIR)
                .join("node_modules/pusher-js")
                .exists(),
    )
}

fn python_ready() -> bool {
    let present = Command::new("python3")
        .args(["-c", "import pusher"])
        .output()
        .is_ok_and(|o| o.status.success());
    require(
        "pusher (Python)",
        "the PyPI pusher package (pip install pusher)",
        present,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_laravel_echo_and_the_node_sdk_work_unchanged() {
    if !node_ready() {
        return;
    }
    let s = start().await;
    run(
        "node",
        "sdk.mjs",
        vec![s.addr.to_string()],
        "pusher sdk: ok",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_drives_the_http_api() {
    if !python_ready() {
        return;
    }
    let s = start().await;
    let (mut ws, sid) = connected(&s, KEY).await;
    subscribe(&mut ws, &sid, "py-room").await;
    run(
        "python3",
        "sdk.py",
        vec![s.addr.to_string(), sid],
        "python sdk: ok",
    )
    .await;
    // The script triggered to this socket's channel twice, excluding it the second time: the
    // next frame after the first is a marker sent now.
    assert_eq!(frame(&mut ws).await["event"], "from-python");
    let marker = trigger(&s, json!({"name":"marker","channel":"py-room","data":"{}"})).await;
    assert_eq!(marker.status, 200);
    assert_eq!(frame(&mut ws).await["event"], "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_channels_presence_and_users() {
    if !node_ready() {
        return;
    }
    let Some(redis) = Redis::start().await else {
        return;
    };
    let prefix = format!("pusher-{:016x}", rand_u64());
    let node = |prefix: String| {
        let url = redis.url();
        Server::start(move |c| {
            pusher_conf(c);
            c.redis_url = Some(url.into());
            c.redis_cluster.clear();
            c.redis_prefix = prefix;
        })
    };
    let a = node(prefix.clone()).await;
    let b = node(prefix).await;
    for s in [&a, &b] {
        eventually("the node to accept pusher sockets", || async {
            let mut ws = socket(s, KEY).await;
            frame(&mut ws).await["event"] == "pusher:connection_established"
        })
        .await;
    }
    // Triggers go to node A, clients sit on node B (and one on A for presence).
    run(
        "node",
        "sdk.mjs",
        vec![a.addr.to_string(), b.addr.to_string()],
        "pusher sdk: ok",
    )
    .await;
}

/// One webhook request as received: its key and signature headers and its body.
struct Hook {
    key: String,
    signature: String,
    body: String,
}

/// A webhook receiver on a loopback port: answers 200 to every request, after `delay`, and
/// hands it over.
async fn webhook_receiver(
    delay: std::time::Duration,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Hook>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let (mut key, mut signature, mut length) = (String::new(), String::new(), 0);
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(": ") {
                        match name.to_ascii_lowercase().as_str() {
                            "x-pusher-key" => key = value.into(),
                            "x-pusher-signature" => signature = value.into(),
                            "content-length" => length = value.parse().unwrap(),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).await.unwrap();
                tokio::time::sleep(delay).await;
                reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
                let body = String::from_utf8(body).unwrap();
                let _ = tx.send(Hook {
                    key,
                    signature,
                    body,
                });
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_batched_signed_and_a_dead_endpoint_harms_no_socket() {
    use push_serve::config::PusherWebhook;
    let (port, mut hooks) = webhook_receiver(std::time::Duration::ZERO).await;
    let dead = common::cluster::free_port();
    let s = Server::start(|c| {
        pusher_conf(c);
        let app = &mut c.pusher.as_mut().unwrap().apps[0];
        let all: Vec<String> = push_serve::config::WEBHOOK_EVENTS
            .iter()
            .map(|s| s.to_string())
            .collect();
        app.webhooks = vec![
            PusherWebhook {
                url: format!("http://127.0.0.1:{dead}/never"),
                event_types: all.clone(),
            },
            PusherWebhook {
                url: format!("http://127.0.0.1:{port}/pusher/webhook"),
                event_types: all,
            },
        ];
    })
    .await;
    let (mut a, sid_a) = connected(&s, KEY).await;
    let (mut b, sid_b) = connected(&s, KEY).await;
    subscribe(&mut a, &sid_a, "private-hooked").await;
    subscribe(&mut b, &sid_b, "private-hooked").await;
    send(
        &mut a,
        json!({"event":"client-typing","channel":"private-hooked","data":{"x":1}}),
    )
    .await;
    assert_eq!(frame(&mut b).await["event"], "client-typing");
    send(
        &mut b,
        json!({"event":"pusher:subscribe","data":{"channel":"cache-empty"}}),
    )
    .await;
    assert_eq!(
        frame(&mut b).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(frame(&mut b).await["event"], "pusher:cache_miss");
    // Still answering: the dead endpoint's retries are off the sockets' path.
    send(&mut a, json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(frame(&mut a).await["event"], "pusher:pong");

    let mut seen: Vec<Value> = Vec::new();
    // Until the endpoint has them all (each webhook's signature checked on the way).
    let mut collect = async |seen: &mut Vec<Value>, wanted: &[&str]| {
        while !wanted.iter().all(|w| seen.iter().any(|e| e["name"] == *w)) {
            let hook = tokio::time::timeout(PATIENCE, hooks.recv())
                .await
                .expect("a webhook in time")
                .unwrap();
            assert_eq!(hook.key, KEY);
            assert_eq!(hook.signature, sign(SECRET, &hook.body));
            if python_ready() {
                let valid = Command::new("python3")
                    .args([
                        "-c",
                        "import sys, pusher\n\
                     p = pusher.Pusher(app_id='1001', key=sys.argv[1], secret=sys.argv[2])\n\
                     assert p.validate_webhook(sys.argv[1], sys.argv[3], sys.argv[4]) is not None",
                        KEY,
                        SECRET,
                        &hook.signature,
                        &hook.body,
                    ])
                    .status()
                    .unwrap();
                assert!(
                    valid.success(),
                    "the PyPI SDK refused the webhook's signature"
                );
            }
            let body: Value = serde_json::from_str(&hook.body).unwrap();
            assert!(body["time_ms"].as_u64().unwrap() > 0);
            seen.extend(body["events"].as_array().unwrap().iter().cloned());
        }
    };
    collect(
        &mut seen,
        &["channel_occupied", "client_event", "cache_miss"],
    )
    .await;
    // Left once its channel_occupied went out: left within the batching window, the two
    // would cancel out and neither be sent, as with Pusher.
    for ws in [&mut a, &mut b] {
        send(
            ws,
            json!({"event":"pusher:unsubscribe","data":{"channel":"private-hooked"}}),
        )
        .await;
    }
    collect(&mut seen, &["channel_vacated"]).await;
    let occupied: Vec<&Value> = seen
        .iter()
        .filter(|e| e["name"] == "channel_occupied" && e["channel"] == "private-hooked")
        .collect();
    assert_eq!(occupied.len(), 1, "occupied once, not per subscriber");
    let client = seen.iter().find(|e| e["name"] == "client_event").unwrap();
    assert_eq!(client["event"], "client-typing");
    assert_eq!(client["socket_id"], sid_a.as_str());
    let vacated = seen
        .iter()
        .find(|e| e["name"] == "channel_vacated")
        .unwrap();
    assert_eq!(vacated["channel"], "private-hooked");
}

/// Issue 19: churn drowns no webhook that matters. One anonymous socket subscribes to and
/// leaves public channels thousands of times, and cache channels whose `cache_miss` has no
/// pair to cancel it, against an endpoint taking 200 ms per POST; a signed presence join in the
/// middle still gets its `member_added` to the endpoint. Occupied/vacated pairs waiting together
/// cancel out (`coalesced`), and the full queue drops its oldest churn (`dropped`), never the
/// member event. Before, the queue of 1,024 dropped whatever came once full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_never_pushes_a_member_added_out_of_the_webhook_queue() {
    use push_serve::config::PusherWebhook;
    let (port, mut hooks) = webhook_receiver(std::time::Duration::from_millis(200)).await;
    let s = Server::start(|c| {
        pusher_conf(c);
        let pusher = c.pusher.as_mut().unwrap();
        // The churn is the webhook queue's to absorb here, not the socket's rate limit's.
        pusher.subscriptions_per_second = 1_000_000;
        pusher.apps[0].webhooks = vec![PusherWebhook {
            url: format!("http://127.0.0.1:{port}/pusher/webhook"),
            event_types: push_serve::config::WEBHOOK_EVENTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }];
    })
    .await;
    // Frames are sent without waiting for the replies (a reader task counts those), as fast
    // as the server takes them.
    let (churner, _) = connected(&s, KEY).await;
    let (mut churn_tx, mut churn_rx) = futures_util::StreamExt::split(churner);
    let (misses_tx, mut misses) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(Ok(Message::Text(text))) = futures_util::StreamExt::next(&mut churn_rx).await
        {
            if text.contains("pusher:cache_miss") {
                n += 1;
                let _ = misses_tx.send(n);
            }
        }
    });
    let mut churn = async |channels: &mut dyn Iterator<Item = String>| {
        for channel in channels {
            for event in ["pusher:subscribe", "pusher:unsubscribe"] {
                let frame = json!({"event": event, "data": {"channel": channel}});
                churn_tx
                    .feed(Message::Text(frame.to_string().into()))
                    .await
                    .unwrap();
            }
        }
        churn_tx.flush().await.unwrap();
    };
    churn(&mut (0..1500).map(|n| format!("cache-churn-{n}"))).await;
    tokio::time::timeout(PATIENCE * 6, misses.wait_for(|n| *n == 1500))
        .await
        .expect("the server answered every cache subscription")
        .unwrap();
    let (mut member, sid) = connected(&s, KEY).await;
    let channel = "presence-room";
    let channel_data = json!({"user_id":"alice"}).to_string();
    let auth = format!(
        "{KEY}:{}",
        sign(SECRET, &format!("{sid}:{channel}:{channel_data}"))
    );
    send(
        &mut member,
        json!({"event":"pusher:subscribe","data":{"channel":channel,"auth":auth,"channel_data":channel_data}}),
    )
    .await;
    assert_eq!(
        frame(&mut member).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    churn(&mut (0..3000).map(|n| format!("churn-{}", n % 40))).await;
    let mut seen = 0;
    let added = loop {
        let hook = tokio::time::timeout(std::time::Duration::from_secs(60), hooks.recv())
            .await
            .expect("member_added within a minute")
            .unwrap();
        let body: Value = serde_json::from_str(&hook.body).unwrap();
        let events = body["events"].as_array().unwrap().clone();
        seen += events.len();
        if let Some(added) = events.iter().find(|e| e["name"] == "member_added") {
            break added.clone();
        }
    };
    assert_eq!(
        (added["channel"].as_str(), added["user_id"].as_str()),
        (Some(channel), Some("alice"))
    );
    let metrics = s
        .http()
        .await
        .get(&format!("/metrics?password={}", enc(&s.password)))
        .await
        .text();
    let count = |outcome: &str| -> f64 {
        let name = format!(r#"push_serve_webhook_events_total{{outcome="{outcome}"}} "#);
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    assert!(count("coalesced") > 0.0, "{metrics}");
    // In memory the churn outruns the receiver and the queue overflows (so the test shows what
    // is dropped first). With a Redis store every subscribe waits for a round trip, and the
    // churn may not fill the queue: then the member_added above is all there is to check.
    let redis = std::env::var_os("PUSH_SERVE_TEST_REDIS").is_some()
        || std::env::var_os("PUSH_SERVE_TEST_REDIS_CLUSTER").is_some();
    if !redis {
        assert!(count("dropped") > 0.0, "{metrics}");
    }
    println!(
        "webhooks under churn: member_added delivered after {seen} other events; {} coalesced, \
         {} dropped",
        count("coalesced"),
        count("dropped")
    );
}

/// An anonymous socket may follow `max_channels_per_socket` channels (100 by default), not a
/// thousand: each costs the server an entry in every channel's list. One more is refused with
/// `pusher:subscription_error` 400, and the socket keeps the channels it has.
#[tokio::test]
async fn a_socket_follows_at_most_max_channels_per_socket() {
    let s = Server::start(|c| {
        pusher_conf(c);
        if let Some(p) = c.pusher.as_mut() {
            p.max_channels_per_socket = 3;
        }
    })
    .await;
    let (mut ws, sid) = connected(&s, KEY).await;
    for n in 0..3 {
        subscribe(&mut ws, &sid, &format!("c{n}")).await;
    }
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"c3"}}),
    )
    .await;
    let refused = frame(&mut ws).await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    assert_eq!(data(&refused)["status"], 400, "{refused}");
    // The first three still get their events.
    let r = trigger(&s, json!({"name":"e","channel":"c2","data":"{}"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = frame(&mut ws).await;
    assert_eq!(
        (got["event"].clone(), got["channel"].clone()),
        (json!("e"), json!("c2"))
    );
}

/// Pusher sockets count under `max_sockets_per_address` with native ones: past it, the socket
/// is told `pusher:error` 4100 and closed.
#[tokio::test]
async fn pusher_sockets_count_under_max_sockets_per_address() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = Server::start(|c| {
        pusher_conf(c);
        c.max_sockets_per_address = 1;
        c.real_ip_header = Some("X-Forwarded-For".into());
        c.trusted_proxies = 1;
    })
    .await;
    let from = |address: &'static str| {
        let url = format!(
            "ws://{}/app/{KEY}?protocol=7&client=js&version=8.6.0",
            s.addr
        );
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("X-Forwarded-For", address.parse().unwrap());
        request
    };
    let (mut first, _) = tokio_tungstenite::connect_async(from("198.51.100.7"))
        .await
        .unwrap();
    assert_eq!(
        frame(&mut first).await["event"],
        "pusher:connection_established"
    );
    let (mut second, _) = tokio_tungstenite::connect_async(from("198.51.100.7"))
        .await
        .unwrap();
    let refused = frame(&mut second).await;
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(data(&refused)["code"], 4100, "{refused}");
    let (mut other, _) = tokio_tungstenite::connect_async(from("198.51.100.8"))
        .await
        .unwrap();
    assert_eq!(
        frame(&mut other).await["event"],
        "pusher:connection_established"
    );
}

/// A Pusher socket over `new_sockets_per_address_per_minute` is told `pusher:error` 4100 and
/// closed with 4100: pusher-js (8.x, `getCloseAction`) backs off a second before it tries
/// again, where a 4200 would reconnect at once and a 4000 or 4300 never.
#[tokio::test]
async fn pusher_sockets_count_under_new_sockets_per_address_per_minute() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = Server::start(|c| {
        pusher_conf(c);
        c.new_sockets_per_address_per_minute = 2;
        c.real_ip_header = Some("X-Forwarded-For".into());
    })
    .await;
    let from = |address: &'static str| {
        let url = format!("ws://{}/app/{KEY}?protocol=7", s.addr);
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("X-Forwarded-For", address.parse().unwrap());
        request
    };
    for _ in 0..2 {
        let (mut ws, _) = tokio_tungstenite::connect_async(from("198.51.100.7"))
            .await
            .unwrap();
        assert_eq!(
            frame(&mut ws).await["event"],
            "pusher:connection_established"
        );
        ws.close(None).await.unwrap();
    }
    let (mut third, _) = tokio_tungstenite::connect_async(from("198.51.100.7"))
        .await
        .unwrap();
    let refused = frame(&mut third).await;
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(data(&refused)["code"], 4100, "{refused}");
    assert_eq!(close_code(&mut third).await.map(u16::from), Some(4100));
    let (mut other, _) = tokio_tungstenite::connect_async(from("198.51.100.8"))
        .await
        .unwrap();
    assert_eq!(
        frame(&mut other).await["event"],
        "pusher:connection_established"
    );
}

/// Subscribe and unsubscribe frames spend one budget per socket: `max_channels_per_socket` at
/// once (a reconnecting page resubscribes them all), then `subscriptions_per_second`. A
/// subscription past it gets `pusher:error` 4301 (the socket stays open, as for client events
/// over their rate) and `pusher:subscription_error` 429 for that channel; an unsubscribe is
/// honoured anyway; once the budget refills, subscriptions pass again.
#[tokio::test]
async fn subscriptions_past_the_rate_are_refused_and_the_socket_lives_on() {
    let s = Server::start(|c| {
        pusher_conf(c);
        let pusher = c.pusher.as_mut().unwrap();
        pusher.max_channels_per_socket = 3;
        pusher.subscriptions_per_second = 1;
    })
    .await;
    let (mut ws, sid) = connected(&s, KEY).await;
    for n in 0..3 {
        subscribe(&mut ws, &sid, &format!("c{n}")).await;
    }
    send(
        &mut ws,
        json!({"event":"pusher:subscribe","data":{"channel":"c3"}}),
    )
    .await;
    let error = frame(&mut ws).await;
    assert_eq!(
        (error["event"].as_str(), data(&error)["code"].as_u64()),
        (Some("pusher:error"), Some(4301)),
        "{error}"
    );
    let refused = frame(&mut ws).await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    assert_eq!(refused["channel"], "c3");
    assert_eq!(data(&refused)["status"], 429, "{refused}");
    // Left although the budget is spent: c0's events no longer come, c1's do.
    send(
        &mut ws,
        json!({"event":"pusher:unsubscribe","data":{"channel":"c0"}}),
    )
    .await;
    for channel in ["c0", "c1"] {
        let r = trigger(&s, json!({"name":"e","channel":channel,"data":"{}"})).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let got = frame(&mut ws).await;
    assert_eq!(got["channel"], "c1", "{got}");
    // Refilled at one a second: c3 gets in.
    let mut attempts = 0;
    loop {
        attempts += 1;
        send(
            &mut ws,
            json!({"event":"pusher:subscribe","data":{"channel":"c3"}}),
        )
        .await;
        let reply = frame(&mut ws).await;
        if reply["event"] == "pusher_internal:subscription_succeeded" {
            break;
        }
        assert_eq!(reply["event"], "pusher:error", "{reply}");
        assert_eq!(frame(&mut ws).await["event"], "pusher:subscription_error");
        assert!(attempts < 100, "never refilled");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Issue 19: anonymous Pusher sockets cannot take the slots native pages need. With
/// `max_sockets: 10`, Pusher sockets together get `pusher.max_sockets_share` (0.9) of them:
/// the tenth and later are told 4100, and a native page with a valid key still connects.
#[tokio::test]
async fn a_pusher_flood_leaves_native_pages_their_share_of_max_sockets() {
    let s = Server::start(|c| {
        pusher_conf(c);
        c.max_sockets = 10;
    })
    .await;
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..15 {
        let mut ws = socket(&s, KEY).await;
        let first = frame(&mut ws).await;
        match first["event"].as_str() {
            Some("pusher:connection_established") => flood.push(ws),
            Some("pusher:error") => {
                assert_eq!(data(&first)["code"], 4100, "{first}");
                refused += 1;
            }
            _ => panic!("{first}"),
        }
    }
    assert_eq!((flood.len(), refused), (9, 6));
    let mut page = s.connect("alice").await;
    let r = s.push("alice", r#"{"topic":"t","contents":1}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        next_text(&mut page).await,
        r#"{"topic":"t","number":1,"contents":1}"#
    );
    // The native pages' share is the last of max_sockets: the server is full now.
    let key = s.key("bob").await;
    let err = try_connect(&s.ws_url("bob", &key)).await.unwrap_err();
    assert_eq!(err.0, 503, "{}", err.1);
}

/// Issue 19: the API's signed text is built from decoded parameters (as the SDKs build it), so
/// `filter_by_prefix=presence-&info=user_count` and `filter_by_prefix=presence-%26info%3Duser_count`
/// would sign alike. The re-split request is refused with 400 under the original's valid
/// signature; the original still works (and the SDKs, in the tests above).
#[tokio::test]
async fn a_signed_query_re_split_under_its_signature_is_refused() {
    let s = start().await;
    let stamp = now().to_string();
    let query = format!(
        "auth_key={KEY}&auth_timestamp={stamp}&auth_version=1.0&filter_by_prefix=presence-&info=user_count"
    );
    let signature = sign(SECRET, &format!("GET\n/apps/1001/channels\n{query}"));
    let get = |query: String| {
        let s = &s;
        async move {
            let mut http = Http::connect(s.addr).await;
            http.get(&format!("/apps/1001/channels?{query}")).await
        }
    };
    let ok = get(format!("{query}&auth_signature={signature}")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let resplit = query.replace("presence-&info=user_count", "presence-%26info%3Duser_count");
    let refused = get(format!("{resplit}&auth_signature={signature}")).await;
    let reason = refused.assert_error(400);
    assert!(reason.contains("split"), "{reason}");
}

/// At shutdown every Pusher socket is told `pusher:error` 4200 and closed with 4200, whether or
/// not it follows a channel: the shutdown reaches each socket through its outbox, and one that
/// never subscribed follows no stream at all.
#[tokio::test]
async fn shutdown_closes_pusher_sockets_with_and_without_channels_with_4200() {
    let mut s = start().await;
    let (mut bare, _) = connected(&s, KEY).await;
    let (mut subscribed, sid) = connected(&s, KEY).await;
    subscribe(&mut subscribed, &sid, "news").await;
    s.begin_shutdown();
    for ws in [&mut bare, &mut subscribed] {
        let told = tokio::time::timeout(std::time::Duration::from_secs(5), frame(ws))
            .await
            .expect("told within 5 s");
        assert_eq!(told["event"], "pusher:error", "{told}");
        assert_eq!(data(&told)["code"], 4200, "{told}");
        assert_eq!(close_code(ws).await.map(u16::from), Some(4200));
    }
    s.shutdown().await;
}
