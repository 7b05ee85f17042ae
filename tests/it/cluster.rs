//! Several nodes on one Redis (`redis_url`): cross-node delivery in the seed's frames,
//! cluster-wide numbering and presence, resume after losing a node, Redis outages, and
//! idempotent retries. Each test starts its own `redis-server` on a free port; without
//! `redis-server` installed, they say so and skip (`.ci/run` installs it).

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

macro_rules! redis_or_skip {
    () => {
        match Redis::start().await {
            Some(r) => r,
            None => return,
        }
    };
}

async fn online(s: &Server, uid: &str) -> u64 {
    let r = s
        .http()
        .await
        .get(&format!("/online?uid={uid}&password={}", enc(&s.password)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["contents"]["sockets"].as_u64().unwrap()
}

#[tokio::test]
async fn push_publish_and_broadcast_reach_sockets_on_every_node_in_seed_frames() {
    let redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    let b = node(&redis, |_| {}).await;
    // Two tabs of alice on B, one on A; bob (topic `news`) on B.
    let mut on_b1 = b.connect("alice").await;
    let mut on_b2 = b.connect("alice").await;
    let mut on_a = a.connect("alice").await;
    let r = b
        .http()
        .await
        .get(&format!(
            "/access?uid=bob&topics=news&password={}",
            enc(&b.password)
        ))
        .await;
    let bob_key = r.json()["contents"].as_str().unwrap().to_string();
    let mut bob = b.connect_with_key("bob", &bob_key).await;

    let r = a.push("alice", &body("order", r#"{"id":7}"#)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["number"], 3, "sockets on both nodes are counted");
    for ws in [&mut on_b1, &mut on_b2, &mut on_a] {
        assert_eq!(
            next_text(ws).await,
            r#"{"topic":"order","number":1,"contents":{"id":7}}"#
        );
    }
    let r = post(&a, "/publish", &body("news", r#""hi""#)).await;
    assert_eq!(r.json()["number"], 1);
    assert_eq!(
        next_text(&mut bob).await,
        r#"{"topic":"news","number":1,"contents":"hi"}"#
    );
    let r = post(&b, "/broadcast", &body("notice", "1")).await;
    assert_eq!(r.json()["number"], 4);
    for ws in [&mut on_b1, &mut on_b2, &mut on_a, &mut bob] {
        assert_eq!(
            next_text(ws).await,
            r#"{"topic":"notice","number":1,"contents":1}"#
        );
    }
    assert_eq!(online(&a, "alice").await, 3);
    assert_eq!(online(&b, "bob").await, 1);
    let stats = |s: &Server| {
        let s = Server::external(s.addr, &s.password);
        async move {
            let target = format!("/stats?password={}", enc(&s.password));
            s.http().await.get(&target).await.json()["contents"].clone()
        }
    };
    assert_eq!(stats(&a).await["sockets"], 1, "this node");
    // Other nodes' figures are at most one heartbeat (5 s) old.
    eventually("cluster totals", || async {
        let c = stats(&a).await["cluster"].clone();
        c["nodes"] == 2 && c["sockets"] == 4
    })
    .await;

    // Each Redis call is timed on /metrics.
    let auth = format!("Bearer {}", a.password);
    let metrics = a
        .http()
        .await
        .request("GET", "/metrics", &[("Authorization", &auth)], b"")
        .await
        .text();
    let calls = metrics
        .lines()
        .find(|l| l.starts_with(r#"push_serve_broker_call_seconds_count{op="publish"}"#))
        .unwrap_or_else(|| panic!("no publish timing in:\n{metrics}"));
    assert!(calls.ends_with(" 2"), "{calls}");

    // Offline everywhere: the seed's 404, and the message kept for resuming pages.
    let r = b.push("nobody", &body("t", "1")).await;
    assert_eq!(r.assert_error(404), "此用户不在线");
    assert_eq!(r.header("x-push-stored"), Some("1"));
    // Sockets that leave stop counting at once.
    drop((on_b1, on_b2));
    eventually("alice's B tabs to leave", || async {
        online(&a, "alice").await == 1
    })
    .await;
}

#[tokio::test]
async fn numbering_is_cluster_wide_and_in_order_per_stream() {
    let redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    let b = node(&redis, |_| {}).await;
    let key = a.key("carol").await;
    let mut client = Resumer::new("carol", &key);
    let mut ws = client.connect(&b).await;
    // Two backends push to the same uid through different nodes, concurrently.
    let send = |s: &Server, from: u64| {
        let s = Server::external(s.addr, &s.password);
        async move {
            let mut http = s.http().await;
            for i in from..from + 100 {
                let r = http
                    .push("carol", &s.password, &body("n", &i.to_string()))
                    .await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }
    };
    tokio::join!(send(&a, 0), send(&b, 1000));
    assert_eq!(client.read_until(&mut ws, 200).await, None);
    let numbers: Vec<u64> = client.received.iter().map(|(_, n, _)| *n).collect();
    assert_eq!(
        numbers,
        (1..=200).collect::<Vec<_>>(),
        "one sequence, no hole"
    );
    // Each backend's pushes arrive in the order it made them.
    for base in [0, 1000] {
        let mine: Vec<u64> = client
            .received
            .iter()
            .map(|(_, _, c)| c.as_u64().unwrap())
            .filter(|c| (base..base + 100).contains(c))
            .collect();
        assert_eq!(mine, (base..base + 100).collect::<Vec<_>>());
    }
}

/// The issue's scenario: a page's node is SIGKILLed in the middle of a 3,000-message stream;
/// the page resumes on another node and gets every message, in order, once, with no `_gap`.
#[tokio::test]
async fn page_resumes_on_another_node_after_its_node_is_killed() {
    let redis = redis_or_skip!();
    // History covers the whole stream, so nothing can fall out of it while the page moves.
    let a = node(&redis, |c| c.history_size = 3000).await;
    let mut b = BinaryNode::start(&redis, "killed").await;
    let key = a.key("dora").await;
    let mut client = Resumer::new("dora", &key);
    let mut ws = client.connect(&b.server).await;
    let backend = tokio::spawn({
        let a = Server::external(a.addr, &a.password);
        async move {
            let mut http = a.http().await;
            for i in 1..=3000u64 {
                let r = http
                    .push("dora", &a.password, &body("n", &i.to_string()))
                    .await;
                // While the page is between nodes the uid is offline: kept for it anyway.
                assert!(r.status == 200 || r.status == 404, "{}", r.text());
            }
        }
    });
    assert_eq!(client.read_until(&mut ws, 1000).await, None);
    b.sigkill();
    assert_eq!(client.read_until(&mut ws, 3000).await, Some(1006));
    let mut ws = client.connect(&a).await;
    backend.await.unwrap();
    assert_eq!(client.read_until(&mut ws, 3000).await, None);
    assert!(client.gaps.is_empty(), "no gap: {:?}", client.gaps);
    let contents: Vec<u64> = client
        .received
        .iter()
        .map(|(_, _, c)| c.as_u64().unwrap())
        .collect();
    assert_eq!(contents, (1..=3000).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_graceful_restart_of_a_node_is_no_gap() {
    let redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    let mut b = BinaryNode::start(&redis, "restarted").await;
    let key = a.key("erin").await;
    let mut client = Resumer::new("erin", &key);
    let mut ws = client.connect(&b.server).await;
    a.push("erin", &body("n", "1")).await;
    assert_eq!(client.read_until(&mut ws, 1).await, None);
    assert!(b.sigterm().await.success());
    assert_eq!(client.read_until(&mut ws, 2).await, Some(1001));
    for i in 2..=5 {
        a.push("erin", &body("n", &i.to_string())).await;
    }
    let b2 = BinaryNode::start(&redis, "restarted-again").await;
    let mut ws = client.connect(&b2.server).await;
    assert_eq!(client.read_until(&mut ws, 5).await, None);
    assert!(client.gaps.is_empty(), "{:?}", client.gaps);
    let numbers: Vec<u64> = client.received.iter().map(|(_, n, _)| *n).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_dead_node_leaves_online_and_stats_within_30_seconds() {
    let redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    let mut b = BinaryNode::start(&redis, "dead").await;
    let _ws = b.server.connect("fred").await;
    eventually("fred online", || async { online(&a, "fred").await == 1 }).await;
    b.sigkill();
    let killed = Instant::now();
    // Its liveness key expires in Redis, which nothing announces: ask until it is gone.
    eventually_within(
        "the dead node to stop counting",
        Duration::from_secs(30),
        || async { online(&a, "fred").await == 0 },
    )
    .await;
    let stats = a
        .http()
        .await
        .get(&format!("/stats?password={}", enc(&a.password)))
        .await
        .json();
    assert_eq!(stats["contents"]["cluster"]["nodes"], 1, "{stats}");
    // A push to the dead node's user is not counted as delivered.
    assert_eq!(a.push("fred", &body("t", "1")).await.status, 404);
    eprintln!("dead node stopped counting after {:?}", killed.elapsed());
}

#[tokio::test]
async fn redis_outage_is_503_then_recovery_with_a_gap_for_what_was_lost() {
    let mut redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    let key = a.key("gina").await;
    let mut client = Resumer::new("gina", &key);
    let mut ws = client.connect(&a).await;
    a.push("gina", &body("n", "1")).await;
    assert_eq!(client.read_until(&mut ws, 1).await, None);

    redis.kill();
    let started = Instant::now();
    let r = a.push("gina", &body("n", "2")).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    r.assert_error(503);
    assert!(r.header("retry-after").is_some());
    for path in ["/publish", "/broadcast"] {
        post(&a, path, &body("news", "2")).await.assert_error(503);
    }
    // Keys need no Redis; new sockets do.
    assert_eq!(
        a.http()
            .await
            .get(&format!("/access?uid=x&password={}", enc(&a.password)))
            .await
            .status,
        200
    );
    let refused = tokio_tungstenite::connect_async(client.url(a.addr)).await;
    assert!(refused.is_err(), "no socket while the node cannot receive");

    // Back, but empty (no persistence): the page is told to resume, and gets a gap.
    redis.restart().await;
    assert_eq!(client.read_until(&mut ws, 2).await, Some(4010));
    wait_ready(&a).await;
    let mut ws = client.connect(&a).await;
    let r = a.push("gina", &body("n", "3")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(client.read_until(&mut ws, 2).await, None);
    assert_eq!(client.received[1].2, 3);
    // Redis lost every stream (the broadcast one too): each resumed stream is told.
    let gapped: Vec<&str> = client
        .gaps
        .iter()
        .map(|g| g["contents"]["stream"].as_str().unwrap())
        .collect();
    assert!(gapped.contains(&"user"), "{:?}", client.gaps);
}

#[tokio::test]
async fn a_durable_redis_restart_loses_nothing() {
    let Some(mut redis) = Redis::start_with(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ])
    .await
    else {
        return;
    };
    let a = node(&redis, |_| {}).await;
    let key = a.key("hana").await;
    let mut client = Resumer::new("hana", &key);
    let mut ws = client.connect(&a).await;
    a.push("hana", &body("n", "1")).await;
    assert_eq!(client.read_until(&mut ws, 1).await, None);
    drop(ws);
    eventually("hana offline", || async { online(&a, "hana").await == 0 }).await;
    a.push("hana", &body("n", "2")).await;
    redis.restart().await;
    wait_ready(&a).await;
    let mut ws = client.connect(&a).await;
    assert_eq!(client.read_until(&mut ws, 2).await, None);
    assert!(client.gaps.is_empty(), "{:?}", client.gaps);
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_safe() {
    let redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    let b = node(&redis, |_| {}).await;
    let mut ws = b.connect("ivan").await;
    let target = format!("/push?uid=ivan&password={}", enc(&a.password));
    let push = |s: &Server, idem: &'static str, contents: &'static str| {
        let target = target.clone();
        let s = Server::external(s.addr, &s.password);
        async move {
            let body = body("t", contents);
            s.http()
                .await
                .request(
                    "POST",
                    &target,
                    &[("Idempotency-Key", idem)],
                    body.as_bytes(),
                )
                .await
        }
    };
    let first = push(&a, "order-7", "7").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("idempotent-replayed"), None);
    // The retry (even through another node) sends nothing and answers the same.
    let again = push(&b, "order-7", "7").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["number"], first.json()["number"]);
    push(&a, "order-8", "8").await;
    // In order on the stream: had the retry gone out, it would come between these two.
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"topic":"t","number":1,"contents":7}"#
    );
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"topic":"t","number":1,"contents":8}"#
    );
    let bad: Value = push(&a, "", "9").await.json();
    assert_eq!(bad["topic"], "error");
    push(&a, "", "9").await.assert_error(400);
}

#[tokio::test]
async fn disconnect_reaches_the_uids_sockets_on_every_node() {
    let redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    let b = node(&redis, |_| {}).await;
    let mut on_a = a.connect("kim").await;
    let mut on_b = b.connect("kim").await;
    let mut bystander = b.connect("lee").await;
    let r = post(&a, "/disconnect?uid=kim", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["number"], 2, "sockets on both nodes");
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(close_code(ws).await, Some(4011.into()));
    }
    eventually("kim offline everywhere", || async {
        online(&a, "kim").await == 0
    })
    .await;
    assert_eq!(a.push("lee", &body("t", "1")).await.status, 200);
    assert_eq!(
        next_text(&mut bystander).await,
        r#"{"topic":"t","number":1,"contents":1}"#
    );
}

#[tokio::test]
async fn a_room_move_reaches_the_uids_sockets_on_every_node_and_the_room_reaches_them() {
    let redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    let b = node(&redis, |_| {}).await;
    let key = a.key("kim").await;
    let mut on_b = connect_v2(&b, "kim", &key).await;
    let r = post(&a, "/rooms?uid=kim", r#"{"join":["room:5"]}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let joined: Value = serde_json::from_str(&next_text(&mut on_b).await).unwrap();
    assert_eq!(joined["topic"], "_join", "{joined}");
    // Node b announced its follower of the room: a publish on node a reaches it.
    let r = post(&a, "/publish", &body("room:5", "7")).await;
    assert_eq!(r.json()["number"], 1, "{}", r.text());
    let frame: Value = serde_json::from_str(&next_text(&mut on_b).await).unwrap();
    assert_eq!(frame["stream"], "topic:room:5");
    assert_eq!(frame["contents"], 7);
}

#[tokio::test]
async fn receipts_are_cluster_wide_an_ack_on_one_node_counts_in_the_report_on_another() {
    let redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    let b = node(&redis, |_| {}).await;
    let key = a.key("kim").await;
    let mut on_b = connect_v2(&b, "kim", &key).await;
    let r = post(
        &a,
        "/push?uid=kim",
        r#"{"topic":"t","contents":1,"receipt":true,"uids":["lee"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["contents"]["id"].as_str().unwrap().to_string();
    let frame: Value = serde_json::from_str(&next_text(&mut on_b).await).unwrap();
    assert_eq!(
        frame["id"],
        id.as_str(),
        "the id crosses nodes in the payload"
    );
    use futures_util::SinkExt;
    let ack = format!(r#"{{"ack":"{id}"}}"#);
    on_b.send(tokio_tungstenite::tungstenite::Message::Text(ack.into()))
        .await
        .unwrap();
    let report_on_a = format!("/report/push/{id}?uids=1&password={}", enc(&a.password));
    eventually("the ack on node b to count on node a", || {
        let target = report_on_a.clone();
        let a = &a;
        async move { a.http().await.get(&target).await.json()["number"] == 1 }
    })
    .await;
    let report = a.http().await.get(&report_on_a).await.json();
    assert_eq!(report["contents"]["ack_uids"], serde_json::json!(["kim"]));
    assert_eq!(report["contents"]["offline"], serde_json::json!(["lee"]));
    assert_eq!(report["contents"]["sockets"], 1);
    // An unknown id is refused on node b too.
    let bad = r#"{"ack":"00000000000000000000000000000000"}"#;
    on_b.send(tokio_tungstenite::tungstenite::Message::Text(bad.into()))
        .await
        .unwrap();
    let nack: Value = serde_json::from_str(&next_text(&mut on_b).await).unwrap();
    assert_eq!(nack["topic"], "_nack");
}

#[tokio::test]
async fn the_inbox_is_cluster_wide_kept_on_one_node_read_and_acked_on_another() {
    let redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    let b = node(&redis, |_| {}).await;
    let r = post(
        &a,
        "/push?uid=nia",
        r#"{"topic":"t","contents":{"n":1},"inbox":600}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["contents"]["inbox"]["kept"],
        serde_json::json!(["nia"])
    );
    let id = r.json()["contents"]["id"].as_str().unwrap().to_string();
    let key = b.key("nia").await;
    let mut on_b = connect_v2(&b, "nia", &key).await;
    let frame: Value = serde_json::from_str(&next_text(&mut on_b).await).unwrap();
    assert_eq!(
        (frame["id"].as_str(), frame["inbox"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    use futures_util::SinkExt;
    let ack = format!(r#"{{"ack":"{id}"}}"#);
    on_b.send(tokio_tungstenite::tungstenite::Message::Text(ack.into()))
        .await
        .unwrap();
    // Once acked on b, a fresh page on a gets nothing from the inbox: its first frame after
    // `_welcome` is a live push.
    eventually(
        "the ack on node b to empty nia's inbox for node a",
        || async {
            let key = a.key("nia").await;
            let mut on_a = connect_v2(&a, "nia", &key).await;
            let r = post(&a, "/push?uid=nia", r#"{"topic":"live","contents":0}"#).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let frame: Value = serde_json::from_str(&next_text(&mut on_a).await).unwrap();
            frame["topic"] == "live"
        },
    )
    .await;
}

/// `method` on `/pool/<name>` of node `s` with the password.
/// An upgrade from the version that kept a pool's document at `<prefix>:pool:{<name>}` loses
/// no pool: each is moved under its topic stream's hash tag when first used.
#[tokio::test]
async fn pools_under_the_old_key_name_are_moved_on_first_use() {
    let redis = redis_or_skip!();
    for command in old_pool_commands("up") {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        redis.cmd(&args).await.unwrap();
    }
    let a = node(&redis, |c| c.redis_prefix = "up".into()).await;
    let b = node(&redis, |c| c.redis_prefix = "up".into()).await;
    old_pools_are_moved_on_first_use(&a, &b).await;
    for (name, ..) in OLD_POOLS {
        let old = redis.cmd(&["EXISTS", &format!("up:pool:{{{name}}}")]).await;
        assert_eq!(old.as_deref(), Some(":0\r\n"), "{name}");
        let now = redis.cmd(&["EXISTS", &format!("up:{{t:{name}}}:p")]).await;
        let want = if name == "gone" { ":0\r\n" } else { ":1\r\n" };
        assert_eq!(now.as_deref(), Some(want), "{name}");
    }
}

/// A change takes no lock: what an older node left when it died holding one (or a request
/// dropped between its calls left) does not hold the pool. Before, this change waited 2 s and
/// got 503, and every change did until the lock expired 10 s later.
#[tokio::test]
async fn a_lock_left_by_a_node_that_died_mid_change_does_not_hold_the_pool() {
    let redis = redis_or_skip!();
    let a = node(&redis, |c| c.redis_prefix = "dead".into()).await;
    let r = pool(&a, "PUT", "bids", "[]").await;
    assert_eq!(r.status, 200, "{}", r.text());
    for lock in ["dead:pool:{bids}:lock", "dead:{t:bids}:p:lock"] {
        redis.cmd(&["SET", lock, "7", "PX", "60000"]).await.unwrap();
    }
    let r = pool(&a, "POST", "bids", "1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["contents"]["event"], "bids:append");
    assert_eq!(
        pool(&a, "GET", "bids", "").await.json()["contents"],
        serde_json::json!([1])
    );
}

/// Backends that drop their pool requests at any moment (before, during or after the change)
/// leave each change whole or not at all: every value in the document reached the pool's
/// followers once, in order, and nothing else did.
#[tokio::test]
async fn pool_requests_dropped_mid_way_leave_whole_changes_or_none() {
    let redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    let b = node(&redis, |_| {}).await;
    let r = pool(&a, "PUT", "drops", "[]").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let key = a
        .http()
        .await
        .get(&format!(
            "/access?uid=w&topics=drops&password={}",
            enc(&a.password)
        ))
        .await
        .json()["contents"]
        .as_str()
        .unwrap()
        .to_string();
    let mut page = connect_v2(&a, "w", &key).await;
    let snapshot: Value = serde_json::from_str(&next_text(&mut page).await).unwrap();
    assert_eq!(snapshot["contents"], serde_json::json!([]), "{snapshot}");
    let droppers: Vec<_> = (0..40u64)
        .map(|i| {
            let addr = if i % 2 == 0 { a.addr } else { b.addr };
            let target = format!("/pool/drops?password={}", enc(&a.password));
            tokio::spawn(async move {
                let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let req = request_bytes("POST", &target, &[], i.to_string().as_bytes());
                tcp.write_all(&req).await.unwrap();
                // Gone before, while or after the node changes the pool.
                tokio::time::sleep(Duration::from_micros(rand_u64() % 3000)).await;
            })
        })
        .collect();
    for d in droppers {
        d.await.unwrap();
    }
    let r = pool(&b, "POST", "drops", "-1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut seen = Vec::new();
    loop {
        let change: Value = serde_json::from_str(&next_text(&mut page).await).unwrap();
        assert_eq!(change["topic"], "drops:append", "{change}");
        let value = change["contents"].as_i64().unwrap();
        seen.push(value);
        if value == -1 {
            break;
        }
    }
    let stored: Vec<i64> =
        serde_json::from_value(pool(&a, "GET", "drops", "").await.json()["contents"].clone())
            .unwrap();
    assert_eq!(stored, seen);
}

#[tokio::test]
async fn a_data_pool_is_cluster_wide_and_pages_joining_on_any_node_miss_no_change() {
    let redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    let b = node(&redis, |_| {}).await;
    let r = pool(&a, "PUT", "bids:1", "[]").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        pool(&b, "GET", "bids:1", "").await.json()["contents"],
        serde_json::json!([])
    );
    // Two backends append through different nodes while pages open on both.
    const EACH: u64 = 20;
    let writers: Vec<_> = [(a.addr, 0), (b.addr, 1000)]
        .into_iter()
        .map(|(addr, base)| {
            let s = Server::external(addr, &a.password);
            tokio::spawn(async move {
                for i in 0..EACH {
                    let r = pool(&s, "POST", "bids:1", &(base + i).to_string()).await;
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    let mut pages = Vec::new();
    for i in 0..4 {
        let on = if i % 2 == 0 { &a } else { &b };
        let r = on
            .http()
            .await
            .get(&format!(
                "/access?uid=p{i}&topics=bids:1&password={}",
                enc(&on.password)
            ))
            .await;
        let key = r.json()["contents"].as_str().unwrap().to_string();
        pages.push(connect_v2(on, &format!("p{i}"), &key).await);
    }
    for w in writers {
        w.await.unwrap();
    }
    let stored: Vec<u64> =
        serde_json::from_value(pool(&b, "GET", "bids:1", "").await.json()["contents"].clone())
            .unwrap();
    assert_eq!(stored.len() as u64, 2 * EACH, "{stored:?}");
    // Every page rebuilds exactly the stored document: snapshot, then each later append once.
    for ws in &mut pages {
        let snapshot: Value = serde_json::from_str(&next_text(ws).await).unwrap();
        assert_eq!(snapshot["topic"], "bids:1:snapshot", "{snapshot}");
        let mut doc: Vec<u64> = serde_json::from_value(snapshot["contents"].clone()).unwrap();
        while doc.len() < stored.len() {
            let change: Value = serde_json::from_str(&next_text(ws).await).unwrap();
            assert_eq!(change["topic"], "bids:1:append", "{change}");
            doc.push(change["contents"].as_u64().unwrap());
        }
        assert_eq!(doc, stored);
    }
    let r = pool(&b, "DELETE", "bids:1", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    pool(&a, "GET", "bids:1", "").await.assert_error(404);
}

/// Issue 19's colliding pair on one Redis: uid `a`'s idempotency record for key `Q}:m` was the
/// same Redis key as the metadata of uid `a}:i:Q` (the push answered 503 WRONGTYPE, the other
/// uid's page got 503 and the node left the cluster). Names are escaped in key names now.
#[tokio::test]
async fn uids_that_spell_other_uids_keys_do_not_collide() {
    let redis = redis_or_skip!();
    let a = node(&redis, |_| {}).await;
    colliding_uids_both_work(&a).await;
}
