//! The table of agents connected to this node: client id → live connections.
//! Bounded: at most `max_agents` connections in all and `max_per_client` per
//! client id. Several connections for one client id are all kept (agent high
//! availability) and requests are spread over them round-robin.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tracing::info;

use super::cache::TtlCache;
use crate::{control::Liveness, registry::ConnectionRecord, transport::Session};

/// One authenticated agent connection.
pub struct AgentLink {
    pub client_id: String,
    pub tunnel_ws_id: String,
    pub session: Session,
    /// Its registry row (re-recorded if this node must register again).
    pub record: ConnectionRecord,
    /// Its rooms want first-message authentication.
    pub rooms_auth: bool,
    /// Asks the agent, between heartbeats, whether it is still there.
    pub liveness: Liveness,
    /// Frames heard when a probe went unanswered (0: never): while no frame
    /// has been heard since, the connection takes no new requests.
    pub suspect_at: AtomicU64,
    /// Credit for response bodies, when the agent takes it (QUIC only).
    pub credit: Option<Arc<super::credit::Ledger>>,
    /// What this connection carried (admin API, per-agent metrics).
    pub traffic: Traffic,
    /// The agent takes bodies with trailers (`Open::HttpWithTrailers`).
    pub trailers: bool,
    /// Trailers were dropped for want of that, and the log has said so (once
    /// per connection: a reason to upgrade the agent, not a line per request).
    pub trailers_dropped: std::sync::atomic::AtomicBool,
    /// The connection's span (client id, connection id), made once: each
    /// request's span is its child and adds only the request id, so a
    /// request does not format the connection's fields again.
    pub span: tracing::Span,
}

/// What one agent connection carried, counted as it goes.
#[derive(Default)]
pub struct Traffic {
    /// Response body bytes from the agent to clients.
    pub sent: AtomicU64,
    /// Request body bytes from clients to the agent.
    pub received: AtomicU64,
    /// Requests on this connection whose response is not over.
    pub in_flight: AtomicUsize,
}

/// A request on a connection, counted in flight until it is dropped.
pub struct InFlight(Arc<AgentLink>);

impl InFlight {
    pub fn new(link: &Arc<AgentLink>) -> Self {
        link.traffic.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(link.clone())
    }

    pub fn sent(&self, bytes: u64) {
        self.0.traffic.sent.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.traffic.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AgentLink {
    /// Notes trailers that this (older) agent cannot carry: logged once.
    pub fn dropped_trailers(&self, whose: &str) {
        if !self.trailers_dropped.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "{whose} trailers dropped: this agent's protocol has no trailers; upgrade the agent (logged once per connection)"
            );
        }
    }

    /// Pings the agent; whether it answered within `within`. One that did not
    /// (a killed agent leaves a QUIC connection looking open until its idle
    /// timeout) takes no new requests until it is heard from again; its
    /// requests in flight go on, and the heartbeat closes it if it is dead.
    /// (A live but stalled agent is not cut off for being slow.)
    pub async fn check(&self, within: Duration) -> bool {
        if self.session.is_closed() {
            return false;
        }
        if self.liveness.probe(within).await {
            return true;
        }
        info!(client_id = %self.client_id, conn = %self.tunnel_ws_id, "agent silent for {within:?} after a ping: no new requests on this connection until it answers");
        // +1 so that "suspected at 0 frames heard" is not "never suspected".
        self.suspect_at
            .store(self.liveness.heard() + 1, Ordering::Release);
        false
    }

    /// Whether this connection may take new requests: open, and not silent
    /// since a probe it did not answer.
    pub fn usable(&self) -> bool {
        if self.session.is_closed() {
            return false;
        }
        let suspect_at = self.suspect_at.load(Ordering::Acquire);
        suspect_at == 0 || self.liveness.heard() + 1 > suspect_at
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum TableFull {
    Node(usize),
    Client(usize),
}

pub struct AgentTable {
    links: Mutex<HashMap<String, Vec<Arc<AgentLink>>>>,
    /// Woken whenever a connection is added (requests waiting to fail over).
    inserted: Notify,
    /// Client ids whose last connection here went within the failover wait:
    /// their requests wait for a reconnection instead of failing at once.
    lost: TtlCache<()>,
    /// Client ids whose older connections are being probed, each with
    /// whether another connection arrived meanwhile (see `claim_sweep`).
    sweeping: Mutex<HashMap<String, bool>>,
    total: AtomicUsize,
    next: AtomicUsize,
    max_agents: usize,
    max_per_client: usize,
}

impl AgentTable {
    pub fn new(max_agents: usize, max_per_client: usize, failover_wait: Duration) -> Self {
        AgentTable {
            links: Mutex::new(HashMap::new()),
            inserted: Notify::new(),
            lost: TtlCache::new(failover_wait, max_agents.max(1)),
            sweeping: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            max_agents,
            max_per_client,
        }
    }

    pub fn insert(&self, link: Arc<AgentLink>) -> Result<(), TableFull> {
        let mut links = self.links.lock().expect("agent table poisoned");
        if self.total.load(Ordering::Relaxed) >= self.max_agents {
            return Err(TableFull::Node(self.max_agents));
        }
        let entry = links.entry(link.client_id.clone()).or_default();
        if entry.len() >= self.max_per_client {
            // Connections closed but not yet removed by their tasks do not
            // count against the limit. Only checked at the limit: a scan per
            // arrival made 10,000 agents of one client id cost 50 million
            // checks. What is dropped here leaves the count too (its task's
            // `remove` will not find it).
            let before = entry.len();
            entry.retain(|l| !l.session.is_closed());
            self.total
                .fetch_sub(before - entry.len(), Ordering::Relaxed);
        }
        if entry.len() >= self.max_per_client {
            return Err(TableFull::Client(self.max_per_client));
        }
        entry.push(link);
        self.total.fetch_add(1, Ordering::Relaxed);
        drop(links);
        self.inserted.notify_waiters();
        Ok(())
    }

    pub fn remove(&self, client_id: &str, tunnel_ws_id: &str) {
        let mut links = self.links.lock().expect("agent table poisoned");
        if let Some(entry) = links.get_mut(client_id) {
            let before = entry.len();
            entry.retain(|l| l.tunnel_ws_id != tunnel_ws_id);
            self.total
                .fetch_sub(before - entry.len(), Ordering::Relaxed);
            if entry.is_empty() {
                links.remove(client_id);
                self.lost.put(client_id, ());
            }
        }
    }

    /// Whether `client_id` lost its last connection here moments ago (a
    /// restarting agent, likely back soon).
    pub fn recently_lost(&self, client_id: &str) -> bool {
        if self.lost.get(client_id).is_some() {
            return true;
        }
        // Closed but not yet removed (the connection's task is still ending):
        // as lost already, or a request in that instant is refused at once
        // where a moment later it would wait for the agent to come back.
        let links = self.links.lock().expect("agent table poisoned");
        links
            .get(client_id)
            .is_some_and(|entry| !entry.is_empty() && entry.iter().all(|l| l.session.is_closed()))
    }

    /// A live connection for `client_id`, rotating among several.
    pub fn pick(&self, client_id: &str) -> Option<Arc<AgentLink>> {
        let links = self.links.lock().expect("agent table poisoned");
        let entry = links.get(client_id)?;
        let live = || entry.iter().filter(|l| l.usable());
        let count = live().count();
        if count == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % count;
        live().nth(i).cloned()
    }

    /// A live connection for `client_id` other than those in `exclude`; waits
    /// (until `deadline`) for one to connect when there is none, as when an
    /// agent is restarting.
    pub async fn other_than(
        &self,
        client_id: &str,
        exclude: &[String],
        deadline: Instant,
    ) -> Option<Arc<AgentLink>> {
        loop {
            let inserted = self.inserted.notified();
            tokio::pin!(inserted);
            inserted.as_mut().enable();
            {
                let links = self.links.lock().expect("agent table poisoned");
                let found = links.get(client_id).and_then(|entry| {
                    entry
                        .iter()
                        .rev()
                        .find(|l| l.usable() && !exclude.contains(&l.tunnel_ws_id))
                        .cloned()
                });
                if found.is_some() {
                    return found;
                }
            }
            tokio::time::timeout_at(deadline, inserted).await.ok()?;
        }
    }

    /// A new connection of `client_id` arrived: whether the caller should
    /// start probing its older connections. `false` when a sweep is already
    /// under way; that one then runs once more when it ends (`end_sweep`), so
    /// a thousand connections arriving together cost a sweep per interval,
    /// not a thousand sweeps of a thousand pings.
    pub fn claim_sweep(&self, client_id: &str) -> bool {
        let mut sweeping = self.sweeping.lock().expect("agent table poisoned");
        match sweeping.get_mut(client_id) {
            Some(again) => {
                *again = true;
                false
            }
            None => {
                sweeping.insert(client_id.to_string(), false);
                true
            }
        }
    }

    /// A sweep of `client_id` ended: whether to run another, because more
    /// connections arrived meanwhile. `false` releases the claim.
    pub fn end_sweep(&self, client_id: &str) -> bool {
        let mut sweeping = self.sweeping.lock().expect("agent table poisoned");
        match sweeping.get_mut(client_id) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                sweeping.remove(client_id);
                false
            }
        }
    }

    /// Every connection of `client_id` (live or not yet noticed dead).
    pub fn links_of(&self, client_id: &str) -> Vec<Arc<AgentLink>> {
        let links = self.links.lock().expect("agent table poisoned");
        links.get(client_id).cloned().unwrap_or_default()
    }

    /// The oldest live connection for `client_id`: rooms stick to one, so all
    /// of an agent's members on this node share one rooms stream.
    pub fn pick_first(&self, client_id: &str) -> Option<Arc<AgentLink>> {
        let links = self.links.lock().expect("agent table poisoned");
        links.get(client_id)?.iter().find(|l| l.usable()).cloned()
    }

    pub fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Every live connection (for shutdown).
    pub fn all(&self) -> Vec<Arc<AgentLink>> {
        let links = self.links.lock().expect("agent table poisoned");
        links.values().flatten().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_during_a_sweep_get_one_more_not_one_each() {
        let table = AgentTable::new(10, 10, Duration::from_secs(5));
        assert!(table.claim_sweep("a"), "the first arrival sweeps");
        // A crowd arrives while it runs: none starts its own sweep…
        for _ in 0..100 {
            assert!(!table.claim_sweep("a"));
        }
        assert!(
            table.claim_sweep("b"),
            "other client ids sweep on their own"
        );
        // …and the running one goes round once more, then lets go.
        assert!(table.end_sweep("a"));
        assert!(!table.end_sweep("a"));
        assert!(table.claim_sweep("a"), "released: the next arrival sweeps");
        assert!(!table.end_sweep("b"));
    }
}
