//! The `push-serve` executable as systemd runs it: config errors, SIGTERM, and logs.

use crate::common;

use std::process::Command;

use common::daemon::{temp_config, Daemon, BIN};
use common::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn bad_config_is_one_line_naming_the_field_and_a_failure_exit() {
    let cases = [
        (
            "empty-password",
            "addr: 127.0.0.1:0\npassword: \"\"\n",
            "password",
        ),
        ("bad-addr", "addr: localhost\npassword: x\n", "addr"),
        (
            "typo",
            "addr: 127.0.0.1:0\npassword: x\nheartbeat_secs: 3\n",
            "heartbeat_secs",
        ),
        (
            "bad-type",
            "addr: 127.0.0.1:0\npassword: x\nsend_queue_frames: many\n",
            "send_queue_frames",
        ),
        (
            "sample-password-on-every-interface",
            "addr: 0.0.0.0:0\npassword: abc123\n",
            "set a password of your own",
        ),
        (
            "hex-password",
            "addr: 127.0.0.1:0\npassword: 0x1F\n",
            "`password` must be text",
        ),
        (
            "no-origins",
            "addr: 127.0.0.1:0\npassword: x\nallowed_origins: []\n",
            "`allowed_origins` is an empty list",
        ),
    ];
    for (name, yaml, field) in cases {
        let out = Command::new(BIN)
            .args(["--config", temp_config(name, yaml).to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: exit {:?}", out.status);
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains(field), "{name}: {stderr}");
        // Plain words, not serde's: no Rust type names.
        assert!(!stderr.contains("expected"), "{name}: {stderr}");
    }
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/conf.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/conf.yaml"));
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_help_and_every_spelling_of_the_config_option() {
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout.trim(),
        format!("push-serve {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, help, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for option in [
        "-c, --config PATH",
        "--config=PATH",
        "--check-config",
        "--version",
    ] {
        assert!(help.contains(option), "--help lacks {option}: {help}");
    }
    let (code, _, stderr) = run(&["--frobnicate"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--frobnicate"), "{stderr}");

    // The shipped conf.yaml is valid as it is.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/conf.yaml");
    let (code, stdout, stderr) = run(&["--check-config", "--config", shipped]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.trim().ends_with("conf.yaml: ok"), "{stdout}");

    let bad = temp_config(
        "check-bad",
        "addr: 127.0.0.1:0\npassword: x\nmax_socket: 5\n",
    );
    let bad = bad.to_str().unwrap();
    for args in [
        vec!["--check-config", "-c", bad],
        vec!["--check-config", "--config", bad],
        vec![&*format!("--config={bad}"), "--check-config"],
    ] {
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, Some(1), "{args:?}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(
            stderr.trim(),
            format!(
                "push-serve: config file {bad}, line 3: unknown key `max_socket`: \
                 did you mean `max_sockets`?"
            )
        );
    }
}

const PASSWORD: &str = "s3cret-Pa55word";

async fn spawn_daemon(name: &str, log: &str) -> Daemon {
    spawn_daemon_with(name, log, "").await
}

/// The daemon with `extra` appended to its config.
async fn spawn_daemon_with(name: &str, log: &str, extra: &str) -> Daemon {
    Daemon::start(name, log, PASSWORD, extra).await
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_zero() {
    let mut daemon = spawn_daemon("sigterm", "info").await;
    let server = &daemon.server;
    let mut a = server.connect("u1").await;
    let mut b = server.connect("u2").await;
    daemon.signal("TERM");
    assert_eq!(close_code(&mut a).await, Some(CloseCode::Away));
    assert_eq!(close_code(&mut b).await, Some(CloseCode::Away));
    let (status, log) = daemon.wait_exit(std::time::Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{log}");
}

/// Passwords and keys travel in query strings; at the most verbose log level none of them may
/// appear in the output, whatever the request.
#[tokio::test]
async fn secrets_never_reach_the_log() {
    let daemon = spawn_daemon("secrets", "trace").await;
    let server = daemon.server.clone_with_password(PASSWORD);
    let key = server.key("alice").await;
    let mut ws = server.connect_with_key("alice", &key).await;
    assert_eq!(
        server
            .push("alice", r#"{"topic":"t","contents":1}"#)
            .await
            .status,
        200
    );
    next_text(&mut ws).await;
    let mut http = server.http().await;
    http.get("/access?uid=alice&password=wrong-guess-123")
        .await
        .assert_error(401);
    http.request(
        "GET",
        "/access?uid=bob",
        &[("Authorization", &format!("Bearer {}", server.password))],
        b"",
    )
    .await;
    let _ =
        tokio_tungstenite::connect_async(server.ws_url("alice", "v1.99999999999.deadbeef")).await;
    // The page vanishes; its socket's last lines are written once the server has seen it go.
    let mark = daemon.mark();
    drop(ws);
    daemon.wait_for_log(mark, "closed: connection lost").await;
    let (_, log) = daemon.stop().await;
    assert!(log.contains("listening"), "the log was captured: {log}");
    for secret in [
        server.password.as_str(),
        key.as_str(),
        "wrong-guess-123",
        "deadbeef",
    ] {
        assert!(!log.contains(secret), "log leaks {secret:?}");
    }
}

/// SIGTERM, then everything the daemon wrote.
async fn stop_and_read_log(daemon: Daemon) -> String {
    daemon.stop().await.1
}

/// What an operator sees at the default level when someone guesses passwords: each refusal
/// with the address, the lockout as a warning, and never what was guessed.
#[tokio::test]
async fn a_wrong_password_is_logged_at_info_with_the_address_and_not_the_password() {
    let daemon = spawn_daemon_with(
        "auth-log",
        "info",
        "auth_failures_per_minute: 2\nallowed_origins: [\"https://shop.example.com\"]\n",
    )
    .await;
    let server = &daemon.server;
    // A socket from another site's page, refused before the upgrade.
    let key = server.key("alice").await;
    let mut request = server.ws_url("alice", &key).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    let mut http = server.http().await;
    http.get("/access?uid=alice&password=Wr0ng-Guess-77")
        .await
        .assert_error(401);
    http.request(
        "POST",
        "/push?uid=alice",
        &[("Authorization", "Bearer Wr0ng-Bearer-88")],
        br#"{"topic":"t","contents":1}"#,
    )
    .await
    .assert_error(401);
    http.get("/stats").await.assert_error(429);
    let log = stop_and_read_log(daemon).await;
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"))
    };
    let access = line("/access refused for 127.0.0.1: wrong password");
    assert!(access.contains("INFO"), "{access}");
    line("/push refused for 127.0.0.1: wrong password");
    let lockout = line("127.0.0.1 locked out of the password endpoints");
    assert!(lockout.contains("WARN"), "{lockout}");
    let origin = line("socket refused for 127.0.0.1: origin \"https://evil.example\"");
    assert!(origin.contains("INFO"), "{origin}");
    for secret in [
        "Wr0ng-Guess-77",
        "Wr0ng-Bearer-88",
        "uid=alice",
        "password=",
    ] {
        assert!(!log.contains(secret), "the log shows {secret:?}:\n{log}");
    }
}

#[tokio::test]
async fn a_slow_reader_closed_with_4008_is_logged_with_its_address() {
    let daemon = spawn_daemon_with("slow-log", "info", "send_queue_frames: 4\n").await;
    let server = &daemon.server;
    let _stalled = silent_client(server, "slow", Some(4096)).await;
    let big = format!(r#"{{"topic":"big","contents":"{}"}}"#, "x".repeat(64 << 10));
    let mut http = server.http().await;
    let mut pushes = 0;
    while http.push("slow", &server.password, &big).await.status == 200 {
        pushes += 1;
        assert!(pushes < 2000, "never evicted");
    }
    // The eviction is logged once the socket's task has closed it.
    let log = stop_and_read_log(daemon).await;
    let line = log
        .lines()
        .find(|l| l.contains("closed as a slow reader (4008)"))
        .unwrap_or_else(|| panic!("no eviction line in:\n{log}"));
    assert!(
        line.contains("WARN") && line.contains("127.0.0.1"),
        "{line}"
    );
}

/// `RUST_LOG=inf0` used to turn every line off without a word.
#[tokio::test]
async fn a_misspelt_rust_log_is_reported_and_the_daemon_still_logs() {
    let daemon = spawn_daemon("rust-log", "inf0").await;
    let log = stop_and_read_log(daemon).await;
    assert!(
        log.contains("RUST_LOG=\"inf0\": `inf0` is not a level"),
        "{log}"
    );
    assert!(log.contains("listening on"), "{log}");
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let daemon = spawn_daemon_with("json-log", "info", "log_format: json\n").await;
    daemon
        .server
        .http()
        .await
        .get("/access?uid=a&password=nope")
        .await
        .assert_error(401);
    let log = stop_and_read_log(daemon).await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    for line in &lines {
        for field in ["time", "level", "target", "message"] {
            assert!(line[field].is_string(), "{field} missing: {line}");
        }
    }
    let refused = lines
        .iter()
        .find(|l| l["message"] == "/access refused for 127.0.0.1: wrong password")
        .unwrap_or_else(|| panic!("no refusal in {log}"));
    assert_eq!(refused["level"], "INFO");
    assert!(lines
        .iter()
        .any(|l| l["message"].as_str().unwrap().contains("listening on")));
}

/// SIGHUP reads the config file again: a rotated password applies at once, keys issued under
/// the old one keep opening sockets within `secret_overlap_secs`, a socket opened before stays
/// open and keeps receiving, a setting that needs a restart is said to, and a broken file
/// changes nothing. The process never dies of it.
#[tokio::test]
async fn sighup_rotates_the_password_without_dropping_a_socket() {
    let daemon = spawn_daemon_with("sighup", "info", "secret_overlap_secs: 600\n").await;
    let old = daemon.server.clone_with_password(PASSWORD);
    let old_key = old.key("alice").await;
    let mut before = old.connect_with_key("alice", &old_key).await;

    let new_password = "n3w-Pa55word-after-rotation";
    let rotated = format!(
        "addr: 127.0.0.1:0\npassword: {new_password}\nsecret_overlap_secs: 600\n\
         listen_backlog: 16\nmax_sockets_per_uid: 3\n"
    );
    daemon.write_config(&rotated);
    let mark = daemon.mark();
    daemon.signal("HUP");
    let done = daemon.wait_for_log(mark, "config reloaded").await;
    assert!(done.contains("2 setting(s) applied"), "{done}");
    let log = daemon.log();
    for expected in [
        "config reload: password changed",
        "config reload: max_sockets_per_uid 64 -> 3",
        "keys of the previous one open sockets for 600 s more",
        "config reload: listen_backlog changed in the file but needs a restart",
    ] {
        assert!(log.contains(expected), "no {expected:?} in:\n{log}");
    }

    // The new password works, the old one no longer does.
    let new = daemon.server.clone_with_password(new_password);
    let new_key = new.key("alice").await;
    old.http()
        .await
        .get("/access?uid=alice&password=s3cret-Pa55word")
        .await
        .assert_error(401);
    // A key issued before the rotation still opens a socket, within the window.
    let mut after_old_key = new.connect_with_key("alice", &old_key).await;
    let mut after_new_key = new.connect_with_key("alice", &new_key).await;
    // The limit that came with the reload counts the socket opened before it.
    let status = try_raw_upgrade(&new, "alice", &new_key, None).await.0;
    assert_eq!(status, 429);
    // The socket opened before the reload is still open, and all three get a push made with
    // the new password.
    let r = new
        .push("alice", r#"{"topic":"t","contents":"after"}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["number"], 3);
    for ws in [&mut before, &mut after_old_key, &mut after_new_key] {
        assert_eq!(
            next_text(ws).await,
            r#"{"topic":"t","number":1,"contents":"after"}"#
        );
    }

    // A broken file: logged, and nothing changes.
    daemon.write_config("addr: 127.0.0.1:0\npassword: x\nmax_sockets: many\n");
    let mark = daemon.mark();
    daemon.signal("HUP");
    let refused = daemon.wait_for_log(mark, "config reload refused").await;
    assert!(
        refused.contains("`max_sockets` must be a whole number"),
        "{refused}"
    );
    assert!(refused.contains("WARN"), "{refused}");
    new.key("alice").await;
    old.http()
        .await
        .get("/access?uid=alice&password=x")
        .await
        .assert_error(401);
    // A file gone missing is the same.
    std::fs::remove_file(&daemon.config_path).unwrap();
    let mark = daemon.mark();
    daemon.signal("HUP");
    daemon
        .wait_for_log(
            mark,
            "config reload refused, the running config stays in force: cannot read",
        )
        .await;
    let r = new
        .push("alice", r#"{"topic":"t","contents":"still"}"#)
        .await;
    assert_eq!(r.json()["number"], 3);
    next_text(&mut before).await;

    let (status, log) = daemon.stop().await;
    assert_eq!(status.code(), Some(0), "{log}");
    for secret in [PASSWORD, new_password, old_key.as_str(), new_key.as_str()] {
        assert!(!log.contains(secret), "the log shows {secret:?}:\n{log}");
    }
}

/// With no overlap, keys of the replaced secret are refused as soon as the reload is applied,
/// and rotating only `secret` keeps the password.
#[tokio::test]
async fn sighup_without_overlap_refuses_keys_of_the_replaced_secret_at_once() {
    let daemon = spawn_daemon_with(
        "sighup-strict",
        "info",
        "secret: first-secret\nsecret_overlap_secs: 0\n",
    )
    .await;
    let s = &daemon.server;
    let old_key = s.key("bob").await;
    let mut before = s.connect_with_key("bob", &old_key).await;
    daemon.write_config(&format!(
        "addr: 127.0.0.1:0\npassword: {PASSWORD}\nsecret: second-secret\nsecret_overlap_secs: 0\n"
    ));
    let mark = daemon.mark();
    daemon.signal("HUP");
    daemon.wait_for_log(mark, "config reloaded").await;
    assert!(daemon
        .log()
        .contains("keys of the previous one are refused"));
    assert_eq!(try_raw_upgrade(s, "bob", &old_key, None).await.0, 401);
    let new_key = s.key("bob").await;
    assert_ne!(new_key, old_key);
    let _after = s.connect_with_key("bob", &new_key).await;
    assert_eq!(
        s.push("bob", r#"{"topic":"t","contents":1}"#).await.status,
        200
    );
    next_text(&mut before).await;
    let (status, log) = daemon.stop().await;
    assert_eq!(status.code(), Some(0), "{log}");
}

/// A reload that sets or changes secrets says which keys changed and never their values:
/// `jwt_secret`, `callback_secret`, a Pusher app's secret and the Redis URL's password went to
/// the log (and so to the journal) as `old -> new`.
#[tokio::test]
async fn a_reload_never_writes_a_secret_to_the_log() {
    let app = "pusher:\n  apps:\n  - id: '1'\n    key: app-key\n    secret: first-app-S3CRET\n";
    let daemon = spawn_daemon_with("sighup-secrets", "debug", app).await;
    let secrets = [
        "n3w-Pa55word-after-rotation",
        "jwt-S3CRET-value",
        "callback-S3CRET-value",
        "second-app-S3CRET",
        "redis-PA55WORD",
        "signing-S3CRET",
    ];
    let next = format!(
        "addr: 127.0.0.1:0\npassword: {}\njwt_secret: {}\ncallback_url: http://127.0.0.1:9/cb\n\
         callback_secret: {}\nsecret: {}\nredis_url: redis://:{}@127.0.0.1:9/0\n\
         pusher:\n  apps:\n  - id: '1'\n    key: app-key\n    secret: {}\n",
        secrets[0], secrets[1], secrets[2], secrets[5], secrets[4], secrets[3]
    );
    daemon.write_config(&next);
    let mark = daemon.mark();
    daemon.signal("HUP");
    let done = daemon.wait_for_log(mark, "config reloaded").await;
    assert!(done.contains("need a restart"), "{done}");
    let log = daemon.log();
    for key in [
        "jwt_secret unset -> (hidden)",
        "callback_secret unset -> (hidden)",
    ] {
        assert!(log.contains(key), "no {key:?} in:\n{log}");
    }
    assert!(log.contains("password changed"), "{log}");
    let (_, log) = daemon.stop().await;
    for secret in secrets.iter().chain(&["first-app-S3CRET", PASSWORD]) {
        assert!(!log.contains(secret), "log leaks {secret:?}:\n{log}");
    }
}

/// Refusals that need no login (here a foreign `Origin`, 200 times) write one log line a
/// minute, not one each: a stranger cannot flood the journal.
#[tokio::test]
async fn refusals_without_login_cannot_flood_the_log() {
    let daemon = spawn_daemon_with(
        "refusal-flood",
        "info",
        "allowed_origins: [\"https://shop.example.com\"]\n",
    )
    .await;
    let server = &daemon.server;
    let key = server.key("alice").await;
    let mut http = server.http().await;
    let target = format!("/ws?uid=alice&access_key={}", enc(&key));
    for _ in 0..200 {
        let mut headers: Vec<(&str, &str)> = UPGRADE_HEADERS.to_vec();
        headers.push(("Origin", "https://evil.example"));
        http.request("GET", &target, &headers, b"")
            .await
            .assert_error(403);
    }
    let log = stop_and_read_log(daemon).await;
    let lines = log
        .lines()
        .filter(|l| l.contains("is not in allowed_origins"))
        .count();
    assert_eq!(lines, 1, "{log}");
}
