//! A config reload applied to a running server (what SIGHUP does to the binary:
//! `tests/it/binary.rs` sends the signal; here the same reload is made in process, so each setting
//! can be followed on real sockets): what changes live does, on sockets already open too where
//! it says so, and an invalid config changes nothing.

use crate::common;

use common::*;
use futures_util::StreamExt;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

/// A socket opened while pings came once an hour gets them at the new period after a reload,
/// without reconnecting.
#[tokio::test]
async fn a_new_heartbeat_reaches_sockets_already_open() {
    let s = Server::start(|c| c.heartbeat_interval_secs = 3600.0).await;
    let mut ws = s.connect("beat").await;
    let outcome = s.reload(|c| c.heartbeat_interval_secs = 0.2).await.unwrap();
    assert_eq!(outcome.applied, ["heartbeat_interval_secs"]);
    let ping = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_))) => return,
                Some(Ok(_)) => continue,
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "no ping at the new period");
    // Answered (tungstenite pongs while reading), the socket stays open and gets pushes.
    assert_eq!(
        s.push("beat", r#"{"topic":"t","contents":1}"#).await.status,
        200
    );
    next_text(&mut ws).await;
}

/// An event stream opened before the reload gets its comment heartbeats at the new period.
#[tokio::test]
async fn a_new_heartbeat_reaches_event_streams_already_open() {
    let s = Server::start(|c| c.heartbeat_interval_secs = 3600.0).await;
    let key = s.key("beat").await;
    let mut http = s.http().await;
    let target = format!("/sse?uid=beat&access_key={}", enc(&key));
    http.send("GET", &target, &[("Accept", "text/event-stream")], b"")
        .await;
    assert_eq!(http.read_head().await.0, 200);
    // The stream's first comment comes at once; wait for it before reloading.
    let mut line = String::new();
    let mut next_line = async |line: &mut String| {
        line.clear();
        tokio::time::timeout(PATIENCE, http.reader().read_line(line))
            .await
            .expect("a line in time")
            .unwrap();
    };
    while !line.starts_with(": push-serve") {
        next_line(&mut line).await;
    }
    s.reload(|c| c.heartbeat_interval_secs = 0.2).await.unwrap();
    while !line.starts_with(": heartbeat") {
        next_line(&mut line).await;
    }
}

/// Limits apply to what comes next: a lowered `max_sockets` refuses new sockets and cuts none,
/// a raised one lets them in again; body sizes, uids per push and topics per key likewise.
#[tokio::test]
async fn lowered_limits_refuse_what_comes_next_and_cut_nothing() {
    let s = Server::start(|_| {}).await;
    let mut a = s.connect("a").await;
    let mut b = s.connect("b").await;
    s.reload(|c| c.max_sockets = 1).await.unwrap();
    let key = s.key("c").await;
    assert_eq!(try_raw_upgrade(&s, "c", &key, None).await.0, 503);
    for (uid, ws) in [("a", &mut a), ("b", &mut b)] {
        assert_eq!(
            s.push(uid, r#"{"topic":"t","contents":1}"#).await.status,
            200
        );
        next_text(ws).await;
    }
    s.reload(|c| c.max_sockets = 4).await.unwrap();
    let _c = s.connect_with_key("c", &key).await;

    s.reload(|c| c.max_sockets_per_uid = 1).await.unwrap();
    let key = s.key("a").await;
    assert_eq!(try_raw_upgrade(&s, "a", &key, None).await.0, 429);

    s.reload(|c| {
        c.max_body_bytes = 64;
        c.max_uids_per_push = 1;
        c.max_topics_per_key = 1;
    })
    .await
    .unwrap();
    let big = format!(r#"{{"topic":"t","contents":"{}"}}"#, "x".repeat(100));
    s.push("a", &big).await.assert_error(413);
    s.push("a", r#"{"topic":"t","contents":1,"uids":["b"]}"#)
        .await
        .assert_error(400);
    let mut http = s.http().await;
    http.get(&format!(
        "/access?uid=a&topics=x,y&password={}",
        enc(&s.password)
    ))
    .await
    .assert_error(400);
}

/// `allowed_origins` and the password lockout change for the next request.
#[tokio::test]
async fn origins_and_the_lockout_change_for_the_next_request() {
    let s = Server::start(|_| {}).await;
    let key = s.key("o").await;
    let target = format!("/ws?uid=o&access_key={}", enc(&key));
    let mut headers = UPGRADE_HEADERS.to_vec();
    headers.push(("Origin", "https://evil.example"));
    s.reload(|c| c.allowed_origins = Some(vec!["https://shop.example".into()]))
        .await
        .unwrap();
    let mut http = s.http().await;
    http.request("GET", &target, &headers, b"")
        .await
        .assert_error(403);
    s.reload(|c| c.allowed_origins = None).await.unwrap();
    assert_eq!(
        s.http()
            .await
            .request("GET", &target, &headers, b"")
            .await
            .status,
        101
    );

    s.reload(|c| c.auth_failures_per_minute = 1).await.unwrap();
    let mut http = s.http().await;
    http.get("/stats?password=wrong").await.assert_error(401);
    http.get(&format!("/stats?password={}", enc(&s.password)))
        .await
        .assert_error(429);
}

/// An invalid config is refused whole: the reload says why, and nothing of it applies.
#[tokio::test]
async fn an_invalid_config_changes_nothing() {
    let s = Server::start(|_| {}).await;
    let err = s
        .reload(|c| {
            c.max_sockets = 1;
            c.heartbeat_interval_secs = 0.0;
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("heartbeat_interval_secs"), "{err}");
    let _a = s.connect("a").await;
    let _b = s.connect("b").await;
}

/// Settings that need a restart are reported as such and keep their running value.
#[tokio::test]
async fn settings_that_need_a_restart_are_reported_and_kept() {
    let s = Server::start(|_| {}).await;
    let outcome = s
        .reload(|c| {
            c.send_queue_frames = 1;
            c.max_sockets_per_uid = 2;
        })
        .await
        .unwrap();
    assert_eq!(outcome.applied, ["max_sockets_per_uid"]);
    assert_eq!(outcome.need_restart, ["send_queue_frames"]);
    // The live one applied; the other is reported again by the next reload, still pending.
    let key = s.key("q").await;
    let _a = s.connect_with_key("q", &key).await;
    let _b = s.connect_with_key("q", &key).await;
    assert_eq!(try_raw_upgrade(&s, "q", &key, None).await.0, 429);
    let again = s.reload(|_| {}).await.unwrap();
    assert_eq!(again.need_restart, ["send_queue_frames"]);
    assert!(again.applied.is_empty());
}
