//! [`Services`]: the node's shared state, built once from the config by [`Services::start`],
//! the one place that chooses memory or Redis. Handlers and sockets reach every service
//! through it (the sockets' [`crate::protocol::SocketContext`] derefs to it), so no copy of a
//! service lives anywhere else.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::redis::RedisBroker;
use crate::broker::redis_conn::Target as Store;
use crate::broker::{BrokerError, Published};
use crate::callbacks::Callbacks;
use crate::config::{Config, Live};
use crate::hub::Hub;
use crate::inbox::{InboxStore, Kept};
use crate::metrics::Metrics;
use crate::pools::PoolStore;
use crate::protocol::pusher::store::ChannelStore;
use crate::receipts::{ReceiptStore, Target};
use crate::store::Stores;
use crate::wire::{Message, PushBody, StreamKey};

/// Every service a handler or a socket uses.
pub struct Services {
    /// Registry and broker: connect and publish.
    pub hub: Arc<Hub>,
    /// Counters and histograms for `/metrics`, and the admin page's samples.
    pub metrics: Arc<Metrics>,
    /// Delivery reports, which a page's acks count in.
    pub receipts: Arc<dyn ReceiptStore>,
    /// Offline inboxes: a fresh page gets its uid's, an ack empties it of that message.
    pub inbox: Arc<dyn InboxStore>,
    /// Data pools: a page following one gets its document first.
    pub pools: Arc<dyn PoolStore>,
    /// Pusher mode's counts, presence members and cache (with `pusher` set).
    pub pusher_store: Option<Arc<dyn ChannelStore>>,
    /// Events for the business server: a uid online/offline, a socket's connect/disconnect.
    pub callbacks: Callbacks,
}

impl Services {
    /// The services `config` asks for: in memory, or in the cluster's Redis with `redis_url` or
    /// `redis_cluster` (the only place that chooses).
    /// Starts their background tasks (the cluster broker's, the callbacks' sender) in the
    /// current runtime. `config` was validated.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> Services {
        let target = match (&config.redis_url, config.redis_cluster.as_slice()) {
            (Some(url), _) => Some(Store::Single(url.expose().to_owned())),
            (None, []) => None,
            (None, urls) => Some(Store::Cluster(
                urls.iter().map(|u| u.expose().to_owned()).collect(),
            )),
        };
        let (hub, redis) = match target {
            None => (
                Arc::new(Hub::local(config.queue_limit(), config.retention())),
                None,
            ),
            Some(target) => {
                let registry = Arc::new(crate::registry::Registry::new(config.queue_limit()));
                let broker = RedisBroker::start(
                    &target,
                    &config.redis_prefix,
                    registry.clone(),
                    config.retention(),
                    metrics.clone(),
                )
                .expect("redis_url and redis_cluster were validated");
                let redis = broker.handle();
                (Arc::new(Hub::new(registry, broker)), Some(redis))
            }
        };
        let stores = match &redis {
            Some(redis) => Stores::redis(redis, config),
            None => Stores::memory(config),
        };
        let callbacks = Callbacks::start(
            callback_settings(&config.live()),
            hub.clone(),
            metrics.clone(),
        );
        Services::of(hub, metrics, stores, callbacks)
    }

    /// In-memory services with the config's default bounds and no callbacks, over `hub`
    /// (tests, fuzzing).
    pub fn local(hub: Arc<Hub>, metrics: Arc<Metrics>) -> Services {
        let defaults = Config::new("127.0.0.1:0", "");
        Services::of(hub, metrics, Stores::memory(&defaults), Callbacks::off())
    }

    fn of(hub: Arc<Hub>, metrics: Arc<Metrics>, stores: Stores, callbacks: Callbacks) -> Services {
        Services {
            hub,
            metrics,
            receipts: stores.receipts,
            inbox: stores.inbox,
            pools: stores.pools,
            pusher_store: stores.pusher,
            callbacks,
        }
    }

    /// Drops expired reports and inbox messages (in memory); called periodically.
    pub fn sweep(&self) {
        self.receipts.sweep();
        self.inbox.sweep();
    }

    /// A reloaded config's bounds and callback settings, for what comes next.
    pub fn reconfigure(&self, live: &Live) {
        self.receipts
            .set_bounds(live.receipt_ttl(), live.receipt_max);
        self.inbox.set_bounds(live.inbox_bounds());
        self.pools.set_bounds(live.pool_bounds());
        self.callbacks.reconfigure(callback_settings(live));
    }
}

/// The callback settings `config` asks for (none without `callback_url`).
fn callback_settings(config: &Live) -> Option<crate::callbacks::Settings> {
    let (Some(url), Some(secret)) = (&config.callback_url, &config.callback_secret) else {
        return None;
    };
    // validate() checked it.
    let url = url.parse().ok()?;
    Some(crate::callbacks::Settings {
        url,
        secret: secret.expose().to_owned(),
        sockets: config.callback_sockets,
        grace: Duration::from_secs_f64(config.callback_grace_secs),
        queue: config.callback_queue,
    })
}

/// A push to uids, as `/push` asks for it, checked already.
pub struct Push<'a> {
    /// The uids, sorted, each once.
    pub uids: &'a [&'a str],
    /// Topic, contents, and whether a receipt was asked for.
    pub body: &'a PushBody<'a>,
    /// Keep it this long for the uids that have no socket open (implies a receipt).
    pub inbox: Option<Duration>,
    /// The backend's `Idempotency-Key`: a retry with it publishes nothing again.
    pub idempotency_key: Option<&'a str>,
}

/// What became of a [`Push`].
pub struct Pushed {
    /// One outcome per uid, in the order of [`Push::uids`].
    pub results: Vec<Published>,
    /// Sockets reached, over every uid.
    pub sockets: usize,
    /// Every uid's publish was a repeat (same idempotency key): nothing went out.
    pub repeated: bool,
    /// The message id, when a receipt (or the inbox) was asked for.
    pub id: Option<String>,
    /// With the inbox: the uids it was kept for, and those whose inbox was full.
    pub inbox: Option<(Vec<String>, Vec<String>)>,
}

impl Services {
    /// What `/publish` and `/broadcast` do, as [`Services::push`] does for uids: `body` to
    /// `key` (a topic's stream, or the broadcast stream), its delivery report opened before and
    /// completed after when it asked for a receipt (its id named after `kind`, as a push's is
    /// after `push`). Returns what the hub answered and the report's id.
    pub async fn publish(
        &self,
        key: &StreamKey,
        body: &PushBody<'_>,
        kind: &str,
        idempotency_key: Option<&str>,
    ) -> Result<(Published, Option<String>), BrokerError> {
        let id = body
            .receipt
            .then(|| crate::receipts::new_id(kind, idempotency_key));
        let target = || match key {
            StreamKey::Topic(t) => Target::Topic(t.to_string()),
            _ => Target::Broadcast,
        };
        let msg = self.reported(body, id.as_deref(), target).await?;
        let published = self.hub.publish(key, msg, idempotency_key).await?;
        if let Some(id) = id.as_deref().filter(|_| !published.repeated) {
            self.receipts
                .complete(id, published.sockets as u64, &[])
                .await?;
        }
        Ok((published, id))
    }

    /// `body` as the message to publish: with `id`, a report of what becomes of it, opened
    /// for `target` before it goes out (so a page acking at once finds it), and the id in it.
    async fn reported<'b>(
        &self,
        body: &'b PushBody<'b>,
        id: Option<&'b str>,
        target: impl FnOnce() -> Target,
    ) -> Result<Message<'b>, BrokerError> {
        let Some(id) = id else {
            return Ok(body.message());
        };
        self.receipts.open(id, &target(), &body.topic).await?;
        Ok(body.message().with_id(id))
    }

    /// Publishes `push` to every uid's stream, with its delivery report (opened before the
    /// message goes out, so a page acking at once finds it, and completed with the sockets
    /// reached and the uids offline) and its offline inbox (kept for the uids that had no
    /// socket): one call for what `/push` does, whatever carries it.
    pub async fn push(&self, push: Push<'_>) -> Result<Pushed, BrokerError> {
        let body = push.body;
        let id = (body.receipt || push.inbox.is_some())
            .then(|| crate::receipts::new_id("push", push.idempotency_key));
        let target = || Target::Uids(push.uids.iter().map(|&u| u.to_owned()).collect());
        let msg = self.reported(body, id.as_deref(), target).await?;
        let idem = push.idempotency_key;
        let results: Vec<Published> = if let [uid] = push.uids {
            vec![
                self.hub
                    .publish(&StreamKey::User((*uid).into()), msg, idem)
                    .await?,
            ]
        } else {
            // Each uid is its own stream: publish them concurrently (a cluster broker pipelines
            // them on one connection). If any fails the whole push fails, and a retry with the
            // same Idempotency-Key does not repeat the ones that went out.
            let keys: Vec<StreamKey> = push
                .uids
                .iter()
                .map(|&u| StreamKey::User(u.into()))
                .collect();
            let all = keys.iter().map(|key| self.hub.publish(key, msg, idem));
            futures_util::future::join_all(all)
                .await
                .into_iter()
                .collect::<Result<_, _>>()?
        };
        let sockets: usize = results.iter().map(|p| p.sockets).sum();
        let repeated = results.iter().all(|p| p.repeated);
        let offline = || {
            push.uids
                .iter()
                .zip(&results)
                .filter(|(_, p)| p.sockets == 0)
                .map(|(&u, _)| u)
        };
        if let Some(id) = id.as_deref().filter(|_| !repeated) {
            let offline: Vec<String> = offline().map(str::to_owned).collect();
            self.receipts.complete(id, sockets as u64, &offline).await?;
        }
        let mut inbox = None;
        if let (Some(ttl), Some(id)) = (push.inbox, id.as_deref()) {
            // A retry with the same Idempotency-Key finds it kept already.
            let (mut kept, mut full) = (Vec::new(), Vec::new());
            for uid in offline() {
                match self
                    .inbox
                    .keep(uid, id, &body.topic, body.contents.get(), ttl)
                    .await?
                {
                    Kept::Kept => kept.push(uid.to_owned()),
                    Kept::UidFull | Kept::Full => full.push(uid.to_owned()),
                }
            }
            inbox = Some((kept, full));
        }
        Ok(Pushed {
            results,
            sockets,
            repeated,
            id,
            inbox,
        })
    }
}
