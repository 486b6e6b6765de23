//! The `warren` command: server, agent, token and certificate management, and a
//! one-command demo. Every flag can also be set as a `WARREN_…` environment
//! variable. Errors end here, as `anyhow` reports with a non-zero exit code.

mod cli;
mod config_file;
mod demo;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use cli::{AdminClientArgs, AgentArgs, Cli, Command, LogFormat, ServerArgs, TokenCommand};
use warren::{
    admin::client as admin_client,
    agent::{Agent, AgentConfig, AgentError},
    auth,
    registry::Registry,
    server::Server,
    shutdown,
    tls::{ServerIdentity, Trust},
};

fn main() -> ExitCode {
    warren::memory::tune_allocator();
    // The config file's keys become flags before the command line is parsed.
    let argv = match config_file::expand(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(argv);
    let logs = match Logs::init(&cli.log, cli.log_format) {
        Ok(logs) => logs,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    match runtime.block_on(run(cli.command, logs)) {
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

async fn run(command: Command, logs: Logs) -> anyhow::Result<()> {
    // WARREN_CHECK_ARGS=1: parse and validate the command line and build the
    // configuration it describes, then stop without running (how the deploy
    // files are checked against the real CLI).
    if std::env::var_os("WARREN_CHECK_ARGS").is_some() {
        match command {
            Command::Server(args) => drop(args.config()?),
            Command::Agent(args) => drop(warren::agent::Agent::new(args.config()?)?),
            _ => {}
        }
        println!("arguments ok");
        return Ok(());
    }
    match command {
        Command::Server(args) => server(args, logs).await,
        Command::Agent(args) => agent(args, logs).await,
        Command::Token { command } => token(command).await,
        Command::Certs(args) if args.cluster => {
            let created = warren::cluster_tls::create(&args.certs)?;
            let verb = if created { "created" } else { "found" };
            println!(
                "{verb} the cluster CA and node identity in {} (cluster-ca.pem, cluster.pem, cluster.key; \
                 keep cluster-ca.key off the nodes)",
                args.certs.display()
            );
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
        Command::Bench {
            quick,
            out,
            runs,
            audio,
            compare,
            requests_only,
            remote,
            client_id,
            direct,
            transport,
        } => {
            let runs = runs.unwrap_or(if quick { 1 } else { 3 });
            if let (Some(server), Some(client_id)) = (remote, client_id) {
                let transport = match transport.as_str() {
                    "ws" => warren::transport::TransportKind::Ws,
                    _ => warren::transport::TransportKind::Quic,
                };
                warren::bench::run_remote(warren::bench::RemoteOptions {
                    server,
                    client_id,
                    direct,
                    transport,
                    quick,
                    runs,
                    out,
                })
                .await?;
                return Ok(());
            }
            let warren = std::env::current_exe().context("locating the warren binary")?;
            let audio = match audio.as_slice() {
                [listeners, seconds] => Some((
                    *listeners as usize,
                    std::time::Duration::from_secs(*seconds),
                )),
                _ => None,
            };
            warren::bench::run(warren::bench::BenchOptions {
                quick,
                out,
                warren,
                runs,
                audio,
                compare,
                requests_only,
            })
            .await?;
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
            config.transport = transport.into();
            Ok(warren::bench::idle_agents(config, count).await?)
        }
        Command::Status { admin, json } => status(admin, json).await,
        Command::Config {
            command: cli::ConfigCommand::Check { file },
        } => config_check(&file),
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

async fn token(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Issue {
            client_id,
            database_url,
        } => {
            let registry = Registry::open(&database_url).await?;
            let token = auth::issue_token(&registry, &client_id).await?;
            registry.close().await;
            println!("Token for client id {client_id:?} (shown once; only its hash is stored):");
            println!("{token}");
        }
        TokenCommand::IssueClient {
            client_id,
            database_url,
        } => {
            let registry = Registry::open(&database_url).await?;
            let token = auth::issue_client_token(&registry, &client_id).await?;
            registry.close().await;
            println!(
                "Client token for {client_id:?}: its clients now need one (shown once; only its hash is stored):"
            );
            println!("{token}");
        }
        TokenCommand::List { database_url, json } => {
            let registry = Registry::open(&database_url).await?;
            let agents = registry.agents().await?;
            registry.close().await;
            if json {
                println!("{}", serde_json::to_string_pretty(&agents)?);
            } else {
                println!(
                    "{:<40} {:<20} {:<20} CLIENT TOKENS",
                    "CLIENT ID", "CREATED", "ROTATED"
                );
                for a in &agents {
                    println!(
                        "{:<40} {:<20} {:<20} {}",
                        a.client_id,
                        utc(a.created_at),
                        utc(a.rotated_at),
                        a.client_tokens
                    );
                }
            }
        }
        TokenCommand::Revoke {
            client_id,
            admin,
            database_url,
        } => match admin_of(&admin)? {
            Some((url, token)) => {
                let path = format!("/api/tokens/{client_id}");
                let answer =
                    admin_client::call(url, token, http::Method::DELETE, &path, None).await?;
                let n = answer["disconnected"].as_u64().unwrap_or(0);
                println!("revoked {client_id:?}; {n} connection(s) closed");
            }
            None => {
                let registry = Registry::open(&database_url).await?;
                let removed = registry.remove_agent(&client_id).await?;
                registry.close().await;
                anyhow::ensure!(removed, "no agent is registered under {client_id:?}");
                println!(
                    "revoked {client_id:?}: its reconnections are refused, and running servers \
                     close its connections at their next revocation check (--revocation-check, \
                     30 s by default; revoke with --admin-url to close them at once)"
                );
            }
        },
        TokenCommand::IssueAdmin { name, database_url } => {
            let registry = Registry::open(&database_url).await?;
            let token = auth::issue_admin_token(&registry, &name).await?;
            registry.close().await;
            println!(
                "Admin token {name:?} for the admin API (shown once; only its hash is stored):"
            );
            println!("{token}");
        }
        TokenCommand::RevokeClient {
            client_id,
            token,
            database_url,
        } => {
            let token = match token {
                Some(token) => token,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the client token from standard input")?;
                    line.trim().to_string()
                }
            };
            let registry = Registry::open(&database_url).await?;
            let removed = registry
                .remove_client_token(&client_id, &auth::hash_token(&token))
                .await?;
            let left = registry.client_token_hashes(&client_id).await?.len();
            registry.close().await;
            anyhow::ensure!(removed, "no such client token for {client_id:?}");
            if left == 0 {
                println!(
                    "revoked; {client_id:?} has no client tokens left, so its clients need none"
                );
            } else {
                println!("revoked; {client_id:?} has {left} client token(s) left");
            }
        }
    }
    Ok(())
}

/// `warren config check FILE`: each table, as flags, parsed by the real
/// command line parser and turned into its configuration.
fn config_check(path: &std::path::Path) -> anyhow::Result<()> {
    let file = config_file::ConfigFile::load(path)?;
    anyhow::ensure!(
        !file.sections().is_empty(),
        "{}: no [server] or [agent] table",
        path.display()
    );
    for section in file.sections() {
        let mut argv = vec![std::ffi::OsString::from("warren"), section.into()];
        argv.extend(file.flags(section, &[])?);
        // The required agent flags may come from the environment instead.
        let cli = Cli::try_parse_from(&argv).map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("");
            anyhow::anyhow!(
                "{}: [{section}]: {}",
                path.display(),
                first.trim_start_matches("error: ")
            )
        })?;
        match cli.command {
            Command::Server(args) => drop(args.config()?),
            Command::Agent(args) => drop(Agent::new(args.config()?)?),
            _ => unreachable!("sections are server and agent"),
        }
        println!("{}: [{section}] ok", path.display());
    }
    Ok(())
}

/// The admin URL and token, when both are given; an error when only one is.
fn admin_of(args: &AdminClientArgs) -> anyhow::Result<Option<(&str, &str)>> {
    match (args.admin_url.as_deref(), args.admin_token.as_deref()) {
        (Some(url), Some(token)) => Ok(Some((url, token))),
        (None, None) => Ok(None),
        (Some(_), None) => {
            anyhow::bail!("--admin-url needs an admin token: WARREN_ADMIN_TOKEN or --admin-token")
        }
        (None, Some(_)) => anyhow::bail!("an admin token needs --admin-url (WARREN_ADMIN_URL)"),
    }
}

/// `warren status`: nodes, then each agent with its connections.
async fn status(admin: AdminClientArgs, json: bool) -> anyhow::Result<()> {
    let Some((url, token)) = admin_of(&admin)? else {
        anyhow::bail!("warren status needs --admin-url and an admin token (WARREN_ADMIN_URL, WARREN_ADMIN_TOKEN)");
    };
    let get = |path: &'static str| admin_client::call(url, token, http::Method::GET, path, None);
    let nodes = get("/api/nodes").await?;
    let agents = get("/api/agents").await?;
    if json {
        let both = serde_json::json!({ "nodes": nodes, "agents": agents["agents"] });
        println!("{}", serde_json::to_string_pretty(&both)?);
        return Ok(());
    }
    let list = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "node {} (clustered: {})",
        text(&nodes["this"]),
        nodes["clustered"]
    );
    for n in list(&nodes["nodes"]) {
        println!(
            "  node {} at {}",
            text(&n["nodeId"]),
            text(&n["clusterAddr"])
        );
    }
    println!();
    println!(
        "{:<32} {:<10} {:<10} {:<10} {:>12} {:>12} {:>9}  SINCE",
        "CLIENT ID", "STATE", "NODE", "TRANSPORT", "SENT", "RECEIVED", "IN FLIGHT"
    );
    for a in list(&agents["agents"]) {
        let conns = list(&a["connections"]);
        if conns.is_empty() {
            println!("{:<32} {:<10}", text(&a["clientId"]), "offline");
        }
        for c in conns {
            let figure = |key: &str| c[key].as_u64().map_or("-".to_string(), |n| n.to_string());
            println!(
                "{:<32} {:<10} {:<10} {:<10} {:>12} {:>12} {:>9}  {}",
                text(&a["clientId"]),
                "connected",
                text(&c["node"]),
                text(&c["transport"]),
                figure("sentBytes"),
                figure("receivedBytes"),
                figure("inFlight"),
                utc(c["connectedAt"].as_i64().unwrap_or(0)),
            );
        }
    }
    Ok(())
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

async fn server(args: ServerArgs, logs: Logs) -> anyhow::Result<()> {
    let config = args.config()?;
    warren::memory::spawn_trimmer();
    let server = Server::bind(config).await.context("starting the server")?;
    let identity = server.identity();
    if identity.generated {
        println!("generated a self-signed certificate; agents can pin it with --fingerprint");
    }
    println!("certificate sha256 fingerprint: {}", identity.fingerprint());
    let scheme = if server.api_is_https() {
        "https"
    } else {
        "http"
    };
    println!("client API on {scheme}://{}", server.api_addr());
    if let Some(addr) = server.api_plain_addr() {
        println!("client API (plain HTTP) on http://{addr}");
    }
    if let Some(addr) = server.api_http3_addr() {
        println!("client API (HTTP/3) on udp {addr}");
    }
    println!(
        "tunnel on {} (QUIC on UDP, WebSocket on TCP)",
        server.tunnel_addr()
    );
    if let Some(addr) = server.cluster_addr() {
        println!("cluster link on {addr}");
    }
    if let Some(addr) = server.admin_addr() {
        println!("admin API on http://{addr} (/metrics, /healthz, /readyz, /api/)");
    }
    reload_on_hangup(logs, Some(server.live()));
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        trigger.fire();
    });
    server.run(stop).await?;
    Ok(())
}

async fn agent(args: AgentArgs, logs: Logs) -> anyhow::Result<()> {
    let config = args.config()?;
    warren::memory::spawn_trimmer();
    let agent = Agent::new(config)?;
    reload_on_hangup(logs, None);
    let (trigger, stop) = shutdown::channel();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        trigger.fire();
    });
    agent.run(stop).await?;
    Ok(())
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log's subscriber, installed; its filter can be changed while running.
struct Logs {
    filter: FilterHandle,
}

impl Logs {
    fn init(directives: &str, format: LogFormat) -> anyhow::Result<Logs> {
        use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, Layer};
        let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(directives)?);
        let output = match format {
            // One object per line, the spans' fields (client id, connection
            // id, request id) with the event's own.
            LogFormat::Json => fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(std::io::stderr)
                .boxed(),
            // Colours only for a terminal: escape codes in a log file are
            // noise, and formatting them costs every span its share.
            LogFormat::Text => fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .boxed(),
        };
        tracing_subscriber::registry()
            .with(filter)
            .with(output)
            .init();
        Ok(Logs { filter: handle })
    }
}

/// SIGHUP: reads the config file again and applies what a running process
/// can take (the log filter; on the server the access log and
/// `metrics-top-agents`; tokens are read from the registry anyway), and says
/// in the log what it applied and which changed keys need a restart.
fn reload_on_hangup(logs: Logs, live: Option<std::sync::Arc<warren::server::LiveSettings>>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use std::sync::atomic::Ordering;
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let mut before = config_file::current(&argv)
            .ok()
            .flatten()
            .unwrap_or_default();
        while hangups.recv().await.is_some() {
            // Certificates first: a renewal needs no config file.
            match live.as_ref().and_then(|l| l.reload_api_certificates()) {
                Some(Ok(n)) => {
                    tracing::info!("SIGHUP: client API certificates reloaded ({n} pair(s))")
                }
                Some(Err(e)) => tracing::warn!(
                    "SIGHUP: client API certificates not reloaded (the ones in use stay): {e}"
                ),
                None => {}
            }
            let after = match config_file::current(&argv) {
                Ok(Some(now)) => now,
                Ok(None) => {
                    tracing::info!("SIGHUP: no config file (--config) to reload");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("SIGHUP: config file not reloaded: {e}");
                    continue;
                }
            };
            // The whole file must still make a valid command line.
            let checked = config_file::expand(argv.clone())
                .map_err(|e| e.to_string())
                .and_then(|full| Cli::try_parse_from(full).map_err(|e| e.to_string()));
            let cli = match checked {
                Ok(cli) => cli,
                Err(e) => {
                    let first = e.lines().next().unwrap_or("").trim_start_matches("error: ");
                    tracing::warn!("SIGHUP: config file not reloaded: {first}");
                    continue;
                }
            };
            let mut changed: Vec<String> = before
                .iter()
                .filter(|(k, v)| after.get(*k) != Some(*v))
                .chain(after.iter().filter(|(k, _)| !before.contains_key(*k)))
                .map(|(k, _)| k.trim_start_matches("--").to_string())
                .collect();
            changed.sort();
            changed.dedup();
            let (mut applied, mut restart) = (Vec::new(), Vec::new());
            for key in changed {
                let value = after.get(&format!("--{key}"));
                let done = match (key.as_str(), &live) {
                    ("log", _) => match log_filter(&cli.log) {
                        Ok(filter) => logs.filter.reload(filter).is_ok(),
                        Err(e) => {
                            tracing::warn!("SIGHUP: log filter not changed: {e}");
                            false
                        }
                    },
                    ("access-log", Some(live)) => {
                        live.access_log.store(value.is_some(), Ordering::Relaxed);
                        true
                    }
                    ("metrics-top-agents", Some(live)) => {
                        let n = value
                            .and_then(|v| v.first())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(warren::server::ServerConfig::default().metrics_top_agents);
                        live.metrics_top_agents.store(n, Ordering::Relaxed);
                        true
                    }
                    _ => false,
                };
                if done {
                    applied.push(key);
                } else {
                    restart.push(key);
                }
            }
            tracing::info!(?applied, needs_restart = ?restart, "SIGHUP: config file reloaded");
            before = after;
        }
    });
}

/// A `tracing` filter from `directives` (`--log`, `WARREN_LOG`), with the
/// crates that dump message payloads at trace level capped at debug
/// whatever it says: tungstenite logs every WebSocket frame's bytes, and on
/// the WebSocket transport those carry the agent's Hello, token included.
fn log_filter(directives: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    use tracing_subscriber::filter::LevelFilter;
    let filter = tracing_subscriber::EnvFilter::try_new(directives)
        .with_context(|| format!("--log {directives:?} is not a valid log filter"))?;
    // Only a filter that lets trace through needs the cap; adding it to a
    // quieter one would raise those crates to debug instead.
    if filter
        .max_level_hint()
        .is_some_and(|max| max < LevelFilter::TRACE)
    {
        return Ok(filter);
    }
    Ok(["tungstenite=debug", "tokio_tungstenite=debug"]
        .into_iter()
        .fold(filter, |filter, cap| {
            filter.add_directive(cap.parse().expect("a valid directive"))
        }))
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
