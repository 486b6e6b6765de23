//! The client edge, per transport: one server with HTTPS on its client API
//! and a plain listener beside it, so that bulk over HTTPS is measured
//! against bulk over plain HTTP in the same run (what TLS to clients
//! costs), and small requests over one HTTP/2 connection with many streams
//! against as many HTTP/1.1 connections over HTTPS.

use std::{net::SocketAddr, path::Path, sync::Arc};

use super::{
    error::BenchError,
    load::{self, Target},
    report::{Better, Row},
    scenarios::{mbps, Progress, Sizes, MIB},
};
use crate::transport::TransportKind;

/// Requests open at once in the small-request scenarios: the harness's
/// keep-alive client count, as streams of one HTTP/2 connection.
const STREAMS: usize = 64;

#[derive(Default)]
pub(super) struct EdgeFigures {
    plain_bulk: f64,
    https_bulk: f64,
    https_h1_rps: f64,
    h2_rps: f64,
}

/// The server flags of the edge scenarios: HTTPS with the certificate of
/// [`certificate`], and a plain listener beside it.
pub(super) fn server_args(dir: &Path) -> Vec<String> {
    vec![
        "--api-tls-cert".into(),
        dir.join("edge.pem").display().to_string(),
        "--api-tls-key".into(),
        dir.join("edge.key").display().to_string(),
        "--api-plain-listen".into(),
        "127.0.0.1:0".into(),
    ]
}

/// The three ways to the same server: HTTPS offering HTTP/1.1, HTTPS
/// offering HTTP/2 (`tls`: from [`certificate`]), and its plain listener.
pub(super) fn targets(
    api: SocketAddr,
    plain: SocketAddr,
    client_id: &str,
    [h1, h2]: &[tokio_rustls::TlsConnector; 2],
) -> [Target; 3] {
    let https = Target {
        addr: api,
        client_id: Some(client_id.into()),
        tls: Some(h1.clone()),
    };
    let https_h2 = Target {
        tls: Some(h2.clone()),
        ..https.clone()
    };
    let http = Target {
        addr: plain,
        tls: None,
        ..https.clone()
    };
    [https, https_h2, http]
}

/// `[https, https_h2, http]`: the same server by HTTPS (ALPN http/1.1, then
/// h2) and by its plain listener.
pub(super) async fn run(
    [https, https_h2, http]: &[Target; 3],
    sizes: &Sizes,
    progress: &mut Progress,
    kind: TransportKind,
) -> Result<EdgeFigures, BenchError> {
    let mut f = EdgeFigures::default();
    progress.step(&format!("bulk over HTTPS and plain HTTP via {kind}"));
    let path = format!("/bytes/{}", sizes.bulk);
    // Warm both (windows, allocator), then the best of two each, taken in
    // turn so that a noisy moment does not land on one side only.
    load::download(http, &path).await?;
    load::download(https, &path).await?;
    for _ in 0..2 {
        let (bytes, secs) = load::download(http, &path).await?;
        f.plain_bulk = f.plain_bulk.max(mbps(bytes, secs));
        let (bytes, secs) = load::download(https, &path).await?;
        f.https_bulk = f.https_bulk.max(mbps(bytes, secs));
    }
    progress.step(&format!(
        "small requests over HTTP/1.1 and HTTP/2 via {kind}"
    ));
    let rate = |lat: Vec<_>| lat.len() as f64 / sizes.small_time.as_secs_f64();
    f.https_h1_rps =
        rate(load::closed_loop(https, "/bytes/1024", STREAMS, sizes.small_time).await?);
    f.h2_rps =
        rate(load::closed_loop_h2(https_h2, "/bytes/1024", STREAMS, sizes.small_time).await?);
    Ok(f)
}

pub(super) fn rows(figures: &[EdgeFigures], sizes: &Sizes) -> Vec<Row> {
    let pick = |f: fn(&EdgeFigures) -> f64| (figures.first().map(f), figures.get(1).map(f));
    let bulk = format!("client edge: bulk {} MiB", sizes.bulk / MIB);
    let (pq, pw) = pick(|f| f.plain_bulk);
    let (hq, hw) = pick(|f| f.https_bulk);
    let small = format!("client edge: 1 KiB requests, {STREAMS} at once");
    let (h1q, h1w) = pick(|f| f.https_h1_rps);
    let (h2q, h2w) = pick(|f| f.h2_rps);
    vec![
        Row::new(&bulk, "over HTTPS vs plain HTTP", "MB/s", Better::Higher)
            .baselines(pq, pw)
            .tunnel(hq, hw)
            .target("≥ 0.85× plain", 0.85, false),
        Row::new(
            &small,
            &format!("one HTTP/2 connection vs {STREAMS} HTTP/1.1 (HTTPS)"),
            "req/s",
            Better::Higher,
        )
        .baselines(h1q, h1w)
        .tunnel(h2q, h2w),
    ]
}

/// A self-signed certificate for `localhost` in `dir` (edge.pem, edge.key),
/// and clients that trust it: offering HTTP/1.1, and HTTP/2.
pub(super) fn certificate(dir: &Path) -> Result<[tokio_rustls::TlsConnector; 2], BenchError> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .map_err(|e| BenchError::new(format!("generating the edge certificate: {e}")))?;
    std::fs::write(dir.join("edge.pem"), made.cert.pem())
        .map_err(BenchError::io("writing edge.pem"))?;
    std::fs::write(dir.join("edge.key"), made.key_pair.serialize_pem())
        .map_err(BenchError::io("writing edge.key"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(made.cert.der().clone())
        .map_err(|e| BenchError::new(format!("trusting the edge certificate: {e}")))?;
    let roots = Arc::new(roots);
    let connector = |alpn: &[u8]| {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| BenchError::new(e.to_string()))?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok::<_, BenchError>(tokio_rustls::TlsConnector::from(Arc::new(config)))
    };
    Ok([connector(b"http/1.1")?, connector(b"h2")?])
}
