//! The command line: every subcommand and flag, each also settable as a
//! `WARREN_…` environment variable. Defaults are not written here: each flag
//! reads its default from the library's `Default` impls (`ServerConfig`,
//! `TransportTuning`, `ClusterConfig`, `RoomLimits`, `WsLimits`,
//! `AgentConfig::new`), so `--help` and the library always agree.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use warren::{
    agent::{AgentConfig, TransportChoice, UpstreamConfig},
    server::{
        ApiTlsConfig, CertPair, ClusterConfig, GateLimits, H2Limits, RoomLimits, ServerConfig,
    },
    tls::Trust,
    transport::TransportTuning,
    websocket::WsLimits,
};

#[derive(Parser)]
#[command(
    name = "warren",
    version,
    about = "A reverse tunnel over QUIC: expose a service behind NAT through a public server."
)]
pub struct Cli {
    /// What to log: a `tracing` filter, e.g. `info`, `warn,warren=debug`.
    #[arg(long, global = true, env = "WARREN_LOG", default_value = "info")]
    pub log: String,
    /// Log lines as text, or as one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "WARREN_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start; boxing buys nothing
pub enum Command {
    /// Run the public server: client API plus the tunnel port agents dial.
    Server(ServerArgs),
    /// Run an agent beside a local service.
    Agent(AgentArgs),
    /// Manage agent tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Create a self-signed server certificate (if absent) and print its fingerprint.
    Certs(CertsArgs),
    /// Run the sample service that the demo and the benchmark put behind an agent.
    Upstream {
        #[arg(long, env = "WARREN_UPSTREAM_LISTEN", default_value_t = SocketAddr::from(([127, 0, 0, 1], 8000)))]
        listen: SocketAddr,
    },
    /// Measure direct vs QUIC vs WebSocket on loopback, side by side in one run.
    Bench {
        /// Every scenario small (seconds instead of minutes).
        #[arg(long)]
        quick: bool,
        /// Where tunnel.json, tunnel.md, tunnel.svg and logs are written.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// Runs of the headline scenarios per target (median and range shown);
        /// default 3, or 1 with --quick.
        #[arg(long)]
        runs: Option<usize>,
        /// Audio listeners and track seconds instead of the run's own, e.g.
        /// `--quick --audio 500 30` for the full audio scenario alone at size.
        #[arg(long, num_args = 2, value_names = ["LISTENERS", "SECONDS"])]
        audio: Vec<u64>,
        /// An earlier run's tunnel.json: also print each figure's change against it.
        #[arg(long, value_name = "OLD.json")]
        compare: Option<PathBuf>,
        /// Only the per-request scenarios (small requests with CPU per
        /// request, sequential latency), for a quick before/after.
        #[arg(long, conflicts_with = "audio")]
        requests_only: bool,
        /// Measure your own deployment instead: the client API of a running
        /// server (http://HOST[:PORT]) whose agent's upstream is `warren upstream`.
        #[arg(long, value_name = "URL", requires = "client_id", conflicts_with_all = ["audio", "compare", "requests_only"])]
        remote: Option<String>,
        /// With --remote: the agent to measure.
        #[arg(long, requires = "remote")]
        client_id: Option<String>,
        /// With --remote: the agent's upstream as this machine reaches it
        /// (http://HOST:PORT), for the direct baseline; left out when unreachable.
        #[arg(long, value_name = "URL", requires = "remote")]
        direct: Option<String>,
        /// With --remote: the transport the agent connected over (its log says
        /// `connected transport=…`); names the table's column.
        #[arg(long, value_parser = ["quic", "ws"], default_value = "quic", requires = "remote")]
        transport: String,
    },
    /// Benchmark helper: a raw transport peer (no HTTP, no tunnel).
    #[command(hide = true)]
    BenchRaw {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        certs: PathBuf,
    },
    /// Benchmark helper: many idle agents in one process.
    #[command(hide = true)]
    BenchIdleAgents {
        #[arg(long)]
        server: String,
        #[arg(long)]
        fingerprint: String,
        #[arg(long)]
        client_id: String,
        #[arg(long)]
        token: String,
        #[arg(long, value_enum)]
        transport: TransportArg,
        #[arg(long)]
        count: usize,
    },
    /// Nodes, agents and their connections, from a running server's admin API.
    Status {
        #[command(flatten)]
        admin: AdminClientArgs,
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Config files (`--config`).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run server, agent and a sample service on loopback, and print URLs to try.
    Demo {
        /// Where the demo's client API listens.
        #[arg(long, env = "WARREN_API_LISTEN", default_value_t = ServerConfig::default().api_listen)]
        api_listen: SocketAddr,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check FILE: every key of its [server] and [agent] tables is a flag, every
    /// value parses, and each table makes a valid configuration.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create or rotate CLIENT_ID's token; prints it as the last line of stdout.
    Issue {
        client_id: String,
        #[arg(long, env = "WARREN_DATABASE_URL", default_value_t = ServerConfig::default().database_url)]
        database_url: String,
    },
    /// Add a client token for CLIENT_ID: from then on its clients must present
    /// one (Authorization: Bearer, or ?token=). Prints it as the last line.
    IssueClient {
        client_id: String,
        #[arg(long, env = "WARREN_DATABASE_URL", default_value_t = ServerConfig::default().database_url)]
        database_url: String,
    },
    /// Every client id that may connect, with its client-token count.
    List {
        #[arg(long, env = "WARREN_DATABASE_URL", default_value_t = ServerConfig::default().database_url)]
        database_url: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke CLIENT_ID's token: its reconnections are refused. With
    /// --admin-url, through a running server, which also disconnects it at once.
    Revoke {
        client_id: String,
        #[command(flatten)]
        admin: AdminClientArgs,
        #[arg(long, env = "WARREN_DATABASE_URL", default_value_t = ServerConfig::default().database_url)]
        database_url: String,
    },
    /// Create or replace the admin token NAME (default "admin"), for the admin
    /// API; prints it as the last line.
    IssueAdmin {
        #[arg(default_value = "admin")]
        name: String,
        #[arg(long, env = "WARREN_DATABASE_URL", default_value_t = ServerConfig::default().database_url)]
        database_url: String,
    },
    /// Remove one client token of CLIENT_ID (the agent is open again once it has none).
    RevokeClient {
        client_id: String,
        /// The client token to revoke; read from standard input when absent.
        token: Option<String>,
        #[arg(long, env = "WARREN_DATABASE_URL", default_value_t = ServerConfig::default().database_url)]
        database_url: String,
    },
}

#[derive(Args)]
pub struct CertsArgs {
    #[arg(long, env = "WARREN_CERTS", default_value_os_t = ServerConfig::default().certs_dir)]
    pub certs: PathBuf,
    /// DNS names or IP addresses the certificate is valid for (repeatable).
    #[arg(long = "cert-name", env = "WARREN_CERT_NAMES", value_delimiter = ',', default_values_t = ServerConfig::default().cert_names)]
    pub cert_names: Vec<String>,
    /// Instead: create the cluster CA and node identity in --certs (for
    /// --cluster-tls; copy cluster-ca.pem, cluster.pem, cluster.key to every node).
    #[arg(long)]
    pub cluster: bool,
}

/// Flow-control and stream limits, shared by server and agent.
#[derive(Args)]
pub struct TuningArgs {
    /// Per-stream receive window (e.g. 2MiB). Raise for fast, high-latency links.
    #[arg(long, env = "WARREN_STREAM_WINDOW", default_value_t = Size(TransportTuning::default().stream_window))]
    stream_window: Size,
    /// Per-connection receive window across all streams.
    #[arg(long, env = "WARREN_CONNECTION_WINDOW", default_value_t = Size(TransportTuning::default().connection_window))]
    connection_window: Size,
    /// Most concurrent request streams per agent connection.
    #[arg(long, env = "WARREN_MAX_STREAMS", default_value_t = TransportTuning::default().max_streams)]
    max_streams: u32,
    /// Transport idle timeout: a backstop under the heartbeat.
    #[arg(long, env = "WARREN_IDLE_TIMEOUT", default_value_t = Human(TransportTuning::default().idle_timeout))]
    idle_timeout: Human,
    /// UDP socket buffer size.
    #[arg(long, env = "WARREN_UDP_BUFFER", default_value_t = Size(TransportTuning::default().udp_buffer as u64))]
    udp_buffer: Size,
    /// Least time between two QUIC stateless resets (paces how fast agents
    /// of a crashed and restarted server learn of it; server only).
    #[arg(long, env = "WARREN_RESET_INTERVAL", default_value_t = Human(TransportTuning::default().reset_interval))]
    reset_interval: Human,
}

impl TuningArgs {
    fn tuning(&self) -> TransportTuning {
        TransportTuning {
            stream_window: self.stream_window.0,
            connection_window: self.connection_window.0,
            max_streams: self.max_streams,
            idle_timeout: self.idle_timeout.0,
            udp_buffer: self.udp_buffer.0 as usize,
            reset_interval: self.reset_interval.0,
        }
    }
}

/// Limits of pass-through WebSockets (and, on the server, room members).
#[derive(Args)]
pub struct WsArgs {
    /// Largest WebSocket message, either way (larger: close 1009).
    #[arg(long, env = "WARREN_WS_MAX_MESSAGE", default_value_t = Size(WsLimits::default().max_message as u64))]
    ws_max_message: Size,
    /// Close pass-through WebSockets after this long without a message (1001).
    #[arg(long, env = "WARREN_WS_IDLE_TIMEOUT", default_value_t = Human(WsLimits::default().idle_timeout))]
    ws_idle_timeout: Human,
}

impl WsArgs {
    fn limits(&self) -> WsLimits {
        WsLimits {
            max_message: self.ws_max_message.0 as usize,
            idle_timeout: self.ws_idle_timeout.0,
        }
    }
}

/// How a command reaches a running server's admin API.
#[derive(Args)]
pub struct AdminClientArgs {
    /// The server's admin listener, e.g. http://127.0.0.1:9090.
    #[arg(long, env = "WARREN_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// An admin token (`warren token issue-admin`); prefer the environment variable.
    #[arg(long, env = "WARREN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

#[derive(Args)]
pub struct ServerArgs {
    /// A TOML file whose [server] table holds these flags' keys (flags and
    /// WARREN_* variables win over it); see deploy/warren.toml.
    #[arg(long, env = "WARREN_CONFIG")]
    config: Option<PathBuf>,
    /// Client API address: HTTPS with --api-tls-cert, else plain HTTP.
    #[arg(long, env = "WARREN_API_LISTEN", default_value_t = ServerConfig::default().api_listen)]
    api_listen: SocketAddr,
    /// HTTPS on the client API: a PEM certificate chain (leaf first). Repeat
    /// (with --api-tls-key) for more names: each client gets the first whose
    /// certificate covers the name it asks for (wildcards included), else the first.
    #[arg(long, env = "WARREN_API_TLS_CERT", value_delimiter = ',')]
    api_tls_cert: Vec<PathBuf>,
    /// The PEM private key of each --api-tls-cert, in the same order.
    #[arg(long, env = "WARREN_API_TLS_KEY", value_delimiter = ',')]
    api_tls_key: Vec<PathBuf>,
    /// How often the certificate files are checked for a change (a renewal
    /// is served from the next connection on; SIGHUP reloads at once).
    #[arg(long, env = "WARREN_API_TLS_RELOAD_CHECK", default_value_t = Human(ApiTlsConfig::new(Vec::new()).reload_check))]
    api_tls_reload_check: Human,
    /// With HTTPS on --api-listen: a plain-HTTP client listener as well.
    #[arg(long, env = "WARREN_API_PLAIN_LISTEN")]
    api_plain_listen: Option<SocketAddr>,
    /// The plain listener only redirects to HTTPS (308, same host and path).
    #[arg(long, env = "WARREN_API_PLAIN_REDIRECT", requires = "api_plain_listen")]
    api_plain_redirect: bool,
    /// HTTP/3 for clients on the UDP side of the HTTPS port (the same
    /// certificates), announced to HTTP/1.1 and HTTP/2 clients by Alt-Svc.
    #[arg(long, env = "WARREN_API_HTTP3")]
    api_http3: bool,
    /// Requests open at once on one HTTP/2 client connection.
    #[arg(long, env = "WARREN_H2_MAX_STREAMS", default_value_t = H2Limits::default().max_streams)]
    h2_max_streams: u32,
    /// Streams an HTTP/2 client may open and reset before they are served,
    /// at once; more (a rapid-reset flood) closes its connection with GOAWAY.
    #[arg(long, env = "WARREN_H2_MAX_PENDING_RESETS", default_value_t = H2Limits::default().max_pending_resets)]
    h2_max_pending_resets: usize,
    /// Tunnel address agents connect to: UDP for QUIC, TCP for WebSocket, same port.
    #[arg(long, env = "WARREN_TUNNEL_LISTEN", default_value_t = ServerConfig::default().tunnel_listen)]
    tunnel_listen: SocketAddr,
    /// sqlite://PATH (created if missing) or mysql://USER:PASS@HOST/DB.
    #[arg(long, env = "WARREN_DATABASE_URL", default_value_t = ServerConfig::default().database_url)]
    database_url: String,
    /// Directory with server.pem/server.key; a self-signed pair is generated if absent.
    #[arg(long, env = "WARREN_CERTS", default_value_os_t = ServerConfig::default().certs_dir)]
    certs: PathBuf,
    /// Names for a generated certificate (comma-separated or repeated).
    #[arg(long = "cert-name", env = "WARREN_CERT_NAMES", value_delimiter = ',', default_values_t = ServerConfig::default().cert_names)]
    cert_names: Vec<String>,
    /// This node's id in the registry.
    #[arg(long, env = "WARREN_NODE_ID", default_value_t = ServerConfig::default().node_id)]
    node_id: String,
    /// Route `<clientId>.<BASE>` hosts to agents.
    #[arg(long, env = "WARREN_BASE_DOMAIN")]
    base_domain: Option<String>,
    /// Ping interval on agent connections (a peer silent for 3 is dead).
    #[arg(long, env = "WARREN_HEARTBEAT", default_value_t = Human(ServerConfig::default().heartbeat))]
    heartbeat: Human,
    /// Largest response collected in blocking mode.
    #[arg(long, env = "WARREN_MAX_BLOCKING_BODY", default_value_t = Size(ServerConfig::default().max_blocking_body))]
    max_blocking_body: Size,
    /// Largest request or response head (roughly: all header bytes); larger: 431.
    #[arg(long, env = "WARREN_MAX_HEAD", default_value_t = Size(ServerConfig::default().max_head_frame as u64))]
    max_head: Size,
    /// Agent connections accepted in all.
    #[arg(long, env = "WARREN_MAX_AGENTS", default_value_t = ServerConfig::default().max_agents)]
    max_agents: usize,
    /// Agent connections accepted per client id.
    #[arg(long, env = "WARREN_MAX_CONNECTIONS_PER_CLIENT", default_value_t = ServerConfig::default().max_connections_per_client)]
    max_connections_per_client: usize,
    /// Concurrent client HTTP connections.
    #[arg(long, env = "WARREN_MAX_CLIENT_CONNECTIONS", default_value_t = ServerConfig::default().max_client_connections)]
    max_client_connections: usize,
    /// Requests one client address (an IPv6 /64) may have in flight to one
    /// agent at once (0: no limit); more are answered 429.
    #[arg(long, env = "WARREN_MAX_REQUESTS_PER_IP", default_value_t = ServerConfig::default().max_requests_per_ip)]
    max_requests_per_ip: usize,
    /// Connections each TCP listener lets wait for accept (capped by the
    /// kernel's net.core.somaxconn).
    #[arg(long, env = "WARREN_LISTEN_BACKLOG", default_value_t = ServerConfig::default().listen_backlog)]
    listen_backlog: u32,
    /// Time an agent has for its TLS/QUIC handshake plus its Hello.
    #[arg(long, env = "WARREN_HANDSHAKE_TIMEOUT", default_value_t = Human(ServerConfig::default().handshake_timeout))]
    handshake_timeout: Human,
    /// Time a request may wait for a stream when its agent is at its stream limit.
    #[arg(long, env = "WARREN_OPEN_STREAM_TIMEOUT", default_value_t = Human(ServerConfig::default().open_stream_timeout))]
    open_stream_timeout: Human,
    /// Time to wait for an agent's response head.
    #[arg(long, env = "WARREN_RESPONSE_TIMEOUT", default_value_t = Human(ServerConfig::default().response_timeout))]
    response_timeout: Human,
    /// A request unanswered this long makes the server ping its agent connection.
    #[arg(long, env = "WARREN_PROBE_AFTER", default_value_t = Human(ServerConfig::default().probe_after))]
    probe_after: Human,
    /// An agent that does not answer such a ping within this is dropped as dead.
    #[arg(long, env = "WARREN_PROBE_TIMEOUT", default_value_t = Human(ServerConfig::default().probe_timeout))]
    probe_timeout: Human,
    /// How long a request whose agent connection died waits for another one.
    #[arg(long, env = "WARREN_FAILOVER_WAIT", default_value_t = Human(ServerConfig::default().failover_wait))]
    failover_wait: Human,
    /// A streamed response with no bytes from the agent for this long is cut off (an error to the client).
    #[arg(long, env = "WARREN_BODY_IDLE_TIMEOUT", default_value_t = Human(ServerConfig::default().body_idle_timeout))]
    body_idle_timeout: Human,
    /// Time the registry has to admit an agent (token check and record); keep it under agents' --connect-timeout.
    #[arg(long, env = "WARREN_REGISTRY_TIMEOUT", default_value_t = Human(ServerConfig::default().registry_timeout))]
    registry_timeout: Human,
    /// On SIGTERM: how long requests in flight may take to finish.
    #[arg(long, env = "WARREN_DRAIN_GRACE", default_value_t = Human(ServerConfig::default().drain_grace))]
    drain_grace: Human,
    /// Time a client has to send its request headers.
    #[arg(long, env = "WARREN_HEADER_READ_TIMEOUT", default_value_t = Human(ServerConfig::default().header_read_timeout))]
    header_read_timeout: Human,
    #[command(flatten)]
    ws: WsArgs,
    /// Messages queued per room member; a member further behind is dropped (4008).
    #[arg(long, env = "WARREN_ROOM_MEMBER_QUEUE", default_value_t = RoomLimits::default().member_queue)]
    room_member_queue: usize,
    /// Time a member of a room that asks for credentials has to send them (else 4004).
    #[arg(long, env = "WARREN_ROOM_AUTH_TIMEOUT", default_value_t = Human(RoomLimits::default().auth_timeout))]
    room_auth_timeout: Human,
    /// Room members (across all rooms) per agent on this node.
    #[arg(long, env = "WARREN_MAX_ROOM_MEMBERS", default_value_t = RoomLimits::default().max_members_per_agent)]
    max_room_members: usize,
    /// Members of one room on this node.
    #[arg(long, env = "WARREN_MAX_ROOM_SIZE", default_value_t = RoomLimits::default().max_members_per_room)]
    max_room_size: usize,
    /// Agent peers between connecting and a checked Hello, at once (more are turned away).
    #[arg(long, env = "WARREN_MAX_PENDING_AGENTS", default_value_t = GateLimits::default().max_pending)]
    max_pending_agents: usize,
    /// How long the next agent peer waits for a pending place before it is
    /// turned away.
    #[arg(long, env = "WARREN_PENDING_WAIT", default_value_t = Human(GateLimits::default().pending_wait))]
    pending_wait: Human,
    /// Failed agent authentications an address may have in a burst before it is turned away.
    #[arg(long, env = "WARREN_AUTH_FAILURE_BURST", default_value_t = GateLimits::default().failure_burst)]
    auth_failure_burst: u32,
    /// One more failed authentication is allowed per this much time, per address.
    #[arg(long, env = "WARREN_AUTH_FAILURE_REFILL", default_value_t = Human(GateLimits::default().failure_refill))]
    auth_failure_refill: Human,
    /// Run as a cluster node: other nodes forward requests for agents held here
    /// to this address. Needs --node-id, --cluster-secret and a shared MySQL.
    #[arg(long, env = "WARREN_CLUSTER_LISTEN")]
    cluster_listen: Option<SocketAddr>,
    /// HOST:PORT other nodes use to reach --cluster-listen (default: that address).
    #[arg(long, env = "WARREN_CLUSTER_ADVERTISE")]
    cluster_advertise: Option<String>,
    /// Secret shared by all nodes (16+ characters); guards the internal link.
    #[arg(long, env = "WARREN_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// A node silent for this long is dead: others stop routing to it and remove its rows.
    #[arg(long, env = "WARREN_NODE_LEASE", default_value_t = Human(cluster_defaults().lease))]
    node_lease: Human,
    /// Directory with the cluster CA and node identity (`warren certs --cluster`):
    /// mutual TLS between nodes. Without it the link is plain HTTP + secret.
    #[arg(long, env = "WARREN_CLUSTER_TLS")]
    cluster_tls: Option<PathBuf>,
    /// How long a client-id → node lookup is cached.
    #[arg(long, env = "WARREN_ROUTE_CACHE_TTL", default_value_t = Human(cluster_defaults().route_ttl))]
    route_cache_ttl: Human,
    /// Admin listener: /metrics, /healthz, /readyz and the admin API (off
    /// unless set; keep it on loopback or a private network).
    #[arg(long, env = "WARREN_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Agents given metric series of their own (the busiest by bytes; 0: none).
    #[arg(long, env = "WARREN_METRICS_TOP_AGENTS", default_value_t = ServerConfig::default().metrics_top_agents)]
    metrics_top_agents: usize,
    /// The client API as the internet reaches it (e.g. https://tunnel.example.com):
    /// the address agents are told to show. Default: the API's own address.
    #[arg(long, env = "WARREN_PUBLIC_URL")]
    public_url: Option<String>,
    /// How often the server checks that its agents' tokens still exist: a token
    /// revoked in the database alone cuts its agent off within this.
    #[arg(long, env = "WARREN_REVOCATION_CHECK", default_value_t = Human(ServerConfig::default().revocation_check))]
    revocation_check: Human,
    /// Log one line per client request (method, path, status, bytes, duration, transport).
    #[arg(long, env = "WARREN_ACCESS_LOG")]
    access_log: bool,
    #[command(flatten)]
    tuning: TuningArgs,
}

/// The cluster settings' defaults (the listen address and secret are placeholders).
fn cluster_defaults() -> ClusterConfig {
    ClusterConfig::new(SocketAddr::from(([0, 0, 0, 0], 0)), "")
}

impl ServerArgs {
    pub fn config(self) -> anyhow::Result<ServerConfig> {
        let cluster = match self.cluster_listen {
            None => None,
            Some(listen) => {
                if self.node_id == ServerConfig::default().node_id {
                    anyhow::bail!("a cluster node needs a unique --node-id");
                }
                if self.database_url.starts_with("sqlite:") {
                    anyhow::bail!(
                        "cluster nodes must share a MySQL/MariaDB registry (--database-url mysql://…)"
                    );
                }
                Some(ClusterConfig {
                    advertise: self.cluster_advertise.clone(),
                    lease: self.node_lease.0,
                    route_ttl: self.route_cache_ttl.0,
                    tls_dir: self.cluster_tls.clone(),
                    ..ClusterConfig::new(listen, self.cluster_secret.as_deref().unwrap_or(""))
                })
            }
        };
        if self.api_tls_cert.len() != self.api_tls_key.len() {
            anyhow::bail!(
                "--api-tls-cert and --api-tls-key come in pairs: {} certificate(s), {} key(s)",
                self.api_tls_cert.len(),
                self.api_tls_key.len()
            );
        }
        let api_tls = (!self.api_tls_cert.is_empty()).then(|| ApiTlsConfig {
            pairs: self
                .api_tls_cert
                .iter()
                .zip(&self.api_tls_key)
                .map(|(cert, key)| CertPair {
                    cert: cert.clone(),
                    key: key.clone(),
                })
                .collect(),
            reload_check: self
                .api_tls_reload_check
                .0
                .max(std::time::Duration::from_millis(100)),
        });
        Ok(ServerConfig {
            cluster,
            api_listen: self.api_listen,
            api_tls,
            api_plain_listen: self.api_plain_listen,
            api_plain_redirect: self.api_plain_redirect,
            api_http3: self.api_http3,
            h2: H2Limits {
                max_streams: self.h2_max_streams.max(1),
                max_pending_resets: self.h2_max_pending_resets,
                ..H2Limits::default()
            },
            tunnel_listen: self.tunnel_listen,
            database_url: self.database_url,
            certs_dir: self.certs,
            cert_names: self.cert_names,
            node_id: self.node_id,
            base_domain: self.base_domain,
            heartbeat: self.heartbeat.0,
            max_blocking_body: self.max_blocking_body.0,
            max_head_frame: self.max_head.0 as usize,
            max_agents: self.max_agents,
            max_connections_per_client: self.max_connections_per_client,
            max_client_connections: self.max_client_connections,
            max_requests_per_ip: self.max_requests_per_ip,
            listen_backlog: self.listen_backlog,
            handshake_timeout: self.handshake_timeout.0,
            open_stream_timeout: self.open_stream_timeout.0,
            response_timeout: self.response_timeout.0,
            header_read_timeout: self.header_read_timeout.0,
            body_idle_timeout: self.body_idle_timeout.0,
            registry_timeout: self.registry_timeout.0,
            drain_grace: self.drain_grace.0,
            probe_after: self.probe_after.0,
            probe_timeout: self.probe_timeout.0,
            failover_wait: self.failover_wait.0,
            tuning: self.tuning.tuning(),
            ws: self.ws.limits(),
            rooms: RoomLimits {
                member_queue: self.room_member_queue.max(1),
                auth_timeout: self.room_auth_timeout.0,
                max_members_per_agent: self.max_room_members,
                max_members_per_room: self.max_room_size,
            },
            gate: GateLimits {
                max_pending: self.max_pending_agents,
                pending_wait: self.pending_wait.0,
                failure_burst: self.auth_failure_burst,
                failure_refill: self.auth_failure_refill.0,
            },
            admin_listen: self.admin_listen,
            metrics_top_agents: self.metrics_top_agents,
            access_log: self.access_log,
            public_url: self.public_url,
            revocation_check: self
                .revocation_check
                .0
                .max(std::time::Duration::from_millis(100)),
        })
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TransportArg {
    Auto,
    Quic,
    Ws,
}

impl From<TransportArg> for TransportChoice {
    fn from(arg: TransportArg) -> Self {
        match arg {
            TransportArg::Auto => TransportChoice::Auto,
            TransportArg::Quic => TransportChoice::Quic,
            TransportArg::Ws => TransportChoice::Ws,
        }
    }
}

/// `AgentConfig`'s defaults (the identity and addresses are placeholders).
fn agent_defaults() -> AgentConfig {
    AgentConfig::new("", "", "", "", Trust::System)
}

#[derive(Args)]
pub struct AgentArgs {
    /// A TOML file whose [agent] table holds these flags' keys (flags and
    /// WARREN_* variables win over it); see deploy/warren.toml.
    #[arg(long, env = "WARREN_CONFIG")]
    config: Option<PathBuf>,
    /// The server's tunnel address, HOST:PORT. Repeat (or separate with commas)
    /// for the nodes of a cluster.
    #[arg(long, env = "WARREN_SERVER", value_delimiter = ',', required = true)]
    server: Vec<String>,
    /// Connections to keep at once, each to a different node where possible.
    #[arg(long, env = "WARREN_CONNECTIONS", default_value_t = agent_defaults().connections)]
    connections: usize,
    #[arg(long, env = "WARREN_CLIENT_ID")]
    client_id: String,
    /// The agent's token. Prefer WARREN_TOKEN or --token-file: a flag is visible in the process list.
    #[arg(
        long,
        env = "WARREN_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file",
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// A file holding the agent's token (its first line; e.g. a systemd credential or a mounted secret).
    #[arg(long, env = "WARREN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The local service, e.g. http://127.0.0.1:8000 (or https://…, checked
    /// against the system's roots and --upstream-ca).
    #[arg(long, env = "WARREN_UPSTREAM")]
    upstream: String,
    /// PEM certificates to trust for an https:// upstream besides the
    /// system's: a private CA, or the service's self-signed certificate.
    #[arg(long, env = "WARREN_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    /// Speak HTTP/2 to the local service: prior knowledge (h2c) for http://,
    /// for gRPC services and others that speak nothing else; over https://
    /// only h2 is offered. Without it, an https:// service gets HTTP/2 when it
    /// offers it (ALPN), an http:// one HTTP/1.1.
    #[arg(long, env = "WARREN_UPSTREAM_HTTP2")]
    upstream_http2: bool,
    #[arg(long, env = "WARREN_TRANSPORT", value_enum, default_value = "auto")]
    transport: TransportArg,
    /// PEM file of CA certificates, or the server's own self-signed certificate.
    #[arg(long, env = "WARREN_CA", conflicts_with = "fingerprint")]
    ca: Option<PathBuf>,
    /// SHA-256 fingerprint of the server's certificate (hex, colons allowed).
    #[arg(long, env = "WARREN_FINGERPRINT")]
    fingerprint: Option<String>,
    /// TLS name to verify instead of the --server host.
    #[arg(long, env = "WARREN_SERVER_NAME")]
    server_name: Option<String>,
    /// Time allowed to connect and be welcomed.
    #[arg(long, env = "WARREN_CONNECT_TIMEOUT", default_value_t = Human(agent_defaults().connect_timeout))]
    connect_timeout: Human,
    /// Time the local service has to connect.
    #[arg(long, env = "WARREN_UPSTREAM_CONNECT_TIMEOUT", default_value_t = Human(agent_defaults().upstream.connect_timeout))]
    upstream_connect_timeout: Human,
    /// Time the local service has to send its response head.
    #[arg(long, env = "WARREN_UPSTREAM_TIMEOUT", default_value_t = Human(agent_defaults().upstream.response_timeout))]
    upstream_timeout: Human,
    /// A request body from the server that stalls this long is cut off.
    #[arg(long, env = "WARREN_BODY_IDLE_TIMEOUT", default_value_t = Human(agent_defaults().upstream.body_idle_timeout))]
    body_idle_timeout: Human,
    /// Idle keep-alive connections kept open to the local service.
    #[arg(long, env = "WARREN_UPSTREAM_MAX_IDLE", default_value_t = agent_defaults().upstream.max_idle)]
    upstream_max_idle: usize,
    /// Send the client's Host header to the local service instead of its own.
    #[arg(long, env = "WARREN_PRESERVE_HOST")]
    preserve_host: bool,
    #[command(flatten)]
    ws: WsArgs,
    /// In auto mode, how long QUIC runs alone before WebSocket joins the race.
    #[arg(long, env = "WARREN_WS_HEAD_START", default_value_t = Human(agent_defaults().ws_head_start))]
    ws_head_start: Human,
    /// While on WebSocket in auto mode, how often QUIC is tried again.
    #[arg(long, env = "WARREN_QUIC_PROBE_INTERVAL", default_value_t = Human(agent_defaults().quic_probe_interval))]
    quic_probe_interval: Human,
    /// After moving to QUIC, how long requests in flight on WebSocket may take to finish.
    #[arg(long, env = "WARREN_MIGRATE_DRAIN", default_value_t = Human(agent_defaults().migrate_drain))]
    migrate_drain: Human,
    /// When the server goes away or the agent stops: how long requests in flight may take to finish.
    #[arg(long, env = "WARREN_DRAIN_GRACE", default_value_t = Human(agent_defaults().drain_grace))]
    drain_grace: Human,
    /// The rooms backend: a local WebSocket speaking warren's room envelope
    /// (see proto/PROTOCOL.md), e.g. ws://127.0.0.1:9000/rooms.
    #[arg(long, env = "WARREN_ROOMS_UPSTREAM")]
    rooms_upstream: Option<String>,
    /// Rooms want the client's first message as credentials, accepted or refused by the backend.
    #[arg(long, env = "WARREN_ROOMS_AUTH")]
    rooms_auth: bool,
    /// Shortest wait before reconnecting (it doubles, with jitter, up to --backoff-max).
    #[arg(long, env = "WARREN_BACKOFF_MIN", default_value_t = Human(agent_defaults().backoff_min))]
    backoff_min: Human,
    /// Longest wait between reconnection attempts.
    #[arg(long, env = "WARREN_BACKOFF_MAX", default_value_t = Human(agent_defaults().backoff_max))]
    backoff_max: Human,
    /// Admin listener: /metrics, /healthz and /readyz (off unless set; keep it on loopback).
    #[arg(long, env = "WARREN_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    #[command(flatten)]
    tuning: TuningArgs,
}

impl AgentArgs {
    /// The token, from the flag or environment, or from `--token-file`.
    fn token(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let path = self
            .token_file
            .as_ref()
            .expect("clap requires one of the two");
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim();
        anyhow::ensure!(
            !token.is_empty(),
            "the token file {} is empty",
            path.display()
        );
        Ok(token.to_string())
    }

    pub fn config(self) -> anyhow::Result<AgentConfig> {
        let token = self.token()?;
        let trust = match (self.ca, self.fingerprint) {
            (Some(ca), _) => Trust::CaFile(ca),
            (None, Some(fp)) => Trust::Fingerprint(fp),
            (None, None) => Trust::System,
        };
        let base = AgentConfig::new(
            &self.server[0],
            &self.client_id,
            &token,
            &self.upstream,
            trust,
        );
        Ok(AgentConfig {
            servers: self.server,
            connections: self.connections,
            server_name: self.server_name,
            transport: self.transport.into(),
            upstream: UpstreamConfig {
                url: self.upstream,
                connect_timeout: self.upstream_connect_timeout.0,
                response_timeout: self.upstream_timeout.0,
                preserve_host: self.preserve_host,
                ws: self.ws.limits(),
                body_idle_timeout: self.body_idle_timeout.0,
                max_idle: self.upstream_max_idle,
                ca: self.upstream_ca,
                http2: self.upstream_http2,
            },
            tuning: self.tuning.tuning(),
            connect_timeout: self.connect_timeout.0,
            backoff_min: self.backoff_min.0,
            backoff_max: self.backoff_max.0,
            ws_head_start: self.ws_head_start.0,
            quic_probe_interval: self.quic_probe_interval.0,
            migrate_drain: self.migrate_drain.0,
            drain_grace: self.drain_grace.0,
            rooms: self
                .rooms_upstream
                .map(warren::agent::rooms::RoomsBackend::WebSocket),
            rooms_auth: self.rooms_auth,
            admin_listen: self.admin_listen,
            ..base
        })
    }
}

/// `"250ms"` → (`"250ms"`, `"250"`, `"ms"`): the trimmed text, its leading
/// number (digits and dots; the caller's parse rejects what it cannot use) and
/// the unit after it.
fn number_and_unit(text: &str) -> (&str, &str, &str) {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    (text, number, unit.trim())
}

/// A duration on the command line: `250ms`, `10s`, `2m`, `1h`, or a bare
/// number of seconds; shown the same way in `--help`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Human(pub Duration);

impl FromStr for Human {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (text, number, unit) = number_and_unit(text);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration like 250ms, 10s, 2m"))?;
        let seconds = match unit {
            "ms" => value / 1000.0,
            "" | "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            other => {
                return Err(format!(
                    "unknown duration unit {other:?}; use ms, s, m or h"
                ))
            }
        };
        Duration::try_from_secs_f64(seconds)
            .map(Human)
            .map_err(|_| format!("{text:?} is not a usable duration"))
    }
}

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            _ if ms % 1000 != 0 => write!(f, "{ms}ms"),
            _ if ms != 0 && ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            _ if ms != 0 && ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            _ => write!(f, "{}s", ms / 1000),
        }
    }
}

/// A size on the command line: `64MiB`, `512KiB`, `1GiB`, `10MB`, or a bare
/// number of bytes; shown in the largest binary unit that divides it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (text, number, unit) = number_and_unit(text);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size like 64MiB or 512KiB"))?;
        let scale: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            other => return Err(format!("unknown size unit {other:?}; use KiB, MiB, GiB")),
        };
        value
            .checked_mul(scale)
            .map(Size)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, scale) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n != 0 && n % scale == 0 {
                return write!(f, "{}{unit}", n / scale);
            }
        }
        write!(f, "{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_and_print_back() {
        assert_eq!(
            "250ms".parse::<Human>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("10".parse::<Human>().unwrap().0, Duration::from_secs(10));
        assert_eq!("2m".parse::<Human>().unwrap().0, Duration::from_secs(120));
        assert!("ten".parse::<Human>().is_err());
        assert!("-1s".parse::<Human>().is_err());
        assert_eq!("64MiB".parse::<Size>().unwrap().0, 64 << 20);
        assert_eq!("1000".parse::<Size>().unwrap().0, 1000);
        assert!("3XB".parse::<Size>().is_err());
        for text in ["250ms", "10s", "5m", "1h", "0s", "1500ms"] {
            assert_eq!(text.parse::<Human>().unwrap().to_string(), text);
        }
        for text in ["2MiB", "64MiB", "1GiB", "16KiB", "1000"] {
            assert_eq!(text.parse::<Size>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// The flags' defaults are the library's: parsing no flags gives back the
    /// `Default` configurations exactly.
    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let cli = Cli::try_parse_from(["warren", "server"]).unwrap();
        let Command::Server(args) = cli.command else {
            panic!("server")
        };
        let parsed = format!("{:?}", args.config().unwrap());
        assert_eq!(parsed, format!("{:?}", ServerConfig::default()));

        let cli = Cli::try_parse_from([
            "warren",
            "agent",
            "--server",
            "h:1",
            "--client-id",
            "c",
            "--token",
            "t",
            "--upstream",
            "http://u:1",
        ])
        .unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("agent")
        };
        let parsed = format!("{:?}", args.config().unwrap());
        let expected = AgentConfig::new("h:1", "c", "t", "http://u:1", Trust::System);
        assert_eq!(parsed, format!("{expected:?}"));
    }
}
