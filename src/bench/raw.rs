//! The raw transport ceiling: one bare stream between two processes — QUIC, or
//! yamux over TLS + WebSocket — moving bytes with no HTTP and no tunnel logic,
//! so warren's own overhead shows as "tunnel / raw".

use std::{net::SocketAddr, path::Path};

use bytes::Bytes;
use tokio::time::Instant;

use super::error::BenchError;
use crate::{
    sample::pattern,
    tls::{self, ServerIdentity, Trust},
    transport::{self, Dial, Listener, TransportKind, TransportTuning},
};

/// Serves raw streams: each stream sends an 8-byte big-endian size, and gets
/// that many pattern bytes back, then FIN. Runs until killed.
pub async fn serve(listen: SocketAddr, certs: &Path) -> Result<(), BenchError> {
    let identity =
        ServerIdentity::load_or_generate(certs, &["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| BenchError::new(e.to_string()))?;
    let tls = identity
        .server_config()
        .map_err(|e| BenchError::new(e.to_string()))?;
    let listener = Listener::bind(
        listen,
        tls,
        &TransportTuning::default(),
        identity.reset_secret(),
    )
    .await
    .map_err(|e| BenchError::new(e.to_string()))?;
    println!(
        "listening on {}",
        listener.local_addr().map_err(BenchError::io("addr"))?
    );
    println!("fingerprint {}", identity.fingerprint());
    while let Some(accepting) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(session) = accepting.establish().await else {
                return;
            };
            while let Some((mut send, mut recv)) = session.accept().await {
                tokio::spawn(async move {
                    let mut size = [0u8; 8];
                    if recv.read_exact(&mut size).await.is_err() {
                        return;
                    }
                    let mut left = u64::from_be_bytes(size);
                    let block = pattern().clone();
                    // 256 KiB writes: large enough that per-write costs vanish.
                    let step = 256 * 1024;
                    let mut at = 0usize;
                    while left > 0 {
                        let n = (left as usize).min(step).min(block.len() - at);
                        if send.write_chunk(block.slice(at..at + n)).await.is_err() {
                            return;
                        }
                        at = (at + n) % block.len();
                        left -= n as u64;
                    }
                    let _ = send.finish().await;
                });
            }
        });
    }
    Ok(())
}

/// Fetches `bytes` over one stream from a raw server; returns seconds taken.
pub async fn fetch(
    kind: TransportKind,
    addr: SocketAddr,
    fingerprint: &str,
    bytes: u64,
) -> Result<f64, BenchError> {
    let tls = tls::client_config(&Trust::Fingerprint(fingerprint.into()))
        .map_err(|e| BenchError::new(e.to_string()))?;
    let host = addr.to_string();
    let session = transport::connect(
        kind,
        Dial {
            addr,
            server_name: "localhost",
            host: &host,
            client_id: "raw",
            tls,
            tuning: &TransportTuning::default(),
            timeout: std::time::Duration::from_secs(5),
        },
    )
    .await
    .map_err(|e| BenchError::new(e.to_string()))?;
    let started = Instant::now();
    let (mut send, mut recv) = session
        .open()
        .await
        .map_err(|e| BenchError::new(e.to_string()))?;
    send.write_chunk(Bytes::copy_from_slice(&bytes.to_be_bytes()))
        .await
        .map_err(|e| BenchError::new(e.to_string()))?;
    let mut got = 0u64;
    while let Some(chunk) = recv
        .read_chunk(crate::body::CHUNK)
        .await
        .map_err(|e| BenchError::new(e.to_string()))?
    {
        got += chunk.len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    session.close(warren_proto::CloseCode::Normal, "done");
    if got != bytes {
        return Err(BenchError::new(format!(
            "raw fetch got {got} of {bytes} bytes"
        )));
    }
    Ok(secs)
}
