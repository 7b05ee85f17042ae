//! Webhooks: the configured event types, batched as Pusher does
//! (`{"time_ms", "events": [...]}`), signed with `X-Pusher-Key` and `X-Pusher-Signature`
//! (HMAC-SHA256 of the body under the app's secret), retried with backoff.
//!
//! Never in the way of delivery: socket tasks hand events to a bounded queue without waiting
//! ([`Webhooks::send`]); one dispatcher fans them out to one bounded queue per target, and each
//! target has its own sender task. A slow or dead endpoint fills its own queue and loses its
//! own webhooks, never sockets, never another endpoint's webhooks.
//!
//! `channel_occupied`/`channel_vacated` and `member_added`/`member_removed` are decided by the
//! store (cluster-wide with Redis), so each is sent once per cluster, by the node that saw it.
//! Sent with `http_client::post_json` (the callbacks' client too): `http://` targets only (for
//! HTTPS, point it at a local TLS proxy), one request per connection.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use warp::http::{StatusCode, Uri};

use super::auth::sign;
use super::App;

/// Events waiting for the dispatcher.
const QUEUE: usize = 4096;
/// Events waiting per target; past it, new ones for that target are dropped.
const TARGET_QUEUE: usize = 1024;
/// Most events in one webhook request.
const MAX_BATCH: usize = 50;
/// How long a batch gathers events after its first.
const GATHER: Duration = Duration::from_millis(250);
/// Attempts per batch (the first and its retries), waiting 0.5, 1, 2… s between.
const ATTEMPTS: u32 = 4;
/// Bound on one request (connect, write, status line).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One event for an app's webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    /// The app's id.
    pub app: String,
    /// The event type (`channel_occupied`, `member_added`, …).
    pub name: &'static str,
    /// The event as Pusher sends it: `{"name","channel",…}`.
    pub body: Value,
}

impl WebhookEvent {
    /// `channel_occupied`, `channel_vacated` or `cache_miss`.
    pub fn channel(app: &str, name: &'static str, channel: &str) -> WebhookEvent {
        WebhookEvent {
            app: app.into(),
            name,
            body: json!({ "name": name, "channel": channel }),
        }
    }

    /// `member_added` or `member_removed`.
    pub fn member(app: &str, name: &'static str, channel: &str, user_id: &str) -> WebhookEvent {
        WebhookEvent {
            app: app.into(),
            name,
            body: json!({ "name": name, "channel": channel, "user_id": user_id }),
        }
    }

    /// `client_event`: `data` as the socket sent it (a JSON string stays one).
    pub fn client_event(
        app: &str,
        channel: &str,
        event: &str,
        data: &str,
        socket_id: &str,
        user_id: Option<&str>,
    ) -> WebhookEvent {
        let data = match serde_json::from_str::<Value>(data) {
            Ok(Value::String(s)) => s,
            _ => data.to_owned(),
        };
        let mut body = json!({
            "name": "client_event",
            "channel": channel,
            "event": event,
            "data": data,
            "socket_id": socket_id,
        });
        if let Some(user_id) = user_id {
            body["user_id"] = user_id.into();
        }
        WebhookEvent {
            app: app.into(),
            name: "client_event",
            body,
        }
    }
}

/// The webhook queue of a server whose apps have webhooks.
pub struct Webhooks {
    tx: mpsc::Sender<WebhookEvent>,
}

struct Target {
    app: String,
    types: Vec<String>,
    tx: mpsc::Sender<Value>,
}

impl Webhooks {
    /// Starts the dispatcher and one sender per target; `None` if no app has a webhook.
    pub fn start(apps: &[Arc<App>]) -> Option<Webhooks> {
        let mut targets = Vec::new();
        for app in apps {
            for hook in &app.conf.webhooks {
                let (tx, rx) = mpsc::channel(TARGET_QUEUE);
                tokio::spawn(sender(
                    hook.url.clone(),
                    app.conf.key.clone(),
                    app.conf.secret.expose().to_owned(),
                    rx,
                ));
                targets.push(Target {
                    app: app.conf.id.clone(),
                    types: hook.event_types.clone(),
                    tx,
                });
            }
        }
        if targets.is_empty() {
            return None;
        }
        let (tx, mut rx) = mpsc::channel::<WebhookEvent>(QUEUE);
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                for target in &targets {
                    let wanted =
                        target.app == event.app && target.types.iter().any(|t| t == event.name);
                    if wanted && target.tx.try_send(event.body.clone()).is_err() {
                        log::debug!("webhook queue full: a {} event dropped", event.name);
                    }
                }
            }
        });
        Some(Webhooks { tx })
    }

    /// Queues `event`, never waiting (dropped when the queue is full).
    pub fn send(&self, event: WebhookEvent) {
        if self.tx.try_send(event).is_err() {
            log::debug!("webhook queue full: an event dropped");
        }
    }
}

/// One target's task: gathers events into batches and posts them, retrying with backoff.
async fn sender(url: String, key: String, secret: String, mut rx: mpsc::Receiver<Value>) {
    while let Some(first) = rx.recv().await {
        let mut events = vec![first];
        let gather = tokio::time::sleep(GATHER);
        tokio::pin!(gather);
        while events.len() < MAX_BATCH {
            tokio::select! {
                _ = &mut gather => break,
                next = rx.recv() => match next {
                    Some(event) => events.push(event),
                    None => break,
                },
            }
        }
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let body = json!({ "time_ms": time_ms, "events": events }).to_string();
        let signature = sign(&secret, &body);
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            match post(&url, &key, &signature, &body).await {
                Ok(status) if status.is_success() => break,
                outcome => {
                    let why = match outcome {
                        Ok(status) => format!("status {status}"),
                        Err(e) => e,
                    };
                    if attempt == ATTEMPTS {
                        log::warn!(
                            "webhook to {} dropped after {ATTEMPTS} attempts: {why}",
                            shown(&url)
                        );
                    } else {
                        log::debug!("webhook to {} failed ({why}), retrying", shown(&url));
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        }
    }
}

/// A URL for a log line: scheme, host and path, never a query (it may carry a token) nor
/// credentials (`user:password@`).
fn shown(url: &str) -> String {
    let url = url.split('?').next().unwrap_or(url);
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}://{rest}")
}

/// POSTs `body` to `url` (`http://host[:port][/path]`); the reply's status.
async fn post(url: &str, key: &str, signature: &str, body: &str) -> Result<StatusCode, String> {
    let url: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let headers = [("x-pusher-key", key), ("x-pusher-signature", signature)];
    crate::http_client::post_json(&url, &headers, body.to_owned(), REQUEST_TIMEOUT).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_url_has_no_query_and_no_credentials() {
        assert_eq!(
            shown("http://u:p%40ss@hooks.example:8080/in?token=x"),
            "http://hooks.example:8080/in"
        );
        assert_eq!(shown("http://hooks.example/in"), "http://hooks.example/in");
    }
}
