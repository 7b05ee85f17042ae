//! One socket's bounded send queue.
//!
//! A tokio `mpsc` channel would do, but it costs about 900 bytes per socket before the first
//! frame (a cache-padded channel header and a 32-slot block), a quarter of an idle socket's
//! whole footprint. This queue is a `VecDeque` behind a `std` mutex, with the waiting task's
//! waker beside it under the same lock: about 120 bytes, no allocation until a frame is queued,
//! and waiting for it ([`Outbox::ready`]) is a future of one pointer (a tokio `Notify`'s
//! `Notified` is 80 bytes, which every idle socket's task would carry).
//!
//! Protocol: the registry [`push`](Outbox::push)es; a push into an empty queue, and an
//! eviction, wake the socket task. The task drains the queue completely before it waits again,
//! and a wake-up with no task waiting is kept (like `Notify`'s permit), so none is ever lost.
//!
//! Each frame is tagged with the socket's index of its stream (`slot`) and its number there.
//! A resuming socket joins its streams *before* the broker tells it where each stream stands
//! and what it missed (so nothing published meanwhile is lost); [`Outbox::set_floors`] then
//! drops the live frames that the replay already holds, and refuses any that arrive late.
//!
//! Besides frames, the queue carries out-of-band instructions for the socket's task
//! ([`Control`]: follow or leave a stream, a room the backend moved the socket into). Only the
//! task owns the socket's membership, so it is the one to act on them; a socket that was never
//! moved pays one empty pointer for this.
//!
//! It also remembers the ids of the receipt messages queued to a resumable socket (and of those
//! its preamble carried: its replay, its offline inbox), so that a page's ack counts only from
//! a socket the message was actually sent to ([`Outbox::was_sent`]). One empty pointer again
//! until the first such message; then at most [`MAX_SENT_IDS`], the oldest forgotten first.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Poll, Waker};

use crate::wire::{CloseReason, Frame, StreamKey};

/// Most instructions waiting for one socket's task; past it, new ones are dropped (a task that
/// does not keep up with room moves is stuck writing, and will be closed for it).
const MAX_CONTROLS: usize = 256;

/// Most receipt message ids one socket remembers. Past it the oldest id is forgotten, and an ack
/// of that message from this socket is then refused as not for it (a page acks as it handles a
/// message, long before 64 more with receipts reach it).
pub const MAX_SENT_IDS: usize = 64;

/// A message id as a socket remembers it: the 16 bytes of a 32-hex-digit id (every id a node
/// issues), any other valid id as it is.
#[derive(Debug, PartialEq, Eq)]
enum SentId {
    Hex32([u8; 16]),
    Other(Box<str>),
}

impl SentId {
    fn new(id: &str) -> SentId {
        SentId::hex32(id).map_or_else(|| SentId::Other(id.into()), SentId::Hex32)
    }

    fn hex32(id: &str) -> Option<[u8; 16]> {
        // Lowercase digits only, so that each id has one form.
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        if id.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (b, pair) in bytes.iter_mut().zip(id.as_bytes().chunks_exact(2)) {
            *b = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(bytes)
    }
}

/// An instruction for a socket's task, from outside it (a cluster-wide command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Start following this stream (`Hub::follow`) and tell a resumable page where it starts.
    Follow(StreamKey),
    /// Stop following this stream, if the socket followed it after joining.
    Unfollow(StreamKey),
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued (or already delivered by the socket's replay).
    Queued,
    /// The queue was full: the socket is now marked evicted and its task woken to close it.
    Evicted,
    /// The socket is closing or already evicted; the frame was dropped.
    Closed,
}

/// How much one socket may have waiting: frames, and bytes (a slow reader of large pushes
/// must not hold `frames` × `max_body_bytes`). A frame into an empty queue is always taken.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimit {
    /// Frames waiting.
    pub frames: usize,
    /// Bytes of frames waiting.
    pub bytes: usize,
}

struct Queued {
    frame: Frame,
    slot: u16,
    seq: u64,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Queued>,
    /// Bytes of `frames`.
    bytes: usize,
    /// Per stream slot: frames numbered at or below this were in the socket's replay.
    floors: Vec<u64>,
    evicted: Option<CloseReason>,
    closed: bool,
    /// Instructions for the task, oldest first; allocated by the first one. Boxed on purpose:
    /// one pointer in every socket's state instead of an empty `VecDeque`'s four words, for
    /// something few sockets ever get.
    #[allow(clippy::box_collection)]
    controls: Option<Box<VecDeque<Control>>>,
    /// Ids of the receipt messages sent to the socket, oldest first, at most [`MAX_SENT_IDS`];
    /// allocated by the first one (boxed like `controls`: most sockets never get one).
    #[allow(clippy::box_collection)]
    sent: Option<Box<VecDeque<SentId>>>,
    /// The socket's task, while it waits in [`Outbox::ready`].
    waiter: Option<Waker>,
    /// A wake-up that came while no task waited: the next wait ends at once.
    woken: bool,
}

impl State {
    fn remember(&mut self, id: &str) {
        let sent = self.sent.get_or_insert_with(Default::default);
        if sent.len() >= MAX_SENT_IDS {
            sent.pop_front();
        }
        sent.push_back(SentId::new(id));
    }

    fn drop_below_floors(&mut self) {
        let floors = &self.floors;
        self.frames
            .retain(|q| q.seq == 0 || floors.get(usize::from(q.slot)).is_none_or(|&f| q.seq > f));
        self.bytes = self.frames.iter().map(|q| q.frame.len()).sum();
    }
}

/// A socket's queue of frames to write, shared by the registry (producer) and the socket task.
#[derive(Default)]
pub struct Outbox {
    // Held only for a push, a pop or a flag change; never across an await.
    state: Mutex<State>,
}

impl Outbox {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the socket's task (or leaves the wake-up for its next wait), once `state`'s lock
    /// is released.
    fn wake(mut state: std::sync::MutexGuard<'_, State>) {
        state.woken = true;
        let waiter = state.waiter.take();
        drop(state);
        if let Some(waker) = waiter {
            waker.wake();
        }
    }

    /// Queues `frame` (number `seq` of the socket's stream `slot`) unless that would pass
    /// `limit`, in which case the socket is a slow reader: it is marked evicted, its queue
    /// dropped, and its task woken. `id`: the frame's receipt message id, remembered once
    /// queued (see [`Outbox::was_sent`]); `None` for a frame the socket cannot ack.
    pub fn push(
        &self,
        frame: Frame,
        slot: u16,
        seq: u64,
        limit: QueueLimit,
        id: Option<&str>,
    ) -> Pushed {
        let mut state = self.state();
        if state.closed || state.evicted.is_some() {
            return Pushed::Closed;
        }
        if state
            .floors
            .get(usize::from(slot))
            .is_some_and(|&f| seq <= f)
        {
            return Pushed::Queued;
        }
        let full = state.frames.len() >= limit.frames
            || (!state.frames.is_empty() && state.bytes + frame.len() > limit.bytes);
        if full {
            state.evicted = Some(CloseReason::SlowConsumer);
            state.frames = VecDeque::new();
            state.bytes = 0;
            Outbox::wake(state);
            return Pushed::Evicted;
        }
        state.bytes += frame.len();
        state.frames.push_back(Queued { frame, slot, seq });
        if let Some(id) = id {
            state.remember(id);
        }
        let first = state.frames.len() == 1;
        if first {
            Outbox::wake(state);
        }
        Pushed::Queued
    }

    /// Per stream slot, the last number the socket's replay delivered: queued frames at or
    /// below it are dropped, and later pushes of them ignored.
    pub fn set_floors(&self, floors: Vec<u64>) {
        let mut state = self.state();
        state.floors = floors;
        state.drop_below_floors();
    }

    /// [`Outbox::set_floors`] for one stream slot (a stream followed after joining).
    pub fn set_floor(&self, slot: u16, seq: u64) {
        let mut state = self.state();
        let slot = usize::from(slot);
        if state.floors.len() <= slot {
            state.floors.resize(slot + 1, 0);
        }
        state.floors[slot] = seq;
        state.drop_below_floors();
    }

    /// Remembers the ids of receipt messages the socket got otherwise than through
    /// [`Outbox::push`]: in its preamble (a resume's replay, the offline inbox).
    pub fn remember_sent<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut ids = ids.into_iter().peekable();
        if ids.peek().is_none() {
            return;
        }
        let mut state = self.state();
        for id in ids {
            state.remember(id);
        }
    }

    /// Whether receipt message `id` was sent to this socket: queued to it, or in its preamble,
    /// and among the last [`MAX_SENT_IDS`] such (older ones are forgotten).
    pub fn was_sent(&self, id: &str) -> bool {
        let id = SentId::new(id);
        self.state()
            .sent
            .as_ref()
            .is_some_and(|sent| sent.contains(&id))
    }

    /// Hands the socket's task an instruction, and wakes it. `false` if the socket is going
    /// away or already has [`MAX_CONTROLS`] waiting.
    pub fn control(&self, control: Control) -> bool {
        let mut state = self.state();
        if state.closed || state.evicted.is_some() {
            return false;
        }
        let controls = state.controls.get_or_insert_with(Default::default);
        if controls.len() >= MAX_CONTROLS {
            return false;
        }
        controls.push_back(control);
        Outbox::wake(state);
        true
    }

    /// Whether instructions are waiting (cheap: no allocation, one lock).
    pub fn has_controls(&self) -> bool {
        self.state().controls.is_some()
    }

    /// The instructions waiting, oldest first (frees their queue).
    pub fn take_controls(&self) -> Option<VecDeque<Control>> {
        self.state().controls.take().map(|c| *c)
    }

    /// The next frame to write, if any.
    pub fn pop(&self) -> Option<Frame> {
        self.pop_placed().map(|(frame, _, _)| frame)
    }

    /// The next frame to write with its place: the socket's index of its stream (`slot`) and
    /// its number there (0 if unnumbered). For protocols that tell the client its position
    /// out of band, such as an SSE event's `id:`. The one way a frame leaves the queue, so its
    /// bytes always leave the byte bound with it.
    pub fn pop_placed(&self) -> Option<(Frame, u16, u64)> {
        let mut state = self.state();
        let q = state.frames.pop_front()?;
        state.bytes -= q.frame.len();
        Some((q.frame, q.slot, q.seq))
    }

    /// Why the socket must close, if the registry gave up on it.
    pub fn evicted(&self) -> Option<CloseReason> {
        self.state().evicted
    }

    /// Tells the socket task to close with `reason` (unless it already has a reason), dropping
    /// what it has queued.
    pub fn evict(&self, reason: CloseReason) {
        let mut state = self.state();
        if state.closed || state.evicted.is_some() {
            return;
        }
        state.evicted = Some(reason);
        state.frames = VecDeque::new();
        state.bytes = 0;
        Outbox::wake(state);
    }

    /// Wakes the socket's task for something outside its queue (see [`Registry::wake_all`]).
    ///
    /// [`Registry::wake_all`]: crate::registry::Registry::wake_all
    pub fn poke(&self) {
        Outbox::wake(self.state());
    }

    /// Resolves when a frame was queued into an empty queue, the socket was evicted or poked
    /// (or immediately, if that happened since the last wait). The future is one pointer (an
    /// `async fn` around it would be three): every idle socket waits in one.
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let mut state = self.state();
            if std::mem::take(&mut state.woken) {
                return Poll::Ready(());
            }
            match &mut state.waiter {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                waiter => *waiter = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }

    /// Refuses further frames but keeps those queued: the socket is leaving its streams (a
    /// shutting-down socket still writes what it was sent).
    pub fn detach(&self) {
        let mut state = self.state();
        state.closed = true;
        // The task no longer waits on the queue; a waker kept here would keep its task's
        // memory alive for as long as a large stream's lazy removal keeps this outbox.
        state.waiter = None;
    }

    /// Whether the socket left its streams or was evicted: it no longer counts as a follower.
    pub fn is_gone(&self) -> bool {
        let state = self.state();
        state.closed || state.evicted.is_some()
    }

    /// Refuses further frames and frees the queue: the socket is going away.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.frames = VecDeque::new();
        state.bytes = 0;
        state.sent = None;
        state.waiter = None;
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

    const TWO_HUNDRED: QueueLimit = QueueLimit {
        frames: 200,
        bytes: 1 << 20,
    };

    const TWO: QueueLimit = QueueLimit {
        frames: 2,
        bytes: 1 << 20,
    };

    #[tokio::test]
    async fn queues_in_order_and_evicts_when_full() {
        let outbox = Outbox::default();
        assert_eq!(outbox.push(frame("1"), 0, 1, TWO, None), Pushed::Queued);
        assert_eq!(outbox.push(frame("2"), 0, 2, TWO, None), Pushed::Queued);
        outbox.ready().await; // the first push left a permit
        assert_eq!(outbox.pop().unwrap().as_str(), "1");
        assert_eq!(outbox.push(frame("3"), 0, 3, TWO, None), Pushed::Queued);
        assert_eq!(outbox.push(frame("4"), 0, 4, TWO, None), Pushed::Evicted);
        assert_eq!(outbox.evicted(), Some(CloseReason::SlowConsumer));
        assert_eq!(outbox.pop(), None);
        assert_eq!(outbox.push(frame("5"), 0, 5, TWO, None), Pushed::Closed);
        outbox.ready().await; // eviction woke the task
    }

    #[tokio::test]
    async fn instructions_wake_the_task_and_are_taken_in_order() {
        let outbox = Outbox::default();
        assert!(outbox.take_controls().is_none());
        let room = |n: &str| StreamKey::Topic(n.into());
        assert!(outbox.control(Control::Follow(room("a"))));
        assert!(outbox.control(Control::Unfollow(room("b"))));
        outbox.ready().await; // the instruction left a permit
        let got: Vec<Control> = outbox.take_controls().unwrap().into_iter().collect();
        assert_eq!(
            got,
            [Control::Follow(room("a")), Control::Unfollow(room("b"))]
        );
        assert!(outbox.take_controls().is_none());
        for _ in 0..MAX_CONTROLS {
            assert!(outbox.control(Control::Follow(room("a"))));
        }
        assert!(!outbox.control(Control::Follow(room("a"))), "bounded");
        outbox.evict(CloseReason::Resync);
        outbox.take_controls();
        assert!(!outbox.control(Control::Follow(room("a"))), "evicted");
    }

    #[test]
    fn bytes_are_bounded_too_but_one_large_frame_always_fits() {
        let limit = QueueLimit {
            frames: 100,
            bytes: 10,
        };
        let outbox = Outbox::default();
        let big = "x".repeat(50);
        assert_eq!(outbox.push(frame(&big), 0, 1, limit, None), Pushed::Queued);
        assert_eq!(outbox.pop().unwrap().len(), 50);
        assert_eq!(
            outbox.push(frame("12345"), 0, 2, limit, None),
            Pushed::Queued
        );
        assert_eq!(
            outbox.push(frame("12345"), 0, 3, limit, None),
            Pushed::Queued
        );
        assert_eq!(outbox.push(frame("1"), 0, 4, limit, None), Pushed::Evicted);
    }

    /// A socket drained as fast as frames come never counts as slow, however many bytes pass
    /// through it over its life (SSE once popped without giving the bytes back, and was closed
    /// with 4008 after a few megabytes).
    #[test]
    fn a_drained_queue_gives_its_bytes_back() {
        let limit = QueueLimit {
            frames: 100,
            bytes: 1000,
        };
        let outbox = Outbox::default();
        let kilobyte = "x".repeat(600);
        for seq in 1..=50u64 {
            assert_eq!(
                outbox.push(frame(&kilobyte), 0, seq, limit, None),
                Pushed::Queued
            );
            assert_eq!(
                outbox.push(frame("small"), 0, seq, limit, None),
                Pushed::Queued
            );
            if seq % 2 == 0 {
                assert!(outbox.pop().is_some());
            } else {
                assert!(outbox.pop_placed().is_some());
            }
            assert!(outbox.pop_placed().is_some());
        }
        assert_eq!(outbox.evicted(), None);
    }

    #[test]
    fn it_remembers_the_last_ids_sent_and_nothing_while_none_came() {
        let outbox = Outbox::default();
        outbox.push(frame("plain"), 0, 1, TWO_HUNDRED, None);
        outbox.remember_sent([]);
        assert!(outbox.state().sent.is_none(), "no allocation without an id");
        let id = |n: usize| format!("{n:032x}");
        outbox.push(frame("a"), 0, 2, TWO_HUNDRED, Some(&id(0)));
        outbox.remember_sent(["00ff", "0123"]);
        assert!(outbox.was_sent(&id(0)) && outbox.was_sent("00ff"));
        assert!(!outbox.was_sent(&id(1)) && !outbox.was_sent("00f"));
        // Past the bound, the oldest is forgotten.
        for n in 1..MAX_SENT_IDS {
            outbox.remember_sent([id(n).as_str()]);
        }
        assert!(!outbox.was_sent(&id(0)) && !outbox.was_sent("00ff"));
        assert!(outbox.was_sent("0123") && outbox.was_sent(&id(MAX_SENT_IDS - 1)));
        assert_eq!(outbox.state().sent.as_ref().unwrap().len(), MAX_SENT_IDS);
        // A frame not queued is not remembered.
        outbox.set_floor(0, 10);
        outbox.push(frame("b"), 0, 5, TWO_HUNDRED, Some(&id(999)));
        assert!(!outbox.was_sent(&id(999)));
        outbox.close();
        assert!(!outbox.was_sent("0123"));
    }

    #[test]
    fn floors_drop_what_the_replay_already_delivered() {
        let outbox = Outbox::default();
        for (slot, seq) in [(0, 4), (1, 9), (0, 5), (1, 10), (0, 6)] {
            outbox.push(
                frame(&format!("{slot}/{seq}")),
                slot,
                seq,
                TWO_HUNDRED,
                None,
            );
        }
        // The replay went up to 5 on slot 0 and 9 on slot 1.
        outbox.set_floors(vec![5, 9]);
        assert_eq!(
            outbox.push(frame("0/5 again"), 0, 5, TWO_HUNDRED, None),
            Pushed::Queued
        );
        outbox.push(frame("0/7"), 0, 7, TWO_HUNDRED, None);
        let got: Vec<String> = std::iter::from_fn(|| outbox.pop())
            .map(|f| f.to_string())
            .collect();
        assert_eq!(got, ["1/10", "0/6", "0/7"]);
    }
}
