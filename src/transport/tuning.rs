//! The transport tunables both ends share (windows, stream limits, timeouts,
//! UDP buffers), each with its reason.

use std::time::Duration;

/// Tunables shared by both ends. Defaults are chosen for WAN links of up to a few
/// hundred Mbit/s; every one is configurable from the CLI.
#[derive(Debug, Clone)]
pub struct TransportTuning {
    /// Per-stream receive window. 2 MiB sustains ~170 Mbit/s per stream at 100 ms
    /// RTT, while 20 stalled readers pin at most 40 MiB.
    pub stream_window: u64,
    /// Per-connection receive window: the sum over all streams. 64 MiB leaves a
    /// full stream window free for active streams even with 30 stalled ones.
    pub connection_window: u64,
    /// Most request streams the peer may have open at once.
    pub max_streams: u32,
    /// Transport-level idle timeout: a backstop under the application heartbeat.
    pub idle_timeout: Duration,
    /// UDP socket send/receive buffer. A few MiB removes loss on fast links.
    pub udp_buffer: usize,
}

impl Default for TransportTuning {
    fn default() -> Self {
        TransportTuning {
            stream_window: 2 * 1024 * 1024,
            connection_window: 64 * 1024 * 1024,
            max_streams: 1024,
            idle_timeout: Duration::from_secs(60),
            udp_buffer: 4 * 1024 * 1024,
        }
    }
}
