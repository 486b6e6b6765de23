//! The transport tunables both ends share (windows, stream limits, timeouts,
//! UDP buffers), each with its reason.

use std::time::Duration;

/// Tunables shared by both ends. Defaults are chosen for WAN links of up to a few
/// hundred Mbit/s; every one is configurable from the CLI.
#[derive(Debug, Clone)]
pub struct TransportTuning {
    /// Per-stream receive window. 8 MiB carries 200 MB/s on one stream across
    /// a 40 ms round trip (80 MB/s at 100 ms). Over QUIC, what a response
    /// actually has in flight is the server's credit (`server::credit`, up to
    /// the same 8 MiB), so stalled readers do not each hold this much.
    pub stream_window: u64,
    /// Per-connection receive window: the sum over all streams. 128 MiB is
    /// above what credit can have outstanding (its 48 MiB budget, plus 64 KiB
    /// for each of `max_streams` streams), so the window QUIC shares between
    /// all streams is never used up by stalled readers. It also bounds what
    /// one connection can make its receiver buffer.
    pub connection_window: u64,
    /// Most request streams the peer may have open at once.
    pub max_streams: u32,
    /// Transport-level idle timeout: a backstop under the application heartbeat.
    pub idle_timeout: Duration,
    /// UDP socket send/receive buffer. A few MiB removes loss on fast links.
    pub udp_buffer: usize,
    /// Least time between two QUIC stateless resets the server sends (0:
    /// none). After a crash and restart every agent learns of it from a
    /// reset, and one that misses it backs off exponentially (its probes go
    /// unanswered): with quinn's 20 ms, or even 1 ms, 1,000 agents took 11 to
    /// 37 s to return, since a batch of datagrams read at the same instant
    /// gets one reset in all. 0 is safe here: a reset answers only a
    /// connection id this server's keyed hash recognises (not arbitrary
    /// garbage), and is always smaller than the packet that asked for it, so
    /// it can neither amplify nor loop.
    pub reset_interval: Duration,
}

impl Default for TransportTuning {
    fn default() -> Self {
        TransportTuning {
            stream_window: 8 * 1024 * 1024,
            connection_window: 128 * 1024 * 1024,
            max_streams: 1024,
            idle_timeout: Duration::from_secs(60),
            udp_buffer: 4 * 1024 * 1024,
            reset_interval: Duration::ZERO,
        }
    }
}
