//! Loopback network lab for tests and the benchmark harness: a gate that stands
//! in front of a server's tunnel port, passing TCP through and passing or
//! *silently dropping* UDP — what a firewall that blocks UDP looks like to an
//! agent (packets vanish; no ICMP error comes back).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};

use crate::control::AbortOnDrop;

/// Stands on one port (UDP and TCP) and forwards to `target`.
pub struct UdpGate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Bytes passed towards the target (UDP payloads plus TCP stream bytes).
    up: Arc<AtomicU64>,
    _tcp: AbortOnDrop<()>,
    _udp: AbortOnDrop<()>,
}

impl UdpGate {
    /// Binds 127.0.0.1 on one port for both protocols; UDP starts `udp_open`.
    pub async fn spawn(target: SocketAddr, udp_open: bool) -> std::io::Result<UdpGate> {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await?;
            let port = udp.local_addr()?.port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr()?;
        let open = Arc::new(AtomicBool::new(udp_open));
        let up = Arc::new(AtomicU64::new(0));
        let tcp_up = up.clone();
        let tcp_task = tokio::spawn(async move {
            while let Ok((inbound, _)) = tcp.accept().await {
                let up = tcp_up.clone();
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let (mut in_read, mut in_write) = inbound.into_split();
                        let (mut out_read, mut out_write) = outbound.into_split();
                        let upward = async {
                            let mut buf = vec![0u8; 64 * 1024];
                            loop {
                                let n = match in_read.read(&mut buf).await {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => n,
                                };
                                up.fetch_add(n as u64, Ordering::Relaxed);
                                if out_write.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            let _ = out_write.shutdown().await;
                        };
                        let downward = async {
                            let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
                            let _ = in_write.shutdown().await;
                        };
                        tokio::join!(upward, downward);
                    }
                });
            }
        });
        let udp_task = tokio::spawn(relay_udp(Arc::new(udp), target, open.clone(), up.clone()));
        Ok(UdpGate {
            addr,
            open,
            up,
            _tcp: AbortOnDrop(tcp_task),
            _udp: AbortOnDrop(udp_task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes passed towards the target so far (what crossed "the tunnel").
    pub fn bytes_up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    /// Let UDP through (`true`) or drop it silently (`false`).
    pub fn set_udp(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }
}

/// Relays datagrams between each client address and `target`, through one
/// upstream socket per client so replies find their way back.
async fn relay_udp(
    socket: Arc<UdpSocket>,
    target: SocketAddr,
    open: Arc<AtomicBool>,
    up: Arc<AtomicU64>,
) {
    let mut relays: HashMap<SocketAddr, (Arc<UdpSocket>, AbortOnDrop<()>)> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            return;
        };
        if !open.load(Ordering::SeqCst) {
            continue; // dropped on the floor, as a firewall would
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = relays.entry(client) {
            let Ok(upstream) = UdpSocket::bind("127.0.0.1:0").await else {
                continue;
            };
            if upstream.connect(target).await.is_err() {
                continue;
            }
            let upstream = Arc::new(upstream);
            let back = socket.clone();
            let from_server = upstream.clone();
            let open = open.clone();
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = from_server.recv(&mut buf).await {
                    if open.load(Ordering::SeqCst) {
                        let _ = back.send_to(&buf[..n], client).await;
                    }
                }
            });
            slot.insert((upstream, AbortOnDrop(task)));
        }
        up.fetch_add(n as u64, Ordering::Relaxed);
        let _ = relays[&client].0.send(&buf[..n]).await;
    }
}
