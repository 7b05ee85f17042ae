//! One socket's bounded send queue.
//!
//! A tokio `mpsc` channel would do, but it costs about 900 bytes per socket before the first
//! frame (a cache-padded channel header and a 32-slot block), a quarter of an idle socket's
//! whole footprint. This queue is a `VecDeque` behind a `std` mutex plus a `Notify`: about
//! 130 bytes, no allocation until a frame is queued.
//!
//! Protocol: the hub [`push`](Outbox::push)es; a push into an empty queue, and an eviction,
//! wake the socket task. The task drains the queue completely before it waits again, so with
//! `Notify`'s stored permit no wake-up is ever lost.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::hub::Frame;

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// The queue was full: the socket is now marked evicted and its task woken to close it.
    Evicted,
    /// The socket is closing or already evicted; the frame was dropped.
    Closed,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    evicted: bool,
    closed: bool,
}

/// A socket's queue of frames to write, shared by the hub (producer) and the socket task.
#[derive(Default)]
pub struct Outbox {
    // Held only for a push, a pop or a flag change; never across an await.
    state: Mutex<State>,
    ready: Notify,
}

impl Outbox {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame` unless `cap` frames are already waiting, in which case the socket is a
    /// slow reader: it is marked evicted, its queue dropped, and its task woken.
    pub fn push(&self, frame: Frame, cap: usize) -> Pushed {
        let mut state = self.state();
        if state.closed || state.evicted {
            return Pushed::Closed;
        }
        if state.frames.len() >= cap {
            state.evicted = true;
            state.frames = VecDeque::new();
            drop(state);
            self.ready.notify_one();
            return Pushed::Evicted;
        }
        state.frames.push_back(frame);
        let first = state.frames.len() == 1;
        drop(state);
        if first {
            self.ready.notify_one();
        }
        Pushed::Queued
    }

    /// The next frame to write, if any.
    pub fn pop(&self) -> Option<Frame> {
        self.state().frames.pop_front()
    }

    /// Whether the hub gave up on this socket for reading too slowly.
    pub fn is_evicted(&self) -> bool {
        self.state().evicted
    }

    /// Resolves when a frame was queued into an empty queue or the socket was evicted (or
    /// immediately, if that happened since the last wait).
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Refuses further frames but keeps those queued: the socket is leaving its streams (a
    /// shutting-down socket still writes what it was sent).
    pub fn detach(&self) {
        self.state().closed = true;
    }

    /// Whether the socket left its streams or was evicted: it no longer counts as a follower.
    pub fn is_gone(&self) -> bool {
        let state = self.state();
        state.closed || state.evicted
    }

    /// Refuses further frames and frees the queue: the socket is going away.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.frames = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn frame(s: &str) -> Frame {
        Arc::new(Utf8Bytes::from(s))
    }

    #[tokio::test]
    async fn queues_in_order_and_evicts_when_full() {
        let outbox = Outbox::default();
        assert_eq!(outbox.push(frame("1"), 2), Pushed::Queued);
        assert_eq!(outbox.push(frame("2"), 2), Pushed::Queued);
        outbox.ready().await; // the first push left a permit
        assert_eq!(outbox.pop().unwrap().as_str(), "1");
        assert_eq!(outbox.push(frame("3"), 2), Pushed::Queued);
        assert_eq!(outbox.push(frame("4"), 2), Pushed::Evicted);
        assert!(outbox.is_evicted());
        assert_eq!(outbox.pop(), None);
        assert_eq!(outbox.push(frame("5"), 2), Pushed::Closed);
        outbox.ready().await; // eviction woke the task
    }
}
