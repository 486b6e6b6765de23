//! The rooms hub: one rooms channel per agent connection (the stream to its
//! backend, opened on first use), the members of each room, and the fan-out
//! of the backend's commands to them.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, Instrument};
use warren_proto::{room_close, Open, Reply, RoomCommand, RoomEvent, ROOM_FRAME_LIMIT};

use super::super::{agents::AgentLink, config::RoomLimits};
use crate::websocket::{payload_message, WsLimits};

/// Close reason the server gives, per code.
pub(super) fn reason_for(code: u16) -> &'static str {
    match code {
        room_close::AUTH_TIMEOUT => "no credentials in time",
        room_close::TOO_SLOW => "too slow to keep up with the room",
        room_close::AGENT_GONE => "the room's agent went away",
        _ => "",
    }
}

#[derive(Clone)]
pub(super) struct Member {
    pub queue: mpsc::Sender<Message>,
    pub close: Arc<watch::Sender<Option<(u16, String)>>>,
}

impl Member {
    pub fn close(&self, code: u16, reason: &str) {
        self.close.send_replace(Some((code, reason.to_string())));
    }

    /// Queues `message`; a member whose queue is full is dropped (closed as
    /// too slow), and `dropped` counts it.
    fn deliver(&self, message: Message, dropped: &AtomicU64) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(message) {
            if self.close.borrow().is_none() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            self.close(room_close::TOO_SLOW, reason_for(room_close::TOO_SLOW));
        }
    }
}

/// Where a join waiting for the backend's decision learns it.
pub(super) type Decision = oneshot::Sender<Result<(), (u16, String)>>;

#[derive(Default)]
pub(super) struct ChannelState {
    pub rooms: HashMap<String, HashMap<u64, Member>>,
    pub room_of: HashMap<u64, String>,
    pub pending: HashMap<u64, Decision>,
}

/// One agent connection's rooms.
pub(super) struct Channel {
    pub events: mpsc::Sender<RoomEvent>,
    pub state: std::sync::Mutex<ChannelState>,
    pub closed: AtomicBool,
    /// The hub's count of members dropped for being too slow.
    dropped: Arc<AtomicU64>,
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
                    member.deliver(payload_message(payload), &self.dropped);
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
                            member.deliver(message.clone(), &self.dropped);
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

    /// Members of `room` (joined, past any authentication).
    pub fn room_size(&self, room: &str) -> usize {
        let state = self.state.lock().expect("rooms poisoned");
        state.rooms.get(room).map_or(0, |members| members.len())
    }

    pub fn member_count(&self) -> usize {
        self.state.lock().expect("rooms poisoned").room_of.len()
    }
}

/// One agent connection's rooms channel, opened on first use. Joins for that
/// connection wait on each other while it opens; never on another agent.
#[derive(Default)]
struct Slot {
    /// Held while the channel is being opened, so it is opened once.
    opening: tokio::sync::Mutex<()>,
    channel: std::sync::Mutex<Option<Arc<Channel>>>,
}

impl Slot {
    fn live(&self) -> Option<Arc<Channel>> {
        self.channel
            .lock()
            .expect("rooms poisoned")
            .clone()
            .filter(|c| !c.closed.load(Ordering::SeqCst))
    }
}

/// Every agent connection's rooms on this node. Nothing here is held across
/// an await on an agent: the map's lock is a plain mutex taken briefly, and
/// opening a channel waits (bounded) on that agent connection's own slot.
pub(crate) struct RoomHub {
    /// `tunnel_ws_id` → (client id, its rooms channel).
    channels: std::sync::Mutex<HashMap<String, (String, Arc<Slot>)>>,
    pub(super) next_conn: AtomicU64,
    pub(super) limits: RoomLimits,
    pub(super) ws_limits: WsLimits,
    /// Largest head frame on the stream that opens a rooms channel.
    max_head: usize,
    /// Time the agent has to open its rooms channel (stream and reply).
    open_timeout: Duration,
    /// Members dropped for not keeping up, since start.
    dropped: Arc<AtomicU64>,
}

impl RoomHub {
    pub fn new(
        limits: RoomLimits,
        ws_limits: WsLimits,
        max_head: usize,
        open_timeout: Duration,
    ) -> Self {
        RoomHub {
            channels: std::sync::Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            limits,
            ws_limits,
            max_head,
            open_timeout,
            dropped: Default::default(),
        }
    }

    /// Members dropped for not keeping up with their room, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Members across every room of every agent on this node.
    pub fn member_total(&self) -> usize {
        self.live_channels()
            .iter()
            .map(|(_, channel)| channel.member_count())
            .sum()
    }

    /// `(client id, room, members)` of every room with members on this
    /// node, hidden rooms (`_…`) included: for the operator.
    pub fn all_rooms(&self) -> Vec<(String, String, usize)> {
        let mut rooms: HashMap<(String, String), usize> = HashMap::new();
        for (client_id, channel) in self.live_channels() {
            let state = channel.state.lock().expect("rooms poisoned");
            for (room, members) in state.rooms.iter().filter(|(_, m)| !m.is_empty()) {
                *rooms.entry((client_id.clone(), room.clone())).or_default() += members.len();
            }
        }
        let mut rooms: Vec<_> = rooms.into_iter().map(|((c, r), n)| (c, r, n)).collect();
        rooms.sort();
        rooms
    }

    /// Every open rooms channel, with its agent's client id.
    fn live_channels(&self) -> Vec<(String, Arc<Channel>)> {
        let slots: Vec<(String, Arc<Slot>)> = {
            let channels = self.channels.lock().expect("rooms poisoned");
            channels
                .values()
                .map(|(owner, slot)| (owner.clone(), slot.clone()))
                .collect()
        };
        slots
            .into_iter()
            .filter_map(|(owner, slot)| Some((owner, slot.live()?)))
            .collect()
    }

    /// The rooms channel of `link`, opening it on first use.
    pub(super) async fn channel(&self, link: &AgentLink) -> Result<Arc<Channel>, String> {
        let slot = {
            let mut channels = self.channels.lock().expect("rooms poisoned");
            match channels.get(&link.tunnel_ws_id) {
                Some((_, slot)) => slot.clone(),
                None => {
                    // Forget connections that have gone, then make room for this one.
                    channels.retain(|_, (_, slot)| {
                        slot.opening.try_lock().is_err() || slot.live().is_some()
                    });
                    let slot = Arc::new(Slot::default());
                    channels.insert(
                        link.tunnel_ws_id.clone(),
                        (link.client_id.clone(), slot.clone()),
                    );
                    slot
                }
            }
        };
        if let Some(channel) = slot.live() {
            return Ok(channel);
        }
        let _opening = slot.opening.lock().await;
        if let Some(channel) = slot.live() {
            return Ok(channel);
        }
        let channel = tokio::time::timeout(self.open_timeout, self.open(link))
            .await
            .map_err(|_| {
                format!(
                    "the agent did not open its rooms within {:?}",
                    self.open_timeout
                )
            })??;
        *slot.channel.lock().expect("rooms poisoned") = Some(channel.clone());
        Ok(channel)
    }

    /// Opens the rooms stream to the agent and starts the tasks that carry it.
    async fn open(&self, link: &AgentLink) -> Result<Arc<Channel>, String> {
        let max_head = self.max_head;
        let (mut send, mut recv) = link.session.open().await.map_err(|e| e.to_string())?;
        let open: Open = Open::Rooms;
        send.write_frame(&open, max_head)
            .await
            .map_err(|e| e.to_string())?;
        let reply = recv
            .read_frame::<Reply>(max_head)
            .await
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
            dropped: self.dropped.clone(),
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
        Ok(channel)
    }

    /// Closes every member of every room (the node is shutting down).
    pub fn close_all(&self, code: u16, reason: &str) {
        let slots: Vec<Arc<Slot>> = {
            let channels = self.channels.lock().expect("rooms poisoned");
            channels.values().map(|(_, slot)| slot.clone()).collect()
        };
        for channel in slots.iter().filter_map(|slot| slot.live()) {
            let state = channel.state.lock().expect("rooms poisoned");
            for member in state.rooms.values().flat_map(|m| m.values()) {
                member.close(code, reason);
            }
        }
    }

    /// `(room, members)` of an agent's listed rooms (names not starting with `_`).
    pub(super) fn list(&self, client_id: &str) -> Vec<(String, usize)> {
        let slots: Vec<Arc<Slot>> = {
            let channels = self.channels.lock().expect("rooms poisoned");
            channels
                .values()
                .filter(|(owner, _)| owner == client_id)
                .map(|(_, slot)| slot.clone())
                .collect()
        };
        let mut rooms: HashMap<String, usize> = HashMap::new();
        for channel in slots.iter().filter_map(|slot| slot.live()) {
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
