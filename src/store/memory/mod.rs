//! The stores of one node, in memory: what a single push-serve (no `redis_url`, no
//! `redis_cluster`) keeps.

pub mod inbox;
pub mod pools;
pub mod pusher;
pub mod receipts;

pub use inbox::MemoryInbox;
pub use pools::MemoryPools;
pub use pusher::MemoryChannels;
pub use receipts::MemoryReceipts;
