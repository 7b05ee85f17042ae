//! Reading a request body, bounded in bytes and in time: every endpoint that takes a body reads
//! it here, after the request's credentials were checked.
//!
//! - A body past `max_body_bytes` is refused with 413 as soon as that is known, and what the
//!   client is still sending is read and thrown away (up to [`DRAIN_BYTES`], for at most
//!   [`DRAIN_TIME`]) before the reply goes out. Clients that write their whole body before
//!   reading (curl, Node's `http`, the Pusher server SDKs) would otherwise see the connection
//!   closed under them, a broken pipe or a reset instead of the 413. A client that asked
//!   `Expect: 100-continue` has sent nothing yet and is answered at once.
//! - A body must arrive within `body_timeout_secs`, and after its first second at
//!   `body_min_bytes_per_sec` or faster: a client that stalls mid-body gets 408 and the
//!   connection is closed, so it holds at most its bounded buffer, and only for that long.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use warp::http::header::{self, HeaderMap};

use super::ApiError;

/// Most bytes of a refused body read and dropped so that its client can read the 413.
pub const DRAIN_BYTES: u64 = 16 * 1024 * 1024;
/// Longest a refused body is read for before the connection is closed anyway.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);
/// How long a body may take before its pace is measured against `min_bytes_per_sec`.
const GRACE: Duration = Duration::from_secs(1);

/// How much of a body is read, for how long, at what pace (`max_body_bytes`,
/// `body_timeout_secs`, `body_min_bytes_per_sec`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body; 413 above.
    pub max_bytes: usize,
    /// Longest the whole body may take; 408 after.
    pub timeout: Duration,
    /// Slowest pace after the first second, bytes per second; 408 below. 0: no pace.
    pub min_bytes_per_sec: usize,
}

impl Limits {
    /// When the body must have arrived, if `read` bytes of it came by now: the pace's deadline
    /// for the next byte, never past the overall one.
    fn deadline(&self, start: Instant, read: usize) -> Instant {
        let overall = start + self.timeout;
        if self.min_bytes_per_sec == 0 {
            return overall;
        }
        let paced = GRACE + Duration::from_secs_f64(read as f64 / self.min_bytes_per_sec as f64);
        overall.min(start + paced)
    }

    fn too_slow(&self) -> ApiError {
        ApiError::BodyTimeout(self.timeout.as_secs().max(1), self.min_bytes_per_sec)
    }
}

/// Collects the body, refusing it (413) as soon as it is known to exceed `limits.max_bytes`, so
/// an oversized upload costs at most that much memory, and (408) when it comes too slowly.
pub(super) async fn read_body<S, B>(
    body: S,
    headers: &HeaderMap,
    limits: &Limits,
) -> Result<Bytes, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let limit = limits.max_bytes;
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
    let start = Instant::now();
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    loop {
        let next = tokio::time::timeout_at(limits.deadline(start, buf.len()), body.next());
        let Ok(next) = next.await else {
            return Err(limits.too_slow());
        };
        let Some(chunk) = next else {
            break;
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_follows_the_pace_and_never_passes_the_timeout() {
        let limits = Limits {
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(30),
            min_bytes_per_sec: 1000,
        };
        let start = Instant::now();
        assert_eq!(limits.deadline(start, 0), start + GRACE);
        assert_eq!(
            limits.deadline(start, 2000),
            start + GRACE + Duration::from_secs(2)
        );
        assert_eq!(
            limits.deadline(start, 1 << 20),
            start + Duration::from_secs(30)
        );
        let unpaced = Limits {
            min_bytes_per_sec: 0,
            ..limits
        };
        assert_eq!(unpaced.deadline(start, 0), start + Duration::from_secs(30));
    }
}
