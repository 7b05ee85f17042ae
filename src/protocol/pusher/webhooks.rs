//! Webhooks: the configured event types, batched as Pusher does
//! (`{"time_ms", "events": [...]}`), signed with `X-Pusher-Key` and `X-Pusher-Signature`
//! (HMAC-SHA256 of the body under the app's secret), retried with backoff.
//!
//! Never in the way of delivery: socket tasks put events in one bounded queue per target without
//! waiting ([`Webhooks::send`]); each target has its own sender task. A slow or dead endpoint
//! fills its own queue and loses its own webhooks, never sockets, never another endpoint's
//! webhooks. The queue is an [`EventQueue`]: `channel_occupied`/`channel_vacated` of a channel
//! waiting together cancel out (Pusher's own webhooks do the same within their batching
//! window), and a full queue drops its oldest churn (`channel_occupied`, `channel_vacated`,
//! `cache_miss`: what an anonymous socket can make at will) before `member_added`,
//! `member_removed` or `client_event`. Drops are counted in
//! `push_serve_webhook_events_total{outcome="dropped"}` and logged at most once a minute.
//!
//! `channel_occupied`/`channel_vacated` and `member_added`/`member_removed` are decided by the
//! store (cluster-wide with Redis), so each is sent once per cluster, by the node that saw it.
//! Sent with `http_client::post_json` (the callbacks' client too): `http://` targets only (for
//! HTTPS, point it at a local TLS proxy), one request per connection.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use warp::http::{StatusCode, Uri};

use super::auth::sign;
use super::App;
use crate::event_queue::{Class, Entry, EventQueue};
use crate::limits::LogThrottle;
use crate::metrics::Metrics;

/// Events waiting per target; past it, the oldest churn goes first (see the module doc).
pub const TARGET_QUEUE: usize = 1024;
/// Most events in one webhook request.
const MAX_BATCH: usize = 50;
/// How long a batch gathers events after its first: the window in which pairs cancel out.
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

impl WebhookEvent {
    /// How the target's queue treats it: which class, and which event it cancels.
    fn entry(self) -> Entry<Value> {
        let channel = || self.body["channel"].as_str().unwrap_or_default().into();
        let (class, pair) = match self.name {
            "channel_occupied" => (Class::Churn, Some((channel(), true))),
            "channel_vacated" => (Class::Churn, Some((channel(), false))),
            "cache_miss" => (Class::Churn, None),
            _ => (Class::Kept, None),
        };
        Entry {
            event: self.body,
            class,
            pair,
        }
    }
}

/// The webhook queues of a server whose apps have webhooks.
pub struct Webhooks {
    targets: Vec<Target>,
    metrics: Arc<Metrics>,
}

struct Target {
    app: String,
    types: Vec<String>,
    queue: Arc<EventQueue<Value>>,
    /// The "queue full" line: at most one a minute, with how many more drops.
    full_log: LogThrottle,
    /// For that line: the URL without query or credentials.
    shown: String,
}

impl Webhooks {
    /// Starts one sender per target; `None` if no app has a webhook.
    pub fn start(apps: &[Arc<App>], metrics: Arc<Metrics>) -> Option<Webhooks> {
        let mut targets = Vec::new();
        for app in apps {
            for hook in &app.conf.webhooks {
                let queue = Arc::new(EventQueue::new());
                tokio::spawn(sender(
                    hook.url.clone(),
                    app.conf.key.clone(),
                    app.conf.secret.expose().to_owned(),
                    queue.clone(),
                    metrics.clone(),
                ));
                targets.push(Target {
                    app: app.conf.id.clone(),
                    types: hook.event_types.clone(),
                    queue,
                    full_log: LogThrottle::new(Duration::from_secs(60)),
                    shown: shown(&hook.url),
                });
            }
        }
        (!targets.is_empty()).then_some(Webhooks { targets, metrics })
    }

    /// Queues `event` for each target that wants it, never waiting.
    pub fn send(&self, event: WebhookEvent) {
        for target in &self.targets {
            if target.app != event.app || !target.types.iter().any(|t| t == event.name) {
                continue;
            }
            let name = event.name;
            let pushed = target.queue.push(event.clone().entry(), TARGET_QUEUE);
            if pushed.coalesced > 0 {
                self.metrics.webhook_events("coalesced", pushed.coalesced);
            }
            if pushed.dropped > 0 {
                self.metrics.webhook_events("dropped", pushed.dropped);
                if let Some(held_back) = target.full_log.allow() {
                    log::warn!(
                        "webhook queue of {} full ({TARGET_QUEUE} events): dropped its oldest \
                         churn (or this {name}); {held_back} more dropped since the last such \
                         line, at most one a minute",
                        target.shown
                    );
                }
            }
        }
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        for target in &self.targets {
            target.queue.close();
        }
    }
}

/// One target's task: gathers events into batches and posts them, retrying with backoff.
/// Events wait in the queue while a batch gathers and while one is being posted, so pairs
/// cancel out there.
async fn sender(
    url: String,
    key: String,
    secret: String,
    queue: Arc<EventQueue<Value>>,
    metrics: Arc<Metrics>,
) {
    let failed_log = crate::limits::LogThrottle::new(Duration::from_secs(60));
    while queue.wait_len(1).await {
        // Gather for the window, or until a full batch waits.
        let _ = tokio::time::timeout(GATHER, queue.wait_len(MAX_BATCH)).await;
        let events = queue.take(MAX_BATCH);
        if events.is_empty() {
            // The batch's events cancelled out meanwhile.
            continue;
        }
        let count = events.len() as u64;
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let body = json!({ "time_ms": time_ms, "events": events }).to_string();
        let signature = sign(&secret, &body);
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            match post(&url, &key, &signature, &body).await {
                Ok(status) if status.is_success() => {
                    metrics.webhook_events("sent", count);
                    break;
                }
                outcome => {
                    let why = match outcome {
                        Ok(status) => format!("status {status}"),
                        Err(e) => e,
                    };
                    if attempt == ATTEMPTS {
                        metrics.webhook_events("failed", count);
                        // At most once a minute per endpoint: a receiver that is down would
                        // otherwise write a line per batch.
                        if let Some(held_back) = failed_log.allow() {
                            log::warn!(
                                "webhook to {} dropped after {ATTEMPTS} attempts: {why} \
                                 ({held_back} more dropped batches since the last such line, \
                                 which comes at most once a minute)",
                                shown(&url)
                            );
                        }
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
