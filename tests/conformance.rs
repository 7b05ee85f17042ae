//! RFC 6455 closing rules, checked over a raw TCP socket: the handshake and every masked frame
//! are written by hand, so nothing a client library does (validating, answering a close for
//! us) can hide what the server puts on the wire.
//!
//! - a close started by the page is echoed with its code before the server drops TCP;
//! - a close with a code no endpoint may send gets 1002;
//! - a text message that is not UTF-8 gets 1007, in one frame and across fragments;
//! - after failing a connection the server waits for the page's close, so the page reads a
//!   close frame and then a clean end of stream, never a reset.

mod common;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// A WebSocket client that is nothing but bytes on a TCP socket.
struct RawWs {
    io: BufReader<TcpStream>,
}

/// A frame from the server.
#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl RawWs {
    /// Upgrades a fresh connection for `uid` and checks the 101.
    async fn open(s: &Server, uid: &str) -> RawWs {
        let key = s.key(uid).await;
        let stream = TcpStream::connect(s.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut io = BufReader::new(stream);
        let request = format!(
            "GET /ws?uid={}&access_key={} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            enc(uid),
            enc(&key)
        );
        io.get_mut().write_all(request.as_bytes()).await.unwrap();
        let mut line = String::new();
        io.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("HTTP/1.1 101"), "{line:?}");
        let mut accept = None;
        loop {
            line.clear();
            io.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("sec-websocket-accept") {
                    accept = Some(v.trim().to_string());
                }
            }
        }
        // RFC 6455 1.3's own example key and answer.
        assert_eq!(accept.as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        RawWs { io }
    }

    /// Writes one masked frame (clients must mask).
    async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.io
            .get_mut()
            .write_all(&frame_bytes(fin, opcode, payload))
            .await
            .unwrap();
    }

    /// Writes frames in one `write`, so they reach the server together.
    async fn send_all(&mut self, frames: &[(bool, u8, &[u8])]) {
        let bytes: Vec<u8> = frames
            .iter()
            .flat_map(|&(fin, op, p)| frame_bytes(fin, op, p))
            .collect();
        self.io.get_mut().write_all(&bytes).await.unwrap();
    }

    async fn send_close(&mut self, code: Option<u16>, reason: &[u8]) {
        let mut payload = Vec::new();
        if let Some(code) = code {
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason);
        }
        self.send(true, CLOSE, &payload).await;
    }

    /// The next frame from the server, or `None` at a clean end of stream. A reset fails the
    /// test: it is what a page sees when the server drops TCP with its frames unread.
    async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(PATIENCE, self.read_frame())
            .await
            .expect("a frame or the end of the stream in time")
    }

    async fn read_frame(&mut self) -> Option<Frame> {
        let mut head = [0u8; 2];
        match self.io.read_exact(&mut head[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => panic!("connection failed instead of ending cleanly: {e}"),
        }
        self.io
            .read_exact(&mut head[1..])
            .await
            .expect("frame header");
        assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
        let len = match head[1] & 0x7f {
            126 => u64::from(self.io.read_u16().await.unwrap()),
            127 => self.io.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let mut payload = vec![0; len as usize];
        self.io
            .read_exact(&mut payload)
            .await
            .expect("frame payload");
        Some(Frame {
            fin: head[0] & 0x80 != 0,
            opcode: head[0] & 0x0f,
            payload,
        })
    }

    /// Reads up to the server's close frame (skipping pings and data) and returns its payload.
    async fn close_payload(&mut self) -> Vec<u8> {
        loop {
            let frame = self.next().await.expect("a close frame before the end");
            match frame.opcode {
                CLOSE => {
                    assert!(frame.fin);
                    return frame.payload;
                }
                PING | TEXT => continue,
                op => panic!("unexpected opcode {op:#x}: {frame:?}"),
            }
        }
    }

    /// The code of the server's close frame.
    async fn close_code(&mut self) -> u16 {
        let payload = self.close_payload().await;
        assert!(
            payload.len() >= 2,
            "close frame without a code: {payload:?}"
        );
        std::str::from_utf8(&payload[2..]).expect("close reason is UTF-8");
        u16::from_be_bytes([payload[0], payload[1]])
    }

    /// Asserts that the server ends the TCP connection cleanly (FIN, not reset) and sends
    /// nothing more.
    async fn assert_clean_end(&mut self) {
        if let Some(frame) = self.next().await {
            panic!("expected the end of the stream, got {frame:?}");
        }
    }
}

fn frame_bytes(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// "κόσμε" followed by an encoded UTF-16 surrogate (U+D800), which UTF-8 forbids, then "edited":
/// Autobahn's own invalid payload (cases 6.3.x).
const NOT_UTF8: &[u8] = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited";

#[tokio::test]
async fn page_close_is_echoed_with_its_code_before_tcp_ends() {
    let s = Server::start(|_| {}).await;
    // One of each class a page may send: the RFC's codes, IANA-registered ones, the registered
    // range (3000-3999) and the private range (4000-4999) at both ends.
    let codes = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 3999, 4000, 4999,
    ];
    for code in codes {
        let mut ws = RawWs::open(&s, "closer").await;
        ws.send_close(Some(code), b"done here").await;
        let payload = ws.close_payload().await;
        assert_eq!(
            u16::from_be_bytes([payload[0], payload[1]]),
            code,
            "echo of {code}"
        );
        ws.assert_clean_end().await;
    }
    // A close without a code is answered with one without a code.
    let mut ws = RawWs::open(&s, "closer").await;
    ws.send_close(None, b"").await;
    assert_eq!(ws.close_payload().await, b"");
    ws.assert_clean_end().await;
    eventually("every closed socket to leave", || async {
        s.sockets_of("closer").await == 0
    })
    .await;
}

#[tokio::test]
async fn close_with_a_code_no_endpoint_may_send_gets_1002() {
    let s = Server::start(|_| {}).await;
    // RFC 6455 7.4: 0-999 unused; 1004 reserved; 1005, 1006 and 1015 never on the wire;
    // 1016-2999 reserved for future revisions; 5000 and above undefined.
    let codes = [
        0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ];
    for code in codes {
        let mut ws = RawWs::open(&s, "bad-closer").await;
        ws.send_close(Some(code), b"").await;
        assert_eq!(ws.close_code().await, 1002, "answer to close code {code}");
        ws.assert_clean_end().await;
    }
    // A one-byte close payload cannot hold a code.
    // The page has sent its close already, so the server drops TCP right after its own.
    let mut ws = RawWs::open(&s, "bad-closer").await;
    ws.send(true, CLOSE, &[0x03]).await;
    assert_eq!(ws.close_code().await, 1002);
    ws.assert_clean_end().await;
}

#[tokio::test]
async fn text_that_is_not_utf8_gets_1007_in_one_frame() {
    let s = Server::start(|_| {}).await;
    for payload in [NOT_UTF8, b"\xff", b"ok \xc0\xaf overlong slash"] {
        let mut ws = RawWs::open(&s, "utf8").await;
        ws.send(true, TEXT, payload).await;
        assert_eq!(ws.close_code().await, 1007, "{payload:?}");
        // The page answers the close; the server then ends TCP cleanly.
        ws.send_close(Some(1007), b"").await;
        ws.assert_clean_end().await;
    }
}

#[tokio::test]
async fn text_that_is_not_utf8_gets_1007_across_fragments() {
    let s = Server::start(|_| {}).await;
    // Valid first fragment, invalid second one: failed when the second arrives, without
    // waiting for the message to end.
    let mut ws = RawWs::open(&s, "utf8").await;
    ws.send(false, TEXT, "κόσμε".as_bytes()).await;
    ws.send(false, CONTINUATION, b"\xed\xa0\x80").await;
    assert_eq!(ws.close_code().await, 1007);
    ws.send_close(Some(1007), b"").await;
    ws.assert_clean_end().await;

    // The invalid sequence split across the fragment boundary (each fragment alone could be
    // the start or end of a valid character).
    let mut ws = RawWs::open(&s, "utf8").await;
    ws.send(false, TEXT, b"abc\xed").await;
    ws.send(false, CONTINUATION, b"\xa0").await;
    ws.send(true, CONTINUATION, b"\x80def").await;
    assert_eq!(ws.close_code().await, 1007);
    ws.send_close(Some(1007), b"").await;
    ws.assert_clean_end().await;

    // A message that ends in the middle of a character.
    let mut ws = RawWs::open(&s, "utf8").await;
    ws.send(false, TEXT, b"abc").await;
    ws.send(true, CONTINUATION, b"\xce").await;
    assert_eq!(ws.close_code().await, 1007);
    ws.send_close(Some(1007), b"").await;
    ws.assert_clean_end().await;

    // Valid UTF-8 split inside a character is fine: the socket stays open and serves pushes.
    let mut ws = RawWs::open(&s, "utf8-ok").await;
    let bytes = "κόσμε".as_bytes();
    ws.send(false, TEXT, &bytes[..1]).await;
    ws.send(true, CONTINUATION, &bytes[1..]).await;
    assert_eq!(
        s.push("utf8-ok", r#"{"topic":"t","contents":1}"#)
            .await
            .status,
        200
    );
    let frame = ws.next().await.expect("the push");
    assert_eq!(frame.opcode, TEXT);
    assert!(frame.fin);
    assert_eq!(frame.payload, br#"{"topic":"t","number":1,"contents":1}"#);
}

#[tokio::test]
async fn failed_connection_waits_for_the_page_close_even_with_frames_in_flight() {
    let s = Server::start(|_| {}).await;
    // The bad frame and more frames after it arrive together: the server fails the connection
    // on the first, but must not drop TCP with the others unread (a reset would reach the
    // page instead of, or before, the close frame).
    let mut ws = RawWs::open(&s, "busy").await;
    ws.send_all(&[
        (true, TEXT, b"\xff"),
        (true, TEXT, b"after the bad one"),
        (true, PING, b"p"),
    ])
    .await;
    assert_eq!(ws.close_code().await, 1007);
    ws.send(true, TEXT, b"still talking").await;
    ws.send_close(Some(1000), b"").await;
    ws.assert_clean_end().await;

    // Same for a protocol error (a reserved opcode).
    let mut ws = RawWs::open(&s, "busy").await;
    ws.send_all(&[(true, 0x3, b"reserved"), (true, TEXT, b"more")])
        .await;
    assert_eq!(ws.close_code().await, 1002);
    ws.send_close(Some(1002), b"").await;
    ws.assert_clean_end().await;
}

#[tokio::test]
async fn invalid_utf8_close_reason_gets_1007() {
    let s = Server::start(|_| {}).await;
    let mut ws = RawWs::open(&s, "reason").await;
    ws.send_close(Some(1000), b"\xff\xfe").await;
    assert_eq!(ws.close_code().await, 1007);
    ws.assert_clean_end().await;
}
