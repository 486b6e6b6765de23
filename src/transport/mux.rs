//! yamux sessions (over a WebSocket, see `ws`) and their streams.
//!
//! A yamux `Connection` must be polled continuously; a driver task owns it and
//! serves open/close requests from [`Session`] handles through a bounded channel.
//!
//! yamux reports a reset stream as a plain end of file, so on these streams
//! every write is a *segment* (4-byte big-endian length, then the bytes) and a
//! clean end is a zero-length segment before FIN. A stream that ends without it
//! was reset or lost: the reader gets an error, never a clean short body.
//! Dropping a stream before its end resets it (yamux RST), which makes the
//! peer's writes fail: the equivalent of QUIC's STOP_SENDING.
//!
//! Long because: the three parts of the adapter (the stream shared by two
//! tasks, the driver and its once-per-turn flush, the segmenting halves)
//! rest on each other's invariants, and their tests drive them together.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use futures_util::task::AtomicWaker;

use bytes::{BufMut, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    sync::{mpsc, oneshot, watch, Mutex},
};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use super::{
    error::TransportError,
    segment::{Next, Segments},
    tuning::TransportTuning,
};

pub enum Role {
    Client,
    Server,
}

type YStream = Compat<yamux::Stream>;

/// One yamux stream used by two tasks at once (one reads, one writes).
///
/// A yamux stream keeps a single waker slot for its channel to the connection,
/// shared by reads (window updates) and writes (data): a reader's waker can be
/// overwritten by the writer's, the reader never retries its window update,
/// and both peers wait forever. So every poll here hands yamux a waker that
/// wakes *both* halves; a spurious wake-up costs a poll, a lost one a stream.
struct Duplex {
    stream: std::sync::Mutex<YStream>,
    wakers: Arc<BothHalves>,
    /// `wakers` as one waker, made once.
    both: Waker,
}

/// The two halves' wakers, apart from the stream: yamux keeps the last
/// waker it was given inside the stream's shared state, and a waker that
/// owned the stream would keep a dropped stream alive (no RST to the peer)
/// until the peer next sent on it. A client gone while its agent was still
/// quiet went unnoticed that way on this transport.
struct BothHalves {
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl std::task::Wake for BothHalves {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.reader.wake();
        self.writer.wake();
    }
}

/// A read or write handle on a [`Duplex`].
struct Half(Arc<Duplex>);

impl Half {
    fn poll_with<R>(
        &self,
        own: &AtomicWaker,
        cx: &mut Context<'_>,
        f: impl FnOnce(Pin<&mut YStream>, &mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        own.register(cx.waker());
        let mut both_cx = Context::from_waker(&self.0.both);
        let mut stream = self.0.stream.lock().expect("stream lock poisoned");
        f(Pin::new(&mut *stream), &mut both_cx)
    }
}

impl AsyncRead for Half {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.poll_with(&self.0.wakers.reader, cx, |s, cx| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Half {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_with(&self.0.wakers.writer, cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_with(&self.0.wakers.writer, cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_with(&self.0.wakers.writer, cx, |s, cx| s.poll_shutdown(cx))
    }
}

/// Largest payload per yamux data frame. Each frame becomes (part of) one
/// WebSocket message; ~256 KiB messages halve the receiver's CPU per byte
/// compared with yamux's default 16 KiB.
const SPLIT_SEND: usize = 256 * 1024;

/// The minimum window yamux guarantees every stream (its protocol default).
const YAMUX_MIN_WINDOW: usize = 256 * 1024;

enum Command {
    Open(oneshot::Sender<Result<yamux::Stream, TransportError>>),
    Close,
}

/// Sends what a session wrote during one turn of its driver. The socket under
/// a session may hold writes back (the WebSocket does: each flush would be a
/// message, a TLS record and a syscall); the driver calls this after yamux
/// has done all it could in the turn, so a burst of frames (several streams'
/// heads, data and ends) leaves as one write.
pub trait TurnFlush: Send {
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
}

/// Handle to a yamux session run by a driver task.
pub struct MuxSession {
    /// Grows with what arrives from the peer (see `Session::heard`).
    pub heard: Arc<std::sync::atomic::AtomicU64>,
    commands: mpsc::Sender<Command>,
    inbound: Mutex<mpsc::Receiver<yamux::Stream>>,
    closed: watch::Receiver<Option<String>>,
    pub remote: SocketAddr,
}

/// Starts the driver for a yamux session over `io`.
pub fn session<T>(
    io: T,
    flush: Option<Box<dyn TurnFlush>>,
    heard: Arc<std::sync::atomic::AtomicU64>,
    role: Role,
    remote: SocketAddr,
    tuning: &TransportTuning,
) -> Arc<MuxSession>
where
    T: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut config = yamux::Config::default();
    let streams = tuning.max_streams.max(1) as usize;
    config.set_max_num_streams(streams);
    // Every stream is guaranteed yamux's minimum window; on top of that,
    // auto-tuned windows (for high bandwidth-delay links) may share
    // `connection_window` bytes. That sum bounds what a session can buffer.
    config.set_max_connection_receive_window(Some(
        streams * YAMUX_MIN_WINDOW + tuning.connection_window as usize,
    ));
    config.set_split_send_size(SPLIT_SEND);
    let mode = match role {
        Role::Client => yamux::Mode::Client,
        Role::Server => yamux::Mode::Server,
    };
    let conn = yamux::Connection::new(io, config, mode);
    // Open requests are few and brief; 64 queued is plenty.
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    // The peer can have at most `streams` open, so this never fills up.
    let (in_tx, in_rx) = mpsc::channel(streams);
    let (closed_tx, closed_rx) = watch::channel(None);
    tokio::spawn(drive(conn, flush, cmd_rx, in_tx, closed_tx));
    Arc::new(MuxSession {
        heard,
        commands: cmd_tx,
        inbound: Mutex::new(in_rx),
        closed: closed_rx,
        remote,
    })
}

async fn drive<T>(
    mut conn: yamux::Connection<T>,
    mut flush: Option<Box<dyn TurnFlush>>,
    mut commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<yamux::Stream>,
    closed: watch::Sender<Option<String>>,
) where
    T: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Unpin,
{
    use std::task::Poll;
    let mut opening: Option<oneshot::Sender<Result<yamux::Stream, TransportError>>> = None;
    let mut closing = false;
    let reason = std::future::poll_fn(|cx| {
        if !closing {
            loop {
                if opening.is_none() {
                    match commands.poll_recv(cx) {
                        Poll::Ready(Some(Command::Open(reply))) => opening = Some(reply),
                        // Every handle is gone, or one asked: close.
                        Poll::Ready(Some(Command::Close)) | Poll::Ready(None) => {
                            closing = true;
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                if opening.is_some() {
                    match conn.poll_new_outbound(cx) {
                        Poll::Ready(result) => {
                            let reply = opening.take().expect("checked");
                            let _ = reply
                                .send(result.map_err(|e| TransportError::Closed(e.to_string())));
                        }
                        Poll::Pending => break,
                    }
                }
            }
        }
        if closing {
            return match conn.poll_close(cx) {
                Poll::Ready(_) => Poll::Ready("closed locally".to_string()),
                Poll::Pending => Poll::Pending,
            };
        }
        loop {
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    // Cannot fill (see the channel's size); if it somehow did,
                    // dropping the stream resets it.
                    let _ = inbound.try_send(stream);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(e.to_string()),
                Poll::Ready(None) => return Poll::Ready("closed by peer".to_string()),
                Poll::Pending => break,
            }
        }
        // The end of the turn: what yamux wrote goes out now. (Pending: the
        // socket wakes this task when it can take more.)
        if let Some(flush) = flush.as_mut() {
            if let Poll::Ready(Err(e)) = flush.poll_flush(cx) {
                return Poll::Ready(format!("write failed: {e}"));
            }
        }
        Poll::Pending
    })
    .await;
    if let Some(reply) = opening {
        let _ = reply.send(Err(TransportError::Closed(reason.clone())));
    }
    let _ = closed.send(Some(reason));
}

impl MuxSession {
    pub async fn open(&self) -> Result<(MuxSend, MuxRecv), TransportError> {
        let (tx, rx) = oneshot::channel();
        let gone = || {
            TransportError::Closed(
                self.close_reason()
                    .unwrap_or_else(|| "session closed".into()),
            )
        };
        self.commands
            .send(Command::Open(tx))
            .await
            .map_err(|_| gone())?;
        let stream = rx.await.map_err(|_| gone())??;
        Ok(split(stream))
    }

    pub async fn accept(&self) -> Option<(MuxSend, MuxRecv)> {
        let stream = self.inbound.lock().await.recv().await?;
        Some(split(stream))
    }

    pub fn close(&self) {
        let _ = self.commands.try_send(Command::Close);
    }

    pub fn close_reason(&self) -> Option<String> {
        self.closed.borrow().clone()
    }

    pub async fn closed(&self) -> String {
        let mut closed = self.closed.clone();
        let reason = match closed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "session driver gone".into(),
        };
        reason
    }
}

fn split(stream: yamux::Stream) -> (MuxSend, MuxRecv) {
    let wakers = Arc::new(BothHalves {
        reader: AtomicWaker::new(),
        writer: AtomicWaker::new(),
    });
    let shared = Arc::new(Duplex {
        stream: std::sync::Mutex::new(stream.compat()),
        both: Waker::from(wakers.clone()),
        wakers,
    });
    let (read, write) = (Half(shared.clone()), Half(shared));
    (
        MuxSend {
            write,
            scratch: Vec::new(),
        },
        MuxRecv {
            read,
            segments: Segments::default(),
        },
    )
}

/// Writing half: every write is one segment.
pub struct MuxSend {
    write: Half,
    /// Where a small segment is put together with its header (and the end
    /// marker) so that they leave as one yamux frame.
    scratch: Vec<u8>,
}

/// Segments up to this size go out with their header as one yamux frame:
/// copying a small buffer once costs less than a second frame. Larger ones
/// are written as header and data (two frames; the copy would cost more).
const COALESCE: usize = 16 * 1024;

const END_MARKER: [u8; 4] = [0; 4];

impl MuxSend {
    pub async fn write(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.write_segment(data, false).await
    }

    /// Clean end: the end marker. No yamux FIN follows: a stream whose write
    /// side is still open is *reset* (RST) when dropped, which is how the peer
    /// learns promptly that we stopped reading (yamux has no STOP_SENDING, and
    /// a FIN'd stream is dropped silently, leaving a writer blocked on credit).
    pub async fn finish(&mut self) -> Result<(), TransportError> {
        self.write_segment(&[], true).await
    }

    /// `data` as the last segment, then the clean end, in one frame when small.
    pub async fn write_last(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.write_segment(data, true).await
    }

    async fn write_segment(&mut self, data: &[u8], end: bool) -> Result<(), TransportError> {
        // (A zero-length segment would mean "end": an empty write is none.)
        let header = if data.is_empty() {
            None
        } else {
            Some(u32::try_from(data.len()).map_err(|_| {
                TransportError::Io(std::io::Error::other("segment larger than 4 GiB"))
            })?)
        };
        if data.len() <= COALESCE {
            self.scratch.clear();
            if let Some(len) = header {
                self.scratch.extend_from_slice(&len.to_be_bytes());
                self.scratch.extend_from_slice(data);
            }
            if end {
                self.scratch.extend_from_slice(&END_MARKER);
            }
            if !self.scratch.is_empty() {
                self.write.write_all(&self.scratch).await?;
            }
        } else {
            if let Some(len) = header {
                self.write.write_all(&len.to_be_bytes()).await?;
            }
            self.write.write_all(data).await?;
            if end {
                self.write.write_all(&END_MARKER).await?;
            }
        }
        if end {
            self.write.flush().await?;
        }
        Ok(())
    }

    /// Abort: FIN without the end marker, which the reader reports as an error.
    pub async fn reset(&mut self) {
        let _ = self.write.shutdown().await;
    }
}

/// Reading half: undoes the segmenting.
pub struct MuxRecv {
    read: Half,
    /// Where the reader stands in the segments (`segment`).
    segments: Segments,
}

fn truncated() -> TransportError {
    TransportError::Reset(0)
}

impl MuxRecv {
    /// Makes sure a segment is in progress and returns the bytes left in it;
    /// `None` at the clean end.
    async fn next_segment(&mut self) -> Result<Option<usize>, TransportError> {
        loop {
            match self.segments.next() {
                Next::End => return Ok(None),
                Next::Body(remaining) => return Ok(Some(remaining)),
                Next::Header => {
                    let mut header = [0u8; 4];
                    self.read
                        .read_exact(&mut header)
                        .await
                        .map_err(|_| truncated())?;
                    self.segments.header(header);
                }
            }
        }
    }

    /// After the clean end: resolves when the peer drops its side of the
    /// stream (its RST, or the session ending). Nothing may arrive after the
    /// end marker, so any read result means the same.
    pub async fn closed(&mut self) {
        let mut byte = [0u8; 1];
        let _ = self.read.read(&mut byte).await;
    }

    /// Reads at most `max` bytes of the current segment into `buf`; 0 at the
    /// clean end.
    pub async fn read_into(
        &mut self,
        buf: &mut BytesMut,
        max: usize,
    ) -> Result<usize, TransportError> {
        let Some(remaining) = self.next_segment().await? else {
            return Ok(0);
        };
        let want = max.min(remaining);
        buf.reserve(want);
        let n = self.read.read_buf(&mut (&mut *buf).limit(want)).await?;
        self.segments.body(n).map_err(|_| truncated())?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    //! The adapter on its own, over an in-memory pipe: segments, the end
    //! marker, resets and per-stream backpressure.

    use std::time::Duration;

    use tokio_util::compat::TokioAsyncReadCompatExt;

    use super::*;

    fn pair(tuning: &TransportTuning) -> (Arc<MuxSession>, Arc<MuxSession>) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        (
            session(
                a.compat(),
                None,
                Default::default(),
                Role::Client,
                addr,
                tuning,
            ),
            session(
                b.compat(),
                None,
                Default::default(),
                Role::Server,
                addr,
                tuning,
            ),
        )
    }

    async fn read_all(recv: &mut MuxRecv) -> Result<Vec<u8>, TransportError> {
        let mut buf = BytesMut::new();
        while recv.read_into(&mut buf, 64 * 1024).await? > 0 {}
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn bytes_arrive_whole_and_finish_is_a_clean_end() {
        let (client, server) = pair(&TransportTuning::default());
        let (mut send, _) = client.open().await.unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        send.write(&data[..1]).await.unwrap();
        let (_, mut recv) = server.accept().await.unwrap();
        // More than a window: the writer waits for the reader (backpressure).
        let rest = data[1..].to_vec();
        let writer = tokio::spawn(async move {
            send.write(&rest).await.unwrap();
            send.finish().await.unwrap();
        });
        assert_eq!(read_all(&mut recv).await.unwrap(), data);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_reset_is_an_error_never_a_clean_end() {
        let (client, server) = pair(&TransportTuning::default());
        let (mut send, _) = client.open().await.unwrap();
        send.write(b"partial").await.unwrap();
        let (_, mut recv) = server.accept().await.unwrap();
        send.reset().await;
        assert!(read_all(&mut recv).await.is_err(), "truncation is reported");
    }

    #[tokio::test]
    async fn a_dropped_reader_fails_the_writer() {
        let (client, server) = pair(&TransportTuning::default());
        let (mut send, _) = client.open().await.unwrap();
        send.write(b"x").await.unwrap();
        drop(server.accept().await.unwrap());
        let failed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if send.write(&[0u8; 16 * 1024]).await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(failed.is_ok(), "the writer learns the reader is gone");
    }

    /// A stream dropped while a read on it was waiting resets at once: the
    /// peer learns it without sending anything first.
    #[tokio::test]
    async fn a_stream_dropped_mid_read_resets_at_once() {
        let (client, server) = pair(&TransportTuning::default());
        let (mut send, mut recv) = client.open().await.unwrap();
        send.write_last(b"head").await.unwrap();
        let (_server_send, mut server_recv) = server.accept().await.unwrap();
        assert_eq!(read_all(&mut server_recv).await.unwrap(), b"head");
        // The client waits for an answer, then gives up.
        let waiting = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let _ = recv.read_into(&mut buf, 16).await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(send);
        // The server, having read to the end, sees the reset promptly.
        tokio::time::timeout(Duration::from_secs(2), server_recv.closed())
            .await
            .expect("the reset reaches the peer without it writing");
    }

    #[tokio::test]
    async fn a_stalled_stream_does_not_hold_up_another() {
        let (client, server) = pair(&TransportTuning::default());
        // Stream 1: written until its window is full, never read.
        let (mut stalled, _) = client.open().await.unwrap();
        stalled.write(b"s").await.unwrap();
        let (_, _stalled_recv) = server.accept().await.unwrap();
        let filler = tokio::spawn(async move {
            loop {
                if stalled.write(&[1u8; 64 * 1024]).await.is_err() {
                    return;
                }
            }
        });
        // Stream 2: 4 MiB goes through meanwhile.
        let (mut send, _) = client.open().await.unwrap();
        send.write(b"y").await.unwrap();
        let (_, mut recv) = server.accept().await.unwrap();
        let writer = tokio::spawn(async move {
            for _ in 0..64 {
                send.write(&[2u8; 64 * 1024]).await.unwrap();
            }
            send.finish().await.unwrap();
        });
        let got = tokio::time::timeout(Duration::from_secs(20), read_all(&mut recv))
            .await
            .expect("the second stream is not blocked by the first")
            .unwrap();
        assert_eq!(got.len(), 1 + 64 * 64 * 1024);
        writer.await.unwrap();
        assert!(
            !filler.is_finished(),
            "the stalled writer is held back, not failed"
        );
        filler.abort();
    }

    #[tokio::test]
    async fn closing_the_session_ends_accept_and_open() {
        let (client, server) = pair(&TransportTuning::default());
        client.close();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), server.accept())
                .await
                .expect("accept ends")
                .is_none()
        );
        assert!(client.open().await.is_err());
        assert!(!client.closed().await.is_empty() || client.close_reason().is_some());
    }
}
