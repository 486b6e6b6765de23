//! Credit for response bodies on a QUIC agent connection (PROTOCOL.md §3
//! item 6). QUIC has one flow-control window for all of a connection's
//! streams; responses whose clients stopped reading would hold all of it, and
//! then nothing moves (the agent's pongs included). So the server tells the
//! agent how far each response body may run ahead of what its client took:
//! a window per response that starts at `INITIAL_CREDIT`, doubles while the
//! client takes it quickly, halves when the client slows down, and grows only
//! while all the connection's windows together stay within a budget. A
//! stalled reader holds its window, never the connection's.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;
use warren_proto::INITIAL_CREDIT;

use crate::{control::Outbox, transport::Session};

/// Largest window one response may have: 8 MiB carries 200 MB/s across a
/// 40 ms round trip.
const MAX_WINDOW: u64 = 8 * 1024 * 1024;

/// What all of a connection's windows together may grow to: room for a few
/// fast streams at full window on top of many small ones. (The QUIC
/// connection window is set above this plus `INITIAL_CREDIT` per stream the
/// agent may have open, so credit, not QUIC, is what a stalled reader uses
/// up.)
const BUDGET: u64 = 48 * 1024 * 1024;

/// A window used up faster than this (or two round trips, if longer) is
/// doubled: its client keeps up, and a larger window lets it go faster.
const FAST: Duration = Duration::from_millis(10);

/// A window that took longer than this to use up is halved, down to
/// `INITIAL_CREDIT`: a slow client (a player at its bitrate) needs little
/// ahead, and the budget is better spent elsewhere.
const SLOW: Duration = Duration::from_secs(1);

/// One agent connection's credit.
pub(crate) struct Ledger {
    /// Where grants go out (the control stream's writer drains it).
    pub outbox: Arc<Outbox>,
    session: Session,
    /// Credit given and not yet used, over all responses.
    outstanding: AtomicU64,
}

impl Ledger {
    /// Credit for `session`; tells the agent at once that it is given.
    pub fn start(session: Session) -> Arc<Ledger> {
        let outbox = Arc::new(Outbox::default());
        outbox.put(0, 0);
        Arc::new(Ledger {
            outbox,
            session,
            outstanding: AtomicU64::new(0),
        })
    }

    /// The window accounting for one response (its body's first byte is 0).
    pub fn response(self: &Arc<Self>, request_id: u64) -> Grant {
        self.outstanding.fetch_add(INITIAL_CREDIT, Ordering::AcqRel);
        Grant {
            ledger: self.clone(),
            request_id,
            consumed: 0,
            granted: INITIAL_CREDIT,
            window: INITIAL_CREDIT,
            since: Instant::now(),
        }
    }

    fn release(&self, n: u64) {
        let _ = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| {
                Some(o.saturating_sub(n))
            });
    }
}

/// One response's credit: how much of its body the agent may send.
pub(crate) struct Grant {
    ledger: Arc<Ledger>,
    request_id: u64,
    /// Body bytes taken from the stream so far.
    consumed: u64,
    /// The offset the agent may send up to.
    granted: u64,
    window: u64,
    /// When the current window was granted.
    since: Instant,
}

impl Grant {
    /// `n` more body bytes were taken from the stream (handed to the
    /// client's connection); grants more once half the window is used.
    pub fn consumed(&mut self, n: u64) {
        self.consumed += n;
        self.ledger
            .release(n.min(self.granted.saturating_sub(self.consumed - n)));
        if self.granted.saturating_sub(self.consumed) > self.window / 2 {
            return;
        }
        let took = self.since.elapsed();
        let fast = FAST.max(self.ledger.session.rtt().unwrap_or_default() * 2);
        let ledger = &self.ledger;
        if took < fast
            && self.window < MAX_WINDOW
            && ledger.outstanding.load(Ordering::Acquire) + self.window <= BUDGET
        {
            self.window *= 2;
        } else if took > SLOW {
            self.window = (self.window / 2).max(INITIAL_CREDIT);
        }
        let offset = self.consumed + self.window;
        ledger
            .outstanding
            .fetch_add(offset - self.granted.max(self.consumed), Ordering::AcqRel);
        self.granted = offset;
        self.since = Instant::now();
        ledger.outbox.put(self.request_id, offset);
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.ledger
            .release(self.granted.saturating_sub(self.consumed));
        self.ledger.outbox.forget(self.request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger without a connection, for the arithmetic.
    fn outstanding(ledger: &Ledger) -> u64 {
        ledger.outstanding.load(Ordering::Acquire)
    }

    #[tokio::test(start_paused = true)]
    async fn windows_grow_for_fast_readers_and_shrink_for_slow_ones() {
        // Grants need a session only for its round trip; a session over a
        // pipe has none, so FAST alone decides.
        let ledger = Ledger::start(crate::transport::test_session());
        assert_eq!(ledger.outbox.take(), vec![(0, 0)], "credit is announced");
        let mut fast = ledger.response(1);
        // Read at once: each half-window used brings a doubled window.
        let mut last = INITIAL_CREDIT;
        for _ in 0..10 {
            let left = fast.granted - fast.consumed;
            fast.consumed(left);
            assert!(fast.granted > last, "a fast reader is given more");
            last = fast.granted;
        }
        assert_eq!(fast.window, MAX_WINDOW, "up to the largest window");
        // Slow now: a window that takes 2 s is halved each time.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(2)).await;
            let left = fast.granted - fast.consumed;
            fast.consumed(left);
        }
        assert_eq!(fast.window, MAX_WINDOW / 8);
        assert_eq!(outstanding(&ledger), fast.granted - fast.consumed);
        drop(fast);
        assert_eq!(
            outstanding(&ledger),
            0,
            "a finished response gives its credit back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_the_connection_not_one_stream() {
        let ledger = Ledger::start(crate::transport::test_session());
        // Streams that were read fast, then stalled: each keeps its window.
        let mut stalled = Vec::new();
        for id in 1..=40 {
            let mut g = ledger.response(id);
            for _ in 0..12 {
                let left = g.granted - g.consumed;
                g.consumed(left);
            }
            stalled.push(g);
        }
        assert!(
            outstanding(&ledger) <= BUDGET + MAX_WINDOW,
            "{} outstanding over a {BUDGET} budget",
            outstanding(&ledger)
        );
        // A new response still gets its initial credit and can move.
        let mut fresh = ledger.response(99);
        let left = fresh.granted - fresh.consumed;
        fresh.consumed(left);
        assert!(fresh.granted >= fresh.consumed + INITIAL_CREDIT);
    }
}
