//! Abuse limits and hostile clients: password brute force, socket caps, cross-site socket
//! hijacking, slowloris, half-closed sockets, ping floods. Each refusal is clear, and nobody else
//! is disturbed.

use crate::common;

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

/// 101, or the refusal's status.
async fn upgrade_status(s: &Server, uid: &str, key: &str) -> (u16, Option<Ws>) {
    match tokio_tungstenite::connect_async(s.ws_url(uid, key)).await {
        Ok((ws, _)) => (101, Some(ws)),
        Err(tungstenite::Error::Http(resp)) => (resp.status().as_u16(), None),
        Err(e) => panic!("{e}"),
    }
}

/// Upgrades racing on both server threads cannot pass `max_sockets` together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sockets_holds_when_upgrades_race() {
    let s = std::sync::Arc::new(Server::start(|c| c.max_sockets = 4).await);
    let mut keys = Vec::new();
    for i in 0..40 {
        keys.push((format!("u{i}"), s.key(&format!("u{i}")).await));
    }
    let racers: Vec<_> = keys
        .into_iter()
        .map(|(uid, key)| {
            let s = s.clone();
            tokio::spawn(async move { upgrade_status(&s, &uid, &key).await })
        })
        .collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for racer in racers {
        match racer.await.unwrap() {
            (101, ws) => open.push(ws),
            (503, _) => refused += 1,
            (other, _) => panic!("status {other}"),
        }
    }
    assert_eq!((open.len(), refused), (4, 36));
}

/// A socket's slot comes back however the socket ends: refused after the slot was taken (429
/// for its uid), closed by the page, or dropped by a client that vanished after the 101.
#[tokio::test]
async fn a_socket_slot_is_released_on_every_exit_path() {
    let s = Server::start(|c| {
        c.max_sockets = 2;
        c.max_sockets_per_uid = 1;
    })
    .await;
    let (ka, kb, kc) = (s.key("a").await, s.key("b").await, s.key("c").await);
    let (status, a) = upgrade_status(&s, "a", &ka).await;
    assert_eq!(status, 101);
    // Refused for its uid after taking a slot: the slot is back, so b gets the second one.
    assert_eq!(upgrade_status(&s, "a", &ka).await.0, 429);
    let (status, _b) = upgrade_status(&s, "b", &kb).await;
    assert_eq!(status, 101);
    assert_eq!(upgrade_status(&s, "c", &kc).await.0, 503);

    // The page closes: its slot is free once its task has ended.
    let mut a = a.unwrap();
    a.close(None).await.unwrap();
    drop(a);
    let c = until_upgraded(&s, "c", &kc).await;

    // A client that takes the last slot and vanishes without a close frame. Whether the slot
    // c left is back yet shows only in the reply to an upgrade: ask until one is upgraded.
    drop(c);
    let kd = s.key("d").await;
    eventually("c's slot to come back", || async {
        // Dropped right here, after the 101, without a close frame.
        try_raw_upgrade(&s, "d", &kd, None).await.0 == 101
    })
    .await;
    until_upgraded(&s, "c", &kc).await;
}

/// Retries an upgrade refused with 503 until a slot frees up (a socket's end frees its slot
/// once the server has seen it, which only the next upgrade's reply shows).
async fn until_upgraded(s: &Server, uid: &str, key: &str) -> Ws {
    let upgraded = std::sync::Mutex::new(None);
    eventually("a slot to be released", || async {
        match upgrade_status(s, uid, key).await {
            (101, ws) => {
                *upgraded.lock().unwrap() = ws;
                true
            }
            (503, _) => false,
            (other, _) => panic!("status {other}"),
        }
    })
    .await;
    upgraded.into_inner().unwrap().expect("the upgraded socket")
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

/// A client that writes its whole body before it reads (curl, Node's `http`, the Pusher SDKs)
/// gets the 413 and its envelope, not a broken pipe: the refused body is read and dropped
/// (bounded) before the reply.
#[tokio::test]
async fn a_client_writing_8_mb_first_can_read_the_413() {
    let s = Server::start_default().await;
    for target in [
        format!("/push?uid=u&password={}", enc(&s.password)),
        format!("/publish?password={}", enc(&s.password)),
    ] {
        let body = vec![b'x'; 8 << 20];
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        let request = request_bytes(
            "POST",
            &target,
            &[("Content-Type", "application/json")],
            &body,
        );
        tokio::time::timeout(PATIENCE, stream.write_all(&request))
            .await
            .expect("the body is read in time")
            .expect("the whole body is taken, no broken pipe");
        let reply = RawReply::new(stream).read().await;
        reply.assert_error(413);
    }
}

/// A body that stalls mid-way is answered 408 at its deadline and its connection closed, so a
/// client (authenticated or not) cannot hold a request's buffer for ever: past
/// `body_timeout_secs` in all, or slower than `body_min_bytes_per_sec` after its first second.
#[tokio::test]
async fn a_stalled_body_gets_408_at_its_deadline_and_its_connection_closes() {
    for (timeout, pace) in [(0.5, 0), (30.0, 4096)] {
        let s = Server::start(|c| {
            c.body_timeout_secs = timeout;
            c.body_min_bytes_per_sec = pace;
        })
        .await;
        let mut stream = TcpStream::connect(s.addr).await.unwrap();
        let head = format!(
            "POST /push?uid=u&password={} HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n{{\"topic\":",
            enc(&s.password)
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let (read, _write) = stream.into_split();
        let mut reader = RawReply::new(read);
        let reply = tokio::time::timeout(PATIENCE, reader.read())
            .await
            .expect("an answer before the test's patience runs out");
        let reason = reply.assert_error(408);
        assert!(reason.contains("too slow"), "{reason}");
        // The server is free for everyone else.
        assert_eq!(
            s.push("u", r#"{"topic":"t","contents":1}"#).await.status,
            404
        );
    }
}

/// One client address may hold `max_sockets_per_address` sockets, native and SSE together
/// (Pusher too, tested in pusher.rs): a stranger cannot take the server's `max_sockets` from
/// one address. Another address is not affected, and a closed socket frees its place.
#[tokio::test]
async fn one_address_holds_at_most_max_sockets_per_address() {
    let s = Server::start(|c| {
        c.max_sockets_per_address = 2;
        c.real_ip_header = Some("X-Forwarded-For".into());
        c.trusted_proxies = 1;
    })
    .await;
    let open = |uid: &'static str, from: &'static str| {
        let s = &s;
        async move {
            let key = s.key(uid).await;
            let mut http = Http::connect(s.addr).await;
            let target = format!("/ws?uid={uid}&access_key={}", enc(&key));
            let mut headers: Vec<(&str, &str)> = UPGRADE_HEADERS.to_vec();
            headers.push(("X-Forwarded-For", from));
            http.send("GET", &target, &headers, b"").await;
            let (status, headers) = http.read_head().await;
            (status, headers, http)
        }
    };
    let (a, _, first) = open("a", "203.0.113.5").await;
    let (b, _, _second) = open("b", "203.0.113.5").await;
    assert_eq!((a, b), (101, 101));
    let (third, third_headers, mut refused) = open("c", "203.0.113.5").await;
    assert_eq!(third, 429);
    let body = refused.read_body(&third_headers).await;
    assert!(
        String::from_utf8_lossy(&body).contains("max_sockets_per_address"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let key = s.key("c").await;
    let sse = s
        .http()
        .await
        .request(
            "GET",
            &format!("/sse?uid=c&access_key={}", enc(&key)),
            &[("X-Forwarded-For", "203.0.113.5")],
            b"",
        )
        .await;
    sse.assert_error(429);
    let (other, _, _elsewhere) = open("d", "203.0.113.6").await;
    assert_eq!(other, 101, "another address is not affected");
    drop(first);
    eventually("the closed socket's place to be free", || async {
        open("e", "203.0.113.5").await.0 == 101
    })
    .await;
}

/// Issue 19: one client address opens at most `new_sockets_per_address_per_minute` sockets at
/// once and then that many a minute, native and SSE together (Pusher in pusher.rs), so it
/// cannot open and drop sockets without end. Past it: 429 with `Retry-After` and the
/// envelope's reason; closing sockets gives nothing back; another address is not affected; a
/// reload changes the rate for the next socket.
#[tokio::test]
async fn one_address_opens_at_most_new_sockets_per_address_per_minute() {
    let s = Server::start(|c| {
        c.new_sockets_per_address_per_minute = 3;
        c.real_ip_header = Some("X-Forwarded-For".into());
        c.trusted_proxies = 1;
    })
    .await;
    let open = |uid: &'static str, from: &'static str| {
        let s = &s;
        async move {
            let key = s.key(uid).await;
            let mut http = Http::connect(s.addr).await;
            let target = format!("/ws?uid={uid}&access_key={}", enc(&key));
            let mut headers: Vec<(&str, &str)> = UPGRADE_HEADERS.to_vec();
            headers.push(("X-Forwarded-For", from));
            http.send("GET", &target, &headers, b"").await;
            let (status, headers) = http.read_head().await;
            (status, headers, http)
        }
    };
    for uid in ["a", "b"] {
        let (status, _, held) = open(uid, "203.0.113.5").await;
        assert_eq!(status, 101);
        drop(held);
    }
    let key = s.key("c").await;
    let mut sse = Http::connect(s.addr).await;
    let target = format!("/sse?uid=c&access_key={}", enc(&key));
    sse.send("GET", &target, &[("X-Forwarded-For", "203.0.113.5")], b"")
        .await;
    assert_eq!(
        sse.read_head().await.0,
        200,
        "the third, as an event stream"
    );
    drop(sse);
    let (status, headers, mut refused) = open("d", "203.0.113.5").await;
    assert_eq!(status, 429);
    let retry: u64 = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("retry-after"))
        .map(|(_, v)| v.parse().unwrap())
        .expect("Retry-After");
    assert!(
        (1..=20).contains(&retry),
        "a token comes back every 20 s: {retry}"
    );
    let body = String::from_utf8_lossy(&refused.read_body(&headers).await).into_owned();
    assert!(
        body.contains("new_sockets_per_address_per_minute"),
        "{body}"
    );
    let (other, _, _elsewhere) = open("e", "203.0.113.6").await;
    assert_eq!(other, 101, "another address is not affected");
    let outcome = s
        .reload(|c| c.new_sockets_per_address_per_minute = 0)
        .await
        .unwrap();
    assert_eq!(outcome.applied, ["new_sockets_per_address_per_minute"]);
    let (status, _, _again) = open("d", "203.0.113.5").await;
    assert_eq!(status, 101, "0 turns it off, from the next socket on");
}
