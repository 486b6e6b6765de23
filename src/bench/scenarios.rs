//! The scenarios both kinds of run share (the loopback harness and
//! `--remote`): their sizes, what one target's run measured, the bulk,
//! small-request and latency steps, and the rows they fill.

use std::{io::Write as _, time::Duration};

use serde::Serialize;
use tokio::time::Instant;

use super::{
    error::BenchError,
    load::{self, Target},
    procs::{PeakRss, Proc},
    report::{Better, Row},
};

/// Scenario sizes, full and quick.
pub(super) struct Sizes {
    pub(super) bulk: u64,
    pub(super) parallel: usize,
    pub(super) parallel_each: u64,
    pub(super) small_clients: usize,
    pub(super) small_time: Duration,
    pub(super) sequential: usize,
    pub(super) listeners: usize,
    pub(super) track: Duration,
    pub(super) stalled: usize,
    pub(super) idle_agents: usize,
    /// The large idle crowd, and how long it is held after connecting.
    pub(super) many_agents: usize,
    pub(super) many_hold: Duration,
    pub(super) room_members: usize,
    pub(super) room_broadcasts: usize,
    pub(super) idle_clients: usize,
    /// The long-path scenario: one download's size, and small requests timed.
    pub(super) rtt_bulk: u64,
    pub(super) rtt_requests: usize,
}

pub(super) const MIB: u64 = 1024 * 1024;
pub(super) const GIB: f64 = (1u64 << 30) as f64;

impl Sizes {
    pub(super) fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                bulk: 64 * MIB,
                parallel: 8,
                parallel_each: 8 * MIB,
                small_clients: 64,
                small_time: Duration::from_secs(1),
                sequential: 200,
                listeners: 50,
                track: Duration::from_secs(4),
                stalled: 20,
                idle_agents: 50,
                many_agents: 200,
                many_hold: Duration::from_secs(2),
                room_members: 100,
                room_broadcasts: 20,
                idle_clients: 200,
                rtt_bulk: 32 * MIB,
                rtt_requests: 20,
            }
        } else {
            Sizes {
                bulk: 1024 * MIB,
                parallel: 8,
                parallel_each: 256 * MIB,
                small_clients: 64,
                small_time: Duration::from_secs(10),
                sequential: 2000,
                listeners: 500,
                track: Duration::from_secs(30),
                stalled: 20,
                idle_agents: 1000,
                many_agents: 10_000,
                // Past three heartbeats (10 s each), when a peer whose pongs
                // are late is declared dead.
                many_hold: Duration::from_secs(45),
                room_members: 1000,
                room_broadcasts: 100,
                idle_clients: 1000,
                rtt_bulk: 512 * MIB,
                rtt_requests: 100,
            }
        }
    }
}

/// Everything measured against one target (direct, or one transport).
#[derive(Default, Serialize, Clone)]
pub(super) struct HttpFigures {
    pub(super) bulk_mbps: f64,
    pub(super) bulk_cpu_per_gib: Option<f64>,
    pub(super) bulk_peak_rss: Option<(u64, u64)>,
    pub(super) parallel_mbps: f64,
    pub(super) fairness: f64,
    pub(super) small_rps: f64,
    pub(super) small_p50_ms: f64,
    pub(super) small_p99_ms: f64,
    pub(super) small_p999_ms: f64,
    pub(super) small_peak_rss: Option<(u64, u64)>,
    /// CPU time of server and agent together per small request, in µs.
    pub(super) small_cpu_us: Option<f64>,
    pub(super) sequential_p50_ms: f64,
    pub(super) audio_kept_rate: usize,
    pub(super) audio_listeners: usize,
    pub(super) audio_worst_gap_ms: f64,
    pub(super) audio_worst_first_bytes_ms: f64,
    pub(super) isolation_mbps: f64,
}

/// A one-line progress bar on standard error.
pub(super) struct Progress {
    done: usize,
    total: usize,
    started: Instant,
}

impl Progress {
    pub(super) fn new(total: usize) -> Progress {
        Progress {
            done: 0,
            total,
            started: Instant::now(),
        }
    }

    pub(super) fn step(&mut self, what: &str) {
        self.done += 1;
        let width = 30;
        let filled = width * self.done.min(self.total) / self.total;
        eprint!(
            "\r\x1b[2K[{}{}] {}/{} {:>5.0}s  {what}",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }
}

pub(super) fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

/// One download of `sizes.bulk`: throughput, and with `procs` their CPU per
/// GiB and peak RSS.
pub(super) async fn measure_bulk(
    target: &Target,
    procs: &[&Proc],
    sizes: &Sizes,
    f: &mut HttpFigures,
) -> Result<(), BenchError> {
    let watch = Watch::start(procs).await;
    let (bytes, secs) = load::download(target, &format!("/bytes/{}", sizes.bulk)).await?;
    let (used, peak) = watch.finish().await;
    f.bulk_peak_rss = peak;
    f.bulk_mbps = mbps(bytes, secs);
    f.bulk_cpu_per_gib = used.map(|cpu| cpu / (bytes as f64 / GIB));
    Ok(())
}

/// Small requests from `sizes.small_clients` keep-alive clients, back to
/// back: rate, latency percentiles, and with `procs` CPU per request and
/// peak RSS.
pub(super) async fn measure_small(
    target: &Target,
    procs: &[&Proc],
    sizes: &Sizes,
    f: &mut HttpFigures,
) -> Result<(), BenchError> {
    let watch = Watch::start(procs).await;
    let mut lat =
        load::closed_loop(target, "/bytes/1024", sizes.small_clients, sizes.small_time).await?;
    let (used, peak) = watch.finish().await;
    f.small_peak_rss = peak;
    f.small_cpu_us = used
        .filter(|_| !lat.is_empty())
        .map(|cpu| cpu / lat.len() as f64 * 1e6);
    lat.sort();
    f.small_rps = lat.len() as f64 / sizes.small_time.as_secs_f64();
    f.small_p50_ms = load::percentile_ms(&lat, 50.0);
    f.small_p99_ms = load::percentile_ms(&lat, 99.0);
    f.small_p999_ms = load::percentile_ms(&lat, 99.9);
    Ok(())
}

/// One client, one request at a time: the unloaded latency.
pub(super) async fn measure_sequential(
    target: &Target,
    sizes: &Sizes,
    f: &mut HttpFigures,
) -> Result<(), BenchError> {
    let mut lat = load::sequential(target, "/bytes/1024", sizes.sequential).await?;
    lat.sort();
    f.sequential_p50_ms = load::percentile_ms(&lat, 50.0);
    Ok(())
}

/// Before a peak is taken: what the scenario before freed is given back to
/// the OS by the processes' trimmer (`memory::TRIM_EVERY`), so the peak is
/// this scenario's own.
async fn settle(procs: &[&Proc]) {
    if !procs.is_empty() {
        tokio::time::sleep(crate::memory::TRIM_EVERY + Duration::from_millis(500)).await;
    }
}

/// The CPU time and peak RSS of the tunnel's processes over one scenario.
struct Watch<'a> {
    procs: &'a [&'a Proc],
    peak: PeakRss,
    cpu0: f64,
}

impl<'a> Watch<'a> {
    async fn start(procs: &'a [&'a Proc]) -> Watch<'a> {
        settle(procs).await;
        let pids: Vec<u32> = procs.iter().map(|p| p.pid).collect();
        Watch {
            procs,
            peak: PeakRss::start(&pids),
            cpu0: cpu_seconds(procs),
        }
    }

    /// CPU seconds used (None with no processes) and the server's and
    /// agent's peak RSS (when both were watched).
    async fn finish(self) -> (Option<f64>, Option<(u64, u64)>) {
        let used = cpu_seconds(self.procs) - self.cpu0;
        let peaks = self.peak.finish().await;
        let pair = (peaks.len() == 2).then(|| (peaks[0], peaks[1]));
        ((!self.procs.is_empty()).then_some(used), pair)
    }
}

fn cpu_seconds(procs: &[&Proc]) -> f64 {
    procs.iter().map(|p| p.cpu_seconds()).sum()
}

/// Small-request and latency rows: the part of the table a remote run
/// measures too. `None` where a target was not measured.
pub(super) fn request_rows(
    direct: Option<&HttpFigures>,
    tunnel: [Option<&HttpFigures>; 2],
    sizes: &Sizes,
) -> Vec<Row> {
    let both = |f: fn(&HttpFigures) -> f64| (tunnel[0].map(f), tunnel[1].map(f));
    let opt = |f: fn(&HttpFigures) -> Option<f64>| (tunnel[0].and_then(f), tunnel[1].and_then(f));
    let base = |f: fn(&HttpFigures) -> f64| direct.map(f);
    let small = format!("small 1 KiB, {} clients", sizes.small_clients);
    let mut rows = vec![];
    let (rq, rw) = both(|f| f.small_rps);
    let d = base(|f| f.small_rps);
    rows.push(
        Row::new(&small, "requests", "req/s", Better::Higher)
            .baselines(d, d)
            .tunnel(rq, rw)
            .targets("≥ 0.45× / 0.4× direct", [0.45, 0.4], false),
    );
    let (cq, cw) = opt(|f| f.small_cpu_us);
    rows.push(
        // What a request costs the tunnel, whatever else shares the machine:
        // the L4 tunnels compared in issue 12 spend 28–40 µs (both ends).
        Row::new(&small, "CPU server+agent per request", "µs", Better::Lower)
            .tunnel(cq, cw)
            .targets("≤ 30 / 40 µs", [30.0, 40.0], true),
    );
    for (name, get) in [
        (
            "p50",
            (|f: &HttpFigures| f.small_p50_ms) as fn(&HttpFigures) -> f64,
        ),
        ("p99", |f| f.small_p99_ms),
        ("p99.9", |f| f.small_p999_ms),
    ] {
        let (a, b) = both(get);
        let d = base(get);
        rows.push(
            Row::new(&small, &format!("latency {name}"), "ms", Better::Lower)
                .baselines(d, d)
                .tunnel(a, b),
        );
    }
    let (sq, sw) = both(|f| f.sequential_p50_ms);
    let d = base(|f| f.sequential_p50_ms);
    rows.push(
        Row::new("sequential 1 client", "latency p50", "ms", Better::Lower)
            .baselines(d, d)
            .tunnel(sq, sw),
    );
    let added = |t: Option<f64>| Some(t? - d?);
    rows.push(
        Row::new(
            "sequential 1 client",
            "added latency p50",
            "ms",
            Better::Lower,
        )
        .tunnel(added(sq), added(sw))
        .targets("≤ 0.08 / 0.12 ms", [0.08, 0.12], true),
    );
    rows
}
