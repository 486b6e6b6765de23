//! Loopback network lab for tests and the benchmark harness: a gate that stands
//! in front of a server's tunnel port, passing TCP through and passing or
//! *silently dropping* UDP — what a firewall that blocks UDP looks like to an
//! agent (packets vanish; no ICMP error comes back).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::control::AbortOnDrop;

/// Stands on one port (UDP and TCP) and forwards to `target`.
pub struct UdpGate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
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
        let tcp_task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = tcp.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        let udp_task = tokio::spawn(relay_udp(Arc::new(udp), target, open.clone()));
        Ok(UdpGate {
            addr,
            open,
            _tcp: AbortOnDrop(tcp_task),
            _udp: AbortOnDrop(udp_task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Let UDP through (`true`) or drop it silently (`false`).
    pub fn set_udp(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }
}

/// Relays datagrams between each client address and `target`, through one
/// upstream socket per client so replies find their way back.
async fn relay_udp(socket: Arc<UdpSocket>, target: SocketAddr, open: Arc<AtomicBool>) {
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
        let _ = relays[&client].0.send(&buf[..n]).await;
    }
}
