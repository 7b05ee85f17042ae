//! A WebSocket client that is nothing but bytes on a TCP socket: the handshake and every masked
//! frame written by hand, so nothing a client library does (validating, answering a ping or a
//! close for us) can hide what the server puts on the wire, or make the page look alive.

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::*;

pub const TEXT: u8 = 0x1;
pub const CONTINUATION: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;

/// A WebSocket client that is nothing but bytes on a TCP socket.
pub struct RawWs {
    io: BufReader<TcpStream>,
}

/// A frame from the server.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawWs {
    /// Upgrades a fresh connection for `uid` with a fresh key and checks the 101.
    pub async fn open(s: &Server, uid: &str) -> RawWs {
        let key = s.key(uid).await;
        RawWs {
            io: raw_upgrade(s, uid, &key, None).await,
        }
    }

    /// Writes one masked frame (clients must mask).
    pub async fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.io
            .get_mut()
            .write_all(&frame_bytes(fin, opcode, payload))
            .await
            .unwrap();
    }

    /// Writes frames in one `write`, so they reach the server together.
    pub async fn send_all(&mut self, frames: &[(bool, u8, &[u8])]) {
        let bytes: Vec<u8> = frames
            .iter()
            .flat_map(|&(fin, op, p)| frame_bytes(fin, op, p))
            .collect();
        self.io.get_mut().write_all(&bytes).await.unwrap();
    }

    pub async fn send_close(&mut self, code: Option<u16>, reason: &[u8]) {
        let mut payload = Vec::new();
        if let Some(code) = code {
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(reason);
        }
        self.send(true, CLOSE, &payload).await;
    }

    /// The next frame from the server, or `None` at a clean end of stream. A reset fails the
    /// test: it is what a page sees when the server drops TCP with its frames unread.
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(PATIENCE, self.read_frame())
            .await
            .expect("a frame or the end of the stream in time")
    }

    pub async fn read_frame(&mut self) -> Option<Frame> {
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
    pub async fn close_payload(&mut self) -> Vec<u8> {
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
    pub async fn close_code(&mut self) -> u16 {
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
    pub async fn assert_clean_end(&mut self) {
        if let Some(frame) = self.next().await {
            panic!("expected the end of the stream, got {frame:?}");
        }
    }
}

pub fn frame_bytes(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
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
