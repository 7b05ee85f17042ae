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
