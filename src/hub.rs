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
use crate::broker::{Attach, Attached, Broker, BrokerError, ClusterView, Published, Retention};
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
        // The page may ack the receipt messages its replay carries.
        let replayed = attached.iter().filter_map(|a| a.replay.as_ref());
        membership.outbox().remember_sent(
            replayed
                .flat_map(|r| &r.frames)
                .filter_map(|frame| wire::message_id_of(frame)),
        );
        Ok(Session {
            membership,
            preamble,
        })
    }

    /// Makes a connected socket follow `key` too (a room the server moved it into, a channel
    /// it subscribed to), in the same order as [`Hub::connect`]: join, then attach, then set
    /// the stream's floor. With `since`, the answer carries what it missed there. `Ok(None)`:
    /// it already follows `key`, or it needs no positions (a seed socket). On error it does not
    /// follow `key`.
    pub async fn follow(
        &self,
        session: &mut Session,
        key: StreamKey,
        since: Option<Option<Position>>,
    ) -> Result<Option<Attached>, BrokerError> {
        let Some(slot) = session.membership.follow(key.clone()) else {
            return Ok(None);
        };
        let positions = session.membership.subscription().proto == Proto::Resumable;
        let attach = [Attach { key: &key, since }];
        match self.broker.attach(&attach, positions).await {
            Ok(Some(mut attached)) => {
                let attached = attached.remove(0);
                self.registry.note_position(&key, attached.position);
                session
                    .membership
                    .outbox()
                    .set_floor(slot, attached.position.seq);
                Ok(Some(attached))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                session.membership.unfollow(&key);
                Err(e)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Retention;
    use serde_json::value::RawValue;
    use std::time::Duration;

    fn hub() -> Hub {
        let queue = QueueLimit {
            frames: 16,
            bytes: 1 << 20,
        };
        let retention = Retention {
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            max_bytes: 1 << 20,
        };
        Hub::local(queue, retention)
    }

    async fn publish(hub: &Hub, key: &StreamKey, n: u32) {
        let raw = RawValue::from_string(n.to_string()).unwrap();
        hub.publish(key, Message::new("t", &raw), None)
            .await
            .unwrap();
    }

    fn texts(session: &Session) -> Vec<String> {
        std::iter::from_fn(|| session.membership.outbox().pop())
            .map(|f| f.to_string())
            .collect()
    }

    #[tokio::test]
    async fn a_socket_follows_and_leaves_a_room_after_joining() {
        let hub = hub();
        let room = StreamKey::Topic("room:1".into());
        let sub = Subscription {
            uid: "a".into(),
            topics: vec![],
            proto: Proto::Resumable,
        };
        let mut session = hub.connect(sub, None).await.unwrap();
        publish(&hub, &room, 1).await;
        assert!(texts(&session).is_empty(), "not in the room yet");
        // Joining from position 0 replays what the room kept, then live messages follow.
        let since = Some(Some(Position {
            generation: 0,
            seq: 0,
        }));
        let attached = hub.follow(&mut session, room.clone(), since).await.unwrap();
        let attached = attached.expect("a resumable socket gets positions");
        assert_eq!(attached.position.seq, 1);
        assert_eq!(attached.replay.unwrap().frames.len(), 1);
        assert!(hub
            .follow(&mut session, room.clone(), None)
            .await
            .unwrap()
            .is_none());
        publish(&hub, &room, 2).await;
        assert_eq!(
            texts(&session),
            [r#"{"topic":"t","number":2,"contents":2,"stream":"topic:room:1"}"#]
        );
        assert_eq!(hub.registry().followers(&room), 1);
        assert!(session.membership.unfollow(&room));
        assert!(!session.membership.unfollow(&room));
        publish(&hub, &room, 3).await;
        assert!(texts(&session).is_empty());
        assert_eq!(hub.registry().followers(&room), 0);
        // Leaving the hub leaves every stream, followed ones included.
        hub.follow(&mut session, room.clone(), None).await.unwrap();
        assert_eq!(hub.registry().followers(&room), 1);
        drop(session);
        assert_eq!(hub.registry().followers(&room), 0);
        assert_eq!(hub.socket_count(), 0);
    }
}
