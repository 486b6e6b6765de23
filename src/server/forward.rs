//! Carries one client request across the tunnel: opens a stream to the agent,
//! sends the head, pumps the body, and turns the agent's reply into the client's
//! response, streamed (default) or collected first (blocking mode).

use std::{net::SocketAddr, sync::atomic::Ordering, sync::Arc};

use bytes::BytesMut;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::{debug, info, Instrument};
use warren_proto::{ErrorKind, FrameError, Mode, Open, Reply, RequestHead, ResetCode};

use super::{agents::AgentLink, api::error_response, api::Target, Shared};
use crate::{
    body::{self, TunnelBody, CHUNK},
    headers::{self, CLIENT_HEADER, MODE_HEADER, REQUEST_ID_HEADER},
    transport::{RecvStream, SendStream, TransportError},
};

pub(super) async fn forward(
    shared: &Shared,
    link: Arc<AgentLink>,
    req: Request<Incoming>,
    target: Target,
    peer: SocketAddr,
) -> Response<TunnelBody> {
    let request_id = shared.next_request_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "request",
        client_id = %link.client_id,
        conn = %link.tunnel_ws_id,
        request_id
    );
    let mut resp = exchange(shared, &link, req, target, peer, request_id)
        .instrument(span)
        .await;
    resp.headers_mut()
        .insert(REQUEST_ID_HEADER, HeaderValue::from(request_id));
    resp
}

async fn exchange(
    shared: &Shared,
    link: &AgentLink,
    req: Request<Incoming>,
    target: Target,
    peer: SocketAddr,
    request_id: u64,
) -> Response<TunnelBody> {
    let config = &shared.config;
    let client_id = target.client_id.as_str();
    let fail = |status, code, message: String| {
        info!(%status, code, "{message}");
        error_response(status, code, Some(client_id), &message)
    };

    let (parts, incoming) = req.into_parts();
    let method = parts.method.clone();
    let has_body = !hyper::body::Body::is_end_stream(&incoming);
    let head = request_head(&parts, request_id, target.uri, target.mode, has_body, peer);

    let (send, mut recv) = match open_stream(shared, link, &Open::Http(head)).await {
        Ok(pair) => pair,
        Err((status, code, message)) => return fail(status, code, message),
    };
    let mut send = send;
    if has_body {
        tokio::spawn(pump_request_body(incoming, send).in_current_span());
    } else {
        let _ = send.finish().await;
    }

    let reply = match read_reply(shared, &mut recv).await {
        Ok(reply) => reply,
        Err((status, code, message)) => return fail(status, code, message),
    };
    let head = match reply {
        Reply::Head(head) => head,
        Reply::Error(e) => {
            let (status, code) = match e.kind {
                ErrorKind::UpstreamUnavailable => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
                ErrorKind::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
                ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
                ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "agent_overloaded"),
            };
            return fail(status, code, e.message);
        }
    };
    let Ok(status) = StatusCode::from_u16(head.status) else {
        recv.stop(ResetCode::ProtocolError);
        return fail(
            StatusCode::BAD_GATEWAY,
            "bad_upstream_response",
            format!("upstream answered with invalid status {}", head.status),
        );
    };
    let mut resp_headers = match headers::from_wire(head.headers) {
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

    let body = match target.mode {
        Mode::Stream => body::from_recv(recv),
        Mode::Blocking => {
            let cap = config.max_blocking_body;
            match collect(&mut recv, &resp_headers, cap, config.response_timeout).await {
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
async fn pump_request_body(mut incoming: Incoming, mut send: SendStream) {
    loop {
        match incoming.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
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

/// A failure before any response: status, error code, message.
pub(super) type Failure = (StatusCode, &'static str, String);

/// Opens a stream to the agent and sends what it is for.
pub(super) async fn open_stream(
    shared: &Shared,
    link: &AgentLink,
    open: &Open,
) -> Result<(SendStream, RecvStream), Failure> {
    let config = &shared.config;
    let (mut send, recv) =
        match tokio::time::timeout(config.open_stream_timeout, link.session.open()).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return Err((
                    StatusCode::BAD_GATEWAY,
                    "agent_unreachable",
                    format!("could not open a stream to the agent: {e}"),
                ))
            }
            Err(_) => {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    "agent_busy",
                    format!(
                        "the agent has too many requests in flight; no stream freed up within {:?}",
                        config.open_stream_timeout
                    ),
                ))
            }
        };
    match send.write_frame(open, config.max_head_frame).await {
        Ok(()) => Ok((send, recv)),
        Err(TransportError::Frame(FrameError::TooLarge { len, limit })) => {
            send.reset(ResetCode::Cancelled).await;
            Err((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!("request head is {len} bytes; the limit is {limit}"),
            ))
        }
        Err(e) => Err((
            StatusCode::BAD_GATEWAY,
            "agent_unreachable",
            format!("could not send the request to the agent: {e}"),
        )),
    }
}

/// Waits for the agent's reply head (bounded by the response timeout).
pub(super) async fn read_reply(shared: &Shared, recv: &mut RecvStream) -> Result<Reply, Failure> {
    let config = &shared.config;
    match tokio::time::timeout(
        config.response_timeout,
        recv.read_frame::<Reply>(config.max_head_frame),
    )
    .await
    {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err((
            StatusCode::BAD_GATEWAY,
            "agent_failed",
            format!("the agent did not answer: {e}"),
        )),
        Err(_) => Err((
            StatusCode::GATEWAY_TIMEOUT,
            "agent_timeout",
            format!(
                "no response head from the agent within {:?}",
                config.response_timeout
            ),
        )),
    }
}

/// The head sent to the agent: end-to-end headers only (warren's own removed),
/// with the forwarding headers added.
pub(super) fn request_head(
    parts: &http::request::Parts,
    request_id: u64,
    uri: String,
    mode: Mode,
    body: bool,
    peer: SocketAddr,
) -> RequestHead {
    let mut headers = parts.headers.clone();
    let host = headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    headers::strip_hop_by_hop(&mut headers);
    headers.remove(CLIENT_HEADER);
    headers.remove(MODE_HEADER);
    add_forwarded(&mut headers, peer, host);
    RequestHead {
        request_id,
        method: parts.method.as_str().to_owned(),
        uri,
        headers: headers::to_wire(&headers),
        mode,
        body,
    }
}

/// Adds `X-Forwarded-For` (appending to any existing chain, as proxies do),
/// and `X-Forwarded-Proto`/`-Host` unless an earlier proxy already set them.
fn add_forwarded(headers: &mut HeaderMap, peer: SocketAddr, host: Option<HeaderValue>) {
    let ip = peer.ip().to_string();
    let chain: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let xff = if chain.is_empty() {
        ip
    } else {
        format!("{}, {ip}", chain.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if let Some(host) = host {
        if !headers.contains_key("x-forwarded-host") {
            headers.insert("x-forwarded-host", host);
        }
    }
}
