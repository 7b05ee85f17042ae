//! The hub: this node's [`Registry`] and the cluster's [`Broker`], and the two verbs every
//! protocol uses: [`Hub::connect`] a socket, [`Hub::publish`] a message.
//!
//! Connecting is where registry and broker meet, in one order: join the registry first (from
//! then on every message delivered here reaches the socket's outbox), then ask the broker
//! where each stream stands and what the socket missed, then set the outbox's floors so the
//! live frames the replay already holds are dropped. So a resuming socket gets what it missed,
//! then live messages, each once, whether the broker is this process or Redis.

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::local::LocalBroker;
use crate::broker::{Attach, Broker, BrokerError, ClusterView, Published, Retention};
use crate::outbox::QueueLimit;
use crate::registry::{Membership, Registry, Subscription};
use crate::wire::{self, Frame, Message, Position, Proto, StreamKey};

/// A connected socket: its place in the registry (it leaves when this is dropped) and the
/// frames to write before anything from its outbox.
pub struct Session {
    /// Registry membership; its outbox carries live frames.
    pub membership: Membership,
    /// For a resumable socket: `_welcome`, then per resumed stream any `_gap` and the missed
    /// messages. Empty for a seed socket.
    pub preamble: Vec<Frame>,
}

/// Registry and broker together.
pub struct Hub {
    registry: Arc<Registry>,
    broker: Arc<dyn Broker>,
}

impl Hub {
    /// A hub over `registry`, which `broker` delivers into.
    pub fn new(registry: Arc<Registry>, broker: Arc<dyn Broker>) -> Hub {
        Hub { registry, broker }
    }

    /// A single-node hub: a registry whose sockets queue at most `queue`, and the in-memory
    /// broker keeping history as `retention` says.
    pub fn local(queue: QueueLimit, retention: Retention) -> Hub {
        let registry = Arc::new(Registry::new(queue));
        let broker = Arc::new(LocalBroker::new(registry.clone(), retention));
        Hub::new(registry, broker)
    }

    /// This node's registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The broker.
    pub fn broker(&self) -> &dyn Broker {
        &*self.broker
    }

    /// Joins a socket following `sub`. With `since` (stream name → last position seen, as the
    /// client sent it), the preamble carries what it missed. On error the socket has left
    /// again and nothing of it remains.
    pub async fn connect(
        &self,
        sub: Subscription,
        since: Option<&HashMap<String, String>>,
    ) -> Result<Session, BrokerError> {
        let resumable = sub.proto == Proto::Resumable;
        let membership = self.registry.join(sub);
        let keys: Vec<StreamKey> = membership.subscription().keys().collect();
        let names: Vec<String> = keys.iter().map(StreamKey::name).collect();
        let attaches: Vec<Attach<'_>> = keys
            .iter()
            .zip(&names)
            .map(|(key, name)| Attach {
                key,
                since: since.and_then(|s| s.get(name)).map(|p| Position::parse(p)),
            })
            .collect();
        let Some(attached) = self.broker.attach(&attaches, resumable).await? else {
            return Ok(Session {
                membership,
                preamble: Vec::new(),
            });
        };
        let positions: Vec<(String, Position)> = names
            .iter()
            .zip(&attached)
            .map(|(name, a)| (name.clone(), a.position))
            .collect();
        let mut preamble = vec![wire::welcome(&positions)];
        for ((key, name), a) in keys.iter().zip(&names).zip(attached.iter()) {
            self.registry.note_position(key, a.position);
            let Some(replay) = &a.replay else { continue };
            if let Some(next) = replay.gap_before {
                let said = since.and_then(|s| s.get(name)).map_or("", String::as_str);
                preamble.push(wire::gap(name, said, next));
            }
            preamble.extend(replay.frames.iter().cloned());
        }
        membership
            .outbox()
            .set_floors(attached.iter().map(|a| a.position.seq).collect());
        Ok(Session {
            membership,
            preamble,
        })
    }

    /// Publishes `msg` to stream `key` on every node.
    pub async fn publish(
        &self,
        key: &StreamKey,
        msg: Message<'_>,
        idempotency_key: Option<&str>,
    ) -> Result<Published, BrokerError> {
        self.broker.publish(key, msg, idempotency_key).await
    }

    /// Sockets `uid` has open on every node.
    pub async fn sockets_of(&self, uid: &str) -> Result<usize, BrokerError> {
        self.broker.sockets_of(uid).await
    }

    /// The cluster's totals, or `None` for a single node.
    pub async fn cluster(&self) -> Result<Option<ClusterView>, BrokerError> {
        self.broker.cluster().await
    }

    /// Live sockets on this node.
    pub fn socket_count(&self) -> usize {
        self.registry.socket_count()
    }

    /// After every socket closed: let the broker leave the cluster cleanly.
    pub async fn shutdown(&self) {
        self.broker.shutdown().await;
    }

    /// Periodic housekeeping of both halves.
    pub fn sweep(&self) {
        self.broker.sweep();
        self.registry.sweep();
    }
}
