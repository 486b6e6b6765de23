//! The control stream after the handshake, identical on both ends: each side
//! pings at the agreed interval and answers the other's pings; a peer silent for
//! [`MISSED_BEATS`] intervals is declared dead. Either side may announce
//! `GoAway`; heartbeats continue while requests in flight drain, so liveness is
//! checked for the whole life of a connection.
//!
//! "Silent" means nothing at all arrived: neither a control frame nor anything
//! the transport saw (`Session::heard`). Over QUIC every stream's writes wait
//! on one connection-wide flow-control window, which streams whose clients
//! stopped reading can use up; the peer's pongs then cannot be sent, but its
//! acknowledgements still arrive, and a peer that is merely congested is not
//! taken for dead.

use std::{future::Future, time::Duration};

use std::sync::Arc;

use tokio::{
    sync::{mpsc, watch, Notify},
    time::Instant,
};
use warren_proto::{Control, MAX_CONTROL_FRAME};

use crate::transport::{RecvStream, SendStream, Session, TransportError};

/// First read size on a control stream (`RecvStream::small_reads`): its
/// frames are a few bytes (a Hello a few hundred; larger ones gather over
/// reads that double).
pub const CONTROL_READ: usize = 256;

/// Silence, in heartbeat intervals, after which the peer counts as dead. Three
/// tolerates one lost ping and one delayed pong on a lossy path.
pub const MISSED_BEATS: u32 = 3;

/// Why the control stream ended.
#[derive(Debug)]
pub enum ControlEnd {
    /// No frame from the peer for `MISSED_BEATS` intervals.
    PeerSilent(Duration),
    /// The stream or session ended (including an orderly close after GoAway).
    Lost(TransportError),
    /// The peer sent something that does not belong on the control stream.
    ProtocolError(String),
}

impl std::fmt::Display for ControlEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlEnd::PeerSilent(d) => write!(f, "peer silent for {d:.1?}"),
            ControlEnd::Lost(e) => write!(f, "{e}"),
            ControlEnd::ProtocolError(e) => write!(f, "protocol error: {e}"),
        }
    }
}

/// Lets others ask, between heartbeats, whether the peer is still there: a
/// request that waits unusually long for its agent probes the connection
/// instead of waiting for three missed beats.
#[derive(Clone)]
pub struct Liveness {
    /// Counts frames heard from the peer.
    heard: Arc<watch::Sender<u64>>,
    ping_now: Arc<Notify>,
    /// What the transport has heard from the peer (see the module's notes).
    session: Session,
}

/// Messages for the peer that must not be lost but only matter in their
/// latest form: one value per key, replaced by newer ones until the control
/// stream's writer sends it. Bounded by its keys (for credit: one per
/// response in flight).
#[derive(Default)]
pub struct Outbox {
    pending: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
    wake: Notify,
}

impl Outbox {
    /// Queues `value` for `key`, replacing any not yet sent.
    pub fn put(&self, key: u64, value: u64) {
        self.pending.lock().expect("outbox lock").insert(key, value);
        self.wake.notify_one();
    }

    /// Drops what is queued for `key` (it no longer matters).
    pub fn forget(&self, key: u64) {
        self.pending.lock().expect("outbox lock").remove(&key);
    }

    /// Takes everything queued.
    pub(crate) fn take(&self) -> Vec<(u64, u64)> {
        self.pending.lock().expect("outbox lock").drain().collect()
    }
}

/// How often a probe looks at what the transport heard while it waits.
const PROBE_LOOK: Duration = Duration::from_millis(25);

impl Liveness {
    pub fn new(session: Session) -> Self {
        Liveness {
            heard: Arc::new(watch::channel(0).0),
            ping_now: Arc::new(Notify::new()),
            session,
        }
    }

    /// A count that grows with everything heard from the peer: control
    /// frames and whatever the transport received.
    pub fn heard(&self) -> u64 {
        *self.heard.borrow() + self.session.heard()
    }

    /// Pings the peer now; whether anything was heard from it within `within`.
    pub async fn probe(&self, within: Duration) -> bool {
        let mut frames = self.heard.subscribe();
        frames.borrow_and_update();
        let transport = self.session.heard();
        self.ping_now.notify_one();
        let answered = async {
            loop {
                tokio::select! {
                    changed = frames.changed() => return changed.is_ok(),
                    _ = tokio::time::sleep(PROBE_LOOK) => {
                        if self.session.heard() != transport {
                            return true;
                        }
                    }
                }
            }
        };
        matches!(tokio::time::timeout(within, answered).await, Ok(true))
    }
}

/// What else travels on the control stream: credit (PROTOCOL.md §3 item 6).
#[derive(Default)]
pub struct Extras {
    /// Credit to send the peer (server): `Control::Credit` per request id.
    pub credit_out: Option<Arc<Outbox>>,
    /// Where credit from the peer goes (agent); without it, a `Credit` is a
    /// protocol error.
    pub credit_in: Option<Box<dyn FnMut(u64, u64) + Send>>,
}

/// Runs the heartbeat until the peer dies or the connection ends. When `leave`
/// resolves, sends `GoAway` once (and keeps beating); a `GoAway` from the peer
/// is reported through `on_goaway`; `liveness` probes ping at once.
pub async fn keepalive(
    mut send: SendStream,
    mut recv: RecvStream,
    interval: Duration,
    liveness: &Liveness,
    leave: impl Future<Output = ()>,
    mut on_goaway: impl FnMut(String),
    extras: Extras,
) -> ControlEnd {
    let Extras {
        credit_out,
        mut credit_in,
    } = extras;
    // Reading a frame is not cancel-safe, so a dedicated task reads and hands
    // whole frames over; 8 slots is plenty for a few messages per interval.
    // (Boxed: a channel allocates its slots whole, and frames are rare.)
    let (tx, mut rx) = mpsc::channel::<Box<Result<Control, TransportError>>>(8);
    let reader = tokio::spawn(async move {
        loop {
            let frame = recv.read_frame::<Control>(MAX_CONTROL_FRAME).await;
            let failed = frame.is_err();
            if tx.send(Box::new(frame)).await.is_err() || failed {
                break;
            }
        }
    });
    let _reader = AbortOnDrop(reader);
    // Writes may wait on flow control shared with every stream (see the
    // module's notes): a writer task does them, so the heartbeat's clock
    // never waits. A ping or pong that finds it still busy is dropped; the
    // next beat sends another.
    // (`Beat`, not `Control`: the channel's slots are allocated whole, and a
    // small type keeps an idle connection small.)
    let (out, mut queued) = mpsc::channel::<Beat>(4);
    let mut writer = AbortOnDrop(tokio::spawn(async move {
        loop {
            let messages = tokio::select! {
                message = queued.recv() => match message {
                    Some(beat) => vec![beat.message()],
                    None => break,
                },
                _ = woken(credit_out.as_deref()) => credit_out
                    .as_ref()
                    .map(|o| o.take())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(request_id, offset)| Control::Credit { request_id, offset })
                    .collect(),
            };
            for message in messages {
                if let Err(e) = send.write_frame(&message, MAX_CONTROL_FRAME).await {
                    return e;
                }
            }
        }
        TransportError::Closed("control writer ended".into())
    }));
    tokio::pin!(leave);
    let mut left = false;
    let mut goaway_owed = false;

    let dead_after = interval * MISSED_BEATS;
    let mut last_heard = Instant::now();
    let mut transport_heard = liveness.heard();
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        let outgoing = tokio::select! {
            _ = ticker.tick() => {
                let heard = liveness.heard();
                if heard != transport_heard {
                    (transport_heard, last_heard) = (heard, Instant::now());
                }
                if last_heard.elapsed() >= dead_after {
                    return ControlEnd::PeerSilent(last_heard.elapsed());
                }
                if goaway_owed {
                    goaway_owed = out.try_send(Beat::GoAway).is_err();
                }
                seq += 1;
                Beat::Ping(seq)
            }
            _ = liveness.ping_now.notified() => {
                seq += 1;
                Beat::Ping(seq)
            }
            frame = rx.recv() => {
                last_heard = Instant::now();
                liveness.heard.send_modify(|n| *n += 1);
                match frame.map(|f| *f) {
                    Some(Ok(Control::Ping { seq })) => Beat::Pong(seq),
                    Some(Ok(Control::Pong { .. })) => continue,
                    Some(Ok(Control::GoAway { reason })) => {
                        on_goaway(reason);
                        continue;
                    }
                    // Only sent to an agent that asked for it.
                    Some(Ok(Control::Addresses { urls })) => {
                        for url in urls {
                            tracing::info!(%url, "clients reach this agent at");
                        }
                        continue;
                    }
                    Some(Ok(Control::Credit { request_id, offset })) if credit_in.is_some() => {
                        if let Some(credit) = credit_in.as_mut() {
                            credit(request_id, offset);
                        }
                        continue;
                    }
                    Some(Ok(other)) => {
                        // Named, never printed: a Hello carries a token.
                        return ControlEnd::ProtocolError(format!("unexpected {} after handshake", kind(&other)))
                    }
                    Some(Err(e)) => return ControlEnd::Lost(e),
                    None => return ControlEnd::Lost(TransportError::Closed("control reader ended".into())),
                }
            }
            _ = &mut leave, if !left => {
                left = true;
                Beat::GoAway
            }
            failed = &mut writer.0 => {
                return ControlEnd::Lost(failed.unwrap_or_else(|e| TransportError::Closed(e.to_string())));
            }
        };
        let goaway = matches!(outgoing, Beat::GoAway);
        match out.try_send(outgoing) {
            Ok(()) => {}
            // The GoAway is owed until it fits; pings and pongs are not.
            Err(mpsc::error::TrySendError::Full(_)) => goaway_owed |= goaway,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return ControlEnd::Lost(TransportError::Closed("control writer ended".into()))
            }
        }
    }
}

/// What the heartbeat hands its writer.
#[derive(Clone, Copy)]
enum Beat {
    Ping(u64),
    Pong(u64),
    GoAway,
}

impl Beat {
    fn message(self) -> Control {
        match self {
            Beat::Ping(seq) => Control::Ping { seq },
            Beat::Pong(seq) => Control::Pong { seq },
            Beat::GoAway => Control::GoAway {
                reason: "leaving".into(),
            },
        }
    }
}

/// Resolves when `outbox` has something queued (never without one).
async fn woken(outbox: Option<&Outbox>) {
    match outbox {
        Some(outbox) => outbox.wake.notified().await,
        None => std::future::pending().await,
    }
}

/// A control message's name, for logs and close reasons. Messages are never
/// printed whole: a `Hello` carries the agent's token.
pub fn kind(message: &Control) -> &'static str {
    match message {
        Control::Hello(_) => "Hello",
        Control::Welcome(_) => "Welcome",
        Control::Refused(_) => "Refused",
        Control::Ping { .. } => "Ping",
        Control::Pong { .. } => "Pong",
        Control::GoAway { .. } => "GoAway",
        Control::Credit { .. } => "Credit",
        Control::Addresses { .. } => "Addresses",
    }
}

/// Aborts a spawned task when dropped, so helpers never outlive their owner.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
