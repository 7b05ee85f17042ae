//! The one connection every Redis call of the cluster goes through, whichever Redis it is:
//! one Redis (`redis_url`: a reconnecting multiplexed connection) or a Redis Cluster
//! (`redis_cluster`: one connection per master, every command routed by its key's slot, slot
//! moves and failovers followed). Callers write commands, pipelines and scripts once; what a
//! cluster adds is one rule, kept by every caller: the keys of one command, pipeline or script
//! share a hash tag (`{…}`), so they live in one slot.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

/// Where the nodes' shared state lives.
#[derive(Clone, Debug)]
pub enum Target {
    /// One Redis (`redis_url`).
    Single(String),
    /// A Redis Cluster, by seed URLs (`redis_cluster`).
    Cluster(Vec<String>),
}

impl Target {
    /// The target as logged: URLs without their password.
    pub fn shown(&self) -> String {
        match self {
            Target::Single(url) => without_password(url),
            Target::Cluster(urls) => format!(
                "cluster {}",
                urls.iter()
                    .map(|u| without_password(u))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// A Redis URL with its password replaced by `***`.
pub fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// A connection to one Redis or to a Redis Cluster. Cheap to clone (every clone shares the
/// same sockets).
#[derive(Clone)]
pub enum RedisConn {
    /// One Redis.
    Single(ConnectionManager),
    /// A Redis Cluster: set once the first connection succeeded (until then every call fails
    /// at once, like a Redis that is down).
    Cluster(Arc<RwLock<Option<ClusterConnection>>>),
}

fn not_connected() -> RedisError {
    RedisError::from((ErrorKind::Io, "not connected to the redis cluster yet"))
}

impl RedisConn {
    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    fn cluster(slot: &RwLock<Option<ClusterConnection>>) -> Option<ClusterConnection> {
        slot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(slot) => match RedisConn::cluster(slot) {
                Some(mut conn) => Box::pin(async move { conn.req_packed_command(cmd).await }),
                None => Box::pin(std::future::ready(Err(not_connected()))),
            },
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(slot) => match RedisConn::cluster(slot) {
                Some(mut conn) => {
                    Box::pin(async move { conn.req_packed_commands(pipeline, offset, count).await })
                }
                None => Box::pin(std::future::ready(Err(not_connected()))),
            },
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// A Redis Cluster client as push-serve uses it: bounded connects and answers, few retries
/// (callers have their own 1.5 s bound), and with `pushes`, RESP3 so that (sharded)
/// subscriptions deliver their messages there.
pub fn cluster_client(
    urls: &[String],
    response_timeout: Duration,
    pushes: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> redis::RedisResult<redis::cluster::ClusterClient> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(response_timeout)
        .retries(2)
        .min_retry_wait(50)
        .max_retry_wait(500);
    if let Some(tx) = pushes {
        builder = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(tx);
    }
    builder.build()
}

/// Makes `conn` (a [`RedisConn::Cluster`]) usable: connects to the cluster at `urls`, retrying
/// with backoff until it answers (a node starts while its Redis is down, and joins when it is
/// up). Runs until it succeeds once; the connection then follows the cluster by itself.
pub async fn connect_cluster(
    slot: Arc<RwLock<Option<ClusterConnection>>>,
    urls: Vec<String>,
    response_timeout: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let client = cluster_client(&urls, response_timeout, None)?;
            client.get_async_connection().await
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(conn)) => {
                *slot.write().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                return;
            }
            Ok(Err(e)) => log::debug!("redis cluster not reachable yet: {e}"),
            Err(_) => log::debug!("redis cluster not reachable yet: no answer within 3 s"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Escapes one name (a uid, a topic, a pool's name) for use inside a Redis key's hash tag:
/// `%`, `{` and `}` become `%25`, `%7B` and `%7D`. So a name can neither end the tag early
/// (which would put the key in another slot, or make two names' keys the same) nor spell
/// another key's suffix; names without those characters are kept as they are.
pub fn tag_part(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains(['%', '{', '}']) {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The hash slot of `key` (what a Redis Cluster routes it by): keys of one slot can share a
/// script call, a pipeline or a subscribe.
pub fn slot_of(key: &str) -> redis::cluster_routing::Slot {
    redis::cluster_routing::Slot::for_key(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_stream_share_a_slot() {
        assert_eq!(slot_of("p:{u:a}:m"), slot_of("u:a"));
        assert_eq!(slot_of("p:{u:a}:h"), slot_of("q:{u:a}:i:Q}:m"));
        assert_ne!(slot_of("p:{u:a}:m"), slot_of("p:{u:b}:m"));
    }

    #[test]
    fn names_cannot_end_a_hash_tag() {
        assert_eq!(tag_part("alice"), "alice");
        assert_eq!(tag_part("a}:i:Q"), "a%7D:i:Q");
        assert_eq!(tag_part("%7D"), "%257D");
        assert_eq!(tag_part("{x}"), "%7Bx%7D");
    }

    #[test]
    fn urls_are_logged_without_their_password() {
        assert_eq!(
            without_password("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(
            without_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            Target::Cluster(vec!["redis://:x@a:1".into(), "redis://b:2".into()]).shown(),
            "cluster redis://***@a:1, redis://b:2"
        );
    }
}
