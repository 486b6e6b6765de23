//! The benchmark harness (`cargo bench --bench tunnel`, or `warren bench`):
//! starts a sample upstream, a server and an agent as separate processes on
//! loopback and runs every scenario direct, through QUIC and through WebSocket
//! in the same run, next to the raw transport ceiling. Figures are ratios to
//! their baseline from the same run, since timing on shared machines is noisy.
//! Prints a Markdown table, writes `tunnel.json` and `tunnel.svg`.
//!
//! Long because: `run` and `rows` are the benchmark's two tables (what runs,
//! in order; what each figure is judged against), each read top to bottom.

mod edge;
mod error;
mod load;
mod procs;
mod raw;
mod remote;
mod report;
mod rooms;
mod scenarios;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use tokio::time::Instant;

use crate::{
    auth,
    lab::{DelayLink, UdpGate},
    registry::Registry,
    transport::TransportKind,
};
pub use error::BenchError;
use load::Target;
use procs::Proc;
pub use remote::{run as run_remote, RemoteOptions};
pub use report::{Better, Row};
use scenarios::{
    mbps, measure_bulk, measure_sequential, measure_small, request_rows, HttpFigures, Progress,
    Sizes, GIB, MIB,
};

pub struct BenchOptions {
    /// Every scenario small: seconds instead of minutes (CI runs this).
    pub quick: bool,
    /// Where `tunnel.json`, `tunnel.svg` and the logs go.
    pub out: PathBuf,
    /// The `warren` binary to run as upstream, server, agent and raw peer.
    pub warren: PathBuf,
    /// How often the headline scenarios (bulk, small requests, latency,
    /// audio, isolation) run per target: the table shows the median and the
    /// range, and a target counts as met only when the median meets it.
    pub runs: usize,
    /// Audio listeners and track length instead of the size's own (to try
    /// the full audio scenario inside a quick run).
    pub audio: Option<(usize, Duration)>,
    /// An earlier run's `tunnel.json`: every figure is also shown as its
    /// change against that run.
    pub compare: Option<PathBuf>,
    /// Only the per-request scenarios (small requests with their CPU and
    /// memory, sequential latency) for direct, QUIC and WS: a minute-long
    /// before/after for a change on the request path.
    pub requests_only: bool,
}

/// The long path's delay each way: a 40 ms round trip, a continent away.
const LONG_PATH_ONE_WAY: Duration = Duration::from_millis(20);

/// A 320 kbit/s stream: 2000 bytes every 50 ms.
const AUDIO_CHUNK: u64 = 2000;
const AUDIO_INTERVAL: Duration = Duration::from_millis(50);

/// Runs everything and writes the report; returns the rows.
pub async fn run(opts: BenchOptions) -> Result<Vec<Row>, BenchError> {
    let mut sizes = Sizes::new(opts.quick);
    if let Some((listeners, track)) = opts.audio {
        (sizes.listeners, sizes.track) = (listeners, track);
    }
    std::fs::create_dir_all(&opts.out).map_err(BenchError::io("output directory"))?;
    // Read before the run, so a wrong path fails now rather than after it.
    let earlier = match &opts.compare {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(BenchError::io("reading --compare"))?;
            let old: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                BenchError::new(format!("{}: not a tunnel.json: {e}", path.display()))
            })?;
            Some((path.clone(), old))
        }
        None => None,
    };
    let dir = procs::scratch_dir(&opts.out)?;
    let bin = opts.warren.clone();
    let runs = opts.runs.max(1);
    // 7 steps per target and run (3 targets), 2 raw, 2 idle, 2 fallback, …
    let mut progress = Progress::new(7 * 3 * runs + 19);

    let upstream = Proc::spawn(
        &bin,
        &["upstream".into(), "--listen".into(), "127.0.0.1:0".into()],
        &dir.join("logs/upstream.log"),
        &["listening on"],
    )
    .await?;
    let upstream_addr: SocketAddr =
        parse_addr(&upstream.value_after("listening on ").unwrap_or_default())?;

    if opts.requests_only {
        return requests_only(&opts, &dir, upstream, upstream_addr, &sizes, &earlier).await;
    }

    // Raw transport ceilings.
    let raw = Proc::spawn(
        &bin,
        &[
            "bench-raw".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--certs".into(),
            dir.join("raw-certs").display().to_string(),
        ],
        &dir.join("logs/raw.log"),
        &["fingerprint"],
    )
    .await?;
    let raw_addr = parse_addr(&raw.value_after("listening on ").unwrap_or_default())?;
    let raw_fp = raw.value_after("fingerprint ").unwrap_or_default();
    let mut raw_figures = Vec::new();
    for kind in [TransportKind::Quic, TransportKind::Ws] {
        progress.step(&format!("raw {kind} stream"));
        // A warm-up transfer first (window growth, allocator, caches), then
        // the best of three: a ceiling taken from one cold run reads low and
        // makes every "≥ x× raw" look better than it is.
        raw::push(kind, raw_addr, &raw_fp, sizes.bulk / 4).await?;
        let mut best: Option<(f64, f64)> = None;
        for _ in 0..3 {
            let (cpu0, me0) = (raw.cpu_seconds(), procs::cpu_seconds(std::process::id()));
            let secs = raw::push(kind, raw_addr, &raw_fp, sizes.bulk).await?;
            let cpu = raw.cpu_seconds() - cpu0 + procs::cpu_seconds(std::process::id()) - me0;
            let run = (mbps(sizes.bulk, secs), cpu / (sizes.bulk as f64 / GIB));
            if !matches!(best, Some(b) if run.0 <= b.0) {
                best = Some(run);
            }
        }
        raw_figures.push(best.expect("three runs"));
    }
    raw.stop().await;

    let direct = Target {
        addr: upstream_addr,
        client_id: None,
        tls: None,
    };
    let mut direct_figures = Vec::with_capacity(runs);
    for _ in 0..runs {
        direct_figures.push(http_scenarios(&direct, &[], &sizes, &mut progress, "direct").await?);
    }

    // Per transport, one set of figures per run.
    let mut tunnel_figures: Vec<Vec<HttpFigures>> = Vec::new();
    let mut agent_idle_rss = Vec::new();
    for kind in [TransportKind::Quic, TransportKind::Ws] {
        let (server, agent, target) =
            Server::with_agent(&bin, &dir, &format!("main-{kind}"), kind, upstream_addr).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        agent_idle_rss.push(agent.rss());
        let procs = [&server.proc, &agent];
        let mut figures = Vec::with_capacity(runs);
        for _ in 0..runs {
            figures
                .push(http_scenarios(&target, &procs, &sizes, &mut progress, kind.as_str()).await?);
        }
        tunnel_figures.push(figures);
        agent.stop().await;
        server.proc.stop().await;
    }

    // Idle agents: server memory per connected idle agent.
    let mut idle_per_agent = Vec::new();
    let mut reconnects = Vec::new();
    for kind in [TransportKind::Quic, TransportKind::Ws] {
        progress.step(&format!("{} idle agents over {kind}", sizes.idle_agents));
        let idle_extra = [
            "--max-connections-per-client".into(),
            (sizes.idle_agents + 10).to_string(),
        ];
        let server = Server::start(&bin, &dir, &format!("idle-{kind}"), &idle_extra).await?;
        let token = server.issue("idle").await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = server.proc.rss();
        let agents = server
            .idle_agents(&bin, &dir, "idle", token, kind, sizes.idle_agents)
            .await?;
        server.wait_agents(sizes.idle_agents).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = server.proc.rss();
        idle_per_agent
            // Signed: a drop shows as a drop, not as a met target of zero.
            .push((after as f64 - before as f64) / sizes.idle_agents as f64 / 1024.0);
        progress.step(&format!(
            "server kill -9 under {} {kind} agents",
            sizes.idle_agents
        ));
        let (server, back) = server
            .crash_and_restart(
                &bin,
                &dir,
                &format!("idle-{kind}"),
                &idle_extra,
                sizes.idle_agents,
            )
            .await?;
        reconnects.push(back);
        agents.stop().await;
        server.proc.stop().await;
    }

    // A crowd of idle agents: memory per agent at scale, and whether two
    // cores keep every one through several heartbeats (none lost, none
    // made again).
    let mut many = Vec::new();
    for kind in [TransportKind::Quic, TransportKind::Ws] {
        progress.step(&format!("{} idle agents over {kind}", sizes.many_agents));
        many.push(hold_idle_agents(&bin, &dir, kind, sizes.many_agents, sizes.many_hold).await?);
    }

    // Idle clients: server memory per keep-alive connection that made one
    // request and then sits idle (what a crowd of browsers costs).
    progress.step(&format!("{} idle client connections", sizes.idle_clients));
    let idle_client_kib = {
        let server = Server::start(&bin, &dir, "idle-clients", &[]).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = server.proc.rss();
        let mut held = Vec::with_capacity(sizes.idle_clients);
        for _ in 0..sizes.idle_clients {
            let mut tcp = tokio::net::TcpStream::connect(server.api)
                .await
                .map_err(BenchError::io("idle client"))?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            tcp.write_all(b"GET /_warren/health HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .map_err(BenchError::io("idle client"))?;
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            held.push(tcp);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = server.proc.rss();
        drop(held);
        server.proc.stop().await;
        (after as f64 - before as f64) / sizes.idle_clients as f64 / 1024.0
    };

    // Fallback: agent start to first served request, UDP silently dropped.
    let mut fallback = Vec::new();
    for udp_open in [true, false] {
        progress.step(if udp_open {
            "first request, UDP open"
        } else {
            "first request, UDP dropped"
        });
        let server = Server::start(&bin, &dir, &format!("fallback-{udp_open}"), &[]).await?;
        let token = server.issue("fallback").await?;
        let gate = UdpGate::spawn(server.tunnel, udp_open)
            .await
            .map_err(BenchError::io("gate"))?;
        let started = Instant::now();
        let agent = server
            .agent_via(
                &bin,
                &dir,
                "fallback",
                &token,
                upstream_addr,
                None,
                gate.addr(),
                &[],
            )
            .await?;
        let target = Target {
            addr: server.api,
            client_id: Some("fallback".into()),
            tls: None,
        };
        let first = load::first_success(&target, "/bytes/100", Duration::from_secs(20))
            .await
            .ok_or_else(|| BenchError::new("no request served within 20 s"))?;
        fallback.push((first - started).as_secs_f64() * 1000.0);
        agent.stop().await;
        server.proc.stop().await;
    }
    // A long path between agent and server (20 ms each way): whether the
    // windows carry one stream at speed across real round trips, and what a
    // small request costs there (one round trip is the floor).
    let mut long_path = Vec::new();
    for kind in [TransportKind::Quic, TransportKind::Ws] {
        progress.step(&format!("40 ms round trip over {kind}"));
        let server = Server::start(&bin, &dir, &format!("rtt-{kind}"), &[]).await?;
        let token = server.issue("rtt").await?;
        let link = DelayLink::spawn(server.tunnel, LONG_PATH_ONE_WAY)
            .await
            .map_err(BenchError::io("delay link"))?;
        let agent = server
            .agent_via(
                &bin,
                &dir,
                "rtt",
                &token,
                upstream_addr,
                Some(kind),
                link.addr(),
                &[],
            )
            .await?;
        server.wait_agents(1).await?;
        let target = Target {
            addr: server.api,
            client_id: Some("rtt".into()),
            tls: None,
        };
        let mut lat = load::sequential(&target, "/bytes/1024", sizes.rtt_requests).await?;
        lat.sort();
        let (bytes, secs) = load::download(&target, &format!("/bytes/{}", sizes.rtt_bulk)).await?;
        long_path.push((mbps(bytes, secs), load::percentile_ms(&lat, 50.0)));
        agent.stop().await;
        server.proc.stop().await;
    }
    // Rooms: one broadcast should cross the tunnel once, whatever the members.
    let mut room_figures = Vec::new();
    for kind in [TransportKind::Quic, TransportKind::Ws] {
        progress.step(&format!("room of {} over {kind}", sizes.room_members));
        let server = Server::start(&bin, &dir, &format!("rooms-{kind}"), &[]).await?;
        let token = server.issue("rooms").await?;
        let backend = rooms::backend().await?;
        let gate = UdpGate::spawn(server.tunnel, true)
            .await
            .map_err(BenchError::io("gate"))?;
        let rooms_upstream = ["--rooms-upstream".to_string(), backend.url.clone()];
        let agent = server
            .agent_via(
                &bin,
                &dir,
                "rooms",
                &token,
                upstream_addr,
                Some(kind),
                gate.addr(),
                &rooms_upstream,
            )
            .await?;
        server.wait_agents(1).await?;
        let figures = rooms::measure(
            server.api,
            "rooms",
            &backend,
            sizes.room_members,
            sizes.room_broadcasts,
            10,
            || gate.bytes_up(),
            || server.proc.rss(),
        )
        .await?;
        room_figures.push(figures);
        agent.stop().await;
        server.proc.stop().await;
    }
    // The client edge: HTTPS, HTTP/2 and plain HTTP to one server.
    let (tls, h3_client) = edge::certificate(&dir)?;
    let mut edge_figures = Vec::new();
    for kind in [TransportKind::Quic, TransportKind::Ws] {
        let name = format!("edge-{kind}");
        let server = Server::start(&bin, &dir, &name, &edge::server_args(&dir)).await?;
        let plain = server
            .plain_api
            .ok_or_else(|| BenchError::new("the edge server printed no plain listener"))?;
        let token = server.issue("edge").await?;
        let agent = server
            .agent(&bin, &dir, "edge", &token, upstream_addr, Some(kind))
            .await?;
        server.wait_agents(1).await?;
        let targets = edge::targets(server.api, plain, "edge", &tls);
        let h3 = edge::H3Target {
            addr: server.api,
            client_id: "edge".into(),
            config: h3_client.clone(),
        };
        let figures = edge::run(&targets, &h3, &sizes, &mut progress, kind).await;
        agent.stop().await;
        server.proc.stop().await;
        edge_figures.push(figures?);
    }
    let edge_rows = edge::rows(&edge_figures, &sizes);
    upstream.stop().await;
    eprintln!();

    let mut rows = report::merge_runs(
        (0..runs)
            .map(|i| {
                rows(
                    &direct_figures[i],
                    &[tunnel_figures[0][i].clone(), tunnel_figures[1][i].clone()],
                    &raw_figures,
                    &idle_per_agent,
                    &agent_idle_rss,
                    &fallback,
                    &sizes,
                )
            })
            .collect(),
    );
    rows.extend(edge_rows);
    let long = "40 ms round trip, agent to server";
    let at = |i: usize, f: fn(&(f64, f64)) -> f64| long_path.get(i).map(f);
    rows.push(
        Row::new(long, "one stream's bulk", "MB/s", Better::Higher)
            .tunnel(at(0, |p| p.0), at(1, |p| p.0))
            .target("≥ 100 MB/s", 100.0, true),
    );
    rows.push(
        // One round trip is the floor; a second would show as ~80 ms.
        Row::new(long, "small request latency p50", "ms", Better::Lower)
            .tunnel(at(0, |p| p.1), at(1, |p| p.1))
            .target("≤ 45 ms (one round trip)", 45.0, true),
    );
    let crowd = format!("idle, {} agents", sizes.many_agents);
    let of = |i: usize, f: fn(&ManyIdle) -> f64| many.get(i).map(f);
    rows.push(
        Row::new(&crowd, "server memory per agent", "KiB", Better::Lower)
            .tunnel(of(0, |m| m.kib_per_agent), of(1, |m| m.kib_per_agent))
            .target("≤ 48 KiB", 48.0, true),
    );
    rows.push(
        Row::new(&crowd, "time until all connected", "s", Better::Lower)
            .tunnel(of(0, |m| m.connect_secs), of(1, |m| m.connect_secs)),
    );
    rows.push(
        Row::new(
            &crowd,
            &format!("lost or made again in {} s idle", sizes.many_hold.as_secs()),
            "count",
            Better::Lower,
        )
        .tunnel(of(0, |m| m.lost as f64), of(1, |m| m.lost as f64))
        .target("none", 0.0, true),
    );
    let room = format!("room, {} members, 10×1 KiB/s", sizes.room_members);
    let pick = |f: fn(&rooms::RoomFigures) -> f64| {
        (room_figures.first().map(f), room_figures.get(1).map(f))
    };
    let (q, w) = pick(|r| r.bytes_per_broadcast);
    rows.push(
        Row::new(
            &room,
            "tunnel bytes per 1 KiB broadcast",
            "B",
            Better::Lower,
        )
        .tunnel(q, w)
        .target("one copy (≤ 1200 B)", 1200.0, true),
    );
    let (q, w) = pick(|r| r.delivered);
    rows.push(
        Row::new(&room, "delivered / expected", "ratio", Better::Higher)
            .tunnel(q, w)
            .target("all", 1.0, true),
    );
    let (q, w) = pick(|r| r.duplicates);
    rows.push(
        Row::new(&room, "duplicate deliveries", "count", Better::Lower)
            .tunnel(q, w)
            .target("none", 0.0, true),
    );
    let (q, w) = pick(|r| r.p50_ms);
    rows.push(Row::new(&room, "delivery latency p50", "ms", Better::Lower).tunnel(q, w));
    let (q, w) = pick(|r| r.p99_ms);
    rows.push(Row::new(&room, "delivery latency p99", "ms", Better::Lower).tunnel(q, w));
    let (q, w) = pick(|r| r.kib_per_member);
    rows.push(
        Row::new(&room, "server memory per member", "KiB", Better::Lower)
            .tunnel(q, w)
            .target("≤ 16 KiB", 16.0, true),
    );
    let idle = format!("idle, {} agents", sizes.idle_agents);
    let back = |f: fn(&Reconnects) -> Option<f64>| {
        // Not back within 30 s reads as 30 s: it fails the target visibly.
        let at = |r: Option<&Reconnects>| r.map(|r| f(r).unwrap_or(30.0));
        (at(reconnects.first()), at(reconnects.get(1)))
    };
    let (q, w) = back(|r| r.first);
    rows.push(
        Row::new(
            &idle,
            "server kill -9 + restart: first agent back",
            "s",
            Better::Lower,
        )
        .tunnel(q, w),
    );
    let (q, w) = back(|r| r.half);
    rows.push(
        Row::new(
            &idle,
            "server kill -9 + restart: half back",
            "s",
            Better::Lower,
        )
        .tunnel(q, w),
    );
    let (q, w) = back(|r| r.all);
    rows.push(
        Row::new(
            &idle,
            "server kill -9 + restart: all back",
            "s",
            Better::Lower,
        )
        .tunnel(q, w)
        .target("≤ 3 s", 3.0, true),
    );
    rows.push(
        Row::new(
            &format!("idle clients, {}", sizes.idle_clients),
            "server memory per idle keep-alive connection",
            "KiB",
            Better::Lower,
        )
        .tunnel(Some(idle_client_kib), None)
        .target("≤ 16 KiB", 16.0, true),
    );
    finish(&opts, rows, &direct_figures, &tunnel_figures, &earlier)
}

/// `--requests-only`: direct, QUIC and WS through the small-request and
/// sequential scenarios alone, `runs` times each, reported with the full
/// run's rows for them (and compared, with `--compare`).
async fn requests_only(
    opts: &BenchOptions,
    dir: &Path,
    upstream: Proc,
    upstream_addr: SocketAddr,
    sizes: &Sizes,
    earlier: &Option<(PathBuf, serde_json::Value)>,
) -> Result<Vec<Row>, BenchError> {
    let runs = opts.runs.max(1);
    let mut progress = Progress::new(2 * 3 * runs);
    let direct = Target {
        addr: upstream_addr,
        client_id: None,
        tls: None,
    };
    let mut direct_figures = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut f = HttpFigures::default();
        request_scenarios(&direct, &[], sizes, &mut progress, "direct", &mut f).await?;
        direct_figures.push(f);
    }
    let mut tunnel_figures: Vec<Vec<HttpFigures>> = Vec::new();
    for kind in [TransportKind::Quic, TransportKind::Ws] {
        let name = format!("requests-{kind}");
        let (server, agent, target) =
            Server::with_agent(&opts.warren, dir, &name, kind, upstream_addr).await?;
        let procs = [&server.proc, &agent];
        let mut figures = Vec::with_capacity(runs);
        for _ in 0..runs {
            let mut f = HttpFigures::default();
            request_scenarios(&target, &procs, sizes, &mut progress, kind.as_str(), &mut f).await?;
            figures.push(f);
        }
        tunnel_figures.push(figures);
        agent.stop().await;
        server.proc.stop().await;
    }
    upstream.stop().await;
    eprintln!();
    let rows = report::merge_runs(
        (0..runs)
            .map(|i| {
                let tunnel = [Some(&tunnel_figures[0][i]), Some(&tunnel_figures[1][i])];
                request_rows(Some(&direct_figures[i]), tunnel, sizes)
            })
            .collect(),
    );
    finish(opts, rows, &direct_figures, &tunnel_figures, earlier)
}

/// Writes the report (and the comparison with an earlier run); returns the rows.
fn finish(
    opts: &BenchOptions,
    rows: Vec<Row>,
    direct: &[HttpFigures],
    tunnel: &[Vec<HttpFigures>],
    earlier: &Option<(PathBuf, serde_json::Value)>,
) -> Result<Vec<Row>, BenchError> {
    write_report(&opts.out, &rows, opts.quick, direct, tunnel)?;
    if let Some((path, old)) = earlier {
        let table = report::compare(&rows, old);
        println!("\nagainst {}:\n\n{table}", path.display());
        std::fs::write(opts.out.join("compare.md"), table)
            .map_err(BenchError::io("writing the report"))?;
    }
    Ok(rows)
}

/// The per-request scenarios of one target: many small requests at once,
/// then one at a time.
async fn request_scenarios(
    target: &Target,
    procs: &[&Proc],
    sizes: &Sizes,
    progress: &mut Progress,
    label: &str,
    f: &mut HttpFigures,
) -> Result<(), BenchError> {
    progress.step(&format!("small requests via {label}"));
    measure_small(target, procs, sizes, f).await?;
    progress.step(&format!("sequential requests via {label}"));
    measure_sequential(target, sizes, f).await
}

fn parse_addr(text: &str) -> Result<SocketAddr, BenchError> {
    text.trim_start_matches("http://")
        .trim_start_matches("https://")
        .parse()
        .map_err(|_| BenchError::new(format!("unparsable address {text:?}")))
}

/// A `warren server` process with its own SQLite registry and certificate.
struct Server {
    proc: Proc,
    api: SocketAddr,
    /// The plain listener beside an HTTPS API (`--api-plain-listen`).
    plain_api: Option<SocketAddr>,
    tunnel: SocketAddr,
    fingerprint: String,
    database: String,
}

impl Server {
    async fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        extra: &[String],
    ) -> Result<Server, BenchError> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        Server::start_at(bin, dir, name, extra, any, any).await
    }

    /// Starts a server on the given addresses (port 0: any), with the
    /// registry and certificate of `name` in `dir`, kept across restarts.
    async fn start_at(
        bin: &Path,
        dir: &Path,
        name: &str,
        extra: &[String],
        api: SocketAddr,
        tunnel: SocketAddr,
    ) -> Result<Server, BenchError> {
        let database = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
        // Create the registry before the server so tokens can be issued at once.
        Registry::open(&database)
            .await
            .map_err(|e| BenchError::new(e.to_string()))?;
        let mut args: Vec<String> = vec![
            "server".into(),
            "--api-listen".into(),
            api.to_string(),
            "--tunnel-listen".into(),
            tunnel.to_string(),
            "--node-id".into(),
            name.into(),
        ];
        args.extend(["--database-url".into(), database.clone()]);
        args.extend(["--certs".into(), dir.join("certs").display().to_string()]);
        // Every client here is this machine's one address: the per-address
        // share of an agent (256) would turn the audio crowd away.
        args.extend(["--max-requests-per-ip".into(), "0".into()]);
        args.extend(extra.iter().cloned());
        let proc = Proc::spawn(
            bin,
            &args,
            &dir.join(format!("logs/server-{name}.log")),
            &["client API on", "tunnel on"],
        )
        .await?;
        let api = parse_addr(&proc.value_after("client API on ").unwrap_or_default())?;
        let tunnel = parse_addr(&proc.value_after("tunnel on ").unwrap_or_default())?;
        let plain_api = match proc.value_after("client API (plain HTTP) on ") {
            Some(addr) => Some(parse_addr(&addr)?),
            None => None,
        };
        let fingerprint = proc.value_after("fingerprint: ").unwrap_or_default();
        Ok(Server {
            proc,
            api,
            plain_api,
            tunnel,
            fingerprint,
            database,
        })
    }

    /// A server with one agent (`bench`, over `kind`) connected to it, and
    /// the target that reaches the agent's upstream through them.
    async fn with_agent(
        bin: &Path,
        dir: &Path,
        name: &str,
        kind: TransportKind,
        upstream: SocketAddr,
    ) -> Result<(Server, Proc, Target), BenchError> {
        let server = Server::start(bin, dir, name, &[]).await?;
        let token = server.issue("bench").await?;
        let agent = server
            .agent(bin, dir, "bench", &token, upstream, Some(kind))
            .await?;
        server.wait_agents(1).await?;
        let target = Target {
            addr: server.api,
            client_id: Some("bench".into()),
            tls: None,
        };
        Ok((server, agent, target))
    }

    async fn issue(&self, client_id: &str) -> Result<String, BenchError> {
        let registry = Registry::open(&self.database)
            .await
            .map_err(|e| BenchError::new(e.to_string()))?;
        let token = auth::issue_token(&registry, client_id)
            .await
            .map_err(|e| BenchError::new(e.to_string()))?;
        registry.close().await;
        Ok(token)
    }

    async fn agent(
        &self,
        bin: &Path,
        dir: &Path,
        client_id: &str,
        token: &str,
        upstream: SocketAddr,
        kind: Option<TransportKind>,
    ) -> Result<Proc, BenchError> {
        self.agent_via(bin, dir, client_id, token, upstream, kind, self.tunnel, &[])
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn agent_via(
        &self,
        bin: &Path,
        dir: &Path,
        client_id: &str,
        token: &str,
        upstream: SocketAddr,
        kind: Option<TransportKind>,
        server: SocketAddr,
        extra: &[String],
    ) -> Result<Proc, BenchError> {
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            server.to_string(),
            "--client-id".into(),
            client_id.into(),
            "--token".into(),
            token.into(),
            "--upstream".into(),
            format!("http://{upstream}"),
            "--fingerprint".into(),
            self.fingerprint.clone(),
        ];
        if let Some(kind) = kind {
            args.extend(["--transport".into(), kind.as_str().into()]);
        }
        args.extend(extra.iter().cloned());
        let log = dir.join(format!(
            "logs/agent-{client_id}-{}.log",
            kind.map(|k| k.as_str()).unwrap_or("auto")
        ));
        Proc::spawn(bin, &args, &log, &[]).await
    }

    /// `count` idle agents of `client_id` in one `warren bench-idle-agents`
    /// process, started (not yet all connected).
    async fn idle_agents(
        &self,
        bin: &Path,
        dir: &Path,
        client_id: &str,
        token: String,
        kind: TransportKind,
        count: usize,
    ) -> Result<Proc, BenchError> {
        Proc::spawn(
            bin,
            &[
                "bench-idle-agents".into(),
                "--server".into(),
                self.tunnel.to_string(),
                "--fingerprint".into(),
                self.fingerprint.clone(),
                "--client-id".into(),
                client_id.into(),
                "--token".into(),
                token,
                "--transport".into(),
                kind.as_str().into(),
                "--count".into(),
                count.to_string(),
            ],
            &dir.join(format!("logs/{client_id}-agents-{kind}.log")),
            &["started"],
        )
        .await
    }

    /// Connected agents, as `/_warren/health` reports them (None: no answer).
    async fn agents(&self) -> Option<u64> {
        self.health().await.map(|(agents, _)| agents)
    }

    /// The health report's connected agents and admissions so far.
    async fn health(&self) -> Option<(u64, u64)> {
        use http_body_util::BodyExt;
        // An HTTPS API is asked on its plain listener.
        let target = Target {
            addr: self.plain_api.unwrap_or(self.api),
            client_id: None,
            tls: None,
        };
        let mut sender = load::connect(&target).await.ok()?;
        let resp = load::send(&mut sender, &target, "/_warren/health", None)
            .await
            .ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        let report = serde_json::from_slice::<serde_json::Value>(&body).ok()?;
        Some((report["agents"].as_u64()?, report["admitted"].as_u64()?))
    }

    /// Waits until the server reports `n` connected agents.
    async fn wait_agents(&self, n: usize) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.agents().await == Some(n as u64) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BenchError::new(format!(
            "{n} agents did not connect within 60 s"
        )))
    }

    /// Kills the server (SIGKILL), starts it again at once on the same
    /// addresses, registry and certificate, and times how its `n` agents come
    /// back, from the moment the new process listens.
    async fn crash_and_restart(
        self,
        bin: &Path,
        dir: &Path,
        name: &str,
        extra: &[String],
        n: usize,
    ) -> Result<(Server, Reconnects), BenchError> {
        let (api, tunnel) = (self.api, self.tunnel);
        self.proc.stop().await;
        let server = Server::start_at(bin, dir, name, extra, api, tunnel).await?;
        let started = Instant::now();
        let mut marks = Reconnects::default();
        // A QUIC agent hears of the crash from its next keep-alive's stateless
        // reset; 30 s is far past any bound worth measuring.
        while started.elapsed() < Duration::from_secs(30) {
            let back = server.agents().await.unwrap_or(0) as usize;
            let at = started.elapsed().as_secs_f64();
            if back > 0 && marks.first.is_none() {
                marks.first = Some(at);
            }
            if back * 2 >= n && marks.half.is_none() {
                marks.half = Some(at);
            }
            if back >= n {
                marks.all = Some(at);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((server, marks))
    }
}

/// When the agents of a crashed and restarted server were back, in seconds
/// after the restart (None: not within 30 s).
#[derive(Default, Clone, Copy)]
struct Reconnects {
    first: Option<f64>,
    half: Option<f64>,
    all: Option<f64>,
}

/// The HTTP scenarios against one target; `procs` = [server, agent] when tunnelled.
async fn http_scenarios(
    target: &Target,
    procs: &[&Proc],
    sizes: &Sizes,
    progress: &mut Progress,
    label: &str,
) -> Result<HttpFigures, BenchError> {
    let mut f = HttpFigures::default();
    progress.step(&format!("bulk via {label}"));
    measure_bulk(target, procs, sizes, &mut f).await?;

    progress.step(&format!("parallel bulk via {label}"));
    let started = Instant::now();
    let path = format!("/bytes/{}", sizes.parallel_each);
    let runs: Vec<_> = (0..sizes.parallel)
        .map(|_| {
            let (target, path) = (target.clone(), path.clone());
            tokio::spawn(async move { load::download(&target, &path).await })
        })
        .collect();
    let mut rates = Vec::new();
    let mut total = 0u64;
    for run in runs {
        let (bytes, secs) = run.await.map_err(|e| BenchError::new(e.to_string()))??;
        total += bytes;
        rates.push(mbps(bytes, secs));
    }
    f.parallel_mbps = mbps(total, started.elapsed().as_secs_f64());
    f.fairness =
        rates.iter().cloned().fold(f64::MAX, f64::min) / rates.iter().cloned().fold(0.0, f64::max);

    request_scenarios(target, procs, sizes, progress, label, &mut f).await?;

    progress.step(&format!("{} audio listeners via {label}", sizes.listeners));
    let track = (sizes.track.as_secs_f64() / AUDIO_INTERVAL.as_secs_f64()) as u64 * AUDIO_CHUNK;
    let listeners: Vec<_> = (0..sizes.listeners)
        .map(|i| {
            let target = target.clone();
            tokio::spawn(async move {
                // Spread the starts over one chunk interval, like real listeners.
                tokio::time::sleep(AUDIO_INTERVAL.mul_f64(i as f64 / 500.0)).await;
                load::listen(&target, track, AUDIO_CHUNK, AUDIO_INTERVAL).await
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    let mut worst_first = Duration::ZERO;
    for l in listeners {
        let l = l.await.map_err(|e| BenchError::new(e.to_string()))??;
        f.audio_listeners += 1;
        if l.bytes == l.expected && l.rate >= 0.95 {
            f.audio_kept_rate += 1;
        }
        worst = worst.max(l.worst_gap);
        worst_first = worst_first.max(l.worst_first_bytes);
    }
    f.audio_worst_gap_ms = worst.as_secs_f64() * 1000.0;
    f.audio_worst_first_bytes_ms = worst_first.as_secs_f64() * 1000.0;

    progress.step(&format!("isolation via {label}"));
    let held = load::stall(target, &format!("/bytes/{}", 1024 * MIB), sizes.stalled).await?;
    // Let the stalled streams fill their windows first: the steady state (all
    // of them blocked, holding buffers) is what this scenario is about.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (bytes, secs) = load::download(target, &format!("/bytes/{}", sizes.bulk)).await?;
    f.isolation_mbps = mbps(bytes, secs);
    drop(held);

    progress.step(&format!("done with {label}"));
    Ok(f)
}

#[allow(clippy::too_many_arguments)]
fn rows(
    direct: &HttpFigures,
    tunnel: &[HttpFigures],
    raw: &[(f64, f64)],
    idle_kib: &[f64],
    agent_idle_rss: &[u64],
    fallback_ms: &[f64],
    sizes: &Sizes,
) -> Vec<Row> {
    let q = &tunnel[0];
    let w = &tunnel[1];
    let both = |f: fn(&HttpFigures) -> f64| (Some(f(q)), Some(f(w)));
    let mib = |b: u64| b as f64 / MIB as f64;
    let bulk = format!("bulk {} MiB", sizes.bulk / MIB);
    let mut rows = vec![];
    let (bq, bw) = both(|f| f.bulk_mbps);
    rows.push(
        Row::new(&bulk, "throughput", "MB/s", Better::Higher)
            .direct(direct.bulk_mbps)
            .tunnel(bq, bw),
    );
    rows.push(
        Row::new(&bulk, "throughput vs raw transport", "MB/s", Better::Higher)
            .baselines(Some(raw[0].0), Some(raw[1].0))
            .tunnel(bq, bw)
            .target("≥ 0.75× raw", 0.75, false),
    );
    rows.push(
        // Role for role: raw sender + receiver against agent + server, the
        // bytes going from the dialing side to the listening side in both.
        Row::new(
            &bulk,
            "CPU server+agent vs raw peers",
            "s/GiB",
            Better::Lower,
        )
        .baselines(Some(raw[0].1), Some(raw[1].1))
        .tunnel(q.bulk_cpu_per_gib, w.bulk_cpu_per_gib)
        .target("≤ 1.3× raw", 1.3, false),
    );
    let (pq, pw) = both(|f| f.parallel_mbps);
    rows.push(
        Row::new(
            &format!(
                "parallel {}×{} MiB",
                sizes.parallel,
                sizes.parallel_each / MIB
            ),
            "aggregate",
            "MB/s",
            Better::Higher,
        )
        .direct(direct.parallel_mbps)
        .tunnel(pq, pw),
    );
    let (fq, fw) = both(|f| f.fairness);
    rows.push(
        Row::new(
            "parallel",
            "fairness slowest/fastest",
            "ratio",
            Better::Higher,
        )
        .direct(direct.fairness)
        .tunnel(fq, fw),
    );
    rows.extend(request_rows(Some(direct), [Some(q), Some(w)], sizes));
    let audio = format!(
        "audio {}×320 kbit/s, {} s, seek",
        sizes.listeners,
        sizes.track.as_secs()
    );
    rows.push(
        Row::new(&audio, "listeners keeping rate", "count", Better::Higher)
            .direct(direct.audio_kept_rate as f64)
            .tunnel(
                Some(q.audio_kept_rate as f64),
                Some(w.audio_kept_rate as f64),
            )
            // Absolute: every listener, not as many as direct managed.
            .target("all", sizes.listeners as f64, true),
    );
    let (gq, gw) = both(|f| f.audio_worst_gap_ms);
    rows.push(
        Row::new(&audio, "worst gap between chunks", "ms", Better::Lower)
            .direct(direct.audio_worst_gap_ms)
            .tunnel(gq, gw)
            .target("≤ 100 ms", 100.0, true),
    );
    // Where the worst gap comes from: a response slow to start (at the start
    // or the seek) rather than a stream stalling mid-way.
    let (fq, fw) = both(|f| f.audio_worst_first_bytes_ms);
    rows.push(
        Row::new(&audio, "worst wait for first bytes", "ms", Better::Lower)
            .direct(direct.audio_worst_first_bytes_ms)
            .tunnel(fq, fw),
    );
    let (iq, iw) = both(|f| f.isolation_mbps);
    rows.push(
        Row::new(
            &format!("isolation, {} stalled readers", sizes.stalled),
            "bulk vs bulk alone",
            "MB/s",
            Better::Higher,
        )
        .baselines(bq, bw)
        .tunnel(iq, iw)
        .target("≥ 0.9×", 0.9, false),
    );
    rows.push(
        Row::new(
            &format!("idle, {} agents", sizes.idle_agents),
            "server memory per agent",
            "KiB",
            Better::Lower,
        )
        .tunnel(idle_kib.first().copied(), idle_kib.get(1).copied())
        .target("≤ 48 KiB", 48.0, true),
    );
    rows.push(
        Row::new("idle", "agent process RSS", "MiB", Better::Lower).tunnel(
            agent_idle_rss.first().map(|b| mib(*b)),
            agent_idle_rss.get(1).map(|b| mib(*b)),
        ),
    );
    for (what, get) in [
        (
            "bulk",
            (|f: &HttpFigures| f.bulk_peak_rss) as fn(&HttpFigures) -> Option<(u64, u64)>,
        ),
        ("small requests", |f| f.small_peak_rss),
    ] {
        for (process, pick) in [
            ("server", (|p: (u64, u64)| p.0) as fn((u64, u64)) -> u64),
            ("agent", |p| p.1),
        ] {
            rows.push(
                Row::new(
                    &format!("memory, {what}"),
                    &format!("{process} peak RSS"),
                    "MiB",
                    Better::Lower,
                )
                .tunnel(get(q).map(|p| mib(pick(p))), get(w).map(|p| mib(pick(p))))
                .target("≤ 32 MiB", 32.0, true),
            );
        }
    }
    rows.push(
        Row::new(
            "first request after agent start",
            "UDP open (auto → QUIC)",
            "ms",
            Better::Lower,
        )
        .tunnel(fallback_ms.first().copied(), None),
    );
    rows.push(
        Row::new(
            "first request after agent start",
            "UDP silently dropped (auto → WS)",
            "ms",
            Better::Lower,
        )
        .tunnel(None, fallback_ms.get(1).copied())
        .target("≤ 1000 ms", 1000.0, true),
    );
    rows
}

#[derive(Serialize)]
struct Json<'a> {
    quick: bool,
    machine: String,
    rows: &'a [Row],
    /// Every run's figures, per target.
    direct: &'a [HttpFigures],
    quic: &'a [HttpFigures],
    ws: &'a [HttpFigures],
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

fn write_report(
    out: &Path,
    rows: &[Row],
    quick: bool,
    direct: &[HttpFigures],
    tunnel: &[Vec<HttpFigures>],
) -> Result<(), BenchError> {
    let kind = match (quick, direct.len()) {
        (true, 1) => "quick run".to_string(),
        (true, n) => format!("quick run, median of {n}"),
        (false, 1) => "full run".to_string(),
        (false, n) => format!("full run, median of {n} with ranges"),
    };
    let table = report::table(rows);
    println!("\nwarren tunnel benchmark ({kind}; {})\n", machine());
    println!("{table}");
    let json = Json {
        quick,
        machine: machine(),
        rows,
        direct,
        quic: &tunnel[0],
        ws: &tunnel[1],
    };
    let write = |name: &str, text: String| {
        std::fs::write(out.join(name), text).map_err(BenchError::io("writing the report"))
    };
    write(
        "tunnel.json",
        serde_json::to_string_pretty(&json).map_err(|e| BenchError::new(e.to_string()))?,
    )?;
    write("tunnel.md", table)?;
    write(
        "tunnel.svg",
        report::svg(rows, &format!("warren: tunnel ÷ baseline ({kind})")),
    )?;
    println!(
        "wrote {0}/tunnel.json, {0}/tunnel.md, {0}/tunnel.svg",
        out.display()
    );
    Ok(())
}

/// What holding a crowd of idle agents showed.
struct ManyIdle {
    kib_per_agent: f64,
    connect_secs: f64,
    /// Connections that dropped, or were made again, during the hold.
    lost: u64,
}

/// Connects `count` idle agents to a fresh server, then holds them for
/// `hold`, watching the server's count and its admissions.
async fn hold_idle_agents(
    bin: &Path,
    dir: &Path,
    kind: TransportKind,
    count: usize,
    hold: Duration,
) -> Result<ManyIdle, BenchError> {
    let room = (count + 10).to_string();
    let extra = [
        "--max-connections-per-client".to_string(),
        room.clone(),
        "--max-agents".to_string(),
        room,
    ];
    let server = Server::start(bin, dir, &format!("many-{kind}"), &extra).await?;
    let token = server.issue("many").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.proc.rss();
    let started = Instant::now();
    let agents = server
        .idle_agents(bin, dir, "many", token, kind, count)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    // At least: a connection the agent gave up on during the storm may
    // linger on the server until its idle timeout.
    while server.health().await.map(|h| h.0).unwrap_or(0) < count as u64 {
        if Instant::now() > deadline {
            return Err(BenchError::new(format!(
                "{count} agents did not connect within 300 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.proc.rss();
    let admitted_before = server.health().await.map(|h| h.1).unwrap_or(0);
    let mut fewest = count as u64;
    let held = Instant::now() + hold;
    while Instant::now() < held {
        if let Some((connected, _)) = server.health().await {
            fewest = fewest.min(connected);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let admitted_after = server.health().await.map(|h| h.1).unwrap_or(0);
    agents.stop().await;
    server.proc.stop().await;
    Ok(ManyIdle {
        kib_per_agent: (after as f64 - before as f64) / count as f64 / 1024.0,
        connect_secs,
        lost: (count as u64 - fewest).max(admitted_after.saturating_sub(admitted_before)),
    })
}

/// `warren bench-idle-agents`: many agents in one process, all idle.
pub async fn idle_agents(
    config: crate::agent::AgentConfig,
    count: usize,
) -> Result<(), BenchError> {
    // One socket per agent (and per QUIC endpoint): thousands of them.
    let _ = crate::accept::raise_fd_limit();
    let (trigger, stop) = crate::shutdown::channel();
    let mut tasks = Vec::new();
    for _ in 0..count {
        let agent =
            crate::agent::Agent::new(config.clone()).map_err(|e| BenchError::new(e.to_string()))?;
        tasks.push(tokio::spawn(agent.run(stop.clone())));
    }
    println!("started {count} agents");
    let _ = tokio::signal::ctrl_c().await;
    trigger.fire();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

pub use raw::serve as raw_server;
