//! Data pools (issue 13, seed 000): a topic that also holds a JSON document, changed with REST
//! verbs whose events its followers get, after a snapshot of the document, with no race.

use crate::common;

use common::*;
use serde_json::{json, Value};

/// `method` on `/pool/<name>` with the password and `body`.
async fn pool(s: &Server, method: &str, name: &str, body: &str) -> Reply {
    let target = format!("/pool/{name}?password={}", enc(&s.password));
    s.http()
        .await
        .request(method, &target, &[], body.as_bytes())
        .await
}

/// A `proto=2` page of `uid` whose key grants `topics`; returns it and its `_welcome`.
async fn page(s: &Server, uid: &str, topics: &str) -> (Ws, Value) {
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
    let key = r.json()["contents"].as_str().unwrap().to_string();
    let mut ws = try_connect(&format!("{}&proto=2", s.ws_url(uid, &key)))
        .await
        .expect("opens");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["topic"], "_welcome");
    (ws, welcome)
}

async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

fn seq(position: &Value) -> u64 {
    position
        .as_str()
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_page_gets_the_pools_document_first_then_each_change() {
    let s = Server::start(|_| {}).await;
    let r = pool(&s, "PUT", "cart:1", r#"{"items":[]}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["contents"],
        json!({"event": "cart:1:add", "sockets": 0})
    );
    let got = pool(&s, "GET", "cart:1", "").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["contents"], json!({"items": []}));

    let (mut a, welcome) = page(&s, "ann", "cart:1").await;
    let at = seq(&welcome["contents"]["streams"]["topic:cart:1"]);
    let snapshot = next_json(&mut a).await;
    assert_eq!(snapshot["topic"], "cart:1:snapshot");
    assert_eq!(snapshot["contents"], json!({"items": []}));
    assert_eq!(snapshot["stream"], "topic:cart:1");
    assert_eq!(snapshot["number"], at);

    let r = pool(&s, "PUT", "cart:1", r#"{"items":[1]}"#).await;
    assert_eq!(
        r.json()["contents"],
        json!({"event": "cart:1:update", "sockets": 1})
    );
    let update = next_json(&mut a).await;
    assert_eq!(
        (update["topic"].as_str(), update["number"].as_u64()),
        (Some("cart:1:update"), Some(at + 1))
    );
    assert_eq!(update["contents"], json!({"items": [1]}));
    assert_eq!(pool(&s, "DELETE", "cart:1", "").await.status, 200);
    let deleted = next_json(&mut a).await;
    assert_eq!(
        (deleted["topic"].as_str(), &deleted["contents"]),
        (Some("cart:1:delete"), &Value::Null)
    );
    pool(&s, "GET", "cart:1", "").await.assert_error(404);

    // POST appends (to a new pool: `add` with the whole document).
    let r = pool(&s, "POST", "cart:1", "5").await;
    assert_eq!(r.json()["contents"]["event"], "cart:1:add");
    assert_eq!(next_json(&mut a).await["contents"], json!([5]));
    let r = pool(&s, "POST", "cart:1", r#"{"sku":6}"#).await;
    assert_eq!(r.json()["contents"]["event"], "cart:1:append");
    let appended = next_json(&mut a).await;
    assert_eq!(
        (appended["topic"].as_str(), &appended["contents"]),
        (Some("cart:1:append"), &json!({"sku": 6}))
    );
    assert_eq!(
        pool(&s, "GET", "cart:1", "").await.json()["contents"],
        json!([5, {"sku": 6}])
    );

    // A second page now starts from the document as it is.
    let (mut b, _) = page(&s, "bea", "cart:1,news").await;
    let snapshot = next_json(&mut b).await;
    assert_eq!(
        (snapshot["topic"].as_str(), &snapshot["contents"]),
        (Some("cart:1:snapshot"), &json!([5, {"sku": 6}]))
    );
    // A topic that is no pool brings no snapshot: the next frame is live.
    pool(&s, "POST", "cart:1", "7").await;
    assert_eq!(next_json(&mut b).await["contents"], 7);
    assert_eq!(next_json(&mut a).await["contents"], 7);
}

#[tokio::test]
async fn pages_joining_while_the_pool_changes_miss_nothing_and_see_nothing_twice() {
    let s = Server::start(|_| {}).await;
    pool(&s, "PUT", "bids", "[]").await;
    const N: u64 = 40;
    let writer = {
        let s = Server::external(s.addr, &s.password);
        tokio::spawn(async move {
            for i in 0..N {
                let r = pool(&s, "POST", "bids", &i.to_string()).await;
                assert_eq!(r.status, 200, "{}", r.text());
            }
        })
    };
    let mut pages = Vec::new();
    for i in 0..6 {
        pages.push(page(&s, &format!("p{i}"), "bids").await.0);
    }
    writer.await.unwrap();
    let expected: Vec<u64> = (0..N).collect();
    for ws in &mut pages {
        let snapshot = next_json(ws).await;
        assert_eq!(snapshot["topic"], "bids:snapshot");
        let mut doc: Vec<u64> = serde_json::from_value(snapshot["contents"].clone()).unwrap();
        let mut last = snapshot["number"].as_u64().unwrap();
        while (doc.len() as u64) < N {
            let change = next_json(ws).await;
            assert_eq!(change["topic"], "bids:append", "{change}");
            assert!(
                change["number"].as_u64().unwrap() > last,
                "{change} after {last}"
            );
            last = change["number"].as_u64().unwrap();
            doc.push(change["contents"].as_u64().unwrap());
        }
        assert_eq!(doc, expected);
    }
}

#[tokio::test]
async fn bad_pool_requests_get_the_envelope_and_change_nothing() {
    let s = Server::start(|c| {
        c.pool_max_bytes = 64;
        c.pool_max = 2;
    })
    .await;
    assert_eq!(pool(&s, "PUT", "p1", r#"{"a":1}"#).await.status, 200);
    // A document over pool_max_bytes, by PUT or by POST.
    let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(64));
    let reason = pool(&s, "PUT", "p1", &big).await.assert_error(413);
    assert!(reason.contains("pool_max_bytes"), "{reason}");
    pool(&s, "PUT", "p2", "[]").await;
    let reason = pool(&s, "POST", "p2", &format!(r#""{}""#, "y".repeat(70)))
        .await
        .assert_error(413);
    assert!(reason.contains("pool_max_bytes"), "{reason}");
    assert_eq!(
        pool(&s, "GET", "p1", "").await.json()["contents"],
        json!({"a": 1})
    );
    assert_eq!(
        pool(&s, "GET", "p2", "").await.json()["contents"],
        json!([])
    );
    // POST to a document that is no array.
    pool(&s, "POST", "p1", "1").await.assert_error(409);
    // More than pool_max pools.
    let reason = pool(&s, "PUT", "p3", "1").await.assert_error(507);
    assert!(reason.contains("pool_max"), "{reason}");
    // Missing, malformed, unauthorised.
    pool(&s, "GET", "nope", "").await.assert_error(404);
    pool(&s, "DELETE", "nope", "").await.assert_error(404);
    pool(&s, "PUT", "p1", "{not json").await.assert_error(400);
    pool(&s, "PUT", "bad%20name", "1").await.assert_error(400);
    pool(&s, "PATCH", "p1", "1").await.assert_error(405);
    s.http()
        .await
        .request("PUT", "/pool/p1", &[], b"2")
        .await
        .assert_error(401);
    assert_eq!(
        pool(&s, "GET", "p1", "").await.json()["contents"],
        json!({"a": 1})
    );
}

#[tokio::test]
async fn a_page_the_backend_moves_into_a_pool_gets_its_document_after_the_join() {
    let s = Server::start(|_| {}).await;
    let (mut a, _) = page(&s, "ann", "news").await;
    pool(&s, "PUT", "room:5", r#"{"seats":[1,2]}"#).await;
    pool(&s, "POST", "room:5:log", r#""opened""#).await;
    let target = format!("/rooms?uid=ann&password={}", enc(&s.password));
    let r = s
        .http()
        .await
        .request(
            "POST",
            &target,
            &[],
            br#"{"join":["room:5","room:5:log","plain"]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Each joined pool: its `_join`, then right after it its document, exact at a position at
    // or after the join's; a topic that is no pool: only its `_join`. (Rooms are joined in
    // any order.)
    let mut docs = std::collections::BTreeMap::new();
    let mut plain = 0;
    for _ in 0..3 {
        let joined = next_json(&mut a).await;
        assert_eq!(joined["topic"], "_join", "{joined}");
        let stream = joined["contents"]["stream"].as_str().unwrap().to_string();
        if stream == "topic:plain" {
            plain += 1;
            continue;
        }
        let name = stream.strip_prefix("topic:").unwrap().to_string();
        let snapshot = next_json(&mut a).await;
        assert_eq!(snapshot["topic"], format!("{name}:snapshot"), "{snapshot}");
        assert!(snapshot["number"].as_u64().unwrap() >= seq(&joined["contents"]["position"]));
        docs.insert(name, snapshot["contents"].clone());
    }
    assert_eq!(plain, 1);
    assert_eq!(
        docs,
        [
            ("room:5".to_string(), json!({"seats": [1, 2]})),
            ("room:5:log".to_string(), json!(["opened"]))
        ]
        .into()
    );
    pool(&s, "PUT", "room:5", r#"{"seats":[]}"#).await;
    let update = next_json(&mut a).await;
    assert_eq!(
        (update["topic"].as_str(), &update["contents"]),
        (Some("room:5:update"), &json!({"seats": []}))
    );
}

/// `pool_max_bytes` applies on a reload: a document the old bound took is refused under the
/// new one (a reload once said "applied" and kept the old bound).
#[tokio::test]
async fn a_reload_changes_the_largest_document() {
    let s = Server::start(|_| {}).await;
    let doc = format!("{{\"text\":\"{}\"}}", "x".repeat(1000));
    assert_eq!(pool(&s, "PUT", "big", &doc).await.status, 200);
    let outcome = s.reload(|c| c.pool_max_bytes = 200).await.unwrap();
    assert_eq!(outcome.applied, ["pool_max_bytes"]);
    pool(&s, "PUT", "big", &doc).await.assert_error(413);
    assert_eq!(
        pool(&s, "PUT", "big", r#"{"text":"short"}"#).await.status,
        200
    );
}
