//! Loopback network lab for tests and the benchmark harness: a gate that stands
//! in front of a server's tunnel port, passing TCP through and passing or
//! *silently dropping* UDP — what a firewall that blocks UDP looks like to an
//! agent (packets vanish; no ICMP error comes back); and a link that delays
//! both protocols, for round trips longer than loopback's.

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

/// Stands on one port (UDP and TCP) in front of `target` and delays every
/// datagram and every chunk of a TCP stream by `one_way`, both ways: a long
/// path (`20 ms` each way is a 40 ms round trip) on loopback, for measuring
/// what windows and handshakes cost where round trips are real.
///
/// Each direction holds at most [`DELAY_QUEUE`] datagrams (more are dropped,
/// as a router's full queue would) or, for TCP, that many 64 KiB chunks (then
/// it stops reading and TCP's own flow control pushes back).
pub struct DelayLink {
    addr: SocketAddr,
    _tcp: AbortOnDrop<()>,
    _udp: AbortOnDrop<()>,
}

/// Datagrams (or TCP chunks) in flight per direction: at 1,200 bytes a
/// datagram, 65,536 of them are ~80 MB, several times the bandwidth-delay
/// product of 1 GB/s at 40 ms.
const DELAY_QUEUE: usize = 65_536;

impl DelayLink {
    pub async fn spawn(
        target: SocketAddr,
        one_way: std::time::Duration,
    ) -> std::io::Result<DelayLink> {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await?;
            let port = udp.local_addr()?.port();
            if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        // Large socket buffers: bursts at line rate must not be lost here.
        let socket = socket2::SockRef::from(&udp);
        let _ = socket.set_recv_buffer_size(8 << 20);
        let _ = socket.set_send_buffer_size(8 << 20);
        let addr = udp.local_addr()?;
        let tcp_task = tokio::spawn(async move {
            while let Ok((inbound, _)) = tcp.accept().await {
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        delay_stream(in_read, out_write, one_way),
                        delay_stream(out_read, in_write, one_way),
                    );
                });
            }
        });
        let udp_task = tokio::spawn(delay_udp(Arc::new(udp), target, one_way));
        Ok(DelayLink {
            addr,
            _tcp: AbortOnDrop(tcp_task),
            _udp: AbortOnDrop(udp_task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
async fn delay_stream(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: std::time::Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(DELAY_QUEUE);
    let reader = async move {
        loop {
            let mut buf = vec![0u8; 64 * 1024];
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.truncate(n);
            if tx
                .send((tokio::time::Instant::now() + delay, buf))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = rx.recv().await {
            if at > tokio::time::Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

type Delayed = tokio::sync::mpsc::Sender<(tokio::time::Instant, Vec<u8>)>;

/// Sends what `rx` holds through `send`, each datagram when its time comes.
fn spawn_delayed_sender<F>(send: F) -> (Delayed, AbortOnDrop<()>)
where
    F: Fn(Vec<u8>) -> futures_util::future::BoxFuture<'static, ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(DELAY_QUEUE);
    let task = tokio::spawn(async move {
        while let Some((at, datagram)) = rx.recv().await {
            if at > tokio::time::Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            send(datagram).await;
        }
    });
    (tx, AbortOnDrop(task))
}

/// [`relay_udp`] with a delay each way, through one upstream socket per
/// client address.
async fn delay_udp(socket: Arc<UdpSocket>, target: SocketAddr, delay: std::time::Duration) {
    struct Relay {
        toward_target: Delayed,
        _sender: AbortOnDrop<()>,
        _receiver: AbortOnDrop<()>,
    }
    let mut relays: HashMap<SocketAddr, Relay> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            return;
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = relays.entry(client) {
            let Ok(upstream) = UdpSocket::bind("127.0.0.1:0").await else {
                continue;
            };
            if upstream.connect(target).await.is_err() {
                continue;
            }
            let up_ref = socket2::SockRef::from(&upstream);
            let _ = up_ref.set_recv_buffer_size(8 << 20);
            let _ = up_ref.set_send_buffer_size(8 << 20);
            let upstream = Arc::new(upstream);
            let to_target = upstream.clone();
            let (toward_target, sender) = spawn_delayed_sender(move |d| {
                let s = to_target.clone();
                Box::pin(async move {
                    let _ = s.send(&d).await;
                })
            });
            let back = socket.clone();
            let (toward_client, back_sender) = spawn_delayed_sender(move |d| {
                let s = back.clone();
                Box::pin(async move {
                    let _ = s.send_to(&d, client).await;
                })
            });
            let from_target = upstream.clone();
            let receiver = tokio::spawn(async move {
                let _keep = back_sender;
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = from_target.recv(&mut buf).await {
                    // Full: dropped, as a router's full queue would.
                    let _ = toward_client
                        .try_send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
                }
            });
            slot.insert(Relay {
                toward_target,
                _sender: sender,
                _receiver: AbortOnDrop(receiver),
            });
        }
        let _ = relays[&client]
            .toward_target
            .try_send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
    }
}
