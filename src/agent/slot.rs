//! An agent's connection slots (`--connections`): each keeps one connection
//! up: dial, Hello, serve; while on WebSocket in `auto`, re-probe QUIC and move
//! over; after a loss, back off (with jitter) and dial again, naming the
//! previous connection so the server can swap its registry row.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn, Instrument};

use super::{
    backoff::Backoff,
    config::{AgentConfig, AgentError, TransportChoice},
    dial::Dialer,
    dispatch::Dispatch,
    session::{self, Attempt, Connection},
    status::AgentStatus,
};
use crate::{shutdown::Shutdown, transport::TransportKind};

/// What every slot of one agent shares.
pub(super) struct Slots {
    pub config: AgentConfig,
    pub tls: rustls::ClientConfig,
    pub dispatch: Arc<Dispatch>,
    /// One status per connection slot.
    pub status: Vec<watch::Sender<AgentStatus>>,
}

impl Slots {
    fn dialer(&self) -> Dialer<'_> {
        Dialer {
            config: &self.config,
            tls: &self.tls,
        }
    }

    /// One attempt: a transport handshake, then Hello → Welcome.
    async fn connect(&self, slot: usize, replaces: Option<String>) -> Result<Connection, Attempt> {
        let (session, note) = self.dialer().connect(slot).await.map_err(Attempt::Retry)?;
        session::hello(&self.config, session, note, replaces).await
    }

    pub async fn run_slot(
        self: Arc<Self>,
        slot: usize,
        mut shutdown: Shutdown,
    ) -> Result<(), AgentError> {
        let config = &self.config;
        let status = &self.status[slot];
        let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
        let mut previous: Option<String> = None;
        loop {
            status.send_replace(AgentStatus::Connecting);
            let attempt = tokio::select! {
                attempt = self.connect(slot, previous.clone()) => attempt,
                _ = shutdown.wait() => return Ok(()),
            };
            let reason = match attempt {
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(reason)) => reason,
                Ok(mut conn) => loop {
                    previous = Some(conn.welcome.tunnel_ws_id.clone());
                    let started = Instant::now();
                    let probing = conn.session.kind() == TransportKind::Ws
                        && config.transport == TransportChoice::Auto;
                    let (leave, leave_rx) = watch::channel(None);
                    let (went_away, mut server_left) = watch::channel(false);
                    let dispatch = self.dispatch.clone();
                    let inner = self.clone();
                    let grace = config.drain_grace;
                    let mut task = tokio::spawn(
                        async move {
                            let status = &inner.status[slot];
                            session::serve(dispatch, status, conn, leave_rx, grace, went_away).await
                        }
                        .in_current_span(),
                    );
                    let probe = async {
                        if probing {
                            self.probe_quic(slot).await
                        } else {
                            std::future::pending().await
                        }
                    };
                    tokio::select! {
                        end = &mut task => {
                            // A connection that held for a while resets the backoff;
                            // one dropped at once keeps it growing (no tight loop).
                            if started.elapsed() >= STABLE_AFTER {
                                backoff.reset();
                            }
                            break end.unwrap_or_else(|e| format!("session task failed: {e}"));
                        }
                        upgraded = probe => {
                            info!("QUIC works again: new requests move to it; requests in flight finish on WebSocket");
                            self.dispatch.metrics.quic_returned();
                            leave.send_replace(Some(config.migrate_drain));
                            // The old session's task drains and closes by itself.
                            conn = upgraded;
                        }
                        _ = async {
                            // A dropped sender means the task ended: that is the
                            // branch above, not this one.
                            if server_left.wait_for(|left| *left).await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        } => {
                            // The server is going away: requests in flight finish
                            // on this connection (its task drains and closes by
                            // itself); new ones need a new connection, now.
                            break "the server is going away".to_string();
                        }
                        _ = shutdown.wait() => {
                            let grace = config.drain_grace;
                            leave.send_replace(Some(grace));
                            let _ = tokio::time::timeout(grace + Duration::from_secs(1), task).await;
                            return Ok(());
                        }
                    }
                },
            };
            let delay = backoff.next_delay();
            warn!(slot, "{reason}; reconnecting in {delay:?}");
            self.dispatch.metrics.reconnecting();
            status.send_replace(AgentStatus::Disconnected { reason });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.wait() => return Ok(()),
            }
        }
    }

    /// While on WebSocket: retries QUIC every `quic_probe_interval` (jittered)
    /// until it is welcomed; never returns otherwise.
    async fn probe_quic(&self, slot: usize) -> Connection {
        let config = &self.config;
        loop {
            let jitter = 0.8 + 0.4 * rand::random::<f64>();
            tokio::time::sleep(config.quic_probe_interval.mul_f64(jitter)).await;
            // One probe per interval, to the preferred node.
            match self.dialer().probe_quic(slot).await {
                Ok(session) => {
                    let note = "QUIC reachable again (background probe while on WebSocket)";
                    match session::hello(config, session, note.into(), None).await {
                        Ok(conn) => return conn,
                        Err(Attempt::Retry(e))
                        | Err(Attempt::Fatal(AgentError::Refused { message: e, .. })) => {
                            debug!("QUIC probe refused: {e}")
                        }
                        Err(Attempt::Fatal(e)) => debug!("QUIC probe failed: {e}"),
                    }
                }
                Err(e) => debug!("QUIC probe failed: {e}"),
            }
        }
    }
}

/// A connection that lasted this long counts as healthy: the next loss starts
/// the backoff from its minimum again.
const STABLE_AFTER: Duration = Duration::from_secs(10);
