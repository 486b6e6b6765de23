//! The one seam between QUIC and WebSocket+yamux.
//!
//! Everything above this module sees a [`Session`]: an authenticated, encrypted
//! connection between one agent and one server node that can open and accept
//! bidirectional byte streams. Which transport carries it is known only here.
//! Streams end with FIN (complete) or reset (truncated); readers can tell the two
//! apart, which is how a truncated response becomes an error to the client.

mod mux;
pub mod quic;
pub mod ws;

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use warren_proto::{CloseCode, FrameError, ResetCode, LEN_PREFIX};

/// Which transport carries a session (recorded in the registry and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Quic,
    /// WebSocket (over TLS/TCP) carrying a yamux session.
    Ws,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Quic => "quic",
            TransportKind::Ws => "ws",
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
    inner: SessionInner,
}

#[derive(Clone)]
enum SessionInner {
    Quic {
        conn: quinn::Connection,
        /// Client-side endpoint, kept alive as long as the session.
        _endpoint: Option<quinn::Endpoint>,
    },
    Mux(Arc<mux::MuxSession>),
}

impl Session {
    pub(crate) fn from_quic(conn: quinn::Connection, endpoint: Option<quinn::Endpoint>) -> Self {
        Session {
            inner: SessionInner::Quic {
                conn,
                _endpoint: endpoint,
            },
        }
    }

    pub(crate) fn from_mux(session: Arc<mux::MuxSession>) -> Self {
        Session {
            inner: SessionInner::Mux(session),
        }
    }

    pub fn kind(&self) -> TransportKind {
        match &self.inner {
            SessionInner::Quic { .. } => TransportKind::Quic,
            SessionInner::Mux(_) => TransportKind::Ws,
        }
    }

    pub fn remote_addr(&self) -> SocketAddr {
        match &self.inner {
            SessionInner::Quic { conn, .. } => conn.remote_address(),
            SessionInner::Mux(m) => m.remote,
        }
    }

    /// Opens a new bidirectional stream. Waits while the peer's stream limit is reached.
    pub async fn open(&self) -> Result<(SendStream, RecvStream), TransportError> {
        match &self.inner {
            SessionInner::Quic { conn, .. } => {
                let (send, recv) = conn.open_bi().await.map_err(quic::conn_error)?;
                Ok((
                    SendStream::Quic(send),
                    RecvStream::new(RecvInner::Quic(recv)),
                ))
            }
            SessionInner::Mux(m) => {
                let (send, recv) = m.open().await?;
                Ok((SendStream::Mux(send), RecvStream::new(RecvInner::Mux(recv))))
            }
        }
    }

    /// Accepts the next stream the peer opened; `None` once the session is closed.
    pub async fn accept(&self) -> Option<(SendStream, RecvStream)> {
        match &self.inner {
            SessionInner::Quic { conn, .. } => match conn.accept_bi().await {
                Ok((send, recv)) => Some((
                    SendStream::Quic(send),
                    RecvStream::new(RecvInner::Quic(recv)),
                )),
                Err(_) => None,
            },
            SessionInner::Mux(m) => {
                let (send, recv) = m.accept().await?;
                Some((SendStream::Mux(send), RecvStream::new(RecvInner::Mux(recv))))
            }
        }
    }

    pub fn close(&self, code: CloseCode, reason: &str) {
        match &self.inner {
            SessionInner::Quic { conn, .. } => {
                conn.close(quinn::VarInt::from_u32(code as u32), reason.as_bytes())
            }
            // yamux has no close codes; the control stream already said why.
            SessionInner::Mux(m) => m.close(),
        }
    }

    /// Resolves when the session is closed, with the reason.
    pub async fn closed(&self) -> String {
        match &self.inner {
            SessionInner::Quic { conn, .. } => quic::conn_error(conn.closed().await).to_string(),
            SessionInner::Mux(m) => m.closed().await,
        }
    }

    /// Whether the session is already closed.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            SessionInner::Quic { conn, .. } => conn.close_reason().is_some(),
            SessionInner::Mux(m) => m.close_reason().is_some(),
        }
    }
}

/// The sending half of a stream.
pub enum SendStream {
    Quic(quinn::SendStream),
    Mux(mux::MuxSend),
}

impl SendStream {
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), TransportError> {
        match self {
            SendStream::Quic(s) => s.write_all(buf).await.map_err(quic::write_error),
            SendStream::Mux(s) => s.write(buf).await,
        }
    }

    /// Writes an owned chunk (without copying it, where the transport allows).
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), TransportError> {
        match self {
            SendStream::Quic(s) => s.write_chunk(chunk).await.map_err(quic::write_error),
            SendStream::Mux(s) => s.write(&chunk).await,
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
    pub async fn finish(&mut self) -> Result<(), TransportError> {
        match self {
            SendStream::Quic(s) => s
                .finish()
                .map_err(|_| TransportError::Closed("stream already closed".into())),
            SendStream::Mux(s) => s.finish().await,
        }
    }

    /// Aborts the stream: the reader sees an error, never a clean end.
    pub async fn reset(&mut self, code: ResetCode) {
        match self {
            SendStream::Quic(s) => {
                let _ = s.reset(quinn::VarInt::from_u32(code as u32));
            }
            SendStream::Mux(s) => s.reset().await,
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
    /// How much to read at once: starts small (most responses are small, and a
    /// 128 KiB allocation per stream would cost more than the response) and
    /// doubles whenever a read fills it, up to the caller's maximum.
    read_size: usize,
    /// Bytes received past the end of a frame, returned before reading more.
    pending: Bytes,
}

/// First read size on a stream; see `RecvStream::read_size`.
const FIRST_READ: usize = 16 * 1024;

enum RecvInner {
    Quic(quinn::RecvStream),
    Mux(mux::MuxRecv),
}

impl RecvStream {
    fn new(inner: RecvInner) -> Self {
        RecvStream {
            inner,
            buf: BytesMut::new(),
            read_size: FIRST_READ,
            pending: Bytes::new(),
        }
    }

    /// Next chunk: everything already received, up to `max` bytes, in one piece.
    /// `Ok(None)` at a clean end (FIN); an error if the writer reset the stream or
    /// the session died.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, TransportError> {
        use bytes::BufMut;
        use tokio::io::AsyncReadExt;
        if !self.pending.is_empty() {
            let n = self.pending.len().min(max);
            return Ok(Some(self.pending.split_to(n)));
        }
        let want = self.read_size.min(max).max(1);
        self.buf.reserve(want);
        let n = match &mut self.inner {
            RecvInner::Quic(s) => s
                .read_buf(&mut (&mut self.buf).limit(want))
                .await
                .map_err(quic::io_read_error)?,
            RecvInner::Mux(s) => s.read_into(&mut self.buf, want).await?,
        };
        if n == 0 {
            return Ok(None);
        }
        if n == want {
            self.read_size = (self.read_size * 2).min(max.max(FIRST_READ));
        }
        Ok(Some(self.buf.split().freeze()))
    }

    /// Fills `out` completely, or fails (a clean end before that is `UnexpectedEnd`).
    pub async fn read_exact(&mut self, out: &mut [u8]) -> Result<(), TransportError> {
        let mut filled = 0;
        while filled < out.len() {
            let Some(chunk) = self.read_chunk(out.len() - filled).await? else {
                return Err(TransportError::UnexpectedEnd);
            };
            out[filled..filled + chunk.len()].copy_from_slice(&chunk);
            filled += chunk.len();
        }
        Ok(())
    }

    /// Reads one frame, never holding more than `limit` bytes for it. Bytes
    /// that arrived after it (typically the start of a body) are kept for the
    /// next read, so a head and its body can share one network read.
    pub async fn read_frame<T: DeserializeOwned>(
        &mut self,
        limit: usize,
    ) -> Result<T, TransportError> {
        let payload = self.read_payload(limit).await?;
        Ok(warren_proto::decode_payload(&payload)?)
    }

    /// Reads one frame's payload undecoded (for a look at it before decoding,
    /// as the server does with a Hello's version). Same limits as `read_frame`.
    pub async fn read_payload(&mut self, limit: usize) -> Result<Bytes, TransportError> {
        let room = limit + LEN_PREFIX;
        let mut staged = match self.read_chunk(room).await? {
            Some(chunk) => chunk,
            None => return Err(TransportError::UnexpectedEnd),
        };
        loop {
            if let Some(prefix) = staged.first_chunk::<LEN_PREFIX>() {
                let len = warren_proto::frame_len(*prefix, limit)?;
                let end = LEN_PREFIX + len;
                if staged.len() >= end {
                    self.pending = staged.slice(end..);
                    return Ok(staged.slice(LEN_PREFIX..end));
                }
            }
            // The frame spans reads: gather it (bounded by the frame limit).
            let Some(more) = self
                .read_chunk(room.saturating_sub(staged.len()).max(1))
                .await?
            else {
                return Err(TransportError::UnexpectedEnd);
            };
            let mut joined = BytesMut::with_capacity(staged.len() + more.len());
            joined.extend_from_slice(&staged);
            joined.extend_from_slice(&more);
            staged = joined.freeze();
        }
    }

    /// Tells the writer we will read no more. (On yamux the writer learns it
    /// when the whole stream is dropped.)
    pub fn stop(&mut self, code: ResetCode) {
        match &mut self.inner {
            RecvInner::Quic(s) => {
                let _ = s.stop(quinn::VarInt::from_u32(code as u32));
            }
            RecvInner::Mux(_) => {}
        }
    }
}

/// The server's tunnel port: QUIC on UDP and WebSocket on TCP, same number.
pub struct Listener {
    quic: quic::Listener,
    tcp: tokio::net::TcpListener,
    ws: Arc<ws::Acceptor>,
}

/// An agent connection attempt, not yet through its handshake.
pub enum Accepting {
    Quic(Box<quinn::Incoming>),
    Ws {
        tcp: tokio::net::TcpStream,
        remote: SocketAddr,
        acceptor: Arc<ws::Acceptor>,
    },
}

impl Accepting {
    pub fn remote_addr(&self) -> SocketAddr {
        match self {
            Accepting::Quic(incoming) => incoming.remote_address(),
            Accepting::Ws { remote, .. } => *remote,
        }
    }

    /// Completes the transport handshake (TLS, and the upgrade for WS).
    pub async fn establish(self) -> Result<Session, TransportError> {
        match self {
            Accepting::Quic(incoming) => quic::establish(*incoming).await,
            Accepting::Ws {
                tcp,
                remote,
                acceptor,
            } => acceptor.establish(tcp, remote).await,
        }
    }
}

impl Listener {
    /// Binds UDP and TCP on `addr`. With port 0, both get the same free port.
    pub async fn bind(
        addr: SocketAddr,
        tls: rustls::ServerConfig,
        tuning: &TransportTuning,
    ) -> Result<Self, TransportError> {
        // With port 0 the UDP port is picked first; if its TCP twin is taken,
        // try again (a handful of times) with another.
        let attempts = if addr.port() == 0 { 8 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let quic = quic::Listener::bind(addr, tls.clone(), tuning)?;
            let port = quic.local_addr()?.port();
            match tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                Ok(tcp) => {
                    let mut ws_tls = tls.clone();
                    ws_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                    return Ok(Listener {
                        quic,
                        tcp,
                        ws: Arc::new(ws::Acceptor::new(ws_tls, tuning)),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(TransportError::Io(last.expect("at least one attempt")))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.quic.local_addr()
    }

    /// The next connection attempt on either transport; `None` once closed.
    pub async fn accept(&self) -> Option<Accepting> {
        tokio::select! {
            incoming = self.quic.accept() => incoming.map(|i| Accepting::Quic(Box::new(i))),
            (tcp, remote) = crate::accept::next(&self.tcp, "TCP tunnel") => {
                Some(Accepting::Ws { tcp, remote, acceptor: self.ws.clone() })
            }
        }
    }

    pub async fn close(&self) {
        self.quic.close().await;
    }
}

/// Where and how an agent dials.
pub struct Dial<'a> {
    pub addr: SocketAddr,
    /// TLS name to verify.
    pub server_name: &'a str,
    /// `host:port` for the WebSocket request.
    pub host: &'a str,
    pub client_id: &'a str,
    pub tls: rustls::ClientConfig,
    pub tuning: &'a TransportTuning,
    pub timeout: Duration,
}

/// Dials the server over one transport.
pub async fn connect(kind: TransportKind, dial: Dial<'_>) -> Result<Session, TransportError> {
    match kind {
        TransportKind::Quic => {
            quic::connect(
                dial.addr,
                dial.server_name,
                dial.tls,
                dial.tuning,
                dial.timeout,
            )
            .await
        }
        TransportKind::Ws => {
            let mut tls = dial.tls;
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            ws::connect(
                dial.addr,
                dial.server_name,
                dial.host,
                dial.client_id,
                tls,
                dial.tuning,
                dial.timeout,
            )
            .await
        }
    }
}
