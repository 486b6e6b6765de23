//! What the tunnel side and the client API share on one node: its settings,
//! the registry, the table of connected agents, the rooms hub and, in a
//! cluster, the routes to other nodes.

use std::sync::atomic::AtomicU64;

use super::{
    agents::AgentTable,
    cache::TtlCache,
    config::{LiveSettings, ServerConfig},
    gate::Gate,
    metrics::ServerMetrics,
    peers::Peers,
    rooms::RoomHub,
};
use crate::registry::Registry;

pub(crate) struct Shared {
    pub config: ServerConfig,
    pub registry: Registry,
    pub agents: AgentTable,
    pub next_request_id: AtomicU64,
    /// Agent connections admitted since start (the health report's
    /// `admitted`: connections lost and made again show as it grows).
    pub admitted: AtomicU64,
    /// Other nodes, when this one runs in a cluster.
    pub peers: Option<Peers>,
    pub rooms: RoomHub,
    /// Whether a client id has a token: answers "unknown" vs "offline"
    /// without a registry query per request for absent agents.
    pub registered: TtlCache<bool>,
    /// Each client id's client token hashes (empty: open), briefly cached.
    pub client_tokens: TtlCache<std::sync::Arc<Vec<String>>>,
    /// What unauthenticated agent peers may cost (tunnel port).
    pub gate: Gate,
    /// Set when shutdown begins: long-lived WebSockets close (1001) then,
    /// as they are not requests that finish by themselves.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Set during shutdown once the client API's requests in flight are done
    /// (or the drain grace ran out): agent connections may close then.
    pub clients_drained: tokio::sync::watch::Sender<bool>,
    pub metrics: ServerMetrics,
    /// Where clients reach the client API (`--public-url`, else its bound
    /// address when that is not a wildcard), without a trailing slash.
    pub public_base: Option<String>,
    /// Each client address's share of each agent's streams.
    pub shares: std::sync::Arc<super::share::Shares>,
    /// `Alt-Svc` for HTTPS answers when HTTP/3 is on (`h3=":PORT"`).
    pub alt_svc: Option<http::HeaderValue>,
    /// Settings changed without a restart (SIGHUP).
    pub live: std::sync::Arc<LiveSettings>,
}

impl Shared {
    /// Where `client_id`'s clients reach it, for its agent to show.
    pub fn addresses(&self, client_id: &str) -> Vec<String> {
        let mut urls: Vec<String> = self
            .public_base
            .iter()
            .map(|base| format!("{base}/?clientId={client_id}"))
            .collect();
        if let Some(domain) = &self.config.base_domain {
            let scheme = self
                .public_base
                .as_deref()
                .and_then(|b| b.split_once("://"))
                .map_or("http", |(scheme, _)| scheme);
            urls.push(format!("{scheme}://{client_id}.{domain}/"));
        }
        urls
    }
}
