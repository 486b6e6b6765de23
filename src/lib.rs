//! warren: a reverse tunnel. An agent next to a private service dials out to a
//! public server over QUIC; clients use plain HTTP against the server, naming the
//! agent, and each request travels on its own stream.
//!
//! Layout: [`transport`] is the only module that knows which transport carries a
//! session; [`server`] and [`agent`] are built on it; [`registry`] records agents
//! and connections in SQLite or MySQL; [`tls`] handles certificates and trust.
//!
//! With the `tools` feature (on by default, for the `warren` binary, the tests
//! and the benches): `bench` (the benchmark harness), `lab` (loopback network
//! faults) and `sample` (the sample upstream). They are not part of the
//! library proper: embedders build with `default-features = false`.

mod accept;
pub mod admin;
pub mod agent;
pub mod auth;
#[cfg(feature = "tools")]
pub mod bench;
pub mod body;
pub mod cluster_tls;
pub mod control;
pub mod headers;
#[cfg(feature = "tools")]
pub mod lab;
pub mod memory;
pub mod registry;
#[cfg(feature = "tools")]
pub mod sample;
pub mod server;
pub mod shutdown;
pub mod tls;
pub mod transport;
pub mod websocket;
