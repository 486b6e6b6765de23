//! A request stream to an agent, as every kind of client request uses it (HTTP,
//! WebSocket pass-through): build the head the agent sees, open the stream and
//! send what it is for, then wait (bounded) for the agent's reply head.

use std::net::SocketAddr;

use http::{header, HeaderMap, StatusCode};
use warren_proto::{
    decode_payload_borrowed, FrameError, Header, Mode, OpenRef, Reply, ReplyRef, RequestHead,
    ResetCode, StreamError,
};

use super::{agents::AgentLink, reply::Failure, state::Shared};
use crate::{
    headers::{self, BadHeader, CLIENT_HEADER, MODE_HEADER},
    transport::{RecvStream, SendStream, TransportError},
};

/// Whether a failure means the connection died under the request (rather
/// than the agent or its service answering): such a request, if the agent
/// never consumed anything of it, can be tried on another connection.
pub(super) fn connection_lost(failure: &Failure) -> bool {
    connection_lost_code(failure.code)
}

/// [`connection_lost`], by error code.
pub(super) fn connection_lost_code(code: &str) -> bool {
    // agent_unreachable: the connection failed before the request reached
    // it; agent_failed: it broke before the agent answered.
    matches!(code, "agent_unreachable" | "agent_failed")
}

/// Opens a stream to the agent and sends what it is for; with `last`, that is
/// all the agent gets on it (the stream is finished with it, in one write).
pub(super) async fn open(
    shared: &Shared,
    link: &AgentLink,
    open: &OpenRef<'_>,
    last: bool,
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
    let sent = if last {
        send.write_last_frame(open, config.max_head_frame).await
    } else {
        send.write_frame(open, config.max_head_frame).await
    };
    match sent {
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

/// What the agent answered on a request stream.
pub(super) enum Answer {
    /// The service's response head; its body follows on the stream.
    Head {
        status: u16,
        /// Header values share the frame's buffer; an invalid one is the
        /// agent's (or its service's) fault, reported by the caller.
        headers: Result<HeaderMap, BadHeader>,
    },
    /// The agent could not ask its service.
    Error(StreamError),
}

/// Waits for the agent's reply head (bounded by the response timeout). When
/// it is slow to come, the agent connection is pinged: a dead one is dropped,
/// which ends this wait at once with `agent_failed` (retriable elsewhere).
pub(super) async fn read_reply(
    shared: &Shared,
    link: &AgentLink,
    recv: &mut RecvStream,
) -> Result<Answer, Failure> {
    let config = &shared.config;
    let watch = async {
        tokio::time::sleep(config.probe_after).await;
        if link.check(config.probe_timeout).await {
            // Alive: keep waiting for the reply.
            std::future::pending::<()>().await
        }
    };
    let read = tokio::time::timeout(config.response_timeout, async {
        let frame = recv.read_payload(config.max_head_frame).await?;
        // Decoded in place: header values become slices of `frame`.
        Ok::<_, TransportError>(match decode_payload_borrowed::<ReplyRef>(&frame)? {
            Reply::Head(head) => Answer::Head {
                status: head.status,
                headers: headers::from_wire_ref(&head.headers, &frame),
            },
            Reply::Error(e) => Answer::Error(e),
        })
    });
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

/// The `X-Forwarded-For` value the agent sees: the chain so far (as proxies
/// do, every such header's entries in order), then this client's address.
pub(super) fn forwarded_for(headers: &HeaderMap, peer: SocketAddr) -> Vec<u8> {
    use std::io::Write as _;
    // The longest address text: an IPv6 one, 39 bytes.
    const IP_TEXT: usize = 39;
    let chain = headers.get_all(FORWARDED_FOR);
    let mut xff = Vec::with_capacity(IP_TEXT + chain.iter().map(|v| v.len() + 2).sum::<usize>());
    for link in chain {
        xff.extend_from_slice(link.as_bytes());
        xff.extend_from_slice(b", ");
    }
    // Written in place: no String for the address on every request.
    let _ = write!(xff, "{}", peer.ip());
    xff
}

/// The head sent to the agent: end-to-end headers only (warren's own removed),
/// with the forwarding headers added (`xff` from [`forwarded_for`]); with
/// `framed` (trailers can follow the bodies), `Trailer` is kept. Built in
/// one pass over the client's headers, borrowing them: nothing is copied
/// until the frame is encoded.
pub(super) fn request_head<'a>(
    parts: &'a http::request::Parts,
    request_id: u64,
    uri: &'a str,
    mode: Mode,
    body: bool,
    xff: &'a [u8],
    framed: bool,
) -> RequestHead<&'a str, &'a [u8]> {
    let headers = &parts.headers;
    // Only a request with a Connection header can name more hop-by-hop ones.
    let listed = if headers.contains_key(header::CONNECTION) {
        headers::connection_listed(headers)
    } else {
        Vec::new()
    };
    let mut wire = Vec::with_capacity(headers.len() + 3);
    let (mut has_proto, mut has_host) = (false, false);
    for (name, value) in headers {
        // `Trailer` names what is to come; framed bodies carry it there.
        if (headers::is_hop_by_hop(name) && !(framed && name == header::TRAILER))
            || listed.contains(name)
            || name == CLIENT_HEADER
            || name == MODE_HEADER
            // Re-sent below as one value, with the client's address appended.
            || name == FORWARDED_FOR
        {
            continue;
        }
        has_proto |= name == FORWARDED_PROTO;
        has_host |= name == FORWARDED_HOST;
        wire.push(Header {
            name: name.as_str(),
            value: value.as_bytes(),
        });
    }
    wire.push(Header {
        name: FORWARDED_FOR,
        value: xff,
    });
    // X-Forwarded-Proto and -Host, unless an earlier proxy set them.
    if !has_proto {
        wire.push(Header {
            name: FORWARDED_PROTO,
            value: proto(&parts.extensions).as_bytes(),
        });
    }
    if !has_host {
        let host = headers
            .get(header::HOST)
            .map(|h| h.as_bytes())
            .or_else(|| parts.uri.authority().map(|a| a.as_str().as_bytes()));
        if let Some(host) = host {
            wire.push(Header {
                name: FORWARDED_HOST,
                value: host,
            });
        }
    }
    RequestHead {
        request_id,
        method: parts.method.as_str(),
        uri,
        headers: wire,
        mode,
        body,
    }
}

/// Marks a request that came over TLS (`X-Forwarded-Proto: https`).
#[derive(Clone, Copy)]
pub(super) struct OverTls;

/// The scheme the client used to reach this server.
pub(super) fn proto(extensions: &http::Extensions) -> &'static str {
    if extensions.get::<OverTls>().is_some() {
        "https"
    } else {
        "http"
    }
}

use crate::headers::FORWARDED_HOST;
pub(super) use crate::headers::{FORWARDED_FOR, FORWARDED_PROTO};
