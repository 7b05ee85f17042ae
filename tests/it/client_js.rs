//! `GET /push-serve.js`: the browser client library, served by push-serve itself, byte for byte
//! the file in `client/`, cacheable, and refused with the envelope for anything but GET/HEAD.

use crate::common;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CLIENT_JS: &str = include_str!("../../client/push-serve.js");

#[tokio::test]
async fn client_library_is_served_with_cache_headers() {
    let s = Server::start(|_| {}).await;
    let mut http = s.http().await;
    let r = http.get("/push-serve.js").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/javascript; charset=utf-8")
    );
    assert_eq!(r.header("cache-control"), Some("public, max-age=3600"));
    assert_eq!(r.text(), CLIENT_JS);
    assert!(r.text().contains("function PushServe("));
    // The same keep-alive connection goes on serving requests.
    assert_eq!(
        http.get("/push-serve.js?v=2").await.body.len(),
        CLIENT_JS.len()
    );

    for method in ["POST", "PUT", "DELETE"] {
        let r = http.request(method, "/push-serve.js", &[], b"").await;
        let reason = r.assert_error(405);
        assert!(reason.contains("GET"), "{reason}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
}

#[tokio::test]
async fn head_gives_the_headers_without_the_library() {
    let s = Server::start(|_| {}).await;
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let mut io = BufReader::new(stream);
    io.get_mut()
        .write_all(b"HEAD /push-serve.js HTTP/1.1\r\nHost: test\r\n\r\nGET /nope HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        io.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_ascii_lowercase());
    }
    assert_eq!(head[0], "http/1.1 200 ok");
    assert!(head.contains(&format!("content-length: {}", CLIENT_JS.len())));
    assert!(head.contains(&"content-type: application/javascript; charset=utf-8".to_string()));
    // No body follows: the next bytes are the reply to the pipelined second request.
    let mut next = RawReply::new(io);
    next.read().await.assert_error(404);
}
