//! The table of agents connected to this node: client id → live connections.
//! Bounded: at most `max_agents` connections in all and `max_per_client` per
//! client id. Several connections for one client id are all kept (agent high
//! availability) and requests are spread over them round-robin.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use crate::{registry::ConnectionRecord, transport::Session};

/// One authenticated agent connection.
pub struct AgentLink {
    pub client_id: String,
    pub tunnel_ws_id: String,
    pub session: Session,
    /// Its registry row (re-recorded if this node must register again).
    pub record: ConnectionRecord,
    /// Its rooms want first-message authentication.
    pub rooms_auth: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TableFull {
    Node(usize),
    Client(usize),
}

pub struct AgentTable {
    links: Mutex<HashMap<String, Vec<Arc<AgentLink>>>>,
    total: AtomicUsize,
    next: AtomicUsize,
    max_agents: usize,
    max_per_client: usize,
}

impl AgentTable {
    pub fn new(max_agents: usize, max_per_client: usize) -> Self {
        AgentTable {
            links: Mutex::new(HashMap::new()),
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
        entry.retain(|l| !l.session.is_closed());
        if entry.len() >= self.max_per_client {
            return Err(TableFull::Client(self.max_per_client));
        }
        entry.push(link);
        self.total.fetch_add(1, Ordering::Relaxed);
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
            }
        }
    }

    /// A live connection for `client_id`, rotating among several.
    pub fn pick(&self, client_id: &str) -> Option<Arc<AgentLink>> {
        let links = self.links.lock().expect("agent table poisoned");
        let entry = links.get(client_id)?;
        let live = || entry.iter().filter(|l| !l.session.is_closed());
        let count = live().count();
        if count == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % count;
        live().nth(i).cloned()
    }

    /// The oldest live connection for `client_id`: rooms stick to one, so all
    /// of an agent's members on this node share one rooms stream.
    pub fn pick_first(&self, client_id: &str) -> Option<Arc<AgentLink>> {
        let links = self.links.lock().expect("agent table poisoned");
        links
            .get(client_id)?
            .iter()
            .find(|l| !l.session.is_closed())
            .cloned()
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
