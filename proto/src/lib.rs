//! warren's wire protocol, as pure data: the messages agents and servers exchange,
//! and the length-prefixed framing that carries them with hard size limits.
//!
//! Nothing here does I/O (no tokio): callers read bytes however they like and hand
//! them to [`frame`]. `PROTOCOL.md` beside this crate is the normative spec, and
//! `tests/golden.rs` freezes the byte encoding so it cannot change by accident.

pub mod frame;
pub mod message;

pub use frame::{decode_frame, decode_payload, encode_frame, frame_len, FrameError, LEN_PREFIX};
pub use message::*;

/// QUIC ALPN and WebSocket subprotocol naming this protocol version.
pub const ALPN: &[u8] = b"warren/1";

/// Version carried in `Hello`; a server refuses versions it does not speak.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest control-stream frame (Hello, Welcome, Ping, ...). Control messages are
/// tiny; 64 KiB leaves room for long refusal messages without letting a peer make
/// us allocate much.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// Default largest request/response head frame. Matches the HTTP header budget
/// the server accepts from clients (hyper's default read buffer is ~400 KiB; we
/// cap lower, 256 KiB, since no sane request has more headers than that).
pub const DEFAULT_MAX_HEAD_FRAME: usize = 256 * 1024;
