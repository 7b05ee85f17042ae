//! `GET /sse`, the WebSocket fallback, over real sockets: the request is written by hand and the
//! chunked `text/event-stream` reply parsed as a browser's EventSource would, so what is checked
//! is what a page gets.

use crate::common;

use std::collections::HashMap;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One event, or one comment, as EventSource parses them.
#[derive(Debug, Default, Clone)]
struct Event {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    comment: Option<String>,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("a data event")).unwrap()
    }
}

/// An open `/sse` response.
struct Sse {
    io: BufReader<TcpStream>,
    headers: Vec<(String, String)>,
    text: String,
}

/// The status, headers and, for a 200, the open stream of `GET target` with `headers`.
async fn open(s: &Server, target: &str, headers: &[(&str, &str)]) -> Result<Sse, Reply> {
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let mut io = BufReader::new(stream);
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    io.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut line = String::new();
    io.read_line(&mut line).await.unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    if status != 200 {
        // Read the rest as an ordinary reply: put the status line back in front.
        let rest = RawReply::new(std::io::Cursor::new(line.into_bytes()).chain(io))
            .read()
            .await;
        return Err(rest);
    }
    let mut headers = Vec::new();
    loop {
        line.clear();
        io.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Ok(Sse {
        io,
        headers,
        text: String::new(),
    })
}

impl Sse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next event or comment; `None` when the response ended.
    async fn next(&mut self) -> Option<Event> {
        tokio::time::timeout(PATIENCE, self.next_inner())
            .await
            .expect("an event in time")
    }

    async fn next_inner(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                return Some(parse(&block));
            }
            // One chunk of the chunked body.
            let mut line = String::new();
            if self.io.read_line(&mut line).await.unwrap() == 0 {
                return None;
            }
            let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            let mut chunk = vec![0; n + 2];
            self.io.read_exact(&mut chunk).await.unwrap();
            if n == 0 {
                assert!(self.text.is_empty(), "stream ended mid-event");
                return None;
            }
            self.text
                .push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        }
    }

    /// The next data event, skipping comments.
    async fn event(&mut self) -> Event {
        loop {
            let e = self.next().await.expect("an event before the end");
            if e.comment.is_none() {
                return e;
            }
        }
    }
}

fn parse(block: &str) -> Event {
    let mut e = Event::default();
    for line in block.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix(':') {
            e.comment = Some(c.trim().to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "id" => e.id = Some(value),
            "event" => e.event = Some(value),
            "data" => {
                e.data = Some(match e.data.take() {
                    Some(d) => d + "\n" + &value,
                    None => value,
                })
            }
            other => panic!("unexpected field {other:?} in {block:?}"),
        }
    }
    e
}

fn sse_target(uid: &str, key: &str, extra: &str) -> String {
    format!("/sse?uid={}&access_key={}{extra}", enc(uid), enc(key))
}

async fn push(s: &Server, uid: &str, contents: &str) {
    let r = s
        .push(uid, &format!(r#"{{"topic":"t","contents":{contents}}}"#))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn sse_streams_the_frames_a_websocket_gets() {
    let s = Server::start(|_| {}).await;
    let key = s.key("both").await;
    let mut sse = open(&s, &sse_target("both", &key, ""), &[])
        .await
        .expect("stream opens");
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-store"));
    // The first bytes come at once, so the page sees the stream open before any message.
    assert!(sse.next().await.unwrap().comment.is_some());
    let mut ws = s.connect_with_key("both", &key).await;
    assert_eq!(s.sockets_of("both").await, 2, "an event stream is a socket");

    let r = s
        .push(
            "both",
            r#"{"topic":"order","contents":{"id":7,"s":"你好"}}"#,
        )
        .await;
    assert_eq!(r.json()["number"], 2);
    let e = sse.event().await;
    assert_eq!(e.data.as_deref(), Some(next_text(&mut ws).await.as_str()));
    assert_eq!(e.id, None, "seed events carry no position");
    assert_eq!(
        e.event, None,
        "plain message events (EventSource's onmessage)"
    );

    // contents with line breaks: several data lines that join back into the same JSON.
    push(&s, "both", "{\n  \"a\": [1,\r\n 2]\n}").await;
    let e = sse.event().await;
    let from_ws = next_text(&mut ws).await;
    assert_ne!(
        e.data.as_deref(),
        Some(from_ws.as_str()),
        "line breaks were split"
    );
    assert_eq!(
        e.json(),
        serde_json::from_str::<Value>(&from_ws).unwrap(),
        "same JSON"
    );
    assert_eq!(e.json()["contents"]["a"][1], 2);
}

#[tokio::test]
async fn resumable_events_carry_positions_and_last_event_id_resumes() {
    let s = Server::start(|_| {}).await;
    let key = s.key("resumer").await;
    let mut sse = open(&s, &sse_target("resumer", &key, "&proto=2"), &[])
        .await
        .unwrap();
    let welcome = sse.event().await;
    assert_eq!(welcome.json()["topic"], "_welcome");
    let streams = welcome.json()["contents"]["streams"].clone();
    // The id is where the page stands: the since JSON, as of the welcome.
    let id: Value = serde_json::from_str(welcome.id.as_deref().unwrap()).unwrap();
    assert_eq!(id, streams);
    for n in 1..=3 {
        push(&s, "resumer", &n.to_string()).await;
    }
    let mut last = None;
    for n in 1..=3 {
        let e = sse.event().await;
        assert_eq!(e.json()["contents"], n);
        assert_eq!(e.json()["stream"], "user");
        let id: HashMap<String, String> = serde_json::from_str(e.id.as_deref().unwrap()).unwrap();
        assert!(id["user"].ends_with(&format!(":{n}")), "{id:?}");
        assert_eq!(id["broadcast"], streams["broadcast"].as_str().unwrap());
        last = e.id;
    }
    drop(sse);
    eventually("the stream to leave", || async {
        s.sockets_of("resumer").await == 0
    })
    .await;
    for n in 4..=5 {
        let r = s
            .push("resumer", &format!(r#"{{"topic":"t","contents":{n}}}"#))
            .await;
        assert_eq!(r.status, 404, "offline, kept for resume");
    }

    // A browser's own reconnect: the same URL (no since), the last id as Last-Event-ID.
    let last = last.unwrap();
    let mut sse = open(
        &s,
        &sse_target("resumer", &key, "&proto=2"),
        &[("Last-Event-ID", &last)],
    )
    .await
    .unwrap();
    assert_eq!(sse.event().await.json()["topic"], "_welcome");
    for n in 4..=5 {
        let e = sse.event().await;
        assert_eq!(
            e.json()["contents"],
            n,
            "missed message {n}, once, in order"
        );
        assert!(e.id.unwrap().contains(&format!(":{n}\"")));
    }
    push(&s, "resumer", "6").await;
    assert_eq!(sse.event().await.json()["contents"], 6);

    // Last-Event-ID stands for since, even over a stale since in the query.
    let stale = serde_json::json!({ "user": streams["user"] }).to_string();
    let mut sse = open(
        &s,
        &sse_target("resumer", &key, &format!("&proto=2&since={}", enc(&stale))),
        &[("Last-Event-ID", &last)],
    )
    .await
    .unwrap();
    assert_eq!(sse.event().await.json()["topic"], "_welcome");
    assert_eq!(sse.event().await.json()["contents"], 4);
}

/// The status and reason of `/ws` and `/sse` for the same request.
async fn both(s: &Server, query: &str, headers: &[(&str, &str)]) -> ((u16, String), (u16, String)) {
    let mut ws_headers = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    ws_headers.extend_from_slice(headers);
    let ws = s
        .http()
        .await
        .request("GET", &format!("/ws?{query}"), &ws_headers, b"")
        .await;
    let ws = (ws.status, ws.assert_error(ws.status));
    let sse = match open(s, &format!("/sse?{query}"), headers).await {
        Ok(_) => panic!("/sse?{query} opened a stream"),
        Err(r) => (r.status, r.assert_error(r.status)),
    };
    (ws, sse)
}

#[tokio::test]
async fn sse_is_refused_exactly_like_ws_before_any_stream() {
    let s = Server::start(|c| {
        c.max_sockets_per_uid = 1;
        c.allowed_origins = Some(vec!["https://shop.example".into()]);
    })
    .await;
    let key = s.key("limited").await;
    let other_key = s.key("someone-else").await;
    let since_bad = format!("uid=limited&access_key={}&proto=2&since=nope", enc(&key));
    // (query, extra headers, the status /ws gives)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case<'_>> = vec![
        ("access_key=x".into(), vec![], 400),
        (format!("uid={}&access_key=x", "a".repeat(300)), vec![], 400),
        ("uid=limited&uid=again&access_key=x".into(), vec![], 400),
        ("uid=limited".into(), vec![], 401),
        ("uid=limited&access_key=v1.1.abc".into(), vec![], 401),
        (
            format!("uid=limited&access_key={}", enc(&other_key)),
            vec![],
            401,
        ),
        (
            format!("uid=limited&access_key={}&proto=3", enc(&key)),
            vec![],
            400,
        ),
        (since_bad.clone(), vec![], 400),
        (
            format!("uid=limited&access_key={}&since=%7B%7D", enc(&key)),
            vec![],
            400,
        ),
        (
            format!("uid=limited&access_key={}", enc(&key)),
            vec![("Origin", "https://evil.example")],
            403,
        ),
    ];
    for (query, headers, status) in &cases {
        let (ws, sse) = both(&s, query, headers).await;
        assert_eq!(ws.0, *status, "/ws?{query}: {}", ws.1);
        assert_eq!(sse, ws, "/sse?{query} refused like /ws");
    }
    // A bad Last-Event-ID is a bad since.
    let target = sse_target("limited", &key, "&proto=2");
    let r = open(&s, &target, &[("Last-Event-ID", "garbage")])
        .await
        .err()
        .expect("refused");
    assert!(r.assert_error(400).contains("since"));
    // Wrong method: 405 with the envelope and Allow.
    let r = s.http().await.request("POST", &target, &[], b"").await;
    r.assert_error(405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));

    // The per-uid limit counts event streams and WebSockets alike, both ways.
    let _sse = open(&s, &sse_target("limited", &key, ""), &[])
        .await
        .expect("first socket");
    let (ws, sse) = both(&s, &format!("uid=limited&access_key={}", enc(&key)), &[]).await;
    assert_eq!(ws.0, 429, "{}", ws.1);
    assert_eq!(sse, ws);
    drop(_sse);
    eventually("the stream to leave", || async {
        s.sockets_of("limited").await == 0
    })
    .await;
    let _ws = s.connect_with_key("limited", &key).await;
    let r = open(&s, &sse_target("limited", &key, ""), &[])
        .await
        .err()
        .expect("over the limit");
    r.assert_error(429);
}

#[tokio::test]
async fn sse_counts_against_max_sockets_and_closes_on_shutdown() {
    let mut s = Server::start(|c| c.max_sockets = 1).await;
    let key = s.key("a").await;
    let mut sse = open(&s, &sse_target("a", &key, "&proto=2"), &[])
        .await
        .unwrap();
    assert_eq!(sse.event().await.json()["topic"], "_welcome");
    let key_b = s.key("b").await;
    let (ws, other) = both(&s, &format!("uid=b&access_key={}", enc(&key_b)), &[]).await;
    assert_eq!(ws.0, 503, "{}", ws.1);
    assert_eq!(other, ws);

    push(&s, "a", "\"before shutdown\"").await;
    assert_eq!(sse.event().await.json()["contents"], "before shutdown");
    let stopping = tokio::spawn(async move {
        s.shutdown().await;
    });
    // The stream says why it ends, with the WebSocket close code, then ends.
    let e = sse.event().await;
    assert_eq!(e.event.as_deref(), Some("close"), "{e:?}");
    assert_eq!(e.json()["code"], 1001);
    assert!(sse.next().await.is_none(), "the response ends");
    stopping.await.unwrap();
}

#[tokio::test]
async fn heartbeats_are_comments_and_a_page_that_leaves_frees_its_place() {
    let s = Server::start(|c| c.heartbeat_interval_secs = 0.3).await;
    let key = s.key("beat").await;
    let mut sse = open(&s, &sse_target("beat", &key, ""), &[]).await.unwrap();
    assert_eq!(
        sse.next().await.unwrap().comment.as_deref(),
        Some("push-serve")
    );
    for _ in 0..2 {
        let e = sse.next().await.unwrap();
        assert_eq!(e.comment.as_deref(), Some("heartbeat"), "{e:?}");
        assert!(e.data.is_none());
    }
    assert_eq!(s.sockets_of("beat").await, 1);
    drop(sse);
    eventually("the stream to leave the hub", || async {
        s.sockets_of("beat").await == 0
    })
    .await;
}

#[tokio::test]
async fn cors_lets_other_origins_read_the_stream_and_head_opens_none() {
    let s = Server::start(|_| {}).await;
    let key = s.key("cors").await;
    let target = sse_target("cors", &key, "");
    let sse = open(&s, &target, &[("Origin", "https://any.example")])
        .await
        .unwrap();
    assert_eq!(sse.header("access-control-allow-origin"), Some("*"));
    drop(sse);
    // Refusals carry it too, so a page's script can read why.
    let r = open(&s, "/sse?uid=cors", &[("Origin", "https://any.example")])
        .await
        .err()
        .unwrap();
    r.assert_error(401);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    // A preflight (a reconnect with Last-Event-ID from another origin).
    let r = s
        .http()
        .await
        .request(
            "OPTIONS",
            &target,
            &[
                ("Origin", "https://any.example"),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "last-event-id"),
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Last-Event-ID")
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    // HEAD runs the checks and opens nothing.
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let mut io = BufReader::new(stream);
    let head = format!(
        "HEAD {target} HTTP/1.1\r\nHost: test\r\n\r\nHEAD /sse?uid=cors HTTP/1.1\r\nHost: test\r\n\r\n"
    );
    io.get_mut().write_all(head.as_bytes()).await.unwrap();
    let mut statuses = Vec::new();
    let mut line = String::new();
    while statuses.len() < 2 {
        line.clear();
        io.read_line(&mut line).await.unwrap();
        if line.starts_with("HTTP/1.1") {
            statuses.push(line.split_whitespace().nth(1).unwrap().to_string());
        }
    }
    assert_eq!(statuses, ["200", "401"]);
    assert_eq!(s.sockets_of("cors").await, 0);

    // With allowed_origins, only those origins, each named back.
    let s = Server::start(|c| c.allowed_origins = Some(vec!["https://shop.example".into()])).await;
    let key = s.key("cors").await;
    let sse = open(
        &s,
        &sse_target("cors", &key, ""),
        &[("Origin", "https://shop.example")],
    )
    .await
    .unwrap();
    assert_eq!(
        sse.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert_eq!(sse.header("vary"), Some("Origin"));
}

/// A room the backend moves the page into (`POST /rooms`) arrives as a `_join` event, and from
/// then on the event ids carry the room's position too, so `Last-Event-ID` resumes it; `_leave`
/// drops it from the ids.
#[tokio::test]
async fn rooms_moved_by_the_backend_show_in_the_event_ids() {
    let s = Server::start(|_| {}).await;
    let key = s.key("mover").await;
    let mut sse = open(&s, &sse_target("mover", &key, "&proto=2"), &[])
        .await
        .unwrap();
    assert_eq!(sse.event().await.json()["topic"], "_welcome");
    move_rooms(&s, r#"{"join":["room:9"]}"#).await;
    let joined = sse.event().await;
    assert_eq!(joined.json()["topic"], "_join");
    let position = joined.json()["contents"]["position"].clone();
    let id: Value = serde_json::from_str(joined.id.as_deref().unwrap()).unwrap();
    assert_eq!(id["topic:room:9"], position);
    let publish = format!("/publish?password={}", enc(&s.password));
    let r = s
        .http()
        .await
        .request(
            "POST",
            &publish,
            &[],
            br#"{"topic":"room:9","contents":"hi"}"#,
        )
        .await;
    assert_eq!(r.json()["number"], 1);
    let e = sse.event().await;
    assert_eq!(e.json()["stream"], "topic:room:9");
    let id: Value = serde_json::from_str(e.id.as_deref().unwrap()).unwrap();
    assert!(id["topic:room:9"].as_str().unwrap().ends_with(":1"), "{id}");
    move_rooms(&s, r#"{"leave":["room:9"]}"#).await;
    let left = sse.event().await;
    assert_eq!(left.json()["topic"], "_leave");
    let id: Value = serde_json::from_str(left.id.as_deref().unwrap()).unwrap();
    assert!(id.get("topic:room:9").is_none(), "{id}");
}

/// Two rooms joined in one move arrive as two `_join` events, each with the ids as they stand
/// after it: the first one's id does not yet name the second room.
#[tokio::test]
async fn each_join_of_one_move_carries_its_own_event_id() {
    let s = Server::start(|_| {}).await;
    let key = s.key("mover").await;
    let mut sse = open(&s, &sse_target("mover", &key, "&proto=2"), &[])
        .await
        .unwrap();
    assert_eq!(sse.event().await.json()["topic"], "_welcome");
    move_rooms(&s, r#"{"join":["room:a","room:b"]}"#).await;
    let first = sse.event().await;
    let second = sse.event().await;
    let stream = |e: &Value| e["contents"]["stream"].as_str().unwrap().to_owned();
    let (first_room, second_room) = (stream(&first.json()), stream(&second.json()));
    assert_ne!(first_room, second_room);
    let id: Value = serde_json::from_str(first.id.as_deref().unwrap()).unwrap();
    assert!(id.get(&first_room).is_some(), "{id}");
    assert!(id.get(&second_room).is_none(), "{id}");
    let id: Value = serde_json::from_str(second.id.as_deref().unwrap()).unwrap();
    assert!(
        id.get(&first_room).is_some() && id.get(&second_room).is_some(),
        "{id}"
    );
}

async fn move_rooms(s: &Server, body: &str) {
    let target = format!("/rooms?uid=mover&password={}", enc(&s.password));
    let r = s
        .http()
        .await
        .request("POST", &target, &[], body.as_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A data pool among an SSE page's topics, or joined later: its snapshot comes as an event
/// whose id carries the position the document is exact at, so a resume starts after it.
#[tokio::test]
async fn data_pool_snapshots_come_as_events_and_move_the_event_ids() {
    let s = Server::start(|_| {}).await;
    pool(&s, "PUT", "score", r#"{"home":1}"#).await;
    pool(&s, "PUT", "table", "[]").await;
    let r = s
        .http()
        .await
        .get(&format!(
            "/access?uid=mover&topics=score&password={}",
            enc(&s.password)
        ))
        .await;
    let key = r.json()["contents"].as_str().unwrap().to_string();
    let mut sse = open(&s, &sse_target("mover", &key, "&proto=2"), &[])
        .await
        .unwrap();
    assert_eq!(sse.event().await.json()["topic"], "_welcome");
    let snapshot = sse.event().await;
    let frame = snapshot.json();
    assert_eq!(frame["topic"], "score:snapshot");
    assert_eq!(frame["contents"], serde_json::json!({"home": 1}));
    let id: Value = serde_json::from_str(snapshot.id.as_deref().unwrap()).unwrap();
    let at = frame["number"].as_u64().unwrap();
    assert!(
        id["topic:score"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{at}")),
        "{id}"
    );

    move_rooms(&s, r#"{"join":["table"]}"#).await;
    assert_eq!(sse.event().await.json()["topic"], "_join");
    let snapshot = sse.event().await;
    assert_eq!(snapshot.json()["topic"], "table:snapshot");
    assert_eq!(snapshot.json()["contents"], serde_json::json!([]));
    let id: Value = serde_json::from_str(snapshot.id.as_deref().unwrap()).unwrap();
    assert!(id["topic:table"].as_str().unwrap().ends_with(":1"), "{id}");

    pool(&s, "PUT", "score", r#"{"home":2}"#).await;
    let update = sse.event().await.json();
    assert_eq!(
        (update["topic"].as_str(), update["number"].as_u64()),
        (Some("score:update"), Some(at + 1))
    );
}

async fn pool(s: &Server, method: &str, name: &str, body: &str) {
    let target = format!("/pool/{name}?password={}", enc(&s.password));
    let r = s
        .http()
        .await
        .request(method, &target, &[], body.as_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A page reading as fast as events come gets them all, however many bytes pass over the
/// stream's life: 12 MB in bursts of 8 KB pushes (a stream was once closed with 4008 after
/// about 4.4 MB, its queue's byte count never given back).
#[tokio::test]
async fn a_fast_reader_gets_megabytes_in_bursts_without_being_called_slow() {
    let s = Server::start(|_| {}).await;
    let key = s.key("reader").await;
    let mut sse = open(&s, &sse_target("reader", &key, ""), &[])
        .await
        .expect("stream opens");
    let contents = format!("\"{}\"", "x".repeat(8 * 1024));
    let (bursts, per_burst) = (150, 10);
    let mut http = s.http().await;
    for burst in 0..bursts {
        for _ in 0..per_burst {
            let r = http
                .push(
                    "reader",
                    &s.password,
                    &format!(r#"{{"topic":"b{burst}","contents":{contents}}}"#),
                )
                .await;
            assert_eq!(r.status, 200, "push in burst {burst}: {}", r.text());
        }
        for _ in 0..per_burst {
            let e = sse.event().await;
            assert_eq!(
                e.event, None,
                "a close event in burst {burst}: {:?}",
                e.data
            );
            assert_eq!(e.json()["topic"], format!("b{burst}"));
        }
    }
}
