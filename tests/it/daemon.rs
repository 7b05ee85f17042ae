//! push-serve's own guarantees beyond the wire contract, with short configured intervals:
//! key lifetime and restarts, heartbeat, slow readers, oversized client frames, shutdown.

use crate::common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

fn status_of(
    result: Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error>,
) -> u16 {
    match result {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("handshake failed without a status: {e}"),
    }
}

#[tokio::test]
async fn key_keeps_working_across_a_restart() {
    let mut first = Server::start(|_| {}).await;
    let key = first.key("alice").await;
    first.shutdown().await;

    let second = Server::start(|_| {}).await;
    let mut ws = second.connect_with_key("alice", &key).await;
    assert_eq!(
        second
            .push("alice", r#"{"topic":"t","contents":1}"#)
            .await
            .status,
        200
    );
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"topic":"t","number":1,"contents":1}"#
    );

    // A server with another secret cannot be fooled by it.
    let other = Server::start(|c| c.secret = Some("rotated".into())).await;
    assert_eq!(
        status_of(tokio_tungstenite::connect_async(other.ws_url("alice", &key)).await),
        401
    );
}

#[tokio::test]
async fn expired_key_is_refused_but_open_socket_stays() {
    let s = Server::start(|c| c.access_key_ttl_secs = 1).await;
    let key = s.key("alice").await;
    let mut open = s.connect_with_key("alice", &key).await;
    // The key opens sockets until its expiry (a second from issue), then is refused: try
    // until it is, each try an upgrade that either opens (and is dropped) or is refused.
    let refused = std::sync::Mutex::new(None);
    eventually("the key to expire", || {
        let url = s.ws_url("alice", &key);
        let refused = &refused;
        async move {
            match tokio_tungstenite::connect_async(url).await {
                Ok(_) => false,
                Err(e) => {
                    *refused.lock().unwrap() = Some(e);
                    true
                }
            }
        }
    })
    .await;
    match refused.into_inner().unwrap() {
        Some(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap()).into_owned();
            assert!(body.contains("expired"), "{body}");
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert_eq!(
        s.push("alice", r#"{"topic":"t","contents":1}"#)
            .await
            .json()["number"],
        1
    );
    assert_eq!(
        next_text(&mut open).await,
        r#"{"topic":"t","number":1,"contents":1}"#
    );
}

#[tokio::test]
async fn duplicated_query_parameter_is_a_400() {
    let s = Server::start(|_| {}).await;
    let r = s
        .http()
        .await
        .get(&format!(
            "/access?uid=a&password={}&uid=b",
            enc(&s.password)
        ))
        .await;
    assert!(r.assert_error(400).contains("uid"));
    let long = "u".repeat(300);
    let r = s
        .http()
        .await
        .get(&format!("/access?uid={long}&password={}", enc(&s.password)))
        .await;
    r.assert_error(400);
}

#[tokio::test]
async fn heartbeat_drops_a_silent_socket_and_keeps_a_live_one() {
    let s = Server::start(|c| c.heartbeat_interval_secs = 0.2).await;
    let mut live = s.connect("alive").await;
    let _silent = silent_client(&s, "frozen", None).await;
    assert_eq!(
        s.push("frozen", r#"{"topic":"t","contents":1}"#)
            .await
            .status,
        200
    );

    // tungstenite answers pings while we read, so `live` stays; `frozen` never answers.
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        while pings < 5 {
            match live.next().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(_)) => {}
                other => panic!("live socket ended: {other:?}"),
            }
        }
        live
    });
    eventually("the frozen socket to be dropped", || async {
        s.push("frozen", r#"{"topic":"t","contents":1}"#)
            .await
            .status
            == 404
    })
    .await;
    let mut live = tokio::time::timeout(PATIENCE, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.push("alive", r#"{"topic":"t","contents":2}"#)
            .await
            .json()["number"],
        1
    );
    assert_eq!(
        next_text(&mut live).await,
        r#"{"topic":"t","number":1,"contents":2}"#
    );
}

#[tokio::test]
async fn heartbeat_timeout_closes_with_4000() {
    let s = Server::start(|c| c.heartbeat_interval_secs = 0.2).await;
    // A raw client reads the server's frames without answering its pings (a client library
    // would answer them as it reads): the server gives up and says so.
    let mut ws = common::raw_ws::RawWs::open(&s, "sleepy").await;
    assert_eq!(
        CloseCode::from(ws.close_code().await),
        CloseCode::from(4000)
    );
}

/// 256 queued frames of 64 KiB would be 16 MiB held for one stalled page; the byte bound
/// evicts it long before the frame bound would.
#[tokio::test]
async fn a_slow_reader_of_large_pushes_is_bounded_in_bytes() {
    let s = Server::start(|c| c.send_queue_bytes = 256 << 10).await;
    let _slow = silent_client(&s, "slow", Some(4096)).await;
    let big = format!(r#"{{"topic":"big","contents":"{}"}}"#, "x".repeat(64 << 10));
    let mut http = s.http().await;
    let mut pushes = 0;
    while http.push("slow", &s.password, &big).await.status == 200 {
        pushes += 1;
        assert!(
            pushes < 100,
            "still queueing after {pushes} pushes of 64 KiB (256 frames allowed)"
        );
    }
    // Kernel buffers hold some; the queue itself held at most 256 KiB.
    assert!(pushes >= 4, "evicted after only {pushes} pushes");
}

#[tokio::test]
async fn slow_reader_is_closed_with_4008_without_holding_up_others() {
    let s = Server::start(|c| c.send_queue_frames = 4).await;
    let mut fast = s.connect("fast").await;
    // A tiny receive buffer stops the kernel from absorbing megabytes for the stalled client.
    let mut slow = silent_client(&s, "slow", Some(4096)).await;
    let big = format!(r#"{{"topic":"big","contents":"{}"}}"#, "x".repeat(64 << 10));
    let mut http = s.http().await;
    let mut evicted = false;
    for i in 0..2000 {
        let r = http.push("slow", &s.password, &big).await;
        // The fast reader is served in between, every time.
        let r2 = http
            .push(
                "fast",
                &s.password,
                &format!(r#"{{"topic":"f","contents":{i}}}"#),
            )
            .await;
        assert_eq!(r2.json()["number"], 1);
        assert_eq!(
            next_text(&mut fast).await,
            format!(r#"{{"topic":"f","number":1,"contents":{i}}}"#)
        );
        if r.status == 404 {
            evicted = true;
            break;
        }
    }
    assert!(evicted, "the stalled socket was never evicted");
    // Now read what the server had written: frames, then a close frame with 4008.
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let n = tokio::time::timeout_at(deadline, slow.read(&mut buf))
            .await
            .expect("server closes in time")
            .unwrap();
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    // A close frame is 0x88, length, then the code big-endian: 4008 = 0x0FA8.
    let close = all
        .windows(4)
        .rposition(|w| w[0] == 0x88 && w[2] == 0x0F && w[3] == 0xA8);
    assert!(close.is_some(), "no 4008 close frame in the last bytes");
}

#[tokio::test]
async fn oversized_client_message_closes_only_that_socket() {
    let s = Server::start(|c| c.max_client_frame_bytes = 1024).await;
    let mut big_mouth = s.connect("alice").await;
    let mut other_tab = s.connect("alice").await;
    big_mouth
        .send(Message::text("y".repeat(4096)))
        .await
        .unwrap();
    assert_eq!(close_code(&mut big_mouth).await, Some(CloseCode::Size));
    eventually("one tab left", || async {
        s.push("alice", r#"{"topic":"t","contents":0}"#)
            .await
            .json()["number"]
            == 1
    })
    .await;
    loop {
        if next_text(&mut other_tab).await == r#"{"topic":"t","number":1,"contents":0}"# {
            break;
        }
    }
}

#[tokio::test]
async fn shutdown_flushes_queued_pushes_then_closes_with_1001() {
    let mut s = Server::start(|_| {}).await;
    let mut tabs = [
        s.connect("a").await,
        s.connect("a").await,
        s.connect("b").await,
    ];
    let mut http = s.http().await;
    for i in 0..50 {
        assert_eq!(
            http.push(
                "a",
                &s.password,
                &format!(r#"{{"topic":"t","contents":{i}}}"#)
            )
            .await
            .status,
            200
        );
    }
    s.shutdown().await;
    for (n, tab) in tabs.iter_mut().enumerate() {
        if n < 2 {
            for i in 0..50 {
                assert_eq!(
                    next_text(tab).await,
                    format!(r#"{{"topic":"t","number":1,"contents":{i}}}"#)
                );
            }
        }
        assert_eq!(close_code(tab).await, Some(CloseCode::Away));
    }
    // The listener is gone.
    assert!(TcpStream::connect(s.addr).await.is_err());
}

/// A client that stops reading in the middle of a large write, with nothing pushed after it:
/// no queue ever overflows, so eviction never fires; the stuck write itself must time out.
#[tokio::test]
async fn stuck_write_is_dropped_even_when_nothing_more_is_pushed() {
    let s = Server::start(|c| c.heartbeat_interval_secs = 0.3).await;
    let _stalled = silent_client(&s, "stalled", Some(4096)).await;
    let big = format!(
        r#"{{"topic":"big","contents":"{}"}}"#,
        "x".repeat(900 << 10)
    );
    let mut http = s.http().await;
    // Enough to fill both kernels' buffers (a few MB on loopback), far below the queue limit.
    for _ in 0..8 {
        assert_eq!(http.push("stalled", &s.password, &big).await.status, 200);
    }
    // Asked without pushing (a push would eventually overflow the queue and evict it).
    eventually("the stalled socket to be dropped", || async {
        let r = s
            .http()
            .await
            .get(&format!(
                "/online?uid=stalled&password={}",
                enc(&s.password)
            ))
            .await;
        r.json()["number"] == 0
    })
    .await;
}
