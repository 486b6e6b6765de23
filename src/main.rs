//! The `warren` command: server, agent, token and certificate management, and a
//! one-command demo. Every flag can also be set as a `WARREN_…` environment
//! variable. Errors end here, as `anyhow` reports with a non-zero exit code.

mod demo;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use warren::{
    agent::{Agent, AgentConfig, AgentError, TransportChoice, UpstreamConfig},
    auth,
    registry::Registry,
    server::{ClusterConfig, Server, ServerConfig},
    shutdown,
    tls::{ServerIdentity, Trust},
    transport::TransportTuning,
};

#[derive(Parser)]
#[command(
    name = "warren",
    version,
    about = "A reverse tunnel over QUIC: expose a service behind NAT through a public server."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        #[arg(long, env = "WARREN_UPSTREAM_LISTEN", default_value = "127.0.0.1:8000")]
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
    /// Run server, agent and a sample service on loopback, and print URLs to try.
    Demo {
        /// Where the demo's client API listens.
        #[arg(long, env = "WARREN_API_LISTEN", default_value = "127.0.0.1:8080")]
        api_listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create or rotate CLIENT_ID's token; prints it as the last line of stdout.
    Issue {
        client_id: String,
        #[arg(
            long,
            env = "WARREN_DATABASE_URL",
            default_value = "sqlite://warren.db"
        )]
        database_url: String,
    },
}

#[derive(Args)]
struct CertsArgs {
    #[arg(long, env = "WARREN_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// DNS names or IP addresses the certificate is valid for (repeatable).
    #[arg(long = "cert-name", env = "WARREN_CERT_NAMES", value_delimiter = ',', default_values_t = default_cert_names())]
    cert_names: Vec<String>,
}

fn default_cert_names() -> Vec<String> {
    ServerConfig::default().cert_names
}

/// Flow-control and stream limits, shared by server and agent.
#[derive(Args)]
struct TuningArgs {
    /// Per-stream receive window (e.g. 2MiB). Raise for fast, high-latency links.
    #[arg(long, env = "WARREN_STREAM_WINDOW", value_parser = parse_size, default_value = "2MiB")]
    stream_window: u64,
    /// Per-connection receive window across all streams.
    #[arg(long, env = "WARREN_CONNECTION_WINDOW", value_parser = parse_size, default_value = "64MiB")]
    connection_window: u64,
    /// Most concurrent request streams per agent connection.
    #[arg(long, env = "WARREN_MAX_STREAMS", default_value_t = 1024)]
    max_streams: u32,
    /// UDP socket buffer size.
    #[arg(long, env = "WARREN_UDP_BUFFER", value_parser = parse_size, default_value = "4MiB")]
    udp_buffer: u64,
}

impl TuningArgs {
    fn tuning(&self) -> TransportTuning {
        TransportTuning {
            stream_window: self.stream_window,
            connection_window: self.connection_window,
            max_streams: self.max_streams,
            udp_buffer: self.udp_buffer as usize,
            ..TransportTuning::default()
        }
    }
}

#[derive(Args)]
struct ServerArgs {
    /// Plain-HTTP client API address.
    #[arg(long, env = "WARREN_API_LISTEN", default_value = "127.0.0.1:8080")]
    api_listen: SocketAddr,
    /// Tunnel address agents connect to: UDP for QUIC, TCP for WebSocket, same port.
    #[arg(long, env = "WARREN_TUNNEL_LISTEN", default_value = "0.0.0.0:7443")]
    tunnel_listen: SocketAddr,
    /// sqlite://PATH (created if missing) or mysql://USER:PASS@HOST/DB.
    #[arg(
        long,
        env = "WARREN_DATABASE_URL",
        default_value = "sqlite://warren.db"
    )]
    database_url: String,
    /// Directory with server.pem/server.key; a self-signed pair is generated if absent.
    #[arg(long, env = "WARREN_CERTS", default_value = "certs")]
    certs: PathBuf,
    /// Names for a generated certificate (comma-separated or repeated).
    #[arg(long = "cert-name", env = "WARREN_CERT_NAMES", value_delimiter = ',', default_values_t = default_cert_names())]
    cert_names: Vec<String>,
    /// This node's id in the registry.
    #[arg(long, env = "WARREN_NODE_ID", default_value = "local")]
    node_id: String,
    /// Route `<clientId>.<BASE>` hosts to agents.
    #[arg(long, env = "WARREN_BASE_DOMAIN")]
    base_domain: Option<String>,
    /// Ping interval on agent connections (a peer silent for 3 is dead).
    #[arg(long, env = "WARREN_HEARTBEAT", value_parser = parse_duration, default_value = "10s")]
    heartbeat: Duration,
    /// Largest response collected in blocking mode.
    #[arg(long, env = "WARREN_MAX_BLOCKING_BODY", value_parser = parse_size, default_value = "64MiB")]
    max_blocking_body: u64,
    /// Agent connections accepted in all.
    #[arg(long, env = "WARREN_MAX_AGENTS", default_value_t = 10_000)]
    max_agents: usize,
    /// Agent connections accepted per client id.
    #[arg(long, env = "WARREN_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 8)]
    max_connections_per_client: usize,
    /// Concurrent client HTTP connections.
    #[arg(long, env = "WARREN_MAX_CLIENT_CONNECTIONS", default_value_t = 10_000)]
    max_client_connections: usize,
    /// Time to wait for an agent's response head.
    #[arg(long, env = "WARREN_RESPONSE_TIMEOUT", value_parser = parse_duration, default_value = "120s")]
    response_timeout: Duration,
    /// Time a client has to send its request headers.
    #[arg(long, env = "WARREN_HEADER_READ_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    header_read_timeout: Duration,
    /// Largest WebSocket message (pass-through and rooms), either way.
    #[arg(long, env = "WARREN_WS_MAX_MESSAGE", value_parser = parse_size, default_value = "16MiB")]
    ws_max_message: u64,
    /// Close pass-through WebSockets after this long without a message.
    #[arg(long, env = "WARREN_WS_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "5m")]
    ws_idle_timeout: Duration,
    /// Messages queued per room member; a member further behind is dropped (4008).
    #[arg(long, env = "WARREN_ROOM_MEMBER_QUEUE", default_value_t = 256)]
    room_member_queue: usize,
    /// Time a member of a room that asks for credentials has to send them (else 4004).
    #[arg(long, env = "WARREN_ROOM_AUTH_TIMEOUT", value_parser = parse_duration, default_value = "20s")]
    room_auth_timeout: Duration,
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
    #[arg(long, env = "WARREN_NODE_LEASE", value_parser = parse_duration, default_value = "30s")]
    node_lease: Duration,
    /// How long a client-id → node lookup is cached.
    #[arg(long, env = "WARREN_ROUTE_CACHE_TTL", value_parser = parse_duration, default_value = "2s")]
    route_cache_ttl: Duration,
    #[command(flatten)]
    tuning: TuningArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum TransportArg {
    Auto,
    Quic,
    Ws,
}

#[derive(Args)]
struct AgentArgs {
    /// The server's tunnel address, HOST:PORT. Repeat (or separate with commas)
    /// for the nodes of a cluster.
    #[arg(long, env = "WARREN_SERVER", value_delimiter = ',', required = true)]
    server: Vec<String>,
    /// Connections to keep at once, each to a different node where possible.
    #[arg(long, env = "WARREN_CONNECTIONS", default_value_t = 1)]
    connections: usize,
    #[arg(long, env = "WARREN_CLIENT_ID")]
    client_id: String,
    #[arg(long, env = "WARREN_TOKEN", hide_env_values = true)]
    token: String,
    /// The local service, e.g. http://127.0.0.1:8000.
    #[arg(long, env = "WARREN_UPSTREAM")]
    upstream: String,
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
    #[arg(long, env = "WARREN_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    connect_timeout: Duration,
    /// Time the local service has to connect.
    #[arg(long, env = "WARREN_UPSTREAM_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    upstream_connect_timeout: Duration,
    /// Time the local service has to send its response head.
    #[arg(long, env = "WARREN_UPSTREAM_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    upstream_timeout: Duration,
    /// Send the client's Host header to the local service instead of its own.
    #[arg(long, env = "WARREN_PRESERVE_HOST")]
    preserve_host: bool,
    /// In auto mode, how long QUIC runs alone before WebSocket joins the race.
    #[arg(long, env = "WARREN_WS_HEAD_START", value_parser = parse_duration, default_value = "250ms")]
    ws_head_start: Duration,
    /// While on WebSocket in auto mode, how often QUIC is tried again.
    #[arg(long, env = "WARREN_QUIC_PROBE_INTERVAL", value_parser = parse_duration, default_value = "60s")]
    quic_probe_interval: Duration,
    /// The rooms backend: a local WebSocket speaking warren's room envelope
    /// (see proto/PROTOCOL.md), e.g. ws://127.0.0.1:9000/rooms.
    #[arg(long, env = "WARREN_ROOMS_UPSTREAM")]
    rooms_upstream: Option<String>,
    /// Rooms want the client's first message as credentials, accepted or refused by the backend.
    #[arg(long, env = "WARREN_ROOMS_AUTH")]
    rooms_auth: bool,
    /// Longest wait between reconnection attempts.
    #[arg(long, env = "WARREN_BACKOFF_MAX", value_parser = parse_duration, default_value = "30s")]
    backoff_max: Duration,
    #[command(flatten)]
    tuning: TuningArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // 2: refused for good (bad token, unknown client): retrying won't help.
            if matches!(
                e.downcast_ref::<AgentError>(),
                Some(AgentError::Refused { .. })
            ) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Server(args) => server(args).await,
        Command::Agent(args) => agent(args).await,
        Command::Token {
            command:
                TokenCommand::Issue {
                    client_id,
                    database_url,
                },
        } => {
            let registry = Registry::open(&database_url).await?;
            let token = auth::issue_token(&registry, &client_id).await?;
            registry.close().await;
            println!("Token for client id {client_id:?} (shown once; only its hash is stored):");
            println!("{token}");
            Ok(())
        }
        Command::Certs(args) => {
            let identity = ServerIdentity::load_or_generate(&args.certs, &args.cert_names)?;
            let verb = if identity.generated {
                "generated"
            } else {
                "found"
            };
            println!("{verb} {}", args.certs.join("server.pem").display());
            println!("sha256 fingerprint: {}", identity.fingerprint());
            Ok(())
        }
        Command::Upstream { listen } => {
            let upstream = warren::sample::SampleUpstream::spawn(listen).await?;
            println!("listening on {}", upstream.addr());
            wait_for_signal().await;
            Ok(())
        }
        Command::Bench { quick, out } => {
            let warren = std::env::current_exe().context("locating the warren binary")?;
            warren::bench::run(warren::bench::BenchOptions { quick, out, warren }).await?;
            Ok(())
        }
        Command::BenchRaw { listen, certs } => Ok(warren::bench::raw_server(listen, &certs).await?),
        Command::BenchIdleAgents {
            server,
            fingerprint,
            client_id,
            token,
            transport,
            count,
        } => {
            let mut config = AgentConfig::new(
                &server,
                &client_id,
                &token,
                "http://127.0.0.1:9",
                Trust::Fingerprint(fingerprint),
            );
            config.transport = transport_choice(transport);
            Ok(warren::bench::idle_agents(config, count).await?)
        }
        Command::Demo { api_listen } => {
            let (trigger, stop) = shutdown::channel();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                trigger.fire();
            });
            demo::run(api_listen, stop, |api| {
                let id = demo::DEMO_CLIENT_ID;
                println!(
                    "warren demo: server, agent and a sample service are running on loopback."
                );
                println!("Try:");
                println!("  curl 'http://{api}/?clientId={id}'");
                println!("  curl -H 'X-Warren-Client: {id}' http://{api}/headers");
                println!("  curl -o /dev/null 'http://{api}/bytes/104857600?clientId={id}'");
                println!("  curl -i 'http://{api}/bytes/1000?clientId={id}&mode=blocking'");
                println!("Press Ctrl-C to stop.");
            })
            .await
        }
    }
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let cluster = match args.cluster_listen {
        None => None,
        Some(listen) => {
            if args.node_id == "local" {
                anyhow::bail!("a cluster node needs a unique --node-id");
            }
            if args.database_url.starts_with("sqlite:") {
                anyhow::bail!(
                    "cluster nodes must share a MySQL/MariaDB registry (--database-url mysql://…)"
                );
            }
            Some(ClusterConfig {
                advertise: args.cluster_advertise.clone(),
                lease: args.node_lease,
                route_ttl: args.route_cache_ttl,
                ..ClusterConfig::new(listen, args.cluster_secret.as_deref().unwrap_or(""))
            })
        }
    };
    let config = ServerConfig {
        cluster,
        api_listen: args.api_listen,
        tunnel_listen: args.tunnel_listen,
        database_url: args.database_url,
        certs_dir: args.certs,
        cert_names: args.cert_names,
        node_id: args.node_id,
        base_domain: args.base_domain,
        heartbeat: args.heartbeat,
        max_blocking_body: args.max_blocking_body,
        max_agents: args.max_agents,
        max_connections_per_client: args.max_connections_per_client,
        max_client_connections: args.max_client_connections,
        response_timeout: args.response_timeout,
        header_read_timeout: args.header_read_timeout,
        tuning: args.tuning.tuning(),
        ws: warren::websocket::WsLimits {
            max_message: args.ws_max_message as usize,
            idle_timeout: args.ws_idle_timeout,
        },
        rooms: warren::server::RoomLimits {
            member_queue: args.room_member_queue.max(1),
            auth_timeout: args.room_auth_timeout,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let server = Server::bind(config).await.context("starting the server")?;
    let identity = server.identity();
    if identity.generated {
        println!("generated a self-signed certificate; agents can pin it with --fingerprint");
    }
    println!("certificate sha256 fingerprint: {}", identity.fingerprint());
    println!("client API on http://{}", server.api_addr());
    println!(
        "tunnel on {} (QUIC on UDP, WebSocket on TCP)",
        server.tunnel_addr()
    );
    if let Some(addr) = server.cluster_addr() {
        println!("cluster link on {addr}");
    }
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        trigger.fire();
    });
    server.run(stop).await?;
    Ok(())
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let trust = match (args.ca, args.fingerprint) {
        (Some(ca), _) => Trust::CaFile(ca),
        (None, Some(fp)) => Trust::Fingerprint(fp),
        (None, None) => Trust::System,
    };
    let config = AgentConfig {
        servers: args.server.clone(),
        connections: args.connections,
        server_name: args.server_name,
        transport: transport_choice(args.transport),
        upstream: UpstreamConfig {
            url: args.upstream.clone(),
            connect_timeout: args.upstream_connect_timeout,
            response_timeout: args.upstream_timeout,
            preserve_host: args.preserve_host,
        },
        tuning: args.tuning.tuning(),
        connect_timeout: args.connect_timeout,
        backoff_max: args.backoff_max,
        ws_head_start: args.ws_head_start,
        quic_probe_interval: args.quic_probe_interval,
        rooms: args
            .rooms_upstream
            .clone()
            .map(warren::agent::rooms::RoomsBackend::WebSocket),
        rooms_auth: args.rooms_auth,
        ..AgentConfig::new(
            &args.server[0],
            &args.client_id,
            &args.token,
            &args.upstream,
            trust,
        )
    };
    let agent = Agent::new(config)?;
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        trigger.fire();
    });
    agent.run(stop).await?;
    Ok(())
}

fn transport_choice(arg: TransportArg) -> TransportChoice {
    match arg {
        TransportArg::Auto => TransportChoice::Auto,
        TransportArg::Quic => TransportChoice::Quic,
        TransportArg::Ws => TransportChoice::Ws,
    }
}

/// Ctrl-C or SIGTERM (what systemd and docker send).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `250ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 10s, 2m"))?;
    let seconds = match unit.trim() {
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
    Ok(Duration::from_secs_f64(seconds))
}

/// `64MiB`, `512KiB`, `1GiB`, `10MB`, or a bare number of bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 64MiB or 512KiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
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
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("3XB").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
