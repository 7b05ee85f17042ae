//! Commands run on every node of a cluster (this one too): what a backend asks of a uid's or a
//! user's sockets, wherever they are. A broker carries them ([`Broker::command`]); each node
//! runs them on its own registry ([`Command::run`]). One enum, one exhaustive `match`: a new
//! command cannot be sent without every node knowing how to run it.
//!
//! On the wire a command is `<kind>\n<payload>`, the format nodes of earlier versions send and
//! read, so a cluster can be upgraded one node at a time; a kind this node does not know (a
//! newer node's) is ignored.
//!
//! [`Broker::command`]: crate::broker::Broker::command

use serde::{Deserialize, Serialize};

use crate::outbox::Control;
use crate::registry::Registry;
use crate::wire::{CloseReason, StreamKey};

/// A command for every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `POST /disconnect`: every socket of `uid` closes with 4011.
    Disconnect {
        /// The uid.
        uid: String,
    },
    /// `POST /rooms`: every socket of `uid` leaves the `leave` topics, then follows `join`.
    Rooms(Rooms),
    /// Pusher's `terminate_connections`: every socket of `app` signed in as `user_id` closes
    /// (4009 in Pusher's codes, sent by the socket).
    Terminate {
        /// The Pusher app's id.
        app: String,
        /// The signed-in user.
        user_id: String,
    },
}

/// A move of one uid's sockets into and out of topics (rooms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Rooms {
    /// The uid whose sockets move.
    #[serde(default)]
    pub uid: String,
    /// Topics to follow.
    #[serde(default)]
    pub join: Vec<String>,
    /// Topics to stop following (done first).
    #[serde(default)]
    pub leave: Vec<String>,
}

/// The channel that Pusher events for user `id` go to (the SDKs' `sendToUser`); a signed-in
/// socket follows it, which is how [`Command::Terminate`] finds the user's sockets.
pub fn user_channel(id: &str) -> String {
    format!("#server-to-user-{id}")
}

const DISCONNECT: &str = "disconnect";
const ROOMS: &str = "rooms";
const TERMINATE: &str = "pusher-terminate";

impl Command {
    /// The command as it travels: `<kind>\n<payload>`.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            Command::Disconnect { uid } => (DISCONNECT, uid.as_bytes().to_vec()),
            Command::Rooms(rooms) => (ROOMS, serde_json::to_vec(rooms).expect("a move serializes")),
            Command::Terminate { app, user_id } => {
                (TERMINATE, format!("{app}\n{user_id}").into_bytes())
            }
        };
        let mut bytes = Vec::with_capacity(kind.len() + 1 + payload.len());
        bytes.extend_from_slice(kind.as_bytes());
        bytes.push(b'\n');
        bytes.extend_from_slice(&payload);
        bytes
    }

    /// A command read from the wire; `None` for a malformed one or a kind this node does not
    /// know.
    pub fn decode(bytes: &[u8]) -> Option<Command> {
        let split = bytes.iter().position(|&b| b == b'\n')?;
        let (kind, payload) = (&bytes[..split], &bytes[split + 1..]);
        let text = || std::str::from_utf8(payload).ok();
        match kind {
            b"disconnect" => Some(Command::Disconnect {
                uid: text()?.to_owned(),
            }),
            b"rooms" => serde_json::from_slice(payload).ok().map(Command::Rooms),
            b"pusher-terminate" => {
                let (app, user_id) = text()?.split_once('\n')?;
                Some(Command::Terminate {
                    app: app.to_owned(),
                    user_id: user_id.to_owned(),
                })
            }
            _ => None,
        }
    }

    /// Runs the command on this node's sockets.
    pub fn run(&self, registry: &Registry) {
        match self {
            Command::Disconnect { uid } => {
                let closed = registry.evict(
                    &StreamKey::User(uid.as_str().into()),
                    CloseReason::Disconnected,
                );
                log::debug!("disconnected {closed} sockets of a uid on the backend's request");
            }
            Command::Rooms(m) => {
                let user = StreamKey::User(m.uid.as_str().into());
                for topic in &m.leave {
                    registry.control(&user, || {
                        Control::Unfollow(StreamKey::Topic(topic.as_str().into()))
                    });
                }
                for topic in &m.join {
                    registry.control(&user, || {
                        Control::Follow(StreamKey::Topic(topic.as_str().into()))
                    });
                }
            }
            Command::Terminate { app, user_id } => {
                let key = StreamKey::Channel {
                    app: app.as_str().into(),
                    name: user_channel(user_id).into(),
                };
                let closed = registry.evict(&key, CloseReason::Disconnected);
                log::debug!("terminated {closed} pusher sockets of a user on the app's request");
            }
        }
    }

    /// Runs the command read from `bytes` on this node, if it is one this node knows.
    pub fn run_encoded(registry: &Registry, bytes: &[u8]) {
        match Command::decode(bytes) {
            Some(command) => command.run(registry),
            None => log::debug!("ignored a malformed command, or one of an unknown kind"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_survives_the_wire_in_the_format_earlier_nodes_read() {
        let all = [
            Command::Disconnect {
                uid: "a:b\nc".into(),
            },
            Command::Rooms(Rooms {
                uid: "u".into(),
                join: vec!["x".into()],
                leave: vec!["y".into(), "z".into()],
            }),
            Command::Terminate {
                app: "1".into(),
                user_id: "u\n2".into(),
            },
        ];
        for command in all {
            assert_eq!(Command::decode(&command.encode()), Some(command));
        }
        assert_eq!(
            Command::Disconnect { uid: "bob".into() }.encode(),
            b"disconnect\nbob"
        );
        assert_eq!(
            Command::Terminate {
                app: "1".into(),
                user_id: "bob".into()
            }
            .encode(),
            b"pusher-terminate\n1\nbob"
        );
        assert_eq!(Command::decode(b"newer-kind\npayload"), None);
        assert_eq!(Command::decode(b"no kind"), None);
        assert_eq!(Command::decode(b"rooms\nnot json"), None);
    }
}
