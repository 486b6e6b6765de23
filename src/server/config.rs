//! The server's settings: every limit, timeout and address, with the one set
//! of defaults (the CLI reads its defaults from these `Default` impls).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::{api_tls::ApiTlsConfig, gate::GateLimits};
use crate::auth::Secret;
use crate::{transport::TransportTuning, websocket::WsLimits};

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The client API: HTTPS with `api_tls`, else plain HTTP.
    pub api_listen: SocketAddr,
    /// HTTPS on `api_listen`: certificate/key pairs chosen by SNI.
    pub api_tls: Option<ApiTlsConfig>,
    /// A second client listener, plain HTTP (with `api_tls`).
    pub api_plain_listen: Option<SocketAddr>,
    /// The plain listener only redirects to HTTPS (308).
    pub api_plain_redirect: bool,
    /// HTTP/3 on the UDP side of the HTTPS port (with `api_tls`).
    pub api_http3: bool,
    /// HTTP/2 client connections.
    pub h2: H2Limits,
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
    /// Requests one client address (an IPv6 /64) may have in flight to one
    /// agent at once; 0: no limit.
    pub max_requests_per_ip: usize,
    /// Connections each TCP listener (client API, tunnel, cluster link) lets
    /// wait for `accept`.
    pub listen_backlog: u32,
    /// Time allowed for an agent's QUIC handshake plus Hello.
    pub handshake_timeout: Duration,
    /// Time a client request may wait for a stream when the agent is at its limit.
    pub open_stream_timeout: Duration,
    /// Time to wait for the agent's response head (the agent applies its own,
    /// shorter, upstream timeout first).
    pub response_timeout: Duration,
    /// A request whose agent has not answered for this long makes the server
    /// ping that agent connection (a dead one is otherwise found only after
    /// three missed heartbeats).
    pub probe_after: Duration,
    /// Time an agent has to answer such a ping before its connection is
    /// dropped as dead.
    pub probe_timeout: Duration,
    /// A request whose agent connection died before taking it (no body
    /// consumed) is retried on another connection of that agent, waiting this
    /// long for one to appear (an agent restarting).
    pub failover_wait: Duration,
    /// A streamed response that gets no bytes from the agent for this long is
    /// cut off (an error to the client). Generous: paused live audio and
    /// server-sent events with sparse heartbeats must keep working.
    pub body_idle_timeout: Duration,
    /// Time the registry has to check an agent's token and record its
    /// connection; past it the agent is refused as transient ("retry later").
    pub registry_timeout: Duration,
    /// On shutdown (SIGTERM): how long requests in flight may take to finish
    /// before their connections are closed.
    pub drain_grace: Duration,
    /// Time a client has to send its request headers (slow-loris guard).
    pub header_read_timeout: Duration,
    pub tuning: TransportTuning,
    /// Run as one node of a cluster (shared MySQL registry).
    pub cluster: Option<ClusterConfig>,
    /// Pass-through WebSockets and room members: message size, idle timeout.
    pub ws: WsLimits,
    pub rooms: RoomLimits,
    /// What unauthenticated agent peers may cost.
    pub gate: GateLimits,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`, admin API):
    /// off unless set.
    pub admin_listen: Option<SocketAddr>,
    /// Agents given metric series of their own: the N busiest by bytes.
    pub metrics_top_agents: usize,
    /// One log line per client request (target `warren::access`).
    pub access_log: bool,
    /// How often this node checks that its agents' tokens still exist (a
    /// revoke the admin API did not carry here takes effect within it).
    pub revocation_check: Duration,
    /// The client API as the internet reaches it (e.g. `https://tunnel.example.com`),
    /// for the addresses agents are told; default: the API's own address.
    pub public_url: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_listen: "127.0.0.1:8080".parse().expect("literal"),
            api_tls: None,
            api_plain_listen: None,
            api_plain_redirect: false,
            api_http3: false,
            h2: H2Limits::default(),
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
            // A quarter of an agent's 1024 streams: a crowd behind one NAT
            // has room, one client that stops reading holds no more.
            max_requests_per_ip: 256,
            listen_backlog: crate::accept::DEFAULT_BACKLOG,
            handshake_timeout: Duration::from_secs(10),
            open_stream_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(120),
            header_read_timeout: Duration::from_secs(30),
            // 30 s: what systemd and Kubernetes wait before SIGKILL by default.
            drain_grace: Duration::from_secs(30),
            // 3 s: under an agent's 5 s wait for Welcome (--connect-timeout).
            registry_timeout: Duration::from_secs(3),
            // 5 min: far above any SSE heartbeat or audio pause, yet a service
            // that hangs mid-body does not hold a client for ever.
            body_idle_timeout: Duration::from_secs(300),
            // 1 s: longer than any healthy round trip to an agent; a ping is cheap.
            probe_after: Duration::from_secs(1),
            // 2 s: a live agent on a poor mobile link still answers; a killed
            // one costs its clients at most probe_after + this.
            probe_timeout: Duration::from_secs(2),
            // 5 s: an agent restarted by a supervisor is back well within it.
            failover_wait: Duration::from_secs(5),
            tuning: TransportTuning::default(),
            cluster: None,
            ws: WsLimits::default(),
            rooms: RoomLimits::default(),
            gate: GateLimits::default(),
            admin_listen: None,
            // 10: the few tenants worth a graph; every series is one more
            // line per scrape, so this bounds a scrape's size.
            metrics_top_agents: 10,
            access_log: false,
            public_url: None,
            // 30 s: one registry read of every client id per node per 30 s
            // (10,000 rows is milliseconds), and a DB-only revoke bites soon.
            revocation_check: Duration::from_secs(30),
        }
    }
}

/// What a running server takes on without a restart (`warren server` reloads
/// them from its config file on SIGHUP); read on every use.
#[derive(Debug, Default)]
pub struct LiveSettings {
    pub access_log: std::sync::atomic::AtomicBool,
    pub metrics_top_agents: std::sync::atomic::AtomicUsize,
    /// The client API's certificates, when it speaks HTTPS.
    api_certs: Option<std::sync::Arc<super::api_tls::ApiCerts>>,
}

impl LiveSettings {
    pub(super) fn new(
        config: &ServerConfig,
        api_certs: Option<std::sync::Arc<super::api_tls::ApiCerts>>,
    ) -> Self {
        LiveSettings {
            access_log: config.access_log.into(),
            metrics_top_agents: config.metrics_top_agents.into(),
            api_certs,
        }
    }

    /// Reads the client API's certificate files again (SIGHUP): how many
    /// pairs are served now, or why the ones in use stay; `None` without HTTPS.
    pub fn reload_api_certificates(&self) -> Option<Result<usize, crate::tls::TlsError>> {
        self.api_certs.as_ref().map(|certs| certs.reload())
    }

    pub fn access_log(&self) -> bool {
        self.access_log.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn metrics_top_agents(&self) -> usize {
        self.metrics_top_agents
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where this node accepts forwarded requests from other nodes.
    pub listen: SocketAddr,
    /// How other nodes reach `listen` (required when it is a wildcard address).
    pub advertise: Option<String>,
    /// Shared by all nodes; only holders may use the internal link.
    pub secret: Secret,
    /// A node that has not renewed its lease for this long is dead.
    pub lease: Duration,
    /// How long a client-id → node lookup is reused without asking the database.
    pub route_ttl: Duration,
    /// Directory with the cluster CA and node identity (`warren certs
    /// --cluster`): mutual TLS on the link. Without it the link is plain
    /// HTTP guarded by the secret only (keep it on a private network).
    pub tls_dir: Option<PathBuf>,
}

impl ClusterConfig {
    pub fn new(listen: SocketAddr, secret: &str) -> Self {
        ClusterConfig {
            listen,
            advertise: None,
            secret: secret.into(),
            // 30 s: a few missed heartbeats (every 10 s) before a node is
            // written off, short enough that clients are not stranded long.
            lease: Duration::from_secs(30),
            // 2 s: fresh enough to follow agents moving between nodes, long
            // enough to take the database off the per-request path.
            route_ttl: Duration::from_secs(2),
            tls_dir: None,
        }
    }
}

/// What one HTTP/2 client connection may hold.
#[derive(Debug, Clone)]
pub struct H2Limits {
    /// Requests open at once on one connection (each is a tunnel stream).
    pub max_streams: u32,
    /// Streams opened and reset by the client before being served, at once
    /// (rapid reset); past it the connection gets GOAWAY.
    pub max_pending_resets: usize,
    /// Streams this server had to reset for the client's errors, per
    /// connection, before it gets GOAWAY.
    pub max_error_resets: usize,
    /// Request body bytes a client may send ahead per stream, and in all.
    pub stream_window: u32,
    pub connection_window: u32,
    /// Response bytes held per stream for the client, whatever window the
    /// client grants (a huge one must not make a stalled stream costly).
    pub send_buffer: usize,
    /// Ping period for an idle-looking connection; unanswered within one
    /// more, the connection is closed.
    pub ping_interval: Duration,
}

impl Default for H2Limits {
    fn default() -> Self {
        H2Limits {
            // 256: above browsers' 100 and gRPC channels' usual fan-out;
            // each is a tunnel stream, bounded again by the agent's limits.
            max_streams: 256,
            // 20: hyper's default; a client cancelling normally (a player
            // seeking) never has more than a few pending.
            max_pending_resets: 20,
            // 1024: hyper's default.
            max_error_resets: 1024,
            // 1 MiB per stream: a stalled upload stops at 1 MiB; the
            // connection's 8 MiB lets others go on past several stalled ones.
            stream_window: 1 << 20,
            connection_window: 8 << 20,
            // 128 KiB: a couple of the tunnel's body chunks in flight per
            // stream keeps the TLS writer busy; hyper's 400 KiB default let
            // 256 stalled streams cost ~1 MiB each with a huge client window.
            send_buffer: 128 << 10,
            // 30 s: finds a vanished client within a minute; one ping per
            // idle connection per 30 s costs nothing.
            ping_interval: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RoomLimits {
    /// Messages queued per member. 256: seconds of a busy room's traffic; a
    /// member this far behind is not keeping up.
    pub member_queue: usize,
    /// Time a member has to send its credentials (first message) and the
    /// backend to accept them, in rooms that ask for it.
    pub auth_timeout: Duration,
    /// Members across all rooms of one agent on this node.
    pub max_members_per_agent: usize,
    /// Members of one room.
    pub max_members_per_room: usize,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits {
            member_queue: 256,
            auth_timeout: Duration::from_secs(20),
            // 10,000 (and 5,000 in one room): at ~10 KiB each, 100 MB of a
            // node for one tenant at most; raise for bigger audiences.
            max_members_per_agent: 10_000,
            max_members_per_room: 5_000,
        }
    }
}
