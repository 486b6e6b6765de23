//! The agent: dials out to the server, introduces itself (Hello), then serves
//! every stream the server opens by forwarding it to the local service. Lost
//! connections are retried with exponential backoff and jitter; a refusal that
//! retrying cannot fix (wrong token, unknown client id) ends the agent with an
//! error.

//!
//! Inside: `config` (what it is told), `slot` (one kept connection per
//! `--connections`: the reconnect loop, the QUIC re-probe), `dial` (addresses,
//! transports, the race), `session` (Hello, serve, drain), `dispatch` (where
//! each opened stream goes: `upstream` for HTTP and WebSockets, over `pool`'s
//! keep-alive connections; `rooms`), `backoff`, `status`.

mod admin;
mod backoff;
mod config;
mod credit;
mod dial;
mod dispatch;
mod local;
mod metrics;
mod passthrough;
mod pool;
pub mod rooms;
mod session;
mod slot;
mod status;
mod upstream;

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::Instrument;

use crate::{shutdown::Shutdown, tls};
pub use backoff::Backoff;
pub use config::{AgentConfig, AgentError, TransportChoice};
pub use local::{BoxError, LocalService, ServiceResponse};
pub use status::AgentStatus;
pub use upstream::{UpstreamConfig, UpstreamError};

pub struct Agent {
    inner: Arc<slot::Slots>,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        if config.servers.is_empty() {
            return Err(AgentError::BadServer(String::new()));
        }
        for server in &config.servers {
            config::server_host(server)?;
        }
        let tls = tls::client_config(&config.trust)?;
        let metrics = Arc::new(metrics::AgentMetrics::new());
        let dispatch = Arc::new(dispatch::Dispatch {
            upstream: upstream::Upstream::new(
                config.upstream.clone(),
                metrics.clone(),
                config.service.clone(),
            )?,
            metrics,
            rooms: config
                .rooms
                .clone()
                .map(|backend| rooms::Rooms::new(backend, config.upstream.ws.clone())),
        });
        let slots = config.connections.max(1);
        Ok(Agent {
            inner: Arc::new(slot::Slots {
                config,
                tls,
                dispatch,
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
            if let Some(addr) = self.inner.config.admin_listen {
                let listener = crate::admin::bind(addr)
                    .map_err(|source| AgentError::AdminBind { addr, source })?;
                let service = Arc::new(admin::AgentAdmin(self.inner.clone()));
                tokio::spawn(crate::admin::serve(listener, service, shutdown.clone()));
            }
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

/// An agent made in code, for a program that embeds it:
///
/// ```no_run
/// # async fn run(token: String) -> Result<(), warren::agent::AgentError> {
/// use warren::agent::{Agent, LocalService};
/// let service = LocalService::from_fn(|req| async move {
///     http::Response::new(http_body_util::Full::new(bytes::Bytes::from(format!("you asked for {}", req.uri()))))
/// });
/// let agent = Agent::builder()
///     .server("tunnel.example.com:7443")
///     .client_id("music-box")
///     .token(&token)
///     .serve(service)?;
/// let (_stop, shutdown) = warren::shutdown::channel();
/// agent.run(shutdown).await
/// # }
/// ```
///
/// The same reconnects, transport race and fallback, backpressure and
/// shutdown as the `warren agent` binary; everything else as
/// [`AgentConfig`]'s defaults unless [`AgentBuilder::configure`] says.
pub struct AgentBuilder {
    config: AgentConfig,
}

impl Agent {
    pub fn builder() -> AgentBuilder {
        AgentBuilder {
            // No HTTP upstream: `serve` gives the service, `upstream` a URL.
            config: AgentConfig::new("", "", "", "http://in-process.invalid", tls::Trust::System),
        }
    }
}

impl AgentBuilder {
    /// The server's tunnel address, `HOST:PORT`; call again for each node
    /// of a cluster.
    pub fn server(mut self, server: &str) -> Self {
        self.config.servers.retain(|s| !s.is_empty());
        self.config.servers.push(server.to_string());
        self
    }

    pub fn client_id(mut self, client_id: &str) -> Self {
        self.config.client_id = client_id.to_string();
        self
    }

    pub fn token(mut self, token: &str) -> Self {
        self.config.token = token.into();
        self
    }

    /// How the server's certificate is checked (default: the system roots).
    pub fn trust(mut self, trust: tls::Trust) -> Self {
        self.config.trust = trust;
        self
    }

    /// Any other setting.
    pub fn configure(mut self, change: impl FnOnce(&mut AgentConfig)) -> Self {
        change(&mut self.config);
        self
    }

    /// An agent whose requests `service` answers, in this process.
    pub fn serve(mut self, service: LocalService) -> Result<Agent, AgentError> {
        self.config.service = Some(service);
        Agent::new(self.config)
    }

    /// An agent forwarding to an HTTP service at `url`, as the binary does.
    pub fn upstream(mut self, url: &str) -> Result<Agent, AgentError> {
        self.config.upstream.url = url.to_string();
        Agent::new(self.config)
    }
}

/// Delay between the starts of an agent's connection slots (jittered).
const STAGGER: Duration = Duration::from_millis(300);
