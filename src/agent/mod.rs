//! The agent: dials out to the server, introduces itself (Hello), then serves
//! every stream the server opens by forwarding it to the local service. Lost
//! connections are retried with exponential backoff and jitter; a refusal that
//! retrying cannot fix (wrong token, unknown client id) ends the agent with an
//! error.

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
use tracing::{info, warn, Instrument};
use warren_proto::{
    CloseCode, Control, Hello, RefusalCode, Welcome, MAX_CONTROL_FRAME, PROTOCOL_VERSION,
};

use crate::{
    control::{self, ControlEnd},
    shutdown::Shutdown,
    tls::{self, TlsError, Trust},
    transport::{quic, RecvStream, SendStream, Session, TransportError, TransportTuning},
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
    /// `HOST:PORT` of the server's tunnel port.
    pub server: String,
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
}

impl AgentConfig {
    pub fn new(server: &str, client_id: &str, token: &str, upstream: &str, trust: Trust) -> Self {
        AgentConfig {
            server: server.into(),
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
    #[error("--server {0:?} must be HOST:PORT")]
    BadServer(String),
    #[error("{0}")]
    Unsupported(String),
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
    config: AgentConfig,
    tls: rustls::ClientConfig,
    upstream: Arc<Upstream>,
    status: watch::Sender<AgentStatus>,
}

/// A failed connection attempt: retry, or give up.
enum Attempt {
    Retry(String),
    Fatal(AgentError),
}

impl Agent {
    pub fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        if config.transport == TransportChoice::Ws {
            return Err(AgentError::Unsupported(
                "--transport ws is not available in this build yet; use quic or auto".into(),
            ));
        }
        server_host(&config.server)?;
        let tls = tls::client_config(&config.trust)?;
        let upstream = Arc::new(Upstream::new(config.upstream.clone())?);
        Ok(Agent {
            config,
            tls,
            upstream,
            status: watch::channel(AgentStatus::Connecting).0,
        })
    }

    /// Watch the agent's connection status.
    pub fn status(&self) -> watch::Receiver<AgentStatus> {
        self.status.subscribe()
    }

    /// Connects and serves until `shutdown` fires (`Ok`) or the server refuses
    /// the agent for good (`Err`).
    pub async fn run(self, mut shutdown: Shutdown) -> Result<(), AgentError> {
        let span = tracing::info_span!("agent", client_id = %self.config.client_id);
        async move {
            let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
            loop {
                self.status.send_replace(AgentStatus::Connecting);
                let attempt = tokio::select! {
                    attempt = self.connect() => attempt,
                    _ = shutdown.wait() => return Ok(()),
                };
                let reason = match attempt {
                    Ok((session, welcome, send, recv)) => {
                        let started = Instant::now();
                        let end = self
                            .serve(session, welcome, send, recv, shutdown.clone())
                            .await;
                        if matches!(end, ControlEnd::Shutdown) {
                            return Ok(());
                        }
                        // A connection that held for a while resets the backoff;
                        // one dropped at once keeps it growing (no tight loop).
                        if started.elapsed() >= STABLE_AFTER {
                            backoff.reset();
                        }
                        format!("connection lost: {end}")
                    }
                    Err(Attempt::Fatal(e)) => return Err(e),
                    Err(Attempt::Retry(reason)) => reason,
                };
                let delay = backoff.next_delay();
                warn!("{reason}; reconnecting in {delay:?}");
                self.status
                    .send_replace(AgentStatus::Disconnected { reason });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
            }
        }
        .instrument(span)
        .await
    }

    /// One attempt: resolve, handshake, Hello → Welcome.
    async fn connect(&self) -> Result<(Session, Welcome, SendStream, RecvStream), Attempt> {
        let config = &self.config;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&config.server)
            .await
            .map_err(|e| Attempt::Retry(format!("cannot resolve {}: {e}", config.server)))?
            .collect();
        let host = server_host(&config.server).map_err(Attempt::Fatal)?;
        let server_name = config.server_name.as_deref().unwrap_or(host);
        let mut last_error = format!("{} resolved to no address", config.server);
        for addr in addrs {
            let session = match quic::connect(
                addr,
                server_name,
                self.tls.clone(),
                &config.tuning,
                config.connect_timeout,
            )
            .await
            {
                Ok(session) => session,
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            return self.hello(session).await;
        }
        Err(Attempt::Retry(last_error))
    }

    async fn hello(
        &self,
        session: Session,
    ) -> Result<(Session, Welcome, SendStream, RecvStream), Attempt> {
        let config = &self.config;
        let exchange = async {
            let (mut send, mut recv) = session.open().await?;
            let hello = Control::Hello(Hello {
                version: PROTOCOL_VERSION,
                client_id: config.client_id.clone(),
                token: config.token.clone(),
                agent: concat!("warren/", env!("CARGO_PKG_VERSION")).into(),
                capabilities: Vec::new(),
            });
            send.write_frame(&hello, MAX_CONTROL_FRAME).await?;
            let reply = recv.read_frame::<Control>(MAX_CONTROL_FRAME).await?;
            Ok::<_, TransportError>((send, recv, reply))
        };
        let (send, recv, reply) = match tokio::time::timeout(config.connect_timeout, exchange).await
        {
            Ok(Ok(parts)) => parts,
            Ok(Err(e)) => {
                return Err(Attempt::Retry(format!(
                    "handshake with the server failed: {e}"
                )))
            }
            Err(_) => {
                return Err(Attempt::Retry(format!(
                    "the server sent no Welcome within {:?}",
                    config.connect_timeout
                )))
            }
        };
        match reply {
            Control::Welcome(welcome) => Ok((session, welcome, send, recv)),
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

    /// Serves one established session until it ends.
    async fn serve(
        &self,
        session: Session,
        welcome: Welcome,
        send: SendStream,
        recv: RecvStream,
        shutdown: Shutdown,
    ) -> ControlEnd {
        let span = tracing::info_span!("conn", conn = %welcome.tunnel_ws_id);
        async {
            info!(
                transport = %session.kind(),
                node = %welcome.node_id,
                server = %session.remote_addr(),
                "connected"
            );
            self.status.send_replace(AgentStatus::Connected {
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
            let end = tokio::select! {
                end = control::keepalive(send, recv, heartbeat, shutdown) => end,
                _ = accept => ControlEnd::Lost(TransportError::Closed(session.closed().await)),
            };
            if matches!(end, ControlEnd::Shutdown | ControlEnd::GoAway(_)) {
                // Orderly parting: let requests in flight finish (bounded).
                let deadline = Instant::now() + DRAIN;
                while in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let code = match end {
                ControlEnd::PeerSilent(_) => CloseCode::Timeout,
                ControlEnd::ProtocolError(_) => CloseCode::ProtocolError,
                _ => CloseCode::Normal,
            };
            session.close(code, &end.to_string());
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

/// Time given to in-flight requests when the connection is closed in order.
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
