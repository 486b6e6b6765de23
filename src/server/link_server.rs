//! The cluster link's serving side: requests other nodes forward to this one
//! (mutual TLS under the cluster CA when configured, then the shared secret),
//! served only with the agents held here, so a request never travels further.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tracing::warn;

use super::{
    admin,
    cluster::{MOVED_HEADER, PEER_HEADER},
    link_trailers, local,
    peers::SECRET_HEADER,
    reply::{error_response, FailureCode},
    state::Shared,
    stream, target,
};
use crate::{accept, body::TunnelBody, shutdown::Shutdown};

/// Serves forwarded requests from other nodes, for agents held here.
pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener, mut shutdown: Shutdown) {
    // Every link connection's task holds a clone; when all are gone, the
    // forwarded requests they carried are done.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept::next(&listener, "cluster") => accepted,
            _ = shutdown.wait() => break,
        };
        spawn_link(&shared, stream, peer, Some(shutdown.clone()), open.clone());
    }
    // Link connections that already sit in the backlog: served (one request
    // each) rather than reset, as on the client API.
    for (stream, peer) in accept::backlog(listener, "cluster") {
        spawn_link(&shared, stream, peer, None, open.clone());
    }
    drop(open);
    // Requests other nodes forwarded here finish before this node's agent
    // connections (which carry them) may close: bounded by the drain grace.
    let grace = shared.config.drain_grace;
    if tokio::time::timeout(grace, all_closed.recv())
        .await
        .is_err()
    {
        warn!("cluster link connections still open after the {grace:?} drain grace");
    }
}

/// Serves one link connection from another node (TLS first, when the
/// cluster has its CA). Without `shutdown`, one request and then close.
fn spawn_link(
    shared: &Arc<Shared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shutdown: Option<Shutdown>,
    open: tokio::sync::mpsc::Sender<()>,
) {
    let _ = stream.set_nodelay(true);
    let shared = shared.clone();
    tokio::spawn(async move {
        let _open = open;
        let tls = shared.peers.as_ref().and_then(|p| p.tls.clone());
        match tls {
            None => serve_link(shared, stream, peer, shutdown).await,
            Some(tls) => {
                // Only a peer with a certificate of the cluster CA gets
                // past the handshake (bounded, like every wait on a peer).
                let accept = tls.acceptor.accept(stream);
                match tokio::time::timeout(LINK_HANDSHAKE, accept).await {
                    Ok(Ok(stream)) => serve_link(shared, stream, peer, shutdown).await,
                    Ok(Err(e)) => warn!(%peer, "cluster link refused: TLS: {e}"),
                    Err(_) => warn!(%peer, "cluster link refused: no TLS handshake in time"),
                }
            }
        }
    });
}

/// Time a peer node has to complete the link's TLS handshake.
const LINK_HANDSHAKE: Duration = Duration::from_secs(10);

/// HTTP/1.1 from another node over one link connection, until it closes or
/// (gracefully: requests in flight finish) this node shuts down.
async fn serve_link<IO>(shared: Arc<Shared>, io: IO, peer: SocketAddr, shutdown: Option<Shutdown>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(move |req| from_node(shared.clone(), peer, req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(shutdown.is_some())
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stopping = async {
        match shutdown {
            Some(mut shutdown) => shutdown.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopping => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A request another node forwarded to us.
async fn from_node(
    shared: Arc<Shared>,
    link_peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<TunnelBody>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let body = link_trailers::unpack(&mut parts.headers, crate::body::from_incoming(body));
    let mut req = Request::from_parts(parts, body);
    let Some(peers) = &shared.peers else {
        return Ok(error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            None,
            "clustering is off",
        ));
    };
    let presented = req
        .headers_mut()
        .remove(SECRET_HEADER)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    if !bool::from(presented.ct_eq(peers.config.secret.expose().as_bytes())) {
        warn!(%link_peer, "cluster request with a wrong or missing secret refused");
        return Ok(error_response(
            StatusCode::UNAUTHORIZED,
            "bad_cluster_secret",
            None,
            "this is a node-to-node endpoint; the cluster secret does not match",
        ));
    }
    if req.uri().path() == admin::CLUSTER_DISCONNECT {
        return Ok(admin::disconnect_for_node(&shared, &req));
    }
    let peer = req
        .headers_mut()
        .remove(PEER_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(link_peer);
    let target = match target::target(&req, None) {
        Ok(t) => t,
        Err(resp) => return Ok(*resp),
    };
    // The forwarding node's client can take trailers: they come back packed.
    let pack_trailers = req
        .headers()
        .get(header::TE)
        .is_some_and(|te| te == "trailers");
    // Only agents held here: a forwarded request never travels further.
    let mut resp = match local::serve(&shared, req, target, peer).await {
        Ok(resp) => resp,
        Err((_, target)) => {
            let mut resp = local::not_connected(&shared, &target.client_id).await;
            resp.headers_mut()
                .insert(MOVED_HEADER, HeaderValue::from_static("gone"));
            resp
        }
    };
    // The agent's connection here died under the request: the forwarding
    // node may know another way to the agent.
    if resp
        .extensions()
        .get::<FailureCode>()
        .is_some_and(|code| stream::connection_lost_code(code.0))
    {
        resp.headers_mut()
            .insert(MOVED_HEADER, HeaderValue::from_static("lost"));
    }
    if pack_trailers && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        let body = link_trailers::pack(&mut parts.headers, body);
        resp = Response::from_parts(parts, body);
    }
    Ok(resp)
}
