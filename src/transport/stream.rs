//! The two halves of a stream: writes (owned chunks, frames, FIN, reset) and
//! reads (chunks as large as what has arrived, frames with hard limits).
//! Streams end with FIN (complete) or reset (truncated); readers can tell.

use bytes::{Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use warren_proto::{ResetCode, LEN_PREFIX};

use super::{
    error::{self, TransportError},
    mux,
};

/// The sending half of a stream.
pub enum SendStream {
    Quic(quinn::SendStream),
    Mux(mux::MuxSend),
}

impl SendStream {
    /// Writes an owned chunk (without copying it, where the transport allows).
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), TransportError> {
        match self {
            SendStream::Quic(s) => s.write_chunk(chunk).await.map_err(error::write_error),
            SendStream::Mux(s) => s.write(&chunk).await,
        }
    }

    /// Encodes and writes one frame.
    pub async fn write_frame<T: Serialize>(
        &mut self,
        msg: &T,
        limit: usize,
    ) -> Result<(), TransportError> {
        let frame = warren_proto::encode_frame(msg, limit)?;
        self.write_chunk(Bytes::from(frame)).await
    }

    /// Writes `chunk` and ends the stream cleanly, together where the
    /// transport allows (one yamux frame instead of two).
    pub async fn write_last(&mut self, chunk: Bytes) -> Result<(), TransportError> {
        match self {
            SendStream::Quic(_) => {
                self.write_chunk(chunk).await?;
                self.finish().await
            }
            SendStream::Mux(s) => s.write_last(&chunk).await,
        }
    }

    /// Encodes one frame, writes it and ends the stream cleanly.
    pub async fn write_last_frame<T: Serialize>(
        &mut self,
        msg: &T,
        limit: usize,
    ) -> Result<(), TransportError> {
        let frame = warren_proto::encode_frame(msg, limit)?;
        self.write_last(Bytes::from(frame)).await
    }

    /// Ends the stream cleanly (FIN): the reader sees a complete body.
    pub async fn finish(&mut self) -> Result<(), TransportError> {
        match self {
            SendStream::Quic(s) => s
                .finish()
                .map_err(|_| TransportError::Closed("stream already closed".into())),
            SendStream::Mux(s) => s.finish().await,
        }
    }

    /// Resolves when the reader stopped the stream (it will read no more) or
    /// the session ended. yamux has no such signal (a stopped reader shows as
    /// the next write failing): there it never resolves.
    pub async fn stopped(&mut self) {
        match self {
            SendStream::Quic(s) => {
                let _ = s.stopped().await;
            }
            SendStream::Mux(_) => std::future::pending().await,
        }
    }

    /// Aborts the stream: the reader sees an error, never a clean end.
    pub async fn reset(&mut self, code: ResetCode) {
        match self {
            SendStream::Quic(s) => {
                let _ = s.reset(quinn::VarInt::from_u32(code as u32));
            }
            SendStream::Mux(s) => s.reset().await,
        }
    }
}

/// The receiving half of a stream. Dropping it before the end tells the writer to
/// stop (the writer sees its next write fail).
pub struct RecvStream {
    inner: RecvInner,
    /// Reused read buffer: chunks are split off it, and its allocation is
    /// reclaimed once downstream has dropped them.
    buf: BytesMut,
    /// How much to read at once: starts small (most responses are small, and a
    /// 128 KiB allocation per stream would cost more than the response) and
    /// doubles whenever a read fills it, up to the caller's maximum.
    read_size: usize,
    /// Bytes received past the end of a frame, returned before reading more.
    pending: Bytes,
}

/// First read size on a stream; see `RecvStream::read_size`.
const FIRST_READ: usize = 16 * 1024;

pub(super) enum RecvInner {
    Quic(quinn::RecvStream),
    Mux(mux::MuxRecv),
}

impl RecvStream {
    pub(super) fn new(inner: RecvInner) -> Self {
        RecvStream {
            inner,
            buf: BytesMut::new(),
            read_size: FIRST_READ,
            pending: Bytes::new(),
        }
    }

    /// Next chunk: everything already received, up to `max` bytes, in one piece.
    /// `Ok(None)` at a clean end (FIN); an error if the writer reset the stream or
    /// the session died.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, TransportError> {
        use bytes::BufMut;
        use tokio::io::AsyncReadExt;
        if !self.pending.is_empty() {
            let n = self.pending.len().min(max);
            return Ok(Some(self.pending.split_to(n)));
        }
        let want = self.read_size.min(max).max(1);
        self.buf.reserve(want);
        let n = match &mut self.inner {
            RecvInner::Quic(s) => s
                .read_buf(&mut (&mut self.buf).limit(want))
                .await
                .map_err(error::io_read_error)?,
            RecvInner::Mux(s) => s.read_into(&mut self.buf, want).await?,
        };
        if n == 0 {
            return Ok(None);
        }
        if n == want {
            self.read_size = (self.read_size * 2).min(max.max(self.read_size));
        }
        Ok(Some(self.buf.split().freeze()))
    }

    /// Fills `out` completely, or fails (a clean end before that is `UnexpectedEnd`).
    pub async fn read_exact(&mut self, out: &mut [u8]) -> Result<(), TransportError> {
        let mut filled = 0;
        while filled < out.len() {
            let Some(chunk) = self.read_chunk(out.len() - filled).await? else {
                return Err(TransportError::UnexpectedEnd);
            };
            out[filled..filled + chunk.len()].copy_from_slice(&chunk);
            filled += chunk.len();
        }
        Ok(())
    }

    /// Reads one frame, never holding more than `limit` bytes for it. Bytes
    /// that arrived after it (typically the start of a body) are kept for the
    /// next read, so a head and its body can share one network read.
    pub async fn read_frame<T: DeserializeOwned>(
        &mut self,
        limit: usize,
    ) -> Result<T, TransportError> {
        let payload = self.read_payload(limit).await?;
        Ok(warren_proto::decode_payload(&payload)?)
    }

    /// Reads one frame's payload undecoded (for a look at it before decoding,
    /// as the server does with a Hello's version). Same limits as `read_frame`.
    pub async fn read_payload(&mut self, limit: usize) -> Result<Bytes, TransportError> {
        let room = limit + LEN_PREFIX;
        let mut staged = match self.read_chunk(room).await? {
            Some(chunk) => chunk,
            None => return Err(TransportError::UnexpectedEnd),
        };
        loop {
            if let Some(prefix) = staged.first_chunk::<LEN_PREFIX>() {
                let len = warren_proto::frame_len(*prefix, limit)?;
                let end = LEN_PREFIX + len;
                if staged.len() >= end {
                    self.pending = staged.slice(end..);
                    return Ok(staged.slice(LEN_PREFIX..end));
                }
            }
            // The frame spans reads: gather it (bounded by the frame limit).
            let Some(more) = self
                .read_chunk(room.saturating_sub(staged.len()).max(1))
                .await?
            else {
                return Err(TransportError::UnexpectedEnd);
            };
            let mut joined = BytesMut::with_capacity(staged.len() + more.len());
            joined.extend_from_slice(&staged);
            joined.extend_from_slice(&more);
            staged = joined.freeze();
        }
    }

    /// Puts `bytes` (just read from this stream) back in front of what is
    /// still to be read, for a reader that took more than one frame's worth.
    pub fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.pending.is_empty() {
            self.pending = bytes;
        } else {
            // Rare: a read that took less than all that was pending.
            let mut joined = BytesMut::with_capacity(bytes.len() + self.pending.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.pending);
            self.pending = joined.freeze();
        }
    }

    /// Reads from now on start at `bytes` (then double while reads fill
    /// them, as always): for a stream of small frames, such as the control
    /// stream, whose buffer would otherwise hold 16 KiB for as long as the
    /// connection lives (a third of an idle agent's memory on the server).
    pub fn small_reads(&mut self, bytes: usize) {
        self.read_size = bytes.max(1);
    }

    /// What the read buffer holds allocated (for tests of its size).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Resolves when the writer drops its side of the stream after its
    /// clean end (FIN). yamux only: a QUIC stream says nothing more after FIN
    /// (there the writer's [`SendStream::stopped`] tells), so this never
    /// resolves on QUIC.
    pub async fn closed(&mut self) {
        // Up to the clean end first (a bodyless request's end marker may
        // still be unread); bytes or an error there mean the same: gone.
        if !matches!(self.read_chunk(FIRST_READ).await, Ok(None)) {
            return;
        }
        match &mut self.inner {
            RecvInner::Quic(_) => std::future::pending().await,
            RecvInner::Mux(s) => s.closed().await,
        }
    }

    /// Tells the writer we will read no more. (On yamux the writer learns it
    /// when the whole stream is dropped.)
    pub fn stop(&mut self, code: ResetCode) {
        match &mut self.inner {
            RecvInner::Quic(s) => {
                let _ = s.stop(quinn::VarInt::from_u32(code as u32));
            }
            RecvInner::Mux(_) => {}
        }
    }
}
