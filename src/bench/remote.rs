//! `warren bench --remote`: the bulk, small-request and latency scenarios
//! against a deployment the user runs (a real server, a real agent, the
//! agent's upstream being `warren upstream`), and directly against that
//! upstream when it is reachable, printed as the same table. Loopback hides
//! round trips; this shows what a real path adds.
//!
//! Only the client side is measured: the server and agent are elsewhere, so
//! there are no CPU or memory rows, and the loopback targets do not apply.

use std::{net::SocketAddr, path::PathBuf};

use http_body_util::BodyExt;
use serde::Serialize;

use super::{
    error::BenchError,
    load::{self, Target},
    report::{self, Better, Row},
    scenarios::{
        measure_bulk, measure_sequential, measure_small, request_rows, HttpFigures, Progress,
        Sizes, MIB,
    },
};
use crate::{sample, transport::TransportKind};

pub struct RemoteOptions {
    /// The server's client API, `http://HOST[:PORT]`.
    pub server: String,
    /// The agent the requests name.
    pub client_id: String,
    /// The agent's upstream (`warren upstream`), when this machine reaches it.
    pub direct: Option<String>,
    /// The column the tunnelled figures go in: the transport the agent
    /// reported when it connected.
    pub transport: TransportKind,
    pub quick: bool,
    pub runs: usize,
    pub out: PathBuf,
}

/// The figures of one remote run, as written to `remote.json`.
#[derive(Serialize)]
struct Json<'a> {
    server: &'a str,
    client_id: &'a str,
    transport: &'a str,
    rows: &'a [Row],
    direct: &'a [HttpFigures],
    tunnel: &'a [HttpFigures],
}

/// Runs the remote scenarios and prints the table; returns its rows.
pub async fn run(opts: RemoteOptions) -> Result<Vec<Row>, BenchError> {
    let sizes = Sizes::new(opts.quick);
    std::fs::create_dir_all(&opts.out).map_err(BenchError::io("output directory"))?;
    let tunnel = Target {
        addr: resolve(&opts.server, "--remote").await?,
        client_id: Some(opts.client_id.clone()),
        tls: None,
    };
    check_upstream(
        &tunnel,
        &format!("{} through {}", opts.client_id, opts.server),
    )
    .await?;
    let direct = match &opts.direct {
        Some(url) => {
            let target = Target {
                addr: resolve(url, "--direct").await?,
                client_id: None,
                tls: None,
            };
            // Best effort: the upstream is often not reachable from outside.
            match check_upstream(&target, url).await {
                Ok(()) => Some(target),
                Err(e) => {
                    eprintln!("warren bench: measuring without a direct baseline: {e}");
                    None
                }
            }
        }
        None => None,
    };

    let runs = opts.runs.max(1);
    let per_target = 3;
    let mut progress = Progress::new(per_target * runs * (1 + direct.is_some() as usize));
    let mut direct_figures = Vec::new();
    let mut tunnel_figures = Vec::new();
    for _ in 0..runs {
        if let Some(target) = &direct {
            direct_figures.push(scenarios(target, &sizes, &mut progress, "direct").await?);
        }
        tunnel_figures.push(scenarios(&tunnel, &sizes, &mut progress, "the tunnel").await?);
    }
    eprintln!();

    let column = match opts.transport {
        TransportKind::Quic => 0,
        TransportKind::Ws => 1,
    };
    let rows = report::merge_runs(
        (0..runs)
            .map(|i| {
                let mut at = [None, None];
                at[column] = Some(&tunnel_figures[i]);
                run_rows(direct_figures.get(i), at, &sizes)
            })
            .collect(),
    );
    println!(
        "\nwarren remote benchmark: {} via {} over {} ({} run{}{})\n",
        opts.client_id,
        opts.server,
        opts.transport,
        runs,
        if runs == 1 { "" } else { "s, medians" },
        if direct.is_some() {
            ", against its upstream directly"
        } else {
            ", no direct baseline"
        },
    );
    println!("{}", report::table(&rows));
    let json = Json {
        server: &opts.server,
        client_id: &opts.client_id,
        transport: opts.transport.as_str(),
        rows: &rows,
        direct: &direct_figures,
        tunnel: &tunnel_figures,
    };
    std::fs::write(
        opts.out.join("remote.json"),
        serde_json::to_string_pretty(&json).map_err(|e| BenchError::new(e.to_string()))?,
    )
    .map_err(BenchError::io("writing the report"))?;
    Ok(rows)
}

async fn scenarios(
    target: &Target,
    sizes: &Sizes,
    progress: &mut Progress,
    label: &str,
) -> Result<HttpFigures, BenchError> {
    let mut f = HttpFigures::default();
    progress.step(&format!("bulk via {label}"));
    measure_bulk(target, &[], sizes, &mut f).await?;
    progress.step(&format!("small requests via {label}"));
    measure_small(target, &[], sizes, &mut f).await?;
    progress.step(&format!("sequential requests via {label}"));
    measure_sequential(target, sizes, &mut f).await?;
    Ok(f)
}

/// The rows a remote run fills: bulk, then the request rows. Without the
/// loopback targets (a real path's round trips are not the tunnel's cost)
/// and without rows nothing was measured for.
fn run_rows(
    direct: Option<&HttpFigures>,
    tunnel: [Option<&HttpFigures>; 2],
    sizes: &Sizes,
) -> Vec<Row> {
    let bulk = |f: &HttpFigures| f.bulk_mbps;
    let d = direct.map(bulk);
    let mut rows = vec![Row::new(
        &format!("bulk {} MiB", sizes.bulk / MIB),
        "throughput",
        "MB/s",
        Better::Higher,
    )
    .baselines(d, d)
    .tunnel(tunnel[0].map(bulk), tunnel[1].map(bulk))];
    rows.extend(request_rows(direct, tunnel, sizes));
    rows.retain(|r| r.tunnel.iter().any(Option::is_some));
    for row in &mut rows {
        row.target = None;
    }
    rows
}

/// `http://HOST[:PORT]` to the address it names (the first one resolved).
async fn resolve(url: &str, flag: &str) -> Result<SocketAddr, BenchError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| BenchError::new(format!("{flag} {url:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(BenchError::new(format!(
                "{flag} {url}: the client API speaks plain HTTP; give its http:// listener \
                 (with a TLS proxy in front, measure through the proxy's plain side)"
            )))
        }
        _ => {
            return Err(BenchError::new(format!(
                "{flag} {url:?}: give an http://HOST[:PORT] URL"
            )))
        }
    }
    let host = uri
        .host()
        .ok_or_else(|| BenchError::new(format!("{flag} {url}: no host")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(80);
    let first = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(BenchError::io("resolving the server"))?
        .next();
    first.ok_or_else(|| BenchError::new(format!("{flag} {url}: {host} resolves to no address")))
}

/// The scenarios ask for `/bytes/N` and count what comes back: make sure
/// the other end is `warren upstream` (and the agent is there) first, so a
/// wrong set-up fails with its reason instead of a table of errors.
async fn check_upstream(target: &Target, what: &str) -> Result<(), BenchError> {
    const PROBE: usize = 4096;
    let mut sender = load::connect(target).await.map_err(|e| e.context(what))?;
    let path = format!("/bytes/{PROBE}");
    let resp = load::send_any(&mut sender, target, &path)
        .await
        .map_err(|e| e.context(what))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(BenchError::http("reading the probe"))?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(BenchError::new(format!(
            "{what}: GET {path} answered {status}: {text}"
        )));
    }
    if body.as_ref() != &sample::pattern()[..PROBE] {
        return Err(BenchError::new(format!(
            "{what}: GET {path} did not return warren upstream's bytes: run \
             `warren upstream --listen ADDR` beside the agent and give the agent \
             --upstream http://ADDR"
        )));
    }
    Ok(())
}
