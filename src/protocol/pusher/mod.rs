//! Pusher Channels (protocol 7) on the same listener: pusher-js, Laravel Echo and the Pusher
//! server SDKs work unchanged against `/app/{key}` and `/apps/{id}/…` (`pusher:` in the
//! config; off when absent).
//!
//! A Pusher channel is a stream of the same hub ([`StreamKey::Channel`], namespaced per app):
//! a socket subscribes with [`Hub::follow`](crate::hub::Hub::follow), a trigger is a
//! [`Hub::publish`](crate::hub::Hub::publish), and the registry builds each event's frame once
//! for every subscriber ([`Proto::Pusher`](crate::wire::Proto::Pusher)). So the fan-out path,
//! the memory bounds and, with `redis_url`, the cluster are the native protocol's. What the hub
//! does not know (subscription counts, presence members, cache channels' last events) is in a
//! [`store::ChannelStore`], in memory or in the cluster's Redis.
//!
//! - [`codec`]: frames both ways; a malformed one is an error frame, never a crash.
//! - [`auth`]: the HMAC signatures (channel auth, sign-in, HTTP API).
//! - [`socket`]: one socket's task, beside (not inside) the native one.
//! - [`api`]: the HTTP API's operations (the HTTP layer checks and routes).
//! - [`store`]: the shared state above.
//! - [`webhooks`]: batched, signed, retried, from bounded queues that never slow delivery.

pub mod api;
pub mod auth;
pub mod codec;
pub mod socket;
pub mod store;
pub mod webhooks;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::broker::{BrokerError, Published};
use crate::commands::Command;
use crate::config::{PusherApp, PusherConfig};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::wire::{Message, StreamKey};
use store::ChannelStore;
pub use webhooks::WebhookEvent;
use webhooks::Webhooks;

/// What a channel's name makes it. Prefixes, not substrings: `my-private-room` is public.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Anyone may subscribe; no client events.
    Public,
    /// `private-`: a signed `auth`; client events when the app enables them.
    Private,
    /// `private-encrypted-`: a signed `auth`; data relayed as the SDK encrypted it; no client
    /// events.
    Encrypted,
    /// `presence-`: a signed `auth` over `channel_data`; members; client events when enabled.
    Presence,
    /// `#server-to-user-<id>`: only sockets signed in as that user.
    User,
}

impl Kind {
    /// The kind of channel `name`.
    pub fn of(name: &str) -> Kind {
        if name.starts_with("#server-to-user-") {
            Kind::User
        } else if name.starts_with("private-encrypted-") {
            Kind::Encrypted
        } else if name.starts_with("private-") {
            Kind::Private
        } else if name.starts_with("presence-") {
            Kind::Presence
        } else {
            Kind::Public
        }
    }

    /// Whether a subscription needs a signed `auth`.
    pub fn needs_auth(self) -> bool {
        matches!(self, Kind::Private | Kind::Encrypted | Kind::Presence)
    }
}

/// Whether `name` is a cache channel (its last event replayed to each new subscriber).
pub fn is_cache(name: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

pub use crate::commands::user_channel;

/// One configured app and its live sockets on this node.
pub struct App {
    /// Its config.
    pub conf: PusherApp,
    /// Its id, the one copy every channel key of the app points at.
    pub id: Arc<str>,
    sockets: AtomicUsize,
}

/// A socket's place under its app's `max_connections`; freed when dropped.
pub struct AppSlot(Arc<App>);

impl AppSlot {
    /// The app.
    pub fn app(&self) -> &Arc<App> {
        &self.0
    }
}

impl Drop for AppSlot {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

impl App {
    /// Takes a place for one more socket, unless the app is at `max_connections`.
    pub fn admit(self: &Arc<Self>) -> Option<AppSlot> {
        let max = self.conf.max_connections.unwrap_or(usize::MAX);
        self.sockets
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| AppSlot(self.clone()))
    }

    /// Sockets of this app open on this node.
    pub fn sockets(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }
}

/// Pusher mode's shared state: the apps, the limits, the hub and the store.
pub struct Pusher {
    apps: Vec<Arc<App>>,
    /// Silence before a socket is pinged (and as long again before it is closed).
    pub activity_timeout: Duration,
    /// Largest event data, in bytes.
    pub max_event_bytes: usize,
    /// Client events per socket per second.
    pub client_events_per_second: u32,
    /// Most channels one socket may be subscribed to.
    pub max_channels_per_socket: usize,
    /// Subscribe and unsubscribe frames per socket per second, after a burst of
    /// `max_channels_per_socket`.
    pub subscriptions_per_second: u32,
    /// The share of `max_sockets` Pusher sockets may take together.
    pub max_sockets_share: f64,
    /// The hub every channel is a stream of.
    pub hub: Arc<Hub>,
    /// Counts, members, cache.
    pub store: Arc<dyn ChannelStore>,
    webhooks: Option<Webhooks>,
}

impl Pusher {
    /// Pusher mode for `config` over `hub`, its shared state in `store` (which
    /// [`Services`](crate::services::Services) chose); webhooks are counted in `metrics`. Must
    /// run inside a tokio runtime.
    pub fn new(
        config: &PusherConfig,
        hub: Arc<Hub>,
        store: Arc<dyn ChannelStore>,
        metrics: Arc<Metrics>,
    ) -> Pusher {
        let apps: Vec<Arc<App>> = config
            .apps
            .iter()
            .map(|conf| {
                Arc::new(App {
                    id: conf.id.as_str().into(),
                    conf: conf.clone(),
                    sockets: AtomicUsize::new(0),
                })
            })
            .collect();
        Pusher {
            webhooks: Webhooks::start(&apps, metrics),
            apps,
            activity_timeout: Duration::from_secs(config.activity_timeout_secs),
            max_event_bytes: config.max_event_bytes,
            client_events_per_second: config.client_events_per_second,
            max_channels_per_socket: config.max_channels_per_socket,
            subscriptions_per_second: config.subscriptions_per_second,
            max_sockets_share: config.max_sockets_share,
            hub,
            store,
        }
    }

    /// The app pages connect to with `key`.
    pub fn app_by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.apps.iter().find(|a| a.conf.key == key)
    }

    /// The app of an HTTP API path.
    pub fn app_by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.apps.iter().find(|a| a.conf.id == id)
    }

    /// Whether any app has webhooks (so events are worth building).
    pub fn has_webhooks(&self) -> bool {
        self.webhooks.is_some()
    }

    /// Queues a webhook event, never waiting (see [`webhooks`] for what a full queue drops).
    pub fn notify(&self, event: WebhookEvent) {
        if let Some(webhooks) = &self.webhooks {
            webhooks.send(event);
        }
    }

    /// Publishes `event` with `data` (raw JSON) on `channel` of `app`, on every node, skipping
    /// socket `except`; a cache channel keeps it as its last event.
    pub async fn publish(
        &self,
        app: &str,
        channel: &str,
        event: &str,
        data: &RawValue,
        except: Option<&str>,
        user_id: Option<&str>,
    ) -> Result<Published, BrokerError> {
        let key = StreamKey::Channel {
            app: app.into(),
            name: channel.into(),
        };
        let msg = Message::new(event, data).except(except).from_user(user_id);
        let published = self.hub.publish(&key, msg, None).await?;
        if is_cache(channel) {
            let frame = msg.pusher_frame(channel);
            self.store.cache_put(app, channel, &frame).await?;
        }
        Ok(published)
    }

    /// Asks every node to close the sockets signed in as `user_id` of `app` (4009).
    pub async fn terminate(&self, app: &str, user_id: &str) -> Result<(), BrokerError> {
        self.hub
            .broker()
            .command(&Command::Terminate {
                app: app.to_owned(),
                user_id: user_id.to_owned(),
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_prefixes_not_substrings() {
        assert_eq!(Kind::of("private-a"), Kind::Private);
        assert_eq!(Kind::of("private-encrypted-a"), Kind::Encrypted);
        assert_eq!(Kind::of("presence-a"), Kind::Presence);
        assert_eq!(Kind::of("#server-to-user-1"), Kind::User);
        assert_eq!(Kind::of("my-private-a"), Kind::Public);
        assert_eq!(Kind::of("xpresence-a"), Kind::Public);
        assert!(is_cache("cache-a") && is_cache("presence-cache-a"));
        assert!(!is_cache("my-cache-a") && !is_cache("private-a"));
    }
}
