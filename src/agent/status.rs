//! What an agent's connection is doing, published on a watch channel for
//! callers (tests, embedders) that want to wait on it.

/// What the agent is doing, for callers that want to wait on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStatus {
    Connecting,
    Connected {
        tunnel_ws_id: String,
        node_id: String,
        transport: String,
    },
    Disconnected {
        reason: String,
    },
}
