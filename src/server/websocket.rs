//! Client WebSockets passed through to the agent: the agent opens a WebSocket to
//! its upstream at the same path (with the client's headers and subprotocols),
//! and messages, pings and close codes are relayed unchanged both ways.

use std::{net::SocketAddr, sync::atomic::Ordering, sync::Arc};

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role},
    WebSocketStream,
};
use tracing::{debug, info, Instrument};
use warren_proto::{Mode, Open, Reply};

use super::{agents::AgentLink, api::error_response, api::Target, forward, Shared};
use crate::{body, body::TunnelBody, headers, websocket};

/// Whether this is a WebSocket upgrade request.
pub(super) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Checks the client's handshake; returns its `Sec-WebSocket-Accept`.
pub(super) fn accept_key<B>(req: &Request<B>) -> Result<HeaderValue, &'static str> {
    if req
        .headers()
        .get("sec-websocket-version")
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err("WebSocket upgrades need Sec-WebSocket-Version: 13");
    }
    let key = req
        .headers()
        .get("sec-websocket-key")
        .ok_or("WebSocket upgrades need a Sec-WebSocket-Key")?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| "bad key")
}

/// The 101 answer completing a client's upgrade.
pub(super) fn switching(
    accept: HeaderValue,
    protocol: Option<HeaderValue>,
) -> Response<TunnelBody> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert("sec-websocket-accept", accept);
    if let Some(p) = protocol {
        h.insert("sec-websocket-protocol", p);
    }
    resp
}

pub(super) async fn pass_through(
    shared: &Shared,
    link: Arc<AgentLink>,
    mut req: Request<Incoming>,
    target: Target,
    peer: SocketAddr,
) -> Response<TunnelBody> {
    let client_id = target.client_id.clone();
    let fail = |status, code, message: String| {
        info!(%status, code, "{message}");
        error_response(status, code, Some(&client_id), &message)
    };
    let accept = match accept_key(&req) {
        Ok(a) => a,
        Err(why) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "bad_websocket_handshake",
                why.into(),
            )
        }
    };
    let request_id = shared.next_request_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("websocket", client_id = %link.client_id, conn = %link.tunnel_ws_id, request_id);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    for name in [
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
    ] {
        parts.headers.remove(name);
    }
    let head = forward::request_head(&parts, request_id, target.uri, Mode::Stream, false, peer);
    let (send, mut recv) = match forward::open_stream(shared, &link, &Open::WebSocket(head)).await {
        Ok(pair) => pair,
        Err((status, code, message)) => return fail(status, code, message),
    };
    let reply = match forward::read_reply(shared, &mut recv).await {
        Ok(reply) => reply,
        Err((status, code, message)) => return fail(status, code, message),
    };
    let head = match reply {
        Reply::Head(head) => head,
        Reply::Error(e) => {
            let status = match e.kind {
                warren_proto::ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
                warren_proto::ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            };
            return fail(status, "upstream_websocket_failed", e.message);
        }
    };
    let resp_headers = headers::from_wire(head.headers).unwrap_or_default();
    if head.status != 101 {
        // The upstream declined the upgrade with an ordinary response: pass it on.
        let mut resp = Response::new(body::from_recv(recv));
        *resp.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
        *resp.headers_mut() = resp_headers;
        return resp;
    }
    let limits = shared.ws_limits.clone();
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    debug!("client upgrade failed: {e}");
                    return;
                }
            };
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(limits.config()),
            )
            .await;
            let code = websocket::relay(ws, send, recv, &limits).await;
            debug!(code, "WebSocket closed");
        }
        .instrument(span),
    );
    switching(accept, resp_headers.get("sec-websocket-protocol").cloned())
}
