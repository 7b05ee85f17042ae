//! Real headless Chromium, driven by scripts in tests/browser/ (playwright-core):
//! - the browser client library (client/push-serve.js, run.mjs): reconnects through cut
//!   connections, resumes with no loss or duplicate, refreshes an expired key, dispatches topics;
//! - the admin page (admin.mjs): signs in, follows a test page's socket, pushes from its form to
//!   that socket, lists refusals, and takes a screenshot.
//!
//! `.ci/run` installs chromium and the npm package.

mod common;

use std::process::Command;

use common::*;

/// Runs `node tests/browser/<script> <args>` and returns its stdout; fails the test with both
/// outputs if it exits non-zero.
async fn run_node(script: &str, args: Vec<String>) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    assert!(
        std::path::Path::new(dir)
            .join("node_modules/playwright-core")
            .exists(),
        "run `npm ci --prefix tests/browser` and install chromium (.ci/run does both)"
    );
    let script = format!("{dir}/{script}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .args(args)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_survives_outages_and_key_expiry() {
    let s = Server::start(|c| {
        c.access_key_ttl_secs = 3;
        c.history_size = 5000;
    })
    .await;
    let stdout = run_node("run.mjs", vec![s.addr.to_string(), s.password.clone()]).await;
    assert!(stdout.contains("browser client: ok"));
}

/// The screenshot goes to the test's scratch directory, or where `PUSH_SERVE_ADMIN_SCREENSHOT`
/// says (`PUSH_SERVE_ADMIN_SCREENSHOT=$PWD/docs/admin.png cargo test --test browser admin`
/// refreshes the README's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_signs_in_follows_sockets_and_pushes_from_its_form() {
    let s = Server::start(|_| {}).await;
    let screenshot = std::env::var("PUSH_SERVE_ADMIN_SCREENSHOT")
        .unwrap_or_else(|_| concat!(env!("CARGO_TARGET_TMPDIR"), "/admin.png").to_string());
    let _ = std::fs::remove_file(&screenshot);
    let stdout = run_node(
        "admin.mjs",
        vec![s.addr.to_string(), s.password.clone(), screenshot.clone()],
    )
    .await;
    assert!(stdout.contains("admin page: ok"));
    let png = std::fs::read(&screenshot).expect("a screenshot was taken");
    assert!(png.starts_with(b"\x89PNG"));
}
