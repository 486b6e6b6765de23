//! The server's half of a client's WebSocket handshake (RFC 6455 §4.2): telling
//! an upgrade request apart, checking it, and the 101 answer that completes it.
//! Shared by pass-through WebSockets and room joins.

use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::body::{self, TunnelBody};

/// A client connection's place under `--max-client-connections`, carried on
/// each of its requests: an upgraded WebSocket takes it along, so it counts
/// for as long as the socket lives, not just until the upgrade.
#[derive(Clone)]
pub(super) struct ConnectionSlot {
    /// Held, never read: the place is given back when the last clone drops.
    _permit: Arc<OwnedSemaphorePermit>,
}

impl ConnectionSlot {
    pub fn new(permit: OwnedSemaphorePermit) -> Self {
        ConnectionSlot {
            _permit: Arc::new(permit),
        }
    }

    /// The slot of the connection `req` came on (none on the cluster link,
    /// whose connections are counted by the node the client is on).
    pub fn of<B>(req: &Request<B>) -> Option<ConnectionSlot> {
        req.extensions().get::<ConnectionSlot>().cloned()
    }
}

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
    if !is_nonce(key.as_bytes()) {
        return Err("Sec-WebSocket-Key must be a base64-encoded 16-byte nonce (RFC 6455 §4.2.1)");
    }
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| "bad key")
}

/// Whether `key` is base64 of exactly 16 bytes: 22 base64 characters and `==`.
fn is_nonce(key: &[u8]) -> bool {
    let b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    // 16 bytes → 24 characters; the last of the 22 data characters carries
    // only 2 bits, so it is one of A, Q, g, w.
    key.len() == 24
        && key[..22].iter().all(b64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
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

#[cfg(test)]
mod tests {
    use super::is_nonce;

    #[test]
    fn only_a_16_byte_base64_nonce_is_a_key() {
        assert!(is_nonce(b"dGhlIHNhbXBsZSBub25jZQ=="), "RFC 6455's example");
        assert!(!is_nonce(b""));
        assert!(!is_nonce(b"not base64 at all!!!!!=="));
        assert!(!is_nonce(b"dGhlIHNhbXBsZSBub25jZQ"), "unpadded");
        assert!(!is_nonce(b"dGhlIHNhbXBsZSBub25jZR=="), "trailing bits set");
        assert!(!is_nonce(&[b'A'; 64 * 1024]));
    }
}
