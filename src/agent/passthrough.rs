//! WebSocket pass-through on the agent's side: opens a WebSocket to the
//! upstream at the client's path (ws:// or wss:// as the upstream is http://
//! or https://), answers the server's stream with the upstream's answer, then
//! relays messages both ways until either side closes.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Uri};
use tracing::{debug, info};
use warren_proto::{ErrorKind, Reply, ReplyRef, RequestHead, ResponseHead};

use super::upstream::{reply_error, Upstream};
use crate::{
    headers,
    transport::{RecvStream, SendStream},
};

impl Upstream {
    /// Opens a WebSocket to the upstream at the client's path, with its
    /// headers and subprotocols, then relays messages both ways.
    pub(super) async fn websocket(
        &self,
        head: RequestHead<&str, &[u8]>,
        frame: &Bytes,
        mut send: SendStream,
        recv: RecvStream,
        max_head: usize,
    ) {
        use tokio_tungstenite::tungstenite::{handshake::client::generate_key, Error as WsError};
        if self.service.is_some() {
            let message = "this agent's in-process service takes no WebSockets".to_string();
            let _ = reply_error(&mut send, ErrorKind::UpstreamUnavailable, message, max_head).await;
            return;
        }
        let fail = |message: String| {
            info!("{message}");
            message
        };
        let built = (|| {
            if !head.uri.starts_with('/') {
                return Err(format!("request target {:?} must start with '/'", head.uri));
            }
            let uri: Uri = format!("ws{}{}", self.base.trim_start_matches("http"), head.uri)
                .parse()
                .map_err(|_| format!("invalid request target {:?}", head.uri))?;
            let mut hdrs =
                headers::from_wire_ref(&head.headers, frame).map_err(|e| e.to_string())?;
            headers::strip_hop_by_hop(&mut hdrs);
            if !self.config.preserve_host || !hdrs.contains_key(header::HOST) {
                hdrs.insert(header::HOST, self.authority.clone());
            }
            hdrs.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            hdrs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            hdrs.insert("sec-websocket-version", HeaderValue::from_static("13"));
            hdrs.insert(
                "sec-websocket-key",
                HeaderValue::from_str(&generate_key()).expect("ascii"),
            );
            let mut req = Request::new(());
            *req.uri_mut() = uri;
            *req.headers_mut() = hdrs;
            Ok(req)
        })();
        let request = match built {
            Ok(r) => r,
            Err(message) => {
                let _ = reply_error(&mut send, ErrorKind::BadRequest, message, max_head).await;
                return;
            }
        };
        let limits = self.config.ws.clone();
        // ws:// or wss:// as the upstream is http:// or https://.
        let connect = async {
            let io = self.pool.dial().await;
            let io = io.map_err(|e| WsError::Io(std::io::Error::other(e)))?;
            tokio_tungstenite::client_async_with_config(request, io, Some(limits.config())).await
        };
        let (ws, response) = match tokio::time::timeout(self.config.connect_timeout, connect).await
        {
            Ok(Ok(pair)) => pair,
            Ok(Err(WsError::Http(resp))) => {
                // The upstream answered the upgrade with an ordinary response.
                let (parts, body) = resp.into_parts();
                let reply: ReplyRef = Reply::Head(ResponseHead {
                    status: parts.status.as_u16(),
                    headers: headers::to_wire_ref(&parts.headers),
                });
                if send.write_frame(&reply, max_head).await.is_ok() {
                    if let Some(body) = body {
                        let _ = send.write_chunk(Bytes::from(body)).await;
                    }
                    let _ = send.finish().await;
                }
                return;
            }
            Ok(Err(e)) => {
                let message = fail(format!("WebSocket to upstream {} failed: {e}", self.base));
                let _ =
                    reply_error(&mut send, ErrorKind::UpstreamUnavailable, message, max_head).await;
                return;
            }
            Err(_) => {
                let message = fail(format!("WebSocket to upstream {} timed out", self.base));
                let _ = reply_error(&mut send, ErrorKind::UpstreamTimeout, message, max_head).await;
                return;
            }
        };
        let mut accepted = http::HeaderMap::new();
        if let Some(protocol) = response.headers().get("sec-websocket-protocol") {
            accepted.insert("sec-websocket-protocol", protocol.clone());
        }
        let reply: ReplyRef = Reply::Head(ResponseHead {
            status: 101,
            headers: headers::to_wire_ref(&accepted),
        });
        if send.write_frame(&reply, max_head).await.is_err() {
            return;
        }
        // The agent's own shutdown ends its connections, and with them this.
        let code = crate::websocket::relay(ws, send, recv, &limits, std::future::pending()).await;
        debug!(code, "WebSocket closed");
    }
}
