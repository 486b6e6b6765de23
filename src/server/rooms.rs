//! Rooms at the edge: the server terminates members' WebSockets at
//! `/_warren/rooms/{room}` and speaks to the agent on their behalf over one
//! rooms stream per agent connection. A broadcast crosses the tunnel once and is
//! fanned out here; each member has a bounded queue, and one that cannot keep
//! up is disconnected (close 4008) instead of slowing the room.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::{
    tungstenite::{protocol::Role, Message},
    WebSocketStream,
};
use tracing::{debug, info, warn, Instrument};
use warren_proto::{room_close, Open, Payload, Reply, RoomCommand, RoomEvent, ROOM_FRAME_LIMIT};

use super::{agents::AgentLink, config::RoomLimits, reply::error_response, upgrade};
use crate::{
    body::TunnelBody,
    headers,
    websocket::{close, message_payload, payload_message, WsLimits},
};

/// Close reason the server gives, per code.
fn reason_for(code: u16) -> &'static str {
    match code {
        room_close::AUTH_TIMEOUT => "no credentials in time",
        room_close::TOO_SLOW => "too slow to keep up with the room",
        room_close::AGENT_GONE => "the room's agent went away",
        _ => "",
    }
}

#[derive(Clone)]
struct Member {
    queue: mpsc::Sender<Message>,
    close: Arc<watch::Sender<Option<(u16, String)>>>,
}

impl Member {
    fn close(&self, code: u16, reason: &str) {
        self.close.send_replace(Some((code, reason.to_string())));
    }

    fn deliver(&self, message: Message) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(message) {
            self.close(room_close::TOO_SLOW, reason_for(room_close::TOO_SLOW));
        }
    }
}

/// Where a join waiting for the backend's decision learns it.
type Decision = oneshot::Sender<Result<(), (u16, String)>>;

#[derive(Default)]
struct ChannelState {
    rooms: HashMap<String, HashMap<u64, Member>>,
    room_of: HashMap<u64, String>,
    pending: HashMap<u64, Decision>,
}

/// One agent connection's rooms.
struct Channel {
    events: mpsc::Sender<RoomEvent>,
    state: std::sync::Mutex<ChannelState>,
    closed: AtomicBool,
}

impl Channel {
    fn dispatch(&self, command: RoomCommand) {
        let mut state = self.state.lock().expect("rooms poisoned");
        match command {
            RoomCommand::Send { conn, payload } => {
                if let Some(member) = state
                    .room_of
                    .get(&conn)
                    .and_then(|room| state.rooms.get(room))
                    .and_then(|members| members.get(&conn))
                {
                    member.deliver(payload_message(payload));
                }
            }
            RoomCommand::Broadcast {
                room,
                payload,
                except,
            } => {
                if let Some(members) = state.rooms.get(&room) {
                    // One copy of the payload; every member's message shares it.
                    let message = payload_message(payload);
                    for (conn, member) in members {
                        if Some(*conn) != except {
                            member.deliver(message.clone());
                        }
                    }
                }
            }
            RoomCommand::Kick { conn, code, reason } => {
                if let Some(member) = state
                    .room_of
                    .get(&conn)
                    .and_then(|room| state.rooms.get(room))
                    .and_then(|members| members.get(&conn))
                {
                    member.close(code, &reason);
                }
            }
            RoomCommand::Accept { conn } => {
                if let Some(waiting) = state.pending.remove(&conn) {
                    let _ = waiting.send(Ok(()));
                }
            }
            RoomCommand::Refuse { conn, code, reason } => {
                if let Some(waiting) = state.pending.remove(&conn) {
                    let _ = waiting.send(Err((code, reason)));
                }
            }
        }
    }

    /// The agent connection is gone: every member is told so.
    fn shut(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let mut state = self.state.lock().expect("rooms poisoned");
        for member in state.rooms.values().flat_map(|m| m.values()) {
            member.close(room_close::AGENT_GONE, reason_for(room_close::AGENT_GONE));
        }
        state.pending.clear();
    }

    fn member_count(&self) -> usize {
        self.state.lock().expect("rooms poisoned").room_of.len()
    }
}

/// Every agent connection's rooms on this node.
pub(crate) struct RoomHub {
    channels: tokio::sync::Mutex<HashMap<String, (String, Arc<Channel>)>>,
    next_conn: AtomicU64,
    limits: RoomLimits,
    ws_limits: WsLimits,
    /// Largest head frame on the stream that opens a rooms channel.
    max_head: usize,
    /// Time the agent has to answer the opening of its rooms channel.
    open_timeout: Duration,
}

impl RoomHub {
    pub fn new(
        limits: RoomLimits,
        ws_limits: WsLimits,
        max_head: usize,
        open_timeout: Duration,
    ) -> Self {
        RoomHub {
            channels: tokio::sync::Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            limits,
            ws_limits,
            max_head,
            open_timeout,
        }
    }

    /// The rooms channel of `link`, opening it on first use.
    async fn channel(&self, link: &AgentLink) -> Result<Arc<Channel>, String> {
        let mut channels = self.channels.lock().await;
        if let Some((_, channel)) = channels.get(&link.tunnel_ws_id) {
            if !channel.closed.load(Ordering::SeqCst) {
                return Ok(channel.clone());
            }
        }
        channels.retain(|_, (_, c)| !c.closed.load(Ordering::SeqCst));
        let max_head = self.max_head;
        let (mut send, mut recv) = link.session.open().await.map_err(|e| e.to_string())?;
        send.write_frame(&Open::Rooms, max_head)
            .await
            .map_err(|e| e.to_string())?;
        let reply = tokio::time::timeout(self.open_timeout, recv.read_frame::<Reply>(max_head))
            .await
            .map_err(|_| "the agent did not answer".to_string())?
            .map_err(|e| e.to_string())?;
        if let Reply::Error(e) = reply {
            return Err(e.message);
        }
        // Events wait here when the agent is slow; senders then wait too.
        let (events, mut events_rx) = mpsc::channel::<RoomEvent>(1024);
        let channel = Arc::new(Channel {
            events,
            state: std::sync::Mutex::new(ChannelState::default()),
            closed: AtomicBool::new(false),
        });
        let writer = async move {
            while let Some(event) = events_rx.recv().await {
                if send.write_frame(&event, ROOM_FRAME_LIMIT).await.is_err() {
                    break;
                }
            }
        };
        let reader_channel = channel.clone();
        let reader = async move {
            loop {
                match recv.read_frame::<RoomCommand>(ROOM_FRAME_LIMIT).await {
                    Ok(command) => reader_channel.dispatch(command),
                    Err(e) => {
                        info!("rooms stream ended: {e}");
                        break;
                    }
                }
            }
        };
        let closing = channel.clone();
        let span =
            tracing::info_span!("rooms", client_id = %link.client_id, conn = %link.tunnel_ws_id);
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = writer => {}
                    _ = reader => {}
                }
                closing.shut();
            }
            .instrument(span),
        );
        channels.insert(
            link.tunnel_ws_id.clone(),
            (link.client_id.clone(), channel.clone()),
        );
        Ok(channel)
    }

    /// `(room, members)` of an agent's listed rooms (names not starting with `_`).
    async fn list(&self, client_id: &str) -> Vec<(String, usize)> {
        let channels = self.channels.lock().await;
        let mut rooms: HashMap<String, usize> = HashMap::new();
        for (owner, channel) in channels.values() {
            if owner != client_id || channel.closed.load(Ordering::SeqCst) {
                continue;
            }
            let state = channel.state.lock().expect("rooms poisoned");
            for (room, members) in &state.rooms {
                if !room.starts_with('_') && !members.is_empty() {
                    *rooms.entry(room.clone()).or_default() += members.len();
                }
            }
        }
        let mut rooms: Vec<_> = rooms.into_iter().collect();
        rooms.sort();
        rooms
    }
}

/// Room names: 1–64 of `A-Z a-z 0-9 . _ -`.
fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 64
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `GET /_warren/rooms?clientId=ID`.
pub(super) async fn list(hub: &RoomHub, client_id: &str) -> Response<TunnelBody> {
    let rooms: Vec<serde_json::Value> = hub
        .list(client_id)
        .await
        .into_iter()
        .map(|(room, members)| serde_json::json!({ "room": room, "members": members }))
        .collect();
    let mut resp = Response::new(crate::body::full(
        serde_json::json!({ "clientId": client_id, "rooms": rooms }).to_string(),
    ));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A client joining `room` of the agent behind `link`.
pub(super) async fn join(
    hub: &RoomHub,
    link: Arc<AgentLink>,
    mut req: Request<Incoming>,
    room: &str,
    peer: SocketAddr,
) -> Response<TunnelBody> {
    let client_id = link.client_id.clone();
    let fail =
        |status, code: &str, message: &str| error_response(status, code, Some(&client_id), message);
    if !valid_room(room) {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_room",
            "room names are 1-64 of A-Z a-z 0-9 . _ -",
        );
    }
    let accept = match upgrade::accept_key(&req) {
        Ok(a) => a,
        Err(why) => return fail(StatusCode::BAD_REQUEST, "bad_websocket_handshake", why),
    };
    let channel = match hub.channel(&link).await {
        Ok(c) => c,
        Err(why) => {
            info!(client_id = %client_id, "rooms unavailable: {why}");
            return fail(StatusCode::BAD_GATEWAY, "rooms_unavailable", &why);
        }
    };
    if channel.member_count() >= hub.limits.max_members_per_agent {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "rooms_full",
            "this agent's rooms are full on this node",
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut client_headers = req.headers().clone();
    headers::strip_hop_by_hop(&mut client_headers);
    for name in [
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        headers::CLIENT_HEADER,
    ] {
        client_headers.remove(name);
    }
    if let Ok(ip) = http::HeaderValue::from_str(&peer.ip().to_string()) {
        client_headers.insert("x-forwarded-for", ip);
    }
    let conn = hub.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    let member = MemberSession {
        channel,
        room: room.to_string(),
        conn,
        headers: headers::to_wire(&client_headers),
        auth: link.rooms_auth,
        limits: hub.limits.clone(),
        ws_limits: hub.ws_limits.clone(),
    };
    let span = tracing::info_span!("member", client_id = %client_id, room = %room, member = conn);
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => member.run(upgraded).await,
                Err(e) => debug!("member upgrade failed: {e}"),
            }
        }
        .instrument(span),
    );
    upgrade::switching(accept, None)
}

struct MemberSession {
    channel: Arc<Channel>,
    room: String,
    conn: u64,
    headers: Vec<warren_proto::Header>,
    auth: bool,
    limits: RoomLimits,
    ws_limits: WsLimits,
}

impl MemberSession {
    async fn run(self, upgraded: hyper::upgrade::Upgraded) {
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
