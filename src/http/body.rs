//! Reading a request body, bounded in bytes: every endpoint that takes a body reads it here.
//!
//! A body past the limit is refused with 413 as soon as that is known, and what the client is
//! still sending is read and thrown away (up to [`DRAIN_BYTES`], for at most [`DRAIN_TIME`])
//! before the reply goes out. Clients that write their whole body before reading (curl, Node's
//! `http`, the Pusher server SDKs) would otherwise see the connection closed under them, a
//! broken pipe or a reset instead of the 413. A client that asked `Expect: 100-continue` has
//! sent nothing yet and is answered at once.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::http::header::{self, HeaderMap};

use super::ApiError;

/// Most bytes of a refused body read and dropped so that its client can read the 413.
pub const DRAIN_BYTES: u64 = 16 * 1024 * 1024;
/// Longest a refused body is read for before the connection is closed anyway.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Collects the body, refusing (413) as soon as it is known to exceed `limit`, so an oversized
/// upload costs at most `limit` bytes of memory.
pub(super) async fn read_body<S, B>(
    body: S,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = std::pin::pin!(body);
    if declared.is_some_and(|n| n > limit as u64) {
        if declared.is_some_and(|n| n <= DRAIN_BYTES) && !expects_continue(headers) {
            drain(body, 0).await;
        }
        return Err(ApiError::BodyTooLarge(limit));
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| ApiError::BodyRead)?;
        if buf.len() + chunk.remaining() > limit {
            let read = (buf.len() + chunk.remaining()) as u64;
            drop(buf);
            drain(body, read).await;
            return Err(ApiError::BodyTooLarge(limit));
        }
        buf.put(chunk);
    }
    Ok(buf.freeze())
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads and drops the rest of a refused body (`read` bytes of it are gone already), within
/// [`DRAIN_BYTES`] and [`DRAIN_TIME`]. Past either, the connection is closed after the reply.
async fn drain<S, B>(mut body: std::pin::Pin<&mut S>, mut read: u64)
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let all = async {
        while read <= DRAIN_BYTES {
            match body.next().await {
                Some(Ok(chunk)) => read += chunk.remaining() as u64,
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, all).await;
}
