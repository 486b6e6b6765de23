//! The rooms scenario: many members in one room, the backend broadcasting
//! small messages at a steady rate. Measures the bytes that cross the tunnel
//! per broadcast (a gate in front of the server counts them; the goal is one
//! copy, not one per member) and the delivery latency to members.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpListener, time::Instant};
use tokio_tungstenite::tungstenite::{handshake::client::generate_key, Message};

use super::{error::BenchError, load::percentile_ms};

pub struct RoomFigures {
    pub bytes_per_broadcast: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Distinct messages delivered / expected (members × broadcasts).
    pub delivered: f64,
    /// Messages a member received more than once.
    pub duplicates: f64,
    /// Growth of the server's RSS per member joined (KiB).
    pub kib_per_member: f64,
}

/// A backend on a local WebSocket: counts joins, then broadcasts on demand.
pub struct Backend {
    pub url: String,
    joins: Arc<AtomicUsize>,
    broadcasts: tokio::sync::mpsc::Sender<Bytes>,
}

pub async fn backend() -> Result<Backend, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(BenchError::io("backend"))?;
    let url = format!(
        "ws://{}/rooms",
        listener.local_addr().map_err(BenchError::io("backend"))?
    );
    let joins = Arc::new(AtomicUsize::new(0));
    let (broadcasts, mut to_send) = tokio::sync::mpsc::channel::<Bytes>(64);
    let counted = joins.clone();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        let (mut tx, mut rx) = ws.split();
        tokio::spawn(async move {
            while let Some(Ok(message)) = rx.next().await {
                if let Message::Text(t) = message {
                    if t.as_str().contains("\"join\"") {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
        let envelope = serde_json::json!({ "type": "broadcast", "room": "bench" }).to_string();
        while let Some(payload) = to_send.recv().await {
            if tx
                .send(Message::Text(envelope.clone().into()))
                .await
                .is_err()
                || tx.send(Message::Binary(payload)).await.is_err()
            {
                return;
            }
        }
    });
    Ok(Backend {
        url,
        joins,
        broadcasts,
    })
}

/// Joins `members` to the room, broadcasts `count` 1 KiB messages at `rate`
/// per second, and measures. `up` reads the bytes that crossed the tunnel.
#[allow(clippy::too_many_arguments)] // one scenario's knobs and probes, each named
pub async fn measure(
    api: SocketAddr,
    client_id: &str,
    backend: &Backend,
    members: usize,
    count: usize,
    rate: u32,
    up: impl Fn() -> u64,
    server_rss: impl Fn() -> u64,
) -> Result<RoomFigures, BenchError> {
    let rss_before = server_rss();
    let t0 = Instant::now();
    // Members read until told to stop (a while after the last broadcast), not
    // until they have the expected count: a duplicate must show, not hide a
    // missing message.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(members);
    for _ in 0..members {
        let ws = join(api, client_id).await?;
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let (_tx, mut rx) = ws.split();
            let mut latencies = Vec::with_capacity(count);
            let mut seen = std::collections::HashSet::with_capacity(count);
            let mut duplicates = 0usize;
            loop {
                tokio::select! {
                    message = rx.next() => match message {
                        Some(Ok(Message::Binary(b))) if b.len() >= 8 => {
                            let sent = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                            if !seen.insert(sent) {
                                duplicates += 1;
                                continue;
                            }
                            let now = t0.elapsed().as_nanos() as u64;
                            latencies.push(Duration::from_nanos(now.saturating_sub(sent)));
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
            (latencies, duplicates)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while backend.joins.load(Ordering::SeqCst) < members {
        if Instant::now() > deadline {
            return Err(BenchError::new("room members did not all join within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Settled joins (the backend heard them all): what members cost at rest.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kib_per_member = (server_rss() as f64 - rss_before as f64) / members.max(1) as f64 / 1024.0;
    let before = up();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    for _ in 0..count {
        ticker.tick().await;
        let mut payload = vec![0u8; 1024];
        payload[..8].copy_from_slice(&(t0.elapsed().as_nanos() as u64).to_le_bytes());
        backend
            .broadcasts
            .send(Bytes::from(payload))
            .await
            .map_err(|_| BenchError::new("the rooms backend went away"))?;
    }
    // Late deliveries still count; then everyone stops listening.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.send_replace(true);
    let mut all = Vec::new();
    let mut duplicates = 0;
    for task in tasks {
        let (latencies, dup) = task.await.map_err(|e| BenchError::new(e.to_string()))?;
        all.extend(latencies);
        duplicates += dup;
    }
    let crossed = up() - before;
    all.sort();
    Ok(RoomFigures {
        bytes_per_broadcast: crossed as f64 / count as f64,
        p50_ms: percentile_ms(&all, 50.0),
        p99_ms: percentile_ms(&all, 99.0),
        delivered: all.len() as f64 / (members * count) as f64,
        duplicates: duplicates as f64,
        kib_per_member,
    })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn join(api: SocketAddr, client_id: &str) -> Result<Ws, BenchError> {
    let tcp = tokio::net::TcpStream::connect(api)
        .await
        .map_err(BenchError::io("member connect"))?;
    let req = http::Request::get(format!(
        "ws://{api}/_warren/rooms/bench?clientId={client_id}"
    ))
    .header("host", api.to_string())
    .header("connection", "Upgrade")
    .header("upgrade", "websocket")
    .header("sec-websocket-version", "13")
    .header("sec-websocket-key", generate_key())
    .body(())
    .map_err(|e| BenchError::new(e.to_string()))?;
    let (ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .map_err(|e| BenchError::new(format!("member join: {e}")))?;
    Ok(ws)
}
