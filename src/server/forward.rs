//! Carries one client request across the tunnel: opens a stream to the agent,
//! sends the head, pumps the body, and turns the agent's reply into the client's
//! response, streamed (default) or collected first (blocking mode).

use std::{net::SocketAddr, sync::atomic::Ordering, sync::Arc};

use bytes::BytesMut;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tracing::{debug, info, Instrument};
use warren_proto::{FrameError, Mode, Open, RequestHead, ResetCode};

use super::{
    agents::{AgentLink, InFlight},
    metrics::Carried,
    reply::Failure,
    share::Share,
    state::Shared,
    stream::{self, Answer},
    target::Target,
};
use crate::{
    body::{
        self,
        parts::{self, BodyReader},
        TunnelBody, CHUNK,
    },
    headers::{self, BadHeader},
    transport::{RecvStream, SendStream, TransportError},
};

pub(super) async fn forward(
    shared: &Shared,
    link: Arc<AgentLink>,
    req: Request<TunnelBody>,
    target: Target,
    peer: SocketAddr,
    share: Share,
) -> Response<TunnelBody> {
    let request_id = shared.next_request_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(parent: &link.span, "request", request_id);
    let carried = shared.live.access_log().then(|| Carried {
        client_id: target.client_id.clone(),
        transport: link.session.kind(),
    });
    let mut resp = exchange(shared, link, req, target, peer, request_id, share)
        .instrument(span)
        .await;
    resp.headers_mut()
        .insert(headers::REQUEST_ID, HeaderValue::from(request_id));
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
    share: Share,
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
    let wants_trailers = may_carry_trailers(&parts);
    let (recv, framed, status, headers) = loop {
        // Framed only where both the client and this agent can carry trailers.
        let framed = wants_trailers && link.trailers;
        let head = stream::request_head(
            &parts,
            request_id,
            &target.uri,
            target.mode,
            has_body,
            &xff,
            framed,
        );
        let failure = match send_request(shared, &link, head, framed, &mut body).await {
            Ok((recv, status, headers)) => break (recv, framed, status, headers),
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
    let mut reader = BodyReader::new(recv, framed, config.max_head_frame);
    let Ok(status) = StatusCode::from_u16(status) else {
        reader.recv_mut().stop(ResetCode::ProtocolError);
        return fail(
            StatusCode::BAD_GATEWAY,
            "bad_upstream_response",
            format!("upstream answered with invalid status {status}"),
        );
    };
    let mut resp_headers = match headers {
        Ok(h) => h,
        Err(e) => {
            reader.recv_mut().stop(ResetCode::ProtocolError);
            return fail(
                StatusCode::BAD_GATEWAY,
                "bad_upstream_response",
                e.to_string(),
            );
        }
    };
    // What trailers are coming stays said: HTTP/1.1 sends only those.
    headers::strip_hop_by_hop_keeping_trailer(&mut resp_headers, framed);
    debug!(%status, mode = ?target.mode, "response head");

    // With credit (QUIC), each body byte taken lets the agent send another.
    let mut grant = link.credit.as_ref().map(|c| c.response(request_id));
    // In flight on this connection until the body is over.
    let flight = InFlight::new(&link);
    let body = match target.mode {
        Mode::Stream => body::from_reader(
            reader,
            config.body_idle_timeout,
            move |n| {
                // The address's share is held as long as the body (and the
                // stream), given back with it.
                let _held = &share;
                flight.sent(n);
                if let Some(grant) = grant.as_mut() {
                    grant.consumed(n)
                }
            },
            drop,
        ),
        Mode::Blocking => {
            let cap = config.max_blocking_body;
            let taken = &mut |n| {
                flight.sent(n);
                if let Some(grant) = grant.as_mut() {
                    grant.consumed(n)
                }
            };
            match collect(
                &mut reader,
                &resp_headers,
                cap,
                config.response_timeout,
                taken,
            )
            .await
            {
                Ok((bytes, trailers)) => {
                    // With trailers, no length: HTTP/1.1 sends them only
                    // after a chunked body.
                    if method != Method::HEAD && trailers.is_none() {
                        resp_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                    }
                    match trailers {
                        None => body::full(bytes),
                        Some(trailers) => body::with_trailers(bytes, trailers),
                    }
                }
                Err(Collect::TooLarge) => {
                    reader.recv_mut().stop(ResetCode::Cancelled);
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
                    reader.recv_mut().stop(ResetCode::Cancelled);
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

/// Whether the client's request can carry trailers, or take them in the
/// response: HTTP/2 and later always; HTTP/1.1 when it says so (`TE:
/// trailers`, or a `Trailer` header announcing its own).
pub(super) fn may_carry_trailers(parts: &http::request::Parts) -> bool {
    parts.version >= http::Version::HTTP_2
        || parts.headers.contains_key(header::TRAILER)
        || parts
            .headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// One attempt on one connection: open the stream, send the head (and start
/// the body, if any), wait for the reply head. `framed`: the bodies are
/// body parts (`Open::HttpWithTrailers`).
async fn send_request(
    shared: &Shared,
    link_arc: &Arc<AgentLink>,
    head: RequestHead<&str, &[u8]>,
    framed: bool,
    body: &mut Option<TunnelBody>,
) -> Result<(RecvStream, u16, Result<HeaderMap, BadHeader>), Failure> {
    let link: &AgentLink = link_arc;
    let open = if framed {
        Open::HttpWithTrailers(head)
    } else {
        Open::Http(head)
    };
    let (send, mut recv) = stream::open(shared, link, &open, body.is_none()).await?;
    if let Some(incoming) = body.take() {
        let pump = RequestPump {
            send,
            link: link_arc.clone(),
            framed,
            trailers_limit: shared.config.max_head_frame,
        };
        tokio::spawn(pump.run(incoming).in_current_span());
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

/// Reads a whole response body (and its trailers, if any), refusing to hold
/// more than `cap` bytes.
async fn collect(
    reader: &mut BodyReader,
    headers: &HeaderMap,
    cap: u64,
    timeout: std::time::Duration,
    taken: &mut (dyn FnMut(u64) + Send),
) -> Result<(bytes::Bytes, Option<HeaderMap>), Collect> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap) {
        return Err(Collect::TooLarge);
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    let read_all = async {
        while let Some(frame) = reader.next(CHUNK).await.map_err(Collect::Failed)? {
            let chunk = match frame.into_data() {
                Ok(chunk) => chunk,
                // The last part: only the end may follow.
                Err(frame) => {
                    // The reader checks that only the end follows.
                    reader.next(CHUNK).await.map_err(Collect::Failed)?;
                    return Ok(frame.into_trailers().ok());
                }
            };
            if (buf.len() + chunk.len()) as u64 > cap {
                return Err(Collect::TooLarge);
            }
            taken(chunk.len() as u64);
            buf.extend_from_slice(&chunk);
        }
        Ok(None)
    };
    match tokio::time::timeout(timeout, read_all).await {
        Ok(Ok(trailers)) => Ok((buf.freeze(), trailers)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Collect::TimedOut),
    }
}

/// Streams the client's request body into the agent's stream. A client that
/// breaks off mid-upload resets the stream, so the upstream never sees a
/// truncated body as complete.
struct RequestPump {
    send: SendStream,
    link: Arc<AgentLink>,
    /// Body parts (with trailers), else raw bytes.
    framed: bool,
    trailers_limit: usize,
}

impl RequestPump {
    async fn run(mut self, mut incoming: TunnelBody) {
        loop {
            let frame = match incoming.frame().await {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    info!("client request body broke off: {e}");
                    self.send.reset(ResetCode::Cancelled).await;
                    return;
                }
                None => {
                    let _ = self.send.finish().await;
                    return;
                }
            };
            let written = match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => {
                    self.link
                        .traffic
                        .received
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    if self.framed {
                        parts::write_data(&mut self.send, data).await
                    } else {
                        self.send.write_chunk(data).await
                    }
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) if self.framed => {
                        parts::write_trailers(&mut self.send, &trailers, self.trailers_limit).await
                    }
                    Ok(_) => {
                        self.link.dropped_trailers("request");
                        continue;
                    }
                    Err(_) => continue,
                },
            };
            match written {
                Ok(()) => {}
                Err(TransportError::Frame(FrameError::TooLarge { len, limit })) => {
                    info!("request trailers of {len} bytes are over the limit of {limit}: the request is cut off");
                    self.send.reset(ResetCode::Cancelled).await;
                    return;
                }
                Err(e) => {
                    debug!("agent stopped reading the request body: {e}");
                    return;
                }
            }
        }
    }
}
