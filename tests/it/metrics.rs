//! What an operator's tools see, over real sockets: `/health` without a password, `/ready`
//! turning 503 as soon as a shutdown begins, `/metrics` behind the password on the public port
//! and open on `metrics_addr`, and Prometheus figures that match exactly what the test did.

use crate::common;

use std::collections::HashMap;

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio::io::AsyncReadExt;

/// `GET /metrics` on the public port with the password as a Bearer token.
async fn scrape(s: &Server) -> Metrics {
    let bearer = format!("Bearer {}", s.password);
    let r = s
        .http()
        .await
        .request("GET", "/metrics", &[("Authorization", &bearer)], b"")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    Metrics::parse(&r.text())
}

/// `GET /metrics` on the password-free listener.
async fn scrape_open(s: &Server) -> Metrics {
    let r = Http::connect(s.metrics_addr.expect("a metrics listener"))
        .await
        .get("/metrics")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    Metrics::parse(&r.text())
}

/// Samples of one exposition, by their full name with labels as printed.
struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').expect("name value");
                (name.to_string(), value.parse().expect("a number"))
            })
            .collect();
        Metrics(samples)
    }

    /// The sample's value; 0 if it was never exported (nothing happened).
    fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }
}

#[tokio::test]
async fn health_and_ready_answer_without_a_password() {
    let s = Server::start(|_| {}).await;
    let r = s.http().await.get("/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"topic": "health", "number": 1, "contents": "ok"})
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = s.http().await.get("/ready").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"topic": "ready", "number": 1, "contents": "ready"})
    );
    let r = s.http().await.request("POST", "/health", &[], b"").await;
    r.assert_error(405);
}

#[tokio::test]
async fn metrics_need_the_password_on_the_public_port() {
    let s = Server::start(|_| {}).await;
    let r = s.http().await.get("/metrics").await;
    r.assert_error(401);
    let r = s
        .http()
        .await
        .request("GET", "/metrics", &[("Authorization", "Bearer nope")], b"")
        .await;
    r.assert_error(401);

    let bearer = format!("Bearer {}", s.password);
    let r = s
        .http()
        .await
        .request("GET", "/metrics", &[("Authorization", &bearer)], b"")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    assert!(text.contains("# TYPE push_serve_sockets gauge"), "{text}");
    assert!(text.contains("# HELP push_serve_socket_connects_total"));
    assert!(text.contains(&format!(
        "push_serve_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    // The query's password works as on every other backend endpoint.
    let r = s
        .http()
        .await
        .get(&format!("/metrics?password={}", enc(&s.password)))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn metrics_count_what_clients_did() {
    let s = Server::start(|c| c.send_queue_frames = 4).await;
    let mut tab1 = s.connect("alice").await;
    let mut tab2 = s.connect("alice").await;
    let mut http = s.http().await;

    // One push reaching both tabs, one to nobody, one publish to a topic nobody follows.
    let r = http
        .push("alice", &s.password, r#"{"topic":"t","contents":1}"#)
        .await;
    assert_eq!(r.json()["number"], 2);
    next_text(&mut tab1).await;
    next_text(&mut tab2).await;
    let r = http
        .push("nobody", &s.password, r#"{"topic":"t","contents":1}"#)
        .await;
    assert_eq!(r.status, 404);
    let target = format!("/publish?password={}", enc(&s.password));
    let r = http
        .request("POST", &target, &[], br#"{"topic":"news","contents":1}"#)
        .await;
    assert_eq!(r.status, 200);

    // Two wrong passwords and one forged access key.
    for _ in 0..2 {
        let r = http
            .push("alice", "wrong", r#"{"topic":"t","contents":1}"#)
            .await;
        r.assert_error(401);
    }
    let r = http
        .request(
            "GET",
            "/ws?uid=alice&access_key=v1.1.forged",
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            b"",
        )
        .await;
    r.assert_error(401);

    // The first tab closes politely (counted as 1000). Whether the server's echo arrives is
    // not this test's business (issue 11, item 10), so the connection is just drained.
    tab1.close(None).await.unwrap();
    tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(_)) = tab1.next().await {}
    })
    .await
    .expect("the server ends the connection");

    // A client that stops reading is evicted as a slow reader (4008).
    let mut slow = silent_client(&s, "slow", Some(4096)).await;
    let big = format!(r#"{{"topic":"big","contents":"{}"}}"#, "x".repeat(64 << 10));
    let mut reached = 0;
    let mut pushes = 0;
    loop {
        let r = http.push("slow", &s.password, &big).await;
        pushes += 1;
        if r.status == 404 {
            break;
        }
        assert_eq!(r.status, 200);
        reached += 1;
        assert!(pushes < 2000, "the stalled socket was never evicted");
    }
    // The server gives up on the close handshake with a client that does not read.
    let mut buf = vec![0u8; 64 << 10];
    while tokio::time::timeout(PATIENCE, slow.read(&mut buf))
        .await
        .expect("server closes in time")
        .unwrap()
        > 0
    {}

    // Socket tasks count their end as they finish; wait for both.
    eventually("both closes to be counted", || async {
        let m = scrape(&s).await;
        m.get(r#"push_serve_socket_closes_total{transport="ws",code="4008"}"#) >= 1.0
            && m.get(r#"push_serve_socket_closes_total{transport="ws",code="1000"}"#) >= 1.0
    })
    .await;
    let m = scrape(&s).await;

    let expect = [
        ("push_serve_sockets", 1.0),
        (r#"push_serve_socket_connects_total{transport="ws"}"#, 3.0),
        (
            r#"push_serve_socket_closes_total{transport="ws",code="1000"}"#,
            1.0,
        ),
        (
            r#"push_serve_socket_closes_total{transport="ws",code="4008"}"#,
            1.0,
        ),
        (
            r#"push_serve_socket_closes_total{transport="ws",code="lost"}"#,
            0.0,
        ),
        ("push_serve_slow_reader_evictions_total", 1.0),
        // Frames queued: 2 for alice's tabs, then each push the slow socket took.
        ("push_serve_deliveries_total", 2.0 + f64::from(reached)),
        (
            r#"push_serve_messages_total{endpoint="push"}"#,
            2.0 + f64::from(pushes),
        ),
        (r#"push_serve_messages_total{endpoint="publish"}"#, 1.0),
        (r#"push_serve_messages_total{endpoint="broadcast"}"#, 0.0),
        (
            r#"push_serve_auth_failures_total{credential="password"}"#,
            2.0,
        ),
        (
            r#"push_serve_auth_failures_total{credential="access_key"}"#,
            1.0,
        ),
        ("push_serve_auth_lockouts_total", 0.0),
        (
            r#"push_serve_http_requests_total{endpoint="push",status="200"}"#,
            1.0 + f64::from(reached),
        ),
        (
            r#"push_serve_http_requests_total{endpoint="push",status="404"}"#,
            2.0,
        ),
        (
            r#"push_serve_http_requests_total{endpoint="push",status="401"}"#,
            2.0,
        ),
        (
            r#"push_serve_http_requests_total{endpoint="publish",status="200"}"#,
            1.0,
        ),
        (
            r#"push_serve_http_requests_total{endpoint="ws",status="101"}"#,
            3.0,
        ),
        (
            r#"push_serve_http_requests_total{endpoint="ws",status="401"}"#,
            1.0,
        ),
        (
            r#"push_serve_http_requests_total{endpoint="access",status="200"}"#,
            3.0,
        ),
        // Every publish that got past its checks was timed, per stage.
        (
            r#"push_serve_publish_seconds_count{endpoint="push",stage="total"}"#,
            2.0 + f64::from(pushes),
        ),
        (
            r#"push_serve_publish_seconds_count{endpoint="push",stage="queue"}"#,
            2.0 + f64::from(pushes),
        ),
        (
            r#"push_serve_publish_seconds_count{endpoint="publish",stage="read"}"#,
            1.0,
        ),
        ("push_serve_broker_ready", 1.0),
    ];
    for (name, value) in expect {
        assert_eq!(m.get(name), value, "{name}");
    }
    // History keeps the pushes to offline and evicted uids: nonzero bytes.
    assert!(m.get("push_serve_history_bytes") > 0.0);
    // A histogram's buckets are cumulative up to +Inf, which holds every observation.
    assert_eq!(
        m.get(r#"push_serve_publish_seconds_bucket{endpoint="push",stage="total",le="+Inf"}"#),
        2.0 + f64::from(pushes)
    );
    drop(tab2);
}

#[tokio::test]
async fn lockouts_are_counted_and_metrics_addr_needs_no_password() {
    let s = Server::start_with_metrics_listener(|c| c.auth_failures_per_minute = 3).await;
    let mut http = s.http().await;
    for _ in 0..3 {
        http.push("a", "wrong", r#"{"topic":"t","contents":1}"#)
            .await
            .assert_error(401);
    }
    // Locked out now, even with the right password; the public /metrics is locked out too.
    http.push("a", &s.password, r#"{"topic":"t","contents":1}"#)
        .await
        .assert_error(429);
    let bearer = format!("Bearer {}", s.password);
    http.request("GET", "/metrics", &[("Authorization", &bearer)], b"")
        .await
        .assert_error(429);

    // The separate listener asks for nothing.
    let m = scrape_open(&s).await;
    assert_eq!(
        m.get(r#"push_serve_auth_failures_total{credential="password"}"#),
        3.0
    );
    assert_eq!(m.get("push_serve_auth_lockouts_total"), 1.0);
    assert_eq!(
        m.get(r#"push_serve_http_requests_total{endpoint="push",status="429"}"#),
        1.0
    );
    assert_eq!(
        m.get(r#"push_serve_http_requests_total{endpoint="metrics",status="429"}"#),
        1.0
    );
    // It serves /metrics, /health and /ready only: nothing there can push.
    let metrics_addr = s.metrics_addr.unwrap();
    let mut open = Http::connect(metrics_addr).await;
    assert_eq!(open.get("/health").await.status, 200);
    assert_eq!(open.get("/ready").await.status, 200);
    open.push("a", &s.password, r#"{"topic":"t","contents":1}"#)
        .await
        .assert_error(404);
    open.get("/admin").await.assert_error(404);
}

#[tokio::test]
async fn ready_turns_503_as_soon_as_shutdown_begins() {
    let mut s = Server::start_with_metrics_listener(|_| {}).await;
    let metrics_addr = s.metrics_addr.unwrap();
    assert_eq!(s.http().await.get("/ready").await.status, 200);
    // A page that never answers the close handshake keeps the shutdown going for a moment
    // (the server waits up to 2 s for its close), long enough to ask.
    let _lingering = s.connect("lingering").await;
    s.begin_shutdown();
    eventually("/ready to say 503", || async {
        Http::connect(metrics_addr).await.get("/ready").await.status == 503
    })
    .await;
    let r = Http::connect(metrics_addr).await.get("/ready").await;
    assert_eq!(r.assert_error(503), "server is shutting down");
    // Still alive, though: liveness is not readiness.
    assert_eq!(
        Http::connect(metrics_addr)
            .await
            .get("/health")
            .await
            .status,
        200
    );
    s.shutdown().await;
}

/// An event stream is a socket in the metrics too (SSE counted no connect and no close), and
/// every close code of the server's list has its label (1007 and 4011 were missing).
#[tokio::test]
async fn event_streams_and_every_close_code_are_counted() {
    let s = Server::start(|_| {}).await;
    let key = s.key("streamer").await;
    let mut http = s.http().await;
    let target = format!("/sse?uid=streamer&access_key={}", enc(&key));
    http.send("GET", &target, &[("Accept", "text/event-stream")], b"")
        .await;
    assert_eq!(http.read_head().await.0, 200);
    let m = scrape(&s).await;
    assert_eq!(
        m.get(r#"push_serve_socket_connects_total{transport="sse"}"#),
        1.0
    );
    assert_eq!(
        m.get(r#"push_serve_socket_connects_total{transport="ws"}"#),
        0.0
    );
    for code in [
        "1000", "1001", "1002", "1007", "1009", "4000", "4008", "4010", "4011", "other", "lost",
    ] {
        let name = format!(r#"push_serve_socket_closes_total{{transport="sse",code="{code}"}}"#);
        assert_eq!(m.0.get(&name), Some(&0.0), "{name} is exported, at 0");
    }
    // The backend disconnects the uid: the stream ends with 4011, counted.
    let r = s
        .http()
        .await
        .request(
            "POST",
            &format!("/disconnect?uid=streamer&password={}", enc(&s.password)),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    eventually("the stream's close to be counted", || async {
        scrape(&s)
            .await
            .get(r#"push_serve_socket_closes_total{transport="sse",code="4011"}"#)
            == 1.0
    })
    .await;
}
