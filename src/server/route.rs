//! Routing one client request, whichever HTTP version brought it: warren's
//! own `/_warren/…` endpoints, then an agent on this node, then (in a
//! cluster) the node that holds the agent, else "not connected".

use std::{net::SocketAddr, sync::Arc};

use http::{Request, Response};

use super::{
    access, builtin, cluster, local, meter::Received, reply::FailureCode, rooms, state::Shared,
    stream, target,
};
use crate::body::{self, TunnelBody};

/// Routes one client request, whichever HTTP version it came in.
pub(super) async fn route(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<TunnelBody>,
) -> Response<TunnelBody> {
    let mut req = req.map(|body| {
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
        return builtin::respond(&shared, path);
    }
    let base_domain = shared.config.base_domain.as_deref();
    let target = match target::target(&req, base_domain) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    // An agent with client tokens: checked (and the token removed) here, at
    // the edge, before anything reaches the agent or another node.
    let target = match access::check(&shared, &mut req, &target.client_id).await {
        Ok(false) => target,
        Ok(true) => match target::target(&req, base_domain) {
            Ok(t) => t,
            Err(resp) => return *resp,
        },
        Err(resp) => return *resp,
    };
    if req.uri().path() == "/_warren/rooms" {
        return rooms::list(&shared.rooms, &target.client_id);
    }
    let (mut req, target) = match local::serve(&shared, req, target, peer).await {
        Ok(resp) => return resp,
        Err(unserved) => unserved,
    };
    // Not here: another node of the cluster may hold it.
    if let Some(peers) = &shared.peers {
        // That node sees the link's scheme, not the client's: say it here
        // (unless an earlier proxy did).
        let proto = http::HeaderValue::from_static(stream::proto(req.extensions()));
        req.headers_mut()
            .entry(stream::FORWARDED_PROTO)
            .or_insert(proto);
        let resp = cluster::forward_remote(&shared, peers, req, target, peer).await;
        let failed = resp.extensions().get::<FailureCode>().is_some();
        shared
            .metrics
            .forwarded(if failed { "failed" } else { "answered" });
        return resp;
    }
    local::not_connected(&shared, &target.client_id).await
}
