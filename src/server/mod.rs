//! The public server: accepts agents on the tunnel port, records them in the
//! registry, and serves the client API (HTTP, or HTTPS with `api_tls`)
//! that carries each client request to the named agent over its own stream.

//!
//! A client request reads top to bottom: `api` (accept, route) → `target`
//! (which agent, which mode) → `local` (an agent here: `forward` for HTTP,
//! `websocket` for pass-through, `rooms` for joins; all open their stream
//! through `stream` and answer failures through `reply`) → else `cluster`
//! (the node that holds it, over the link in `peers`). `tunnel` admits agents
//! into `agents`; `state` is what they all share.

mod access;
mod admin;
mod agents;
mod api;
mod api_h3;
mod api_tls;
mod builtin;
mod cache;
mod cluster;
mod config;
mod credit;
mod forward;
mod gate;
mod http_version;
mod idle;
mod link_server;
mod link_trailers;
mod local;
mod meter;
mod metrics;
mod peers;
mod reply;
mod revoked;
mod rooms;
mod route;
mod share;
mod state;
mod stream;
mod target;
mod tunnel;
mod upgrade;
mod websocket;

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use tokio::net::TcpListener;

use crate::{
    registry::{Registry, RegistryError},
    shutdown::Shutdown,
    tls::{ServerIdentity, TlsError},
    transport::{Listener, TransportError},
};
pub use api_tls::{ApiTlsConfig, CertPair};
pub use config::{ClusterConfig, H2Limits, LiveSettings, RoomLimits, ServerConfig};
pub use gate::GateLimits;
use state::Shared;

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
    #[error("cannot listen for plain-HTTP clients on {addr}: {source}")]
    PlainBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--api-plain-listen and --api-plain-redirect need HTTPS on the client API (--api-tls-cert/--api-tls-key)")]
    PlainWithoutTls,
    #[error("--api-http3 needs HTTPS on the client API (--api-tls-cert/--api-tls-key)")]
    Http3WithoutTls,
    #[error(transparent)]
    Http3(#[from] api_h3::H3Error),
    #[error("cannot listen for the admin API on {addr}: {source}")]
    AdminBind {
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

/// Where `--api-plain-redirect` sends clients: the port of `--public-url`
/// when it is an https:// URL (`None`: 443), else the HTTPS listener's own
/// (omitted when it is 443).
fn https_port(public_url: Option<&str>, api: &TcpListener) -> Option<u16> {
    if let Some(url) = public_url.and_then(|u| u.parse::<http::Uri>().ok()) {
        if url.scheme_str() == Some("https") {
            return url.port_u16();
        }
    }
    api.local_addr()
        .ok()
        .map(|a| a.port())
        .filter(|&p| p != 443)
}

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    api: TcpListener,
    api_edge: api::Edge,
    /// The plain-HTTP client listener beside an HTTPS API, and what it does.
    plain: Option<(TcpListener, api::Edge)>,
    /// HTTP/3 on the UDP side of the HTTPS port, when on.
    h3: Option<quinn::Endpoint>,
    api_certs: Option<Arc<api_tls::ApiCerts>>,
    tunnel: Listener,
    cluster_listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
    identity: ServerIdentity,
}

impl Server {
    /// Opens the registry, loads or generates the certificate, binds both ports.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        match crate::accept::raise_fd_limit() {
            Ok((before, now)) if now > before => {
                tracing::info!("open-file limit raised from {before} to {now}")
            }
            Ok((_, now)) => tracing::info!("open-file limit: {now}"),
            Err(e) => tracing::warn!("could not read or raise the open-file limit: {e}"),
        }
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
            identity.reset_secret(),
            config.listen_backlog,
        )
        .await
        .map_err(|source| ServerError::TunnelBind {
            addr: config.tunnel_listen,
            source,
        })?;
        let api =
            crate::accept::bind(config.api_listen, config.listen_backlog).map_err(|source| {
                ServerError::ApiBind {
                    addr: config.api_listen,
                    source,
                }
            })?;
        let api_certs = match &config.api_tls {
            Some(tls) => Some(api_tls::ApiCerts::load(tls.clone())?),
            None if config.api_plain_listen.is_some() || config.api_plain_redirect => {
                return Err(ServerError::PlainWithoutTls)
            }
            None if config.api_http3 => return Err(ServerError::Http3WithoutTls),
            None => None,
        };
        let api_edge = match &api_certs {
            Some(certs) => api::Edge::Tls(tokio_rustls::TlsAcceptor::from(Arc::new(
                certs.server_config(&[api_tls::H2, api_tls::HTTP1])?,
            ))),
            None => api::Edge::Plain,
        };
        // HTTP/3 on the same port number, over UDP.
        let h3 = match (&api_certs, config.api_http3) {
            (Some(certs), true) => {
                let addr = api.local_addr().map_err(|source| ServerError::ApiBind {
                    addr: config.api_listen,
                    source,
                })?;
                Some(api_h3::bind(addr, certs, config.h2.max_streams)?)
            }
            _ => None,
        };
        let alt_svc = h3
            .as_ref()
            .and_then(|endpoint| endpoint.local_addr().ok())
            .and_then(|addr| {
                // A day: clients remember it across visits, and a server
                // that drops HTTP/3 is forgotten within one.
                http::HeaderValue::from_str(&format!("h3=\":{}\"; ma=86400", addr.port())).ok()
            });
        let plain = match config.api_plain_listen {
            Some(addr) => {
                let listener = crate::accept::bind(addr, config.listen_backlog)
                    .map_err(|source| ServerError::PlainBind { addr, source })?;
                let edge = if config.api_plain_redirect {
                    api::Edge::Redirect {
                        https_port: https_port(config.public_url.as_deref(), &api),
                    }
                } else {
                    api::Edge::Plain
                };
                Some((listener, edge))
            }
            None => None,
        };
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(
                crate::admin::bind(addr)
                    .map_err(|source| ServerError::AdminBind { addr, source })?,
            ),
            None => None,
        };
        let (cluster, cluster_listener) = match &config.cluster {
            None => (None, None),
            Some(cc) => {
                if cc.secret.expose().len() < 16 {
                    return Err(ServerError::WeakSecret);
                }
                let listener =
                    crate::accept::bind(cc.listen, config.listen_backlog).map_err(|source| {
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
                let tls = match &cc.tls_dir {
                    Some(dir) => Some(crate::cluster_tls::load(dir)?),
                    None => {
                        tracing::warn!(
                            "the cluster link is plain HTTP guarded by the shared secret only; \
                             create a cluster CA with `warren certs --cluster` and pass --cluster-tls"
                        );
                        None
                    }
                };
                (
                    Some(peers::Peers::new(cc.clone(), advertise, tls)),
                    Some(listener),
                )
            }
        };
        let agents = agents::AgentTable::new(
            config.max_agents,
            config.max_connections_per_client,
            config.failover_wait,
        );
        let rooms = rooms::RoomHub::new(
            config.rooms.clone(),
            config.ws.clone(),
            config.max_head_frame,
            // A healthy agent answers the opening of its rooms at once.
            config.open_stream_timeout,
        );
        let shared = Arc::new(Shared {
            agents,
            next_request_id: AtomicU64::new(1),
            admitted: AtomicU64::new(0),
            peers: cluster,
            rooms,
            // 5 s: a newly issued token is recognised within seconds; a flood
            // of requests for absent agents costs one query per id per 5 s.
            registered: cache::TtlCache::new(Duration::from_secs(5), 10_000),
            // 5 s: a new or revoked client token applies within seconds; a
            // busy agent's clients cost one lookup per 5 s.
            client_tokens: cache::TtlCache::new(Duration::from_secs(5), 10_000),
            gate: gate::Gate::new(config.gate.clone()),
            clients_drained: tokio::sync::watch::channel(false).0,
            stopping: tokio::sync::watch::channel(false).0,
            metrics: metrics::ServerMetrics::new(registry.query_metrics()),
            live: Arc::new(config::LiveSettings::new(&config, api_certs.clone())),
            public_base: match (&config.public_url, api.local_addr()) {
                (Some(url), _) => Some(url.trim_end_matches('/').to_string()),
                (None, Ok(addr)) if !addr.ip().is_unspecified() => {
                    let scheme = if api_certs.is_some() { "https" } else { "http" };
                    Some(format!("{scheme}://{addr}"))
                }
                _ => None,
            },
            alt_svc,
            shares: share::Shares::new(config.max_requests_per_ip),
            registry,
            config,
        });
        if let Some(peers) = &shared.peers {
            cluster::register(&shared, peers).await?;
        }
        Ok(Server {
            shared,
            api,
            api_edge,
            plain,
            h3,
            api_certs,
            tunnel,
            cluster_listener,
            admin_listener,
            identity,
        })
    }

    /// The settings this server takes on while running (SIGHUP reloads).
    pub fn live(&self) -> Arc<LiveSettings> {
        self.shared.live.clone()
    }

    /// Where the admin listener is, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api.local_addr().expect("bound socket has an address")
    }

    /// Whether the client API speaks HTTPS.
    pub fn api_is_https(&self) -> bool {
        self.api_certs.is_some()
    }

    /// The plain-HTTP client listener beside an HTTPS API, when on.
    pub fn api_plain_addr(&self) -> Option<SocketAddr> {
        self.plain.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The HTTP/3 endpoint (UDP, the HTTPS port), when on.
    pub fn api_http3_addr(&self) -> Option<SocketAddr> {
        self.h3.as_ref().and_then(|e| e.local_addr().ok())
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
            api_edge,
            plain,
            h3,
            api_certs,
            tunnel,
            cluster_listener,
            admin_listener,
            ..
        } = self;
        // The admin listener stays up through the drain (readyz says "not
        // ready" meanwhile) and stops with the rest.
        let admin = admin_listener.map(|listener| {
            let service = Arc::new(admin::ServerAdmin(shared.clone()));
            let (trigger, stop) = crate::shutdown::channel();
            let task = tokio::spawn(crate::admin::serve(listener, service, stop));
            (trigger, task)
        });
        let (cluster_serve, cluster_heartbeat) = match cluster_listener {
            Some(listener) => (
                Some(tokio::spawn(link_server::serve(
                    shared.clone(),
                    listener,
                    shutdown.clone(),
                ))),
                Some(tokio::spawn(cluster::heartbeat(
                    shared.clone(),
                    shutdown.clone(),
                ))),
            ),
            None => (None, None),
        };
        let tunnel = Arc::new(tunnel);
        {
            // WebSockets (pass-through and room members) live until closed:
            // told at once that the node is going away, their clients
            // reconnect elsewhere while requests in flight drain.
            let shared = shared.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.wait().await;
                shared.stopping.send_replace(true);
                shared.rooms.close_all(1001, "server shutting down");
            });
        }
        // Every agent task holds a clone of `done_tx`; when all are dropped,
        // `done_rx` reports that the last agent connection has wound down.
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
        let agents = tokio::spawn(tunnel::accept_agents(
            shared.clone(),
            tunnel.clone(),
            shutdown.clone(),
            done_tx,
        ));
        if let Some(certs) = api_certs {
            tokio::spawn(certs.watch(shutdown.clone()));
        }
        let listeners = std::iter::once((api, api_edge)).chain(plain).collect();
        let clients = tokio::spawn(api::serve(shared.clone(), listeners, h3, shutdown.clone()));
        tokio::spawn(revoked::sweep(shared.clone(), shutdown.clone()));
        // The client API stops accepting and returns once the requests in
        // flight have finished (bounded by --drain-grace); agent connections
        // stay up until then, since those requests travel on them.
        let link = async {
            if let Some(serve) = cluster_serve {
                let _ = serve.await;
            }
        };
        // The cluster link drains the same way: requests other nodes
        // forwarded here travel on these agent connections too.
        let _ = tokio::join!(agents, clients, link);
        shared.clients_drained.send_replace(true);
        // Agent tasks sent GoAway when the signal came and now close; wait
        // for them (bounded), then close whatever is left.
        let grace = tunnel::SHUTDOWN_DRAIN + Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, done_rx.recv()).await;
        for link in shared.agents.all() {
            link.session
                .close(warren_proto::CloseCode::Normal, "server shutting down");
        }
        tunnel.close().await;
        drop(tunnel);
        if let Some(heartbeat) = cluster_heartbeat {
            let _ = heartbeat.await;
        }
        let removed = shared
            .registry
            .remove_node_connections(&shared.config.node_id)
            .await?;
        if shared.peers.is_some() {
            shared.registry.remove_node(&shared.config.node_id).await?;
        }
        if let Some((trigger, task)) = admin {
            trigger.fire();
            let _ = task.await;
        }
        tracing::info!(rows = removed, "server stopped");
        Ok(())
    }
}
