//! What an agent is told: the servers to dial, its identity, the local
//! service, trust, transport choice and timings, with the one set of defaults
//! (the CLI reads its defaults from [`AgentConfig::new`]).

use std::time::Duration;

use warren_proto::RefusalCode;

use super::{
    rooms,
    upstream::{UpstreamConfig, UpstreamError},
};
use crate::{
    auth::Secret,
    tls::{TlsError, Trust},
    transport::TransportTuning,
};

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
    /// The agent's token (prints as a placeholder).
    pub token: Secret,
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
    /// When the server says GoAway (it is shutting down) or this agent stops:
    /// how long requests in flight may take to finish on the old connection.
    pub drain_grace: Duration,
    /// Where room events go, if this agent hosts rooms.
    pub rooms: Option<rooms::RoomsBackend>,
    /// Rooms require the client's first message as credentials, and the
    /// backend's accept or refuse, before a member is in.
    pub rooms_auth: bool,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`): off unless set.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// An in-process service answering instead of `upstream.url` (an
    /// embedded agent; see `Agent::builder`).
    pub service: Option<super::local::LocalService>,
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
                ws: crate::websocket::WsLimits::default(),
                // 5 min: the server's own default for response bodies.
                body_idle_timeout: Duration::from_secs(300),
                max_idle: super::upstream::DEFAULT_MAX_IDLE,
                ca: None,
                http2: false,
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
            // 30 s: the server's own default drain grace.
            drain_grace: Duration::from_secs(30),
            rooms: None,
            rooms_auth: false,
            admin_listen: None,
            service: None,
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
    #[error("cannot listen for the admin API on {addr}: {source}")]
    AdminBind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The host part of `HOST:PORT` (brackets removed from IPv6 literals).
pub(super) fn server_host(server: &str) -> Result<&str, AgentError> {
    let bad = || AgentError::BadServer(server.to_string());
    let (host, port) = server.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_hosts() {
        assert_eq!(server_host("example.com:7443").unwrap(), "example.com");
        assert_eq!(server_host("[::1]:7443").unwrap(), "::1");
        assert!(server_host("example.com").is_err());
        assert!(server_host(":7443").is_err());
    }
}
