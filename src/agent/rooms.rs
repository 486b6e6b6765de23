//! Rooms on the agent's side. The server terminates room members' WebSockets and
//! sends their joins, leaves and messages over one stream per connection; the
//! agent hands them to the backend and carries the backend's sends,
//! broadcasts, kicks and join decisions back.
//!
//! Backends either embed the agent ([`RoomsBackend::InProcess`]: a channel pair
//! of [`RoomEvent`]s and [`RoomCommand`]s) or run in any language behind
//! `--rooms-upstream ws://…`: one local WebSocket carrying the JSON envelope
//! documented in `proto/PROTOCOL.md` (§6).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::Uri;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{handshake::client::generate_key, Message};
use tracing::{info, warn};
use warren_proto::{Payload, Reply, ResponseHead, RoomCommand, RoomEvent, ROOM_FRAME_LIMIT};

use crate::{
    transport::{RecvStream, SendStream},
    websocket::{message_payload, payload_message},
};

/// Events or commands queued between the tunnel and the backend; beyond this
/// the sender waits (backpressure), nothing is dropped.
const QUEUE: usize = 1024;

/// One rooms stream's view for an embedded backend.
pub struct RoomsBridge {
    pub events: mpsc::Receiver<RoomEvent>,
    pub commands: mpsc::Sender<RoomCommand>,
}

/// Called once per rooms stream (per agent connection) with its bridge.
pub type RoomsService = Arc<dyn Fn(RoomsBridge) + Send + Sync>;

#[derive(Clone)]
pub enum RoomsBackend {
    /// A local WebSocket endpoint speaking the JSON envelope.
    WebSocket(String),
    /// An in-process backend.
    InProcess(RoomsService),
}

impl std::fmt::Debug for RoomsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoomsBackend::WebSocket(url) => write!(f, "WebSocket({url})"),
            RoomsBackend::InProcess(_) => f.write_str("InProcess"),
        }
    }
}

pub struct Rooms {
    backend: RoomsBackend,
    /// Limits on the backend WebSocket (the same as members have: nothing
    /// larger could be relayed anyway).
    ws: crate::websocket::WsLimits,
}

impl Rooms {
    pub fn new(backend: RoomsBackend, ws: crate::websocket::WsLimits) -> Self {
        Rooms { backend, ws }
    }

    /// Serves the rooms stream the server opened.
    pub async fn serve(&self, mut send: SendStream, mut recv: RecvStream, max_head: usize) {
        let (events_tx, events_rx) = mpsc::channel(QUEUE);
        let (commands_tx, mut commands_rx) = mpsc::channel(QUEUE);
        let bridge = RoomsBridge {
            events: events_rx,
            commands: commands_tx,
        };
        match &self.backend {
            RoomsBackend::InProcess(service) => service(bridge),
            RoomsBackend::WebSocket(url) => {
                let ws = match connect(url, &self.ws).await {
                    Ok(ws) => ws,
                    Err(e) => {
                        let message = format!("rooms backend {url} unreachable: {e}");
                        warn!("{message}");
                        let reply: Reply = Reply::Error(warren_proto::StreamError {
                            kind: warren_proto::ErrorKind::UpstreamUnavailable,
                            message,
                        });
                        let _ = send.write_frame(&reply, max_head).await;
                        let _ = send.finish().await;
                        return;
                    }
                };
                tokio::spawn(json_bridge(ws, bridge));
            }
        }
        let ok: Reply = Reply::Head(ResponseHead {
            status: 200,
            headers: Vec::new(),
        });
        if send.write_frame(&ok, max_head).await.is_err() {
            return;
        }
        let to_backend = async {
            while let Ok(event) = recv.read_frame::<RoomEvent>(ROOM_FRAME_LIMIT).await {
                if events_tx.send(event).await.is_err() {
                    break;
                }
            }
        };
        let to_server = async {
            while let Some(command) = commands_rx.recv().await {
                if send.write_frame(&command, ROOM_FRAME_LIMIT).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            _ = to_backend => {}
            _ = to_server => {}
        }
        info!("rooms stream ended");
    }
}

type BackendWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(url: &str, limits: &crate::websocket::WsLimits) -> Result<BackendWs, String> {
    let uri: Uri = url.parse().map_err(|_| format!("invalid URL {url:?}"))?;
    if uri.scheme_str() != Some("ws") {
        return Err("the rooms backend URL must be ws://HOST:PORT/PATH".into());
    }
    let authority = uri.authority().ok_or("the URL has no host")?.to_string();
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let request = http::Request::get(uri)
        .header("host", &authority)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", generate_key())
        .body(())
        .map_err(|e| e.to_string())?;
    let config = limits.config();
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// The JSON envelope over the backend WebSocket: each event or command is a
/// text message with a JSON object; one that carries a payload is followed by
/// exactly one more message, the payload itself, untouched.
async fn json_bridge(ws: BackendWs, mut bridge: RoomsBridge) {
    let (mut tx, mut rx) = ws.split();
    let to_backend = async {
        while let Some(event) = bridge.events.recv().await {
            let (envelope, payload) = match event {
                RoomEvent::Join {
                    room,
                    conn,
                    credentials,
                    headers,
                } => {
                    let headers: serde_json::Map<String, serde_json::Value> = headers
                        .into_iter()
                        .map(|h| {
                            (
                                h.name,
                                String::from_utf8_lossy(&h.value).into_owned().into(),
                            )
                        })
                        .collect();
                    let envelope = serde_json::json!({
                        "type": "join", "room": room, "conn": conn,
                        "credentials": credentials.is_some(), "headers": headers,
                    });
                    (envelope, credentials)
                }
                RoomEvent::Leave { room, conn, code } => (
                    serde_json::json!({ "type": "leave", "room": room, "conn": conn, "code": code }),
                    None,
                ),
                RoomEvent::Message {
                    room,
                    conn,
                    payload,
                } => (
                    serde_json::json!({ "type": "message", "room": room, "conn": conn }),
                    Some(payload),
                ),
            };
            if tx
                .send(Message::Text(envelope.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
            if let Some(payload) = payload {
                if tx.send(payload_message(payload)).await.is_err() {
                    return;
                }
            }
        }
    };
    let from_backend = async {
        while let Some(Ok(message)) = rx.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let command = match parse_command(text.as_str()) {
                Ok(Envelope::Command(command)) => command,
                Ok(Envelope::Send { conn }) => {
                    let Some(payload) = next_payload(&mut rx).await else {
                        return;
                    };
                    RoomCommand::Send { conn, payload }
                }
                Ok(Envelope::Broadcast { room, except }) => {
                    let Some(payload) = next_payload(&mut rx).await else {
                        return;
                    };
                    RoomCommand::Broadcast {
                        room,
                        payload,
                        except,
                    }
                }
                Err(ignored) => {
                    warn!("{}", ignored.why);
                    // A `send` or `broadcast` the bridge cannot use is still
                    // followed by its payload: drop that too, or it would be
                    // read as the next envelope.
                    if ignored.payload_follows && next_payload(&mut rx).await.is_none() {
                        return;
                    }
                    continue;
                }
            };
            if bridge.commands.send(command).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = to_backend => {}
        _ = from_backend => {}
    }
}

/// What one text message from the rooms backend asks for (§6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// A command complete in itself (`accept`, `refuse`, `kick`).
    Command(RoomCommand),
    /// `send`: the backend's next message is the payload for member `conn`.
    Send { conn: u64 },
    /// `broadcast`: the backend's next message is the payload for `room`.
    Broadcast { room: String, except: Option<u64> },
}

/// An envelope the bridge cannot act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// Why, as the line to log.
    pub why: String,
    /// The envelope's `type` is `send` or `broadcast`, so the backend's next
    /// message is its payload and must be skipped with it.
    pub payload_follows: bool,
}

/// Reads one text message from the rooms backend as an envelope. `Err` says
/// why it is ignored: invalid JSON, an unknown `type`, a command without its
/// `conn`, a broadcast without its `room`, a close code members cannot be
/// sent. A missing `code` is 1000 and a missing `reason` empty.
pub fn parse_command(text: &str) -> Result<Envelope, Ignored> {
    let envelope: serde_json::Value = serde_json::from_str(text).map_err(|e| Ignored {
        why: format!("rooms backend sent invalid JSON ({e}); ignored"),
        payload_follows: false,
    })?;
    let payload_follows = matches!(envelope["type"].as_str(), Some("send" | "broadcast"));
    parse_envelope(&envelope).map_err(|why| Ignored {
        why,
        payload_follows,
    })
}

fn parse_envelope(envelope: &serde_json::Value) -> Result<Envelope, String> {
    let conn = envelope["conn"].as_u64();
    // A close code members can be sent (RFC 6455 §7.4): the backend's own
    // range 3000–4999, or a standard code an endpoint may send; anything
    // else (0, 1006, 70000…) is refused rather than cut to 16 bits.
    let code = match envelope["code"].as_u64() {
        None => 1000,
        Some(c @ (1000..=1003 | 1007..=1014 | 3000..=4999)) => c as u16,
        Some(c) => {
            return Err(format!(
                "rooms backend sent close code {c}, which a member cannot be sent; ignored"
            ))
        }
    };
    let reason = envelope["reason"].as_str().unwrap_or("").to_string();
    Ok(match (envelope["type"].as_str(), conn) {
        (Some("accept"), Some(conn)) => Envelope::Command(RoomCommand::Accept { conn }),
        (Some("refuse"), Some(conn)) => {
            Envelope::Command(RoomCommand::Refuse { conn, code, reason })
        }
        (Some("kick"), Some(conn)) => Envelope::Command(RoomCommand::Kick { conn, code, reason }),
        (Some("send"), Some(conn)) => Envelope::Send { conn },
        (Some("broadcast"), _) => {
            let Some(room) = envelope["room"].as_str().map(str::to_owned) else {
                return Err("rooms backend: broadcast without a room; ignored".into());
            };
            let except = envelope["except"].as_u64();
            Envelope::Broadcast { room, except }
        }
        _ => {
            return Err(format!(
                "rooms backend sent an unknown envelope {envelope}; ignored"
            ))
        }
    })
}

async fn next_payload(rx: &mut futures_util::stream::SplitStream<BackendWs>) -> Option<Payload> {
    while let Some(Ok(message)) = rx.next().await {
        if let Some(payload) = message_payload(message) {
            return Some(payload);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    //! The backend envelope parser on its own (§6.1).

    use super::*;

    fn command(text: &str) -> RoomCommand {
        match parse_command(text) {
            Ok(Envelope::Command(command)) => command,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn commands_complete_in_themselves() {
        assert_eq!(
            command(r#"{"type": "accept", "conn": 8}"#),
            RoomCommand::Accept { conn: 8 }
        );
        assert_eq!(
            command(r#"{"type": "refuse", "conn": 8, "code": 4003, "reason": "bad token"}"#),
            RoomCommand::Refuse {
                conn: 8,
                code: 4003,
                reason: "bad token".into()
            }
        );
        assert_eq!(
            command(r#"{"type": "kick", "conn": 7, "code": 4000, "reason": "bye"}"#),
            RoomCommand::Kick {
                conn: 7,
                code: 4000,
                reason: "bye".into()
            }
        );
        // Without code and reason: 1000 and empty.
        assert_eq!(
            command(r#"{"type": "kick", "conn": 7}"#),
            RoomCommand::Kick {
                conn: 7,
                code: 1000,
                reason: String::new()
            }
        );
    }

    #[test]
    fn send_and_broadcast_wait_for_their_payload() {
        assert_eq!(
            parse_command(r#"{"type": "send", "conn": 7}"#),
            Ok(Envelope::Send { conn: 7 })
        );
        assert_eq!(
            parse_command(r#"{"type": "broadcast", "room": "lobby", "except": 7}"#),
            Ok(Envelope::Broadcast {
                room: "lobby".into(),
                except: Some(7)
            })
        );
        assert_eq!(
            parse_command(r#"{"type": "broadcast", "room": "lobby"}"#),
            Ok(Envelope::Broadcast {
                room: "lobby".into(),
                except: None
            })
        );
    }

    #[test]
    fn unknown_or_malformed_envelopes_are_ignored_with_a_reason() {
        let why = |text: &str| parse_command(text).unwrap_err().why;
        assert!(why("{").starts_with("rooms backend sent invalid JSON"));
        assert!(why("").starts_with("rooms backend sent invalid JSON"));
        assert_eq!(
            why(r#"{"type": "broadcast", "except": 7}"#),
            "rooms backend: broadcast without a room; ignored"
        );
        for unknown in [
            r#"{"type": "join", "conn": 7}"#,
            r#"{"type": "accept"}"#,
            r#"{"type": "send", "conn": -1}"#,
            r#"{"type": "accept", "conn": "8"}"#,
            r#"{"conn": 8}"#,
            "[1, 2]",
            "null",
        ] {
            assert!(
                why(unknown).starts_with("rooms backend sent an unknown envelope"),
                "{unknown}"
            );
        }
    }

    #[test]
    fn an_ignored_send_or_broadcast_still_owns_the_next_message() {
        let follows = |text: &str| parse_command(text).unwrap_err().payload_follows;
        assert!(follows(r#"{"type": "broadcast", "except": 7}"#));
        assert!(follows(r#"{"type": "send"}"#));
        assert!(follows(r#"{"type": "send", "conn": -1}"#));
        assert!(follows(r#"{"type": "send", "conn": 7, "code": 70000}"#));
        assert!(!follows(r#"{"type": "kick", "conn": 7, "code": 70000}"#));
        assert!(!follows(r#"{"type": "accept"}"#));
        assert!(!follows("{"));
    }

    #[test]
    fn close_codes_members_cannot_be_sent_are_refused() {
        for code in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 70_000] {
            let text = format!(r#"{{"type": "kick", "conn": 7, "code": {code}}}"#);
            assert!(
                parse_command(&text).unwrap_err().why.contains("close code"),
                "{code}"
            );
        }
        for code in [1000, 1008, 3000, 4999] {
            let text = format!(r#"{{"type": "kick", "conn": 7, "code": {code}}}"#);
            assert!(parse_command(&text).is_ok(), "{code}");
        }
    }
}
