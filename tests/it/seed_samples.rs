//! The seed document's PHP backend sample (examples/backend.php keeps its code as written) run
//! by the real `php` against push-serve: the drop-in promise, checked with the original client.

use crate::common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn php(server: &Server, args: &[&str]) -> String {
    let out = Command::new("php")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/backend.php"))
        .args(args)
        .env("PUSH_HOST", server.addr.to_string())
        .env("PUSH_SERVE_PASSWORD", &server.password)
        .output()
        .expect("php runs (install php-cli and php-curl; .ci/run does)");
    assert!(
        out.status.success(),
        "php {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

// Multi-threaded: `php` runs as a blocking child process while the server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_php_sample_gets_a_key_and_pushes_to_the_page() {
    let curl = Command::new("php").arg("-m").output().is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|m| m == "curl")
    });
    if !require("the PHP sample test", "php with its curl module", curl) {
        return;
    }
    let s = Server::start_default().await;
    let key = php(&s, &["access", "member42"]);
    let mut tab = s.connect_with_key("member42", &key).await;
    let mut other_tab = s.connect_with_key("member42", &key).await;

    let reply: Value = serde_json::from_str(&php(&s, &["push", "member42"])).unwrap();
    assert_eq!(reply["topic"], "success");
    assert_eq!(reply["number"], 2);
    assert_eq!(reply["contents"], "推送成功");
    for ws in [&mut tab, &mut other_tab] {
        let frame: Value = serde_json::from_str(&next_text(ws).await).unwrap();
        assert_eq!(frame["topic"], "info_update");
        assert_eq!(frame["contents"]["name"], "张三");
        assert_eq!(frame["contents"]["age"], 17);
    }

    // Offline uid: the seed's error reply reaches PHP (curl returns the body on a 404 too).
    let reply: Value = serde_json::from_str(&php(&s, &["push", "nobody"])).unwrap();
    assert_eq!(reply["topic"], "error");
    assert_eq!(reply["contents"], "此用户不在线");
}
