//! The server's Prometheus metrics: one set of handles, made at start and
//! updated on the request path with atomic adds only (a label set is
//! resolved once, here, never per request). Figures that the server already
//! keeps (agents connected, room members, per-agent bytes) are read into
//! gauges when `/metrics` is scraped instead of being tracked twice.

use std::{sync::atomic::Ordering, time::Duration};

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

use super::{agents::AgentTable, rooms::RoomHub};
use crate::admin::{metric, ByClass};
use crate::transport::TransportKind;

type Labels = [(&'static str, &'static str); 1];
type AgentLabels = [(&'static str, String); 1];

pub(crate) struct ServerMetrics {
    registry: Registry,
    agents: Family<Labels, Gauge>,
    admitted: Counter,
    refused: Family<Labels, Counter>,
    requests: ByClass,
    errors: Family<Labels, Counter>,
    in_flight: Gauge,
    latency: Histogram,
    received: Counter,
    sent: Counter,
    forwards: Family<Labels, Counter>,
    room_members: Gauge,
    room_dropped: Counter,
    agent_sent: Family<AgentLabels, Counter>,
    agent_received: Family<AgentLabels, Counter>,
    client_failures: Family<Labels, Counter>,
}

impl ServerMetrics {
    /// `queries`: the registry's own figures, shown with the rest.
    pub fn new(queries: &crate::registry::QueryMetrics) -> Self {
        let mut registry = Registry::with_prefix("warren");
        let agents: Family<Labels, Gauge> = metric(
            &mut registry,
            "agent_connections",
            "Agent connections held by this node, by transport",
        );
        let admitted: Counter = metric(&mut registry, "agent_connections_admitted", "Agent connections admitted since start (a growing figure with a steady agent count: connections lost and made again)");
        let refused: Family<Labels, Counter> = metric(
            &mut registry,
            "agent_refusals",
            "Agents refused after their Hello, by reason",
        );
        let requests = ByClass::register(
            &mut registry,
            "client_requests",
            "Client requests answered, by status class",
        );
        let errors: Family<Labels, Counter> = metric(
            &mut registry,
            "client_request_errors",
            "Client requests the server answered with its own error, by error code",
        );
        let in_flight: Gauge = metric(
            &mut registry,
            "client_requests_in_flight",
            "Client requests whose response has not finished",
        );
        // 0.25 ms to ~65 s in 19 doublings: from a loopback round trip to
        // past the default response timeout's half.
        let latency = Histogram::new(exponential_buckets(0.000_25, 2.0, 19));
        registry.register(
            "client_request_duration_seconds",
            "Time from a client request's arrival to its response head",
            latency.clone(),
        );
        let received: Counter = metric(
            &mut registry,
            "client_received_bytes",
            "Request body bytes received from clients",
        );
        let sent: Counter = metric(
            &mut registry,
            "client_sent_bytes",
            "Response body bytes sent to clients",
        );
        let forwards: Family<Labels, Counter> = metric(
            &mut registry,
            "cluster_forwards",
            "Client requests forwarded to the node holding their agent, by outcome",
        );
        let room_members: Gauge = metric(
            &mut registry,
            "room_members",
            "Room members connected to this node",
        );
        let room_dropped: Counter = metric(
            &mut registry,
            "room_members_dropped",
            "Room members disconnected for not keeping up with their room",
        );
        let agent_sent: Family<AgentLabels, Counter> = metric(&mut registry, "agent_sent_bytes", "Response body bytes from each of the busiest agents to their clients (--metrics-top-agents)");
        let client_failures: Family<Labels, Counter> = metric(
            &mut registry,
            "client_connection_failures",
            "Client connections to the HTTPS API closed before HTTP began, by reason (handshake, timeout, plain_http, closed)",
        );
        let agent_received: Family<AgentLabels, Counter> = metric(&mut registry, "agent_received_bytes", "Request body bytes to each of the busiest agents from their clients (--metrics-top-agents)");
        queries.register(&mut registry);
        ServerMetrics {
            registry,
            agents,
            admitted,
            refused,
            requests,
            errors,
            in_flight,
            latency,
            received,
            sent,
            forwards,
            room_members,
            room_dropped,
            agent_sent,
            agent_received,
            client_failures,
        }
    }

    pub fn admitted(&self) {
        self.admitted.inc();
    }

    /// An agent refused after its Hello; `reason` is one of a fixed set.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// A request's response head is ready.
    pub fn answered(&self, status: u16, error: Option<&'static str>, elapsed: Duration) {
        self.requests.count(status);
        if let Some(code) = error {
            self.errors.get_or_create(&[("code", code)]).inc();
        }
        self.latency.observe(elapsed.as_secs_f64());
    }

    pub fn received(&self, bytes: u64) {
        self.received.inc_by(bytes);
    }

    /// A client request arrived.
    pub fn started(&self) {
        self.in_flight.inc();
    }

    /// A client request's response is over, `sent` body bytes in all.
    pub fn finished(&self, sent: u64) {
        self.in_flight.dec();
        self.sent.inc_by(sent);
    }

    /// A client connection closed for what its client did.
    pub fn connection_failed(&self, reason: &'static str) {
        self.client_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn forwarded(&self, outcome: &'static str) {
        self.forwards.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// The OpenMetrics text of every metric, with the figures read from the
    /// agent table and the rooms brought up to date first.
    /// `top_agents`: how many of the busiest agents get series of their own.
    pub fn render(&self, agents: &AgentTable, rooms: &RoomHub, top_agents: usize) -> String {
        let links = agents.all();
        for kind in [TransportKind::Quic, TransportKind::Ws] {
            let n = links.iter().filter(|l| l.session.kind() == kind).count();
            self.agents
                .get_or_create(&[("transport", kind.as_str())])
                .set(n as i64);
        }
        self.room_members.set(rooms.member_total() as i64);
        // The hub counts drops; the counter catches up with it.
        let dropped = rooms.dropped();
        self.room_dropped
            .inc_by(dropped.saturating_sub(self.room_dropped.get()));
        // The busiest agents by bytes sent, summed over their connections.
        let mut per_agent: std::collections::HashMap<&str, (u64, u64)> = Default::default();
        for link in &links {
            let entry = per_agent.entry(link.client_id.as_str()).or_default();
            entry.0 += link.traffic.sent.load(Ordering::Relaxed);
            entry.1 += link.traffic.received.load(Ordering::Relaxed);
        }
        let mut busiest: Vec<_> = per_agent.into_iter().collect();
        busiest.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
        busiest.truncate(top_agents);
        self.agent_sent.clear();
        self.agent_received.clear();
        for (client_id, (sent, received)) in busiest {
            let labels = [("client_id", client_id.to_string())];
            self.agent_sent.get_or_create(&labels).inc_by(sent);
            self.agent_received.get_or_create(&labels).inc_by(received);
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// On a response that an agent answered (an extension, never sent, put there
/// only when the access log is on): who carried it.
#[derive(Clone)]
pub(super) struct Carried {
    pub client_id: String,
    pub transport: TransportKind,
}
