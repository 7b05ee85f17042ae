//! Nodes on a Redis Cluster (`redis_cluster`): three masters and three replicas started here
//! with `redis-cli --cluster create`. Cross-node delivery over sharded pub/sub, cluster-wide
//! presence, resume after a node is SIGKILLed, a master failover in the middle of a stream,
//! and uids that would collide in key names. What every feature does on any Redis is the
//! suites' re-run with `PUSH_SERVE_TEST_REDIS_CLUSTER` (see `.ci/run`).

use crate::common;

use std::time::Duration;

use common::cluster::*;
use common::*;

macro_rules! cluster_or_skip {
    () => {
        match RedisCluster::start().await {
            Some(r) => r,
            None => return,
        }
    };
}

async fn online(s: &Server, uid: &str) -> u64 {
    let r = s
        .http()
        .await
        .get(&format!(
            "/online?uid={}&password={}",
            enc(uid),
            enc(&s.password)
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["contents"]["sockets"].as_u64().unwrap()
}

#[tokio::test]
async fn pushes_reach_every_node_and_presence_is_cluster_wide() {
    let cluster = cluster_or_skip!();
    let a = cluster_node(&cluster, |_| {}).await;
    let b = cluster_node(&cluster, |_| {}).await;
    let mut on_a = a.connect("alice").await;
    let mut on_b = b.connect("alice").await;
    // Many uids, so their streams spread over every master's slots.
    let mut others = Vec::new();
    for i in 0..20 {
        others.push((i, b.connect(&format!("u{i}")).await));
    }
    eventually("alice's sockets on both nodes counted", || async {
        online(&a, "alice").await == 2
    })
    .await;

    let r = a.push("alice", &body("order", r#"{"id":7}"#)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["number"], 2, "sockets on both nodes are counted");
    for ws in [&mut on_a, &mut on_b] {
        assert_eq!(
            next_text(ws).await,
            r#"{"topic":"order","number":1,"contents":{"id":7}}"#
        );
    }
    for (i, ws) in &mut others {
        let r = a.push(&format!("u{i}"), &body("t", &i.to_string())).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            next_text(ws).await,
            format!(r#"{{"topic":"t","number":1,"contents":{i}}}"#)
        );
    }
    // A broadcast reaches every socket on both nodes.
    let r = post(&b, "/broadcast", &body("all", "1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        next_text(&mut on_a).await,
        r#"{"topic":"all","number":1,"contents":1}"#
    );
    assert_eq!(
        next_text(&mut on_b).await,
        r#"{"topic":"all","number":1,"contents":1}"#
    );

    // A socket gone on one node: the other node's count follows, and so does the push's.
    drop(on_b);
    eventually("alice's closed socket to stop counting", || async {
        online(&b, "alice").await == 1
    })
    .await;
    let r = b.push("alice", &body("order", "8")).await;
    assert_eq!(r.json()["number"], 1, "{}", r.text());
    assert_eq!(
        next_text(&mut on_a).await,
        r#"{"topic":"order","number":1,"contents":8}"#
    );

    let stats = b
        .http()
        .await
        .get(&format!("/stats?password={}", enc(&b.password)))
        .await
        .json();
    assert_eq!(stats["contents"]["cluster"]["nodes"], 2, "{stats}");
}

/// Issue 19's colliding pair: uid `a`'s idempotency record for key `Q}:m` and the metadata of
/// uid `a}:i:Q` were one Redis key. Escaped, both uids keep working and the node stays ready.
#[tokio::test]
async fn uids_that_spell_other_keys_do_not_collide() {
    let cluster = cluster_or_skip!();
    let a = cluster_node(&cluster, |_| {}).await;
    colliding_uids_both_work(&a).await;
}

/// An upgrade loses no pool on a Redis Cluster either, where a document's old key and its new
/// one are in different slots: each is moved (read, written, deleted) when first used.
#[tokio::test]
async fn pools_under_the_old_key_name_are_moved_on_first_use() {
    let cluster = cluster_or_skip!();
    for command in old_pool_commands("up") {
        let master = cluster.master_of(&command[1]).await;
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        cluster.nodes[master].cmd(&args).await.unwrap();
    }
    let a = cluster_node(&cluster, |c| c.redis_prefix = "up".into()).await;
    let b = cluster_node(&cluster, |c| c.redis_prefix = "up".into()).await;
    old_pools_are_moved_on_first_use(&a, &b).await;
    for (name, ..) in OLD_POOLS {
        let old = format!("up:pool:{{{name}}}");
        let master = cluster.master_of(&old).await;
        let gone = cluster.nodes[master].cmd(&["EXISTS", &old]).await;
        assert_eq!(gone.as_deref(), Some(":0\r\n"), "{name}");
    }
}

/// A page's node is SIGKILLed in the middle of a stream; the page resumes on another node and
/// gets every message, in order, once, with no `_gap`.
#[tokio::test]
async fn a_page_resumes_on_another_node_after_its_node_is_killed() {
    let cluster = cluster_or_skip!();
    let a = cluster_node(&cluster, |c| c.history_size = 1000).await;
    let mut b = BinaryNode::start_with(&cluster.yaml(), "killed-on-cluster").await;
    let key = a.key("dora").await;
    let mut client = Resumer::new("dora", &key);
    let mut ws = client.connect(&b.server).await;
    let backend = tokio::spawn({
        let a = Server::external(a.addr, &a.password);
        async move {
            let mut http = a.http().await;
            for i in 1..=1000u64 {
                let r = http
                    .push("dora", &a.password, &body("n", &i.to_string()))
                    .await;
                assert!(r.status == 200 || r.status == 404, "{}", r.text());
            }
        }
    });
    assert_eq!(client.read_until(&mut ws, 300).await, None);
    b.sigkill();
    assert_eq!(client.read_until(&mut ws, 1000).await, Some(1006));
    let mut ws = client.connect(&a).await;
    backend.await.unwrap();
    assert_eq!(client.read_until(&mut ws, 1000).await, None);
    assert!(client.gaps.is_empty(), "no gap: {:?}", client.gaps);
    let contents: Vec<u64> = client
        .received
        .iter()
        .map(|(_, _, c)| c.as_u64().unwrap())
        .collect();
    assert_eq!(contents, (1..=1000).collect::<Vec<_>>());
}

/// The master that holds a page's stream is SIGKILLed while a backend publishes to it; its
/// replica takes over. Publishes in between get 503 (never a silent loss), the page goes on
/// with the stream, nothing reaches it twice, and anything it cannot be given is announced by
/// a `_gap` (a promoted replica may lack the last writes: the stream starts a new generation).
#[tokio::test]
async fn a_master_failover_during_a_stream_loses_nothing_silently() {
    let mut cluster = cluster_or_skip!();
    let a = cluster_node(&cluster, |c| c.history_size = 1000).await;
    let b = cluster_node(&cluster, |_| {}).await;
    let key = a.key("erin").await;
    let mut client = Resumer::new("erin", &key);
    let mut ws = client.connect(&a).await;
    let master = cluster.master_of("{u:erin}").await;

    let backend = tokio::spawn({
        let b = Server::external(b.addr, &b.password);
        async move {
            let mut accepted = Vec::new();
            let mut refused = 0;
            let mut i = 0u64;
            // Until 100 pushes went through after the first refusal (the failover).
            let mut after = 0;
            while after < 100 {
                i += 1;
                let r = b.push("erin", &body("n", &i.to_string())).await;
                match r.status {
                    200 => {
                        accepted.push(i);
                        if refused > 0 {
                            after += 1;
                        }
                    }
                    503 => refused += 1,
                    other => panic!("push {i}: {other} {}", r.text()),
                }
                assert!(i < 20_000, "the cluster did not recover");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (accepted, refused)
        }
    });
    assert_eq!(client.read_until(&mut ws, 100).await, None);
    cluster.nodes[master].kill();
    let (accepted, refused) = loop {
        tokio::select! {
            done = tokio::time::timeout(Duration::from_secs(60), async {
                while !backend.is_finished() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }) => {
                done.expect("the backend finishes within 60 s");
                break backend.await.unwrap();
            }
            code = client.read_until(&mut ws, usize::MAX) => {
                // The node made the page resync (or lost it): come back with positions.
                assert!(code.is_some());
                ws = loop {
                    if let Some(ws) = client.try_connect(&a).await {
                        break ws;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
            }
        }
    };
    assert!(refused > 0, "the failover was seen by the backend");
    // The last accepted push is on its way; read until it arrives.
    let last = *accepted.last().unwrap();
    let mut rounds = 0;
    while !client
        .received
        .iter()
        .any(|(_, _, c)| c.as_u64() == Some(last))
    {
        rounds += 1;
        assert!(rounds < 20, "the page never got push {last}");
        let want = client.received.len() + 1;
        if let Some(_code) = client.read_until(&mut ws, want).await {
            ws = loop {
                if let Some(ws) = client.try_connect(&a).await {
                    break ws;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
        }
    }
    let got: Vec<u64> = client
        .received
        .iter()
        .filter_map(|(_, _, c)| c.as_u64())
        .collect();
    let mut seen = std::collections::HashSet::new();
    for n in &got {
        assert!(seen.insert(*n), "push {n} reached the page twice: {got:?}");
    }
    let missing: Vec<u64> = accepted
        .iter()
        .copied()
        .filter(|n| !seen.contains(n))
        .collect();
    assert!(
        missing.is_empty() || !client.gaps.is_empty(),
        "accepted pushes {missing:?} were lost without a _gap"
    );
    eprintln!(
        "failover: {} accepted, {refused} refused (503), {} missing, gaps {:?}",
        accepted.len(),
        missing.len(),
        client.gaps
    );
}
