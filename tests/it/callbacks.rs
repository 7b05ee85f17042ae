//! Callbacks to the business server (issue 13, seed 003's connect/disconnect callbacks): signed
//! JSON POSTs when a uid comes online and goes offline (a reload is neither), and per socket on
//! request; an endpoint that hangs or answers 500 delays no socket and no push, and what could
//! not be sent is counted.

use crate::common;

use std::time::Duration;

use common::*;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const SECRET: &str = "callbacks-test-secret";

/// How the test's business server answers.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    Error,
    Hang,
    /// 200, after this long.
    Slow(Duration),
}

/// One POST the business server got: its headers (lowercased names) and body.
struct Got {
    headers: Vec<(String, String)>,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A business server on 127.0.0.1:0 answering every request as `answer` says; returns its
/// URL and the requests it got, in order.
async fn business_server(answer: Answer) -> (String, mpsc::UnboundedReceiver<Got>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/push", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = conn.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut headers = Vec::new();
                    let mut line = String::new();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    assert!(line.starts_with("POST /hooks/push "), "{line}");
                    loop {
                        line.clear();
                        read.read_line(&mut line).await.unwrap();
                        let Some((name, value)) = line.trim_end().split_once(':') else {
                            break;
                        };
                        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
                    }
                    let length: usize = headers
                        .iter()
                        .find(|(n, _)| n == "content-length")
                        .map_or(0, |(_, v)| v.parse().unwrap());
                    let mut body = vec![0; length];
                    read.read_exact(&mut body).await.unwrap();
                    let body = String::from_utf8(body).unwrap();
                    let _ = tx.send(Got { headers, body });
                    let reply: &[u8] = match answer {
                        Answer::Ok => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
                        Answer::Slow(delay) => {
                            tokio::time::sleep(delay).await;
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                        }
                        Answer::Error => {
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
                        }
                        Answer::Hang => {
                            // Holds the connection and never answers.
                            std::future::pending::<()>().await;
                            unreachable!()
                        }
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<Got>) -> Got {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a callback within 30 s")
        .expect("the business server runs")
}

fn signed(got: &Got) -> bool {
    let ts = got.header("x-push-timestamp");
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.{}", got.body).as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    got.header("x-push-signature") == format!("sha256={hex}")
}

async fn stats(s: &Server) -> Value {
    let r = s
        .http()
        .await
        .get(&format!("/stats?password={}", enc(&s.password)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["contents"].clone()
}

#[tokio::test]
async fn online_offline_and_socket_events_are_signed_and_a_reload_is_neither() {
    let (url, mut got) = business_server(Answer::Ok).await;
    let s = Server::start(|c| {
        c.callback_url = Some(url);
        c.callback_secret = Some(SECRET.into());
        c.callback_sockets = true;
        c.callback_grace_secs = 1.0;
    })
    .await;
    let mut first = s.connect("alice").await;
    let online = next_event(&mut got).await;
    assert!(signed(&online), "signature of {}", online.body);
    assert_eq!(online.header("content-type"), "application/json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts: u64 = online.header("x-push-timestamp").parse().unwrap();
    assert!(ts.abs_diff(now) < 60, "{ts} vs {now}");
    let online = online.json();
    assert_eq!(
        (online["event"].as_str(), online["uid"].as_str()),
        (Some("online"), Some("alice"))
    );
    let connect = next_event(&mut got).await.json();
    assert_eq!(connect["event"], "connect");
    let socket = connect["socket"].clone();
    assert!(socket.is_u64(), "{connect}");
    // A second tab is not online again.
    let mut second = s.connect("alice").await;
    assert_eq!(next_event(&mut got).await.json()["event"], "connect");
    second.close(None).await.unwrap();
    let closed = next_event(&mut got).await.json();
    assert_eq!(
        (closed["event"].as_str(), closed["code"].as_u64()),
        (Some("disconnect"), Some(1000))
    );
    // A reload: the last socket closes and a new one opens within the grace period.
    first.close(None).await.unwrap();
    let closed = next_event(&mut got).await.json();
    assert_eq!(closed["event"], "disconnect");
    assert_eq!(closed["socket"], socket);
    let mut reloaded = s.connect("alice").await;
    assert_eq!(next_event(&mut got).await.json()["event"], "connect");
    // The backend closes it (4011): after the grace period alice is offline, once.
    let r = s
        .http()
        .await
        .request(
            "POST",
            &format!("/disconnect?uid=alice&password={}", enc(&s.password)),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(close_code(&mut reloaded).await.map(u16::from), Some(4011));
    let closed = next_event(&mut got).await.json();
    assert_eq!(
        (closed["event"].as_str(), closed["code"].as_u64()),
        (Some("disconnect"), Some(4011))
    );
    let offline = next_event(&mut got).await;
    assert!(signed(&offline));
    assert_eq!(offline.json()["event"], "offline");
    assert_eq!(offline.json()["uid"], "alice");
    // No online or offline came in between (each event above was the next one).
    let counts = stats(&s).await["callbacks"].clone();
    assert_eq!(
        counts,
        json!({"sent": 8, "failed": 0, "dropped": 0, "coalesced": 0})
    );
}

#[tokio::test]
async fn a_hanging_endpoint_delays_no_socket_or_push_and_drops_are_counted() {
    let (url, mut got) = business_server(Answer::Hang).await;
    let s = Server::start(|c| {
        c.callback_url = Some(url);
        c.callback_secret = Some(SECRET.into());
        c.callback_sockets = true;
        c.callback_queue = 2;
    })
    .await;
    // The first event is being sent (and hangs); two more wait in the queue; the rest drop.
    let mut pages = Vec::new();
    for i in 0..10 {
        pages.push(s.connect(&format!("u{i}")).await);
    }
    next_event(&mut got).await;
    for (i, page) in pages.iter_mut().enumerate() {
        let r = s
            .push(&format!("u{i}"), r#"{"topic":"t","contents":1}"#)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            next_text(page).await,
            r#"{"topic":"t","number":1,"contents":1}"#
        );
    }
    let counts = stats(&s).await["callbacks"].clone();
    assert_eq!(counts["sent"], 0);
    assert!(counts["dropped"].as_u64().unwrap() >= 17, "{counts}");
    let metrics = s
        .http()
        .await
        .get(&format!("/metrics?password={}", enc(&s.password)))
        .await
        .text();
    assert!(
        metrics.contains(r#"push_serve_callbacks_total{outcome="dropped"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_then_counted_as_failed() {
    let (url, mut got) = business_server(Answer::Error).await;
    let s = Server::start(|c| {
        c.callback_url = Some(url);
        c.callback_secret = Some(SECRET.into());
    })
    .await;
    let mut page = s.connect("bob").await;
    // The online event, tried three times.
    for _ in 0..3 {
        let event = next_event(&mut got).await;
        assert!(signed(&event));
        assert_eq!(event.json()["event"], "online");
    }
    eventually("the online event to count as failed", || async {
        stats(&s).await["callbacks"]["failed"] == 1
    })
    .await;
    // Meanwhile pushes went on as ever.
    assert_eq!(
        s.push("bob", r#"{"topic":"t","contents":2}"#).await.status,
        200
    );
    assert_eq!(
        next_text(&mut page).await,
        r#"{"topic":"t","number":1,"contents":2}"#
    );
}

#[tokio::test]
async fn callback_settings_are_checked() {
    let mut c = push_serve::config::Config::new("127.0.0.1:0", "pw");
    c.callback_url = Some("ftp://example.com/".into());
    c.callback_secret = Some("s".into());
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("callback_url"));
    c.callback_url = Some("http://127.0.0.1:9/hook".into());
    c.callback_secret = None;
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("callback_secret"));
    c.callback_secret = Some("s".into());
    c.validate().unwrap();
    // Without callback_url there is no callbacks section in /stats.
    let s = Server::start(|_| {}).await;
    assert!(stats(&s).await.get("callbacks").is_none());
}

/// `callback_url` and `callback_secret` apply on a reload: callbacks off at start begin, and a
/// moved endpoint gets every event from then on (a reload once said "applied" and kept
/// sending to the old URL).
#[tokio::test]
async fn a_reload_turns_callbacks_on_and_moves_them() {
    let (first, mut at_first) = business_server(Answer::Ok).await;
    let (second, mut at_second) = business_server(Answer::Ok).await;
    let s = Server::start(|_| {}).await;
    let outcome = s
        .reload(|c| {
            c.callback_url = Some(first.clone());
            c.callback_secret = Some(SECRET.into());
        })
        .await
        .unwrap();
    assert_eq!(outcome.applied, ["callback_url", "callback_secret"]);
    let _x = s.connect("x").await;
    let got = next_event(&mut at_first).await;
    assert_eq!(
        (got.json()["event"].clone(), got.json()["uid"].clone()),
        (json!("online"), json!("x"))
    );
    s.reload(|c| c.callback_url = Some(second.clone()))
        .await
        .unwrap();
    let _y = s.connect("y").await;
    let got = next_event(&mut at_second).await;
    assert_eq!(
        (got.json()["event"].clone(), got.json()["uid"].clone()),
        (json!("online"), json!("y"))
    );
    assert!(at_first.try_recv().is_err(), "the old endpoint got more");
}

/// `user:password@` in `callback_url` goes out as Basic authentication: never in the `Host`
/// header, where it went before.
#[tokio::test]
async fn credentials_in_the_callback_url_go_out_as_basic_auth() {
    let (url, mut got) = business_server(Answer::Ok).await;
    let with_userinfo = url.replacen("http://", "http://hook:p%40ss@", 1);
    let s = Server::start(|c| {
        c.callback_url = Some(with_userinfo);
        c.callback_secret = Some(SECRET.into());
    })
    .await;
    let _ws = s.connect("basic").await;
    let event = next_event(&mut got).await;
    assert_eq!(event.json()["event"], "online");
    // base64("hook:p@ss")
    assert_eq!(event.header("authorization"), "Basic aG9vazpwQHNz");
    assert!(
        !event.header("host").contains('@'),
        "{}",
        event.header("host")
    );
    assert!(!event.header("host").contains("p%40ss"));
}

/// Issue 19: churn pushes out no `online`. A user with a valid key holds 40 sockets and opens
/// and closes more in a loop (each a `connect` and a `disconnect`, `callback_sockets` on)
/// against an endpoint taking 200 ms per POST, with a queue of 20; another user's `online`
/// still arrives. A socket's `connect` and `disconnect` waiting together cancel out
/// (`coalesced`); the queue makes room by dropping its oldest `connect`s (`dropped`). Before,
/// the full queue dropped the `online` itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_churn_never_pushes_out_another_users_online() {
    let (url, mut got) = business_server(Answer::Slow(Duration::from_millis(200))).await;
    let s = Server::start(|c| {
        c.callback_url = Some(url);
        c.callback_secret = Some(SECRET.into());
        c.callback_sockets = true;
        c.callback_queue = 20;
        c.max_sockets_per_uid = 1000;
    })
    .await;
    let key = s.key("churner").await;
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(s.connect_with_key("churner", &key).await);
    }
    for _ in 0..300 {
        let mut ws = s.connect_with_key("churner", &key).await;
        ws.close(None).await.unwrap();
    }
    let _bystander = s.connect("bystander").await;
    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut got).await.json();
        if event["event"] == "online" && event["uid"] == "bystander" {
            break;
        }
        seen.push(event);
    }
    assert_eq!(
        seen[0]["event"], "online",
        "the churner's own online: {}",
        seen[0]
    );
    let counts = stats(&s).await["callbacks"].clone();
    println!(
        "callbacks under churn: the bystander's online came after {} other events; {counts}",
        seen.len()
    );
    assert!(counts["dropped"].as_u64().unwrap() > 0, "{counts}");
    assert!(counts["coalesced"].as_u64().unwrap() > 0, "{counts}");
    let metrics = s
        .http()
        .await
        .get(&format!("/metrics?password={}", enc(&s.password)))
        .await
        .text();
    for outcome in ["dropped", "coalesced"] {
        assert!(
            metrics.contains(&format!(
                r#"push_serve_callbacks_total{{outcome="{outcome}"}}"#
            )),
            "{metrics}"
        );
    }
}
