//! Pusher mode's counts, presence members and cache for one node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::broker::{BoxFuture, BrokerError};
use crate::protocol::pusher::store::{ChannelStore, Member, CACHE_TTL};

/// Most cache channels remembered by one node's [`MemoryChannels`]; past it, new ones are not
/// cached until old ones expire.
const MEMORY_CACHE_MAX: usize = 100_000;

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, Result<T, BrokerError>> {
    Box::pin(std::future::ready(Ok(value)))
}

type ChannelId = (Box<str>, Box<str>);

fn id(app: &str, channel: &str) -> ChannelId {
    (app.into(), channel.into())
}

#[derive(Default)]
struct Memory {
    /// Per app: each channel with subscribers here, and how many. The name is the one the
    /// socket and the registry hold too (see [`ChannelStore::subscribed`]).
    subscriptions: HashMap<Box<str>, HashMap<Arc<str>, usize>>,
    /// Per presence channel: user → (sockets, user_info).
    presence: HashMap<ChannelId, HashMap<String, (usize, String)>>,
    cache: HashMap<ChannelId, (String, Instant)>,
}

/// One node's Pusher state.
#[derive(Default)]
pub struct MemoryChannels {
    // Held for map operations only, never across an await.
    state: Mutex<Memory>,
}

impl MemoryChannels {
    fn state(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ChannelStore for MemoryChannels {
    fn subscribed<'a>(
        &'a self,
        app: &'a str,
        channel: &'a Arc<str>,
        delta: i64,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let mut state = self.state();
        let before = state
            .subscriptions
            .get(app)
            .and_then(|channels| channels.get(channel))
            .copied()
            .unwrap_or(0) as i64;
        let n = before + delta;
        if n > 0 {
            let channels = match state.subscriptions.get_mut(app) {
                Some(channels) => channels,
                None => state.subscriptions.entry(app.into()).or_default(),
            };
            channels.insert(channel.clone(), n as usize);
        } else if let Some(channels) = state.subscriptions.get_mut(app) {
            channels.remove(channel);
            if channels.is_empty() {
                state.subscriptions.remove(app);
            }
        }
        ready((before == 0) != (n <= 0))
    }

    fn channels<'a>(
        &'a self,
        app: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, usize>, BrokerError>> {
        let state = self.state();
        let found = state
            .subscriptions
            .get(app)
            .map(|channels| channels.iter().map(|(c, n)| (c.to_string(), *n)).collect())
            .unwrap_or_default();
        ready(found)
    }

    fn join<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        member: &'a Member,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let mut state = self.state();
        let users = state.presence.entry(id(app, channel)).or_default();
        let entry = users
            .entry(member.user_id.clone())
            .or_insert((0, String::new()));
        entry.0 += 1;
        entry.1.clone_from(&member.user_info);
        ready(entry.0 == 1)
    }

    fn leave<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, BrokerError>> {
        let mut state = self.state();
        let key = id(app, channel);
        let Some(users) = state.presence.get_mut(&key) else {
            return ready(false);
        };
        let last = match users.get_mut(user_id) {
            Some(entry) if entry.0 > 1 => {
                entry.0 -= 1;
                false
            }
            Some(_) => {
                users.remove(user_id);
                true
            }
            None => false,
        };
        if users.is_empty() {
            state.presence.remove(&key);
        }
        ready(last)
    }

    fn members<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>> {
        let state = self.state();
        let members = state
            .presence
            .get(&id(app, channel))
            .map(|users| {
                users
                    .iter()
                    .map(|(user_id, (_, info))| Member {
                        user_id: user_id.clone(),
                        user_info: info.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        ready(members)
    }

    fn cache_put<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
        frame: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let mut state = self.state();
        if state.cache.len() >= MEMORY_CACHE_MAX {
            state.cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
        }
        let key = id(app, channel);
        if state.cache.len() < MEMORY_CACHE_MAX || state.cache.contains_key(&key) {
            state.cache.insert(key, (frame.to_owned(), Instant::now()));
        }
        ready(())
    }

    fn cache_get<'a>(
        &'a self,
        app: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, BrokerError>> {
        let state = self.state();
        let hit = state
            .cache
            .get(&id(app, channel))
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(frame, _)| frame.clone());
        ready(hit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_member_per_user_however_many_sockets() {
        let store = MemoryChannels::default();
        let alice = Member {
            user_id: "alice".into(),
            user_info: r#"{"n":1}"#.into(),
        };
        assert!(store.join("a", "presence-x", &alice).await.unwrap());
        assert!(!store.join("a", "presence-x", &alice).await.unwrap());
        assert_eq!(store.members("a", "presence-x").await.unwrap(), [alice]);
        assert!(store.members("b", "presence-x").await.unwrap().is_empty());
        assert!(!store.leave("a", "presence-x", "alice").await.unwrap());
        assert!(store.leave("a", "presence-x", "alice").await.unwrap());
        assert!(!store.leave("a", "presence-x", "alice").await.unwrap());
        assert!(store.members("a", "presence-x").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn counts_and_cache_are_per_app() {
        let store = MemoryChannels::default();
        let c: Arc<str> = "c".into();
        assert!(store.subscribed("a", &c, 1).await.unwrap(), "occupied");
        assert!(!store.subscribed("a", &c, 1).await.unwrap());
        store.subscribed("b", &c, 1).await.unwrap();
        assert_eq!(store.channels("a").await.unwrap()["c"], 2);
        assert!(!store.subscribed("a", &c, -1).await.unwrap());
        assert!(store.subscribed("a", &c, -1).await.unwrap(), "vacated");
        assert!(store.channels("a").await.unwrap().is_empty());
        store.cache_put("a", "cache-c", "f").await.unwrap();
        assert_eq!(
            store.cache_get("a", "cache-c").await.unwrap().as_deref(),
            Some("f")
        );
        assert_eq!(store.cache_get("b", "cache-c").await.unwrap(), None);
    }
}
