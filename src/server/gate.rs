//! The gate of the tunnel port: what an unauthenticated peer may cost. At
//! most `max_pending_agents` peers may be between connecting and a checked
//! Hello at once (the next waits up to `pending_wait` for a place, and the
//! port accepts nothing meanwhile, so a crowd of reconnecting agents queues
//! in the kernel's backlog and quinn's queue instead of being refused and
//! backing off); an address that keeps failing authentication spends a
//! token bucket and is then turned away before any handshake work; and the
//! log gets one summary per interval instead of a line per attempt.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tracing::warn;

/// Addresses tracked at once (failure buckets, addresses in a summary); past
/// it the table starts over, so a flood of made-up sources cannot grow memory.
const MAX_TRACKED: usize = 10_000;

/// How often the summary of turned-away peers is logged (when there are any).
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct GateLimits {
    /// Peers between connecting and a checked Hello, at once.
    pub max_pending: usize,
    /// How long the next peer waits for a pending place before it is
    /// turned away.
    pub pending_wait: Duration,
    /// Failed authentications an address may have in a burst.
    pub failure_burst: u32,
    /// One more failure is allowed per this much time.
    pub failure_refill: Duration,
}

impl Default for GateLimits {
    fn default() -> Self {
        GateLimits {
            // 256: handshakes cost about a millisecond of CPU each; this many
            // in flight keeps a 2-core box responsive while agents reconnect
            // in bulk after a restart.
            max_pending: 256,
            // 1 s: a place frees up every few milliseconds while agents are
            // admitted, and the agent's own handshake deadline is 5 s; a
            // peer still waiting after 1 s means the server is overloaded.
            pending_wait: Duration::from_secs(1),
            // 10 in a burst, then one per 6 s: a mistyped token is retried a
            // few times; a guessing flood gets ten tries a minute.
            failure_burst: 10,
            failure_refill: Duration::from_secs(6),
        }
    }
}

/// Why a peer was turned away at the gate.
#[derive(Debug, PartialEq, Eq)]
pub enum Turned {
    /// Too many peers are mid-handshake.
    Busy,
    /// This address failed authentication too often lately.
    RateLimited,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
struct Summary {
    since: Option<Instant>,
    busy: u64,
    rate_limited: u64,
    failed: u64,
    addresses: HashSet<IpAddr>,
}

pub(crate) struct Gate {
    limits: GateLimits,
    pending: Arc<Semaphore>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    summary: Mutex<Summary>,
}

impl Gate {
    pub fn new(limits: GateLimits) -> Self {
        Gate {
            pending: Arc::new(Semaphore::new(limits.max_pending.max(1))),
            limits,
            buckets: Mutex::new(HashMap::new()),
            summary: Mutex::new(Summary::default()),
        }
    }

    /// Lets a peer in, holding a pending place until its Hello is checked;
    /// waits up to `pending_wait` for a place when all are taken.
    pub async fn admit(&self, ip: IpAddr) -> Result<OwnedSemaphorePermit, Turned> {
        if self.tokens(ip) < 1.0 {
            self.note(ip, |s| s.rate_limited += 1);
            return Err(Turned::RateLimited);
        }
        let place = self.pending.clone().acquire_owned();
        match tokio::time::timeout(self.limits.pending_wait, place).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.note(ip, |s| s.busy += 1);
                Err(Turned::Busy)
            }
        }
    }

    /// An authentication from `ip` failed: it spends one token.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("gate poisoned");
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&ip) {
            buckets.clear();
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: self.limits.failure_burst as f64,
            at: now,
        });
        bucket.tokens = self.refilled(bucket, now) - 1.0;
        bucket.at = now;
        drop(buckets);
        self.note(ip, |s| s.failed += 1);
    }

    fn tokens(&self, ip: IpAddr) -> f64 {
        let buckets = self.buckets.lock().expect("gate poisoned");
        match buckets.get(&ip) {
            Some(bucket) => self.refilled(bucket, Instant::now()),
            None => self.limits.failure_burst as f64,
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let per_second = 1.0 / self.limits.failure_refill.as_secs_f64().max(0.001);
        let gained = now.duration_since(bucket.at).as_secs_f64() * per_second;
        (bucket.tokens + gained).min(self.limits.failure_burst as f64)
    }

    /// Counts an event; logs the summary once per interval.
    fn note(&self, ip: IpAddr, count: impl FnOnce(&mut Summary)) {
        let mut summary = self.summary.lock().expect("gate poisoned");
        count(&mut summary);
        if summary.addresses.len() < MAX_TRACKED {
            summary.addresses.insert(ip);
        }
        let now = Instant::now();
        let since = *summary.since.get_or_insert(now);
        if now.duration_since(since) >= SUMMARY_EVERY {
            warn!(
                failed_authentications = summary.failed,
                turned_away_rate_limited = summary.rate_limited,
                turned_away_busy = summary.busy,
                addresses = summary.addresses.len(),
                "unauthenticated agent peers in the last {:.0?}",
                now.duration_since(since)
            );
            *summary = Summary {
                since: Some(now),
                ..Summary::default()
            };
        } else if summary.failed + summary.rate_limited + summary.busy == 1 {
            // The first event of an interval is logged at once, so a single
            // mistyped token is seen without waiting for the summary.
            warn!(%ip, "an agent peer was refused at the gate; further refusals are summarised every {SUMMARY_EVERY:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_spend_a_bucket_that_refills() {
        let gate = Gate::new(GateLimits {
            max_pending: 2,
            pending_wait: Duration::from_secs(1),
            failure_burst: 3,
            failure_refill: Duration::from_secs(6),
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            drop(gate.admit(ip).await.unwrap());
            gate.failed(ip);
        }
        assert_eq!(gate.admit(ip).await.err(), Some(Turned::RateLimited));
        assert!(
            gate.admit(other).await.is_ok(),
            "other addresses are not affected"
        );
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(gate.admit(ip).await.is_ok(), "a token came back");
    }

    #[tokio::test(start_paused = true)]
    async fn pending_places_are_bounded_and_waited_for() {
        let gate = Arc::new(Gate::new(GateLimits {
            max_pending: 2,
            pending_wait: Duration::from_secs(1),
            ..GateLimits::default()
        }));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = gate.admit(ip).await.unwrap();
        let _b = gate.admit(ip).await.unwrap();
        // All places taken and none freed: turned away after the wait.
        let asked = Instant::now();
        assert_eq!(gate.admit(ip).await.err(), Some(Turned::Busy));
        assert_eq!(asked.elapsed(), Duration::from_secs(1));
        // A place freed during the wait is taken.
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit(ip).await.is_ok() }
        });
        tokio::time::advance(Duration::from_millis(300)).await;
        drop(a);
        assert!(waiting.await.unwrap());
    }
}
