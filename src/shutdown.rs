//! Shutdown as an explicit signal: one [`ShutdownTrigger`] fires, every cloned
//! [`Shutdown`] wakes. Servers and agents take one and wind down cleanly.

use tokio::sync::watch;

pub struct ShutdownTrigger(watch::Sender<bool>);

#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Drop for ShutdownTrigger {
    fn drop(&mut self) {
        self.fire();
    }
}

impl Shutdown {
    /// Resolves once the trigger fires (or is dropped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    /// A periodic task's clock: its first tick one `period` from now.
    pub fn every(self, period: std::time::Duration) -> Periodic {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // A late tick (a busy machine) delays the next ones: no burst of
        // catch-up work.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Periodic {
            ticker,
            shutdown: self,
        }
    }
}

/// Ticks every period until shutdown (see [`Shutdown::every`]).
pub struct Periodic {
    ticker: tokio::time::Interval,
    shutdown: Shutdown,
}

impl Periodic {
    /// Waits for the next tick: `false` once shutdown has fired instead.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.ticker.tick() => true,
            _ = self.shutdown.wait() => false,
        }
    }
}
