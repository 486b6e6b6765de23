//! One room member: the WebSocket the server terminated for it, its
//! credentials (in rooms that ask), its bounded queue, and the events it
//! causes (join, message, leave) on its agent's rooms channel.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::{
    tungstenite::{protocol::Role, Message},
    WebSocketStream,
};
use tracing::{debug, info, warn};
use warren_proto::{room_close, Payload, RoomEvent};

use super::{
    super::config::RoomLimits,
    hub::{reason_for, Channel, Member},
};
use crate::websocket::{close, message_payload, WsLimits};

pub(super) struct MemberSession {
    pub channel: Arc<Channel>,
    pub room: String,
    pub conn: u64,
    pub headers: Vec<warren_proto::Header>,
    pub auth: bool,
    pub limits: RoomLimits,
    pub ws_limits: WsLimits,
}

impl MemberSession {
    pub async fn run(self, upgraded: hyper::upgrade::Upgraded) {
        let ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(self.ws_limits.config()),
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        let (room, conn) = (self.room.clone(), self.conn);
        let events = self.channel.events.clone();

        // Rooms that ask for it: the first message is the credentials, and
        // the backend decides.
        let mut credentials = None;
        let mut decision = None;
        if self.auth {
            let first = tokio::time::timeout(self.limits.auth_timeout, next_payload(&mut rx)).await;
            match first {
                Ok(Some(payload)) => credentials = Some(payload),
                _ => {
                    let code = room_close::AUTH_TIMEOUT;
                    let _ = tx.send(close(code, reason_for(code))).await;
                    return;
                }
            }
            let (decided, wait) = oneshot::channel();
            self.channel
                .state
                .lock()
                .expect("rooms poisoned")
                .pending
                .insert(conn, decided);
            decision = Some(wait);
        }
        let (queue, mut inbox) = mpsc::channel(self.limits.member_queue);
        let (close_tx, mut close_rx) = watch::channel(None);
        let member = Member {
            queue,
            close: Arc::new(close_tx),
        };
        if !self.auth {
            // In before the backend hears of it, so its first broadcast reaches us.
            self.register(&member);
        }
        let join = RoomEvent::Join {
            room: room.clone(),
            conn,
            credentials,
            headers: self.headers.clone(),
        };
        if events.send(join).await.is_err() {
            let code = room_close::AGENT_GONE;
            let _ = tx.send(close(code, reason_for(code))).await;
            self.unregister();
            return;
        }
        if let Some(wait) = decision {
            match tokio::time::timeout(self.limits.auth_timeout, wait).await {
                Ok(Ok(Ok(()))) => self.register(&member),
                Ok(Ok(Err((code, reason)))) => {
                    // `dispatch` already took the pending entry when it answered.
                    info!(code, "join refused by the backend: {reason}");
                    let _ = tx.send(close(code, &reason)).await;
                    return;
                }
                _ => {
                    let code = room_close::AUTH_TIMEOUT;
                    let _ = tx
                        .send(close(code, "the backend did not accept in time"))
                        .await;
                    self.channel
                        .state
                        .lock()
                        .expect("rooms poisoned")
                        .pending
                        .remove(&conn);
                    let _ = events.try_send(RoomEvent::Leave { room, conn, code });
                    return;
                }
            }
        }

        let code = loop {
            tokio::select! {
                incoming = rx.next() => match incoming {
                    Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)).unwrap_or(1005),
                    Some(Ok(message)) => {
                        let Some(payload) = message_payload(message) else { continue };
                        let event = RoomEvent::Message { room: room.clone(), conn, payload };
                        if events.send(event).await.is_err() {
                            break room_close::AGENT_GONE;
                        }
                    }
                    Some(Err(_)) | None => break 1006,
                },
                outgoing = inbox.recv() => {
                    let Some(message) = outgoing else { break 1006 };
                    tokio::select! {
                        sent = tx.send(message) => if sent.is_err() { break 1006 },
                        // Closed (kicked, too slow) while blocked on a stalled socket.
                        _ = close_rx.changed() => {
                            let (code, _) = close_rx.borrow().clone().unwrap_or((1006, String::new()));
                            break code;
                        }
                    }
                }
                _ = close_rx.changed() => {
                    let (code, reason) = close_rx.borrow().clone().unwrap_or((1000, String::new()));
                    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(close(code, &reason))).await;
                    break code;
                }
            }
        };
        self.unregister();
        debug!(code, "member left");
        if !self.channel.closed.load(Ordering::SeqCst) {
            let leave = RoomEvent::Leave { room, conn, code };
            if tokio::time::timeout(Duration::from_secs(5), events.send(leave))
                .await
                .is_err()
            {
                warn!("could not tell the backend that a member left");
            }
        }
    }

    fn register(&self, member: &Member) {
        let mut state = self.channel.state.lock().expect("rooms poisoned");
        state
            .rooms
            .entry(self.room.clone())
            .or_default()
            .insert(self.conn, member.clone());
        state.room_of.insert(self.conn, self.room.clone());
    }

    fn unregister(&self) {
        let mut state = self.channel.state.lock().expect("rooms poisoned");
        state.room_of.remove(&self.conn);
        if let Some(members) = state.rooms.get_mut(&self.room) {
            members.remove(&self.conn);
            if members.is_empty() {
                state.rooms.remove(&self.room);
            }
        }
    }
}

async fn next_payload<S>(rx: &mut S) -> Option<Payload>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(Ok(message)) = rx.next().await {
        if matches!(message, Message::Close(_)) {
            return None;
        }
        if let Some(p) = message_payload(message) {
            return Some(p);
        }
    }
    None
}
