//! Dialing the server: every address of every `--server` (rotated per slot so
//! an agent's connections land on different nodes), one transport or the
//! happy-eyeballs race between QUIC and WebSocket, and the single QUIC dial of
//! the background re-probe. Ends at an established session; Hello is `session`'s.

use std::net::SocketAddr;

use tokio::time::Instant;
use tracing::info;

use super::config::{server_host, AgentConfig, TransportChoice};
use crate::transport::{self, Dial, Session, TransportError, TransportKind};

/// One address to dial, and the `--server` it came from (for TLS name and Host).
#[derive(Clone)]
pub(super) struct Endpoint {
    server: String,
    pub addr: SocketAddr,
}

pub(super) struct Dialer<'a> {
    pub config: &'a AgentConfig,
    pub tls: &'a rustls::ClientConfig,
}

impl Dialer<'_> {
    /// Every address of every `--server`, rotated so that slot `i` prefers the
    /// `i`-th: with several nodes, an agent's connections land on different ones.
    pub async fn endpoints(&self, slot: usize) -> Result<Vec<Endpoint>, String> {
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

    /// One attempt: the endpoints in order until one completes a transport
    /// handshake (racing transports in `auto`). Returns the session and why
    /// its transport was chosen.
    pub async fn connect(&self, slot: usize) -> Result<(Session, String), String> {
        let mut last_error = String::new();
        for endpoint in self.endpoints(slot).await? {
            let dialled = match self.config.transport {
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
                    return Ok((session, note));
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// The background re-probe: one QUIC dial to the slot's preferred node.
    pub async fn probe_quic(&self, slot: usize) -> Result<Session, String> {
        let endpoints = self.endpoints(slot).await?;
        let endpoint = endpoints.first().ok_or("no address to probe")?;
        self.dial(TransportKind::Quic, endpoint)
            .await
            .map_err(|e| e.to_string())
    }

    async fn dial(
        &self,
        kind: TransportKind,
        endpoint: &Endpoint,
    ) -> Result<Session, TransportError> {
        let config = self.config;
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
}
