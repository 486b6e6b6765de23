//! Keep-alive HTTP/1.1 connections to the local service, over TLS for an
//! `https://` upstream (SNI and the certificate's check from its URL's
//! host; [`Pool::dial`] serves WebSockets too). A request takes an
//! idle connection (the most recently used: the warmest) or opens a new one;
//! once its response has been read to the end the connection goes back for
//! the next request. A response abandoned part-way (the client left) never
//! returns its connection: hyper closes it, since the rest of that response
//! is still on the wire.
//!
//! HTTP/2 (with `--upstream-http2`, or when an `https://` service picks it
//! by ALPN) is one shared connection instead, every request a stream on it,
//! dialled again when it closes.
//!
//! This is what hyper-util's pooled client does for one upstream, without its
//! per-request costs (a keyed map behind a lock, SipHash of the authority, a
//! connect future raced against every checkout), which were a tenth of the
//! agent's instructions per small request.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, time::Instant};
use tokio_util::either::Either;
use tracing::debug;

use crate::body::TunnelBody;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr} failed: {source}")]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },
}

impl PoolError {
    /// Whether the service (or the way to it) was too slow rather than absent.
    pub fn is_timeout(&self) -> bool {
        match self {
            PoolError::Connect { source, .. } => source.kind() == std::io::ErrorKind::TimedOut,
            PoolError::Http { source, .. } => source.is_timeout(),
        }
    }
}

/// TLS to an `https://` upstream: the clients and the name to check.
#[derive(Clone)]
pub(super) struct UpstreamTls {
    /// For requests: offers HTTP/2 and HTTP/1.1 by ALPN (only h2 when
    /// HTTP/2 is required).
    pub requests: tokio_rustls::TlsConnector,
    /// For WebSockets, which upgrade an HTTP/1.1 connection.
    pub websockets: tokio_rustls::TlsConnector,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl UpstreamTls {
    /// For the URL host `host` (SNI and the certificate's name; an IPv6
    /// literal without its brackets), trusting the system's roots and `ca`;
    /// `http2_only` offers requests nothing but h2.
    pub fn new(
        host: &str,
        ca: Option<&std::path::Path>,
        http2_only: bool,
    ) -> Result<Self, crate::tls::TlsError> {
        let websockets = crate::tls::upstream_client_config(ca)?;
        let mut requests = websockets.clone();
        requests.alpn_protocols = if http2_only {
            vec![b"h2".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| {
            crate::tls::TlsError::Config(rustls::Error::General(format!(
                "{host:?} is not a name TLS can check"
            )))
        })?;
        Ok(UpstreamTls {
            requests: tokio_rustls::TlsConnector::from(Arc::new(requests)),
            websockets: tokio_rustls::TlsConnector::from(Arc::new(websockets)),
            name,
        })
    }
}

/// A connection to the service: plain TCP, or TLS over it.
pub(super) type UpstreamIo = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

pub(super) struct Pool {
    /// `host:port` of the service.
    addr: String,
    tls: Option<UpstreamTls>,
    /// HTTP/2 is required (`--upstream-http2`), or the service chose it by
    /// ALPN on the last connection: requests share [`Pool::shared`].
    http2: std::sync::atomic::AtomicBool,
    /// `--upstream-http2`: HTTP/2 whatever ALPN says.
    http2_required: bool,
    /// The HTTP/2 connection, while it is open.
    shared: Mutex<Option<http2::SendRequest<TunnelBody>>>,
    /// Held while dialling the shared connection, so a burst of requests
    /// opens one, not one each.
    dialling: tokio::sync::Mutex<()>,
    connect_timeout: Duration,
    /// Connections kept beyond this are closed instead.
    max_idle: usize,
    /// A connection idle this long is closed rather than reused (services
    /// close idle keep-alive connections too, some without saying so).
    idle_timeout: Duration,
    /// Oldest first; taken from the end.
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: http1::SendRequest<TunnelBody>,
    since: Instant,
}

/// A connection lent to one request; [`Lease::release`] gives it back.
/// (An HTTP/2 stream has nothing to give back.)
pub(super) struct Lease {
    sender: Option<http1::SendRequest<TunnelBody>>,
}

/// A new connection to the service, in the protocol it speaks.
enum Conn {
    H1(http1::SendRequest<TunnelBody>),
    H2(http2::SendRequest<TunnelBody>),
}

/// HTTP/2 flow-control windows towards the service: 1 MiB a stream lets one
/// response run at loopback speed, 8 MiB for the connection lets a few do so
/// at once (hyper's 64 KiB default would hold a bulk response to a crawl).
const H2_STREAM_WINDOW: u32 = 1024 * 1024;
const H2_CONN_WINDOW: u32 = 8 * 1024 * 1024;

/// How long a connection whose response ended may take to be ready for the
/// next request before it is dropped instead (normally one turn of its task).
const READY_WAIT: Duration = Duration::from_secs(1);

impl Pool {
    pub fn new(
        addr: String,
        tls: Option<UpstreamTls>,
        http2: bool,
        connect_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        Pool {
            addr,
            tls,
            http2: http2.into(),
            http2_required: http2,
            shared: Mutex::new(None),
            dialling: tokio::sync::Mutex::new(()),
            connect_timeout,
            max_idle,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `req` (its URI in origin form, its Host set) on an idle
    /// connection, or on a new one. A request that an idle connection could
    /// not take (closed under it before anything was written) goes on a new
    /// one; one that was written is not sent twice.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<TunnelBody>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
        if self.http2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(mut sender) = self.shared_h2().await? {
                return match sender.send_request(req).await {
                    Ok(resp) => Ok((resp, Lease { sender: None })),
                    Err(e) => Err(self.http_error(e)),
                };
            }
        }
        while let Some(mut sender) = self.take_idle() {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let sender = Some(sender);
                    return Ok((resp, Lease { sender }));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) => {
                        debug!(
                            "idle upstream connection unusable ({}); trying another",
                            e.error()
                        );
                        req = back;
                    }
                    None => return Err(self.http_error(e.into_error())),
                },
            }
        }
        // Boxed: connecting is rare, and its future would otherwise make
        // every request's task (which is moved when spawned) larger.
        let sent = match Box::pin(self.connect()).await? {
            Conn::H1(mut sender) => sender.send_request(req).await.map(|resp| {
                (
                    resp,
                    Lease {
                        sender: Some(sender),
                    },
                )
            }),
            Conn::H2(mut sender) => {
                self.keep_shared(sender.clone());
                let sent = sender.send_request(req).await;
                sent.map(|resp| (resp, Lease { sender: None }))
            }
        };
        sent.map_err(|e| self.http_error(e))
    }

    /// The shared HTTP/2 connection, dialled if there is none open; `None`
    /// when the service answered a new connection in HTTP/1.1 after all (it
    /// stopped offering h2): that connection goes to the idle ones.
    async fn shared_h2(&self) -> Result<Option<http2::SendRequest<TunnelBody>>, PoolError> {
        if let Some(sender) = self.open_shared() {
            return Ok(Some(sender));
        }
        let _turn = self.dialling.lock().await;
        if let Some(sender) = self.open_shared() {
            return Ok(Some(sender));
        }
        match Box::pin(self.connect()).await? {
            Conn::H2(sender) => {
                self.keep_shared(sender.clone());
                Ok(Some(sender))
            }
            Conn::H1(sender) => {
                self.put_back(sender);
                Ok(None)
            }
        }
    }

    fn open_shared(&self) -> Option<http2::SendRequest<TunnelBody>> {
        let shared = self.shared.lock().expect("pool lock");
        shared.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn keep_shared(&self, sender: http2::SendRequest<TunnelBody>) {
        *self.shared.lock().expect("pool lock") = Some(sender);
    }

    fn http_error(&self, source: hyper::Error) -> PoolError {
        PoolError::Http {
            addr: self.addr.clone(),
            source,
        }
    }

    fn take_idle(&self) -> Option<http1::SendRequest<TunnelBody>> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(Idle { sender, since }) = idle.pop() {
            if since.elapsed() < self.idle_timeout && sender.is_ready() {
                return Some(sender);
            }
            // Closed by the service, or idle too long: dropping it closes it.
        }
        None
    }

    /// A new connection to the service for a WebSocket (TLS included,
    /// HTTP/1.1 by ALPN), within the connect timeout.
    pub async fn dial(&self) -> Result<UpstreamIo, PoolError> {
        self.dial_for(false).await
    }

    /// A new connection (TLS offering HTTP/2 when `requests`).
    async fn dial_for(&self, requests: bool) -> Result<UpstreamIo, PoolError> {
        let connect_err = |source| PoolError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let dial = async {
            let tcp = TcpStream::connect(&self.addr).await?;
            let _ = tcp.set_nodelay(true);
            Ok(match &self.tls {
                None => Either::Left(tcp),
                Some(tls) => {
                    let connector = if requests {
                        &tls.requests
                    } else {
                        &tls.websockets
                    };
                    Either::Right(Box::new(connector.connect(tls.name.clone(), tcp).await?))
                }
            })
        };
        match tokio::time::timeout(self.connect_timeout, dial).await {
            Ok(result) => result.map_err(connect_err),
            Err(_) => Err(connect_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {:?}", self.connect_timeout),
            ))),
        }
    }

    /// A new connection for requests: HTTP/2 when required or chosen by
    /// the service's ALPN (which is then remembered), else HTTP/1.1.
    async fn connect(&self) -> Result<Conn, PoolError> {
        use std::sync::atomic::Ordering;
        let io = self.dial_for(true).await?;
        let chose_h2 = match &io {
            Either::Right(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
            Either::Left(_) => false,
        };
        if self.tls.is_some() && !self.http2_required {
            // Over TLS the service says which it speaks, each time.
            self.http2.store(chose_h2, Ordering::Relaxed);
        }
        if self.http2.load(Ordering::Relaxed) {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONN_WINDOW)
                .handshake(TokioIo::new(io))
                .await
                .map_err(|e| self.http_error(e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!("upstream HTTP/2 connection ended: {e}");
                }
            });
            return Ok(Conn::H2(sender));
        }
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.http_error(e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("upstream connection ended: {e}");
            }
        });
        Ok(Conn::H1(sender))
    }

    fn put_back(&self, sender: http1::SendRequest<TunnelBody>) {
        let mut idle = self.idle.lock().expect("pool lock");
        // The oldest goes first: expired (cheap to check, it is at the front)
        // or pushed out by the cap.
        if idle
            .first()
            .is_some_and(|oldest| oldest.since.elapsed() >= self.idle_timeout)
            || idle.len() >= self.max_idle
        {
            if idle.is_empty() {
                return;
            }
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }
}

impl Lease {
    /// Gives the connection back once its response has been read to the end.
    pub async fn release(self, pool: &Pool) {
        let Some(mut sender) = self.sender else {
            return;
        };
        // Closed (`Connection: close`, an error) or stuck: not reused.
        if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, sender.ready()).await {
            pool.put_back(sender);
        }
    }
}
