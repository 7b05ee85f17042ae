//! The `push-serve` executable as systemd runs it: config errors, SIGTERM, and logs.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const BIN: &str = env!("CARGO_BIN_EXE_push-serve");

fn temp_config(name: &str, yaml: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("push-serve-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("conf.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

/// Kills the daemon if a test fails before it exits.
struct Child(Option<std::process::Child>);

impl Child {
    fn proc(&mut self) -> &mut std::process::Child {
        self.0.as_mut().expect("still running")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
        }
    }
}

async fn spawn_daemon(name: &str, log: &str) -> (Child, Server) {
    spawn_daemon_with(name, log, "").await
}

/// The daemon with `extra` appended to its config.
async fn spawn_daemon_with(name: &str, log: &str, extra: &str) -> (Child, Server) {
    let port = free_port();
    let password = "s3cret-Pa55word";
    let path = temp_config(
        name,
        &format!("addr: 127.0.0.1:{port}\npassword: {password}\n{extra}"),
    );
    let child = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let server = Server::external(([127, 0, 0, 1], port).into(), password);
    eventually("the daemon to listen", || async {
        tokio::net::TcpStream::connect(server.addr).await.is_ok()
    })
    .await;
    (Child(Some(child)), server)
}

fn sigterm(child: &mut Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.proc().id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::Output {
    let deadline = std::time::Instant::now() + within;
    while child.proc().try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "daemon did not exit in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.0.take().unwrap().wait_with_output().unwrap()
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_zero() {
    let (mut child, server) = spawn_daemon("sigterm", "info").await;
    let mut a = server.connect("u1").await;
    let mut b = server.connect("u2").await;
    sigterm(&mut child);
    assert_eq!(close_code(&mut a).await, Some(CloseCode::Away));
    assert_eq!(close_code(&mut b).await, Some(CloseCode::Away));
    let out = wait_exit(&mut child, Duration::from_secs(15));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Passwords and keys travel in query strings; at the most verbose log level none of them may
/// appear in the output, whatever the request.
#[tokio::test]
async fn secrets_never_reach_the_log() {
    let (mut child, server) = spawn_daemon("secrets", "trace").await;
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
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&mut child);
    let out = wait_exit(&mut child, Duration::from_secs(15));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
fn stop_and_read_log(mut child: Child) -> String {
    sigterm(&mut child);
    let out = wait_exit(&mut child, Duration::from_secs(15));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What an operator sees at the default level when someone guesses passwords: each refusal
/// with the address, the lockout as a warning, and never what was guessed.
#[tokio::test]
async fn a_wrong_password_is_logged_at_info_with_the_address_and_not_the_password() {
    let (child, server) = spawn_daemon_with(
        "auth-log",
        "info",
        "auth_failures_per_minute: 2\nallowed_origins: [\"https://shop.example.com\"]\n",
    )
    .await;
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
    let log = stop_and_read_log(child);
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
    let (child, server) = spawn_daemon_with("slow-log", "info", "send_queue_frames: 4\n").await;
    let _stalled = silent_client(&server, "slow", Some(4096)).await;
    let big = format!(r#"{{"topic":"big","contents":"{}"}}"#, "x".repeat(64 << 10));
    let mut http = server.http().await;
    let mut pushes = 0;
    while http.push("slow", &server.password, &big).await.status == 200 {
        pushes += 1;
        assert!(pushes < 2000, "never evicted");
    }
    // The eviction is logged once the socket's task has closed it.
    let log = stop_and_read_log(child);
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
    let (child, _server) = spawn_daemon("rust-log", "inf0").await;
    let log = stop_and_read_log(child);
    assert!(
        log.contains("RUST_LOG=\"inf0\": `inf0` is not a level"),
        "{log}"
    );
    assert!(log.contains("listening on"), "{log}");
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let (child, server) = spawn_daemon_with("json-log", "info", "log_format: json\n").await;
    server
        .http()
        .await
        .get("/access?uid=a&password=nope")
        .await
        .assert_error(401);
    let log = stop_and_read_log(child);
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
