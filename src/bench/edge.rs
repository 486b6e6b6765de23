//! The client edge, per transport: one server with HTTPS on its client API
//! and a plain listener beside it, so that bulk over HTTPS is measured
//! against bulk over plain HTTP in the same run (what TLS to clients
//! costs), bulk over HTTP/3 against HTTPS, and small requests over one
//! HTTP/2 connection with many streams against as many HTTP/1.1
//! connections over HTTPS.

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
    h3_bulk: f64,
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
        "--api-http3".into(),
    ]
}

/// HTTP/3 to the server: a QUIC client trusting [`certificate`]'s.
#[derive(Clone)]
pub(super) struct H3Target {
    pub addr: SocketAddr,
    pub client_id: String,
    pub config: quinn::ClientConfig,
}

/// One HTTP/3 download of `path`, on a new connection: bytes, seconds.
async fn download_h3(target: &H3Target, path: &str) -> Result<(u64, f64), BenchError> {
    use bytes::Buf;
    let h3_err = |e: &dyn std::fmt::Display| BenchError::new(format!("HTTP/3 download: {e}"));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr"))
        .map_err(BenchError::io("HTTP/3 client socket"))?;
    endpoint.set_default_client_config(target.config.clone());
    let conn = endpoint
        .connect(target.addr, "localhost")
        .map_err(|e| h3_err(&e))?
        .await
        .map_err(|e| h3_err(&e))?;
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .map_err(|e| h3_err(&e))?;
    let drive = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let started = std::time::Instant::now();
    let req = http::Request::get(format!(
        "https://localhost{path}?clientId={}",
        target.client_id
    ))
    .body(())
    .map_err(|e| h3_err(&e))?;
    let mut stream = send.send_request(req).await.map_err(|e| h3_err(&e))?;
    stream.finish().await.map_err(|e| h3_err(&e))?;
    let resp = stream.recv_response().await.map_err(|e| h3_err(&e))?;
    if resp.status() != http::StatusCode::OK {
        return Err(BenchError::new(format!(
            "HTTP/3 download: {}",
            resp.status()
        )));
    }
    let mut bytes = 0u64;
    while let Some(chunk) = stream.recv_data().await.map_err(|e| h3_err(&e))? {
        bytes += chunk.remaining() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    drive.abort();
    Ok((bytes, secs))
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
    h3: &H3Target,
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
    download_h3(h3, &path).await?;
    for _ in 0..2 {
        let (bytes, secs) = load::download(http, &path).await?;
        f.plain_bulk = f.plain_bulk.max(mbps(bytes, secs));
        let (bytes, secs) = load::download(https, &path).await?;
        f.https_bulk = f.https_bulk.max(mbps(bytes, secs));
        let (bytes, secs) = download_h3(h3, &path).await?;
        f.h3_bulk = f.h3_bulk.max(mbps(bytes, secs));
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
    let (h3q, h3w) = pick(|f| f.h3_bulk);
    let small = format!("client edge: 1 KiB requests, {STREAMS} at once");
    let (h1q, h1w) = pick(|f| f.https_h1_rps);
    let (h2q, h2w) = pick(|f| f.h2_rps);
    vec![
        Row::new(&bulk, "over HTTPS vs plain HTTP", "MB/s", Better::Higher)
            .baselines(pq, pw)
            .tunnel(hq, hw)
            .target("≥ 0.85× plain", 0.85, false),
        Row::new(&bulk, "over HTTP/3 vs HTTPS", "MB/s", Better::Higher)
            .baselines(hq, hw)
            .tunnel(h3q, h3w),
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
/// and clients that trust it: offering HTTP/1.1, and HTTP/2; and HTTP/3's.
pub(super) fn certificate(
    dir: &Path,
) -> Result<([tokio_rustls::TlsConnector; 2], quinn::ClientConfig), BenchError> {
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
    let mut h3 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| BenchError::new(e.to_string()))?
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    h3.alpn_protocols = vec![b"h3".to_vec()];
    let h3 = quinn::crypto::rustls::QuicClientConfig::try_from(h3)
        .map_err(|e| BenchError::new(format!("HTTP/3 client TLS: {e}")))?;
    Ok((
        [connector(b"http/1.1")?, connector(b"h2")?],
        quinn::ClientConfig::new(Arc::new(h3)),
    ))
}
