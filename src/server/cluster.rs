//! Running several server nodes as one: each node registers itself in the
//! `nodes` table with a lease it renews by heartbeat, and a client request for
//! an agent held by another node is forwarded to that node over the internal
//! cluster link (HTTP/1.1 between nodes, authenticated by a shared secret;
//! its serving side is `link_server`).
//!
//! Lookups are cached briefly, invalidated when a forward fails, and resolved
//! afresh once before a client hears "agent offline". Nodes whose lease ran out
//! (killed, partitioned) are reaped by the others, rows and all.

use std::{net::SocketAddr, sync::Arc};

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::client::conn::http1 as client_http1;
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

use super::{
    link_trailers, local,
    peers::{Peers, SECRET_HEADER},
    reply::error_response,
    state::Shared,
    target, upgrade,
};
use crate::{
    body::TunnelBody,
    headers::{self, CLIENT_HEADER},
    registry::now_ms,
    shutdown::Shutdown,
    transport::TransportError,
};

/// Header carrying the original client's address across the internal link.
pub(super) const PEER_HEADER: &str = "x-warren-peer";
/// Response header on the internal link: the answering node could not serve
/// the request with its agent connections (the agent left it, or its
/// connection broke before the agent answered). A bodiless request can then
/// go to another route. Never passed on to the client.
pub(super) const MOVED_HEADER: &str = "x-warren-agent-moved";

/// Registers this node before it serves.
pub(super) async fn register(
    shared: &Shared,
    peers: &Peers,
) -> Result<(), crate::registry::RegistryError> {
    shared
        .registry
        .upsert_node(
            &shared.config.node_id,
            &peers.advertise,
            peers.lease_expiry(),
        )
        .await
}

/// Renews our lease and reaps dead nodes, every third of a lease.
pub(super) async fn heartbeat(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let Some(peers) = &shared.peers else {
        return;
    };
    let every = peers.config.lease / 3;
    let node = &shared.config.node_id;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
        match shared
            .registry
            .renew_lease(node, peers.lease_expiry())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Others declared us dead (a long pause, a partition): come
                // back, with the connections we still hold.
                warn!("this node's registration was reaped; registering again");
                if let Err(e) = register(&shared, peers).await {
                    warn!("re-registering failed: {e}");
                    continue;
                }
                for link in shared.agents.all() {
                    if let Err(e) = shared.registry.upsert_connection(&link.record).await {
                        warn!("re-recording connection {}: {e}", link.tunnel_ws_id);
                    }
                }
            }
            Err(e) => warn!("renewing the node lease failed: {e}"),
        }
        match shared.registry.reap_expired_nodes(now_ms()).await {
            Ok(reaped) if !reaped.is_empty() => {
                info!(nodes = ?reaped, "removed nodes whose lease expired, with their connections");
                peers.routes.clear();
            }
            Ok(_) => {}
            Err(e) => warn!("reaping expired nodes failed: {e}"),
        }
    }
}

/// Forwards a client request to the node holding its agent, or answers that
/// the agent is not connected anywhere.
///
/// A node that answers that its connection to the agent is gone (the agent
/// moved, or the connection died under the request, as in a rolling restart)
/// has not consumed a bodiless request: that one is tried on the next route,
/// then, after a fresh lookup, on the agent's connections to this node.
pub(super) async fn forward_remote(
    shared: &Arc<Shared>,
    peers: &Peers,
    req: Request<TunnelBody>,
    target: target::Target,
    peer: SocketAddr,
) -> Response<TunnelBody> {
    let client_id = target.client_id.as_str();
    let lookup = || async {
        match shared.registry.routes_for(client_id, now_ms()).await {
            Ok(routes) => {
                let routes: Vec<_> = routes
                    .into_iter()
                    .filter(|(node, _)| *node != shared.config.node_id)
                    .collect();
                peers.routes.put(client_id, routes.clone());
                routes
            }
            Err(e) => {
                warn!("route lookup failed: {e}");
                Vec::new()
            }
        }
    };
    let (mut routes, mut fresh) = match peers.routes.get(client_id) {
        Some(cached) => (cached, false),
        None => (lookup().await, true),
    };
    let resend = Resend::of(&req);
    let mut unreachable = false;
    // The last "moved" answer, for the client if no other way works.
    let mut moved: Option<Response<TunnelBody>> = None;
    let mut pending = Some(req);
    'routes: loop {
        for (node, addr) in &routes {
            let Some(req) = pending
                .take()
                .or_else(|| resend.as_ref().map(Resend::request))
            else {
                break 'routes;
            };
            match peers.links.get(addr).await {
                Ok(sender) => match send(peers, addr, sender, req, client_id, peer).await {
                    Ok(mut resp) => {
                        let Some(why) = resp.headers_mut().remove(MOVED_HEADER) else {
                            return resp;
                        };
                        if resend.is_none() {
                            return resp;
                        }
                        info!(%node, status = %resp.status(), why = ?why, "the node no longer serves the agent; trying another way");
                        peers.routes.invalidate(client_id);
                        unreachable = true;
                        moved = Some(resp);
                    }
                    Err(unsent) => {
                        info!(%node, "the link to the node closed before the request went");
                        pending = Some(unsent);
                        unreachable = true;
                    }
                },
                Err(e) => {
                    info!(%node, "cannot reach node: {e}");
                    pending = Some(req);
                    unreachable = true;
                }
            }
        }
        if fresh {
            break;
        }
        // The cached routes failed: resolve afresh, once, before giving up.
        peers.routes.invalidate(client_id);
        routes = lookup().await;
        fresh = true;
    }
    let req = pending.or_else(|| resend.as_ref().map(Resend::request));
    if let (true, Some(req)) = (unreachable, req) {
        // The node that held the agent is going or gone (a rolling restart,
        // a crash): its connections are moving, often to this node. Wait
        // briefly for one instead of failing a request a moment would serve.
        let deadline = tokio::time::Instant::now() + shared.config.failover_wait;
        let client_id = target.client_id.clone();
        if shared
            .agents
            .other_than(&client_id, &[], deadline)
            .await
            .is_some()
        {
            return match local::serve(shared, req, target, peer).await {
                Ok(resp) => resp,
                Err(_) => local::not_connected(shared, &client_id).await,
            };
        }
        return match moved {
            Some(resp) => resp,
            None => local::not_connected(shared, &client_id).await,
        };
    }
    match moved {
        Some(resp) => resp,
        None => local::not_connected(shared, client_id).await,
    }
}

/// What is needed to send a bodiless request again (its body, being empty,
/// is all that the first attempt consumed). Upgrades are never sent twice:
/// their client side went with the first attempt.
struct Resend {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Resend {
    fn of(req: &Request<TunnelBody>) -> Option<Resend> {
        if !http_body::Body::is_end_stream(req.body()) || upgrade::is_upgrade(req) {
            return None;
        }
        Some(Resend {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn request(&self) -> Request<TunnelBody> {
        let mut req = Request::new(crate::body::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Sends `req` to the node at `addr`. `Err` gives the request back when it
/// was never sent (the link connection closed first, as when that node is
/// draining), so it can go elsewhere.
async fn send(
    peers: &Peers,
    addr: &str,
    mut sender: client_http1::SendRequest<TunnelBody>,
    req: Request<TunnelBody>,
    client_id: &str,
    peer: SocketAddr,
) -> Result<Response<TunnelBody>, Request<TunnelBody>> {
    let mut req = req;
    // WebSocket upgrades (pass-through and room joins) cross the link too: the
    // node's 101 is passed on and the two upgraded connections are spliced.
    let upgrade = upgrade::is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, mut body) = req.into_parts();
    // Whether the client can take trailers (or sends some): asked for on the
    // link with `TE: trailers`, and the request's own packed.
    let trailers = upgrade.is_none() && super::forward::may_carry_trailers(&parts);
    // A body with its own trailers to come goes packed (below), what it
    // announced still announced.
    let own_trailers = trailers && !http_body::Body::is_end_stream(&body);
    headers::strip_hop_by_hop_keeping_trailer(&mut parts.headers, own_trailers);
    link_trailers::strip(&mut parts.headers);
    let h = &mut parts.headers;
    if upgrade.is_some() {
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if own_trailers {
        body = link_trailers::pack(h, body);
    }
    h.remove(PEER_HEADER);
    h.insert(
        SECRET_HEADER,
        HeaderValue::from_str(peers.config.secret.expose()).unwrap_or(HeaderValue::from_static("")),
    );
    h.insert(
        PEER_HEADER,
        HeaderValue::from_str(&peer.to_string()).expect("ascii"),
    );
    h.insert(
        CLIENT_HEADER,
        HeaderValue::from_str(client_id).expect("validated id"),
    );
    if !h.contains_key(header::HOST) {
        h.insert(header::HOST, HeaderValue::from_str(addr).expect("ascii"));
    }
    // The link speaks HTTP/1.1 whatever the client spoke: a request still
    // marked HTTP/2 or HTTP/3 would go without chunked encoding, and a body
    // of unknown length (a streamed upload) would arrive empty.
    parts.version = http::Version::HTTP_11;
    // Origin-form on the internal link.
    if let Some(pq) = parts.uri.path_and_query() {
        parts.uri = pq.as_str().parse().expect("path and query");
    }
    let result = sender
        .try_send_request(Request::from_parts(parts, body))
        .await;
    peers.links.put(addr, sender);
    let result = match result {
        Ok(resp) => Ok(resp),
        Err(mut unsent) => match unsent.take_message() {
            // Not sent, and not an upgrade (whose client side was taken out
            // of the request above): give it back, without the link's headers.
            Some(req) if upgrade.is_none() => {
                let (mut parts, body) = req.into_parts();
                parts.headers.remove(SECRET_HEADER);
                parts.headers.remove(PEER_HEADER);
                let body = link_trailers::unpack(&mut parts.headers, body);
                return Err(Request::from_parts(parts, body));
            }
            _ => Err(unsent.into_error()),
        },
    };
    Ok(match result {
        Ok(mut resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some() => {
            let node_side = hyper::upgrade::on(&mut resp);
            let client_side = upgrade.expect("checked");
            tokio::spawn(async move {
                if let (Ok(client), Ok(node)) = (client_side.await, node_side.await) {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(node),
                    )
                    .await;
                }
            });
            let (parts, _) = resp.into_parts();
            Response::from_parts(parts, crate::body::empty())
        }
        Ok(resp) => {
            debug!(node = %addr, status = %resp.status(), "forwarded to node");
            let (mut parts, body) = resp.into_parts();
            let body = body
                .map_err(|e| TransportError::Io(std::io::Error::other(e)))
                .boxed_unsync();
            let body = link_trailers::unpack(&mut parts.headers, body);
            Response::from_parts(parts, body)
        }
        Err(e) => {
            peers.routes.invalidate(client_id);
            error_response(
                StatusCode::BAD_GATEWAY,
                "node_unreachable",
                Some(client_id),
                &format!("the node holding this agent failed: {e}"),
            )
        }
    })
}
