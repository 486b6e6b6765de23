//! The agent's side of credit (PROTOCOL.md §3 item 6): once the server says
//! it gives credit, each response body waits for its credit before going on,
//! so that responses whose clients stopped reading cannot fill the QUIC
//! connection's one flow-control window and stop every other stream.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::watch;
use warren_proto::INITIAL_CREDIT;

/// One connection's credit: the offset each response may reach.
#[derive(Default)]
pub(super) struct CreditBook {
    /// The server said it gives credit (responses started after this obey it).
    on: AtomicBool,
    /// Responses in flight that obey credit (one entry each, removed when
    /// they end).
    responses: Mutex<HashMap<u64, watch::Sender<u64>>>,
}

impl CreditBook {
    /// A `Control::Credit` from the server.
    pub fn grant(&self, request_id: u64, offset: u64) {
        if request_id == 0 {
            self.on.store(true, Ordering::Release);
            return;
        }
        let responses = self.responses.lock().expect("credit lock");
        if let Some(granted) = responses.get(&request_id) {
            granted.send_if_modified(|at| {
                let grows = offset > *at;
                *at = (*at).max(offset);
                grows
            });
        }
    }

    /// The credit of a response just starting, or `None` when this
    /// connection has none.
    pub fn response(self: &Arc<Self>, request_id: u64) -> Option<Credit> {
        if !self.on.load(Ordering::Acquire) {
            return None;
        }
        let (tx, rx) = watch::channel(INITIAL_CREDIT);
        self.responses
            .lock()
            .expect("credit lock")
            .insert(request_id, tx);
        Some(Credit {
            book: self.clone(),
            request_id,
            granted: rx,
            sent: 0,
        })
    }
}

/// How much more of one response body may be sent.
pub(super) struct Credit {
    book: Arc<CreditBook>,
    request_id: u64,
    granted: watch::Receiver<u64>,
    sent: u64,
}

impl Credit {
    /// Waits until at least one more byte may go; how many may.
    pub async fn allowance(&mut self) -> u64 {
        loop {
            let granted = *self.granted.borrow_and_update();
            if granted > self.sent {
                return granted - self.sent;
            }
            if self.granted.changed().await.is_err() {
                // The book is gone with its connection: writes fail anyway.
                return u64::MAX;
            }
        }
    }

    /// `n` bytes of the body were sent.
    pub fn sent(&mut self, n: u64) {
        self.sent += n;
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        self.book
            .responses
            .lock()
            .expect("credit lock")
            .remove(&self.request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_wait_for_their_credit_once_it_is_on() {
        let book = Arc::new(CreditBook::default());
        assert!(
            book.response(1).is_none(),
            "no credit until the server says so"
        );
        book.grant(0, 0);
        let mut credit = book.response(2).expect("credit is on");
        assert_eq!(credit.allowance().await, INITIAL_CREDIT);
        credit.sent(INITIAL_CREDIT);
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), credit.allowance());
        assert!(waiting.await.is_err(), "used up: it waits");
        book.grant(2, INITIAL_CREDIT + 10);
        book.grant(2, 5); // offsets only grow
        assert_eq!(credit.allowance().await, 10);
        book.grant(3, 1 << 30); // another stream's credit is not this one's
        credit.sent(10);
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), credit.allowance());
        assert!(waiting.await.is_err());
        drop(credit);
        assert!(
            book.responses.lock().unwrap().is_empty(),
            "a finished response leaves the book"
        );
    }
}
