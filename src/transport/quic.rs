//! QUIC via quinn: endpoint set-up (socket buffers, windows, ALPN) and the mapping
//! of quinn's errors onto [`TransportError`].

use std::{net::SocketAddr, sync::Arc, time::Duration};

use quinn::{crypto::rustls::QuicClientConfig, crypto::rustls::QuicServerConfig, VarInt};

use super::{error::TransportError, session::Session, tuning::TransportTuning};

/// Streams the agent may open towards the server: only the control stream today;
/// a little headroom for future uses.
const AGENT_OPENED_STREAMS: u32 = 8;

/// How often an idle agent sends a QUIC PING. A server that crashed and came
/// back answers the next packet with a stateless reset (its reset key survives
/// restarts), so this bounds how long an agent clings to a dead connection:
/// 2 s costs one small packet per agent every 2 s.
const AGENT_KEEP_ALIVE: Duration = Duration::from_secs(2);

fn transport_config(tuning: &TransportTuning, peer_streams: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let window = |v: u64| VarInt::from_u64(v).unwrap_or(VarInt::MAX);
    t.stream_receive_window(window(tuning.stream_window));
    t.receive_window(window(tuning.connection_window));
    t.send_window(tuning.connection_window);
    t.max_concurrent_bidi_streams(VarInt::from_u32(peer_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(tuning.idle_timeout).ok());
    t
}

/// Binds a UDP socket with the tuned buffer sizes (quinn turns on GSO/GRO itself).
fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the OS allows it, so `[::]:7443` also serves IPv4 agents.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The server's QUIC side of the tunnel port.
pub struct Listener {
    endpoint: quinn::Endpoint,
}

impl Listener {
    /// `reset_secret` keys stateless resets; derived from the server's own
    /// key material, it is the same after a restart, so agents of a crashed
    /// server recognise the restarted one's resets and reconnect at once.
    pub fn bind(
        addr: SocketAddr,
        tls: rustls::ServerConfig,
        tuning: &TransportTuning,
        reset_secret: [u8; 32],
    ) -> Result<Self, TransportError> {
        let mut tls = tls;
        tls.alpn_protocols = vec![warren_proto::ALPN.to_vec()];
        tls.max_early_data_size = 0;
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| TransportError::Connect {
            addr: addr.to_string(),
            reason: format!("TLS config unusable for QUIC: {e}"),
        })?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(tuning, AGENT_OPENED_STREAMS)));
        let socket = udp_socket(addr, tuning.udp_buffer)?;
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_secret);
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        // Connection ids are checked against a keyed hash before a reset is
        // sent; the same key after a restart makes the old ids recognisable.
        let cid_key = u64::from_le_bytes(reset_secret[..8].try_into().expect("8 bytes"));
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        endpoint_config.min_reset_interval(tuning.reset_interval);
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(Listener { endpoint })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Next incoming connection attempt; `None` once the listener is closed.
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Closes every connection and waits (bounded) until they are gone, so the
    /// port is free for a restart.
    pub async fn close(&self) {
        self.endpoint
            .close(VarInt::from_u32(0), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Completes a server-side handshake.
pub async fn establish(incoming: quinn::Incoming) -> Result<Session, TransportError> {
    let remote = incoming.remote_address();
    let conn = incoming.await.map_err(|e| TransportError::Connect {
        addr: remote.to_string(),
        reason: e.to_string(),
    })?;
    Ok(Session::from_quic(conn, None))
}

/// Dials the server over QUIC.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    tls: rustls::ClientConfig,
    tuning: &TransportTuning,
    timeout: Duration,
) -> Result<Session, TransportError> {
    let connect_err = |reason: String| TransportError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let mut tls = tls;
    tls.alpn_protocols = vec![warren_proto::ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| connect_err(format!("TLS config unusable for QUIC: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = transport_config(tuning, tuning.max_streams);
    transport.keep_alive_interval(Some(AGENT_KEEP_ALIVE));
    config.transport_config(Arc::new(transport));
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let socket = udp_socket(bind, tuning.udp_buffer)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let connecting = endpoint
        .connect_with(config, addr, server_name)
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(connect_err(e.to_string())),
        Err(_) => {
            return Err(connect_err(format!(
                "no QUIC handshake within {timeout:?}: UDP to the server may be blocked \
                 (try --transport ws) or the server is down"
            )))
        }
    };
    Ok(Session::from_quic(conn, Some(endpoint)))
}
