//! The stores of a cluster, in its Redis (one, or a Redis Cluster), shared by every node,
//! through the broker's [`crate::broker::redis::RedisHandle`]: its connection, key prefix,
//! bounded and metered calls, node id and heartbeat. Their scripts are in `src/broker/lua/`
//! with the broker's, loaded the same way (`redis::Script`, `EVALSHA` then `EVAL`).

pub mod inbox;
pub mod pools;
pub mod pusher;
pub mod receipts;

pub use inbox::RedisInbox;
pub use pools::RedisPools;
pub use pusher::RedisChannels;
pub use receipts::RedisReceipts;
