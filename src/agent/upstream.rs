//! The agent's side of a request stream: turns the `RequestHead` into a request
//! to the local service (hyper client, pooled keep-alive connections), and
//! streams the response back. An upstream that fails mid-body resets the stream,
//! so the client sees an error rather than a clean short body; a server that
//! stops reading (client gone) makes us drop the upstream request at once.
//! (WebSocket pass-through is in `passthrough`.)
//!
//! Long because: one HTTP exchange from head to trailers: building the
//! request, waiting for the answer or the client's leaving, relaying the body
//! within credit, raw or framed; each step works on the state the last left.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::BodyExt;
use tracing::{debug, info, warn};
use warren_proto::{
    ErrorKind, FrameError, Reply, ReplyRef, RequestHead, ResetCode, ResponseHead, StreamError,
};

use super::{
    credit::Credit,
    local::LocalService,
    metrics::AgentMetrics,
    pool::{Pool, UpstreamTls},
};
use crate::{
    body::{
        self,
        parts::{self, BodyReader},
        TunnelBody,
    },
    headers,
    transport::{RecvStream, SendStream, TransportError},
};

/// Body bytes up to this size that are ready with the response head are sent
/// in the same write (one copy of a small buffer beats an extra packet).
const COALESCE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("--upstream {0:?} must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000")]
    BadUrl(String),
    #[error("TLS to the https:// upstream: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: String,
    /// TCP connect timeout to the local service.
    pub connect_timeout: Duration,
    /// Time the local service has to send its response head.
    pub response_timeout: Duration,
    /// Forward the client's Host header instead of the upstream's authority.
    pub preserve_host: bool,
    /// Pass-through WebSockets to the upstream: message size, idle timeout.
    pub ws: crate::websocket::WsLimits,
    /// A request body from the server that stalls this long is cut off (the
    /// service sees an error, never a clean short body).
    pub body_idle_timeout: Duration,
    /// Idle keep-alive connections kept to the service (more are closed).
    pub max_idle: usize,
    /// For an `https://` upstream: certificates to trust besides the
    /// system's (a private CA, or the service's self-signed certificate).
    pub ca: Option<std::path::PathBuf>,
    /// HTTP/2 only (h2c prior knowledge on http://); else HTTP/1.1, or
    /// HTTP/2 where an https:// service offers it.
    pub http2: bool,
}

/// Default for [`UpstreamConfig::max_idle`]: as many as a busy agent has
/// requests in flight at once, so a burst's connections are all reused.
pub const DEFAULT_MAX_IDLE: usize = 256;

/// An idle connection to the service is closed after this long: most
/// services close theirs sooner, and reusing one they are about to close
/// costs the request a retry.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A request stream as the server opened it, with what serving it needs.
pub(super) struct Exchange {
    pub send: SendStream,
    pub recv: RecvStream,
    /// Largest head (and trailers part) the server takes.
    pub max_head: usize,
    /// The server's credit for the response body (QUIC), if it gives any.
    pub credit: Option<Credit>,
    /// `Open::HttpWithTrailers`: both bodies are body parts.
    pub framed: bool,
}

pub struct Upstream {
    pub(super) pool: Arc<Pool>,
    /// `scheme://authority` plus any path prefix, without a trailing slash.
    pub(super) base: String,
    /// The URL's path prefix, without a trailing slash (often empty).
    pub(super) prefix: String,
    pub(super) authority: HeaderValue,
    pub(super) config: UpstreamConfig,
    pub(super) metrics: Arc<AgentMetrics>,
    /// An in-process service that answers instead of the HTTP upstream.
    pub(super) service: Option<LocalService>,
}

impl Upstream {
    pub(super) fn new(
        config: UpstreamConfig,
        metrics: Arc<AgentMetrics>,
        service: Option<LocalService>,
    ) -> Result<Self, UpstreamError> {
        let bad = || UpstreamError::BadUrl(config.url.clone());
        let uri: Uri = config.url.parse().map_err(|_| bad())?;
        let (scheme, default_port) = match uri.scheme_str() {
            Some("http") => ("http", 80),
            Some("https") => ("https", 443),
            _ => return Err(bad()),
        };
        let authority = uri.authority().ok_or_else(bad)?.clone();
        let prefix = uri.path().trim_end_matches('/').to_string();
        let base = format!("{scheme}://{authority}{prefix}");
        let addr = match authority.port() {
            Some(_) => authority.as_str().to_string(),
            None => format!("{}:{default_port}", authority.host()),
        };
        let tls = match scheme {
            "https" => Some(UpstreamTls::new(
                authority.host(),
                config.ca.as_deref(),
                config.http2,
            )?),
            _ => None,
        };
        let pool = Pool::new(
            addr,
            tls,
            config.http2,
            config.connect_timeout,
            config.max_idle,
            IDLE_TIMEOUT,
        );
        Ok(Upstream {
            pool: Arc::new(pool),
            base,
            prefix,
            authority: HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?,
            config,
            metrics,
            service,
        })
    }

    pub(super) async fn http(
        &self,
        head: RequestHead<&str, &[u8]>,
        frame: &Bytes,
        stream: Exchange,
    ) {
        let Exchange {
            mut send,
            recv,
            max_head,
            credit,
            framed,
        } = stream;
        let reader = BodyReader::new(recv, framed, max_head);
        // The request stream, once its body is over: watched for the server
        // dropping it (its client gave up) while the service has not answered.
        let (ended, recv_back) = tokio::sync::oneshot::channel();
        let request = match self.request(head, frame, reader, ended) {
            Ok(r) => r,
            Err(message) => {
                let _ = reply_error(&mut send, ErrorKind::BadRequest, message, max_head).await;
                return;
            }
        };
        let method = request.method().clone();
        let uri = request.uri().clone();
        let started = std::time::Instant::now();
        let timeout = self.config.response_timeout;
        if let Some(service) = &self.service {
            let call = tokio::time::timeout(timeout, service.call(request));
            let Some(answer) = until_abandoned(call, &mut send, recv_back).await else {
                return;
            };
            let response = match answer {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => {
                    let message = format!("the service failed {method} {uri}: {e}");
                    let kind = ErrorKind::UpstreamUnavailable;
                    return self.unanswered(&mut send, kind, message, max_head).await;
                }
                Err(_) => {
                    let message = format!("the service sent no response within {timeout:?}");
                    let kind = ErrorKind::UpstreamTimeout;
                    return self.unanswered(&mut send, kind, message, max_head).await;
                }
            };
            self.metrics
                .upstream_answered(response.status().as_u16(), started.elapsed());
            let back = Back {
                send,
                max_head,
                credit,
                framed,
            };
            return self.relay(response, None, back).await;
        }
        let call = tokio::time::timeout(timeout, self.pool.send(request));
        let Some(answer) = until_abandoned(call, &mut send, recv_back).await else {
            return;
        };
        let (response, lease) = match answer {
            Ok(Ok(exchange)) => exchange,
            Ok(Err(e)) => {
                let (kind, what) = if e.is_timeout() {
                    (ErrorKind::UpstreamTimeout, "timed out")
                } else {
                    (ErrorKind::UpstreamUnavailable, "failed")
                };
                let message = format!(
                    "upstream request {method} {uri} {what}: {}",
                    error_chain(&e)
                );
                return self.unanswered(&mut send, kind, message, max_head).await;
            }
            Err(_) => {
                let message = format!("upstream {} sent no response within {timeout:?}", self.base);
                let kind = ErrorKind::UpstreamTimeout;
                return self.unanswered(&mut send, kind, message, max_head).await;
            }
        };
        self.metrics
            .upstream_answered(response.status().as_u16(), started.elapsed());
        let back = Back {
            send,
            max_head,
            credit,
            framed,
        };
        self.relay(response, Some(lease), back).await
    }

    /// The service gave no response: counted, logged, and told to the
    /// server as an error reply of `kind`.
    async fn unanswered(
        &self,
        send: &mut SendStream,
        kind: ErrorKind,
        message: String,
        max_head: usize,
    ) {
        self.metrics
            .upstream_failed(if kind == ErrorKind::UpstreamTimeout {
                "timeout"
            } else {
                "unavailable"
            });
        info!("{message}");
        let _ = reply_error(send, kind, message, max_head).await;
    }

    /// Streams a response (head, then body) back to the server; `lease`, the
    /// pooled connection it came on (none for an in-process service), goes
    /// back to the pool once the body was read to its end.
    async fn relay<B>(
        &self,
        response: http::Response<B>,
        lease: Option<super::pool::Lease>,
        back: Back,
    ) where
        B: http_body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let Back {
            mut send,
            max_head,
            mut credit,
            framed,
        } = back;
        let (parts, mut body) = response.into_parts();
        let mut resp_headers = parts.headers;
        headers::strip_hop_by_hop_keeping_trailer(&mut resp_headers, framed);
        let head: ReplyRef = Reply::Head(ResponseHead {
            status: parts.status.as_u16(),
            headers: headers::to_wire_ref(&resp_headers),
        });
        let mut first = match warren_proto::encode_frame(&head, max_head) {
            Ok(frame) => frame,
            Err(e) => {
                let message = format!("upstream response head unusable: {e}");
                warn!("{message}");
                let _ =
                    reply_error(&mut send, ErrorKind::UpstreamUnavailable, message, max_head).await;
                return;
            }
        };
        // Body bytes already here (typical of small responses) travel in the
        // same write as the head, and the end with them: one packet, not three.
        let mut next = body.frame().now_or_never();
        if let Some(Some(Ok(frame))) = &next {
            if frame.data_ref().is_some_and(|d| d.len() <= COALESCE) {
                let Some(Ok(frame)) = next.take().flatten() else {
                    unreachable!()
                };
                let data = frame.data_ref().expect("checked");
                if framed {
                    parts::append_data(&mut first, data);
                } else {
                    first.extend_from_slice(data);
                }
                // Within the initial credit (COALESCE is smaller).
                if let Some(credit) = credit.as_mut() {
                    credit.sent(data.len() as u64);
                }
            }
        }
        if next.is_none() && http_body::Body::is_end_stream(&body) {
            // The whole response in one write, its end included.
            if let Err(e) = send.write_last(Bytes::from(first)).await {
                debug!("server went away before the response: {e}");
                return;
            }
            drop(body);
            if let Some(lease) = lease {
                lease.release(&self.pool).await;
            }
            return;
        }
        if let Err(e) = send.write_chunk(Bytes::from(first)).await {
            debug!("server went away before the response head: {e}");
            return;
        }
        loop {
            let frame = match next.take() {
                Some(frame) => frame,
                None => body.frame().await,
            };
            match frame {
                Some(Ok(frame)) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => {
                            let Ok(trailers) = frame.into_trailers() else {
                                continue;
                            };
                            if !framed {
                                debug!(
                                    "response trailers dropped: the client did not ask for them"
                                );
                                continue;
                            }
                            match parts::write_trailers(&mut send, &trailers, max_head).await {
                                Ok(()) => continue,
                                Err(TransportError::Frame(FrameError::TooLarge { len, limit })) => {
                                    warn!("response trailers of {len} bytes are over the server's head limit of {limit}: the response is cut off");
                                    send.reset(ResetCode::UpstreamAborted).await;
                                    return;
                                }
                                Err(e) => {
                                    debug!("response abandoned by the client: {e}");
                                    return;
                                }
                            }
                        }
                    };
                    if let Err(e) = send_within(&mut send, &mut credit, data, framed).await {
                        // The client went away: dropping `body` aborts the
                        // upstream request rather than reading it to the end.
                        debug!("response abandoned by the client: {e}");
                        return;
                    }
                }
                Some(Err(e)) => {
                    warn!("upstream response broke off: {e}");
                    send.reset(ResetCode::UpstreamAborted).await;
                    return;
                }
                None => {
                    let _ = send.finish().await;
                    drop(body);
                    // Read to its end: the connection can take another request.
                    if let Some(lease) = lease {
                        lease.release(&self.pool).await;
                    }
                    return;
                }
            }
        }
    }

    /// Builds the upstream request from the head; the body streams from
    /// `reader` (trailers too, when framed).
    /// The stream goes to `ended` once the body is over (at once without one).
    fn request(
        &self,
        head: RequestHead<&str, &[u8]>,
        frame: &Bytes,
        reader: BodyReader,
        ended: tokio::sync::oneshot::Sender<RecvStream>,
    ) -> Result<Request<TunnelBody>, String> {
        let framed = reader.framed();
        let method = Method::from_bytes(head.method.as_bytes())
            .map_err(|_| format!("invalid method {:?}", head.method))?;
        if !head.uri.starts_with('/') {
            return Err(format!("request target {:?} must start with '/'", head.uri));
        }
        // Origin form (`/path?query`): the connection already goes to the
        // service, so nothing in the target can send the request elsewhere.
        let uri = if self.prefix.is_empty() {
            Uri::from_maybe_shared(headers::shared_slice(frame, head.uri.as_bytes()))
        } else {
            Uri::try_from(format!("{}{}", self.prefix, head.uri))
        }
        .map_err(|_| format!("invalid request target {:?}", head.uri))?;
        let mut hdrs = headers::from_wire_ref(&head.headers, frame).map_err(|e| e.to_string())?;
        headers::strip_hop_by_hop_keeping_trailer(&mut hdrs, framed);
        if framed {
            // The client takes trailers: so may the service send them (gRPC
            // services look for this).
            hdrs.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if !self.config.preserve_host || !hdrs.contains_key(header::HOST) {
            hdrs.insert(header::HOST, self.authority.clone());
        }
        let body = if head.body {
            let at_end = move |recv| {
                let _ = ended.send(recv);
            };
            body::from_reader(reader, self.config.body_idle_timeout, |_| {}, at_end)
        } else {
            let _ = ended.send(reader.into_recv());
            body::empty()
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = hdrs;
        Ok(req)
    }
}

/// `call` (the service's answer), unless the server drops the request
/// first, its client gone: then `None`, and dropping `call` abandons the
/// upstream request (a gRPC deadline reaches the service as a cancel). QUIC
/// tells by stopping `send`; yamux by the request stream (`recv_back`,
/// once its body is over) being reset.
async fn until_abandoned<T>(
    call: impl std::future::Future<Output = T>,
    send: &mut SendStream,
    recv_back: tokio::sync::oneshot::Receiver<RecvStream>,
) -> Option<T> {
    let reset = async move {
        match recv_back.await {
            Ok(mut recv) => recv.closed().await,
            // The body was dropped unfinished: its own error ends the call.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        answer = call => Some(answer),
        _ = send.stopped() => {
            debug!("the client left before the service answered; request abandoned");
            None
        }
        _ = reset => {
            debug!("the client left before the service answered; request abandoned");
            None
        }
    }
}

/// The way back to the server for a response.
struct Back {
    send: SendStream,
    max_head: usize,
    credit: Option<Credit>,
    /// The body goes as body parts (trailers may follow).
    framed: bool,
}

/// Writes `data` (as body parts when `framed`), as far as `credit` (if
/// any) allows at a time, waiting for more; gives up when the server stops
/// the stream (its client left).
async fn send_within(
    send: &mut SendStream,
    credit: &mut Option<Credit>,
    mut data: Bytes,
    framed: bool,
) -> Result<(), crate::transport::TransportError> {
    let Some(credit) = credit.as_mut() else {
        return write_body(send, data, framed).await;
    };
    while !data.is_empty() {
        let allowed = tokio::select! {
            allowed = credit.allowance() => allowed,
            _ = send.stopped() => {
                return Err(crate::transport::TransportError::Closed(
                    "the server stopped the stream".into(),
                ))
            }
        };
        let part = data.split_to(
            data.len()
                .min(usize::try_from(allowed).unwrap_or(usize::MAX)),
        );
        credit.sent(part.len() as u64);
        write_body(send, part, framed).await?;
    }
    Ok(())
}

async fn write_body(
    send: &mut SendStream,
    data: Bytes,
    framed: bool,
) -> Result<(), crate::transport::TransportError> {
    if framed {
        parts::write_data(send, data).await
    } else {
        send.write_chunk(data).await
    }
}

pub(super) async fn reply_error(
    send: &mut SendStream,
    kind: ErrorKind,
    message: String,
    max_head: usize,
) -> Result<(), crate::transport::TransportError> {
    let reply: Reply = Reply::Error(StreamError { kind, message });
    send.write_last_frame(&reply, max_head).await
}

/// `outer: inner: innermost`, since hyper's top-level messages are terse.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
}
