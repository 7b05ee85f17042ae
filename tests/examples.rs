//! `examples/push.sh`, run by bash against push-serve: the password comes from the environment,
//! and the exit status tells a script whether the push worked.

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn push_sh(server: &Server, password: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/push.sh"))
        .args(args)
        .env("PUSH_URL", format!("http://{}", server.addr))
        .env_remove("PUSH_SERVE_PASSWORD");
    if let Some(password) = password {
        cmd.env("PUSH_SERVE_PASSWORD", password);
    }
    cmd.output().expect("bash runs")
}

fn reply(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

// Multi-threaded: the script runs as a blocking child process while the server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sh_reads_the_password_from_the_environment_and_fails_on_http_errors() {
    let s = Server::start(|_| {}).await;
    let password = s.password.clone();

    let out = push_sh(&s, Some(&password), &["key", "alice"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let key = reply(&out)["contents"].as_str().unwrap().to_owned();
    let mut ws = s.connect_with_key("alice", &key).await;

    let out = push_sh(
        &s,
        Some(&password),
        &["push", "alice", "order", r#"{"id": 7}"#],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(reply(&out)["number"], 1);
    let frame: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(frame["contents"]["id"], 7);

    // 404: nobody online. The reply is printed, and the status says it failed.
    let out = push_sh(&s, Some(&password), &["push", "nobody", "order", "1"]);
    assert_eq!(out.status.code(), Some(22), "{out:?}");
    assert_eq!(reply(&out)["topic"], "error");

    // 401: wrong password.
    let out = push_sh(&s, Some("wrong"), &["key", "alice"]);
    assert_eq!(out.status.code(), Some(22), "{out:?}");

    // No password at all: a usage error naming the variable, before any request.
    let out = push_sh(&s, None, &["key", "alice"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("PUSH_SERVE_PASSWORD"));
}
