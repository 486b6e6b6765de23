//! Client WebSockets passed through to the agent: the agent opens a WebSocket to
//! its upstream at the same path (with the client's headers and subprotocols),
//! and messages, pings and close codes are relayed unchanged both ways.

use std::{net::SocketAddr, sync::atomic::Ordering, sync::Arc};

use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{tungstenite::protocol::Role, WebSocketStream};
use tracing::{debug, Instrument};
use warren_proto::{Mode, Open};

use super::{
    agents::AgentLink,
    reply::Failure,
    state::Shared,
    stream::{self, Answer},
    target::Target,
    upgrade,
};
use crate::{body, body::TunnelBody, websocket};

pub(super) async fn pass_through(
    shared: &Shared,
    link: Arc<AgentLink>,
    mut req: Request<TunnelBody>,
    target: Target,
    peer: SocketAddr,
) -> Response<TunnelBody> {
    let client_id = target.client_id.clone();
    let accept = match upgrade::accept_key(&req) {
        Ok(a) => a,
        Err(why) => {
            return Failure::new(StatusCode::BAD_REQUEST, "bad_websocket_handshake", why)
                .respond(&client_id)
        }
    };
    let request_id = shared.next_request_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(parent: &link.span, "websocket", request_id);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let slot = upgrade::ConnectionSlot::of(&req);
    let (mut parts, _) = req.into_parts();
    for name in [
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
    ] {
        parts.headers.remove(name);
    }
    let xff = stream::forwarded_for(&parts.headers, peer);
    let head = stream::request_head(
        &parts,
        request_id,
        &target.uri,
        Mode::Stream,
        false,
        &xff,
        false,
    );
    let (send, mut recv) = match stream::open(shared, &link, &Open::WebSocket(head), false).await {
        Ok(pair) => pair,
        Err(failure) => return failure.respond(&client_id),
    };
    let (status, resp_headers) = match stream::read_reply(shared, &link, &mut recv).await {
        Ok(Answer::Head { status, headers }) => (status, headers.unwrap_or_default()),
        Ok(Answer::Error(e)) => return Failure::from_agent(e).respond(&client_id),
        Err(failure) => return failure.respond(&client_id),
    };
    if status != 101 {
        // The upstream declined the upgrade with an ordinary response: pass it on.
        let mut resp = Response::new(body::from_recv(recv, shared.config.body_idle_timeout));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        *resp.headers_mut() = resp_headers;
        return resp;
    }
    let limits = shared.config.ws.clone();
    let mut stopping = shared.stopping.subscribe();
    tokio::spawn(
        async move {
            let _slot = slot;
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
            let stop = async move {
                let _ = stopping.wait_for(|stopping| *stopping).await;
            };
            let code = websocket::relay(ws, send, recv, &limits, stop).await;
            debug!(code, "WebSocket closed");
        }
        .instrument(span),
    );
    upgrade::switching(accept, resp_headers.get("sec-websocket-protocol").cloned())
}
