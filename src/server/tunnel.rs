//! The tunnel side: accepts agent connections, checks their Hello, records them
//! in the registry and the agent table, and keeps them alive until they go.

use std::{sync::Arc, time::Duration};

use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tracing::{debug, info, warn, Instrument};
use warren_proto::{
    CloseCode, Control, Hello, Limits, Refusal, RefusalCode, Welcome, MAX_CONTROL_FRAME,
    PROTOCOL_VERSION,
};

use super::{
    agents::{AgentLink, TableFull},
    credit,
    state::Shared,
};
use crate::{
    auth::{self, Verdict},
    control,
    registry::{now_ms, ConnectionRecord},
    shutdown::Shutdown,
    transport::{Listener, RecvStream, SendStream, Session},
};

/// How long a refused agent gets to read the refusal before we close.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// How long a shutting-down server, its clients drained, waits for an agent
/// to close (it was told GoAway when the shutdown began).
pub(super) const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

pub(super) async fn accept_agents(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    mut shutdown: Shutdown,
    done: tokio::sync::mpsc::Sender<()>,
) {
    loop {
        let incoming = tokio::select! {
            incoming = listener.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            _ = shutdown.wait() => break,
        };
        let remote = incoming.remote_addr();
        // Turned away before any handshake work: too many peers mid-
        // handshake for too long, or an address that keeps failing to
        // authenticate. While this waits for a place, nothing else is
        // accepted: later peers queue in the backlog, not in memory here.
        let permit = match shared.gate.admit(remote.ip()).await {
            Ok(permit) => permit,
            Err(why) => {
                debug!(%remote, ?why, "agent peer turned away at the gate");
                incoming.refuse();
                continue;
            }
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let done = done.clone();
        tokio::spawn(
            async move {
                let _done = done;
                // One deadline for the transport handshake and the Hello: a
                // peer that completes TLS and then says nothing is cut off
                // as surely as one that never finishes the handshake.
                let timeout = shared.config.handshake_timeout;
                let deadline = Instant::now() + timeout;
                // The handshake's futures are boxed (here and in
                // serve_agent): a task is as large as its largest state, and
                // this one lives as long as the connection, mostly waiting
                // on its heartbeat (9 KiB a connection before).
                match tokio::time::timeout_at(deadline, Box::pin(incoming.establish())).await {
                    Ok(Ok(session)) => {
                        serve_agent(shared, session, deadline, permit, shutdown).await
                    }
                    // Per attempt at debug: unauthenticated peers can send
                    // these at will (the gate summarises refusals).
                    Ok(Err(e)) => debug!("agent handshake failed: {e}"),
                    Err(_) => debug!("agent handshake timed out after {timeout:?}"),
                }
            }
            .instrument(tracing::info_span!("agent", %remote)),
        );
    }
}

/// Runs one agent connection from Hello to goodbye.
async fn serve_agent(
    shared: Arc<Shared>,
    session: Session,
    deadline: Instant,
    pending: OwnedSemaphorePermit,
    shutdown: Shutdown,
) {
    let (mut send, recv, hello) =
        match tokio::time::timeout_at(deadline, Box::pin(read_hello(&session))).await {
            Ok(Ok(parts)) => parts,
            Ok(Err(HelloError::Protocol(why))) => {
                debug!("agent rejected before Hello: {why}");
                session.close(CloseCode::ProtocolError, &why);
                return;
            }
            Ok(Err(HelloError::Version { mut send, version })) => {
                info!("agent of protocol version {version} refused");
                shared.metrics.refused("unsupported_version");
                refuse(&session, &mut send, Refusal::unsupported_version(version)).await;
                return;
            }
            Err(_) => {
                let timeout = shared.config.handshake_timeout;
                debug!("no Hello within {timeout:?} of connecting");
                session.close(CloseCode::Timeout, "no Hello in time");
                return;
            }
        };
    let client_id = hello.client_id.clone();
    let span = tracing::info_span!("client", client_id = %client_id);
    async move {
        // Bounded below the agent's own wait for Welcome, so a registry
        // outage reaches the agent as a refusal in words, not a timeout.
        let wait = shared.config.registry_timeout;
        let record =
            match tokio::time::timeout(wait, Box::pin(admit(&shared, &session, &hello))).await {
                Ok(record) => record,
                Err(_) => {
                    warn!("registry did not answer within {wait:?} while admitting an agent");
                    Err(Refusal {
                        code: RefusalCode::Internal,
                        message: "server cannot reach its registry; retry later".into(),
                    })
                }
            };
        // Authenticated (or not): the peer no longer holds a pending place.
        drop(pending);
        let record = match record {
            Ok(record) => record,
            Err(refusal) => {
                shared.metrics.refused(refusal_reason(refusal.code));
                if refusal.code.is_transient() {
                    info!(code = ?refusal.code, "agent refused: {}", refusal.message);
                } else {
                    // Wrong token or unknown id: spends the address's budget,
                    // and is summarised by the gate rather than logged each time.
                    shared.gate.failed(session.remote_addr().ip());
                    debug!(code = ?refusal.code, "agent refused: {}", refusal.message);
                }
                refuse(&session, &mut send, refusal).await;
                return;
            }
        };
        let span = tracing::info_span!("conn", conn = %record.tunnel_ws_id);
        let says = |name: &str| hello.capabilities.iter().any(|c| c == name);
        let rooms_auth = says(warren_proto::capability::ROOMS_AUTH);
        let wants_addresses = says(warren_proto::capability::ADDRESSES);
        let trailers = says(warren_proto::capability::TRAILERS);
        // Credit only matters where one window is shared by all streams:
        // over WebSocket, yamux gives each stream a window of its own.
        let credit = (says(warren_proto::capability::CREDIT)
            && session.kind() == crate::transport::TransportKind::Quic)
            .then(|| credit::Ledger::start(session.clone()));
        run_admitted(
            shared,
            session,
            send,
            recv,
            record,
            rooms_auth,
            credit,
            Wants {
                addresses: wants_addresses,
                trailers,
            },
            shutdown,
        )
        .instrument(span)
        .await
    }
    .instrument(span)
    .await
}

/// A refusal's label in the metrics (a fixed set of values).
fn refusal_reason(code: RefusalCode) -> &'static str {
    match code {
        RefusalCode::BadToken => "bad_token",
        RefusalCode::UnknownClient => "unknown_client",
        RefusalCode::TooManyConnections => "too_many_connections",
        RefusalCode::UnsupportedVersion => "unsupported_version",
        RefusalCode::ShuttingDown => "shutting_down",
        RefusalCode::Internal => "internal",
    }
}

/// Why no Hello could be read.
enum HelloError {
    /// Not a warren agent, or a broken one: close with a protocol error.
    Protocol(String),
    /// An agent speaking another protocol version: refuse it in words it can
    /// decode (`Refused` is the same in every version).
    Version { send: SendStream, version: u16 },
}

/// Accepts the control stream and reads the Hello, checking its version
/// before decoding the rest (other versions lay out Hello differently).
async fn read_hello(session: &Session) -> Result<(SendStream, RecvStream, Hello), HelloError> {
    let (send, mut recv) = session.accept().await.ok_or_else(|| {
        HelloError::Protocol("connection closed before the control stream opened".into())
    })?;
    recv.small_reads(control::CONTROL_READ);
    let payload = recv
        .read_payload(MAX_CONTROL_FRAME)
        .await
        .map_err(|e| HelloError::Protocol(format!("unreadable Hello: {e}")))?;
    match warren_proto::peek_hello_version(&payload) {
        Some(PROTOCOL_VERSION) => {}
        Some(version) => return Err(HelloError::Version { send, version }),
        None => {
            return Err(HelloError::Protocol(
                "the first message was not a Hello".into(),
            ))
        }
    }
    match warren_proto::decode_payload::<Control>(&payload) {
        Ok(Control::Hello(hello)) => Ok((send, recv, hello)),
        Ok(_) => Err(HelloError::Protocol(
            "the first message was not a Hello".into(),
        )),
        Err(e) => Err(HelloError::Protocol(format!("unreadable Hello: {e}"))),
    }
}

/// Sends a refusal, lets the agent read it (briefly), then closes.
async fn refuse(session: &Session, send: &mut SendStream, refusal: Refusal) {
    let _ = send
        .write_frame(&Control::Refused(refusal), MAX_CONTROL_FRAME)
        .await;
    let _ = send.finish().await;
    let _ = tokio::time::timeout(REFUSAL_LINGER, session.closed()).await;
    session.close(CloseCode::Refused, "refused");
}

/// A new connection for a client id that already has some is often the same
/// agent restarted: ask the older ones whether they are still there, so a
/// killed agent's connection stops taking requests at once. One sweep per
/// client id at a time, each holding its turn for `probe_timeout`; arrivals
/// meanwhile get one more sweep after it, which covers them all.
fn sweep_older(shared: &Arc<Shared>, client_id: &str) {
    if !shared.agents.claim_sweep(client_id) {
        return;
    }
    let shared = shared.clone();
    let client_id = client_id.to_string();
    let sweep = async move {
        let within = shared.config.probe_timeout;
        loop {
            let started = Instant::now();
            let mut links = shared.agents.links_of(&client_id);
            // The newest is the one that asked; it has just said Hello.
            links.pop();
            futures_util::future::join_all(links.iter().map(|l| l.check(within))).await;
            tokio::time::sleep_until(started + within).await;
            if !shared.agents.end_sweep(&client_id) {
                break;
            }
        }
    };
    tokio::spawn(sweep.in_current_span());
}

/// Checks the Hello and records the connection; returns its `tunnel_ws_id`.
async fn admit(
    shared: &Shared,
    session: &Session,
    hello: &Hello,
) -> Result<ConnectionRecord, Refusal> {
    let refuse = |code, message: String| Refusal { code, message };
    if let Err(why) = auth::check_client_id(&hello.client_id) {
        return Err(refuse(RefusalCode::UnknownClient, why));
    }
    match auth::verify_token(&shared.registry, &hello.client_id, &hello.token).await {
        Ok(Verdict::Accepted) => {}
        Ok(Verdict::BadToken) => {
            return Err(refuse(
                RefusalCode::BadToken,
                format!(
                    "wrong token for client id {:?}; issue a new one with `warren token issue {}`",
                    hello.client_id, hello.client_id
                ),
            ))
        }
        Ok(Verdict::UnknownClient) => {
            return Err(refuse(
                RefusalCode::UnknownClient,
                format!(
                    "no token was ever issued for client id {:?}, or it was revoked; run `warren token issue {}` on the server",
                    hello.client_id, hello.client_id
                ),
            ))
        }
        Err(e) => {
            warn!("registry unavailable while checking a token: {e}");
            return Err(refuse(
                RefusalCode::Internal,
                "server cannot reach its registry; retry later".into(),
            ));
        }
    }
    let record = ConnectionRecord {
        tunnel_ws_id: new_tunnel_ws_id(),
        client_id: hello.client_id.clone(),
        node_id: shared.config.node_id.clone(),
        transport: session.kind().to_string(),
        remote_addr: session.remote_addr().to_string(),
        connected_at_ms: now_ms(),
        transport_note: hello.transport_note.clone(),
    };
    // A reconnecting agent names its previous connection: swap the rows in one
    // transaction, wherever the old one was recorded.
    let recorded = match &hello.replaces {
        Some(old) => shared.registry.replace_connection(old, &record).await,
        None => shared.registry.upsert_connection(&record).await,
    };
    if let Err(e) = recorded {
        warn!("registry unavailable while recording a connection: {e}");
        return Err(refuse(
            RefusalCode::Internal,
            "server cannot reach its registry; retry later".into(),
        ));
    }
    Ok(record)
}

/// Optional features the agent's Hello asked for (besides credit and rooms).
struct Wants {
    /// `Addresses` after `Welcome`.
    addresses: bool,
    /// `Open::HttpWithTrailers` for requests that can carry trailers.
    trailers: bool,
}

#[allow(clippy::too_many_arguments)]
async fn run_admitted(
    shared: Arc<Shared>,
    session: Session,
    mut send: SendStream,
    recv: RecvStream,
    record: ConnectionRecord,
    rooms_auth: bool,
    credit: Option<Arc<credit::Ledger>>,
    wants: Wants,
    shutdown: Shutdown,
) {
    let client_id = record.client_id.clone();
    let tunnel_ws_id = record.tunnel_ws_id.clone();
    let link = Arc::new(AgentLink {
        client_id: client_id.clone(),
        tunnel_ws_id: tunnel_ws_id.clone(),
        session: session.clone(),
        record,
        rooms_auth,
        liveness: control::Liveness::new(session.clone()),
        suspect_at: Default::default(),
        credit,
        traffic: Default::default(),
        trailers: wants.trailers,
        trailers_dropped: Default::default(),
        span: tracing::Span::current(),
    });
    let liveness = link.liveness.clone();
    let link_credit = link.credit.as_ref().map(|c| c.outbox.clone());
    let refusal = match shared.agents.insert(link) {
        Ok(()) => {
            shared
                .admitted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shared.metrics.admitted();
            None
        }
        Err(TableFull::Node(n)) => Some(format!("this node already holds {n} agent connections")),
        Err(TableFull::Client(n)) => Some(format!(
            "client id {client_id:?} already has {n} connections (the per-client limit)"
        )),
    };
    if let Some(message) = refusal {
        shared.metrics.refused("too_many_connections");
        let _ = shared.registry.remove_connection(&tunnel_ws_id).await;
        info!("agent refused: {message}");
        let refusal = Refusal {
            code: RefusalCode::TooManyConnections,
            message,
        };
        refuse(&session, &mut send, refusal).await;
        return;
    }
    let config = &shared.config;
    let welcome = Welcome {
        tunnel_ws_id: tunnel_ws_id.clone(),
        node_id: config.node_id.clone(),
        heartbeat_ms: config.heartbeat.as_millis().min(u32::MAX as u128) as u32,
        limits: Limits {
            max_head_frame: config.max_head_frame as u32,
            max_streams: config.tuning.max_streams,
        },
    };
    if let Err(e) = send
        .write_frame(&Control::Welcome(welcome), MAX_CONTROL_FRAME)
        .await
    {
        info!("agent lost before Welcome: {e}");
        shared.agents.remove(&client_id, &tunnel_ws_id);
        session.close(CloseCode::Normal, "lost");
        let _ = shared.registry.remove_connection(&tunnel_ws_id).await;
        return;
    }
    let urls = shared.addresses(&client_id);
    if wants.addresses && !urls.is_empty() {
        // Told once; a connection that cannot take it is found by the heartbeat.
        let _ = send
            .write_frame(&Control::Addresses { urls }, MAX_CONTROL_FRAME)
            .await;
    }
    info!(transport = %session.kind(), remote = %session.remote_addr(), "agent connected");
    sweep_older(&shared, &client_id);
    let mut stopping = shutdown.clone();
    let leave = async move { stopping.wait().await };
    let on_goaway = |reason: String| {
        // The agent is moving away (new transport, or stopping): route no new
        // requests here; those in flight finish before it closes.
        info!("agent going away: {reason}");
        shared.agents.remove(&client_id, &tunnel_ws_id);
    };
    let extras = control::Extras {
        credit_out: link_credit,
        credit_in: None,
    };
    let mut drained = shutdown.clone();
    let mut clients_drained = shared.clients_drained.subscribe();
    let end = tokio::select! {
        end = control::keepalive(send, recv, config.heartbeat, &liveness, leave, on_goaway, extras) => end.to_string(),
        // Server shutdown: GoAway went out at once; the connection stays up
        // until the client API's requests in flight are done, then the agent
        // gets a moment to close first.
        _ = async move {
            drained.wait().await;
            let _ = clients_drained.wait_for(|done| *done).await;
            tokio::time::sleep(SHUTDOWN_DRAIN).await
        } => {
            "server shutting down".to_string()
        }
    };
    shared.agents.remove(&client_id, &tunnel_ws_id);
    session.close(CloseCode::Normal, &end);
    if let Err(e) = shared.registry.remove_connection(&tunnel_ws_id).await {
        warn!("could not remove the connection row: {e}");
    }
    info!("agent disconnected: {end}");
}

/// A random 128-bit id in UUID text form.
fn new_tunnel_ws_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
