//! The WebSocket side of the tunnel port: TLS over TCP (same certificate as
//! QUIC), an HTTP upgrade at `/ws?clientId=ID`, and [`WsIo`], which presents the
//! WebSocket's binary messages as one byte stream for yamux to run over.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_tungstenite::{
    tungstenite::{
        handshake::server::{ErrorResponse, Request, Response},
        protocol::WebSocketConfig,
        Message,
    },
    WebSocketStream,
};

use super::{error::TransportError, mux, session::Session, tuning::TransportTuning};

/// Path agents upgrade on.
pub const WS_PATH: &str = "/ws";

/// Largest WebSocket message accepted. Writers send at most one yamux frame
/// (≤ 256 KiB payload, see `mux`) per message; 4 MiB leaves ample headroom
/// while bounding what a peer can make us buffer.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // tungstenite allocates its read buffer up front for every connection.
        // 16 KiB, one TLS record: an idle WebSocket agent costs the server
        // 54 KiB instead of 70 (1,000 agents), and 512 MiB downloads ran no
        // slower than with 32 KiB (~500 vs ~460 MB/s, three runs each).
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// A WebSocket as a byte stream: reads concatenate binary messages; writes
/// collect into one binary message, sent when it reaches [`SEND_AT`] or when
/// the session's driver ends its turn ([`WsFlush`]). yamux flushes after
/// every frame; sending a message each time cost a WebSocket frame, a TLS
/// record and a syscall per yamux frame (8.7 writes per small request).
pub struct WsIo<S> {
    core: Arc<Mutex<Core<S>>>,
    /// Unread rest of the last message received.
    read: Bytes,
    /// Messages received so far (the session's `heard`).
    heard: Arc<AtomicU64>,
}

/// What reads, writes and the turn's flush share (all on the driver's task,
/// so the lock is never contended).
struct Core<S> {
    ws: WebSocketStream<S>,
    /// Written, not yet sent.
    write: BytesMut,
}

/// Sends what the session wrote during the driver's turn, as one message.
pub struct WsFlush<S>(Arc<Mutex<Core<S>>>);

/// Written bytes are sent once this many accumulate, even within a turn, so
/// one message never grows past a few hundred KiB.
const SEND_AT: usize = 256 * 1024;

fn pair<S>(ws: WebSocketStream<S>) -> (WsIo<S>, WsFlush<S>, Arc<AtomicU64>) {
    let core = Arc::new(Mutex::new(Core {
        ws,
        write: BytesMut::new(),
    }));
    let heard = Arc::new(AtomicU64::new(0));
    (
        WsIo {
            core: core.clone(),
            read: Bytes::new(),
            heard: heard.clone(),
        },
        WsFlush(core),
        heard,
    )
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Core<S> {
    /// Hands the pending bytes to the WebSocket as one message.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_err)?;
        let message = Message::Binary(self.write.split().freeze());
        Pin::new(&mut self.ws).start_send(message).map_err(ws_err)?;
        Poll::Ready(Ok(()))
    }

    /// Sends the pending bytes and flushes them to the socket.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_err)
    }
}

impl<S> WsIo<S> {
    fn core(&self) -> std::sync::MutexGuard<'_, Core<S>> {
        self.core.lock().expect("WebSocket lock poisoned")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> mux::TurnFlush for WsFlush<S> {
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0
            .lock()
            .expect("WebSocket lock poisoned")
            .poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_util::io::AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if !self.read.is_empty() {
                let n = self.read.len().min(buf.len());
                buf[..n].copy_from_slice(&self.read[..n]);
                self.read.advance(n);
                return Poll::Ready(Ok(n));
            }
            let next = ready!(Pin::new(&mut self.core().ws).poll_next(cx));
            self.heard.fetch_add(1, Ordering::Relaxed);
            match next {
                Some(Ok(Message::Binary(data))) => self.read = data,
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(0)),
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a tunnel WebSocket",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(ws_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_util::io::AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut core = self.core();
        if core.write.len() >= SEND_AT {
            ready!(core.poll_send(cx))?;
        }
        core.write.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    /// Held for the end of the driver's turn (see [`WsIo`]); only a full
    /// message goes now.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut core = self.core();
        if core.write.len() >= SEND_AT {
            return core.poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut core = self.core();
        ready!(core.poll_flush(cx))?;
        Pin::new(&mut core.ws).poll_close(cx).map_err(ws_err)
    }
}

/// Server side: TLS, then the WebSocket upgrade, then a yamux session.
pub struct Acceptor {
    tls: tokio_rustls::TlsAcceptor,
    tuning: TransportTuning,
}

impl Acceptor {
    pub fn new(tls: rustls::ServerConfig, tuning: &TransportTuning) -> Self {
        Acceptor {
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            tuning: tuning.clone(),
        }
    }

    pub async fn establish(
        &self,
        tcp: TcpStream,
        remote: SocketAddr,
    ) -> Result<Session, TransportError> {
        let fail = |reason: String| TransportError::Connect {
            addr: remote.to_string(),
            reason,
        };
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .accept(tcp)
            .await
            .map_err(|e| fail(format!("TLS handshake failed: {e}")))?;
        // The callback's signature (with its large error type) is tungstenite's.
        #[allow(clippy::result_large_err)]
        let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            if req.uri().path() == WS_PATH {
                Ok(resp)
            } else {
                let mut refusal = ErrorResponse::new(Some(format!(
                    "warren agents upgrade at {WS_PATH}?clientId=ID\n"
                )));
                *refusal.status_mut() = http::StatusCode::NOT_FOUND;
                Err(refusal)
            }
        };
        let ws =
            tokio_tungstenite::accept_hdr_async_with_config(tls, check_path, Some(ws_config()))
                .await
                .map_err(|e| fail(format!("WebSocket upgrade failed: {e}")))?;
        let (io, flush, heard) = pair(ws);
        Ok(Session::from_mux(mux::session(
            io,
            Some(Box::new(flush)),
            heard,
            mux::Role::Server,
            remote,
            &self.tuning,
        )))
    }
}

/// Agent side: TCP, TLS, upgrade at `/ws?clientId=…`, then a yamux session.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    host: &str,
    client_id: &str,
    tls: rustls::ClientConfig,
    tuning: &TransportTuning,
    timeout: Duration,
) -> Result<Session, TransportError> {
    let fail = |reason: String| TransportError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| fail(format!("TCP connect failed: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|_| fail(format!("invalid TLS server name {server_name:?}")))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS handshake failed: {e}")))?;
        let url = format!("wss://{host}{WS_PATH}?clientId={client_id}");
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config()))
            .await
            .map_err(|e| fail(format!("WebSocket upgrade failed: {e}")))?;
        Ok::<_, TransportError>(ws)
    };
    let ws = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| fail(format!("no WebSocket handshake within {timeout:?}")))??;
    let (io, flush, heard) = pair(ws);
    Ok(Session::from_mux(mux::session(
        io,
        Some(Box::new(flush)),
        heard,
        mux::Role::Client,
        addr,
        tuning,
    )))
}

#[cfg(test)]
mod tests {
    //! yamux over [`WsIo`] on an in-memory pipe, counting the WebSocket
    //! messages that cross it: writes collect until the driver's turn ends,
    //! and nothing written is ever left waiting for a later turn.

    use std::sync::atomic::AtomicUsize;

    use tokio::io::{DuplexStream, ReadBuf};
    use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

    use super::*;

    /// A pipe end that counts the writes made to it.
    struct Counted {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    async fn sessions() -> (Arc<mux::MuxSession>, Arc<mux::MuxSession>, Arc<AtomicUsize>) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let a = Counted {
            inner: a,
            writes: writes.clone(),
        };
        let b = Counted {
            inner: b,
            writes: Arc::new(AtomicUsize::new(0)),
        };
        let tuning = TransportTuning::default();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut made = Vec::new();
        for (io, ws_role, role) in [
            (a, WsRole::Client, mux::Role::Client),
            (b, WsRole::Server, mux::Role::Server),
        ] {
            let ws = WebSocketStream::from_raw_socket(io, ws_role, Some(ws_config())).await;
            let (io, flush, heard) = pair(ws);
            made.push(mux::session(
                io,
                Some(Box::new(flush)),
                heard,
                role,
                addr,
                &tuning,
            ));
        }
        let server = made.pop().unwrap();
        let client = made.pop().unwrap();
        (client, server, writes)
    }

    async fn read_all(recv: &mut mux::MuxRecv) -> Vec<u8> {
        let mut buf = BytesMut::new();
        while recv.read_into(&mut buf, 64 * 1024).await.unwrap() > 0 {}
        buf.to_vec()
    }

    #[tokio::test]
    async fn a_lone_small_write_is_not_left_behind() {
        let (client, server, _) = sessions().await;
        let (mut send, _) = client.open().await.unwrap();
        // One byte, no end, nothing else happening: it must still arrive.
        send.write(b"x").await.unwrap();
        let (_, mut recv) = server.accept().await.unwrap();
        let mut buf = BytesMut::new();
        let n = tokio::time::timeout(Duration::from_secs(2), recv.read_into(&mut buf, 16))
            .await
            .expect("the byte arrives without a later write")
            .unwrap();
        assert_eq!((n, &buf[..]), (1, &b"x"[..]));
    }

    #[tokio::test]
    async fn a_small_exchange_is_a_few_messages_and_arrives_whole() {
        let (client, server, writes) = sessions().await;
        let before = writes.load(Ordering::Relaxed);
        // A segment and the end marker are one frame.
        let (mut send, _) = client.open().await.unwrap();
        send.write_last(b"a small request head").await.unwrap();
        let (_, mut recv) = server.accept().await.unwrap();
        assert_eq!(read_all(&mut recv).await, b"a small request head");
        let used = writes.load(Ordering::Relaxed) - before;
        assert!(used <= 3, "{used} socket writes for one small stream");
        // Many streams at once, each with several writes (32 × 6 yamux
        // frames): they leave in far fewer writes than frames, and all
        // arrive whole.
        let before = writes.load(Ordering::Relaxed);
        let mut tasks = Vec::new();
        for i in 0..32u8 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let (mut send, _) = client.open().await.unwrap();
                for _ in 0..4 {
                    send.write(&[i; 1000]).await.unwrap();
                }
                send.finish().await.unwrap();
            }));
        }
        let mut seen = Vec::new();
        for _ in 0..32 {
            let (_, mut recv) = server.accept().await.unwrap();
            let data = read_all(&mut recv).await;
            assert_eq!(data.len(), 4000);
            assert!(data.iter().all(|b| *b == data[0]));
            seen.push(data[0]);
        }
        seen.sort();
        assert_eq!(seen, (0..32).collect::<Vec<u8>>());
        for t in tasks {
            t.await.unwrap();
        }
        let used = writes.load(Ordering::Relaxed) - before;
        assert!(used < 96, "{used} socket writes for 192 frames");
    }
}
