//! The raw transport ceiling: one bare stream between two processes — QUIC, or
//! yamux over TLS + WebSocket — moving bytes with no HTTP and no tunnel logic,
//! so warren's own overhead shows as "tunnel / raw". The bytes go the way a
//! download goes through the tunnel: from the dialing side (the agent's role)
//! to the listening side (the server's), so the CPU of the two processes is
//! compared role for role.

use std::{net::SocketAddr, path::Path};

use bytes::Bytes;
use tokio::time::Instant;

use super::error::BenchError;
use crate::{
    sample::pattern,
    tls::{self, ServerIdentity, Trust},
    transport::{self, Dial, Listener, TransportKind, TransportTuning},
};

/// Serves raw streams: each stream brings an 8-byte big-endian size and then
/// that many bytes, then FIN; the answer is the 8-byte count received, then
/// FIN. Runs until killed.
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
        crate::accept::DEFAULT_BACKLOG,
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
                    let mut got = 0u64;
                    while let Ok(Some(chunk)) = recv.read_chunk(crate::body::CHUNK).await {
                        got += chunk.len() as u64;
                    }
                    let _ = send
                        .write_chunk(Bytes::copy_from_slice(&got.to_be_bytes()))
                        .await;
                    let _ = send.finish().await;
                });
            }
        });
    }
    Ok(())
}

/// Sends `bytes` over one stream to a raw server and waits for its count of
/// what arrived; returns seconds taken.
pub async fn push(
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
    let failed = |e: transport::TransportError| BenchError::new(format!("raw push: {e}"));
    let started = Instant::now();
    let (mut send, mut recv) = session.open().await.map_err(failed)?;
    send.write_chunk(Bytes::copy_from_slice(&bytes.to_be_bytes()))
        .await
        .map_err(failed)?;
    let block = pattern().clone();
    // 256 KiB writes: large enough that per-write costs vanish.
    let step = 256 * 1024;
    let (mut left, mut at) = (bytes, 0usize);
    while left > 0 {
        let n = (left as usize).min(step).min(block.len() - at);
        send.write_chunk(block.slice(at..at + n))
            .await
            .map_err(failed)?;
        at = (at + n) % block.len();
        left -= n as u64;
    }
    send.finish().await.map_err(failed)?;
    let mut count = [0u8; 8];
    recv.read_exact(&mut count).await.map_err(failed)?;
    let secs = started.elapsed().as_secs_f64();
    session.close(warren_proto::CloseCode::Normal, "done");
    let got = u64::from_be_bytes(count);
    if got != bytes {
        return Err(BenchError::new(format!(
            "raw push delivered {got} of {bytes} bytes"
        )));
    }
    Ok(secs)
}
