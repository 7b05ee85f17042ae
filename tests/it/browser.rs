//! The browser client library (client/push-serve.js) in real headless Chromium, driven by
//! playwright-core scripts in tests/browser/:
//! - run.mjs: reconnects through cut connections, resumes with no loss or duplicate, refreshes
//!   an expired key, dispatches topics, never keeps a stale socket after stop()/start(), and
//!   falls back to /sse behind a proxy that refuses WebSocket upgrades;
//! - example.mjs: examples/page.html served by examples/backend.py, as a person would use it;
//! - seeds.mjs: a page connects with a JWT its backend minted, gets its offline inbox first, acks
//!   pushes sent with a receipt after its handler returned, and follows a room the backend moved
//!   it into;
//! - admin.mjs: the admin page signs in, follows a test page's socket, pushes from its form to
//!   that socket, lists refusals, and takes a screenshot.
//!
//! `.ci/run` installs chromium and the npm package; without them each test says what is missing
//! and passes without running.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use common::*;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");

/// Whether Node, playwright-core and Chromium are here; if not, says which is missing.
fn browser_ready(suite: &str) -> bool {
    require(suite, "node", runs("node", "--version"))
        && require(
            suite,
            "playwright-core (npm ci --prefix tests/browser)",
            std::path::Path::new(DIR)
                .join("node_modules/playwright-core")
                .exists(),
        )
        && require(
            suite,
            "chromium (/usr/bin/chromium)",
            std::path::Path::new("/usr/bin/chromium").exists(),
        )
}

/// Runs `node tests/browser/<script> <args>` off the async runtime and checks it printed `ok`.
async fn node(script: &str, args: Vec<String>, ok: &str) {
    let script = format!("{DIR}/{script}");
    let out: Output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args(args)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_survives_outages_and_key_expiry() {
    if !browser_ready("the browser client test") {
        return;
    }
    let s = Server::start(|c| {
        c.access_key_ttl_secs = 3;
        c.history_size = 5000;
    })
    .await;
    node(
        "run.mjs",
        vec![s.addr.to_string(), s.password.clone()],
        "browser client: ok",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_page_connects_through_its_backend_and_shows_pushes() {
    if !browser_ready("the example page test") {
        return;
    }
    let s = Server::start(|_| {}).await;
    let backend = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/backend.py");
    let mut child = KillOnDrop(
        Command::new("python3")
            .arg(backend)
            .env("PUSH_PASSWORD", &s.password)
            .env("PUSH_URL", format!("http://{}", s.addr))
            .env("LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs examples/backend.py"),
    );
    // Its first line says where it listens: "backend on http://127.0.0.1:PORT/ (…)".
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("backend said {line:?}"))
        .to_string();
    node(
        "example.mjs",
        vec![format!("{url}?uid=demo-user")],
        "example page: ok",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_connects_with_a_jwt_acks_receipts_and_follows_rooms() {
    let secret = "browser-test-jwt-secret";
    let s = Server::start(|c| c.jwt_secret = Some(secret.into())).await;
    node(
        "seeds.mjs",
        vec![s.addr.to_string(), s.password.clone(), secret.into()],
        "seeds in the browser: ok",
    )
    .await;
}

/// The screenshot goes to the test's scratch directory, or where `PUSH_SERVE_ADMIN_SCREENSHOT`
/// says (`PUSH_SERVE_ADMIN_SCREENSHOT=$PWD/docs/admin.png cargo test --test it browser::admin`
/// refreshes the README's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_signs_in_follows_sockets_and_pushes_from_its_form() {
    if !browser_ready("the admin page test") {
        return;
    }
    let s = Server::start(|_| {}).await;
    let screenshot = std::env::var("PUSH_SERVE_ADMIN_SCREENSHOT")
        .unwrap_or_else(|_| concat!(env!("CARGO_TARGET_TMPDIR"), "/admin.png").to_string());
    let _ = std::fs::remove_file(&screenshot);
    node(
        "admin.mjs",
        vec![s.addr.to_string(), s.password.clone(), screenshot.clone()],
        "admin page: ok",
    )
    .await;
    let png = std::fs::read(&screenshot).expect("a screenshot was taken");
    assert!(png.starts_with(b"\x89PNG"));
}

/// The backend process, stopped however the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
