//! The WebSocket side of the tunnel port: TLS over TCP (same certificate as
//! QUIC), an HTTP upgrade at `/ws?clientId=ID`, and [`WsIo`], which presents the
//! WebSocket's binary messages as one byte stream for yamux to run over.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
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

/// A WebSocket as a byte stream: reads concatenate binary messages; each flush
/// sends what was written since the last one as one binary message.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// Unread rest of the last message received.
    read: Bytes,
    /// Written, not yet sent.
    write: BytesMut,
}

/// Written bytes are sent once this many accumulate, even without a flush, so
/// one message never grows past a few hundred KiB.
const SEND_AT: usize = 256 * 1024;

impl<S> WsIo<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsIo {
            ws,
            read: Bytes::new(),
            write: BytesMut::new(),
        }
    }
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
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
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
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
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write.len() >= SEND_AT {
            ready!(self.poll_send(cx))?;
        }
        self.write.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_err)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_err)
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
        Ok(Session::from_mux(mux::session(
            WsIo::new(ws),
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
    Ok(Session::from_mux(mux::session(
        WsIo::new(ws),
        mux::Role::Client,
        addr,
        tuning,
    )))
}
