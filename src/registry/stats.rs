//! How the registry's queries fare: their latency and their failures, for
//! the server's metrics. Only the queries on an agent's or a client's path
//! (admission, routing, tokens, leases) are timed; rare maintenance is not.

use std::{future::Future, time::Instant};

use prometheus_client::{
    metrics::{
        counter::Counter,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry as MetricsRegistry,
};

use super::{QueryMetrics, Registry, RegistryError};

impl Default for QueryMetrics {
    fn default() -> Self {
        QueryMetrics {
            // 0.1 ms to ~3 s in 16 doublings: a local SQLite read to a
            // registry timing out (the admission timeout is 3 s).
            duration: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            errors: Counter::default(),
        }
    }
}

impl QueryMetrics {
    pub fn register(&self, registry: &mut MetricsRegistry) {
        registry.register(
            "registry_query_duration_seconds",
            "Time taken by the registry queries on agents' and clients' paths",
            self.duration.clone(),
        );
        registry.register(
            "registry_query_errors",
            "Registry queries that failed",
            self.errors.clone(),
        );
    }
}

impl Registry {
    /// The figures of this registry's queries.
    pub fn query_metrics(&self) -> &QueryMetrics {
        &self.metrics
    }

    /// Runs `query`, recording how long it took and whether it failed.
    pub(super) async fn timed<T>(
        &self,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, RegistryError> {
        let started = Instant::now();
        let result = query.await;
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.errors.inc();
        }
        Ok(result?)
    }

    /// Whether the database answers (`/readyz`).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        self.timed(sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(drop)
    }
}
