//! What the other seeds' users rely on (issue 13), over real sockets: JWT access keys minted by
//! a backend, rooms moved by the server, delivery receipts and push reports.

use crate::common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const JWT_SECRET: &str = "the-backend-and-push-serve-share-this";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT as any backend's library mints it: base64url header and claims, HS256 under `secret`.
fn jwt(secret: &str, header: &Value, claims: &Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{h}.{c}").as_bytes());
    format!(
        "{h}.{c}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn hs256(claims: Value) -> String {
    jwt(JWT_SECRET, &json!({"alg": "HS256", "typ": "JWT"}), &claims)
}

async fn post(s: &Server, target: &str, body: &Value) -> Reply {
    let sep = if target.contains('?') { '&' } else { '?' };
    let target = format!("{target}{sep}password={}", enc(&s.password));
    s.http()
        .await
        .request("POST", &target, &[], body.to_string().as_bytes())
        .await
}

#[tokio::test]
async fn a_page_opens_with_a_jwt_its_backend_minted_and_gets_its_topics() {
    let s = Server::start(|c| c.jwt_secret = Some(JWT_SECRET.into())).await;
    // As seed 000's PHP sample mints it: numeric uid, extra claims, plus the topics it grants.
    let token =
        hs256(json!({"app": "shop", "uid": 71, "exp": now() + 600, "topics": ["auction:341"]}));
    let mut ws = try_connect(&s.ws_url("71", &token)).await.expect("opens");
    let pushed = s.push("71", r#"{"topic":"t","contents":1}"#).await;
    assert_eq!(pushed.status, 200, "{}", pushed.text());
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"topic":"t","number":1,"contents":1}"#
    );
    let published = post(
        &s,
        "/publish",
        &json!({"topic": "auction:341", "contents": 2}),
    )
    .await;
    assert_eq!(published.json()["number"], 1, "{}", published.text());
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"topic":"auction:341","number":1,"contents":2}"#
    );
    // The event stream takes the same token.
    let head = s
        .http()
        .await
        .request(
            "HEAD",
            &format!("/sse?uid=71&access_key={}", enc(&token)),
            &[],
            b"",
        )
        .await;
    assert_eq!(head.status, 200);
}

#[tokio::test]
async fn forged_none_expired_early_and_other_uid_jwts_get_401() {
    let s = Server::start(|c| c.jwt_secret = Some(JWT_SECRET.into())).await;
    let claims = json!({"uid": "alice", "exp": now() + 600});
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let cases = [
        (
            "forged",
            jwt("not-the-secret", &json!({"alg": "HS256"}), &claims),
            "invalid access_key",
        ),
        ("alg none", none, "invalid access_key"),
        (
            "HS512",
            jwt(JWT_SECRET, &json!({"alg": "HS512"}), &claims),
            "invalid access_key",
        ),
        (
            "another uid",
            hs256(json!({"uid": "mallory", "exp": now() + 600})),
            "invalid access_key",
        ),
        (
            "expired",
            hs256(json!({"uid": "alice", "exp": now() - 1})),
            "access_key expired",
        ),
        (
            "not yet valid",
            hs256(json!({"uid": "alice", "exp": now() + 600, "nbf": now() + 3600})),
            "invalid access_key",
        ),
        (
            "no exp",
            hs256(json!({"uid": "alice"})),
            "invalid access_key",
        ),
        (
            "a topic it may not name",
            hs256(json!({"uid": "alice", "exp": now() + 600, "topics": ["a b"]})),
            "invalid access_key",
        ),
    ];
    for (what, token, reason) in cases {
        let refused = try_connect(&s.ws_url("alice", &token)).await.err();
        assert_eq!(refused, Some((401, reason.to_string())), "{what}");
    }
    // Our own keys still work beside JWTs.
    s.connect("alice").await;
}

#[tokio::test]
async fn without_jwt_secret_a_valid_jwt_opens_nothing() {
    let s = Server::start(|_| {}).await;
    let token = hs256(json!({"uid": "alice", "exp": now() + 600}));
    let refused = try_connect(&s.ws_url("alice", &token)).await.err();
    assert_eq!(refused, Some((401, "invalid access_key".to_string())));
}

/// `client/push-serve.js` reads a JWT's `exp` to fetch a fresh key before it expires, as it does
/// for its own keys (run in node, which has the browser's `atob`).
#[tokio::test]
async fn the_browser_client_reads_a_jwts_expiry() {
    let token = hs256(json!({"uid": "alice", "exp": 1_900_000_123, "note": "ü?>"}));
    let script = format!(
        "const P = require({:?}); console.log(P.keyExpiry({token:?}), P.keyExpiry('v1.1795376422.ab'), P.keyExpiry('x.y.z'))",
        concat!(env!("CARGO_MANIFEST_DIR"), "/client/push-serve.js")
    );
    let out = std::process::Command::new("node")
        .args(["-e", &script])
        .output()
        .expect("node runs (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1900000123 1795376422 0"
    );
}

// --- Rooms moved by the server -------------------------------------------------------------

async fn connect_v2(s: &Server, uid: &str) -> (Ws, Value) {
    let key = s.key(uid).await;
    let mut ws = try_connect(&format!("{}&proto=2", s.ws_url(uid, &key)))
        .await
        .expect("opens");
    let welcome: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(welcome["topic"], "_welcome");
    (ws, welcome)
}

async fn next_json(ws: &mut Ws) -> Value {
    serde_json::from_str(&next_text(ws).await).unwrap()
}

/// Publishes `contents` to `topic` until it reaches `sockets` sockets (a move reaches a socket
/// task moments after `/rooms` answers; a seed page has no `_join` to wait for). Returns the
/// contents of the publish that did.
async fn publish_until(s: &Server, topic: &str, sockets: u64) -> i64 {
    let mut n = 0;
    loop {
        n += 1;
        let r = post(s, "/publish", &json!({"topic": topic, "contents": n})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        if r.json()["number"] == sockets {
            return n;
        }
        assert!(n < 500, "the move never reached {sockets} sockets");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_backend_moves_every_live_socket_of_a_uid_into_a_room_and_out() {
    let s = Server::start(|_| {}).await;
    let (mut page, _) = connect_v2(&s, "alice").await;
    let mut seed = s.connect("alice").await;
    let (mut bob, _) = connect_v2(&s, "bob").await;
    let before = post(
        &s,
        "/publish",
        &json!({"topic": "room:1", "contents": "before"}),
    )
    .await;
    assert_eq!(before.json()["number"], 0);

    let moved = post(&s, "/rooms?uid=alice", &json!({"join": ["room:1"]})).await;
    assert_eq!(moved.status, 200, "{}", moved.text());
    assert_eq!(
        moved.json(),
        json!({"topic": "success", "number": 2,
               "contents": {"uid": "alice", "join": ["room:1"], "leave": [], "sockets": 2}})
    );
    // The proto=2 page is told where it starts: after the message published before the move.
    let joined = next_json(&mut page).await;
    assert_eq!(joined["topic"], "_join", "{joined}");
    assert_eq!(joined["number"], 0);
    assert_eq!(joined["contents"]["stream"], "topic:room:1");
    let position = joined["contents"]["position"].as_str().unwrap().to_string();
    assert!(position.ends_with(":1"), "{position}");

    // Both of alice's sockets get the room's messages from now on; bob's does not.
    let n = publish_until(&s, "room:1", 2).await;
    assert_eq!(
        next_text(&mut seed).await,
        format!(r#"{{"topic":"room:1","number":1,"contents":{n}}}"#)
    );
    let mut last = 0;
    while last < n {
        let frame = next_json(&mut page).await;
        assert_eq!(frame["stream"], "topic:room:1", "{frame}");
        assert_eq!(
            frame["number"].as_i64().unwrap(),
            frame["contents"].as_i64().unwrap() + 1
        );
        last = frame["contents"].as_i64().unwrap();
    }

    // Out again: the page is told, and nothing more of the room reaches either socket.
    let left = post(&s, "/rooms?uid=alice", &json!({"leave": ["room:1"]})).await;
    assert_eq!(left.status, 200, "{}", left.text());
    assert_eq!(
        next_json(&mut page).await,
        json!({"topic": "_leave", "number": 0, "contents": {"stream": "topic:room:1"}})
    );
    publish_until(&s, "room:1", 0).await;
    // Bob never was in the room: his next frame is his own push.
    s.push("bob", r#"{"topic":"mine","contents":0}"#).await;
    assert_eq!(next_json(&mut bob).await["topic"], "mine");
    // Alice's sockets go on with their own stream.
    s.push("alice", r#"{"topic":"mine","contents":0}"#).await;
    assert_eq!(next_json(&mut page).await["topic"], "mine");
    let mut frame = next_text(&mut seed).await;
    while frame.contains("room:1") {
        frame = next_text(&mut seed).await;
    }
    assert_eq!(frame, r#"{"topic":"mine","number":1,"contents":0}"#);
}

#[tokio::test]
async fn topics_of_the_key_stay_and_followers_may_be_told_who_joined() {
    let s = Server::start(|_| {}).await;
    let key = s
        .http()
        .await
        .get(&format!(
            "/access?uid=bob&topics=room:2&password={}",
            enc(&s.password)
        ))
        .await
        .json()["contents"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bob = try_connect(&format!("{}&proto=2", s.ws_url("bob", &key)))
        .await
        .unwrap();
    assert_eq!(next_json(&mut bob).await["topic"], "_welcome");
    // A topic of bob's key cannot be taken away by a move: no _leave, and it still arrives.
    let r = post(&s, "/rooms?uid=bob", &json!({"leave": ["room:2"]})).await;
    assert_eq!(r.status, 200);
    // Alice joins room:2 with a notice: bob, a follower, is told who joined.
    let (mut alice, _) = connect_v2(&s, "alice").await;
    let r = post(
        &s,
        "/rooms?uid=alice",
        &json!({"join": ["room:2"], "notify": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let notice = next_json(&mut bob).await;
    assert_eq!(notice["topic"], "_joined", "{notice}");
    assert_eq!(notice["contents"], json!({"uid": "alice"}));
    assert_eq!(notice["stream"], "topic:room:2");
    assert_eq!(next_json(&mut alice).await["topic"], "_join");
}

#[tokio::test]
async fn bad_room_moves_get_the_envelope() {
    let s = Server::start(|c| c.max_topics_per_key = 2).await;
    for (target, body, status) in [
        ("/rooms?uid=alice", json!({"join": ["a b"]}), 400),
        ("/rooms?uid=alice", json!({"join": ["a", "b", "c"]}), 400),
        ("/rooms?uid=alice", json!({}), 400),
        ("/rooms?uid=alice", json!({"join": "room"}), 400),
        ("/rooms", json!({"join": ["room"]}), 400),
    ] {
        post(&s, target, &body).await.assert_error(status);
    }
    let mut http = s.http().await;
    http.request("POST", "/rooms?uid=alice", &[], br#"{"join":["r"]}"#)
        .await
        .assert_error(401);
    http.get(&format!("/rooms?uid=alice&password={}", enc(&s.password)))
        .await
        .assert_error(405);
    // A uid with no socket: nothing to move, and that is not an error.
    let r = post(&s, "/rooms?uid=nobody", &json!({"join": ["room"]})).await;
    assert_eq!((r.status, r.json()["number"].clone()), (200, json!(0)));
}

// --- Delivery receipts and push reports ----------------------------------------------------

async fn get(s: &Server, target: &str) -> Reply {
    let sep = if target.contains('?') { '&' } else { '?' };
    let target = format!("{target}{sep}password={}", enc(&s.password));
    s.http().await.get(&target).await
}

async fn send(ws: &mut Ws, text: String) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
        .await
        .unwrap();
}

/// Waits until the report of `id` shows `acks` acks, and returns it.
async fn report_with_acks(s: &Server, id: &str, acks: u64) -> Value {
    let target = format!("/report/push/{id}?uids=1");
    let mut last = Value::Null;
    for _ in 0..500 {
        let r = get(s, &target).await;
        assert_eq!(r.status, 200, "{}", r.text());
        last = r.json();
        if last["number"] == acks {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the report never showed {acks} acks: {last}");
}

#[tokio::test]
async fn pages_ack_a_push_with_a_receipt_and_the_report_counts_them() {
    let s = Server::start(|_| {}).await;
    let (mut first, _) = connect_v2(&s, "alice").await;
    let (mut second, _) = connect_v2(&s, "alice").await;
    let mut seed = s.connect("alice").await;
    let body =
        json!({"topic": "order", "contents": {"id": 7}, "uids": ["alice", "bob"], "receipt": true});
    let r = post(&s, "/push", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let reply = r.json();
    let id = reply["contents"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("x-push-id"), Some(id.as_str()));
    assert_eq!(reply["number"], 3);
    assert_eq!(reply["contents"]["sockets"], 3);
    assert_eq!(reply["contents"]["expect_acks"], 3);
    // proto=2 frames carry the id; the seed page's frame is the seed's, byte for byte.
    for page in [&mut first, &mut second] {
        let frame = next_json(page).await;
        assert_eq!(frame["id"], id.as_str(), "{frame}");
        assert_eq!(frame["contents"], json!({"id": 7}));
    }
    assert_eq!(
        next_text(&mut seed).await,
        r#"{"topic":"order","number":1,"contents":{"id":7}}"#
    );
    send(&mut first, json!({"ack": id}).to_string()).await;
    // A page that acks twice counts once, and is not told off for it.
    send(&mut second, json!({"ack": id}).to_string()).await;
    send(&mut second, json!({"ack": id}).to_string()).await;
    let report = report_with_acks(&s, &id, 2).await;
    let contents = &report["contents"];
    assert_eq!(report["topic"], "report");
    assert_eq!(contents["id"], id.as_str());
    assert_eq!(contents["target"], json!({"uids": ["alice", "bob"]}));
    assert_eq!(contents["topic"], "order");
    assert_eq!(contents["sockets"], 3);
    assert_eq!(contents["acks"], 2);
    assert_eq!(contents["offline"], json!(["bob"]));
    assert_eq!(contents["ack_uids"], json!(["alice"]));
    assert!(contents["created"].as_u64().unwrap() > 1_700_000_000);
    // Without uids=1 the acking uids are left out.
    let plain = get(&s, &format!("/report/push/{id}")).await.json();
    assert!(plain["contents"].get("ack_uids").is_none(), "{plain}");
    // The second page's repeat brought no _nack: its next frame is the next push.
    s.push("alice", r#"{"topic":"next","contents":0}"#).await;
    assert_eq!(next_json(&mut second).await["topic"], "next");
}

#[tokio::test]
async fn acks_of_unknown_ids_or_of_another_uids_message_are_refused_and_count_nothing() {
    let s = Server::start(|_| {}).await;
    let (mut alice, _) = connect_v2(&s, "alice").await;
    let (mut bob, _) = connect_v2(&s, "bob").await;
    let body = json!({"topic": "t", "contents": 1, "receipt": true});
    let r = post(&s, "/push?uid=alice", &body).await;
    let id = r.json()["contents"]["id"].as_str().unwrap().to_string();
    assert_eq!(next_json(&mut alice).await["id"], id.as_str());
    // Bob acks alice's message: refused.
    send(&mut bob, json!({"ack": id}).to_string()).await;
    let nack = next_json(&mut bob).await;
    assert_eq!(nack["topic"], "_nack", "{nack}");
    assert_eq!(nack["contents"]["id"], id.as_str());
    assert_eq!(
        nack["contents"]["reason"],
        "this message was not for this socket"
    );
    // Ids that were never issued, in the right form or not.
    for unknown in ["0123456789abcdef0123456789abcdef", "not-an-id"] {
        send(&mut alice, json!({"ack": unknown}).to_string()).await;
        let nack = next_json(&mut alice).await;
        assert_eq!(nack["topic"], "_nack");
        assert_eq!(
            nack["contents"],
            json!({"id": unknown, "reason": "unknown message id (expired or never issued)"})
        );
    }
    // Other page frames are still ignored.
    send(&mut alice, "hello".into()).await;
    send(&mut alice, json!({"ack": 5}).to_string()).await;
    let report = get(&s, &format!("/report/push/{id}")).await.json();
    assert_eq!(report["contents"]["acks"], 0, "{report}");
    // A topic's message is acked by its followers only.
    let r = post(&s, "/rooms?uid=alice", &json!({"join": ["room:3"]})).await;
    assert_eq!(r.status, 200);
    assert_eq!(next_json(&mut alice).await["topic"], "_join");
    let r = post(
        &s,
        "/publish",
        &json!({"topic": "room:3", "contents": 2, "receipt": true}),
    )
    .await;
    assert_eq!(r.json()["contents"]["expect_acks"], 1, "{}", r.text());
    let room_id = r.json()["contents"]["id"].as_str().unwrap().to_string();
    assert_eq!(next_json(&mut alice).await["id"], room_id.as_str());
    send(&mut bob, json!({"ack": room_id}).to_string()).await;
    assert_eq!(next_json(&mut bob).await["topic"], "_nack");
    send(&mut alice, json!({"ack": room_id}).to_string()).await;
    let report = report_with_acks(&s, &room_id, 1).await;
    assert_eq!(report["contents"]["target"], json!({"topic": "room:3"}));
    assert_eq!(report["contents"]["ack_uids"], json!(["alice"]));
}

/// Issue 18, 6b: a tab of the uid opened after the push never got the message, so its ack is
/// refused and counts nothing; the tab it was queued to still acks it.
#[tokio::test]
async fn an_ack_counts_only_from_a_page_the_message_was_queued_to() {
    let s = Server::start(|_| {}).await;
    let (mut a, _) = connect_v2(&s, "tess").await;
    let body = json!({"topic": "t", "contents": 1, "receipt": true});
    let r = post(&s, "/push?uid=tess", &body).await;
    assert_eq!(r.json()["contents"]["sockets"], 1, "{}", r.text());
    let id = r.json()["contents"]["id"].as_str().unwrap().to_string();
    assert_eq!(next_json(&mut a).await["id"], id.as_str());
    // Tab b of the same uid, opened afterwards, never got it.
    let (mut b, _) = connect_v2(&s, "tess").await;
    send(&mut b, json!({"ack": id}).to_string()).await;
    let nack = next_json(&mut b).await;
    assert_eq!(nack["topic"], "_nack", "{nack}");
    assert_eq!(
        nack["contents"],
        json!({"id": id, "reason": "this message was not for this socket"})
    );
    let report = get(&s, &format!("/report/push/{id}")).await.json();
    assert_eq!(
        (&report["contents"]["sockets"], &report["contents"]["acks"]),
        (&json!(1), &json!(0)),
        "{report}"
    );
    // The tab it was queued to acks it.
    send(&mut a, json!({"ack": id}).to_string()).await;
    let report = report_with_acks(&s, &id, 1).await;
    assert_eq!(report["contents"]["ack_uids"], json!(["tess"]));
}

/// A page may ack what it got at connect: a message its resume replayed, or one from its uid's
/// offline inbox. A resumed page gets no inbox, so it may not ack (nor unbox) an inbox message.
#[tokio::test]
async fn pages_ack_what_their_replay_or_inbox_brought_and_only_that() {
    let s = Server::start(|_| {}).await;
    // Replay: the page that got it live goes away; its resumed successor gets it again.
    let (mut a, welcome) = connect_v2(&s, "ursa").await;
    let body = json!({"topic": "t", "contents": 1, "receipt": true});
    let id = post(&s, "/push?uid=ursa", &body).await.json()["contents"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(next_json(&mut a).await["id"], id.as_str());
    drop(a);
    let since = enc(&welcome["contents"]["streams"].to_string());
    let key = s.key("ursa").await;
    let resume_url = format!("{}&proto=2&since={since}", s.ws_url("ursa", &key));
    let mut resumed = try_connect(&resume_url).await.expect("resumes");
    assert_eq!(next_json(&mut resumed).await["topic"], "_welcome");
    let replayed = next_json(&mut resumed).await;
    assert_eq!(replayed["id"], id.as_str(), "{replayed}");
    send(&mut resumed, json!({"ack": id}).to_string()).await;
    report_with_acks(&s, &id, 1).await;

    // Inbox: kept for an offline uid, then a fresh page gets it.
    let body = json!({"topic": "t", "contents": 2, "inbox": 600});
    let r = post(&s, "/push?uid=vera", &body).await;
    assert_eq!(r.json()["contents"]["inbox"]["kept"], json!(["vera"]));
    let boxed = r.json()["contents"]["id"].as_str().unwrap().to_string();
    let (mut fresh, welcome) = fresh_page(&s, "vera").await;
    let inbox = inbox_before_probe(&s, &mut fresh, "vera").await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0]["id"], boxed.as_str());
    // A page that resumes got no inbox: its ack is refused and the message stays kept.
    let since = enc(&welcome["contents"]["streams"].to_string());
    let key = s.key("vera").await;
    let url = format!("{}&proto=2&since={since}", s.ws_url("vera", &key));
    let mut resumed = try_connect(&url).await.expect("resumes");
    assert_eq!(next_json(&mut resumed).await["topic"], "_welcome");
    assert_eq!(next_json(&mut resumed).await["topic"], "probe");
    send(&mut resumed, json!({"ack": boxed}).to_string()).await;
    let nack = next_json(&mut resumed).await;
    assert_eq!(
        nack["contents"],
        json!({"id": boxed, "reason": "this message was not for this socket"})
    );
    let (mut other, _) = fresh_page(&s, "vera").await;
    assert_eq!(inbox_before_probe(&s, &mut other, "vera").await.len(), 1);
    // The page that got it from the inbox acks it: counted, and no later page gets it.
    send(&mut fresh, json!({"ack": boxed}).to_string()).await;
    let report = report_with_acks(&s, &boxed, 1).await;
    assert_eq!(report["contents"]["ack_uids"], json!(["vera"]));
    let (mut last, _) = fresh_page(&s, "vera").await;
    assert!(inbox_before_probe(&s, &mut last, "vera").await.is_empty());
}

#[tokio::test]
async fn reports_answer_offline_pushes_expire_and_refuse_bad_requests() {
    let s = Server::start(|c| c.receipt_ttl_secs = 1).await;
    // Nobody online: the seed's 404, with the id of a report that says who was offline.
    let r = post(
        &s,
        "/push?uid=carol",
        &json!({"topic": "t", "contents": 1, "receipt": true}),
    )
    .await;
    r.assert_error(404);
    let id = r.header("x-push-id").expect("an id on the 404").to_string();
    let report = get(&s, &format!("/report/push/{id}")).await.json();
    assert_eq!(report["contents"]["offline"], json!(["carol"]));
    assert_eq!(report["contents"]["sockets"], 0);
    // A broadcast's report.
    let r = post(
        &s,
        "/broadcast",
        &json!({"topic": "t", "contents": 1, "receipt": true}),
    )
    .await;
    let broadcast = r.json()["contents"]["id"].as_str().unwrap().to_string();
    let report = get(&s, &format!("/report/push/{broadcast}")).await.json();
    assert_eq!(report["contents"]["target"], "broadcast");
    // Without receipt, replies stay the seed's.
    let r = post(&s, "/broadcast", &json!({"topic": "t", "contents": 1})).await;
    assert_eq!(r.json()["contents"], "推送成功");
    assert_eq!(r.header("x-push-id"), None);
    // Bad requests.
    get(&s, "/report/push/0123456789abcdef0123456789abcdef")
        .await
        .assert_error(404);
    get(&s, "/report/push/NOT-HEX").await.assert_error(404);
    let mut http = s.http().await;
    http.get(&format!("/report/push/{id}"))
        .await
        .assert_error(401);
    let target = format!("/report/push/{id}?password={}", enc(&s.password));
    http.request("POST", &target, &[], b"")
        .await
        .assert_error(405);
    // After receipt_ttl_secs the report is gone.
    eventually("the report to expire", || async {
        get(&s, &format!("/report/push/{id}")).await.status == 404
    })
    .await;
}

/// `examples/receipts.php`, run by the real `php`: it mints a JWT for the page, pushes with a
/// receipt, waits for the page's ack and reads the report, and moves the page into a room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_php_example_backend_uses_jwts_receipts_reports_and_rooms() {
    let s = Server::start(|c| c.jwt_secret = Some(JWT_SECRET.into())).await;
    let php = |args: &[&str]| {
        let out = std::process::Command::new("php")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/receipts.php"
            ))
            .args(args)
            .env("PUSH_HOST", s.addr.to_string())
            .env("PUSH_SERVE_PASSWORD", &s.password)
            .env("PUSH_JWT_SECRET", JWT_SECRET)
            .output()
            .expect("php runs (.ci/run installs php-cli and php-curl)");
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success(),
            "php {args:?}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let token = php(&["jwt", "buyer"]);
    let mut page = try_connect(&format!("{}&proto=2", s.ws_url("buyer", &token)))
        .await
        .expect("the PHP-minted JWT opens a socket");
    assert_eq!(next_json(&mut page).await["topic"], "_welcome");
    let sent: Value =
        serde_json::from_str(&php(&["push", "buyer", "order", r#"{"id":9}"#])).unwrap();
    assert_eq!(sent["expect_acks"], 1);
    let id = sent["id"].as_str().unwrap().to_string();
    let frame = next_json(&mut page).await;
    assert_eq!(frame["id"], id.as_str());
    send(&mut page, json!({"ack": id}).to_string()).await;
    let report: Value = serde_json::from_str(&php(&["wait", &id, "1", "10"])).unwrap();
    assert_eq!(report["acks"], 1);
    assert_eq!(report["ack_uids"], json!(["buyer"]));
    let moved: Value =
        serde_json::from_str(&php(&["rooms", "buyer", "join", "auction:9"])).unwrap();
    assert_eq!(moved["number"], 1);
    assert_eq!(next_json(&mut page).await["topic"], "_join");
}

// --- Offline inbox ---------------------------------------------------------------------------

/// Opens a fresh `proto=2` page of `uid` (no `since`) and returns it with its `_welcome`.
async fn fresh_page(s: &Server, uid: &str) -> (Ws, Value) {
    connect_v2(s, uid).await
}

/// The frames a page gets before a live probe pushed to its uid now: its inbox, if any.
async fn inbox_before_probe(s: &Server, ws: &mut Ws, uid: &str) -> Vec<Value> {
    let probe = post(
        s,
        &format!("/push?uid={uid}"),
        &json!({"topic": "probe", "contents": 0}),
    )
    .await;
    assert_eq!(probe.status, 200, "{}", probe.text());
    let mut inbox = Vec::new();
    loop {
        let frame = next_json(ws).await;
        if frame["topic"] == "probe" {
            assert_eq!(frame["stream"], "user", "the probe is live: {frame}");
            return inbox;
        }
        inbox.push(frame);
    }
}

#[tokio::test]
async fn an_offline_uids_inbox_reaches_its_fresh_pages_first_until_one_acks() {
    let s = Server::start(|_| {}).await;
    let (mut dave, _) = fresh_page(&s, "dave").await;
    // dave is online and gets it live; erin is offline: it is kept for her.
    let body =
        json!({"topic": "order", "contents": {"n": 1}, "uids": ["dave", "erin"], "inbox": 3600});
    let r = post(&s, "/push", &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json()["contents"].clone();
    assert_eq!(first["inbox"], json!({"kept": ["erin"], "full": []}));
    assert_eq!(first["sockets"], 1);
    let id1 = first["id"].as_str().unwrap().to_string();
    assert_eq!(next_json(&mut dave).await["id"], id1.as_str());
    // Only offline: the seed's 404 becomes a 200 that says it was kept.
    let r = post(
        &s,
        "/push?uid=erin",
        &json!({"topic": "order", "contents": {"n": 2}, "inbox": 60}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["number"], 0);
    assert_eq!(r.json()["contents"]["inbox"]["kept"], json!(["erin"]));
    let id2 = r.json()["contents"]["id"].as_str().unwrap().to_string();

    // A fresh page of erin: its inbox first, oldest first, marked, then live messages.
    let (mut a, welcome) = fresh_page(&s, "erin").await;
    let inbox = inbox_before_probe(&s, &mut a, "erin").await;
    assert_eq!(inbox.len(), 2, "{inbox:?}");
    for (frame, (id, n)) in inbox.iter().zip([(&id1, 1), (&id2, 2)]) {
        assert_eq!(frame["topic"], "order");
        assert_eq!(frame["contents"], json!({ "n": n }));
        assert_eq!(frame["id"], id.as_str());
        assert_eq!(frame["inbox"], true);
        assert_eq!(frame["number"], 0);
        assert!(frame.get("stream").is_none(), "not a position: {frame}");
    }
    // A seed page cannot ack: it never gets the inbox.
    let mut seed = s.connect("erin").await;
    s.push("erin", r#"{"topic":"live","contents":3}"#).await;
    assert_eq!(
        next_text(&mut seed).await,
        r#"{"topic":"live","number":1,"contents":3}"#
    );
    assert_eq!(next_json(&mut a).await["topic"], "live");
    // A second fresh page gets the unacked messages too.
    let (mut b, _) = fresh_page(&s, "erin").await;
    assert_eq!(inbox_before_probe(&s, &mut b, "erin").await.len(), 2);
    assert_eq!(next_json(&mut a).await["topic"], "probe");

    // Page a acks the first: no later page of erin gets it again.
    send(&mut a, json!({"ack": id1}).to_string()).await;
    let report = report_with_acks(&s, &id1, 1).await;
    assert_eq!(report["contents"]["offline"], json!(["erin"]));
    assert_eq!(report["contents"]["ack_uids"], json!(["erin"]));
    let (mut c, _) = fresh_page(&s, "erin").await;
    let inbox = inbox_before_probe(&s, &mut c, "erin").await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0]["id"], id2.as_str());
    // A page that resumes (with `since`) had its inbox already: it gets none of it.
    let since = enc(&welcome["contents"]["streams"].to_string());
    let key = s.key("erin").await;
    let mut resumed = try_connect(&format!("{}&proto=2&since={since}", s.ws_url("erin", &key)))
        .await
        .expect("resumes");
    assert_eq!(next_json(&mut resumed).await["topic"], "_welcome");
    // (It first replays the user stream's live messages it missed: live, probes.)
    loop {
        let frame = next_json(&mut resumed).await;
        assert!(frame.get("inbox").is_none(), "{frame}");
        if frame["topic"] == "probe" && frame["number"] == 3 {
            break;
        }
    }
    // An ack from another uid's page is refused and leaves erin's inbox as it was.
    send(&mut dave, json!({"ack": id2}).to_string()).await;
    let nack = next_json(&mut dave).await;
    assert_eq!(nack["topic"], "_nack");
    assert_eq!(
        nack["contents"]["reason"],
        "this message was not for this socket"
    );
    let (mut d, _) = fresh_page(&s, "erin").await;
    assert_eq!(inbox_before_probe(&s, &mut d, "erin").await.len(), 1);
}

#[tokio::test]
async fn an_overflowing_inbox_keeps_no_more_and_bad_inbox_requests_get_the_envelope() {
    let s = Server::start(|c| {
        c.inbox_max_per_uid = 2;
        c.inbox_max = 3;
        c.inbox_max_ttl_secs = 600;
    })
    .await;
    let keep = |uid: &'static str, n: u32| {
        let s = &s;
        async move {
            let body = json!({"topic": "t", "contents": n, "inbox": 600});
            let r = post(s, &format!("/push?uid={uid}"), &body).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["contents"]["inbox"].clone()
        }
    };
    let kept = |uid: &str| json!({"kept": [uid], "full": []});
    let full = |uid: &str| json!({"kept": [], "full": [uid]});
    assert_eq!(keep("frank", 1).await, kept("frank"));
    assert_eq!(keep("frank", 2).await, kept("frank"));
    // frank's inbox is full: the third is not kept (nothing older is dropped for it).
    assert_eq!(keep("frank", 3).await, full("frank"));
    assert_eq!(keep("gus", 4).await, kept("gus"));
    // Every inbox together is full.
    assert_eq!(keep("hank", 5).await, full("hank"));
    let (mut frank, _) = fresh_page(&s, "frank").await;
    let inbox = inbox_before_probe(&s, &mut frank, "frank").await;
    let contents: Vec<&Value> = inbox.iter().map(|f| &f["contents"]).collect();
    assert_eq!(contents, [&json!(1), &json!(2)]);
    let (mut hank, _) = fresh_page(&s, "hank").await;
    assert!(inbox_before_probe(&s, &mut hank, "hank").await.is_empty());
    // An ack makes room again (for an offline uid: hank is online now and gets it live).
    send(&mut frank, json!({"ack": inbox[0]["id"]}).to_string()).await;
    eventually("the ack to make room in the inbox", || async {
        let body = json!({"topic": "t", "contents": 6, "inbox": 600});
        let r = post(&s, "/push?uid=ivan", &body).await;
        r.json()["contents"]["inbox"]["kept"] == json!(["ivan"])
    })
    .await;

    // Bad requests: nothing is sent or kept.
    for (target, body) in [
        (
            "/push?uid=frank",
            json!({"topic": "t", "contents": 1, "inbox": 0}),
        ),
        (
            "/push?uid=frank",
            json!({"topic": "t", "contents": 1, "inbox": 601}),
        ),
        (
            "/publish",
            json!({"topic": "t", "contents": 1, "inbox": 60}),
        ),
        (
            "/broadcast",
            json!({"topic": "t", "contents": 1, "inbox": 60}),
        ),
    ] {
        let r = post(&s, target, &body).await;
        let reason = r.assert_error(400);
        assert!(reason.contains("inbox"), "{target} {body}: {reason}");
    }
    post(
        &s,
        "/push?uid=frank",
        &json!({"topic": "t", "contents": 1, "inbox": "soon"}),
    )
    .await
    .assert_error(400);
}

#[tokio::test]
async fn an_inbox_message_expires_after_its_seconds() {
    let s = Server::start(|_| {}).await;
    let body = json!({"topic": "t", "contents": 1, "inbox": 1});
    let r = post(&s, "/push?uid=ivy", &body).await;
    assert_eq!(r.json()["contents"]["inbox"]["kept"], json!(["ivy"]));
    let (mut page, _) = fresh_page(&s, "ivy").await;
    assert_eq!(inbox_before_probe(&s, &mut page, "ivy").await.len(), 1);
    eventually("ivy's inbox message to expire", || async {
        let (mut page, _) = fresh_page(&s, "ivy").await;
        inbox_before_probe(&s, &mut page, "ivy").await.is_empty()
    })
    .await;
}

/// Pushes kept one after another (each answered before the next is sent) reach a fresh page in
/// that order, however many fall within one millisecond (they came out sorted by their random
/// ids: 40 of 50 out of place on one node, 8 of 50 with Redis).
#[tokio::test]
async fn inbox_order_is_the_order_the_pushes_were_answered() {
    let s = Server::start(|_| {}).await;
    let uid = format!("order-{}", rand_u64());
    for n in 0..50 {
        let r = post(
            &s,
            &format!("/push?uid={uid}"),
            &json!({"topic": "o", "contents": n, "inbox": 600}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (mut page, _) = fresh_page(&s, &uid).await;
    let got: Vec<Value> = inbox_before_probe(&s, &mut page, &uid)
        .await
        .iter()
        .map(|frame| frame["contents"].clone())
        .collect();
    let sent: Vec<Value> = (0..50).map(|n| json!(n)).collect();
    assert_eq!(got, sent);
}
