//! The seed contract over real sockets. These tests use only documented endpoints and default
//! settings, so they also run against any server named by `PUSH_SERVE_TARGET` (the benchmark's
//! Node and Go peers must pass them too).

use crate::common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, Message};

#[tokio::test]
async fn access_returns_a_key_in_the_seed_envelope() {
    let s = Server::start_default().await;
    let r = s
        .http()
        .await
        .get(&format!("/access?uid=alice&password={}", enc(&s.password)))
        .await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let json = r.json();
    assert_eq!(json["topic"], "_access");
    assert_eq!(json["number"], 1);
    assert!(!json["contents"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn access_and_push_accept_a_bearer_password() {
    let s = Server::start_default().await;
    let bearer = format!("Bearer {}", s.password);
    let mut http = s.http().await;
    let r = http
        .request(
            "GET",
            "/access?uid=alice",
            &[("Authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let key = r.json()["contents"].as_str().unwrap().to_string();
    let mut ws = s.connect_with_key("alice", &key).await;
    let r = http
        .request(
            "POST",
            "/push?uid=alice",
            &[("Authorization", &bearer)],
            br#"{"topic":"t","contents":1}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"topic":"t","number":1,"contents":1}"#
    );
}

#[tokio::test]
async fn access_refuses_bad_password_and_missing_uid() {
    let s = Server::start_default().await;
    let mut http = s.http().await;
    http.get("/access?uid=alice&password=wrong")
        .await
        .assert_error(401);
    http.get("/access?uid=alice").await.assert_error(401);
    http.get(&format!("/access?password={}", enc(&s.password)))
        .await
        .assert_error(400);
    http.get(&format!("/access?uid=&password={}", enc(&s.password)))
        .await
        .assert_error(400);
    // Wrong bearer is as bad as a wrong query password.
    http.request(
        "GET",
        "/access?uid=alice",
        &[("Authorization", "Bearer nope")],
        b"",
    )
    .await
    .assert_error(401);
}

/// The original accepted a socket with no or an empty key; ours answers 401 before any upgrade.
#[tokio::test]
async fn socket_without_a_valid_key_gets_401_and_no_upgrade() {
    let s = Server::start_default().await;
    let bob_key = s.key("bob").await;
    let urls = [
        format!("ws://{}/ws?uid=alice", s.addr),
        format!("ws://{}/ws?uid=alice&access_key=", s.addr),
        s.ws_url("alice", "not-a-key"),
        s.ws_url("alice", &bob_key),
        s.ws_url("alice", &format!("{bob_key}0")),
    ];
    for url in urls {
        match tokio_tungstenite::connect_async(&url).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{url}");
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default())
                        .expect("401 body is the JSON envelope");
                assert_eq!(body["topic"], "error", "{url}");
            }
            other => panic!(
                "{url}: expected HTTP 401, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    }
}

#[tokio::test]
async fn push_reaches_every_tab_of_the_uid_and_number_counts_them() {
    let s = Server::start_default().await;
    let key = s.key("alice").await;
    let mut tabs = Vec::new();
    for _ in 0..3 {
        // One key serves every tab.
        tabs.push(s.connect_with_key("alice", &key).await);
    }
    let mut other = s.connect("bob").await;
    let r = s
        .push("alice", r#"{"topic":"order","contents":{"id":7}}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let json = r.json();
    assert_eq!(
        (json["topic"].as_str(), json["number"].as_u64()),
        (Some("success"), Some(3))
    );
    assert_eq!(json["contents"], "推送成功");
    for tab in &mut tabs {
        assert_eq!(
            next_text(tab).await,
            r#"{"topic":"order","number":1,"contents":{"id":7}}"#
        );
    }
    // Bob got nothing: his next frame is the one pushed to him now.
    assert_eq!(
        s.push("bob", r#"{"topic":"b","contents":2}"#).await.status,
        200
    );
    assert_eq!(
        next_text(&mut other).await,
        r#"{"topic":"b","number":1,"contents":2}"#
    );
}

/// The original dropped the uid when its first socket closed, so a live tab looked offline.
#[tokio::test]
async fn second_tab_keeps_receiving_after_first_closes() {
    let s = Server::start_default().await;
    let mut first = s.connect("alice").await;
    let mut second = s.connect("alice").await;
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    drop(first); // like a browser, close the TCP connection after the close handshake
    eventually("the first tab to be gone", || async {
        s.push("alice", r#"{"topic":"t","contents":0}"#)
            .await
            .json()["number"]
            == 1
    })
    .await;
    let r = s
        .push("alice", r#"{"topic":"t","contents":"still here"}"#)
        .await;
    assert_eq!(r.json()["number"], 1);
    loop {
        if next_text(&mut second).await.contains("still here") {
            break;
        }
    }
    drop(second);
    eventually("alice to be offline", || async {
        s.push("alice", r#"{"topic":"t","contents":0}"#)
            .await
            .status
            == 404
    })
    .await;
}

#[tokio::test]
async fn push_to_offline_uid_gets_the_seed_error() {
    let s = Server::start_default().await;
    let r = s.push("nobody-here", r#"{"topic":"t","contents":1}"#).await;
    assert_eq!(r.assert_error(404), "此用户不在线");
}

#[tokio::test]
async fn contents_arrive_byte_for_byte() {
    let s = Server::start_default().await;
    let mut ws = s.connect("exact").await;
    let nested = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let cases = [
        "18446744073709551615".to_string(),
        "-9223372036854775808".to_string(),
        "123456789012345678901234567890".to_string(),
        "1.0e400".to_string(),
        r#""你好, мир, 🎉 \u00e9 \" \\ \n""#.to_string(),
        r#"{"a":[1,2,{"b":null}],"c":true,"d":false,"e":-0.0}"#.to_string(),
        "null".to_string(),
        "[]".to_string(),
        nested,
    ];
    for contents in cases {
        let body = format!(r#"{{"topic":"x","contents":{contents}}}"#);
        assert_eq!(s.push("exact", &body).await.status, 200, "{contents}");
        assert_eq!(
            next_text(&mut ws).await,
            format!(r#"{{"topic":"x","number":1,"contents":{contents}}}"#)
        );
    }
    // Topics are JSON-escaped, not pasted.
    let body = r#"{"topic":"q\"u\u00f6te","contents":1}"#;
    assert_eq!(s.push("exact", body).await.status, 200);
    let frame: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(frame["topic"], "q\"uöte");
}

#[tokio::test]
async fn pushes_from_one_connection_arrive_in_order() {
    let s = Server::start_default().await;
    let mut a = s.connect("ordered").await;
    let mut b = s.connect("ordered").await;
    let mut http = s.http().await;
    for i in 0..500 {
        let r = http
            .push(
                "ordered",
                &s.password,
                &format!(r#"{{"topic":"seq","contents":{i}}}"#),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    for ws in [&mut a, &mut b] {
        for i in 0..500 {
            assert_eq!(
                next_text(ws).await,
                format!(r#"{{"topic":"seq","number":1,"contents":{i}}}"#)
            );
        }
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_disturbs_nobody() {
    let s = Server::start_default().await;
    let mut ws = s.connect("victim").await;
    let pw = enc(&s.password);
    let mut http = s.http().await;
    let push = format!("/push?uid=victim&password={pw}");
    let json = [("Content-Type", "application/json")];
    let bodies: [&[u8]; 7] = [
        b"",
        b"not json",
        br#"{"topic":"t"}"#,
        br#"{"contents":1}"#,
        br#"{"topic":5,"contents":1}"#,
        br#"{"topic":"t","contents":1"#,
        b"\xff\xfe",
    ];
    for body in bodies {
        let r = http.request("POST", &push, &json, body).await;
        r.assert_error(400);
    }
    http.request(
        "POST",
        "/push?uid=victim&password=wrong",
        &json,
        br#"{"topic":"t","contents":1}"#,
    )
    .await
    .assert_error(401);
    http.request(
        "POST",
        &format!("/push?password={pw}"),
        &json,
        br#"{"topic":"t","contents":1}"#,
    )
    .await
    .assert_error(400);
    http.request("GET", &push, &[], b"").await.assert_error(405);
    http.request("PUT", &push, &json, br#"{"topic":"t","contents":1}"#)
        .await
        .assert_error(405);
    http.get("/nothing-here").await.assert_error(404);
    http.get("/").await.assert_error(404);
    // Over the default 1 MiB limit, declared up front and streamed in chunks.
    too_large(
        &s,
        &format!("POST {push} HTTP/1.1\r\nHost: t\r\nContent-Length: 3000000\r\n\r\n"),
        64 << 10,
    )
    .await;
    too_large(
        &s,
        &format!("POST {push} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"),
        3 << 20,
    )
    .await;

    // Nothing above reached the socket; the next good push does, first.
    assert_eq!(
        s.push("victim", r#"{"topic":"ok","contents":1}"#)
            .await
            .status,
        200
    );
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"topic":"ok","number":1,"contents":1}"#
    );
}

#[tokio::test]
async fn plain_get_on_ws_is_refused_with_the_envelope() {
    let s = Server::start_default().await;
    let key = s.key("alice").await;
    let r = s
        .http()
        .await
        .get(&format!("/ws?uid=alice&access_key={}", enc(&key)))
        .await;
    r.assert_error(426);
}

#[tokio::test]
async fn client_frames_are_read_and_ignored() {
    let s = Server::start_default().await;
    let mut ws = s.connect("chatty").await;
    ws.send(Message::text("hello server")).await.unwrap();
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"are you there");
                break;
            }
            Message::Ping(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        s.push("chatty", r#"{"topic":"t","contents":1}"#)
            .await
            .json()["number"],
        1
    );
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"topic":"t","number":1,"contents":1}"#
    );
}

/// A page's `onopen` means it is online: a backend push sent the instant the 101 arrives (the
/// page told its backend "ready") must reach it, never `此用户不在线`. The socket therefore has
/// to be registered before the 101 is written, not after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_right_after_the_upgrade_reaches_the_socket() {
    let s = Server::start_default().await;
    let mut backend = s.http().await;
    for i in 0..300 {
        let uid = format!("fresh-{i}");
        let key = s.key(&uid).await;
        let mut ws = s.connect_with_key(&uid, &key).await;
        let r = backend
            .push(&uid, &s.password, r#"{"topic":"t","contents":"now"}"#)
            .await;
        assert_eq!(r.status, 200, "push {i} right after the 101: {}", r.text());
        assert_eq!(
            next_text(&mut ws).await,
            r#"{"topic":"t","number":1,"contents":"now"}"#
        );
    }
}

/// Thousands of concurrent connects and pushes (the original died at a few hundred).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_connects_and_pushes() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let s = std::sync::Arc::new(Server::start_default().await);
    const UIDS: usize = 1000;
    const TABS: usize = 2;
    let mut handles = Vec::new();
    for u in 0..UIDS {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let uid = format!("crowd-{u}");
            let key = s.key(&uid).await;
            let mut tabs = Vec::new();
            for _ in 0..TABS {
                tabs.push(s.connect_with_key(&uid, &key).await);
            }
            (uid, tabs)
        }));
    }
    let mut users = Vec::new();
    for h in handles {
        users.push(h.await.unwrap());
    }
    // 20 backend connections push to every uid concurrently.
    let uids: Vec<String> = users.iter().map(|(u, _)| u.clone()).collect();
    let mut pushers = Vec::new();
    for chunk in uids.chunks(UIDS / 20) {
        let s = s.clone();
        let chunk = chunk.to_vec();
        pushers.push(tokio::spawn(async move {
            let mut http = s.http().await;
            for uid in chunk {
                let body = format!(r#"{{"topic":"crowd","contents":"{uid}"}}"#);
                let r = http.push(&uid, &s.password, &body).await;
                assert_eq!(r.json()["number"], TABS as u64, "{uid}");
            }
        }));
    }
    for p in pushers {
        p.await.unwrap();
    }
    for (uid, tabs) in &mut users {
        for tab in tabs {
            assert_eq!(
                next_text(tab).await,
                format!(r#"{{"topic":"crowd","number":1,"contents":"{uid}"}}"#)
            );
        }
    }
}

/// Sends `head` and then up to `body_len` bytes of body from a separate task (the server may stop
/// reading once it has decided), and expects 413 with the envelope.
async fn too_large(s: &Server, head: &str, body_len: usize) {
    use tokio::io::AsyncWriteExt;
    let stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let head = head.to_string();
    let chunked = head.contains("chunked");
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 16 << 10];
        let mut sent = 0;
        while sent < body_len {
            if chunked {
                write
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                write.write_all(&chunk).await?;
                write.write_all(b"\r\n").await?;
            } else {
                write.write_all(&chunk).await?;
            }
            sent += chunk.len();
        }
        Ok::<_, std::io::Error>(write)
    });
    let mut reader = common::RawReply::new(read);
    reader.read().await.assert_error(413);
    writer.abort();
}
