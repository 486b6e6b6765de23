//! HTTP/3 for clients (`--api-http3`): QUIC on the UDP side of the HTTPS
//! port, serving the HTTPS certificates (TLS 1.3, ALPN `h3`), every request
//! routed as those over HTTP/1.1 and HTTP/2 are ([`route::route`]). It shares
//! their connection budget, header limit and drain on shutdown; a response
//! body that breaks off resets its stream, never ends it cleanly. This is the
//! client edge, not the tunnel: it speaks quinn directly.
//!
//! [`route::route`]: super::route::route

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tracing::{debug, info, Instrument};

use super::{
    api_tls::ApiCerts,
    idle::{self, Busy, IdleConns, NoPlace, Registration, SHED_CLOSE},
    meter::RequestMeter,
    route,
    state::Shared,
    stream, upgrade,
};
use crate::{
    body::{self, TunnelBody},
    shutdown::Shutdown,
    transport::TransportError,
};

/// Unidirectional streams a client may open: the three HTTP/3 uses
/// (control, QPACK encoder and decoder), with room for grease.
const CLIENT_UNI_STREAMS: u32 = 8;

/// A connection with no packets for this long is closed: a client gone off
/// the network holds its place no longer than an idle HTTP/2 client's pings.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// QUIC windows for clients, as HTTP/2's (`H2Limits`): 1 MiB a stream of
/// upload, 8 MiB a connection.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum H3Error {
    #[error("TLS configuration unusable for HTTP/3: {0}")]
    Tls(String),
    #[error("cannot listen for HTTP/3 clients on udp {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the HTTP/3 endpoint on `addr` (the HTTPS listener's address).
pub(super) fn bind(
    addr: SocketAddr,
    certs: &Arc<ApiCerts>,
    max_streams: u32,
) -> Result<quinn::Endpoint, H3Error> {
    let tls = certs
        .quic_server_config()
        .map_err(|e| H3Error::Tls(e.to_string()))?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| H3Error::Tls(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(max_streams.into())
        .max_concurrent_uni_streams(CLIENT_UNI_STREAMS.into())
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, addr).map_err(|source| H3Error::Bind { addr, source })
}

/// Accepts HTTP/3 connections until `shutdown`, each taking a place of the
/// client budget (`slots`) for as long as it is open. At the limit the
/// oldest idle client connection, of any version, makes room (`idle`), and
/// an idle HTTP/3 one is closed when another needs its place.
pub(super) async fn serve(
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    slots: Arc<Semaphore>,
    idle: Arc<IdleConns>,
    mut shutdown: Shutdown,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            _ = shutdown.wait() => break,
        };
        let peer = incoming.remote_address();
        let permit = match idle::place(&slots, &idle).await {
            Ok(permit) => permit,
            Err(why) => {
                // Debug, not warn: an Initial's source address is not yet
                // proven, so a spoofed flood would flood the log too.
                let busy = why == NoPlace::AllBusy;
                debug!(%peer, every_connection_busy = busy, "HTTP/3 client refused: the client connection limit is reached");
                incoming.refuse();
                continue;
            }
        };
        let slot = upgrade::ConnectionSlot::new(permit);
        let registration = idle.register();
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            // The handshake counts against the header deadline, as on TCP.
            let deadline = shared.config.header_read_timeout;
            let conn = match tokio::time::timeout(deadline, incoming).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    shared.metrics.connection_failed("h3_handshake");
                    debug!(%peer, "HTTP/3 handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    shared.metrics.connection_failed("timeout");
                    debug!(%peer, "HTTP/3 handshake not finished within {deadline:?}");
                    return;
                }
            };
            connection(shared, conn, peer, slot, registration, shutdown).await;
        });
    }
    // New connections are refused from here on; those open finish their
    // requests (told GOAWAY) and give their places back.
    endpoint.set_server_config(None);
}

/// One client's HTTP/3 connection: its requests, each on its own task.
async fn connection(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: SocketAddr,
    slot: upgrade::ConnectionSlot,
    registration: Registration,
    mut shutdown: Shutdown,
) {
    let state = registration.state.clone();
    let mut h3 = match h3::server::builder()
        // The same bound as a head over HTTP/1.1 and HTTP/2.
        .max_field_section_size(shared.config.max_head_frame as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await
    {
        Ok(h3) => h3,
        Err(e) => {
            debug!(%peer, "HTTP/3 connection set-up failed: {e}");
            return;
        }
    };
    loop {
        let resolver = tokio::select! {
            accepted = h3.accept() => match accepted {
                Ok(Some(resolver)) => resolver,
                Ok(None) => break,
                Err(e) => {
                    // A client breaking the protocol (a malformed frame, a
                    // forbidden header) is closed with the error's code. One
                    // that closed or went quiet itself just left.
                    let ours = matches!(e, h3::error::ConnectionError::Local { .. });
                    if ours && !e.is_h3_no_error() {
                        shared.metrics.connection_failed("h3_protocol");
                        info!(%peer, "HTTP/3 client connection closed: {e}");
                    } else {
                        debug!(%peer, "HTTP/3 client connection ended: {e}");
                    }
                    break;
                }
            },
            _ = shutdown.wait() => {
                // GOAWAY: no new requests; those open finish.
                let _ = h3.shutdown(0).await;
                let _ = conn.closed().await;
                break;
            }
            _ = state.shed.notified() => {
                debug!(%peer, "idle HTTP/3 connection closed to make room");
                let _ = h3.shutdown(0).await;
                // A client that takes the GOAWAY closes; one that does not
                // is closed, unless a request slipped in meanwhile.
                if tokio::time::timeout(SHED_CLOSE, conn.closed()).await.is_err() {
                    if state.is_busy() {
                        let _ = conn.closed().await;
                    } else {
                        let code = u64::from(h3::error::Code::H3_NO_ERROR);
                        conn.close(quinn::VarInt::try_from(code).expect("a varint"), b"making room");
                    }
                }
                break;
            }
        };
        // Busy from the request's start to its response body's end.
        let busy = state.busy();
        let (shared, slot) = (shared.clone(), slot.clone());
        tokio::spawn(
            async move {
                // A stream whose headers do not come is cut off as a slow
                // HTTP/1.1 head would be (the connection's pings would keep
                // it open otherwise).
                let deadline = shared.config.header_read_timeout;
                match tokio::time::timeout(deadline, resolver.resolve_request()).await {
                    Ok(Ok((req, stream))) => request(shared, peer, req, stream, slot, busy).await,
                    Ok(Err(e)) => debug!(%peer, "HTTP/3 request refused: {e}"),
                    Err(_) => debug!(%peer, "HTTP/3 request headers not in within {deadline:?}"),
                }
            }
            .in_current_span(),
        );
    }
}

type H3Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
type H3Recv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// Serves one request: its body read from the stream, its response written
/// back (data, then trailers if any); a body that breaks off resets the
/// stream.
async fn request(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<()>,
    stream: H3Stream,
    slot: upgrade::ConnectionSlot,
    busy: Busy,
) {
    let (mut send, recv) = stream.split();
    let (parts, ()) = req.into_parts();
    let mut req = Request::from_parts(parts, request_body(recv));
    req.extensions_mut().insert(slot);
    req.extensions_mut().insert(stream::OverTls);
    let meter = RequestMeter::start(&shared, &req, busy);
    let resp = meter.answered(route::route(shared, peer, req).await);
    let (parts, mut body) = resp.into_parts();
    if let Err(e) = send.send_response(Response::from_parts(parts, ())).await {
        debug!(%peer, "HTTP/3 response not sent: {e}");
        return;
    }
    loop {
        let sent = match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => send.send_data(data).await,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => send.send_trailers(trailers).await,
                    Err(_) => continue,
                },
            },
            Some(Err(e)) => {
                // Truncated: the client must see an error, not a clean end.
                debug!(%peer, "HTTP/3 response broke off: {e}");
                send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return;
            }
            None => {
                let _ = send.finish().await;
                return;
            }
        };
        if let Err(e) = sent {
            debug!(%peer, "HTTP/3 client stopped reading: {e}");
            return;
        }
    }
}

/// The request body as a [`TunnelBody`]: data, then the trailers if any. A
/// body already over when the request arrives (a GET, with its FIN) is an
/// empty body, so it is routed as bodiless (and may be retried elsewhere).
fn request_body(mut recv: H3Recv) -> TunnelBody {
    let first = match recv.recv_data().now_or_never() {
        Some(Ok(None)) => match recv.recv_trailers().now_or_never() {
            Some(Ok(None)) => return body::empty(),
            // Trailers and no data, or not known yet: read as any body.
            _ => None,
        },
        Some(Ok(Some(mut buf))) => Some(Ok(buf.copy_to_bytes(buf.remaining()))),
        Some(Err(e)) => Some(Err(e)),
        None => None,
    };
    // (recv, the first data read early, whether the data is over)
    let state = Some((recv, first, false));
    let stream = futures_util::stream::unfold(state, |state| async move {
        let (mut recv, first, data_over) = state?;
        if !data_over {
            let next = match first {
                Some(early) => early.map(Some),
                None => recv
                    .recv_data()
                    .await
                    .map(|d| d.map(|mut buf| buf.copy_to_bytes(buf.remaining()))),
            };
            match next {
                Ok(Some(data)) => return Some((Ok(Frame::data(data)), Some((recv, None, false)))),
                Ok(None) => {}
                Err(e) => return Some((Err(broke_off(e)), None)),
            }
        }
        match recv.recv_trailers().await {
            Ok(Some(trailers)) => Some((Ok(Frame::trailers(trailers)), None)),
            Ok(None) => None,
            Err(e) => Some((Err(broke_off(e)), None)),
        }
    });
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

fn broke_off(e: h3::error::StreamError) -> TransportError {
    TransportError::Io(std::io::Error::other(format!(
        "HTTP/3 request body broke off: {e}"
    )))
}
