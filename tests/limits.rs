//! Abuse limits and hostile clients: password brute force, socket caps, cross-site socket
//! hijacking, slowloris, half-closed sockets, ping floods. Each refusal is clear, and nobody else
//! is disturbed.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

#[tokio::test]
async fn password_guessing_is_locked_out_per_address() {
    let s = Server::start(|c| {
        c.auth_failures_per_minute = 3;
        c.real_ip_header = Some("X-Forwarded-For".into());
    })
    .await;
    let mut http = s.http().await;
    let attacker = [("X-Forwarded-For", "203.0.113.9")];
    for guess in ["a", "b", "c"] {
        http.request(
            "GET",
            &format!("/access?uid=u&password={guess}"),
            &attacker,
            b"",
        )
        .await
        .assert_error(401);
    }
    // Locked: even the right password is refused now, on every endpoint.
    let right = format!("/access?uid=u&password={}", enc(&s.password));
    let r = http.request("GET", &right, &attacker, b"").await;
    assert!(r
        .assert_error(429)
        .contains("too many failed password attempts"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let push = format!("/push?uid=u&password={}", enc(&s.password));
    http.request("POST", &push, &attacker, br#"{"topic":"t","contents":1}"#)
        .await
        .assert_error(429);
    // Another address (the real backend) is not affected.
    let backend = [("X-Forwarded-For", "198.51.100.7")];
    assert_eq!(http.request("GET", &right, &backend, b"").await.status, 200);
}

/// Behind a proxy that appends to X-Forwarded-For, a guesser cannot choose its address by
/// writing its own first entry: the lockout follows the entry the proxy wrote.
#[tokio::test]
async fn a_spoofed_forwarded_for_entry_does_not_dodge_the_lockout() {
    let s = Server::start(|c| {
        c.auth_failures_per_minute = 3;
        c.real_ip_header = Some("X-Forwarded-For".into());
        c.trusted_proxies = 1;
    })
    .await;
    let mut http = s.http().await;
    for i in 0..3 {
        let spoofed = format!("198.51.100.{i}, 203.0.113.9");
        http.request(
            "GET",
            "/access?uid=u&password=guess",
            &[("X-Forwarded-For", &spoofed)],
            b"",
        )
        .await
        .assert_error(401);
    }
    let right = format!("/access?uid=u&password={}", enc(&s.password));
    let fresh_spoof = [("X-Forwarded-For", "192.0.2.200, 203.0.113.9")];
    http.request("GET", &right, &fresh_spoof, b"")
        .await
        .assert_error(429);
    // The backend behind the same proxy, at its own address, is not affected.
    let backend = [("X-Forwarded-For", "203.0.113.9, 198.51.100.7")];
    assert_eq!(http.request("GET", &right, &backend, b"").await.status, 200);
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_case_insensitively() {
    let s = Server::start(|_| {}).await;
    let mut http = s.http().await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {}", s.password);
        let r = http
            .request("GET", "/access?uid=u", &[("Authorization", &auth)], b"")
            .await;
        assert_eq!(r.status, 200, "{scheme}: {:?}", r.text());
    }
    http.request(
        "GET",
        "/access?uid=u",
        &[("Authorization", &format!("Basic {}", s.password))],
        b"",
    )
    .await
    .assert_error(401);
}

#[tokio::test]
async fn socket_caps_refuse_before_the_upgrade() {
    let s = Server::start(|c| {
        c.max_sockets_per_uid = 2;
        c.max_sockets = 3;
    })
    .await;
    let _a1 = s.connect("a").await;
    let _a2 = s.connect("a").await;
    let status = |r: Result<_, tungstenite::Error>| match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Ok(_) => 101,
        Err(e) => panic!("{e}"),
    };
    let key = s.key("a").await;
    assert_eq!(
        status(tokio_tungstenite::connect_async(s.ws_url("a", &key)).await),
        429
    );
    let _b = s.connect("b").await;
    let key = s.key("c").await;
    assert_eq!(
        status(tokio_tungstenite::connect_async(s.ws_url("c", &key)).await),
        503
    );
}

#[tokio::test]
async fn only_allowed_origins_may_open_sockets() {
    let s =
        Server::start(|c| c.allowed_origins = Some(vec!["https://shop.example.com".into()])).await;
    let key = s.key("a").await;
    let with_origin = |origin: Option<&'static str>| {
        let mut req = s.ws_url("a", &key).into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("Origin", o.parse().unwrap());
        }
        req
    };
    let r = tokio_tungstenite::connect_async(with_origin(Some("https://evil.example.net"))).await;
    match r {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!(
            "hijack attempt not refused: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    assert!(
        tokio_tungstenite::connect_async(with_origin(Some("https://shop.example.com")))
            .await
            .is_ok()
    );
    // Backends and native apps send no Origin at all.
    assert!(tokio_tungstenite::connect_async(with_origin(None))
        .await
        .is_ok());
}

#[tokio::test]
async fn slowloris_is_cut_after_the_header_timeout() {
    let s = Server::start(|c| c.header_read_timeout_secs = 0.5).await;
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /access?uid=a HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(PATIENCE, slow.read(&mut buf))
        .await
        .expect("server hung up")
        .unwrap_or(0);
    // hyper may answer 408 before closing, or just close.
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
    // Meanwhile the server answers others.
    assert_eq!(
        s.push("nobody", r#"{"topic":"t","contents":1}"#)
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn half_closed_socket_is_cleaned_up() {
    let s = Server::start(|_| {}).await;
    let ws = s.connect("half").await;
    assert_eq!(s.sockets_of("half").await, 1);
    // The client shuts its sending side (FIN) without a close frame, as a crashed tab's OS does.
    let mut tcp = match ws.into_inner() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
        _ => unreachable!(),
    };
    tcp.shutdown().await.unwrap();
    eventually("the half-closed socket to be gone", || async {
        s.sockets_of("half").await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_does_not_delay_anyone_else() {
    let s = Server::start(|_| {}).await;
    let mut flooder = s.connect("flood").await;
    let mut neighbour = s.connect("calm").await;
    let flood = tokio::spawn(async move {
        // 20,000 pings without ever reading a pong.
        for _ in 0..20_000 {
            if flooder
                .feed(Message::Ping(vec![0u8; 64].into()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = flooder.flush().await;
        flooder
    });
    for i in 0..200 {
        assert_eq!(
            s.push("calm", &format!(r#"{{"topic":"t","contents":{i}}}"#))
                .await
                .status,
            200
        );
        assert_eq!(
            next_text(&mut neighbour).await,
            format!(r#"{{"topic":"t","number":1,"contents":{i}}}"#)
        );
    }
    let _flooder = tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .unwrap()
        .unwrap();
}
