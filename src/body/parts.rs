//! Framed bodies on `Open::HttpWithTrailers` streams (PROTOCOL.md §4.2): the
//! body's bytes as data parts, then its trailers if it has any, then FIN.
//! [`BodyReader`] reads a stream's body, raw or framed, as hyper frames;
//! [`write_data`] and [`write_trailers`] send one. Data passes through as it
//! arrives, never copied or decoded; only a trailers part is gathered whole,
//! and only within the head limit.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Frame;
use warren_proto::{
    BodyPart, BodyPartRef, FrameError, Header, PartStart, LEN_PREFIX, MAX_DATA_PART,
};

use crate::{
    headers,
    transport::{RecvStream, SendStream, TransportError},
};

/// Data parts up to this size leave with their framing in one write: one copy
/// of a small buffer costs less than a second write.
const COALESCE: usize = 16 * 1024;

/// A stream's body, frame by frame.
pub struct BodyReader {
    recv: RecvStream,
    /// Only for a framed body: where in it the reader is.
    framed: Option<Framed>,
}

struct Framed {
    /// Bytes of the current data part still to come.
    remaining: usize,
    /// Largest trailers part taken (its payload).
    trailers_limit: usize,
    /// The trailers came: only the end may follow.
    ended: bool,
}

impl BodyReader {
    /// Raw bytes until FIN (`Open::Http`), or, with `framed`, body parts
    /// whose trailers may be up to `trailers_limit` bytes.
    pub fn new(recv: RecvStream, framed: bool, trailers_limit: usize) -> Self {
        BodyReader {
            recv,
            framed: framed.then_some(Framed {
                remaining: 0,
                trailers_limit,
                ended: false,
            }),
        }
    }

    /// Whether the body is framed (body parts, trailers possible).
    pub fn framed(&self) -> bool {
        self.framed.is_some()
    }

    pub fn into_recv(self) -> RecvStream {
        self.recv
    }

    pub fn recv_mut(&mut self) -> &mut RecvStream {
        &mut self.recv
    }

    /// The next frame: data (at most `max` bytes, as much as has arrived), the
    /// trailers, or `None` at the body's clean end. A reset, or a framed body
    /// that breaks the rules of §4.2, is an error.
    pub async fn next(&mut self, max: usize) -> Result<Option<Frame<Bytes>>, TransportError> {
        let Some(framed) = &mut self.framed else {
            return Ok(self.recv.read_chunk(max).await?.map(Frame::data));
        };
        loop {
            if framed.remaining > 0 {
                let want = framed.remaining.min(max);
                let Some(chunk) = self.recv.read_chunk(want).await? else {
                    return Err(TransportError::UnexpectedEnd);
                };
                framed.remaining -= chunk.len();
                return Ok(Some(Frame::data(chunk)));
            }
            if framed.ended {
                return match self.recv.read_chunk(1).await? {
                    None => Ok(None),
                    Some(_) => Err(malformed("bytes after the trailers".into())),
                };
            }
            // The next part: the end may come instead, between parts.
            let Some(mut staged) = self.recv.read_chunk(max).await? else {
                return Ok(None);
            };
            loop {
                match warren_proto::part_start(&staged, framed.trailers_limit)? {
                    Some(PartStart::Data { skip, len }) => {
                        self.recv.unread(staged.slice(skip..));
                        framed.remaining = len;
                        break;
                    }
                    Some(PartStart::Trailers { frame }) if staged.len() >= frame => {
                        self.recv.unread(staged.slice(frame..));
                        framed.ended = true;
                        let trailers = decode_trailers(staged.slice(LEN_PREFIX..frame))?;
                        return Ok(Some(Frame::trailers(trailers)));
                    }
                    // Not all here yet (bounded: a data part's start is a
                    // few bytes, a trailers part was checked against its limit).
                    _ => {
                        let Some(more) = self.recv.read_chunk(max).await? else {
                            return Err(TransportError::UnexpectedEnd);
                        };
                        let mut joined = BytesMut::with_capacity(staged.len() + more.len());
                        joined.extend_from_slice(&staged);
                        joined.extend_from_slice(&more);
                        staged = joined.freeze();
                    }
                }
            }
        }
    }
}

fn malformed(why: String) -> TransportError {
    TransportError::Frame(FrameError::Malformed(why))
}

/// A trailers part's payload as a header map (its values share `payload`).
fn decode_trailers(payload: Bytes) -> Result<HeaderMap, TransportError> {
    match warren_proto::decode_payload_borrowed::<BodyPartRef>(&payload)? {
        BodyPart::Trailers(fields) => {
            let mut map = headers::from_wire_ref(&fields, &payload)
                .map_err(|e| malformed(format!("trailers: {e}")))?;
            headers::strip_hop_by_hop(&mut map);
            Ok(map)
        }
        BodyPart::Data(_) => unreachable!("part_start said trailers"),
    }
}

/// Appends `data` as data parts (split at `MAX_DATA_PART`) to `out`: for a
/// small body that leaves in the same write as its head.
pub fn append_data(out: &mut Vec<u8>, data: &[u8]) {
    for part in data.chunks(MAX_DATA_PART) {
        let prefix = warren_proto::data_prefix(part.len()).expect("split at the limit");
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(part);
    }
}

/// Writes `data` as data parts: small ones with their framing in one
/// buffer, larger ones as framing then the bytes themselves (not copied).
pub async fn write_data(send: &mut SendStream, mut data: Bytes) -> Result<(), TransportError> {
    while !data.is_empty() {
        let part = data.split_to(data.len().min(MAX_DATA_PART));
        if part.len() <= COALESCE {
            let mut one = Vec::with_capacity(part.len() + 8);
            append_data(&mut one, &part);
            send.write_chunk(Bytes::from(one)).await?;
        } else {
            let prefix = warren_proto::data_prefix(part.len())?;
            send.write_chunk(Bytes::copy_from_slice(prefix.as_bytes()))
                .await?;
            send.write_chunk(part).await?;
        }
    }
    Ok(())
}

/// Writes the trailers part (hop-by-hop fields left out); a part over
/// `limit` bytes is `FrameError::TooLarge`, and nothing is written.
pub async fn write_trailers(
    send: &mut SendStream,
    trailers: &HeaderMap,
    limit: usize,
) -> Result<(), TransportError> {
    let fields = trailers
        .iter()
        .filter(|(name, _)| !headers::is_hop_by_hop(name))
        .map(|(name, value)| Header {
            name: name.as_str(),
            value: value.as_bytes(),
        })
        .collect();
    let part: BodyPartRef = BodyPart::Trailers(fields);
    send.write_frame(&part, limit).await
}
