//! The `push-serve` executable as systemd runs it: config errors, SIGTERM, and logs.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
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
    let port = free_port();
    let password = "s3cret-Pa55word";
    let path = temp_config(
        name,
        &format!("addr: 127.0.0.1:{port}\npassword: {password}\n"),
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
