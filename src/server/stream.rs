//! A request stream to an agent, as every kind of client request uses it (HTTP,
//! WebSocket pass-through): build the head the agent sees, open the stream and
//! send what it is for, then wait (bounded) for the agent's reply head.

use std::net::SocketAddr;

use http::{header, HeaderMap, HeaderValue, StatusCode};
use warren_proto::{FrameError, Mode, Open, Reply, RequestHead, ResetCode};

use super::{agents::AgentLink, reply::Failure, state::Shared};
use crate::{
    headers::{self, CLIENT_HEADER, MODE_HEADER},
    transport::{RecvStream, SendStream, TransportError},
};

/// Whether a failure means the connection died under the request (rather
/// than the agent or its service answering): such a request, if the agent
/// never consumed anything of it, can be tried on another connection.
pub(super) fn connection_lost(failure: &Failure) -> bool {
    // agent_unreachable: the connection failed before the request reached
    // it; agent_failed: it broke before the agent answered.
    matches!(failure.code, "agent_unreachable" | "agent_failed")
}

/// Opens a stream to the agent and sends what it is for.
pub(super) async fn open(
    shared: &Shared,
    link: &AgentLink,
    open: &Open,
) -> Result<(SendStream, RecvStream), Failure> {
    let config = &shared.config;
    let (mut send, recv) =
        match tokio::time::timeout(config.open_stream_timeout, link.session.open()).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return Err(Failure::new(
                    StatusCode::BAD_GATEWAY,
                    "agent_unreachable",
                    format!("could not open a stream to the agent: {e}"),
                ))
            }
            Err(_) => {
                return Err(Failure::new(
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
            Err(Failure::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                format!("request head is {len} bytes; the limit is {limit}"),
            ))
        }
        Err(e) => Err(Failure::new(
            StatusCode::BAD_GATEWAY,
            "agent_unreachable",
            format!("could not send the request to the agent: {e}"),
        )),
    }
}

/// Waits for the agent's reply head (bounded by the response timeout). When
/// it is slow to come, the agent connection is pinged: a dead one is dropped,
/// which ends this wait at once with `agent_failed` (retriable elsewhere).
pub(super) async fn read_reply(
    shared: &Shared,
    link: &AgentLink,
    recv: &mut RecvStream,
) -> Result<Reply, Failure> {
    let config = &shared.config;
    let watch = async {
        tokio::time::sleep(config.probe_after).await;
        if link.check(config.probe_timeout).await {
            // Alive: keep waiting for the reply.
            std::future::pending::<()>().await
        }
    };
    let read = tokio::time::timeout(
        config.response_timeout,
        recv.read_frame::<Reply>(config.max_head_frame),
    );
    let result = tokio::select! {
        result = read => result,
        // Silent: this request gives up on that connection (dropping its
        // stream tells a live agent to abandon it) and may be retried.
        _ = watch => {
            recv.stop(warren_proto::ResetCode::Cancelled);
            return Err(Failure::new(
                StatusCode::BAD_GATEWAY,
                "agent_failed",
                format!(
                    "the agent did not answer a ping within {:?}",
                    config.probe_timeout
                ),
            ));
        }
    };
    match result {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(Failure::new(
            StatusCode::BAD_GATEWAY,
            "agent_failed",
            format!("the agent did not answer: {e}"),
        )),
        Err(_) => Err(Failure::new(
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
