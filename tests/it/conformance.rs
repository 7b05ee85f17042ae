//! RFC 6455 closing rules, checked over a raw TCP socket: the handshake and every masked frame
//! are written by hand, so nothing a client library does (validating, answering a close for
//! us) can hide what the server puts on the wire.
//!
//! - a close started by the page is echoed with its code before the server drops TCP;
//! - a close with a code no endpoint may send gets 1002;
//! - a text message that is not UTF-8 gets 1007, in one frame and across fragments;
//! - after failing a connection the server waits for the page's close, so the page reads a
//!   close frame and then a clean end of stream, never a reset.

use crate::common;

use common::raw_ws::*;
use common::*;

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
