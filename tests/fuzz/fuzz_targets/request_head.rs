//! The request head the server sends the agent, turned into the upstream
//! request the way `agent/upstream.rs` does (`Upstream::request`, and the
//! WebSocket upgrade): the input is an `Open` payload; from its `RequestHead`
//! the method (`Method::from_bytes`), the target joined to the upstream's
//! path prefix (it must start with '/'; origin form for HTTP, `ws://…` + uri
//! for a WebSocket) and the headers (`headers::from_wire`, `strip_hop_by_hop`).
//!
//! Besides not panicking: a target never moves the request off the upstream
//! (host and port stay the base's, the path keeps the base's prefix), every
//! header entry is kept (repeats too) and survives the way back to the wire,
//! and no hop-by-hop header is left.

#![no_main]

use http::{header, Method, Uri};
use libfuzzer_sys::fuzz_target;
use warren::headers::{from_wire, strip_hop_by_hop, to_wire};
use warren_proto::{decode_payload, Open};

fuzz_target!(|data: &[u8]| {
    let (head, scheme) = match decode_payload::<Open>(data) {
        Ok(Open::Http(head)) | Ok(Open::HttpWithTrailers(head)) => (head, "http"),
        Ok(Open::WebSocket(head)) => (head, "ws"),
        Ok(Open::Rooms) | Err(_) => return,
    };

    if let Ok(method) = Method::from_bytes(head.method.as_bytes()) {
        assert_eq!(method.as_str(), head.method);
    }

    if head.uri.starts_with('/') {
        // `Upstream::new` keeps the configured URL's path as the base's prefix.
        for base in ["", "/base"] {
            if scheme == "http" {
                // Requests go in origin form on a connection to the upstream:
                // the target may not turn into an authority of its own.
                let joined = format!("{base}{}", head.uri);
                if let Ok(uri) = Uri::try_from(joined.as_str()) {
                    assert_eq!(uri.scheme_str(), None, "{joined}");
                    assert_eq!(uri.authority(), None, "{joined}");
                    assert!(uri.path().starts_with(base), "{joined}");
                }
            } else {
                let joined = format!("{scheme}://127.0.0.1:1{base}{}", head.uri);
                if let Ok(uri) = joined.parse::<Uri>() {
                    assert_eq!(uri.scheme_str(), Some(scheme), "{joined}");
                    assert_eq!(uri.host(), Some("127.0.0.1"), "{joined}");
                    assert_eq!(uri.port_u16(), Some(1), "{joined}");
                    assert!(uri.path().starts_with(base), "{joined}");
                }
            }
        }
    }

    let entries = head.headers.len();
    if let Ok(mut headers) = from_wire(head.headers) {
        assert_eq!(headers.len(), entries, "every entry kept, repeats too");
        let back = from_wire(to_wire(&headers)).expect("valid headers stay valid");
        assert_eq!(back, headers, "the way back to the wire keeps them");
        strip_hop_by_hop(&mut headers);
        for name in [
            header::CONNECTION,
            header::TE,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::TRAILER,
            header::PROXY_AUTHENTICATE,
            header::PROXY_AUTHORIZATION,
        ] {
            assert!(!headers.contains_key(&name), "{name} left");
        }
        assert!(!headers.contains_key("keep-alive"));
        assert!(!headers.contains_key("proxy-connection"));
    }
});
