//! The admin page's server side over real sockets: the page is one self-contained file with a
//! strict Content-Security-Policy, and its two JSON endpoints take the password and report what
//! really happened: sockets, messages and deliveries, and refused requests with their reason and
//! client address but never a password or key. `tests/it/browser.rs` drives the page itself.

use crate::common;

use base64::Engine;
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

async fn admin_json(s: &Server, what: &str) -> Value {
    let bearer = format!("Bearer {}", s.password);
    let r = s
        .http()
        .await
        .request(
            "GET",
            &format!("/admin/{what}"),
            &[("Authorization", &bearer)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["contents"].clone()
}

/// The `sha256-…` CSP source of the text between `open` and `close` in `page`.
fn csp_hash(page: &str, open: &str, close: &str) -> String {
    let start = page.find(open).unwrap() + open.len();
    let end = start + page[start..].find(close).unwrap();
    let digest = Sha256::digest(&page.as_bytes()[start..end]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[tokio::test]
async fn admin_page_is_one_file_that_only_talks_to_this_server() {
    let s = Server::start(|_| {}).await;
    let r = s.http().await.get("/admin").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let page = r.text();
    // No CDN, no other file: nothing is loaded from anywhere (the SVG namespace is a name).
    for outside in ["<script src", "<link", "@import", "https://", "url("] {
        assert!(!page.contains(outside), "the page loads {outside}");
    }
    assert_eq!(page.matches("<script>").count(), 1);
    assert_eq!(page.matches("<style>").count(), 1);
    // Only its own script and style run, by hash; it can only fetch from this server and
    // cannot be framed.
    let csp = r
        .header("content-security-policy")
        .expect("a CSP")
        .to_string();
    assert!(csp.contains(&format!(
        "script-src {}",
        csp_hash(&page, "<script>", "</script>")
    )));
    assert!(csp.contains(&format!(
        "style-src {}",
        csp_hash(&page, "<style>", "</style>")
    )));
    for directive in [
        "default-src 'none'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    s.http()
        .await
        .request("POST", "/admin", &[], b"")
        .await
        .assert_error(405);
}

#[tokio::test]
async fn series_follow_sockets_messages_and_deliveries() {
    let s = Server::start(|_| {}).await;
    s.http().await.get("/admin/series").await.assert_error(401);
    let now = admin_json(&s, "series").await["now"].clone();
    assert_eq!(
        (now["sockets"].as_u64(), now["messages"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(now["ready"], true);

    let mut tab1 = s.connect("alice").await;
    let mut tab2 = s.connect("alice").await;
    assert_eq!(
        s.push("alice", r#"{"topic":"t","contents":1}"#)
            .await
            .json()["number"],
        2
    );
    next_text(&mut tab1).await;
    next_text(&mut tab2).await;
    let now = admin_json(&s, "series").await["now"].clone();
    assert_eq!(now["sockets"], 2);
    assert_eq!(now["messages"], 1);
    assert_eq!(now["deliveries"], 2);

    // Samples are taken once a second; the charts read them.
    eventually("a sample with both sockets", || async {
        let series = admin_json(&s, "series").await;
        assert_eq!(
            series["columns"],
            serde_json::json!(["t", "sockets", "messages", "deliveries"])
        );
        series["samples"]
            .as_array()
            .unwrap()
            .last()
            .is_some_and(|last| last[1] == 2 && last[2] == 1 && last[3] == 2)
    })
    .await;
}

#[tokio::test]
async fn refusals_keep_reason_and_client_address_never_a_secret() {
    let s = Server::start(|c| c.real_ip_header = Some("X-Forwarded-For".into())).await;
    let mut http = s.http().await;
    // A wrong password in the query, a forged key, a bad body, and a push to nobody (404, a
    // normal outcome: not a refusal).
    http.request(
        "POST",
        "/push?uid=alice&password=hunter2-guess",
        &[("X-Forwarded-For", "203.0.113.7")],
        br#"{"topic":"t","contents":1}"#,
    )
    .await
    .assert_error(401);
    http.request(
        "GET",
        "/ws?uid=alice&access_key=v1.4102444800.0123456789abcdef0123456789abcdef",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        b"",
    )
    .await
    .assert_error(401);
    http.push("alice", &s.password, "{not json")
        .await
        .assert_error(400);
    assert_eq!(
        s.push("nobody", r#"{"topic":"t","contents":1}"#)
            .await
            .status,
        404
    );

    let bearer = format!("Bearer {}", s.password);
    let r = s
        .http()
        .await
        .request("GET", "/admin/refusals", &[("Authorization", &bearer)], b"")
        .await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(!text.contains("hunter2"), "a password was kept: {text}");
    assert!(!text.contains("0123456789abcdef"), "a key was kept: {text}");
    let contents = r.json()["contents"].clone();
    let recent = contents["recent"].as_array().unwrap();
    let summary: Vec<(u64, &str, &str, &str)> = recent
        .iter()
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["reason"].as_str().unwrap(),
                r["endpoint"].as_str().unwrap(),
                r["client"].as_str().unwrap(),
            )
        })
        .collect();
    // Newest first; the proxy header's address where it was given, else the TCP peer.
    assert_eq!(
        summary,
        [
            (400, "bad_body", "push", "127.0.0.1"),
            (401, "bad_access_key", "ws", "127.0.0.1"),
            (401, "bad_password", "push", "203.0.113.7"),
        ]
    );
    assert_eq!(recent[1]["detail"], "invalid access_key");
    assert!(recent[0]["t"].as_u64().unwrap() >= recent[2]["t"].as_u64().unwrap());
    assert_eq!(
        contents["by_reason"],
        serde_json::json!({"bad_body": 1, "bad_access_key": 1, "bad_password": 1})
    );
    // Asking without the password is itself a refusal, and is listed next time.
    s.http()
        .await
        .get("/admin/refusals")
        .await
        .assert_error(401);
    assert_eq!(
        admin_json(&s, "refusals").await["by_reason"]["bad_password"],
        2
    );
}
