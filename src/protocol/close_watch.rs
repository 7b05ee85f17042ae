//! A client's byte stream, watched for its close frame.
//!
//! After a protocol error (bad UTF-8, a reserved opcode, an oversized frame…) tokio-tungstenite
//! ends its message stream for good, and what tungstenite had already read past the bad frame
//! is out of reach. Yet the server should still wait for the client's close frame before
//! dropping TCP: a connection dropped with client bytes unread is answered with a reset by the
//! kernel, and the client may then never read the close frame (and its code) we just sent.
//!
//! [`CloseWatch`] sits under tungstenite and follows frame boundaries in every byte read from
//! the client (headers only; payloads are skipped, nothing is kept), so that after a failure the
//! socket task can go on reading raw bytes until a whole close frame from the client went by,
//! whether tungstenite or the task read it. Its state is 16 bytes per socket.
//!
//! It also holds what the server wrote by hand and the connection has not taken yet
//! ([`CloseWatch::queue`]): the server's frames are framed by
//! [`native::write`](super::native::write) rather than by tungstenite, whose write buffer keeps
//! its capacity for the socket's whole life once anything went through it (an idle Pusher
//! socket kept the ~150 bytes of its `connection_established` that way). These bytes are
//! empty, with no allocation, between writes.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Where the client's byte stream stands within the current frame.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum At {
    /// First header byte: FIN, opcode.
    #[default]
    Start,
    /// Second header byte: mask bit and 7-bit length.
    Length,
    /// Extended length bytes (`ext` left).
    Extended,
    /// Masking key bytes (`mask` left).
    Mask,
    /// Payload bytes (`left` left).
    Payload,
}

/// Frame boundaries of the client's stream, fed with every byte read.
#[derive(Debug, Default)]
struct Boundaries {
    /// Payload bytes left in the current frame (while in its extended length: the length so far).
    left: u64,
    at: At,
    ext: u8,
    mask: u8,
    /// The current frame is a close frame.
    closing: bool,
    /// A whole close frame was read.
    closed: bool,
}

impl Boundaries {
    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some((&b, rest)) = bytes.split_first() {
            match self.at {
                At::Start => {
                    self.closing = b & 0x0f == 0x8;
                    self.at = At::Length;
                }
                At::Length => {
                    self.mask = if b & 0x80 != 0 { 4 } else { 0 };
                    (self.ext, self.left) = match b & 0x7f {
                        126 => (2, 0),
                        127 => (8, 0),
                        n => (0, u64::from(n)),
                    };
                    self.at = At::Extended;
                    self.settle();
                }
                At::Extended => {
                    self.left = self.left << 8 | u64::from(b);
                    self.ext -= 1;
                    self.settle();
                }
                At::Mask => {
                    self.mask -= 1;
                    self.settle();
                }
                At::Payload => {
                    let n = usize::try_from(self.left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    self.left -= n as u64;
                    bytes = &bytes[n..];
                    self.settle();
                    continue;
                }
            }
            bytes = rest;
        }
    }

    /// Moves past the header parts that are complete, and past a finished frame.
    fn settle(&mut self) {
        if self.at == At::Extended && self.ext == 0 {
            self.at = At::Mask;
        }
        if self.at == At::Mask && self.mask == 0 {
            self.at = At::Payload;
        }
        if self.at == At::Payload && self.left == 0 {
            self.closed |= self.closing;
            self.at = At::Start;
        }
    }
}

/// The connection under a server-side WebSocket: reads pass through [`Boundaries`], writes go
/// straight through.
#[derive(Debug)]
pub struct CloseWatch<S> {
    io: S,
    frames: Boundaries,
    /// Bytes written by hand that the connection has not taken yet: the rest of a write cut
    /// short (a shutdown, an eviction), which must go out before anything else does.
    unsent: Box<[u8]>,
}

impl<S> CloseWatch<S> {
    /// Watches `io` from the first byte after the handshake.
    pub fn new(io: S) -> CloseWatch<S> {
        CloseWatch {
            io,
            frames: Boundaries::default(),
            unsent: Box::default(),
        }
    }

    /// Queues `bytes` (whole frames) to be written by [`CloseWatch::write_unsent`], after
    /// whatever is still unsent.
    pub fn queue(&mut self, bytes: Vec<u8>) {
        self.unsent = if self.unsent.is_empty() {
            bytes.into_boxed_slice()
        } else {
            [&self.unsent[..], &bytes].concat().into_boxed_slice()
        };
    }

    /// Writes what [`CloseWatch::queue`] holds. Cancel safe: dropped part way, it keeps what
    /// was not written yet, so the stream never holds half a frame followed by another.
    pub async fn write_unsent(&mut self) -> io::Result<()>
    where
        S: AsyncWrite + Unpin,
    {
        while !self.unsent.is_empty() {
            let n = self.io.write(&self.unsent).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.unsent = if n == self.unsent.len() {
                Box::default()
            } else {
                self.unsent[n..].into()
            };
        }
        Ok(())
    }

    /// Whether a whole close frame has been read from the client.
    pub fn peer_closed(&self) -> bool {
        self.frames.closed
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CloseWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        self.frames.feed(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CloseWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(opcode: u8, len: usize) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match len {
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
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(std::iter::repeat_n(0x88, len));
        out
    }

    #[test]
    fn sees_a_close_only_once_it_is_whole_however_the_bytes_are_cut() {
        let mut stream = Vec::new();
        // Payload bytes equal to a close header must not fool it, nor must any length form.
        for (op, len) in [(0x1, 5), (0x2, 0), (0x1, 300), (0x9, 125), (0x2, 70_000)] {
            stream.extend(frame(op, len));
        }
        let before_close = stream.len();
        stream.extend(frame(0x8, 2));
        for chunk in [1, 2, 3, 7, 256, stream.len()] {
            let mut b = Boundaries::default();
            for (i, piece) in stream.chunks(chunk).enumerate() {
                let end = (i + 1) * chunk;
                b.feed(piece);
                assert_eq!(b.closed, end >= stream.len(), "chunk {chunk}, end {end}");
                if end <= before_close {
                    assert!(!b.closing, "chunk {chunk}: not in a close frame yet");
                }
            }
            assert_eq!(b.at, At::Start);
        }
    }

    #[test]
    fn an_empty_close_counts_and_unmasked_frames_are_followed_too() {
        let mut b = Boundaries::default();
        b.feed(&[0x81, 0x02, b'h', b'i']);
        assert!(!b.closed);
        b.feed(&[0x88, 0x00]);
        assert!(b.closed);
    }
}
