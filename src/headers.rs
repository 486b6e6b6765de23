//! HTTP header handling shared by server and agent: conversion to and from the
//! wire form (order and repeats preserved) and removal of hop-by-hop headers as
//! RFC 9110 §7.6.1 requires of intermediaries.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue};
use warren_proto::{Header, HeaderRef};

/// Headers that only describe one hop; never forwarded (RFC 9110 §7.6.1, plus the
/// non-standard but common Keep-Alive and Proxy-Connection).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];
const HOP_BY_HOP_EXTRA: &[&str] = &["keep-alive", "proxy-connection"];

/// Request headers that configure warren itself; consumed by the server.
pub const CLIENT_HEADER: &str = "x-warren-client";
pub const MODE_HEADER: &str = "x-warren-mode";
/// Response header carrying the server's request id (also in both sides' logs).
pub const REQUEST_ID_HEADER: &str = "x-warren-request-id";

/// The forwarding headers the server adds to every request it carries.
pub const FORWARDED_FOR: &str = "x-forwarded-for";
pub const FORWARDED_PROTO: &str = "x-forwarded-proto";
pub const FORWARDED_HOST: &str = "x-forwarded-host";

/// [`REQUEST_ID_HEADER`] as a name: inserting a `&str` key copies a
/// non-standard name into a new allocation on every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);

/// Non-standard names on nearly every tunnelled request (the server adds
/// the forwarding ones), taken from here instead of copied out of each
/// frame: `HeaderName::from_bytes` allocates for any name not in the
/// standard table (2 of the agent's ~20 allocations per small request).
static COMMON_CUSTOM: [HeaderName; 6] = [
    HeaderName::from_static(FORWARDED_FOR),
    HeaderName::from_static(FORWARDED_PROTO),
    HeaderName::from_static(FORWARDED_HOST),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-request-id"),
    REQUEST_ID,
];

/// `name` as a header name, without a copy when it is standard or common.
fn header_name(name: &str) -> Result<HeaderName, http::header::InvalidHeaderName> {
    if name.starts_with("x-") {
        if let Some(known) = COMMON_CUSTOM.iter().find(|k| k.as_str() == name) {
            return Ok(known.clone());
        }
    }
    HeaderName::from_bytes(name.as_bytes())
}

/// Whether `name` is hop-by-hop by itself (not counting names that a
/// `Connection` header lists).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Standard names compare as one integer; the two extras are short strings.
    HOP_BY_HOP.contains(name) || HOP_BY_HOP_EXTRA.contains(&name.as_str())
}

/// The names a `Connection` header lists (those are hop-by-hop too).
pub fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over their few names finds that
    // without hashing each of the nine names into the map to remove it.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    for name in connection_listed(headers).iter().chain(HOP_BY_HOP) {
        headers.remove(name);
    }
    for name in HOP_BY_HOP_EXTRA {
        headers.remove(*name);
    }
}

/// [`strip_hop_by_hop`], keeping `Trailer` when `keep_trailer`: it names
/// the trailer fields to come, which an HTTP/1.1 hop needs to send them.
pub fn strip_hop_by_hop_keeping_trailer(headers: &mut HeaderMap, keep_trailer: bool) {
    let announced: Vec<HeaderValue> = if keep_trailer {
        headers.get_all(header::TRAILER).iter().cloned().collect()
    } else {
        Vec::new()
    };
    strip_hop_by_hop(headers);
    for value in announced {
        headers.append(header::TRAILER, value);
    }
}

/// Headers as wire entries, in order, repeats kept.
pub fn to_wire(headers: &HeaderMap) -> Vec<Header> {
    headers
        .iter()
        .map(|(name, value)| Header {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect()
}

/// Headers as wire entries borrowing from the map: nothing is copied until
/// the frame is encoded.
pub fn to_wire_ref(headers: &HeaderMap) -> Vec<HeaderRef<'_>> {
    headers
        .iter()
        .map(|(name, value)| Header {
            name: name.as_str(),
            value: value.as_bytes(),
        })
        .collect()
}

/// Borrowed wire entries (decoded from `frame`) into a header map. Values
/// share `frame`'s buffer rather than being copied out of it; names are
/// copied only when they are not standard ones.
pub fn from_wire_ref(entries: &[HeaderRef<'_>], frame: &Bytes) -> Result<HeaderMap, BadHeader> {
    let mut map = HeaderMap::with_capacity(entries.len());
    for entry in entries {
        let bad = || BadHeader {
            name: entry.name.to_string(),
        };
        let name = header_name(entry.name).map_err(|_| bad())?;
        let value =
            HeaderValue::from_maybe_shared(shared_slice(frame, entry.value)).map_err(|_| bad())?;
        map.append(name, value);
    }
    Ok(map)
}

/// `part` as a `Bytes` sharing `whole`'s buffer when it lies inside it (as
/// what was decoded from it does), else a copy.
pub fn shared_slice(whole: &Bytes, part: &[u8]) -> Bytes {
    let (start, end) = (
        whole.as_ptr() as usize,
        whole.as_ptr() as usize + whole.len(),
    );
    let at = part.as_ptr() as usize;
    if !part.is_empty() && at >= start && at + part.len() <= end {
        whole.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid header {name:?} from the peer")]
pub struct BadHeader {
    pub name: String,
}

/// Wire entries back into a header map, rejecting invalid names or values.
pub fn from_wire(entries: Vec<Header>) -> Result<HeaderMap, BadHeader> {
    let mut map = HeaderMap::with_capacity(entries.len());
    for Header { name, value } in entries {
        let bad = || BadHeader { name: name.clone() };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let v = HeaderValue::from_bytes(&value).map_err(|_| bad())?;
        map.append(n, v);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_removed_and_connection_listed_too() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("connection").is_none());
        assert!(h.get("x-private").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn wire_round_trip_keeps_repeats_and_order() {
        let mut h = HeaderMap::new();
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("x-bin", HeaderValue::from_bytes(b"\xff\x80").unwrap());
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        let back = from_wire(to_wire(&h)).unwrap();
        let cookies: Vec<_> = back.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(back.get("x-bin").unwrap().as_bytes(), b"\xff\x80");
    }

    #[test]
    fn borrowed_wire_headers_share_the_frame() {
        let frame = Bytes::from_static(b"....set-cookie a=1 x-bin \xff\x80");
        let entries = [
            Header {
                name: "set-cookie",
                value: &frame[15..18],
            },
            Header {
                name: "x-bin",
                value: &frame[25..27],
            },
            Header {
                name: "set-cookie",
                value: b"b=2".as_slice(),
            },
        ];
        let map = from_wire_ref(&entries, &frame).unwrap();
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(map.get("x-bin").unwrap().as_bytes(), b"\xff\x80");
        // The first value points into the frame; the third (elsewhere) is a copy.
        assert_eq!(cookies[0].as_bytes().as_ptr(), frame[15..].as_ptr());
        assert_eq!(to_wire_ref(&map).len(), 3);
        let bad = [Header {
            name: "bad name",
            value: b"x".as_slice(),
        }];
        assert!(from_wire_ref(&bad, &frame).is_err());
    }

    #[test]
    fn invalid_wire_header_rejected() {
        let bad = vec![Header {
            name: "bad name".into(),
            value: b"x".to_vec(),
        }];
        assert!(from_wire(bad).is_err());
        let bad = vec![Header {
            name: "x".into(),
            value: b"a\r\nb".to_vec(),
        }];
        assert!(from_wire(bad).is_err());
    }
}
