//! warren's wire protocol, as pure data: the messages agents and servers exchange,
//! and the length-prefixed framing that carries them with hard size limits.
//!
//! Nothing here does I/O (no tokio): callers read bytes however they like and hand
//! them to [`frame`]. `PROTOCOL.md` beside this crate is the normative spec of
//! protocol version 2 ([`PROTOCOL_VERSION`]); `tests/` check the crate against it:
//! the golden byte examples in the document, and every message's fields and
//! variants against the document's type listings.

pub mod body;
pub mod frame;
pub mod message;

pub use body::{data_prefix, part_start, DataPrefix, PartStart, MAX_DATA_PART};

pub use frame::{
    decode_frame, decode_payload, decode_payload_borrowed, encode_frame, frame_len, FrameError,
    LEN_PREFIX,
};
pub use message::*;

/// QUIC ALPN. It names the framing family, not the protocol version: it stays
/// `warren/1` while the version is negotiated in `Hello` (see [`PROTOCOL_VERSION`]),
/// so a server can still read an older agent's Hello and refuse it in words.
pub const ALPN: &[u8] = b"warren/1";

/// Version carried in `Hello`. A server reads it first ([`peek_hello_version`]) and
/// refuses any other version with [`Refusal::unsupported_version`]. Version 2 added
/// `Hello::transport_note` and `Hello::replaces`.
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest control-stream frame (Hello, Welcome, Ping, ...). Control messages are
/// tiny; 64 KiB leaves room for long refusal messages without letting a peer make
/// us allocate much.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;

/// Default largest request/response head frame. Matches the HTTP header budget
/// the server accepts from clients (hyper's default read buffer is ~400 KiB; we
/// cap lower, 256 KiB, since no sane request has more headers than that).
pub const DEFAULT_MAX_HEAD_FRAME: usize = 256 * 1024;

/// Response body bytes an agent with credit may send on a request stream
/// before the server's first `Control::Credit` for it: 64 KiB, one round trip's
/// worth for a start, and small enough that a thousand stalled streams hold
/// little of what the connection may have in flight.
pub const INITIAL_CREDIT: u64 = 64 * 1024;

/// Largest frame on a rooms stream: a member's message may be as large as the
/// default WebSocket message limit (16 MiB), and the `RoomEvent`/`RoomCommand`
/// around it (room name, ids, flags) needs a little more.
pub const ROOM_FRAME_LIMIT: usize = 16 * 1024 * 1024 + 4096;
