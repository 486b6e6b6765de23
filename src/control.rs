//! The control stream after the handshake, identical on both ends: each side
//! pings at the agreed interval and answers the other's pings; a peer silent for
//! [`MISSED_BEATS`] intervals is declared dead. Either side may send `GoAway`.

use std::time::Duration;

use tokio::{sync::mpsc, time::Instant};
use warren_proto::{Control, MAX_CONTROL_FRAME};

use crate::{
    shutdown::Shutdown,
    transport::{RecvStream, SendStream, TransportError},
};

/// Silence, in heartbeat intervals, after which the peer counts as dead. Three
/// tolerates one lost ping and one delayed pong on a lossy path.
pub const MISSED_BEATS: u32 = 3;

/// Why the control stream ended.
#[derive(Debug)]
pub enum ControlEnd {
    /// No frame from the peer for `MISSED_BEATS` intervals.
    PeerSilent(Duration),
    /// The peer announced it is going away.
    GoAway(String),
    /// We are shutting down (a `GoAway` was sent).
    Shutdown,
    /// The stream or session failed.
    Lost(TransportError),
    /// The peer sent something that does not belong on the control stream.
    ProtocolError(String),
}

impl std::fmt::Display for ControlEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlEnd::PeerSilent(d) => write!(f, "peer silent for {d:?}"),
            ControlEnd::GoAway(reason) => write!(f, "peer going away: {reason}"),
            ControlEnd::Shutdown => f.write_str("shutting down"),
            ControlEnd::Lost(e) => write!(f, "control stream lost: {e}"),
            ControlEnd::ProtocolError(e) => write!(f, "protocol error: {e}"),
        }
    }
}

/// Runs the heartbeat until the peer dies, leaves, or `shutdown` fires.
pub async fn keepalive(
    mut send: SendStream,
    mut recv: RecvStream,
    interval: Duration,
    mut shutdown: Shutdown,
) -> ControlEnd {
    // Reading a frame is not cancel-safe, so a dedicated task reads and hands
    // whole frames over; 8 slots is plenty for a few messages per interval.
    let (tx, mut rx) = mpsc::channel::<Result<Control, TransportError>>(8);
    let reader = tokio::spawn(async move {
        loop {
            let frame = recv.read_frame::<Control>(MAX_CONTROL_FRAME).await;
            let failed = frame.is_err();
            if tx.send(frame).await.is_err() || failed {
                break;
            }
        }
    });
    let _reader = AbortOnDrop(reader);

    let dead_after = interval * MISSED_BEATS;
    let mut last_heard = Instant::now();
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if last_heard.elapsed() >= dead_after {
                    return ControlEnd::PeerSilent(last_heard.elapsed());
                }
                seq += 1;
                if let Err(e) = send.write_frame(&Control::Ping { seq }, MAX_CONTROL_FRAME).await {
                    return ControlEnd::Lost(e);
                }
            }
            frame = rx.recv() => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(Control::Ping { seq })) => {
                        let pong = Control::Pong { seq };
                        if let Err(e) = send.write_frame(&pong, MAX_CONTROL_FRAME).await {
                            return ControlEnd::Lost(e);
                        }
                    }
                    Some(Ok(Control::Pong { .. })) => {}
                    Some(Ok(Control::GoAway { reason })) => return ControlEnd::GoAway(reason),
                    Some(Ok(other)) => {
                        return ControlEnd::ProtocolError(format!("unexpected {other:?} after handshake"))
                    }
                    Some(Err(e)) => return ControlEnd::Lost(e),
                    None => return ControlEnd::Lost(TransportError::Closed("control reader ended".into())),
                }
            }
            _ = shutdown.wait() => {
                let bye = Control::GoAway { reason: "shutting down".into() };
                let _ = send.write_frame(&bye, MAX_CONTROL_FRAME).await;
                let _ = send.finish();
                return ControlEnd::Shutdown;
            }
        }
    }
}

/// Aborts a spawned task when dropped, so helpers never outlive their owner.
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
