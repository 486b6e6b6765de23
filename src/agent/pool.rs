//! Keep-alive HTTP/1.1 connections to the local service, over TLS for an
//! `https://` upstream (SNI and the certificate's check from its URL's
//! host; [`Pool::dial`] serves WebSockets too). A request takes an
//! idle connection (the most recently used: the warmest) or opens a new one;
//! once its response has been read to the end the connection goes back for
//! the next request. A response abandoned part-way (the client left) never
//! returns its connection: hyper closes it, since the rest of that response
//! is still on the wire.
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
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
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

/// TLS to an `https://` upstream: the client and the name to check.
#[derive(Clone)]
pub(super) struct UpstreamTls {
    pub connector: tokio_rustls::TlsConnector,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl UpstreamTls {
    /// For the URL host `host` (SNI and the certificate's name; an IPv6
    /// literal without its brackets), trusting the system's roots and `ca`.
    pub fn new(host: &str, ca: Option<&std::path::Path>) -> Result<Self, crate::tls::TlsError> {
        let client = crate::tls::upstream_client_config(ca)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| {
            crate::tls::TlsError::Config(rustls::Error::General(format!(
                "{host:?} is not a name TLS can check"
            )))
        })?;
        Ok(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(std::sync::Arc::new(client)),
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
pub(super) struct Lease {
    sender: http1::SendRequest<TunnelBody>,
}

/// How long a connection whose response ended may take to be ready for the
/// next request before it is dropped instead (normally one turn of its task).
const READY_WAIT: Duration = Duration::from_secs(1);

impl Pool {
    pub fn new(
        addr: String,
        tls: Option<UpstreamTls>,
        connect_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        Pool {
            addr,
            tls,
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
        while let Some(mut sender) = self.take_idle() {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease { sender })),
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
        let mut sender = Box::pin(self.connect()).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, Lease { sender })),
            Err(e) => Err(self.http_error(e)),
        }
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

    /// A new connection to the service (TLS included), within the connect
    /// timeout.
    pub async fn dial(&self) -> Result<UpstreamIo, PoolError> {
        let connect_err = |source| PoolError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let dial = async {
            let tcp = TcpStream::connect(&self.addr).await?;
            let _ = tcp.set_nodelay(true);
            Ok(match &self.tls {
                None => Either::Left(tcp),
                Some(tls) => Either::Right(Box::new(
                    tls.connector.connect(tls.name.clone(), tcp).await?,
                )),
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

    async fn connect(&self) -> Result<http1::SendRequest<TunnelBody>, PoolError> {
        let io = self.dial().await?;
        let (sender, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.http_error(e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("upstream connection ended: {e}");
            }
        });
        Ok(sender)
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
    pub async fn release(mut self, pool: &Pool) {
        // Closed (`Connection: close`, an error) or stuck: not reused.
        if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, self.sender.ready()).await {
            pool.put_back(self.sender);
        }
    }
}
