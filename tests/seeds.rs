//! What the other seeds' users rely on (issue 13), over real sockets: JWT access keys minted by
//! a backend, rooms moved by the server, delivery receipts and push reports.

mod common;

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
