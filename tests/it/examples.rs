//! `examples/`: `push.sh` run by bash against push-serve (the password comes from the
//! environment, and the exit status tells a script whether the push worked), the deployment
//! examples checked by the tools that read them (nginx, Caddy, systemd-analyze), and the two
//! proxy examples run in front of push-serve with every route of the route table driven through
//! them.

use crate::common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use common::*;
use push_serve::http::routes::ROUTES;
use push_serve::protocol::pusher::auth::sign;
use push_serve::{PusherApp, PusherConfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

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

// ---------------------------------------------------------------------------------------------
// The proxy examples, run: real nginx and real Caddy on loopback, configured from the shipped
// files with only the site's address, TLS, the upstream and file paths replaced, in front of an
// in-process push-serve in Pusher mode. Every route of the one route table goes through each.

const PUSHER_ID: &str = "app-id";
const PUSHER_KEY: &str = "app-key";
const PUSHER_SECRET: &str = "app-secret";

/// A proxy running as a child process from a shipped example. Dropping it (a panic included)
/// kills it and removes its directory.
struct Proxy {
    name: &'static str,
    addr: SocketAddr,
    dir: PathBuf,
    child: Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Proxy {
    /// Everything the proxy logged, for a failure message.
    fn log(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                all += &std::fs::read_to_string(entry.path()).unwrap_or_default();
            }
        }
        all
    }

    /// Returns once the proxy accepts connections; panics if it exits or takes too long.
    async fn wait_until_listening(&mut self) {
        let (addr, child) = (self.addr, &mut self.child);
        let mut exited = None;
        let up = wait_until(PATIENCE, || {
            exited = child.try_wait().unwrap();
            let gone = exited.is_some();
            async move { !gone && TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        assert!(exited.is_none(), "{} exited: {}", self.name, self.log());
        assert!(up, "{} is not listening: {}", self.name, self.log());
    }
}

/// A fresh directory for one proxy's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("push-serve-{name}-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port nothing listens on (free when asked; the proxy binds it right after).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `text` with `from` replaced by `to`. A changed example fails here instead of running
/// half-converted.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the example no longer has {from:?}");
    text.replace(from, to)
}

/// A child process whose output goes to `<dir>/<name>.log`.
fn spawn(cmd: &mut Command, dir: &std::path::Path, name: &str) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{name} starts: {e}"))
}

/// examples/nginx.conf on plain HTTP at a free loopback port (the port-80 redirect server and
/// the TLS lines dropped), proxying to `upstream`, with its files in a directory of its own.
async fn start_nginx(upstream: SocketAddr) -> Proxy {
    let dir = scratch("nginx");
    let addr = free_addr();
    let shipped = std::fs::read_to_string(example("nginx.conf")).unwrap();
    assert!(shipped.contains("real_ip_header: X-Forwarded-For"));
    let redirect = shipped
        .find("server {\n    listen 80;")
        .expect("the port-80 server");
    let end = redirect + shipped[redirect..].find("\n}\n").unwrap() + 3;
    let site = format!("{}{}", &shipped[..redirect], &shipped[end..]);
    let site = swap(&site, "listen 443 ssl http2;", &format!("listen {addr};"));
    let site = swap(&site, "listen [::]:443 ssl http2;", "");
    let site: String = site
        .lines()
        .filter(|l| !l.trim_start().starts_with("ssl_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let site = swap(
        &site,
        "server 127.0.0.1:8080;",
        &format!("server {upstream};"),
    );
    let site = swap(&site, "/var/log/nginx/", &format!("{}/", dir.display()));
    std::fs::write(dir.join("site.conf"), site).unwrap();
    // One process (no workers), so killing it leaves nothing behind.
    let main = format!(
        "master_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\n\
         http {{\n\
         client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
         access_log {d}/default.access.log;\ninclude {d}/site.conf;\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), main).unwrap();
    let child = spawn(
        Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"]),
        &dir,
        "stderr",
    );
    let mut proxy = Proxy {
        name: "nginx",
        addr,
        dir,
        child,
    };
    proxy.wait_until_listening().await;
    proxy
}

/// examples/Caddyfile on plain HTTP at a free loopback port, proxying to `upstream`, without
/// its admin endpoint, with its home in a directory of its own.
async fn start_caddy(upstream: SocketAddr) -> Proxy {
    let dir = scratch("caddy");
    let addr = free_addr();
    let shipped = std::fs::read_to_string(example("Caddyfile")).unwrap();
    assert!(shipped.contains("real_ip_header: X-Forwarded-For"));
    // `http://:port` has no host matcher (the test's requests say `Host: test`); the global
    // options bind it to loopback.
    let site = swap(
        &shipped,
        "push.example.com {",
        &format!("http://:{} {{", addr.port()),
    );
    let site = swap(
        &site,
        "reverse_proxy 127.0.0.1:8080",
        &format!("reverse_proxy {upstream}"),
    );
    let config = format!("{{\n\tadmin off\n\tdefault_bind 127.0.0.1\n}}\n\n{site}");
    let file = dir.join("Caddyfile");
    std::fs::write(&file, config).unwrap();
    let child = spawn(
        Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&file)
            .env("HOME", &dir)
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config")),
        &dir,
        "caddy",
    );
    let mut proxy = Proxy {
        name: "caddy",
        addr,
        dir,
        child,
    };
    proxy.wait_until_listening().await;
    proxy
}

/// `method target` with `body` sent to `addr` from the loopback address `source` (127.0.0.2 is
/// loopback to the kernel, but not an address the examples let reach /metrics and /admin).
async fn request_from(
    source: Ipv4Addr,
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &[u8],
) -> Reply {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    let stream = tokio::time::timeout(PATIENCE, socket.connect(addr))
        .await
        .expect("connect in time")
        .unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(&request_bytes(method, target, &[], body))
        .await
        .unwrap();
    RawReply::new(read).read().await
}

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Paths the examples answer only for 127.0.0.1 and ::1.
fn loopback_only(path: &str) -> bool {
    path == "/metrics" || path == "/admin" || path.starts_with("/admin/")
}

/// Asserts that `via`, the proxy's answer, is push-serve's answer `direct` to the same request:
/// the same status and content type, and for JSON the same envelope topic (an error's whole
/// envelope), which no proxy makes up.
fn assert_passed_on(proxy: &str, target: &str, direct: &Reply, via: &Reply) {
    let what = format!(
        "{target} through {proxy}: {} {:?} {}\npush-serve itself: {} {}",
        via.status,
        via.header("content-type"),
        via.text(),
        direct.status,
        direct.text()
    );
    assert_eq!(via.status, direct.status, "{what}");
    assert_eq!(
        via.header("content-type"),
        direct.header("content-type"),
        "{what}"
    );
    if direct
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
    {
        let (direct, via): (Value, Value) = (direct.json(), via.json());
        if direct["topic"] == "error" {
            assert_eq!(via, direct, "{what}");
        } else {
            assert_eq!(via["topic"], direct["topic"], "{what}");
        }
    }
}

/// GET `target` through the proxy from 127.0.0.1, asserting a 200; its JSON.
async fn get_ok(proxy: &Proxy, target: &str) -> Value {
    let r = request_from(LOCAL, proxy.addr, "GET", target, b"").await;
    assert_eq!(
        r.status,
        200,
        "{target} through {}: {}",
        proxy.name,
        r.text()
    );
    r.json()
}

/// The text of a chunked event stream, read until it holds `needle`.
async fn read_stream_until(io: &mut BufReader<TcpStream>, needle: &str) -> String {
    let mut text = String::new();
    let read = async {
        while !text.contains(needle) {
            let mut line = String::new();
            assert!(io.read_line(&mut line).await.unwrap() > 0, "stream ended");
            let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            assert!(n > 0, "stream ended");
            let mut chunk = vec![0; n + 2];
            io.read_exact(&mut chunk).await.unwrap();
            text.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .unwrap_or_else(|_| panic!("{needle:?} in time; got {text:?}"));
    text
}

/// Every route of the route table through `proxy`, run in front of a fresh push-serve in Pusher
/// mode: each answered by push-serve exactly as it answers directly (for /metrics and /admin,
/// only from loopback), and the live paths really working through it: a WebSocket receiving a
/// push, a Pusher socket's greeting and a signed API call, an SSE stream receiving a push, a
/// data pool and a room move.
async fn drive_every_route_through<F, Fut>(start: F)
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Proxy>,
{
    let s = Server::start(|c| {
        let mut pusher = PusherConfig::new();
        pusher.apps = vec![PusherApp::new(PUSHER_ID, PUSHER_KEY, PUSHER_SECRET)];
        c.pusher = Some(pusher);
    })
    .await;
    let proxy = start(s.addr).await;
    let (name, password) = (proxy.name, enc(&s.password));

    // Every route, and a path no route serves (push-serve's 404, not the proxy's). The password
    // on each keeps the failed-password lockout out of it.
    let mut paths: Vec<String> = ROUTES.iter().map(|r| r.example.to_owned()).collect();
    paths.push("/no-such-path".to_owned());
    for path in &paths {
        let target = format!("{path}?password={password}");
        let direct = request_from(LOCAL, s.addr, "GET", &target, b"").await;
        let via = request_from(LOCAL, proxy.addr, "GET", &target, b"").await;
        assert_passed_on(name, &target, &direct, &via);
        // From another address: the same, except that /metrics and /admin (with or without a
        // trailing slash) are refused by the proxy itself.
        if loopback_only(path) {
            for target in [target.clone(), format!("{path}/?password={password}")] {
                let via = request_from(OTHER, proxy.addr, "GET", &target, b"").await;
                assert_eq!(via.status, 403, "{target} from {OTHER} through {name}");
                assert!(
                    !via.text().contains("\"topic\""),
                    "{target} from {OTHER} reached push-serve through {name}: {}",
                    via.text()
                );
            }
        } else {
            let via = request_from(OTHER, proxy.addr, "GET", &target, b"").await;
            assert_passed_on(name, &target, &direct, &via);
        }
    }

    // A page's WebSocket through the proxy, and a push made through it.
    let access = format!("/access?uid=alice&password={password}");
    let key = get_ok(&proxy, &access).await["contents"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!("ws://{}/ws?uid=alice&access_key={}", proxy.addr, enc(&key));
    let mut ws = try_connect(&url)
        .await
        .unwrap_or_else(|e| panic!("/ws through {name}: {e:?}"));
    let r = Http::connect(proxy.addr)
        .await
        .push(
            "alice",
            &s.password,
            r#"{"topic":"t","contents":"via the proxy"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "/push through {name}: {}", r.text());
    let frame: Value = serde_json::from_str(&next_text(&mut ws).await).unwrap();
    assert_eq!(frame["contents"], "via the proxy", "{frame}");

    // A Pusher socket, and a signed HTTP API call.
    let url = format!(
        "ws://{}/app/{PUSHER_KEY}?protocol=7&client=js&version=8.6.0",
        proxy.addr
    );
    let mut pusher = try_connect(&url)
        .await
        .unwrap_or_else(|e| panic!("/app through {name}: {e:?}"));
    let hello: Value = serde_json::from_str(&next_text(&mut pusher).await).unwrap();
    assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let path = format!("/apps/{PUSHER_ID}/channels");
    let query = format!("auth_key={PUSHER_KEY}&auth_timestamp={stamp}&auth_version=1.0");
    let signature = sign(PUSHER_SECRET, &format!("GET\n{path}\n{query}"));
    let channels = get_ok(
        &proxy,
        &format!("{path}?{query}&auth_signature={signature}"),
    )
    .await;
    assert!(channels["channels"].is_object(), "{channels}");

    // The SSE fallback: a push arrives as an event while the response is still open, which a
    // buffering proxy would hold back.
    let access = format!("/access?uid=carol&password={password}");
    let key = get_ok(&proxy, &access).await["contents"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut sse = Http::connect(proxy.addr).await;
    let target = format!("/sse?uid=carol&access_key={}", enc(&key));
    sse.send("GET", &target, &[("Accept", "text/event-stream")], b"")
        .await;
    let (status, headers) = sse.read_head().await;
    assert_eq!(status, 200, "/sse through {name}: {headers:?}");
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    assert!(chunked, "/sse through {name}: {headers:?}");
    let r = Http::connect(proxy.addr)
        .await
        .push(
            "carol",
            &s.password,
            r#"{"topic":"t","contents":"streamed"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "/push through {name}: {}", r.text());
    let text = read_stream_until(sse.reader(), "streamed").await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("data:") && l.contains(r#""contents":"streamed""#)),
        "{text:?}"
    );

    // A data pool's document, and a backend moving a page between rooms.
    let cart = format!("/pool/cart?password={password}");
    let r = request_from(LOCAL, proxy.addr, "PUT", &cart, br#"{"items":[]}"#).await;
    assert_eq!(r.status, 200, "PUT /pool/cart through {name}: {}", r.text());
    let rooms = format!("/rooms?uid=alice&password={password}");
    let r = request_from(LOCAL, proxy.addr, "POST", &rooms, br#"{"join":["room:1"]}"#).await;
    assert_eq!(r.status, 200, "POST /rooms through {name}: {}", r.text());
}

#[tokio::test]
async fn every_route_works_through_the_nginx_example() {
    if !installed("nginx") {
        return;
    }
    drive_every_route_through(start_nginx).await;
}

#[tokio::test]
async fn every_route_works_through_the_caddy_example() {
    if !installed("caddy") {
        return;
    }
    drive_every_route_through(start_caddy).await;
}
