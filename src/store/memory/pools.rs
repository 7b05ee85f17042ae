//! Data pools in memory. A change and its publish are one step under a striped tokio mutex
//! that the change holds across its publish, and a snapshot across its read (no network call
//! inside).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::value::RawValue;

use crate::broker::{Attach, BoxFuture, BrokerError};
use crate::hub::Hub;
use crate::live::Current;
use crate::pools::{append_to, Bounds, Change, Changed, Doc, PoolError, PoolStore};
use crate::wire::{Message, Position, StreamKey};

/// Locks of in-memory pools: a pool hashes to one of these, so changes to different pools
/// rarely wait for each other, and the locks take no memory per pool.
const STRIPES: usize = 64;
/// How long a change or snapshot waits for another change to finish before giving up (503).
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// One node's pools.
pub struct MemoryPools {
    /// Documents by pool; held for map operations only.
    docs: Mutex<HashMap<String, Doc>>,
    /// What a change holds across its publish (so a snapshot of that pool waits for it).
    changing: Box<[tokio::sync::Mutex<()>]>,
    bounds: Current<Bounds>,
}

impl MemoryPools {
    /// No pools yet.
    pub fn new(bounds: Bounds) -> MemoryPools {
        MemoryPools {
            docs: Mutex::default(),
            changing: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            bounds: Current::new(bounds),
        }
    }

    fn docs(&self) -> MutexGuard<'_, HashMap<String, Doc>> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds pool `name` against changes (waiting up to [`LOCK_WAIT`] for one in flight).
    async fn lock(&self, name: &str) -> Result<tokio::sync::MutexGuard<'_, ()>, PoolError> {
        tokio::time::timeout(LOCK_WAIT, self.changing[stripe(name)].lock())
            .await
            .map_err(|_| PoolError::Busy)
    }

    /// [`PoolStore::change`] with the pool's stripe held.
    async fn change_held(
        &self,
        hub: &Hub,
        name: &str,
        change: Change<'_>,
    ) -> Result<Changed, PoolError> {
        let (old, count) = {
            let docs = self.docs();
            (docs.get(name).cloned(), docs.len())
        };
        let (event, doc, contents): (&'static str, Option<String>, String) = match change {
            Change::Put(value) => {
                let event = if old.is_some() { "update" } else { "add" };
                (event, Some(value.get().to_owned()), value.get().to_owned())
            }
            Change::Append(value) => match &old {
                None => {
                    let doc = format!("[{}]", value.get());
                    ("add", Some(doc.clone()), doc)
                }
                Some(old) => {
                    let doc = append_to(&old.json, value.get()).ok_or(PoolError::NotArray)?;
                    ("append", Some(doc), value.get().to_owned())
                }
            },
            Change::Delete => {
                if old.is_none() {
                    return Err(PoolError::NotFound);
                }
                ("delete", None, "null".to_owned())
            }
        };
        if let Some(doc) = &doc {
            let bounds = *self.bounds.get();
            if doc.len() > bounds.max_bytes {
                return Err(PoolError::TooLarge(bounds.max_bytes));
            }
            if old.is_none() && count >= bounds.max_pools {
                return Err(PoolError::Full(bounds.max_pools));
            }
        }
        let topic = format!("{name}:{event}");
        let raw: &RawValue = serde_json::from_str(&contents).expect("built from JSON");
        let key = StreamKey::Topic(name.into());
        let published = hub.publish(&key, Message::new(&topic, raw), None).await?;
        let mut docs = self.docs();
        match doc {
            Some(json) => {
                let seq = published.seq;
                docs.insert(
                    name.to_owned(),
                    Doc {
                        json: json.into(),
                        seq,
                    },
                );
            }
            None => {
                docs.remove(name);
            }
        }
        Ok(Changed { event, published })
    }
}

impl PoolStore for MemoryPools {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Doc>, BrokerError>> {
        let doc = self.docs().get(name).cloned();
        Box::pin(std::future::ready(Ok(doc)))
    }

    fn which<'a>(&'a self, names: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<bool>, BrokerError>> {
        let docs = self.docs();
        let found = names.iter().map(|n| docs.contains_key(*n)).collect();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn snapshot<'a>(
        &'a self,
        hub: &'a Hub,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<(Doc, Position)>, PoolError>> {
        Box::pin(async move {
            let _held = self.lock(name).await?;
            let Some(doc) = self.docs().get(name).cloned() else {
                return Ok(None);
            };
            let key = StreamKey::Topic(name.into());
            let attach = [Attach {
                key: &key,
                since: None,
            }];
            let at = hub.broker().attach(&attach, true).await?;
            let position = at.and_then(|a| a.first().map(|a| a.position));
            Ok(position.map(|p| (doc, p)))
        })
    }

    fn change<'a>(
        &'a self,
        hub: &'a Hub,
        name: &'a str,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Changed, PoolError>> {
        Box::pin(async move {
            let _held = self.lock(name).await?;
            self.change_held(hub, name, change).await
        })
    }

    fn set_bounds(&self, bounds: Bounds) {
        self.bounds.set(bounds);
    }
}

/// The in-memory lock stripe of pool `name`.
fn stripe(name: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
    (hash % STRIPES as u64) as usize
}
