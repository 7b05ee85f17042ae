//! Where each feature's shared state is kept: one trait per concern, defined beside the
//! feature ([`ReceiptStore`], [`InboxStore`], [`PoolStore`], Pusher mode's [`ChannelStore`]),
//! each with a memory implementation (`memory/`, one node's) and a Redis one (`redis/`, the
//! cluster's). [`Stores`] makes the whole set from the config, once: the only place a feature's
//! store is chosen.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use crate::broker::redis::RedisHandle;
use crate::config::Config;
use crate::inbox::InboxStore;
use crate::pools::PoolStore;
use crate::protocol::pusher::store::ChannelStore;
use crate::receipts::ReceiptStore;

/// Every feature's store, all in memory or all in the cluster's Redis.
pub struct Stores {
    /// Delivery reports.
    pub receipts: Arc<dyn ReceiptStore>,
    /// Offline inboxes.
    pub inbox: Arc<dyn InboxStore>,
    /// Data pools.
    pub pools: Arc<dyn PoolStore>,
    /// Pusher mode's counts, presence members and cache (with `pusher` set).
    pub pusher: Option<Arc<dyn ChannelStore>>,
}

impl Stores {
    /// One node's stores, in memory, with `config`'s bounds.
    pub fn memory(config: &Config) -> Stores {
        let live = config.live();
        Stores {
            receipts: Arc::new(memory::MemoryReceipts::new(
                live.receipt_ttl(),
                live.receipt_max,
            )),
            inbox: Arc::new(memory::MemoryInbox::new(live.inbox_bounds())),
            pools: Arc::new(memory::MemoryPools::new(live.pool_bounds())),
            pusher: config
                .pusher
                .as_ref()
                .map(|_| Arc::new(memory::MemoryChannels::default()) as Arc<dyn ChannelStore>),
        }
    }

    /// The cluster's stores, in `redis`, with `config`'s bounds.
    pub fn redis(redis: &RedisHandle, config: &Config) -> Stores {
        let live = config.live();
        Stores {
            receipts: Arc::new(redis::RedisReceipts::new(redis.clone(), live.receipt_ttl())),
            inbox: Arc::new(redis::RedisInbox::new(redis.clone(), live.inbox_bounds())),
            pools: Arc::new(redis::RedisPools::new(redis.clone(), live.pool_bounds())),
            pusher: config
                .pusher
                .as_ref()
                .map(|_| redis::RedisChannels::start(redis.clone()) as Arc<dyn ChannelStore>),
        }
    }
}
