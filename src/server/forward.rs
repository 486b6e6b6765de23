//! Carries one client request across the tunnel: opens a stream to the agent,
//! sends the head, pumps the body, and turns the agent's reply into the client's
//! response, streamed (default) or collected first (blocking mode).

use std::{net::SocketAddr, sync::atomic::Ordering, sync::Arc};

use bytes::BytesMut;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tracing::{debug, info, Instrument};
use warren_proto::{Mode, Open, RequestHead, ResetCode};

use super::{
    agents::{AgentLink, InFlight},
    metrics::Carried,
    reply::Failure,
    state::Shared,
    stream::{self, Answer},
    target::Target,
};
use crate::{
    body::{self, TunnelBody, CHUNK},
    headers::{self, BadHeader, REQUEST_ID_HEADER},
    transport::{RecvStream, SendStream, TransportError},
};

pub(super) async fn forward(
    shared: &Shared,
    link: Arc<AgentLink>,
    req: Request<TunnelBody>,
    target: Target,
    peer: SocketAddr,
) -> Response<TunnelBody> {
    let request_id = shared.next_request_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(parent: &link.span, "request", request_id);
    let carried = shared.live.access_log().then(|| Carried {
        client_id: target.client_id.clone(),
        transport: link.session.kind(),
    });
    let mut resp = exchange(shared, link, req, target, peer, request_id)
        .instrument(span)
        .await;
    resp.headers_mut()
        .insert(REQUEST_ID_HEADER, HeaderValue::from(request_id));
    if let Some(carried) = carried {
        resp.extensions_mut().insert(carried);
    }
    resp
}

async fn exchange(
    shared: &Shared,
    link: Arc<AgentLink>,
    req: Request<TunnelBody>,
    target: Target,
    peer: SocketAddr,
    request_id: u64,
) -> Response<TunnelBody> {
    let config = &shared.config;
    let client_id = target.client_id.as_str();
    let fail =
        |status, code, message: String| Failure::new(status, code, message).respond(client_id);

    let (parts, incoming) = req.into_parts();
    let method = parts.method.clone();
    let has_body = !hyper::body::Body::is_end_stream(&incoming);
    let mut body = has_body.then_some(incoming);
    // A connection that dies under a request before the agent took any of it
    // (a killed or restarting agent) does not fail the request: it is sent
    // again on another connection of the agent, waiting briefly for one.
    let mut link = link;
    let mut tried: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + config.failover_wait;
    let xff = stream::forwarded_for(&parts.headers, peer);
    let (mut recv, status, headers) = loop {
        let head =
            stream::request_head(&parts, request_id, &target.uri, target.mode, has_body, &xff);
        let failure = match send_request(shared, &link, head, &mut body).await {
            Ok(reply) => break reply,
            Err(failure) => failure,
        };
        if has_body || !stream::connection_lost(&failure) {
            return failure.respond(client_id);
        }
        tried.push(link.tunnel_ws_id.clone());
        match shared.agents.other_than(client_id, &tried, deadline).await {
            Some(next) => {
                info!(conn = %next.tunnel_ws_id, "trying another connection of the agent: {}", failure.message);
                link = next;
            }
            None => return failure.respond(client_id),
        }
    };
    let Ok(status) = StatusCode::from_u16(status) else {
        recv.stop(ResetCode::ProtocolError);
        return fail(
            StatusCode::BAD_GATEWAY,
            "bad_upstream_response",
            format!("upstream answered with invalid status {status}"),
        );
    };
    let mut resp_headers = match headers {
        Ok(h) => h,
        Err(e) => {
            recv.stop(ResetCode::ProtocolError);
            return fail(
                StatusCode::BAD_GATEWAY,
                "bad_upstream_response",
                e.to_string(),
            );
        }
    };
    headers::strip_hop_by_hop(&mut resp_headers);
    debug!(%status, mode = ?target.mode, "response head");

    // With credit (QUIC), each body byte taken lets the agent send another.
    let mut grant = link.credit.as_ref().map(|c| c.response(request_id));
    // In flight on this connection until the body is over.
    let flight = InFlight::new(&link);
    let body = match target.mode {
        Mode::Stream => body::from_recv_counted(recv, config.body_idle_timeout, move |n| {
            flight.sent(n);
            if let Some(grant) = grant.as_mut() {
                grant.consumed(n)
            }
        }),
        Mode::Blocking => {
            let cap = config.max_blocking_body;
            let taken = &mut |n| {
                flight.sent(n);
                if let Some(grant) = grant.as_mut() {
                    grant.consumed(n)
                }
            };
            match collect(
                &mut recv,
                &resp_headers,
                cap,
                config.response_timeout,
                taken,
            )
            .await
            {
                Ok(bytes) => {
                    if method != Method::HEAD {
                        resp_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                    }
                    body::full(bytes)
                }
                Err(Collect::TooLarge) => {
                    recv.stop(ResetCode::Cancelled);
                    return fail(
                        StatusCode::BAD_GATEWAY,
                        "response_too_large",
                        format!(
                            "the response exceeds the blocking-mode limit of {cap} bytes; use stream mode"
                        ),
                    );
                }
                Err(Collect::Failed(e)) => {
                    return fail(
                        StatusCode::BAD_GATEWAY,
                        "response_truncated",
                        format!("the response broke off before its end: {e}"),
                    )
                }
                Err(Collect::TimedOut) => {
                    recv.stop(ResetCode::Cancelled);
                    return fail(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream_timeout",
                        format!(
                            "the response did not complete within {:?}",
                            config.response_timeout
                        ),
                    );
                }
            }
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = resp_headers;
    resp
}

/// One attempt on one connection: open the stream, send the head (and start
/// the body, if any), wait for the reply head.
async fn send_request(
    shared: &Shared,
    link_arc: &Arc<AgentLink>,
    head: RequestHead<&str, &[u8]>,
    body: &mut Option<TunnelBody>,
) -> Result<(RecvStream, u16, Result<HeaderMap, BadHeader>), Failure> {
    let link: &AgentLink = link_arc;
    let (send, mut recv) = stream::open(shared, link, &Open::Http(head), body.is_none()).await?;
    if let Some(incoming) = body.take() {
        tokio::spawn(pump_request_body(incoming, send, link_arc.clone()).in_current_span());
    }
    match stream::read_reply(shared, link, &mut recv).await? {
        Answer::Head { status, headers } => Ok((recv, status, headers)),
        Answer::Error(e) => Err(Failure::from_agent(e)),
    }
}

enum Collect {
    TooLarge,
    Failed(TransportError),
    TimedOut,
}

/// Reads a whole response body, refusing to hold more than `cap` bytes.
async fn collect(
    recv: &mut RecvStream,
    headers: &HeaderMap,
    cap: u64,
    timeout: std::time::Duration,
    taken: &mut (dyn FnMut(u64) + Send),
) -> Result<bytes::Bytes, Collect> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap) {
        return Err(Collect::TooLarge);
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    let read_all = async {
        while let Some(chunk) = recv.read_chunk(CHUNK).await.map_err(Collect::Failed)? {
            if (buf.len() + chunk.len()) as u64 > cap {
                return Err(Collect::TooLarge);
            }
            taken(chunk.len() as u64);
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read_all).await {
        Ok(Ok(())) => Ok(buf.freeze()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Collect::TimedOut),
    }
}

/// Streams the client's request body into the agent's stream. A client that
/// breaks off mid-upload resets the stream, so the upstream never sees a
/// truncated body as complete.
async fn pump_request_body(mut incoming: TunnelBody, mut send: SendStream, link: Arc<AgentLink>) {
    loop {
        match incoming.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                link.traffic
                    .received
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Err(e) = send.write_chunk(data).await {
                    debug!("agent stopped reading the request body: {e}");
                    return;
                }
            }
            Some(Err(e)) => {
                info!("client request body broke off: {e}");
                send.reset(ResetCode::Cancelled).await;
                return;
            }
            None => {
                let _ = send.finish().await;
                return;
            }
        }
    }
}
