//! The agent's Prometheus metrics (on its `--admin-listen`): its connections
//! by transport, reconnects and moves back to QUIC, and how the local service
//! answers. Handles are made once; counting is an atomic add.

use std::time::Duration;

use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use super::status::AgentStatus;
use crate::admin::{metric, ByClass};

type Labels = [(&'static str, &'static str); 1];

pub(super) struct AgentMetrics {
    registry: Registry,
    connected: Family<Labels, Gauge>,
    connections: Family<Labels, Counter>,
    reconnects: Counter,
    quic_returns: Counter,
    upstream: ByClass,
    upstream_errors: Family<Labels, Counter>,
    upstream_latency: Histogram,
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("warren_agent");
        let connected: Family<Labels, Gauge> = metric(
            &mut registry,
            "connections",
            "Connections to the server up now, by transport",
        );
        let connections: Family<Labels, Counter> = metric(
            &mut registry,
            "connections_established",
            "Connections to the server established (welcomed), by transport",
        );
        let reconnects: Counter = metric(
            &mut registry,
            "reconnects",
            "Connections lost (or never made) and dialled again",
        );
        let quic_returns: Counter = metric(
            &mut registry,
            "quic_returns",
            "Moves from WebSocket back to QUIC found by the background re-probe",
        );
        let upstream = ByClass::register(
            &mut registry,
            "upstream_responses",
            "Responses from the local service, by status class",
        );
        let upstream_errors: Family<Labels, Counter> = metric(
            &mut registry,
            "upstream_errors",
            "Requests the local service did not answer, by kind",
        );
        // 0.1 ms to ~3 min in 21 doublings: a loopback service to the
        // default two-minute upstream timeout.
        let upstream_latency = Histogram::new(exponential_buckets(0.000_1, 2.0, 21));
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request to the local service to its response head",
            upstream_latency.clone(),
        );
        AgentMetrics {
            registry,
            connected,
            connections,
            reconnects,
            quic_returns,
            upstream,
            upstream_errors,
            upstream_latency,
        }
    }

    pub fn established(&self, transport: &'static str) {
        self.connections
            .get_or_create(&[("transport", transport)])
            .inc();
    }

    pub fn reconnecting(&self) {
        self.reconnects.inc();
    }

    pub fn quic_returned(&self) {
        self.quic_returns.inc();
    }

    pub fn upstream_answered(&self, status: u16, elapsed: Duration) {
        self.upstream.count(status);
        self.upstream_latency.observe(elapsed.as_secs_f64());
    }

    /// `kind`: `timeout` or `unavailable`.
    pub fn upstream_failed(&self, kind: &'static str) {
        self.upstream_errors.get_or_create(&[("kind", kind)]).inc();
    }

    /// The OpenMetrics text, with the connections gauge read from the slots.
    pub fn render(&self, slots: &[tokio::sync::watch::Sender<AgentStatus>]) -> String {
        for transport in ["quic", "ws"] {
            let n = slots
                .iter()
                .filter(|s| {
                    matches!(&*s.borrow(), AgentStatus::Connected { transport: t, .. } if t == transport)
                })
                .count();
            self.connected
                .get_or_create(&[("transport", transport)])
                .set(n as i64);
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
