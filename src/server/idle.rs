//! Client connections that sit idle between requests (keep-alive), oldest
//! first: at the connection limit the oldest idle one is closed to make room,
//! so a crowd of idle browsers cannot lock new clients out while connections
//! that are serving something are never touched.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a new client waits for the place of an idle connection it
/// displaced (that connection closes at once; this bounds the wait).
const SHED_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// How long an idle connection asked to make room may take to close (well
/// under [`SHED_WAIT`], which the new client waits).
pub(super) const SHED_CLOSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Why a new client connection found no place in the budget.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NoPlace {
    /// Every connection is serving something.
    AllBusy,
    /// An idle one was asked to make room but did not close in time.
    NotFreed,
}

/// A place in the client connection budget (`slots`) for a new connection
/// (TCP or QUIC): a free one, or the place of the oldest idle connection,
/// closed to make room.
pub(super) async fn place(
    slots: &Arc<Semaphore>,
    idle: &IdleConns,
) -> Result<OwnedSemaphorePermit, NoPlace> {
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        return Ok(permit);
    }
    if !idle.shed_one() {
        return Err(NoPlace::AllBusy);
    }
    match tokio::time::timeout(SHED_WAIT, slots.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(NoPlace::NotFreed),
    }
}

/// One client connection's state, as its requests and the shedder see it.
#[derive(Default)]
pub(super) struct ConnState {
    /// Requests (and response bodies still streaming) on this connection.
    busy: AtomicUsize,
    /// Told when this connection should close to make room.
    pub shed: Notify,
    /// Told when a request starts (a permit waits if no one listens yet).
    started: Notify,
    /// Whether any request ever started on this connection.
    served: std::sync::atomic::AtomicBool,
    /// Already asked to close: the next shed picks another (an HTTP/2
    /// client may take its time over a GOAWAY).
    shedding: std::sync::atomic::AtomicBool,
}

impl ConnState {
    /// Marks a request in progress until the returned guard drops (with the
    /// response body, when it has one).
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Release);
        self.started.notify_one();
        Busy(self.clone())
    }

    /// Whether a request ever started here: a connection accepted moments
    /// ago may hold its first request unread, and closing it as idle would
    /// drop that request unanswered.
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    /// Whether a request (or a response body) is in progress.
    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    /// Resolves when a request starts (at once if one did since the last
    /// call).
    pub async fn request_started(&self) {
        self.started.notified().await
    }
}

pub(super) struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every open client connection, by age.
#[derive(Default)]
pub(super) struct IdleConns {
    next: AtomicU64,
    conns: Mutex<BTreeMap<u64, Arc<ConnState>>>,
}

impl IdleConns {
    /// A new connection; it stays listed until [`Registration`] drops.
    pub fn register(self: &Arc<Self>) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::default());
        self.conns
            .lock()
            .expect("connections poisoned")
            .insert(id, state.clone());
        Registration {
            id,
            state,
            conns: self.clone(),
        }
    }

    /// Asks the oldest idle connection to close; whether there was one.
    pub fn shed_one(&self) -> bool {
        let conns = self.conns.lock().expect("connections poisoned");
        let idle = conns
            .values()
            .find(|c| !c.is_busy() && !c.shedding.load(Ordering::Acquire));
        match idle {
            Some(idle) => {
                idle.shedding.store(true, Ordering::Release);
                idle.shed.notify_one();
                true
            }
            None => false,
        }
    }
}

pub(super) struct Registration {
    id: u64,
    pub state: Arc<ConnState>,
    conns: Arc<IdleConns>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.id);
    }
}

impl IdleConns {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ConnState>>> {
        self.conns.lock().expect("connections poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_is_shed_and_busy_ones_never() {
        let conns = Arc::new(IdleConns::default());
        let old = conns.register();
        let young = conns.register();
        let busy_old = old.state.busy();
        assert!(conns.shed_one(), "the young one is idle");
        assert!(
            !conns.shed_one(),
            "it was asked already; the old one is busy"
        );
        drop(young);
        assert!(!conns.shed_one(), "the only one left is busy");
        drop(busy_old);
        assert!(conns.shed_one());
        drop(old);
        assert!(conns.lock().is_empty());
    }
}
