//! The client-facing HTTP API: accepts client connections (bounded, with a
//! header-read deadline) and routes each request: warren's own `/_warren/…`
//! endpoints, then an agent on this node, then (in a cluster) the node that
//! holds the agent, else "not connected".

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, info, warn};

use super::{
    access, builtin, cluster,
    idle::{IdleConns, Registration},
    local,
    meter::{Received, RequestMeter},
    reply::FailureCode,
    rooms,
    state::Shared,
    target,
    upgrade::ConnectionSlot,
};
use crate::{
    accept,
    body::{self, TunnelBody},
    shutdown::Shutdown,
};

/// How long a new client waits for the place of an idle connection it
/// displaced (that connection closes at once; this bounds the wait).
const SHED_WAIT: Duration = Duration::from_millis(500);

pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener, mut shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(shared.config.max_client_connections));
    let idle = Arc::new(IdleConns::default());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept::next(&listener, "client") => accepted,
            _ = shutdown.wait() => break,
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            // At the limit: close the oldest idle keep-alive connection and
            // take its place; refuse only when every connection is busy.
            Err(_) if idle.shed_one() => {
                match tokio::time::timeout(SHED_WAIT, slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        warn!(%peer, "client connection refused: limit reached");
                        continue;
                    }
                }
            }
            Err(_) => {
                warn!(%peer, limit = shared.config.max_client_connections, "client connection refused: limit reached, every connection busy");
                continue;
            }
        };
        let registration = idle.register();
        let slot = ConnectionSlot::new(permit);
        spawn_connection(
            &shared,
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
    use futures_util::FutureExt;
    while let Some(Ok((stream, peer))) = listener.accept().now_or_never() {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            break;
        };
        let slot = ConnectionSlot::new(permit);
        spawn_connection(&shared, stream, peer, slot, idle.register(), None);
    }
    drop(listener);
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

/// How long a connection accepted just before shutdown began gets to start
/// its first request: a client sends it right after connecting, so this only
/// matters on a loaded machine.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Serves one client connection. Without `shutdown` (a connection taken
/// from the backlog after shutdown began) it answers one request and closes.
fn spawn_connection(
    shared: &Arc<Shared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    registration: Registration,
    shutdown: Option<Shutdown>,
) {
    let _ = stream.set_nodelay(true);
    let shared = shared.clone();
    tokio::spawn(async move {
        let config = &shared.config;
        let state = registration.state.clone();
        let service = {
            let shared = shared.clone();
            service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(slot.clone());
                // Busy (and in flight) from the request's start to its
                // body's end.
                let meter = RequestMeter::start(&shared, &req, state.busy());
                let shared = shared.clone();
                async move {
                    let resp = handle(shared, peer, req).await?;
                    Ok::<_, Infallible>(meter.answered(resp))
                }
            })
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size(config.max_head_frame.max(8192))
            .keep_alive(shutdown.is_some())
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(conn);
        let stopping = async {
            match shutdown {
                Some(mut shutdown) => shutdown.wait().await,
                None => std::future::pending().await,
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
                conn.await
            }
        };
        if let Err(e) = result {
            debug!(%peer, "client connection ended with an error: {e}");
        }
        drop(registration);
    });
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<TunnelBody>, Infallible> {
    let mut req = req.map(|incoming| {
        let body = body::from_incoming(incoming);
        // A bodiless request (most) is not wrapped: nothing to count.
        if hyper::body::Body::is_end_stream(&body) {
            body
        } else {
            body::metered(body, Received::new(&shared))
        }
    });
    let path = req.uri().path();
    let joining_room = path.starts_with("/_warren/rooms/");
    if path.starts_with("/_warren/") && !joining_room && path != "/_warren/rooms" {
        return Ok(builtin::respond(&shared, path));
    }
    let base_domain = shared.config.base_domain.as_deref();
    let target = match target::target(&req, base_domain) {
        Ok(t) => t,
        Err(resp) => return Ok(*resp),
    };
    // An agent with client tokens: checked (and the token removed) here, at
    // the edge, before anything reaches the agent or another node.
    let target = match access::check(&shared, &mut req, &target.client_id).await {
        Ok(false) => target,
        Ok(true) => match target::target(&req, base_domain) {
            Ok(t) => t,
            Err(resp) => return Ok(*resp),
        },
        Err(resp) => return Ok(*resp),
    };
    if req.uri().path() == "/_warren/rooms" {
        return Ok(rooms::list(&shared.rooms, &target.client_id));
    }
    let (req, target) = match local::serve(&shared, req, target, peer).await {
        Ok(resp) => return Ok(resp),
        Err(unserved) => unserved,
    };
    // Not here: another node of the cluster may hold it.
    if let Some(peers) = &shared.peers {
        let resp = cluster::forward_remote(&shared, peers, req, target, peer).await;
        let failed = resp.extensions().get::<FailureCode>().is_some();
        shared
            .metrics
            .forwarded(if failed { "failed" } else { "answered" });
        return Ok(resp);
    }
    Ok(local::not_connected(&shared, &target.client_id).await)
}
