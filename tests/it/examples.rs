//! `examples/`: `push.sh` run by bash against push-serve (the password comes from the
//! environment, and the exit status tells a script whether the push worked), and the deployment
//! examples checked by the tools that read them (nginx, Caddy, systemd-analyze).

use crate::common;

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

// ---------------------------------------------------------------------------------------------
// Deployment examples. Each check runs the real tool when it is installed (`.ci/run` installs
// nginx, caddy and systemd), and says so when it is not.

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn installed(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .or_else(|_| Command::new(tool).arg("-v").output())
        .is_ok();
    require("a deployment example check", &format!("`{tool}`"), found)
}

/// Every endpoint push-serve serves, and those being added (health, metrics, SSE, the client
/// library, the admin page), is routed by both proxy examples.
#[test]
fn the_proxy_examples_route_every_endpoint() {
    let nginx = std::fs::read_to_string(example("nginx.conf")).unwrap();
    let caddy = std::fs::read_to_string(example("Caddyfile")).unwrap();
    for endpoint in [
        "access",
        "ws",
        "push",
        "publish",
        "broadcast",
        "online",
        "stats",
        "health",
        "ready",
        "metrics",
        "sse",
        "push-serve.js",
        "admin",
    ] {
        assert!(
            nginx.contains(&format!("/{endpoint} "))
                || nginx.contains(&format!("|{endpoint}|"))
                || nginx.contains(&format!("({endpoint}|"))
                || nginx.contains(&format!("|{endpoint})")),
            "nginx.conf does not route /{endpoint}"
        );
        assert!(
            caddy.contains(&format!(" /{endpoint} ")) || caddy.contains(&format!(" /{endpoint}\n")),
            "Caddyfile does not route /{endpoint}"
        );
    }
    for config in [&nginx, &caddy] {
        assert!(config.contains("real_ip_header: X-Forwarded-For"));
    }
}

#[test]
fn the_nginx_example_passes_nginx_t() {
    if !installed("nginx") || !installed("openssl") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("push-serve-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=push.example.com", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success());
    // The shipped file with only the certificate paths replaced, inside a minimal nginx.conf.
    let site = std::fs::read_to_string(example("nginx.conf"))
        .unwrap()
        .replace(
            "/etc/letsencrypt/live/push.example.com/fullchain.pem",
            cert.to_str().unwrap(),
        )
        .replace(
            "/etc/letsencrypt/live/push.example.com/privkey.pem",
            key.to_str().unwrap(),
        )
        .replace("/var/log/nginx/", &format!("{}/", dir.display()));
    std::fs::write(dir.join("site.conf"), site).unwrap();
    let main = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{ include {d}/site.conf; }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), main).unwrap();
    let out = Command::new("nginx")
        .arg("-t")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("test is successful"), "{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_caddy_example_passes_caddy_validate() {
    if !installed("caddy") {
        return;
    }
    let home = std::env::temp_dir().join(format!("push-serve-caddy-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new("caddy")
        .args(["validate", "--adapter", "caddyfile", "--config"])
        .arg(example("Caddyfile"))
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Valid configuration"), "{said}");
    assert!(!said.contains("not formatted"), "run `caddy fmt`: {said}");
    let _ = std::fs::remove_dir_all(&home);
}

/// `systemd-analyze security` scores exposure from 0 (confined) to 10; the unit must stay
/// under 3.0 (`--threshold` takes tenths, so 29 is "at most 2.9").
#[test]
fn the_systemd_unit_scores_below_3_in_systemd_analyze_security() {
    if !installed("systemd-analyze") {
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=29", "--no-pager"])
        .arg(example("push-serve.service"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("Overall exposure level"), "{said}");
}
