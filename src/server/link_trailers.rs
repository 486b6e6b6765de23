//! Trailers across the cluster link. The link between nodes is HTTP/1.1, which
//! sends only the trailer fields a message announced in `Trailer` before its
//! body, and only on a chunked body; an HTTP/2 or HTTP/3 client or service
//! (gRPC) sends trailers it never announced. So on the link a message's
//! trailers travel packed into one announced field, [`PACKED`] (one
//! `name:value` entry per field value), and a body that may end with them goes
//! chunked, its `Content-Length` carried beside it in [`LENGTH`]. The node at
//! the other end unpacks both. Only nodes of one cluster speak this: a client
//! or a service never sees either header.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{
    header::{CONTENT_LENGTH, TRAILER},
    HeaderMap, HeaderName, HeaderValue,
};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::{body::TunnelBody, transport::TransportError};

/// The one trailer field a packed message announces and ends with.
const PACKED_NAME: &str = "x-warren-trailer";
const PACKED: HeaderName = HeaderName::from_static(PACKED_NAME);
/// The message's own `Content-Length`, while it travels chunked.
const LENGTH: HeaderName = HeaderName::from_static("x-warren-length");

/// Removes the link's own headers from a message that came from outside (a
/// client's request, a service's response): only nodes set them.
pub(super) fn strip(headers: &mut HeaderMap) {
    headers.remove(LENGTH);
}

/// Prepares a message for the link: its body goes chunked, and its trailers,
/// if any come, packed into [`PACKED`], which `Trailer` announces.
pub(super) fn pack(headers: &mut HeaderMap, body: TunnelBody) -> TunnelBody {
    strip(headers);
    if let Some(length) = headers.remove(CONTENT_LENGTH) {
        headers.insert(LENGTH, length);
    }
    headers.append(TRAILER, HeaderValue::from_static(PACKED_NAME));
    MapTrailers {
        body,
        map: pack_fields,
    }
    .boxed_unsync()
}

/// Undoes [`pack`] on a message from the link. A message that was not packed
/// is left as it is.
pub(super) fn unpack(headers: &mut HeaderMap, body: TunnelBody) -> TunnelBody {
    let announced: Vec<HeaderValue> = headers.get_all(TRAILER).iter().cloned().collect();
    if !announced.iter().any(|v| names(v).any(is_packed)) {
        strip(headers);
        return body;
    }
    // What the message itself announced stays announced (an HTTP/1.1 client
    // takes only those fields).
    headers.remove(TRAILER);
    for value in &announced {
        let rest: Vec<&str> = names(value).filter(|n| !is_packed(n)).collect();
        if !rest.is_empty() {
            let joined = HeaderValue::from_str(&rest.join(", ")).expect("header names");
            headers.append(TRAILER, joined);
        }
    }
    headers.remove(CONTENT_LENGTH);
    if let Some(length) = headers.remove(LENGTH) {
        headers.insert(CONTENT_LENGTH, length);
    }
    MapTrailers {
        body,
        map: unpack_fields,
    }
    .boxed_unsync()
}

/// The field names one `Trailer` value lists.
fn names(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

fn is_packed(name: &str) -> bool {
    name.eq_ignore_ascii_case(PACKED_NAME)
}

fn pack_fields(trailers: HeaderMap) -> Result<HeaderMap, TransportError> {
    let mut packed = HeaderMap::new();
    for (name, value) in &trailers {
        let mut entry = Vec::with_capacity(name.as_str().len() + 1 + value.len());
        entry.extend_from_slice(name.as_str().as_bytes());
        entry.push(b':');
        entry.extend_from_slice(value.as_bytes());
        // A token, a colon and a valid value make a valid value.
        let entry = HeaderValue::from_bytes(&entry).expect("valid field value");
        packed.append(PACKED, entry);
    }
    Ok(packed)
}

fn unpack_fields(packed: HeaderMap) -> Result<HeaderMap, TransportError> {
    let mut trailers = HeaderMap::new();
    for (name, value) in &packed {
        if *name != PACKED {
            trailers.append(name, value.clone());
            continue;
        }
        let bytes = value.as_bytes();
        let field = bytes.iter().position(|&b| b == b':').and_then(|colon| {
            let name = HeaderName::from_bytes(&bytes[..colon]).ok()?;
            let value = HeaderValue::from_bytes(&bytes[colon + 1..]).ok()?;
            Some((name, value))
        });
        let Some((name, value)) = field else {
            return Err(TransportError::Io(std::io::Error::other(
                "a peer node sent a malformed packed trailer",
            )));
        };
        trailers.append(name, value);
    }
    Ok(trailers)
}

/// A body whose trailers go through `map`; its data passes untouched.
struct MapTrailers<F> {
    body: TunnelBody,
    map: F,
}

impl<F> Body for MapTrailers<F>
where
    F: FnMut(HeaderMap) -> Result<HeaderMap, TransportError> + Unpin,
{
    type Data = Bytes;
    type Error = TransportError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, TransportError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(trailers) => Poll::Ready(Some((this.map)(trailers).map(Frame::trailers))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("3"));
        t.append("x-many", HeaderValue::from_static("one"));
        t.append("x-many", HeaderValue::from_static("two: with a colon"));
        t
    }

    async fn frames(body: TunnelBody) -> (Vec<Bytes>, Option<HeaderMap>) {
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut body = body;
        while let Some(frame) = body.frame().await {
            match frame.expect("frame").into_data() {
                Ok(d) => data.push(d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (data, trailers)
    }

    #[tokio::test]
    async fn trailers_and_length_come_back_as_they_left() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        headers.insert(TRAILER, HeaderValue::from_static("grpc-status"));
        let body = crate::body::with_trailers(Bytes::from_static(b"hello"), trailers());
        let body = pack(&mut headers, body);
        assert!(!headers.contains_key(CONTENT_LENGTH), "chunked on the link");
        assert_eq!(headers[LENGTH], "5");
        let announced: Vec<_> = headers.get_all(TRAILER).iter().collect();
        assert_eq!(announced, ["grpc-status", "x-warren-trailer"]);

        // hyper joins the announced names into one line on the way.
        headers.remove(TRAILER);
        headers.insert(
            TRAILER,
            HeaderValue::from_static("grpc-status, x-warren-trailer"),
        );
        let body = unpack(&mut headers, body);
        assert_eq!(headers[CONTENT_LENGTH], "5");
        assert!(!headers.contains_key(LENGTH));
        assert_eq!(headers[TRAILER], "grpc-status");
        let (data, got) = frames(body).await;
        assert_eq!(data, [Bytes::from_static(b"hello")]);
        assert_eq!(got, Some(trailers()));
    }

    #[tokio::test]
    async fn a_message_not_packed_is_left_alone_but_loses_a_forged_length() {
        let mut headers = HeaderMap::new();
        headers.insert(TRAILER, HeaderValue::from_static("x-body-sha256"));
        headers.insert(LENGTH, HeaderValue::from_static("999"));
        let body = unpack(&mut headers, crate::body::full("abc"));
        assert_eq!(headers[TRAILER], "x-body-sha256");
        assert!(!headers.contains_key(CONTENT_LENGTH) && !headers.contains_key(LENGTH));
        assert_eq!(frames(body).await.0, [Bytes::from_static(b"abc")]);
    }

    #[tokio::test]
    async fn a_malformed_packed_trailer_is_a_body_error() {
        let mut packed = HeaderMap::new();
        packed.insert(PACKED, HeaderValue::from_static("no colon here"));
        let mut headers = HeaderMap::new();
        headers.insert(TRAILER, HeaderValue::from_static("x-warren-trailer"));
        let mut body = unpack(
            &mut headers,
            crate::body::with_trailers(Bytes::new(), packed),
        );
        assert!(body.frame().await.unwrap().is_ok(), "the data");
        assert!(body.frame().await.unwrap().is_err(), "then the error");
    }
}
