//! One Pusher socket as a [`Transport`] of the connection runtime ([`connection::run`]):
//! `pusher:connection_established` first, channel events (built once per message by the
//! registry) as its frames, inbound frames answered in order (a reply is written before
//! anything queued after it), `pusher:ping` on the app's activity timeout; and, as it leaves,
//! its subscriptions and presence taken out of the store (telling the other members), then
//! `pusher:error` with the code and the close handshake.
//!
//! A socket refused after the upgrade (unknown app 4001, over quota 4004, server full 4100,
//! bad protocol version 4007/4008) gets `pusher:error` and a close with that code, as Pusher
//! does, so pusher-js knows whether to retry.

use std::sync::Arc;

use futures_util::StreamExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::codec;
use super::store::Member;
use super::{auth, is_cache, user_channel, AppSlot, Kind, Pusher, WebhookEvent};
use crate::connection::{self, Ended, Gone, Inbound, Out, Transport, CLOSE_TIMEOUT};
use crate::hub::Session;
use crate::protocol::native::{self, Socket};
use crate::protocol::SocketContext;
use crate::wire::{CloseReason, StreamKey};

/// Why a socket is refused right after its upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Pusher's error code, also the close code.
    pub code: u16,
    /// Said in `pusher:error`.
    pub message: &'static str,
    /// Its name among the refusals the admin page counts.
    pub reason: &'static str,
}

impl Refusal {
    /// 4001: no app has this key.
    pub const UNKNOWN_APP: Refusal = Refusal {
        code: 4001,
        message: "App key does not exist",
        reason: "unknown_app",
    };
    /// 4004: the app is at its `max_connections`.
    pub const APP_FULL: Refusal = Refusal {
        code: 4004,
        message: "App is over its connection quota",
        reason: "app_full",
    };
    /// 4100: the server is at `max_sockets`.
    pub const SERVER_FULL: Refusal = Refusal {
        code: 4100,
        message: "Over capacity: retry later",
        reason: "pusher_share_full",
    };
    /// `max_sockets_per_address` reached for the client's address.
    pub const ADDRESS_FULL: Refusal = Refusal {
        code: 4100,
        message: "Over capacity: too many connections from this address",
        reason: "too_many_address_sockets",
    };
    /// `new_sockets_per_address_per_minute` reached for the client's address. 4100-4199:
    /// pusher-js reconnects after a second, not at once (4200s) nor never (4000s, 4300s).
    pub const NEW_SOCKETS_RATE: Refusal = Refusal {
        code: 4100,
        message: "Over capacity: this address opens connections too fast, retry later",
        reason: "too_many_new_sockets",
    };
    /// 4007: a protocol version other than 5 to 7.
    pub const BAD_PROTOCOL: Refusal = Refusal {
        code: 4007,
        message: "Unsupported protocol version: use 7",
        reason: "bad_protocol",
    };
    /// 4008: no `protocol` parameter.
    pub const NO_PROTOCOL: Refusal = Refusal {
        code: 4008,
        message: "No protocol version supplied",
        reason: "no_protocol",
    };
}

/// How a socket ends, as Pusher codes it.
#[derive(Debug, Clone, Copy)]
enum End {
    /// Close with this code; `pusher:error` first when `tell` (4xxx codes).
    Close(u16, &'static str, bool),
    /// The client closed first: echo its close.
    Echo,
    /// The connection is gone.
    Lost,
}

impl End {
    fn of(ended: Ended) -> End {
        let reason = match ended {
            Ended::Lost => return End::Lost,
            Ended::Refused(code, message) => return End::Close(code, message, true),
            Ended::Close(reason) => reason,
        };
        match reason {
            CloseReason::ClientClosed => End::Echo,
            CloseReason::ServerShutdown => {
                End::Close(4200, "Server shutting down: reconnect", true)
            }
            CloseReason::HeartbeatTimeout => End::Close(4201, "Pong reply not received", true),
            CloseReason::SlowConsumer => {
                End::Close(4100, "Send queue full: the client reads too slowly", true)
            }
            CloseReason::Resync => End::Close(4200, "Reconnect", true),
            CloseReason::Disconnected => End::Close(4009, "Connection terminated by the app", true),
            other => End::Close(other.code(), other.text(), false),
        }
    }

    fn code(self) -> Option<u16> {
        match self {
            End::Close(code, ..) => Some(code),
            End::Echo => Some(1000),
            End::Lost => None,
        }
    }
}

/// The task of an admitted Pusher socket whose `101` is on its way, which joined the hub as
/// `session` and holds `slot` in its app. Returns the close code (`None`: connection lost).
///
/// Everything used in place, as in `native::upgraded`: this future is the socket's whole state
/// for its whole life, and a value moved into a new local or a nested future is stored twice.
#[allow(clippy::manual_async_fn)]
pub fn upgraded(
    on_upgrade: OnUpgrade,
    mut session: Session,
    slot: AppSlot,
    ctx: Arc<SocketContext>,
    pusher: Arc<Pusher>,
) -> impl std::future::Future<Output = Option<u16>> {
    async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                log::debug!("pusher upgrade failed: {e}");
                return None;
            }
        };
        let ws = native::accept(TokioIo::new(upgraded), ctx.ws_config).await;
        let mut socket = PusherSocket::new(ws, &session, &slot, &pusher);
        let ended = connection::run(&mut socket, &mut session, &ctx).await;
        End::of(ended).code()
    }
}

/// The task of a socket refused right after its upgrade, as Pusher does: `pusher:error` and a
/// close with the refusal's code, so pusher-js knows whether to retry.
pub async fn refused(on_upgrade: OnUpgrade, refusal: Refusal, ctx: Arc<SocketContext>) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            log::debug!("pusher upgrade failed: {e}");
            return;
        }
    };
    let mut ws = native::accept(TokioIo::new(upgraded), ctx.ws_config).await;
    close(&mut ws, End::Close(refusal.code, refusal.message, true)).await;
}

async fn close<S>(ws: &mut Socket<S>, end: End)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = match end {
        End::Lost => return,
        End::Echo => None,
        End::Close(code, message, tell) => {
            if tell {
                let text = codec::error(Some(code), message);
                let sent = native::write(ws, vec![Out::Text(text)], || None);
                let sent = tokio::time::timeout(CLOSE_TIMEOUT, sent).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
            Some(CloseFrame {
                code: CloseCode::from(code),
                reason: message.into(),
            })
        }
    };
    native::close_handshake(ws, frame).await;
}

/// A Pusher socket as a [`Transport`]: `pusher:connection_established` as its greeting,
/// channel events as its frames, `pusher:ping` when the app's activity timeout passes without a
/// word from the client (and 4201 when that goes unanswered for another), client frames
/// answered in order by [`Conn`], and the store's side of its channels undone as it leaves.
pub struct PusherSocket<'a, S> {
    ws: Socket<S>,
    conn: Conn<'a>,
    /// The client said something during the current activity period.
    heard: bool,
    /// A `pusher:ping` went out and nothing came back since.
    awaiting: bool,
}

impl<'a, S> PusherSocket<'a, S> {
    /// The transport of an admitted socket that joined the hub as `session`.
    pub fn new(
        ws: Socket<S>,
        session: &Session,
        slot: &'a AppSlot,
        pusher: &'a Pusher,
    ) -> PusherSocket<'a, S> {
        let conn = Conn {
            pusher,
            app: slot.app(),
            id: session.membership.id(),
            signed: None,
            tokens: pusher.client_events_per_second as f32,
            subscribe_tokens: subscribe_burst(pusher),
            refilled: Instant::now(),
        };
        PusherSocket {
            ws,
            conn,
            heard: false,
            awaiting: false,
        }
    }
}

impl<S> Transport for PusherSocket<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    type Message = Utf8Bytes;

    // Pusher's keep-alive follows the app's activity timeout, not the server's heartbeat.
    const FOLLOWS_HEARTBEAT: bool = false;

    fn greeting(&self) -> Option<Out> {
        let timeout = self.conn.pusher.activity_timeout.as_secs();
        Some(Out::Text(codec::connection_established(
            &self.conn.socket_id(),
            timeout,
        )))
    }

    fn timer(&mut self, _ctx: &SocketContext) -> (Duration, Duration) {
        let timeout = self.conn.pusher.activity_timeout;
        (timeout, timeout)
    }

    fn tick(&mut self) -> Result<bool, Ended> {
        if self.awaiting {
            return Err(Ended::Close(CloseReason::HeartbeatTimeout));
        }
        if self.heard {
            self.heard = false;
            return Ok(false);
        }
        self.awaiting = true;
        Ok(true)
    }

    // A `poll_fn`, as `Native`'s: one pointer in every idle socket.
    fn next(&mut self) -> impl std::future::Future<Output = Inbound<Utf8Bytes>> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let inbound = std::task::ready!(self.ws.poll_next_unpin(cx));
            (self.heard, self.awaiting) = (true, false);
            std::task::Poll::Ready(native::inbound_of(inbound))
        })
    }

    async fn answer<'b>(
        &'b mut self,
        text: Utf8Bytes,
        session: &'b mut Session,
        _ctx: &'b SocketContext,
    ) -> Result<Vec<Out>, Ended> {
        let replies = self.conn.handle(&text, session).await?;
        Ok(replies.into_iter().map(Out::Text).collect())
    }

    async fn write(&mut self, out: Vec<Out>) -> Result<(), Gone> {
        native::write(&mut self.ws, out, || Some(codec::ping())).await
    }

    fn left<'b>(
        &'b mut self,
        session: &'b Session,
    ) -> impl std::future::Future<Output = ()> + Send + 'b {
        self.conn.cleanup(session)
    }

    fn close<'b>(
        &'b mut self,
        ended: Ended,
        _ctx: &'b SocketContext,
    ) -> impl std::future::Future<Output = ()> + Send + 'b {
        close(&mut self.ws, End::of(ended))
    }

    fn code(ended: Ended) -> Option<u16> {
        End::of(ended).code()
    }
}

/// One socket's protocol state. Small: an idle socket holds its id, its app and empty lists.
struct Conn<'a> {
    pusher: &'a Pusher,
    app: &'a Arc<super::App>,
    /// Its id on this node; its Pusher `socket_id` is `<node>.<id>` ([`Conn::socket_id`]),
    /// made when needed rather than kept in every idle socket.
    id: u64,
    /// Who it signed in as and the presence channels it joined: allocated by the first of
    /// them, so the many sockets that do neither hold one pointer instead of 40 bytes.
    signed: Option<Box<Signed>>,
    /// Client events it may still send this second (a token bucket).
    tokens: f32,
    /// Subscribe and unsubscribe frames it may still send (a token bucket refilled at
    /// `subscriptions_per_second`, holding at most [`subscribe_burst`]).
    subscribe_tokens: f32,
    /// When both buckets were last refilled.
    refilled: Instant,
}

/// A socket's identity, once it has one.
#[derive(Default)]
struct Signed {
    /// The user it signed in as.
    user: Option<Box<str>>,
    /// Presence channels it is a member of, and as whom.
    presence: Vec<(Box<str>, Box<str>)>,
}

/// The subscribe bucket's size: a page that reconnects resubscribes every channel it had at
/// once (pusher-js does), up to `max_channels_per_socket` of them.
fn subscribe_burst(pusher: &Pusher) -> f32 {
    (pusher.max_channels_per_socket as f32).max(pusher.subscriptions_per_second as f32)
}

impl Conn<'_> {
    /// The user it signed in as.
    fn user(&self) -> Option<&str> {
        self.signed.as_ref()?.user.as_deref()
    }

    /// As whom it is a member of presence `channel`.
    fn member_of(&self, channel: &str) -> Option<&str> {
        let signed = self.signed.as_ref()?;
        let (_, user_id) = signed.presence.iter().find(|(c, _)| &**c == channel)?;
        Some(user_id)
    }

    fn signed(&mut self) -> &mut Signed {
        self.signed.get_or_insert_with(Default::default)
    }

    /// The socket's Pusher `socket_id` (see [`crate::registry::Membership::socket_id`]).
    fn socket_id(&self) -> String {
        format!("{}.{}", self.pusher.hub.registry().node(), self.id)
    }

    /// Refills both token buckets for the time since the last refill.
    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f32();
        let rate = self.pusher.client_events_per_second as f32;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        let rate = self.pusher.subscriptions_per_second as f32;
        self.subscribe_tokens =
            (self.subscribe_tokens + elapsed * rate).min(subscribe_burst(self.pusher));
        self.refilled = now;
    }

    /// Spends a subscribe token; `false` when none is left.
    fn spend_subscribe(&mut self) -> bool {
        self.refill();
        if self.subscribe_tokens < 1.0 {
            return false;
        }
        self.subscribe_tokens -= 1.0;
        true
    }

    /// `channel`'s stream: the app's id shared, the name a new allocation (see [`Conn::key_of`]
    /// to share one).
    fn key(&self, channel: &str) -> StreamKey {
        self.key_of(channel.into())
    }

    fn key_of(&self, name: Arc<str>) -> StreamKey {
        StreamKey::Channel {
            app: self.app.id.clone(),
            name,
        }
    }

    fn follows(&self, session: &Session, channel: &str) -> bool {
        let key = self.key(channel);
        session.membership.streams().any(|(_, k)| k == key)
    }

    /// Answers one frame: the frames to write back (possibly none), or how the socket ends.
    async fn handle(&mut self, text: &str, session: &mut Session) -> Result<Vec<String>, Ended> {
        let inbound = match codec::parse(text) {
            Ok(inbound) => inbound,
            Err(codec::Malformed(why)) => return Ok(vec![codec::error(None, &why)]),
        };
        match inbound {
            codec::Inbound::Ping => Ok(vec![codec::pong()]),
            codec::Inbound::Pong => Ok(Vec::new()),
            codec::Inbound::Subscribe {
                channel,
                auth,
                channel_data,
            } => {
                if !self.spend_subscribe() {
                    return Ok(vec![
                        codec::error(
                            Some(4301),
                            "subscription rejected: rate limit exceeded, retry later",
                        ),
                        codec::subscription_error(
                            &channel,
                            429,
                            "too many subscriptions: rate limit exceeded (subscriptions_per_second)",
                        ),
                    ]);
                }
                Ok(self
                    .subscribe(session, &channel, auth.as_deref(), channel_data.as_deref())
                    .await)
            }
            codec::Inbound::Unsubscribe { channel } => {
                // Spends from the same budget, but is honoured without one: it frees what the
                // socket holds.
                self.spend_subscribe();
                self.unsubscribe(session, &channel).await;
                Ok(Vec::new())
            }
            codec::Inbound::Signin { auth, user_data } => {
                self.signin(session, &auth, &user_data).await
            }
            codec::Inbound::ClientEvent {
                event,
                channel,
                data,
            } => Ok(self.client_event(session, &event, &channel, &data).await),
        }
    }

    async fn subscribe(
        &mut self,
        session: &mut Session,
        channel: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) -> Vec<String> {
        let kind = Kind::of(channel);
        let refuse = |status, why: &str| vec![codec::subscription_error(channel, status, why)];
        let conf = &self.app.conf;
        if kind == Kind::User {
            // Followed at sign-in; only that user's sockets may have it.
            let mine = self.user().is_some_and(|id| user_channel(id) == channel);
            return if mine {
                vec![codec::subscription_succeeded(channel, None)]
            } else {
                refuse(403, "sign in as this user to receive its events")
            };
        }
        if kind.needs_auth() {
            let data = if kind == Kind::Presence {
                channel_data
            } else {
                None
            };
            let signed = auth.is_some_and(|a| {
                auth::channel_auth_ok(
                    a,
                    &conf.key,
                    conf.secret.expose(),
                    &self.socket_id(),
                    channel,
                    data,
                )
            });
            if !signed {
                return refuse(401, "invalid signature: auth must sign socket_id:channel");
            }
        }
        let member = match kind {
            Kind::Presence => match presence_member(channel_data) {
                Some(member) => Some(member),
                None => {
                    return refuse(
                        400,
                        "channel_data must be JSON with a user_id (string or number)",
                    )
                }
            },
            _ => None,
        };
        if self.follows(session, channel) {
            // Subscribed already: say so again, with the members.
            return self.succeeded(channel, kind).await;
        }
        if session.membership.streams().count() >= self.pusher.max_channels_per_socket {
            return refuse(400, "too many channels on one socket");
        }
        // One allocation of the name, shared by the registry, the socket and the store.
        let name: Arc<str> = channel.into();
        let key = self.key_of(name.clone());
        if let Err(e) = self.pusher.hub.follow(session, key, None).await {
            log::debug!("subscribe refused: {e}");
            return refuse(503, "service unavailable: retry");
        }
        let store = &self.pusher.store;
        let app = conf.id.as_str();
        match store.subscribed(app, &name, 1).await {
            Ok(true) => self
                .pusher
                .notify(WebhookEvent::channel(app, "channel_occupied", channel)),
            Ok(false) => {}
            Err(e) => log::debug!("subscription count not updated: {e}"),
        }
        if let Some(member) = member {
            match store.join(app, channel, &member).await {
                Ok(first) => {
                    self.signed()
                        .presence
                        .push((channel.into(), member.user_id.as_str().into()));
                    if first {
                        self.member_event(channel, "pusher_internal:member_added", &member)
                            .await;
                    }
                }
                Err(e) => {
                    log::debug!("presence join failed: {e}");
                    session.membership.unfollow(&self.key(channel));
                    let _ = store.subscribed(app, &name, -1).await;
                    return refuse(503, "service unavailable: retry");
                }
            }
        }
        let mut replies = self.succeeded(channel, kind).await;
        if is_cache(channel) {
            replies.push(match store.cache_get(app, channel).await {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    self.pusher
                        .notify(WebhookEvent::channel(app, "cache_miss", channel));
                    codec::cache_miss(channel)
                }
                Err(e) => {
                    log::debug!("cache read failed: {e}");
                    codec::cache_miss(channel)
                }
            });
        }
        replies
    }

    /// `subscription_succeeded`, with the members for a presence channel.
    async fn succeeded(&self, channel: &str, kind: Kind) -> Vec<String> {
        if kind != Kind::Presence {
            return vec![codec::subscription_succeeded(channel, None)];
        }
        let members = match self.pusher.store.members(&self.app.conf.id, channel).await {
            Ok(members) => members,
            Err(e) => {
                log::debug!("presence members unavailable: {e}");
                return vec![codec::subscription_error(
                    channel,
                    503,
                    "service unavailable: retry",
                )];
            }
        };
        let mut hash = serde_json::Map::new();
        let ids: Vec<Value> = members
            .iter()
            .map(|m| {
                let info = serde_json::from_str(&m.user_info).unwrap_or(Value::Null);
                hash.insert(m.user_id.clone(), info);
                Value::String(m.user_id.clone())
            })
            .collect();
        let presence = serde_json::json!({ "count": ids.len(), "ids": ids, "hash": hash });
        vec![codec::subscription_succeeded(channel, Some(presence))]
    }

    async fn member_event(&self, channel: &str, event: &str, member: &Member) {
        let info = (event == "pusher_internal:member_added").then_some(member.user_info.as_str());
        let data = codec::member_data(&member.user_id, info);
        let app = self.app.conf.id.as_str();
        let sent = self
            .pusher
            .publish(app, channel, event, &data, Some(&self.socket_id()), None)
            .await;
        if let Err(e) = sent {
            log::debug!("{event} not sent: {e}");
        }
        let name = if event == "pusher_internal:member_added" {
            "member_added"
        } else {
            "member_removed"
        };
        self.pusher
            .notify(WebhookEvent::member(app, name, channel, &member.user_id));
    }

    async fn unsubscribe(&mut self, session: &mut Session, channel: &str) {
        let key = self.key(channel);
        if Kind::of(channel) == Kind::User || !session.membership.unfollow(&key) {
            return;
        }
        if let StreamKey::Channel { name, .. } = key {
            self.left(&name).await;
        }
    }

    /// The store's side of leaving `channel`: its count, and the presence member.
    async fn left(&mut self, name: &Arc<str>) {
        let app = self.app.conf.id.as_str();
        let channel: &str = name;
        match self.pusher.store.subscribed(app, name, -1).await {
            Ok(true) => self
                .pusher
                .notify(WebhookEvent::channel(app, "channel_vacated", channel)),
            Ok(false) => {}
            Err(e) => log::debug!("subscription count not updated: {e}"),
        }
        let Some(signed) = &mut self.signed else {
            return;
        };
        let Some(i) = signed.presence.iter().position(|(c, _)| &**c == channel) else {
            return;
        };
        let (_, user_id) = signed.presence.swap_remove(i);
        match self.pusher.store.leave(app, channel, &user_id).await {
            Ok(true) => {
                let member = Member {
                    user_id: user_id.into(),
                    user_info: String::new(),
                };
                self.member_event(channel, "pusher_internal:member_removed", &member)
                    .await;
            }
            Ok(false) => {}
            Err(e) => log::debug!("presence leave not recorded: {e}"),
        }
    }

    async fn signin(
        &mut self,
        session: &mut Session,
        auth: &str,
        user_data: &str,
    ) -> Result<Vec<String>, Ended> {
        let conf = &self.app.conf;
        let refused = Ended::Refused(4009, "Unauthorized: invalid signin");
        if !auth::signin_ok(
            auth,
            &conf.key,
            conf.secret.expose(),
            &self.socket_id(),
            user_data,
        ) {
            return Err(refused);
        }
        let id = match serde_json::from_str::<Value>(user_data) {
            Ok(Value::Object(map)) => match map.get("id") {
                Some(Value::String(id)) if !id.is_empty() => id.clone(),
                _ => return Err(refused),
            },
            _ => return Err(refused),
        };
        if let Some(old) = self.signed().user.take() {
            session.membership.unfollow(&self.key(&user_channel(&old)));
        }
        let key = self.key(&user_channel(&id));
        if let Err(e) = self.pusher.hub.follow(session, key, None).await {
            log::debug!("signin refused: {e}");
            return Ok(vec![codec::error(None, "service unavailable: retry")]);
        }
        self.signed().user = Some(id.into());
        Ok(vec![codec::signin_success(user_data)])
    }

    async fn client_event(
        &mut self,
        session: &Session,
        event: &str,
        channel: &str,
        data: &RawValue,
    ) -> Vec<String> {
        let refuse = |code, why: &str| vec![codec::error(code, why)];
        if !self.app.conf.enable_client_messages {
            return refuse(None, "client events are not enabled for this app");
        }
        let kind = Kind::of(channel);
        if !matches!(kind, Kind::Private | Kind::Presence) {
            return refuse(
                None,
                "client events are only for private- and presence- channels (not public or \
                 encrypted ones)",
            );
        }
        if !self.follows(session, channel) {
            return refuse(
                None,
                "subscribe to the channel before sending it client events",
            );
        }
        if data.get().len() > self.pusher.max_event_bytes {
            return refuse(None, "event data is larger than the allowed maximum");
        }
        self.refill();
        if self.tokens < 1.0 {
            return refuse(Some(4301), "client event rejected: rate limit exceeded");
        }
        self.tokens -= 1.0;
        let user_id = self.member_of(channel);
        let sent = self
            .pusher
            .publish(
                &self.app.conf.id,
                channel,
                event,
                data,
                Some(&self.socket_id()),
                user_id,
            )
            .await;
        match sent {
            Ok(_) => {
                if self.pusher.has_webhooks() {
                    self.pusher.notify(WebhookEvent::client_event(
                        &self.app.conf.id,
                        channel,
                        event,
                        data.get(),
                        &self.socket_id(),
                        user_id,
                    ));
                }
                Vec::new()
            }
            Err(e) => {
                log::debug!("client event not sent: {e}");
                refuse(None, "service unavailable: the event was not sent")
            }
        }
    }

    /// After the socket left the hub: its subscriptions and memberships leave the store.
    async fn cleanup(&mut self, session: &Session) {
        let channels: Vec<Arc<str>> = session
            .membership
            .streams()
            .filter_map(|(_, key)| match key {
                StreamKey::Channel { name, .. } if Kind::of(&name) != Kind::User => Some(name),
                _ => None,
            })
            .collect();
        for channel in channels {
            self.left(&channel).await;
        }
    }
}

/// A presence subscription's member, from its `channel_data`.
fn presence_member(channel_data: Option<&str>) -> Option<Member> {
    let Value::Object(map) = serde_json::from_str(channel_data?).ok()? else {
        return None;
    };
    let user_id = match map.get("user_id")? {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let user_info = map.get("user_info").map_or("null".into(), Value::to_string);
    Some(Member { user_id, user_info })
}
