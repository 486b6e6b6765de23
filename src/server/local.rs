//! Serving a client request through an agent connected to this node: a room
//! join, a WebSocket pass-through or an HTTP request. The client API and the
//! cluster link (requests other nodes forward here) both come through this one
//! path; when no connection for the agent is here, the request is given back.

use std::{net::SocketAddr, sync::Arc};

use http::{header, HeaderValue, Request, Response, StatusCode};

use super::{
    forward, reply::error_response, rooms, state::Shared, target::Target, upgrade, websocket,
};
use crate::body::{self, TunnelBody};

/// Serves `req` through an agent connected here, or gives it back (with its
/// target) when there is none.
pub(super) async fn serve(
    shared: &Arc<Shared>,
    req: Request<TunnelBody>,
    target: Target,
    peer: SocketAddr,
) -> Result<Response<TunnelBody>, (Request<TunnelBody>, Target)> {
    if let Some(room) = req.uri().path().strip_prefix("/_warren/rooms/") {
        if !upgrade::is_upgrade(&req) {
            return Ok(error_response(
                StatusCode::BAD_REQUEST,
                "websocket_expected",
                Some(&target.client_id),
                "rooms are joined with a WebSocket upgrade",
            ));
        }
        let room = room.to_string();
        return match shared.agents.pick_first(&target.client_id) {
            Some(link) => Ok(rooms::join(&shared.rooms, link, req, &room, peer).await),
            None => Err((req, target)),
        };
    }
    let link = match shared.agents.pick(&target.client_id) {
        Some(link) => link,
        // Its connection went moments ago: wait (bounded) for the agent to
        // reconnect rather than failing a request a restart would serve.
        None if shared.agents.recently_lost(&target.client_id) => {
            let deadline = tokio::time::Instant::now() + shared.config.failover_wait;
            match shared
                .agents
                .other_than(&target.client_id, &[], deadline)
                .await
            {
                Some(link) => link,
                None => return Err((req, target)),
            }
        }
        None => return Err((req, target)),
    };
    // Held until the response body ends (the stream is held as long): by
    // the body of a forwarded response, around a pass-through's.
    let Some(share) = shared.shares.take(&target.client_id, peer.ip()) else {
        let limit = shared.shares.limit();
        tracing::info!(%peer, client_id = %target.client_id, "request refused: this address has {limit} in flight to the agent");
        let mut resp = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            Some(&target.client_id),
            &format!("this address already has {limit} requests in flight to this agent (--max-requests-per-ip); finish or cancel some"),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(resp);
    };
    Ok(if upgrade::is_upgrade(&req) {
        let resp = websocket::pass_through(shared, link, req, target, peer).await;
        resp.map(|body| body::metered(body, share))
    } else {
        forward::forward(shared, link, req, target, peer, share).await
    })
}

/// Answer for a client id with no live connection here (nor, in a cluster,
/// anywhere): unknown (never registered) or offline.
pub(super) async fn not_connected(shared: &Shared, client_id: &str) -> Response<TunnelBody> {
    let registered = match shared.registered.get(client_id) {
        Some(known) => Some(known),
        None => match shared.registry.token_hash(client_id).await {
            Ok(hash) => {
                shared.registered.put(client_id, hash.is_some());
                Some(hash.is_some())
            }
            Err(_) => None,
        },
    };
    match registered {
        Some(false) => error_response(
            StatusCode::NOT_FOUND,
            "unknown_agent",
            Some(client_id),
            "no agent is registered under this client id",
        ),
        _ => {
            let mut resp = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "agent_offline",
                Some(client_id),
                "the agent is not connected right now",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            resp
        }
    }
}
