//! The browser client library (client/push-serve.js) in real headless Chromium, driven by
//! tests/browser/run.mjs (playwright-core): reconnects through cut connections, resumes with no
//! loss or duplicate, refreshes an expired key, dispatches topics. `.ci/run` installs chromium and
//! the npm package.

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_survives_outages_and_key_expiry() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    assert!(
        std::path::Path::new(dir)
            .join("node_modules/playwright-core")
            .exists(),
        "run `npm ci --prefix tests/browser` and install chromium (.ci/run does both)"
    );
    let s = Server::start(|c| {
        c.access_key_ttl_secs = 3;
        c.history_size = 5000;
    })
    .await;
    let (addr, password) = (s.addr.to_string(), s.password.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(format!("{dir}/run.mjs"))
            .args([&addr, &password])
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
    assert!(stdout.contains("browser client: ok"));
}
