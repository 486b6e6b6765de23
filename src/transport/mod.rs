//! The one seam between QUIC and WebSocket+yamux.
//!
//! Everything above this module sees a [`Session`]: an authenticated, encrypted
//! connection between one agent and one server node that can open and accept
//! bidirectional byte streams. Which transport carries it is known only here.
//! Streams end with FIN (complete) or reset (truncated); readers can tell the two
//! apart, which is how a truncated response becomes an error to the client.

pub mod quic;

use std::{fmt, net::SocketAddr, time::Duration};

use bytes::{Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use warren_proto::{CloseCode, FrameError, ResetCode, LEN_PREFIX};

/// Which transport carries a session (recorded in the registry and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Quic,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Quic => "quic",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("stream reset by peer (code {0})")]
    Reset(u64),
    #[error("stream ended before a complete frame")]
    UnexpectedEnd,
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("could not connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Tunables shared by both ends. Defaults are chosen for WAN links of up to a few
/// hundred Mbit/s; every one is configurable from the CLI.
#[derive(Debug, Clone)]
pub struct TransportTuning {
    /// Per-stream receive window. 2 MiB sustains ~170 Mbit/s per stream at 100 ms
    /// RTT, while 20 stalled readers pin at most 40 MiB.
    pub stream_window: u64,
    /// Per-connection receive window: the sum over all streams. 64 MiB leaves a
    /// full stream window free for active streams even with 30 stalled ones.
    pub connection_window: u64,
    /// Most request streams the peer may have open at once.
    pub max_streams: u32,
    /// Transport-level idle timeout: a backstop under the application heartbeat.
    pub idle_timeout: Duration,
    /// UDP socket send/receive buffer. A few MiB removes loss on fast links.
    pub udp_buffer: usize,
}

impl Default for TransportTuning {
    fn default() -> Self {
        TransportTuning {
            stream_window: 2 * 1024 * 1024,
            connection_window: 64 * 1024 * 1024,
            max_streams: 1024,
            idle_timeout: Duration::from_secs(60),
            udp_buffer: 4 * 1024 * 1024,
        }
    }
}

/// One agent↔server connection, whatever carries it.
#[derive(Clone)]
pub struct Session {
    inner: quinn::Connection,
    /// Client-side endpoint, kept alive as long as the session.
    _endpoint: Option<quinn::Endpoint>,
}

impl Session {
    pub(crate) fn from_quic(conn: quinn::Connection, endpoint: Option<quinn::Endpoint>) -> Self {
        Session {
            inner: conn,
            _endpoint: endpoint,
        }
    }

    pub fn kind(&self) -> TransportKind {
        TransportKind::Quic
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Opens a new bidirectional stream. Waits while the peer's stream limit is reached.
    pub async fn open(&self) -> Result<(SendStream, RecvStream), TransportError> {
        let (send, recv) = self.inner.open_bi().await.map_err(quic::conn_error)?;
        Ok((SendStream::Quic(send), RecvStream::new_quic(recv)))
    }

    /// Accepts the next stream the peer opened; `None` once the session is closed.
    pub async fn accept(&self) -> Option<(SendStream, RecvStream)> {
        match self.inner.accept_bi().await {
            Ok((send, recv)) => Some((SendStream::Quic(send), RecvStream::new_quic(recv))),
            Err(_) => None,
        }
    }

    pub fn close(&self, code: CloseCode, reason: &str) {
        self.inner
            .close(quinn::VarInt::from_u32(code as u32), reason.as_bytes());
    }

    /// Resolves when the session is closed, with the reason.
    pub async fn closed(&self) -> String {
        quic::conn_error(self.inner.closed().await).to_string()
    }

    /// Whether the session is already closed.
    pub fn is_closed(&self) -> bool {
        self.inner.close_reason().is_some()
    }

    /// A stable id for logs, unique per session within this process.
    pub fn id(&self) -> usize {
        self.inner.stable_id()
    }
}

/// The sending half of a stream.
pub enum SendStream {
    Quic(quinn::SendStream),
}

impl SendStream {
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), TransportError> {
        match self {
            SendStream::Quic(s) => s.write_all(buf).await.map_err(quic::write_error),
        }
    }

    /// Writes an owned chunk without copying it.
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), TransportError> {
        match self {
            SendStream::Quic(s) => s.write_chunk(chunk).await.map_err(quic::write_error),
        }
    }

    /// Encodes and writes one frame.
    pub async fn write_frame<T: Serialize>(
        &mut self,
        msg: &T,
        limit: usize,
    ) -> Result<(), TransportError> {
        let frame = warren_proto::encode_frame(msg, limit)?;
        self.write_chunk(Bytes::from(frame)).await
    }

    /// Ends the stream cleanly (FIN): the reader sees a complete body.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        match self {
            SendStream::Quic(s) => s
                .finish()
                .map_err(|_| TransportError::Closed("stream already closed".into())),
        }
    }

    /// Aborts the stream: the reader sees an error, never a clean end.
    pub fn reset(&mut self, code: ResetCode) {
        match self {
            SendStream::Quic(s) => {
                let _ = s.reset(quinn::VarInt::from_u32(code as u32));
            }
        }
    }

    /// Resolves when the peer stops reading (STOP_SENDING) or the stream is gone.
    pub async fn stopped(&mut self) {
        match self {
            SendStream::Quic(s) => {
                let _ = s.stopped().await;
            }
        }
    }
}

/// The receiving half of a stream. Dropping it before the end tells the writer to
/// stop (the writer sees its next write fail).
pub struct RecvStream {
    inner: RecvInner,
    /// Reused read buffer: chunks are split off it, and its allocation is
    /// reclaimed once downstream has dropped them.
    buf: BytesMut,
}

enum RecvInner {
    Quic(quinn::RecvStream),
}

impl RecvStream {
    fn new_quic(s: quinn::RecvStream) -> Self {
        RecvStream {
            inner: RecvInner::Quic(s),
            buf: BytesMut::new(),
        }
    }

    /// Next chunk: everything already received, up to `max` bytes, in one piece.
    /// `Ok(None)` at a clean end (FIN); an error if the writer reset the stream or
    /// the session died.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, TransportError> {
        use bytes::BufMut;
        use tokio::io::AsyncReadExt;
        self.buf.reserve(max);
        let limited = &mut (&mut self.buf).limit(max);
        let n = match &mut self.inner {
            RecvInner::Quic(s) => s.read_buf(limited).await.map_err(quic::io_read_error)?,
        };
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(self.buf.split().freeze()))
    }

    /// Fills `buf` completely, or fails (a clean end before that is `UnexpectedEnd`).
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        match &mut self.inner {
            RecvInner::Quic(s) => s.read_exact(buf).await.map_err(|e| match e {
                quinn::ReadExactError::FinishedEarly(_) => TransportError::UnexpectedEnd,
                quinn::ReadExactError::ReadError(e) => quic::read_error(e),
            }),
        }
    }

    /// Reads one frame, never allocating more than `limit` bytes for it.
    pub async fn read_frame<T: DeserializeOwned>(
        &mut self,
        limit: usize,
    ) -> Result<T, TransportError> {
        let mut prefix = [0u8; LEN_PREFIX];
        self.read_exact(&mut prefix).await?;
        let len = warren_proto::frame_len(prefix, limit)?;
        let mut payload = vec![0u8; len];
        self.read_exact(&mut payload).await?;
        Ok(warren_proto::decode_payload(&payload)?)
    }

    /// Tells the writer we will read no more.
    pub fn stop(&mut self, code: ResetCode) {
        match &mut self.inner {
            RecvInner::Quic(s) => {
                let _ = s.stop(quinn::VarInt::from_u32(code as u32));
            }
        }
    }
}
