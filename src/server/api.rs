//! The client-facing HTTP API over TCP: accepts client connections (bounded,
//! with a header-read deadline; TLS, HTTP/1.1 and HTTP/2) and hands each
//! request to `route`. HTTP/3 is `api_h3`.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, info, warn};

use super::{
    http_version::{h2_builder, opens_with_h2_preface, HttpConn, Version},
    idle::{self, IdleConns, NoPlace, Registration, SHED_CLOSE},
    meter::RequestMeter,
    reply, route,
    state::Shared,
    stream,
    upgrade::{self, ConnectionSlot},
};
use crate::{
    accept,
    body::{self, TunnelBody},
    shutdown::Shutdown,
};

/// What a client listener speaks.
pub(super) enum Edge {
    /// Plain HTTP.
    Plain,
    /// HTTPS (`--api-tls-cert`).
    Tls(tokio_rustls::TlsAcceptor),
    /// Plain HTTP that only sends clients to HTTPS (`--api-plain-redirect`):
    /// to this port, or the scheme's own (443) when `None`.
    Redirect { https_port: Option<u16> },
}

/// Serves every client listener (and the HTTP/3 endpoint, `h3`) until
/// `shutdown`, then drains them together (one `--max-client-connections`
/// budget and one grace for all).
pub(super) async fn serve(
    shared: Arc<Shared>,
    listeners: Vec<(TcpListener, Edge)>,
    h3: Option<quinn::Endpoint>,
    shutdown: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_client_connections));
    let idle = Arc::new(IdleConns::default());
    let loops = listeners.into_iter().map(|(listener, edge)| {
        accept_loop(
            shared.clone(),
            slots.clone(),
            idle.clone(),
            listener,
            Arc::new(edge),
            shutdown.clone(),
        )
        .boxed()
    });
    let h3 = h3.map(|endpoint| {
        super::api_h3::serve(
            shared.clone(),
            endpoint,
            slots.clone(),
            idle.clone(),
            shutdown.clone(),
        )
        .boxed()
    });
    futures_util::future::join_all(loops.chain(h3)).await;
    // Stopped accepting; every connection's task was told to finish its
    // requests and close. Wait until all have given their places back.
    let everyone = shared.config.max_client_connections.min(u32::MAX as usize) as u32;
    let grace = shared.config.drain_grace;
    let drained = tokio::time::timeout(grace, slots.acquire_many(everyone))
        .await
        .is_ok();
    if drained {
        info!("client connections drained");
    } else {
        warn!(
            open = everyone as usize - slots.available_permits(),
            "client connections still open after the {grace:?} drain grace; closing them"
        );
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    idle: Arc<IdleConns>,
    listener: TcpListener,
    edge: Arc<Edge>,
    mut shutdown: Shutdown,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept::next(&listener, "client") => accepted,
            _ = shutdown.wait() => break,
        };
        // At the limit: the oldest idle keep-alive connection is closed to
        // make room; refused only when every connection is busy.
        let permit = match idle::place(&slots, &idle).await {
            Ok(permit) => permit,
            Err(NoPlace::NotFreed) => {
                warn!(%peer, "client connection refused: limit reached");
                continue;
            }
            Err(NoPlace::AllBusy) => {
                warn!(%peer, limit = shared.config.max_client_connections, "client connection refused: limit reached, every connection busy");
                continue;
            }
        };
        let registration = idle.register();
        let slot = ConnectionSlot::new(permit);
        spawn_connection(
            &shared,
            &edge,
            stream,
            peer,
            slot,
            registration,
            Some(shutdown.clone()),
        );
    }
    // Connections already waiting in the listen backlog finished their TCP
    // handshake before we stopped: each gets its one request answered (then
    // is closed) instead of a reset that would look like a lost request.
    for (stream, peer) in accept::backlog(listener, "client") {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            break;
        };
        let slot = ConnectionSlot::new(permit);
        spawn_connection(&shared, &edge, stream, peer, slot, idle.register(), None);
    }
}

/// How long a connection accepted just before shutdown began gets to start
/// its first request: a client sends it right after connecting, so this only
/// matters on a loaded machine.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Serves one client connection. Without `shutdown` (a connection taken
/// from the backlog after shutdown began) it answers one request and closes.
fn spawn_connection(
    shared: &Arc<Shared>,
    edge: &Arc<Edge>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    registration: Registration,
    shutdown: Option<Shutdown>,
) {
    let _ = stream.set_nodelay(true);
    let shared = shared.clone();
    let conn = Conn {
        peer,
        slot,
        registration,
        shutdown,
        redirect: None,
        over_tls: false,
    };
    // Each kind boxed: a task is as large as its largest state, and a TLS
    // connection's (the handshake, the TLS session) made every plain
    // connection's task as large.
    match &**edge {
        Edge::Tls(acceptor) => {
            let acceptor = acceptor.clone();
            tokio::spawn(Box::pin(serve_tls(shared, acceptor, stream, conn)));
        }
        Edge::Plain => {
            tokio::spawn(Box::pin(serve_plain(shared, stream, conn)));
        }
        Edge::Redirect { https_port } => {
            let conn = Conn {
                redirect: Some(*https_port),
                ..conn
            };
            tokio::spawn(Box::pin(serve_plain(shared, stream, conn)));
        }
    }
}

/// A TLS client connection: the handshake, then HTTP in the version ALPN chose.
async fn serve_tls(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    conn: Conn,
) {
    // The handshake counts against the header deadline: a client that
    // stalls in it (slow-loris over TLS) is cut off the same way, and one
    // made to make room goes at once.
    let (peer, deadline) = (conn.peer, shared.config.header_read_timeout);
    let shed = conn.registration.state.shed.notified();
    let handshake = tokio::time::timeout(deadline, handshake(&acceptor, stream, peer));
    let tls = tokio::select! {
        tls = handshake => tls,
        _ = shed => return,
    };
    match tls {
        Ok(Ok(tls)) => {
            let version = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                Version::H2
            } else {
                Version::H1
            };
            let conn = Conn {
                over_tls: true,
                ..conn
            };
            serve_http(shared, TokioIo::new(tls), version, conn).await;
        }
        Ok(Err(reason)) => shared.metrics.connection_failed(reason),
        Err(_) => {
            shared.metrics.connection_failed("timeout");
            debug!(%peer, "client TLS handshake not finished within {deadline:?}; closed");
        }
    }
}

/// A plain client connection: HTTP/1.1, or h2c when it opens with the
/// HTTP/2 preface (prior knowledge), sniffed within the header deadline.
async fn serve_plain(shared: Arc<Shared>, stream: tokio::net::TcpStream, conn: Conn) {
    let (peer, deadline) = (conn.peer, shared.config.header_read_timeout);
    let shed = conn.registration.state.shed.notified();
    let sniff = tokio::time::timeout(deadline, opens_with_h2_preface(&stream));
    let version = tokio::select! {
        sniffed = sniff => match sniffed {
            Ok(true) => Version::H2,
            Ok(false) => Version::H1,
            Err(_) => {
                debug!(%peer, "client sent nothing within {deadline:?}; closed");
                return;
            }
        },
        _ = shed => return,
    };
    serve_http(shared, TokioIo::new(stream), version, conn).await;
}

/// One client connection, as its HTTP is served.
struct Conn {
    peer: SocketAddr,
    slot: ConnectionSlot,
    registration: Registration,
    /// Without it (taken from the backlog after shutdown began): one
    /// request, then closed.
    shutdown: Option<Shutdown>,
    /// A redirecting listener: to this HTTPS port (or the scheme's).
    redirect: Option<Option<u16>>,
    over_tls: bool,
}

/// A client's TLS handshake; `Err` names why it did not happen (for the
/// metric; the log line is written here). A client speaking plain HTTP to
/// this port is told so in plain HTTP.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, &'static str> {
    use tokio::io::AsyncWriteExt;
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0] != TLS_HANDSHAKE_RECORD => {
            debug!(%peer, "plain HTTP on the HTTPS client port: answered 400");
            let _ = stream.write_all(PLAIN_ON_TLS).await;
            let _ = stream.shutdown().await;
            return Err("plain_http");
        }
        Ok(1) => {}
        // Closed (or reset) before saying anything: a port scan, not a client.
        _ => return Err("closed"),
    }
    acceptor.accept(stream).await.map_err(|e| {
        debug!(%peer, "client TLS handshake failed: {e}");
        "handshake"
    })
}

/// The answer to plain HTTP on the HTTPS port (as nginx gives it).
const PLAIN_ON_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 55\r\nconnection: close\r\n\r\nthis port speaks HTTPS: send the request with https://\n";

/// HTTP on one client connection (plain or TLS), its requests routed by
/// [`handle`], until it closes, is shed to make room, or the server stops.
async fn serve_http<I>(shared: Arc<Shared>, io: TokioIo<I>, version: Version, conn: Conn)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        peer,
        slot,
        registration,
        shutdown,
        redirect,
        over_tls,
    } = conn;
    let config = &shared.config;
    let state = registration.state.clone();
    let service = {
        let shared = shared.clone();
        service_fn(move |mut req: Request<Incoming>| {
            // Only an upgrade takes its connection's slot along (see
            // `ConnectionSlot`); a plain request's extensions stay empty
            // (three allocations otherwise, per request).
            if upgrade::is_upgrade(&req) {
                req.extensions_mut().insert(slot.clone());
            }
            if over_tls {
                req.extensions_mut().insert(stream::OverTls);
            }
            // Busy (and in flight) from the request's start to its
            // body's end.
            let meter = RequestMeter::start(&shared, &req, state.busy());
            let shared = shared.clone();
            async move {
                let mut resp = match redirect {
                    Some(https_port) => to_https(&req, https_port),
                    None => handle(shared.clone(), peer, req).await?,
                };
                if over_tls {
                    if let Some(alt_svc) = &shared.alt_svc {
                        resp.headers_mut()
                            .insert(http::header::ALT_SVC, alt_svc.clone());
                    }
                }
                Ok::<_, Infallible>(meter.answered(resp))
            }
        })
    };
    // Only the version the client speaks: a connection built for both
    // (hyper-util's auto builder) holds room for both, 12 KiB more per idle
    // keep-alive connection (`cargo bench`: 18.8 -> 30.5 KiB).
    let conn = match version {
        Version::H1 => HttpConn::H1(Box::pin(
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(config.header_read_timeout)
                .max_buf_size(config.max_head_frame.max(8192))
                .keep_alive(shutdown.is_some())
                .serve_connection(io, service)
                .with_upgrades(),
        )),
        Version::H2 => HttpConn::H2(Box::pin(h2_builder(config).serve_connection(io, service))),
    };
    tokio::pin!(conn);
    // A connection taken from the backlog after shutdown began is already
    // "stopping": its first request is served, then it closes (on HTTP/2
    // with a GOAWAY, the streams already open finishing).
    let stopping = async {
        if let Some(mut shutdown) = shutdown {
            shutdown.wait().await
        }
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stopping => {
            // Just accepted, nothing read yet: its first request may be
            // in the socket already. Let it start (then finish) rather
            // than close the connection under it as idle.
            let early = if registration.state.served() {
                None
            } else {
                tokio::select! {
                    result = conn.as_mut() => Some(result),
                    _ = registration.state.request_started() => None,
                    _ = tokio::time::sleep(FIRST_REQUEST_GRACE) => None,
                }
            };
            match early {
                Some(result) => result,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        _ = registration.state.shed.notified() => {
            debug!(%peer, "idle keep-alive connection closed to make room");
            conn.as_mut().graceful_shutdown();
            // HTTP/1.1 closes at once; HTTP/2 says GOAWAY and waits for the
            // client, which may never answer. Idle, it holds nothing.
            match tokio::time::timeout(SHED_CLOSE, conn.as_mut()).await {
                Ok(result) => result,
                Err(_) if !registration.state.is_busy() => Ok(()),
                Err(_) => conn.await,
            }
        }
    };
    if let Err(e) = result {
        if told_to_calm_down(&e) {
            shared.metrics.connection_failed("h2_enhance_your_calm");
            warn!(%peer, "HTTP/2 client connection closed with GOAWAY ENHANCE_YOUR_CALM: it passed a flood limit (streams reset before being served, CONTINUATION frames, header list size, or streams the server had to reset)");
        } else {
            debug!(%peer, "client connection ended with an error: {e}");
        }
    }
    drop(registration);
}

/// Whether an HTTP/2 connection ended because this server sent GOAWAY
/// ENHANCE_YOUR_CALM: the client reset or provoked too many streams.
fn told_to_calm_down(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
        }
        cause = e.source();
    }
    false
}

/// `308` to the same host and path over HTTPS (`--api-plain-redirect`). The
/// host comes from the request target's authority (HTTP/2's `:authority`,
/// an absolute-form target), else the one `Host` header; one with user info,
/// or several, is refused.
fn to_https<B>(req: &Request<B>, https_port: Option<u16>) -> Response<TunnelBody> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let header = hosts.next();
    let host = match (req.uri().authority(), header, hosts.next()) {
        (_, Some(_), Some(_)) => None,
        (Some(authority), _, _) => Some(authority.clone()),
        (None, Some(h), None) => h.to_str().ok().and_then(|h| h.parse().ok()),
        (None, None, _) => None,
    }
    .filter(|a: &http::uri::Authority| !a.as_str().contains('@') && !a.host().is_empty());
    let Some(host) = host else {
        return reply::error_response(
            http::StatusCode::BAD_REQUEST,
            "bad_host",
            None,
            "this address only redirects to HTTPS, which needs one valid Host (no user info)",
        );
    };
    // `OPTIONS *` and the like have no path to keep.
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    let location = match https_port {
        Some(port) => format!("https://{}:{port}{path}", host.host()),
        None => format!("https://{}{path}", host.host()),
    };
    let mut resp = Response::new(body::full(format!("moved to {location}\n")));
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = http::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(http::header::LOCATION, value);
    }
    resp
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<TunnelBody>, Infallible> {
    Ok(route::route(shared, peer, req.map(body::from_incoming)).await)
}
