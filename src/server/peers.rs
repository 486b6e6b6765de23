//! This node's view of the other nodes of a cluster: the cached client-id →
//! node routes and the pooled HTTP/1.1 links to peer nodes. Pure state; what
//! travels over the links is in `cluster`.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use hyper::client::conn::http1 as client_http1;
use hyper_util::rt::TokioIo;

use super::{cache::TtlCache, config::ClusterConfig};
use crate::{
    body::TunnelBody,
    cluster_tls::{self, ClusterTls},
    registry::now_ms,
};

/// Header carrying the cluster secret on the internal link.
pub(super) const SECRET_HEADER: &str = "x-warren-cluster-secret";

/// `(node_id, cluster_addr)` pairs a client id can be reached through.
pub(crate) type Routes = Vec<(String, String)>;

/// Bound on cached client ids (see `TtlCache`).
const ROUTE_CACHE_MAX: usize = 10_000;
/// Idle connections kept per peer node.
const IDLE_LINKS_PER_NODE: usize = 64;

/// Pooled HTTP/1.1 connections to peer nodes.
pub(crate) struct NodeLinks {
    idle: Mutex<HashMap<String, Vec<client_http1::SendRequest<TunnelBody>>>>,
    /// Mutual TLS to peers, when the cluster has its CA.
    tls: Option<ClusterTls>,
}

impl NodeLinks {
    pub async fn get(&self, addr: &str) -> Result<client_http1::SendRequest<TunnelBody>, String> {
        {
            let mut idle = self.idle.lock().expect("link pool poisoned");
            if let Some(list) = idle.get_mut(addr) {
                list.retain(|s| !s.is_closed());
                if let Some(i) = list.iter().position(|s| s.is_ready()) {
                    return Ok(list.swap_remove(i));
                }
            }
        }
        let connect = tokio::net::TcpStream::connect(addr);
        let tcp = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .map_err(|_| format!("connecting to node {addr} timed out"))?
            .map_err(|e| format!("connecting to node {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(addr, tcp).await,
            Some(tls) => {
                let connect = tls.connector.connect(cluster_tls::server_name(), tcp);
                let tls = tokio::time::timeout(Duration::from_secs(2), connect)
                    .await
                    .map_err(|_| format!("TLS with node {addr} timed out"))?
                    .map_err(|e| format!("TLS with node {addr}: {e}"))?;
                handshake(addr, tls).await
            }
        }
    }

    pub fn put(&self, addr: &str, sender: client_http1::SendRequest<TunnelBody>) {
        let mut idle = self.idle.lock().expect("link pool poisoned");
        let list = idle.entry(addr.to_string()).or_default();
        if list.len() < IDLE_LINKS_PER_NODE {
            list.push(sender);
        }
    }
}

/// HTTP/1.1 over an established connection to a peer node.
async fn handshake<IO>(addr: &str, io: IO) -> Result<client_http1::SendRequest<TunnelBody>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = client_http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake with node {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// This node's view of the cluster.
pub(crate) struct Peers {
    pub config: ClusterConfig,
    /// The address other nodes use for us.
    pub advertise: String,
    pub routes: TtlCache<Routes>,
    pub links: NodeLinks,
    /// Mutual TLS on the link, both ways (None: plain HTTP + secret).
    pub tls: Option<ClusterTls>,
}

impl Peers {
    pub fn new(config: ClusterConfig, advertise: String, tls: Option<ClusterTls>) -> Self {
        let ttl = config.route_ttl;
        Peers {
            config,
            advertise,
            routes: TtlCache::new(ttl, ROUTE_CACHE_MAX),
            links: NodeLinks {
                idle: Mutex::new(HashMap::new()),
                tls: tls.clone(),
            },
            tls,
        }
    }

    pub fn lease_expiry(&self) -> i64 {
        now_ms() + self.config.lease.as_millis() as i64
    }
}
