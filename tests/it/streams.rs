//! Beyond one user: several uids per push, broadcast, topics granted by the key, online
//! queries, numbered history and resume — including a client whose connection is cut again and
//! again while 10,000 messages are pushed.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};

fn body(topic: &str, contents: &str) -> String {
    format!(r#"{{"topic":"{topic}","contents":{contents}}}"#)
}

async fn post(s: &Server, path: &str, body: &str) -> Reply {
    let sep = if path.contains('?') { '&' } else { '?' };
    let target = format!("{path}{sep}password={}", enc(&s.password));
    s.http()
        .await
        .request("POST", &target, &[], body.as_bytes())
        .await
}

async fn key_with_topics(s: &Server, uid: &str, topics: &str) -> String {
    let r = s
        .http()
        .await
        .get(&format!(
            "/access?uid={uid}&topics={}&password={}",
            enc(topics),
            enc(&s.password)
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["contents"].as_str().unwrap().to_string()
}

async fn open(s: &Server, query: &str) -> Ws {
    let url = format!("ws://{}/ws?{query}", s.addr);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade")
        .0
}

async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

#[tokio::test]
async fn one_push_reaches_several_uids_each_once() {
    let s = Server::start(|_| {}).await;
    let mut a = s.connect("a").await;
    let mut b1 = s.connect("b").await;
    let mut b2 = s.connect("b").await;
    let r = post(
        &s,
        "/push?uid=a",
        r#"{"topic":"t","contents":1,"uids":["b","a","c"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["number"], 3);
    assert_eq!(
        r.header("x-push-stored"),
        Some("1"),
        "c was offline, kept in its history"
    );
    for ws in [&mut a, &mut b1, &mut b2] {
        assert_eq!(
            next_text(ws).await,
            r#"{"topic":"t","number":1,"contents":1}"#
        );
    }
    // `a` was named twice but got it once: the next frame is the next push.
    post(&s, "/push?uid=a", &body("t", "2")).await;
    assert_eq!(
        next_text(&mut a).await,
        r#"{"topic":"t","number":1,"contents":2}"#
    );

    let too_many: Vec<String> = (0..1001).map(|i| format!("\"u{i}\"")).collect();
    let r = post(
        &s,
        "/push",
        &format!(
            r#"{{"topic":"t","contents":1,"uids":[{}]}}"#,
            too_many.join(",")
        ),
    )
    .await;
    r.assert_error(400);
    post(&s, "/push", r#"{"topic":"t","contents":1,"uids":[]}"#)
        .await
        .assert_error(400);
    post(&s, "/push", r#"{"topic":"t","contents":1,"uids":[""]}"#)
        .await
        .assert_error(400);
}

#[tokio::test]
async fn broadcast_reaches_every_socket() {
    let s = Server::start(|_| {}).await;
    let mut seed = s.connect("a").await;
    let key = s.key("b").await;
    let mut numbered = open(&s, &format!("uid=b&access_key={}&proto=2", enc(&key))).await;
    assert_eq!(next_json(&mut numbered).await["topic"], "_welcome");
    let r = post(&s, "/broadcast", &body("notice", r#""maintenance at 2am""#)).await;
    assert_eq!(r.json()["number"], 2);
    assert_eq!(
        next_text(&mut seed).await,
        r#"{"topic":"notice","number":1,"contents":"maintenance at 2am"}"#
    );
    let frame = next_json(&mut numbered).await;
    assert_eq!(
        (frame["stream"].as_str(), frame["number"].as_u64()),
        (Some("broadcast"), Some(1))
    );
}

#[tokio::test]
async fn topics_reach_only_sockets_whose_key_grants_them() {
    let s = Server::start(|c| c.max_topics_per_key = 3).await;
    let news_key = key_with_topics(&s, "reader", "news,room:42").await;
    let mut reader = s.connect_with_key("reader", &news_key).await;
    let mut outsider = s.connect("outsider").await;

    let r = post(&s, "/publish", &body("news", r#"{"headline":"hi"}"#)).await;
    assert_eq!(r.json()["number"], 1);
    assert_eq!(
        next_text(&mut reader).await,
        r#"{"topic":"news","number":1,"contents":{"headline":"hi"}}"#
    );
    // Nobody follows "sports": still a success, kept for later, number 0.
    let r = post(&s, "/publish", &body("sports", "1")).await;
    assert_eq!((r.status, r.json()["number"].as_u64()), (200, Some(0)));

    // The outsider received neither; its next frame is a push of its own.
    post(&s, "/push?uid=outsider", &body("own", "1")).await;
    assert_eq!(
        next_text(&mut outsider).await,
        r#"{"topic":"own","number":1,"contents":1}"#
    );

    post(&s, "/publish", &body("bad topic!", "1"))
        .await
        .assert_error(400);
    let pw = enc(&s.password);
    let mut http = s.http().await;
    http.get(&format!("/access?uid=x&topics=a,b,c,d&password={pw}"))
        .await
        .assert_error(400);
    http.get(&format!("/access?uid=x&topics=a%2Cb%20c&password={pw}"))
        .await
        .assert_error(400);
    // A key's topics cannot be edited: change one letter of the topic part, it is refused.
    let mut parts: Vec<String> = news_key.split('.').map(str::to_owned).collect();
    parts[2] = parts[2].replace('b', "c");
    let forged = parts.join(".");
    match tokio_tungstenite::connect_async(s.ws_url("reader", &forged)).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("forged key: {:?}", other.map(|(_, r)| r.status())),
    }
}

#[tokio::test]
async fn online_and_stats_answer_backends() {
    let s = Server::start(|_| {}).await;
    let _a1 = s.connect("a").await;
    let _a2 = s.connect("a").await;
    let key = key_with_topics(&s, "b", "news").await;
    let _b = s.connect_with_key("b", &key).await;
    let pw = enc(&s.password);
    let mut http = s.http().await;
    let r = http.get(&format!("/online?uid=a&password={pw}")).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"topic":"online","number":2,"contents":{"uid":"a","online":true,"sockets":2}})
    );
    let r = http.get(&format!("/online?uid=nobody&password={pw}")).await;
    assert_eq!(r.json()["contents"]["online"], false);
    http.get("/online?uid=a&password=wrong")
        .await
        .assert_error(401);
    let r = http.get(&format!("/stats?password={pw}")).await;
    let stats = r.json();
    assert_eq!(stats["contents"]["sockets"], 3);
    assert_eq!(stats["contents"]["uids"], 2);
    assert_eq!(stats["contents"]["topics"], 1);
    http.get("/stats").await.assert_error(401);
}

/// A client of `proto=2`: keeps each stream's position, reconnects with `since`.
struct Resumer {
    uid: String,
    key: String,
    positions: HashMap<String, String>,
    generations: HashMap<String, String>,
    received: Vec<u64>,
    gaps: Vec<Value>,
}

impl Resumer {
    fn new(uid: &str, key: &str) -> Resumer {
        Resumer {
            uid: uid.into(),
            key: key.into(),
            positions: HashMap::new(),
            generations: HashMap::new(),
            received: Vec::new(),
            gaps: Vec::new(),
        }
    }

    fn query(&self) -> String {
        let mut q = format!(
            "uid={}&access_key={}&proto=2",
            enc(&self.uid),
            enc(&self.key)
        );
        if !self.positions.is_empty() {
            q.push_str(&format!(
                "&since={}",
                enc(&serde_json::to_string(&self.positions).unwrap())
            ));
        }
        q
    }

    /// Applies one frame; returns false when it was not a user-stream message.
    fn apply(&mut self, frame: &Value) -> bool {
        match frame["topic"].as_str() {
            Some("_welcome") => {
                for (stream, pos) in frame["contents"]["streams"].as_object().unwrap() {
                    let pos = pos.as_str().unwrap().to_string();
                    let generation = pos.split(':').next().unwrap().to_string();
                    self.generations.insert(stream.clone(), generation);
                    self.positions.entry(stream.clone()).or_insert(pos);
                }
                false
            }
            Some("_gap") => {
                self.gaps.push(frame.clone());
                false
            }
            _ => {
                let stream = frame["stream"].as_str().unwrap().to_string();
                let n = frame["number"].as_u64().unwrap();
                let generation = self.generations[&stream].clone();
                self.positions
                    .insert(stream.clone(), format!("{generation}:{n}"));
                if stream == "user" {
                    self.received.push(frame["contents"].as_u64().unwrap());
                }
                stream == "user"
            }
        }
    }
}

#[tokio::test]
async fn reconnecting_socket_gets_what_it_missed_in_order_then_live() {
    let s = Server::start(|_| {}).await;
    let key = s.key("r").await;
    let mut client = Resumer::new("r", &key);
    let mut ws = open(&s, &client.query()).await;
    let welcome = next_json(&mut ws).await;
    client.apply(&welcome);
    for i in 1..=3 {
        post(&s, "/push?uid=r", &body("n", &i.to_string())).await;
        let f = next_json(&mut ws).await;
        assert_eq!(f["number"], i);
        client.apply(&f);
    }
    drop(ws);
    eventually("r offline", || async { s.sockets_of("r").await == 0 }).await;
    // Pushed while offline: each 404 says it was stored.
    for i in 4..=7 {
        let r = post(&s, "/push?uid=r", &body("n", &i.to_string())).await;
        assert_eq!(r.assert_error(404), "此用户不在线");
        assert_eq!(r.header("x-push-stored"), Some("1"));
    }
    let mut ws = open(&s, &client.query()).await;
    client.apply(&next_json(&mut ws).await);
    let mut numbers = Vec::new();
    for _ in 0..4 {
        let f = next_json(&mut ws).await;
        numbers.push(f["number"].as_u64().unwrap());
        client.apply(&f);
    }
    assert_eq!(numbers, [4, 5, 6, 7]);
    post(&s, "/push?uid=r", &body("n", "8")).await;
    assert_eq!(next_json(&mut ws).await["number"], 8);
    assert!(client.gaps.is_empty());
}

#[tokio::test]
async fn too_old_a_position_is_told_as_a_gap() {
    let s = Server::start(|c| c.history_size = 2).await;
    let key = s.key("g").await;
    let mut client = Resumer::new("g", &key);
    let mut ws = open(&s, &client.query()).await;
    client.apply(&next_json(&mut ws).await);
    let _keep_stream = s.connect("g").await;
    drop(ws);
    eventually("one socket left", || async { s.sockets_of("g").await == 1 }).await;
    for i in 0..5 {
        s.push("g", &body("n", &i.to_string())).await;
    }
    let mut ws = open(&s, &client.query()).await;
    client.apply(&next_json(&mut ws).await);
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["topic"], "_gap");
    assert_eq!(gap["contents"]["stream"], "user");
    let next = gap["contents"]["next"].as_u64().unwrap();
    let first = next_json(&mut ws).await;
    assert_eq!(
        first["number"].as_u64(),
        Some(next),
        "replay starts where the gap says"
    );
}

#[tokio::test]
async fn seed_sockets_keep_seed_frames_and_bad_resume_input_is_400() {
    let s = Server::start(|_| {}).await;
    let key = s.key("x").await;
    let mut http = s.http().await;
    let k = enc(&key);
    for q in [
        format!("uid=x&access_key={k}&proto=3"),
        format!("uid=x&access_key={k}&since=%7B%7D"),
    ] {
        http.get(&format!("/ws?{q}")).await.assert_error(400);
    }
    let r = http
        .get(&format!("/ws?uid=x&access_key={k}&proto=2&since=notjson"))
        .await;
    r.assert_error(400);
}

/// A TCP relay that can cut every connection through it and refuse new ones for a while: a
/// page's network dropping out.
struct Flaky {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Flaky {
    async fn start(target: std::net::SocketAddr) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let is_down = down.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if is_down.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let mut cuts = cuts.clone();
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Flaky { addr, down, cut }
    }

    fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn come_back(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// The issue's bar: repeated ~2 s outages while a backend pushes 10,000 numbered messages; the
/// client ends with all of them, in order, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_survive_repeated_two_second_outages() {
    const TOTAL: u64 = 10_000;
    let s = Server::start(|c| {
        c.history_size = 20_000;
        c.history_ttl_secs = 120.0;
    })
    .await;
    let flaky = Arc::new(Flaky::start(s.addr).await);
    let key = s.key("mobile").await;

    let client = {
        let flaky = flaky.clone();
        tokio::spawn(async move {
            let mut state = Resumer::new("mobile", &key);
            let mut connects = 0;
            while state.received.len() < TOTAL as usize {
                let url = format!("ws://{}/ws?{}", flaky.addr, state.query());
                let Ok(Ok((mut ws, _))) = tokio::time::timeout(
                    Duration::from_secs(2),
                    tokio_tungstenite::connect_async(url),
                )
                .await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                connects += 1;
                while let Ok(Some(Ok(msg))) =
                    tokio::time::timeout(Duration::from_secs(3), ws.next()).await
                {
                    if let Message::Text(t) = msg {
                        state.apply(&serde_json::from_str(&t).unwrap());
                    }
                    if state.received.len() >= TOTAL as usize {
                        break;
                    }
                }
            }
            (state, connects)
        })
    };

    let outages = {
        let flaky = flaky.clone();
        tokio::spawn(async move {
            let mut count = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                flaky.go_down();
                count += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
                flaky.come_back();
                if count == 3 {
                    return count;
                }
            }
        })
    };

    // The backend pushes steadily (about 1,000/s) through the outages, straight to the server.
    eventually("the client's first connect", || async {
        s.sockets_of("mobile").await == 1
    })
    .await;
    let mut http = s.http().await;
    for i in 1..=TOTAL {
        let r = http
            .push("mobile", &s.password, &body("n", &i.to_string()))
            .await;
        assert!(r.status == 200 || r.status == 404, "{}", r.text());
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let outages = tokio::time::timeout(Duration::from_secs(30), outages)
        .await
        .unwrap()
        .unwrap();
    let (state, connects) = tokio::time::timeout(Duration::from_secs(60), client)
        .await
        .unwrap()
        .unwrap();

    assert!(
        outages >= 3 && connects >= 4,
        "outages {outages}, connects {connects}"
    );
    assert!(state.gaps.is_empty(), "gaps: {:?}", state.gaps);
    let expected: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(state.received.len(), TOTAL as usize);
    assert_eq!(state.received, expected, "every message once, in order");
}

#[tokio::test]
async fn disconnect_closes_every_socket_of_a_uid_with_4011_and_no_one_else() {
    let s = Server::start(|_| {}).await;
    let mut tab1 = s.connect("dan").await;
    let mut tab2 = s.connect("dan").await;
    let mut other = s.connect("eve").await;
    let r = post(&s, "/disconnect?uid=dan", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["number"], 2);
    for ws in [&mut tab1, &mut tab2] {
        assert_eq!(close_code(ws).await, Some(4011.into()));
    }
    eventually("dan offline", || async { s.sockets_of("dan").await == 0 }).await;
    // Eve is untouched.
    let r = s.push("eve", &body("t", "1")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        next_text(&mut other).await,
        r#"{"topic":"t","number":1,"contents":1}"#
    );
    // The backend's password is required; a uid too.
    let r = s
        .http()
        .await
        .request("POST", "/disconnect?uid=dan&password=nope", &[], b"")
        .await;
    r.assert_error(401);
    post(&s, "/disconnect", "").await.assert_error(400);
    let r = s
        .http()
        .await
        .get(&format!(
            "/disconnect?uid=dan&password={}",
            enc(&s.password)
        ))
        .await;
    r.assert_error(405);
}
