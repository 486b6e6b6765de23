//! The public server: accepts agents on the tunnel port, records them in the
//! registry, and serves the plain-HTTP client API that carries each client
//! request to the named agent over its own stream.

mod agents;
mod api;
mod cache;
mod cluster;
mod forward;
mod rooms;
mod tunnel;
mod websocket;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use tokio::net::TcpListener;

use crate::{
    registry::{Registry, RegistryError},
    shutdown::Shutdown,
    tls::{ServerIdentity, TlsError},
    transport::{Listener, TransportError, TransportTuning},
};
pub use agents::AgentTable;
pub use cluster::ClusterConfig;
pub use rooms::RoomLimits;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Plain-HTTP client API.
    pub api_listen: SocketAddr,
    /// Agents connect here: UDP for QUIC, TCP (TLS + WebSocket) on the same port.
    pub tunnel_listen: SocketAddr,
    pub database_url: String,
    pub certs_dir: PathBuf,
    /// Names (DNS or IP) for a generated self-signed certificate.
    pub cert_names: Vec<String>,
    /// This node's id in the registry.
    pub node_id: String,
    /// Serve `<clientId>.<base_domain>` hosts.
    pub base_domain: Option<String>,
    /// Control-stream ping interval told to agents.
    pub heartbeat: Duration,
    /// Largest response collected in blocking mode.
    pub max_blocking_body: u64,
    /// Largest request/response head frame (roughly: total header bytes).
    pub max_head_frame: usize,
    /// Agent connections this node accepts in all, and per client id.
    pub max_agents: usize,
    pub max_connections_per_client: usize,
    /// Concurrent client HTTP connections.
    pub max_client_connections: usize,
    /// Time allowed for an agent's QUIC handshake plus Hello.
    pub handshake_timeout: Duration,
    /// Time a client request may wait for a stream when the agent is at its limit.
    pub open_stream_timeout: Duration,
    /// Time to wait for the agent's response head (the agent applies its own,
    /// shorter, upstream timeout first).
    pub response_timeout: Duration,
    /// Time a client has to send its request headers (slow-loris guard).
    pub header_read_timeout: Duration,
    pub tuning: TransportTuning,
    /// Run as one node of a cluster (shared MySQL registry).
    pub cluster: Option<ClusterConfig>,
    /// Pass-through WebSockets and room members: message size, idle timeout.
    pub ws: crate::websocket::WsLimits,
    pub rooms: RoomLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_listen: "127.0.0.1:8080".parse().expect("literal"),
            tunnel_listen: "0.0.0.0:7443".parse().expect("literal"),
            database_url: "sqlite://warren.db".into(),
            certs_dir: "certs".into(),
            cert_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            node_id: "local".into(),
            base_domain: None,
            // 10 s keeps UDP NAT mappings (often 30 s) alive and finds a dead
            // peer within 30 s.
            heartbeat: Duration::from_secs(10),
            max_blocking_body: 64 * 1024 * 1024,
            max_head_frame: warren_proto::DEFAULT_MAX_HEAD_FRAME,
            max_agents: 10_000,
            max_connections_per_client: 8,
            max_client_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            open_stream_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(120),
            header_read_timeout: Duration::from_secs(30),
            tuning: TransportTuning::default(),
            cluster: None,
            ws: crate::websocket::WsLimits::default(),
            rooms: RoomLimits::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot listen for clients on {addr}: {source}")]
    ApiBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen for other nodes on {addr}: {source}")]
    ClusterBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--cluster-listen {0} is a wildcard address: set --cluster-advertise to the address other nodes should use")]
    NoAdvertise(SocketAddr),
    #[error("--cluster-secret is required with --cluster-listen (at least 16 characters)")]
    WeakSecret,
    #[error("cannot listen for agents on {addr}: {source}")]
    TunnelBind {
        addr: SocketAddr,
        source: TransportError,
    },
}

/// State shared by the tunnel side and the client API.
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub registry: Registry,
    pub agents: AgentTable,
    pub next_request_id: AtomicU64,
    pub cluster: Option<cluster::Cluster>,
    pub ws_limits: crate::websocket::WsLimits,
    pub room_limits: RoomLimits,
    pub rooms: rooms::RoomHub,
    /// Whether a client id has a token: answers "unknown" vs "offline"
    /// without a registry query per request for absent agents.
    pub registered: cache::TtlCache<bool>,
}

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    api: TcpListener,
    tunnel: Listener,
    cluster_listener: Option<TcpListener>,
    identity: ServerIdentity,
}

impl Server {
    /// Opens the registry, loads or generates the certificate, binds both ports.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        let registry = Registry::open(&config.database_url).await?;
        let stale = registry.remove_node_connections(&config.node_id).await?;
        if stale > 0 {
            tracing::info!(node = %config.node_id, rows = stale, "removed connection rows left by an earlier run");
        }
        let identity = ServerIdentity::load_or_generate(&config.certs_dir, &config.cert_names)?;
        let tunnel = Listener::bind(
            config.tunnel_listen,
            identity.server_config()?,
            &config.tuning,
        )
        .await
        .map_err(|source| ServerError::TunnelBind {
            addr: config.tunnel_listen,
            source,
        })?;
        let api = TcpListener::bind(config.api_listen)
            .await
            .map_err(|source| ServerError::ApiBind {
                addr: config.api_listen,
                source,
            })?;
        let (cluster, cluster_listener) = match &config.cluster {
            None => (None, None),
            Some(cc) => {
                if cc.secret.len() < 16 {
                    return Err(ServerError::WeakSecret);
                }
                let listener = TcpListener::bind(cc.listen).await.map_err(|source| {
                    ServerError::ClusterBind {
                        addr: cc.listen,
                        source,
                    }
                })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| ServerError::ClusterBind {
                        addr: cc.listen,
                        source,
                    })?;
                let advertise = match &cc.advertise {
                    Some(a) => a.clone(),
                    None if bound.ip().is_unspecified() => {
                        return Err(ServerError::NoAdvertise(bound))
                    }
                    None => bound.to_string(),
                };
                (
                    Some(cluster::Cluster::new(cc.clone(), advertise)),
                    Some(listener),
                )
            }
        };
        let agents = AgentTable::new(config.max_agents, config.max_connections_per_client);
        let shared = Arc::new(Shared {
            registry,
            agents,
            next_request_id: AtomicU64::new(1),
            cluster,
            ws_limits: config.ws.clone(),
            room_limits: config.rooms.clone(),
            rooms: rooms::RoomHub::default(),
            // 5 s: a newly issued token is recognised within seconds; a flood
            // of requests for absent agents costs one query per id per 5 s.
            registered: cache::TtlCache::new(Duration::from_secs(5), 10_000),
            config,
        });
        if let Some(cluster) = &shared.cluster {
            cluster::register(&shared, cluster).await?;
        }
        Ok(Server {
            shared,
            api,
            tunnel,
            cluster_listener,
            identity,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api.local_addr().expect("bound socket has an address")
    }

    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel
            .local_addr()
            .expect("bound socket has an address")
    }

    /// Where other nodes reach this one, when clustered.
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.cluster_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn identity(&self) -> &ServerIdentity {
        &self.identity
    }

    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Serves until `shutdown` fires, then says GoAway to every agent, closes
    /// their connections and removes this node's registry rows.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), ServerError> {
        let Server {
            shared,
            api,
            tunnel,
            cluster_listener,
            ..
        } = self;
        let cluster_tasks = cluster_listener.map(|listener| {
            (
                tokio::spawn(cluster::serve(shared.clone(), listener, shutdown.clone())),
                tokio::spawn(cluster::heartbeat(shared.clone(), shutdown.clone())),
            )
        });
        let tunnel = Arc::new(tunnel);
        // Every agent task holds a clone of `done_tx`; when all are dropped,
        // `done_rx` reports that the last agent connection has wound down.
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
        let agents = tokio::spawn(tunnel::accept_agents(
            shared.clone(),
            tunnel.clone(),
            shutdown.clone(),
            done_tx,
        ));
        let clients = tokio::spawn(api::serve(shared.clone(), api, shutdown.clone()));
        let _ = tokio::join!(agents, clients);
        // Agent tasks saw the same signal, sent GoAway and wait (bounded) for
        // their agents to close; wait for them, then close whatever is left.
        let grace = tunnel::SHUTDOWN_DRAIN + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, done_rx.recv()).await;
        for link in shared.agents.all() {
            link.session
                .close(warren_proto::CloseCode::Normal, "server shutting down");
        }
        tunnel.close().await;
        drop(tunnel);
        if let Some((serve, heartbeat)) = cluster_tasks {
            let _ = tokio::join!(serve, heartbeat);
        }
        let removed = shared
            .registry
            .remove_node_connections(&shared.config.node_id)
            .await?;
        if shared.cluster.is_some() {
            shared.registry.remove_node(&shared.config.node_id).await?;
        }
        tracing::info!(rows = removed, "server stopped");
        Ok(())
    }
}
