//! The agent: dials out to the server, introduces itself (Hello), then serves
//! every stream the server opens by forwarding it to the local service. Lost
//! connections are retried with exponential backoff and jitter; a refusal that
//! retrying cannot fix (wrong token, unknown client id) ends the agent with an
//! error.

pub mod rooms;
mod upstream;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn, Instrument};
use warren_proto::{
    CloseCode, Control, Hello, RefusalCode, Welcome, MAX_CONTROL_FRAME, PROTOCOL_VERSION,
};

use crate::{
    control::{self, ControlEnd},
    shutdown::Shutdown,
    tls::{self, TlsError, Trust},
    transport::{
        self, Dial, RecvStream, SendStream, Session, TransportError, TransportKind, TransportTuning,
    },
};
pub use upstream::{Upstream, UpstreamConfig, UpstreamError};

/// Which transport the agent may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// QUIC, falling back to WebSocket when UDP is blocked.
    Auto,
    Quic,
    Ws,
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `HOST:PORT` of the server's tunnel port; several for a cluster (every
    /// address each resolves to counts as a node to try).
    pub servers: Vec<String>,
    /// Connections to keep at once, each preferring a different node.
    pub connections: usize,
    /// TLS server name to verify; defaults to the host part of `server`.
    pub server_name: Option<String>,
    pub client_id: String,
    pub token: String,
    pub upstream: UpstreamConfig,
    pub transport: TransportChoice,
    pub trust: Trust,
    pub tuning: TransportTuning,
    /// Time allowed for the handshake and the server's Welcome.
    pub connect_timeout: Duration,
    /// Reconnect delays: doubling from `backoff_min` up to `backoff_max`, jittered.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// In `auto`, how long QUIC runs alone before WebSocket joins the race.
    pub ws_head_start: Duration,
    /// While on WebSocket in `auto`: how often to try QUIC again (jittered ±20%).
    pub quic_probe_interval: Duration,
    /// After moving to QUIC, how long requests in flight on WebSocket may take
    /// to finish before it closes (long downloads and streams keep going).
    pub migrate_drain: Duration,
    /// Where room events go, if this agent hosts rooms.
    pub rooms: Option<rooms::RoomsBackend>,
    /// Rooms require the client's first message as credentials, and the
    /// backend's accept or refuse, before a member is in.
    pub rooms_auth: bool,
}

impl AgentConfig {
    pub fn new(server: &str, client_id: &str, token: &str, upstream: &str, trust: Trust) -> Self {
        AgentConfig {
            servers: vec![server.into()],
            connections: 1,
            server_name: None,
            client_id: client_id.into(),
            token: token.into(),
            upstream: UpstreamConfig {
                url: upstream.into(),
                connect_timeout: Duration::from_secs(5),
                response_timeout: Duration::from_secs(60),
                preserve_host: false,
            },
            transport: TransportChoice::Auto,
            trust,
            tuning: TransportTuning::default(),
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            // 250 ms: QUIC wins whenever UDP works (a handshake takes one RTT),
            // and a UDP-blocked network costs only this much.
            ws_head_start: Duration::from_millis(250),
            // 60 s: cheap (one handshake), quick enough that a network that
            // unblocks UDP is noticed within a minute.
            quic_probe_interval: Duration::from_secs(60),
            migrate_drain: Duration::from_secs(600),
            rooms: None,
            rooms_auth: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the server refused this agent ({code:?}): {message}")]
    Refused { code: RefusalCode, message: String },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("--server {0:?} must be HOST:PORT (one or more)")]
    BadServer(String),
}

/// What the agent is doing, for callers that want to wait on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStatus {
    Connecting,
    Connected {
        tunnel_ws_id: String,
        node_id: String,
        transport: String,
    },
    Disconnected {
        reason: String,
    },
}

pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    config: AgentConfig,
    tls: rustls::ClientConfig,
    upstream: Arc<Upstream>,
    /// One status per connection slot (`--connections`).
    status: Vec<watch::Sender<AgentStatus>>,
}

/// A failed connection attempt: retry, or give up.
enum Attempt {
    Retry(String),
    Fatal(AgentError),
}

/// A welcomed connection, ready to serve.
struct Connection {
    session: Session,
    welcome: Welcome,
    send: SendStream,
    recv: RecvStream,
}

/// One address to dial, and the `--server` it came from (for TLS name and Host).
#[derive(Clone)]
struct Endpoint {
    server: String,
    addr: SocketAddr,
}

/// Tells a session's serving task to leave: say GoAway, let requests in flight
/// finish for at most the given time, then close.
type Leave = watch::Receiver<Option<Duration>>;

impl Agent {
    pub fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        if config.servers.is_empty() {
            return Err(AgentError::BadServer(String::new()));
        }
        for server in &config.servers {
            server_host(server)?;
        }
        let tls = tls::client_config(&config.trust)?;
        let mut upstream = Upstream::new(config.upstream.clone())?;
        if let Some(backend) = &config.rooms {
            upstream.set_rooms(rooms::Rooms::new(backend.clone()));
        }
        let upstream = Arc::new(upstream);
        let slots = config.connections.max(1);
        Ok(Agent {
            inner: Arc::new(Inner {
                config,
                tls,
                upstream,
                status: (0..slots)
                    .map(|_| watch::channel(AgentStatus::Connecting).0)
                    .collect(),
            }),
        })
    }

    /// Watch the status of the first connection.
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.inner.status[0].subscribe()
    }

    /// Watch the status of connection `slot` (0-based, below `connections`).
    pub fn slot_status(&self, slot: usize) -> Option<watch::Receiver<AgentStatus>> {
        self.inner.status.get(slot).map(|s| s.subscribe())
    }

    /// Connects and serves until `shutdown` fires (`Ok`) or the server refuses
    /// the agent for good (`Err`).
    pub async fn run(self, shutdown: Shutdown) -> Result<(), AgentError> {
        let span = tracing::info_span!("agent", client_id = %self.inner.config.client_id);
        async move {
            let mut slots = tokio::task::JoinSet::new();
            for slot in 0..self.inner.status.len() {
                let inner = self.inner.clone();
                let shutdown = shutdown.clone();
                slots.spawn(
                    async move {
                        // Staggered starts: the connections of one agent (and
                        // agents restarted together) do not dial in lockstep.
                        if slot > 0 {
                            let stagger =
                                STAGGER.mul_f64(slot as f64 * (0.5 + rand::random::<f64>()));
                            tokio::time::sleep(stagger).await;
                        }
                        inner.run_slot(slot, shutdown).await
                    }
                    .in_current_span(),
                );
            }
            while let Some(done) = slots.join_next().await {
                if let Ok(Err(e)) = done {
                    return Err(e);
                }
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}

/// Hello capability: this agent's rooms want first-message authentication.
pub const ROOMS_AUTH: &str = "rooms-auth";

/// Delay between the starts of an agent's connection slots (jittered).
const STAGGER: Duration = Duration::from_millis(300);

impl Inner {
    async fn run_slot(
        self: Arc<Self>,
        slot: usize,
        mut shutdown: Shutdown,
    ) -> Result<(), AgentError> {
        let config = &self.config;
        let status = &self.status[slot];
        let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
        let mut previous: Option<String> = None;
        loop {
            status.send_replace(AgentStatus::Connecting);
            let attempt = tokio::select! {
                attempt = self.connect(slot, previous.clone()) => attempt,
                _ = shutdown.wait() => return Ok(()),
            };
            let reason = match attempt {
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(reason)) => reason,
                Ok(mut conn) => loop {
                    previous = Some(conn.welcome.tunnel_ws_id.clone());
                    let started = Instant::now();
                    let probing = conn.session.kind() == TransportKind::Ws
                        && config.transport == TransportChoice::Auto;
                    let (leave, leave_rx) = watch::channel(None);
                    let mut task =
                        tokio::spawn(self.clone().serve(slot, conn, leave_rx).in_current_span());
                    let probe = async {
                        if probing {
                            self.probe_quic(slot).await
                        } else {
                            std::future::pending().await
                        }
                    };
                    tokio::select! {
                        end = &mut task => {
                            // A connection that held for a while resets the backoff;
                            // one dropped at once keeps it growing (no tight loop).
                            if started.elapsed() >= STABLE_AFTER {
                                backoff.reset();
                            }
                            break end.unwrap_or_else(|e| format!("session task failed: {e}"));
                        }
                        upgraded = probe => {
                            info!("QUIC works again: new requests move to it; requests in flight finish on WebSocket");
                            leave.send_replace(Some(config.migrate_drain));
                            // The old session's task drains and closes by itself.
                            conn = upgraded;
                        }
                        _ = shutdown.wait() => {
                            leave.send_replace(Some(DRAIN));
                            let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), task).await;
                            return Ok(());
                        }
                    }
                },
            };
            let delay = backoff.next_delay();
            warn!(slot, "{reason}; reconnecting in {delay:?}");
            status.send_replace(AgentStatus::Disconnected { reason });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait() => return Ok(()),
            }
        }
    }

    /// Every address of every `--server`, rotated so that slot `i` prefers the
    /// `i`-th: with several nodes, an agent's connections land on different ones.
    async fn endpoints(&self, slot: usize) -> Result<Vec<Endpoint>, String> {
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let mut errors = Vec::new();
        for server in &self.config.servers {
            match tokio::net::lookup_host(server).await {
                Ok(addrs) => {
                    for addr in addrs {
                        if !endpoints.iter().any(|e| e.addr == addr) {
                            endpoints.push(Endpoint {
                                server: server.clone(),
                                addr,
                            });
                        }
                    }
                }
                Err(e) => errors.push(format!("cannot resolve {server}: {e}")),
            }
        }
        if endpoints.is_empty() {
            return Err(if errors.is_empty() {
                "the servers resolved to no address".into()
            } else {
                errors.join("; ")
            });
        }
        let n = endpoints.len();
        endpoints.rotate_left(slot % n);
        Ok(endpoints)
    }

    /// One attempt: resolve, handshake (racing transports in `auto`), Hello → Welcome.
    async fn connect(&self, slot: usize, replaces: Option<String>) -> Result<Connection, Attempt> {
        let config = &self.config;
        let mut last_error = String::new();
        for endpoint in self.endpoints(slot).await.map_err(Attempt::Retry)? {
            let dialled = match config.transport {
                TransportChoice::Quic => self
                    .dial(TransportKind::Quic, &endpoint)
                    .await
                    .map(|s| (s, "forced by --transport quic".to_string()))
                    .map_err(|e| e.to_string()),
                TransportChoice::Ws => self
                    .dial(TransportKind::Ws, &endpoint)
                    .await
                    .map(|s| (s, "forced by --transport ws".to_string()))
                    .map_err(|e| e.to_string()),
                TransportChoice::Auto => self.race(&endpoint).await,
            };
            match dialled {
                Ok((session, note)) => {
                    info!(transport = %session.kind(), server = %endpoint.addr, "{note}");
                    return self.hello(session, note, replaces).await;
                }
                Err(e) => last_error = e,
            }
        }
        Err(Attempt::Retry(last_error))
    }

    async fn dial(
        &self,
        kind: TransportKind,
        endpoint: &Endpoint,
    ) -> Result<Session, TransportError> {
        let config = &self.config;
        let host = server_host(&endpoint.server).expect("checked in Agent::new");
        transport::connect(
            kind,
            Dial {
                addr: endpoint.addr,
                server_name: config.server_name.as_deref().unwrap_or(host),
                host: &endpoint.server,
                client_id: &config.client_id,
                tls: self.tls.clone(),
                tuning: &config.tuning,
                timeout: config.connect_timeout,
            },
        )
        .await
    }

    /// Happy eyeballs: QUIC first; WebSocket after a head start (or at once if
    /// QUIC fails sooner); the first handshake to complete wins, the other is
    /// dropped. Returns the session and why it won.
    async fn race(&self, endpoint: &Endpoint) -> Result<(Session, String), String> {
        let started = Instant::now();
        let head_start = self.config.ws_head_start;
        let quic_failed = tokio::sync::Notify::new();
        let quic = async {
            let result = self.dial(TransportKind::Quic, endpoint).await;
            if result.is_err() {
                quic_failed.notify_one();
            }
            result
        };
        let ws = async {
            tokio::select! {
                _ = tokio::time::sleep(head_start) => {}
                _ = quic_failed.notified() => {}
            }
            self.dial(TransportKind::Ws, endpoint).await
        };
        tokio::pin!(quic, ws);
        let (mut quic_err, mut ws_err) = (None, None);
        loop {
            tokio::select! {
                result = &mut quic, if quic_err.is_none() => match result {
                    Ok(session) => {
                        return Ok((session, format!("QUIC handshake completed in {:.0?}", started.elapsed())))
                    }
                    Err(e) => quic_err = Some(e),
                },
                result = &mut ws, if ws_err.is_none() => match result {
                    Ok(session) => {
                        let why = match &quic_err {
                            Some(e) => format!("QUIC failed: {e}"),
                            None => format!(
                                "QUIC had no handshake after {:.0?} (UDP blocked?)",
                                started.elapsed()
                            ),
                        };
                        return Ok((session, format!("WebSocket won the race ({head_start:?} head start); {why}")));
                    }
                    Err(e) => ws_err = Some(e),
                },
            }
            if let (Some(q), Some(w)) = (&quic_err, &ws_err) {
                return Err(format!("QUIC: {q}; WebSocket: {w}"));
            }
        }
    }

    /// While on WebSocket: retries QUIC every `quic_probe_interval` (jittered)
    /// until it is welcomed; never returns otherwise.
    async fn probe_quic(&self, slot: usize) -> Connection {
        let config = &self.config;
        loop {
            let jitter = 0.8 + 0.4 * rand::random::<f64>();
            tokio::time::sleep(config.quic_probe_interval.mul_f64(jitter)).await;
            let Ok(endpoints) = self.endpoints(slot).await else {
                continue;
            };
            // One probe per interval, to the preferred node.
            if let Some(endpoint) = endpoints.first() {
                match self.dial(TransportKind::Quic, endpoint).await {
                    Ok(session) => {
                        let note = "QUIC reachable again (background probe while on WebSocket)";
                        match self.hello(session, note.into(), None).await {
                            Ok(conn) => return conn,
                            Err(Attempt::Retry(e))
                            | Err(Attempt::Fatal(AgentError::Refused { message: e, .. })) => {
                                debug!("QUIC probe refused: {e}")
                            }
                            Err(Attempt::Fatal(e)) => debug!("QUIC probe failed: {e}"),
                        }
                    }
                    Err(e) => debug!("QUIC probe failed: {e}"),
                }
            }
        }
    }

    async fn hello(
        &self,
        session: Session,
        transport_note: String,
        replaces: Option<String>,
    ) -> Result<Connection, Attempt> {
        let config = &self.config;
        let exchange = async {
            let (mut send, mut recv) = session.open().await?;
            let hello = Control::Hello(Hello {
                version: PROTOCOL_VERSION,
                client_id: config.client_id.clone(),
                token: config.token.clone(),
                agent: concat!("warren/", env!("CARGO_PKG_VERSION")).into(),
                capabilities: if config.rooms_auth {
                    vec![ROOMS_AUTH.to_string()]
                } else {
                    Vec::new()
                },
                transport_note,
                replaces,
            });
            send.write_frame(&hello, MAX_CONTROL_FRAME).await?;
            let reply = recv.read_frame::<Control>(MAX_CONTROL_FRAME).await?;
            Ok::<_, TransportError>((send, recv, reply))
        };
        let (send, recv, reply) = match tokio::time::timeout(config.connect_timeout, exchange).await
        {
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
                    "server sent {other:?} instead of Welcome"
                )))
            }
        }
    }

    /// Serves one session until it ends; returns why.
    async fn serve(self: Arc<Self>, slot: usize, conn: Connection, mut leave: Leave) -> String {
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
            self.status[slot].send_replace(AgentStatus::Connected {
                tunnel_ws_id: welcome.tunnel_ws_id.clone(),
                node_id: welcome.node_id.clone(),
                transport: session.kind().to_string(),
            });
            let in_flight = Arc::new(AtomicUsize::new(0));
            let max_head = welcome.limits.max_head_frame as usize;
            let accept = async {
                while let Some((send, recv)) = session.accept().await {
                    let upstream = self.upstream.clone();
                    let guard = InFlight::enter(&in_flight);
                    tokio::spawn(
                        async move {
                            let _guard = guard;
                            upstream.serve_stream(send, recv, max_head).await
                        }
                        .in_current_span(),
                    );
                }
            };
            let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_ms.max(100)));
            let server_leaving = tokio::sync::Notify::new();
            let mut leave_signal = leave.clone();
            let leaving = async move {
                let _ = leave_signal.wait_for(Option::is_some).await;
            };
            let on_goaway = |reason: String| {
                info!("server going away: {reason}");
                server_leaving.notify_one();
            };
            // Leaving (ours or the server's): wait for requests in flight, bounded.
            let drain = async {
                let limit = tokio::select! {
                    limit = leave.wait_for(Option::is_some) => limit.ok().and_then(|l| *l).unwrap_or(DRAIN),
                    _ = server_leaving.notified() => DRAIN,
                };
                let deadline = Instant::now() + limit;
                while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let (code, end) = tokio::select! {
                end = control::keepalive(send, recv, heartbeat, leaving, on_goaway) => {
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
}

/// A connection that lasted this long counts as healthy: the next loss starts
/// the backoff from its minimum again.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Time given to in-flight requests when the agent stops or the server goes
/// away (the server waits 2 s for us).
const DRAIN: Duration = Duration::from_millis(1500);

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

/// The host part of `HOST:PORT` (brackets removed from IPv6 literals).
fn server_host(server: &str) -> Result<&str, AgentError> {
    let bad = || AgentError::BadServer(server.to_string());
    let (host, port) = server.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok(host)
}

/// Exponential backoff with "equal jitter": each delay is half the current
/// step plus a random part of the other half, so agents restarted together
/// spread out instead of reconnecting in lockstep.
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            step: min,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn server_hosts() {
        assert_eq!(server_host("example.com:7443").unwrap(), "example.com");
        assert_eq!(server_host("[::1]:7443").unwrap(), "::1");
        assert!(server_host("example.com").is_err());
        assert!(server_host(":7443").is_err());
    }
}
