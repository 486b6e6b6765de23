//! One agent connection from Hello to goodbye: the Hello → Welcome exchange,
//! then serving every stream the server opens (through `dispatch`) while the
//! control stream keeps the heartbeat, and an orderly drain when either side
//! leaves.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tracing::{info, Instrument};
use warren_proto::{
    capability, CloseCode, Control, Hello, Welcome, MAX_CONTROL_FRAME, PROTOCOL_VERSION,
};

use super::{
    config::{AgentConfig, AgentError},
    credit::CreditBook,
    dispatch::Dispatch,
    status::AgentStatus,
};
use crate::{
    control::{self, ControlEnd},
    transport::{RecvStream, SendStream, Session, TransportError},
};

/// A failed connection attempt: retry, or give up.
pub(super) enum Attempt {
    Retry(String),
    Fatal(AgentError),
}

/// A welcomed connection, ready to serve.
pub(super) struct Connection {
    pub session: Session,
    pub welcome: Welcome,
    send: SendStream,
    recv: RecvStream,
}

/// Tells a session's serving task to leave: say GoAway, let requests in flight
/// finish for at most the given time, then close.
pub(super) type Leave = watch::Receiver<Option<Duration>>;

pub(super) async fn hello(
    config: &AgentConfig,
    session: Session,
    transport_note: String,
    replaces: Option<String>,
) -> Result<Connection, Attempt> {
    let exchange = async {
        let (mut send, mut recv) = session.open().await?;
        recv.small_reads(control::CONTROL_READ);
        let hello = Control::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_id: config.client_id.clone(),
            token: config.token.expose().to_string(),
            agent: concat!("warren/", env!("CARGO_PKG_VERSION")).into(),
            capabilities: {
                let mut can = vec![
                    capability::CREDIT.to_string(),
                    capability::ADDRESSES.to_string(),
                    capability::TRAILERS.to_string(),
                ];
                if config.rooms_auth {
                    can.push(capability::ROOMS_AUTH.to_string());
                }
                can
            },
            transport_note,
            replaces,
        });
        send.write_frame(&hello, MAX_CONTROL_FRAME).await?;
        let reply = recv.read_frame::<Control>(MAX_CONTROL_FRAME).await?;
        Ok::<_, TransportError>((send, recv, reply))
    };
    let (send, recv, reply) = match tokio::time::timeout(config.connect_timeout, exchange).await {
        Ok(Ok(parts)) => parts,
        Ok(Err(e)) => {
            session.close(CloseCode::ProtocolError, "handshake failed");
            return Err(Attempt::Retry(format!(
                "handshake with the server failed: {e}"
            )));
        }
        Err(_) => {
            session.close(CloseCode::Timeout, "no Welcome");
            return Err(Attempt::Retry(format!(
                "the server sent no Welcome within {:?}",
                config.connect_timeout
            )));
        }
    };
    match reply {
        Control::Welcome(welcome) => Ok(Connection {
            session,
            welcome,
            send,
            recv,
        }),
        Control::Refused(refusal) => {
            session.close(CloseCode::Refused, "refusal received");
            if refusal.code.is_transient() {
                Err(Attempt::Retry(format!("server busy: {}", refusal.message)))
            } else {
                Err(Attempt::Fatal(AgentError::Refused {
                    code: refusal.code,
                    message: refusal.message,
                }))
            }
        }
        other => {
            session.close(CloseCode::ProtocolError, "expected Welcome");
            Err(Attempt::Retry(format!(
                "server sent {} instead of Welcome",
                control::kind(&other)
            )))
        }
    }
}

/// Serves one session until it ends; returns why. `went_away` is set when
/// the server says GoAway, so the slot can connect anew while this drains.
pub(super) async fn serve(
    dispatch: Arc<Dispatch>,
    status: &watch::Sender<AgentStatus>,
    conn: Connection,
    mut leave: Leave,
    drain_grace: Duration,
    went_away: watch::Sender<bool>,
) -> String {
    let Connection {
        session,
        welcome,
        send,
        recv,
    } = conn;
    let span = tracing::info_span!("conn", conn = %welcome.tunnel_ws_id);
    async move {
        info!(
            transport = %session.kind(),
            node = %welcome.node_id,
            server = %session.remote_addr(),
            "connected"
        );
        dispatch.metrics.established(session.kind().as_str());
        status.send_replace(AgentStatus::Connected {
            tunnel_ws_id: welcome.tunnel_ws_id.clone(),
            node_id: welcome.node_id.clone(),
            transport: session.kind().to_string(),
        });
        let in_flight = Arc::new(AtomicUsize::new(0));
        let credit = Arc::new(CreditBook::default());
        // Streams accepted so far: a drain waits until none has come for a while.
        let accepted = AtomicUsize::new(0);
        let max_head = welcome.limits.max_head_frame as usize;
        let accept = async {
            while let Some((send, recv)) = session.accept().await {
                accepted.fetch_add(1, Ordering::AcqRel);
                let dispatch = dispatch.clone();
                let credit = credit.clone();
                let guard = InFlight::enter(&in_flight);
                // Boxed: a stream's future is a few KiB, and spawning moves
                // it through several frames (a copy each) where a box moves
                // a pointer.
                tokio::spawn(Box::pin(
                    async move {
                        let _guard = guard;
                        dispatch.serve_stream(send, recv, max_head, &credit).await
                    }
                    .in_current_span(),
                ));
            }
        };
        let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms.max(100)));
        let server_leaving = tokio::sync::Notify::new();
        let mut leave_signal = leave.clone();
        let leaving = async move {
            let _ = leave_signal.wait_for(Option::is_some).await;
        };
        let on_goaway = |reason: String| {
            info!("server going away: {reason}; requests in flight finish here, new ones go to a new connection");
            server_leaving.notify_one();
            went_away.send_replace(true);
        };
        // Leaving (ours or the server's): wait for requests in flight, bounded.
        let drain = async {
            let limit = tokio::select! {
                limit = leave.wait_for(Option::is_some) => limit.ok().and_then(|l| *l).unwrap_or(drain_grace),
                _ = server_leaving.notified() => drain_grace,
            };
            let deadline = Instant::now() + limit;
            // Done when nothing is in flight and no stream has arrived for
            // DRAIN_QUIET: a request the server sent just before it saw (or
            // sent) the GoAway is still on its way, and closing now would
            // fail it.
            let (mut seen, mut quiet_since) = (accepted.load(Ordering::Acquire), Instant::now());
            while Instant::now() < deadline {
                let now = accepted.load(Ordering::Acquire);
                if now != seen {
                    (seen, quiet_since) = (now, Instant::now());
                }
                if in_flight.load(Ordering::Acquire) == 0 && quiet_since.elapsed() >= DRAIN_QUIET {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // The agent does not probe the server between heartbeats.
        let liveness = control::Liveness::new(session.clone());
        let (code, end) = tokio::select! {
            end = control::keepalive(send, recv, heartbeat, &liveness, leaving, on_goaway, control::Extras {
                credit_out: None,
                credit_in: Some(Box::new({
                    let credit = credit.clone();
                    move |request_id, offset| credit.grant(request_id, offset)
                })),
            }) => {
                let code = match end {
                    ControlEnd::PeerSilent(_) => CloseCode::Timeout,
                    ControlEnd::ProtocolError(_) => CloseCode::ProtocolError,
                    ControlEnd::Lost(_) => CloseCode::Normal,
                };
                (code, format!("connection lost: {end}"))
            }
            _ = accept => (CloseCode::Normal, format!("connection lost: {}", session.closed().await)),
            _ = drain => (CloseCode::Normal, "left in order".to_string()),
        };
        session.close(code, &end);
        info!("disconnected: {end}");
        end
    }
    .instrument(span)
    .await
}

/// How long a draining connection must go without a new stream before it
/// closes: a stream opened just before the GoAway arrives within a round
/// trip, and 200 ms covers round trips well past any path we expect.
const DRAIN_QUIET: Duration = Duration::from_millis(200);

struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
