//! Load generators: real HTTP/1.1 clients (hyper) against a target that is
//! either the upstream itself (direct) or the server's client API (tunnelled,
//! naming the agent with `X-Warren-Client`).

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio::{net::TcpStream, time::Instant};

use super::error::BenchError;

/// Where requests go.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Some` when going through warren.
    pub client_id: Option<String>,
    /// HTTPS (SNI `localhost`) with this client, else plain HTTP.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One keep-alive connection.
pub async fn connect(target: &Target) -> Result<Sender, BenchError> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(BenchError::io("connect"))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = match &target.tls {
        None => {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(BenchError::http("handshake"))?;
            (sender, tokio::spawn(conn))
        }
        Some(tls) => {
            let tls = tls
                .connect(localhost(), tcp)
                .await
                .map_err(BenchError::io("TLS handshake"))?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(BenchError::http("handshake"))?;
            (sender, tokio::spawn(conn))
        }
    };
    drop(conn);
    Ok(sender)
}

fn localhost() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").expect("a DNS name")
}

/// `streams` requests at a time on one HTTP/2 connection over TLS (ALPN
/// h2), back to back for `duration`; returns every request's latency.
pub async fn closed_loop_h2(
    target: &Target,
    path: &str,
    streams: usize,
    duration: Duration,
) -> Result<Vec<Duration>, BenchError> {
    let tls = target
        .tls
        .as_ref()
        .ok_or_else(|| BenchError::new("HTTP/2 is measured over HTTPS"))?;
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(BenchError::io("connect"))?;
    let _ = tcp.set_nodelay(true);
    let tls = tls
        .connect(localhost(), tcp)
        .await
        .map_err(BenchError::io("TLS handshake"))?;
    let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .map_err(BenchError::http("HTTP/2 handshake"))?;
    tokio::spawn(conn);
    let deadline = Instant::now() + duration;
    let uri = format!("https://localhost{path}");
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let (mut sender, target, uri) = (sender.clone(), target.clone(), uri.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let mut req = Request::get(uri.as_str());
                    if let Some(id) = &target.client_id {
                        req = req.header("x-warren-client", id);
                    }
                    let req = req.body(Empty::new()).expect("valid request");
                    let resp = sender
                        .send_request(req)
                        .await
                        .map_err(BenchError::http("HTTP/2 request"))?;
                    drain(resp).await?;
                    latencies.push(started.elapsed());
                }
                Ok::<_, BenchError>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(|e| BenchError::new(e.to_string()))??);
    }
    Ok(all)
}

fn request(target: &Target, path: &str, range: Option<u64>) -> Request<Empty<Bytes>> {
    let mut req = Request::get(path).header("host", target.addr.to_string());
    if let Some(id) = &target.client_id {
        req = req.header("x-warren-client", id);
    }
    if let Some(from) = range {
        req = req.header("range", format!("bytes={from}-"));
    }
    req.body(Empty::new()).expect("valid request")
}

/// One request; any status is an answer.
pub async fn send_any(
    sender: &mut Sender,
    target: &Target,
    path: &str,
) -> Result<http::Response<Incoming>, BenchError> {
    sender
        .ready()
        .await
        .map_err(BenchError::http("connection"))?;
    sender
        .send_request(request(target, path, None))
        .await
        .map_err(BenchError::http("request"))
}

/// One request; anything but a success is an error.
pub async fn send(
    sender: &mut Sender,
    target: &Target,
    path: &str,
    range: Option<u64>,
) -> Result<http::Response<Incoming>, BenchError> {
    sender
        .ready()
        .await
        .map_err(BenchError::http("connection"))?;
    let resp = sender
        .send_request(request(target, path, range))
        .await
        .map_err(BenchError::http("request"))?;
    if !resp.status().is_success() {
        return Err(BenchError::new(format!("{path}: HTTP {}", resp.status())));
    }
    Ok(resp)
}

/// Reads and discards a body; returns its length.
pub async fn drain(resp: http::Response<Incoming>) -> Result<u64, BenchError> {
    let mut body = resp.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BenchError::http("body"))?;
        if let Some(data) = frame.data_ref() {
            total += data.len() as u64;
        }
    }
    Ok(total)
}

/// One download on its own connection: (bytes, seconds).
pub async fn download(target: &Target, path: &str) -> Result<(u64, f64), BenchError> {
    let mut sender = connect(target).await?;
    let started = Instant::now();
    let resp = send(&mut sender, target, path, None).await?;
    let bytes = drain(resp).await?;
    Ok((bytes, started.elapsed().as_secs_f64()))
}

/// `clients` keep-alive connections issuing requests back to back for
/// `duration`; returns every request's latency.
pub async fn closed_loop(
    target: &Target,
    path: &str,
    clients: usize,
    duration: Duration,
) -> Result<Vec<Duration>, BenchError> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let target = target.clone();
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&target).await?;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let resp = send(&mut sender, &target, &path, None).await?;
                drain(resp).await?;
                latencies.push(started.elapsed());
            }
            Ok::<_, BenchError>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.map_err(|e| BenchError::new(e.to_string()))??);
    }
    Ok(all)
}

/// `count` requests one after another on one connection.
pub async fn sequential(
    target: &Target,
    path: &str,
    count: usize,
) -> Result<Vec<Duration>, BenchError> {
    let mut sender = connect(target).await?;
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let resp = send(&mut sender, target, path, None).await?;
        drain(resp).await?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

/// Starts `count` large downloads and reads only their heads: stalled readers.
pub async fn stall(
    target: &Target,
    path: &str,
    count: usize,
) -> Result<Vec<(Sender, http::Response<Incoming>)>, BenchError> {
    let mut held = Vec::new();
    for _ in 0..count {
        let mut sender = connect(target).await?;
        let resp = send(&mut sender, target, path, None).await?;
        held.push((sender, resp));
    }
    Ok(held)
}

/// What one audio listener saw.
pub struct Listening {
    pub bytes: u64,
    pub expected: u64,
    /// Longest wait between two chunks (or before the first, after a seek).
    pub worst_gap: Duration,
    /// Longest wait for a response's first bytes (the start, or the seek).
    pub worst_first_bytes: Duration,
    /// Playing time the bytes cover divided by the wall time they took.
    pub rate: f64,
}

/// A listener: plays `track_bytes` paced by the server at `chunk` bytes every
/// `interval`, seeking (a new `Range` request) to the middle half-way through.
pub async fn listen(
    target: &Target,
    track_bytes: u64,
    chunk: u64,
    interval: Duration,
) -> Result<Listening, BenchError> {
    let path = format!(
        "/bytes/{track_bytes}?chunk={chunk}&delay_ms={}",
        interval.as_millis()
    );
    let half = track_bytes / 2;
    let mut sender = connect(target).await?;
    let started = Instant::now();
    let mut worst_gap = Duration::ZERO;
    let mut worst_first_bytes = Duration::ZERO;
    let mut bytes = 0u64;
    for (range, want) in [(None, half), (Some(half), track_bytes - half)] {
        let asked = Instant::now();
        let resp = send(&mut sender, target, &path, range).await?;
        let mut body = resp.into_body();
        let mut last = asked;
        let mut got = 0u64;
        while got < want {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        if got == 0 {
                            worst_first_bytes = worst_first_bytes.max(asked.elapsed());
                        }
                        got += data.len() as u64;
                        worst_gap = worst_gap.max(last.elapsed());
                        last = Instant::now();
                    }
                }
                Some(Err(e)) => return Err(BenchError::new(format!("listener body: {e}"))),
                None => break,
            }
        }
        bytes += got;
        if range.is_none() {
            // Seek: abandon the first response (a new connection carries the rest).
            drop(body);
            sender = connect(target).await?;
        }
    }
    let playing = track_bytes as f64 / chunk as f64 * interval.as_secs_f64();
    Ok(Listening {
        bytes,
        expected: track_bytes,
        worst_gap,
        worst_first_bytes,
        rate: playing / started.elapsed().as_secs_f64(),
    })
}

/// Polls until a request succeeds; returns when (for the fallback scenario).
pub async fn first_success(target: &Target, path: &str, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(mut sender) = connect(target).await {
            if let Ok(resp) = send(&mut sender, target, path, None).await {
                if drain(resp).await.is_ok() {
                    return Some(Instant::now());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Percentile (0–100) of sorted latencies, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}
