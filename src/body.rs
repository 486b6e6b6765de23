//! Bodies that carry a tunnel stream: a hyper body reading from a [`RecvStream`],
//! in chunks as large as what has already arrived (large writes downstream are
//! what keep throughput up). A reset stream becomes a body error, so hyper aborts
//! the connection instead of ending the message cleanly. [`parts`] frames the
//! bodies that may end with trailers.

pub mod parts;

use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};

use self::parts::BodyReader;
use crate::transport::{RecvStream, TransportError};

/// Largest chunk handed downstream in one piece. 128 KiB: large enough that
/// per-write overhead vanishes (16 KiB writes halve TLS/TCP throughput), small
/// enough that hyper's 16-buffer write queue stays a few MiB.
pub const CHUNK: usize = 128 * 1024;

pub type TunnelBody = UnsyncBoxBody<Bytes, TransportError>;

/// A body streaming whatever `recv` delivers until FIN. If nothing arrives
/// for `idle` (a service that sent part of a body and went quiet), the body
/// fails: the client sees an error, never a clean end, and dropping `recv`
/// tells the agent to abandon the upstream request.
pub fn from_recv(recv: RecvStream, idle: Duration) -> TunnelBody {
    from_reader(BodyReader::new(recv, false, 0), idle, |_| {}, drop)
}

/// A body read by `reader` (raw or framed, trailers included), telling
/// `taken` how many bytes each data chunk handed on had, and handing the
/// stream to `at_end` after the clean end (to watch it further). Idle as
/// in [`from_recv`].
pub fn from_reader(
    reader: BodyReader,
    idle: Duration,
    taken: impl FnMut(u64) + Send + 'static,
    at_end: impl FnOnce(RecvStream) + Send + 'static,
) -> TunnelBody {
    let state = Some((reader, taken, at_end));
    let stream = futures_util::stream::unfold(state, move |state| async move {
        let (mut reader, mut taken, at_end) = state?;
        match tokio::time::timeout(idle, reader.next(CHUNK)).await {
            Ok(Ok(Some(frame))) => {
                if let Some(data) = frame.data_ref() {
                    taken(data.len() as u64);
                }
                Some((Ok(frame), Some((reader, taken, at_end))))
            }
            Ok(Ok(None)) => {
                at_end(reader.into_recv());
                None
            }
            Ok(Err(e)) => Some((Err(e), None)),
            Err(_) => {
                reader.recv_mut().stop(warren_proto::ResetCode::Cancelled);
                Some((Err(TransportError::Timeout(idle)), None))
            }
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

/// A client's (or a peer node's) request body as a [`TunnelBody`]: one body
/// type from the edge inward, so a request can be handed on, given back and
/// tried elsewhere whichever way it came in.
pub fn from_incoming(incoming: hyper::body::Incoming) -> TunnelBody {
    incoming
        .map_err(|e| TransportError::Io(std::io::Error::other(e)))
        .boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> TunnelBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `bytes`, then `trailers`.
pub fn with_trailers(bytes: Bytes, trailers: http::HeaderMap) -> TunnelBody {
    let frames = [Ok(Frame::data(bytes)), Ok(Frame::trailers(trailers))];
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

pub fn empty() -> TunnelBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// What watches a body go by: told the size of each data frame, and dropped
/// with the body (its `Drop` is where a finished body is accounted for).
pub trait Meter: Send + Unpin + 'static {
    fn data(&mut self, _bytes: u64) {}
}

/// `body`, with `meter` told of every data frame and dropped with it.
pub fn metered(body: TunnelBody, meter: impl Meter) -> TunnelBody {
    Metered { body, meter }.boxed_unsync()
}

struct Metered<M> {
    body: TunnelBody,
    meter: M,
}

impl<M: Meter> http_body::Body for Metered<M> {
    type Data = Bytes;
    type Error = TransportError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, TransportError>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.meter.data(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
