//! The messages. Field order is wire order (postcard encodes structs as their
//! fields in sequence, enums as a varint variant index), so variants are only
//! ever *appended*, and a new field is a new `PROTOCOL_VERSION`. `PROTOCOL.md`
//! lists every field and variant; `tests/` fail when this file and it disagree.
//!
//! Long because: every message of the protocol is here, in wire order, with
//! the unit tests of its encoding; split, the one order would be in two places.

use serde::{Deserialize, Serialize};

/// Messages on the control stream: the first bidirectional stream the agent opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Agent → server, first message: who I am and my secret.
    Hello(Hello),
    /// Server → agent: accepted; the connection's identity and the rules to follow.
    Welcome(Welcome),
    /// Server → agent: not accepted. The server closes the connection after it.
    Refused(Refusal),
    /// Either side: liveness probe; the peer answers `Pong` with the same `seq`.
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// Either side: stop opening new streams; finish those in flight, then close.
    GoAway {
        reason: String,
    },
    /// Server → agent, to an agent that said [`capability::CREDIT`]: the
    /// response body of request `request_id` may run to `offset` bytes (from
    /// the body's start). The first, `{ request_id: 0, offset: 0 }`, says the
    /// server gives credit on this connection.
    Credit {
        request_id: u64,
        offset: u64,
    },
    /// Server → agent, after `Welcome`, to an agent that said
    /// [`capability::ADDRESSES`]: where its clients reach it (the client API
    /// URL with `clientId`, and the subdomain form when the server has one).
    Addresses {
        urls: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's `PROTOCOL_VERSION`. It comes first, and stays first in every
    /// version, so a server can read it from any agent ([`peek_hello_version`]).
    pub version: u16,
    pub client_id: String,
    pub token: String,
    /// Free-form agent build, for logs (`warren/0.1.0`).
    pub agent: String,
    /// Named optional features the agent supports ([`capability`]); unknown
    /// names are ignored.
    pub capabilities: Vec<String>,
    /// Why the agent is on this transport (e.g. "WebSocket won the race: QUIC
    /// handshake not complete after 250ms"); recorded with the connection.
    pub transport_note: String,
    /// The `tunnel_ws_id` of this agent's previous connection, when it is
    /// reconnecting: the server replaces that registry row atomically.
    pub replaces: Option<String>,
}

/// Names an agent may put in `Hello::capabilities`.
pub mod capability {
    /// The rooms backend authenticates members: a member's first message is
    /// sent as `RoomEvent::Join::credentials`, and it is in only after `Accept`.
    pub const ROOMS_AUTH: &str = "rooms-auth";
    /// The agent sends a response body no further than the server's
    /// `Control::Credit` allows ([`INITIAL_CREDIT`](crate::INITIAL_CREDIT)
    /// before any), once the server has said it gives credit.
    pub const CREDIT: &str = "credit";
    /// The agent wants `Control::Addresses` after `Welcome`.
    pub const ADDRESSES: &str = "addresses";
    /// The agent takes `Open::HttpWithTrailers`: bodies as [`BodyPart`](crate::BodyPart)
    /// frames, so trailer fields can follow them both ways.
    pub const TRAILERS: &str = "trailers";
}

/// The protocol version of a `Control::Hello` frame payload (the bytes after the
/// length prefix), read without decoding the rest, whose layout depends on that
/// version. `None` if the payload is not a Hello or its version is malformed.
///
/// A Hello's payload starts, in every version, with the `Control` variant index
/// (a varint, 0) and then `version` (a varint u16); only those are checked here.
pub fn peek_hello_version(payload: &[u8]) -> Option<u16> {
    // postcard encodes the variant index as a varint u32, and u16 as a varint:
    // decoding the pair with postcard keeps its rules (length, overflow) exactly.
    let ((variant, version), _rest) = postcard::take_from_bytes::<(u32, u16)>(payload).ok()?;
    (variant == 0).then_some(version)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Unique id of this agent connection (the `connections.tunnel_ws_id` row).
    pub tunnel_ws_id: String,
    /// The server node holding the connection.
    pub node_id: String,
    /// Ping interval both sides use; a peer silent for 3 intervals is dead.
    pub heartbeat_ms: u32,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest request/response head frame the server accepts.
    pub max_head_frame: u32,
    /// Most request streams the server will have open at once on this connection.
    pub max_streams: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: RefusalCode,
    /// Human-readable reason, shown by the agent.
    pub message: String,
}

impl Refusal {
    /// The answer to a Hello of another protocol version. `Refused` is laid out
    /// the same in every version, so the agent can read why it was turned away.
    pub fn unsupported_version(agent_version: u16) -> Refusal {
        Refusal {
            code: RefusalCode::UnsupportedVersion,
            message: format!(
                "agent speaks protocol {agent_version}, this server speaks {}; upgrade the older side",
                crate::PROTOCOL_VERSION
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    /// Client id known, token wrong. Permanent: the agent must not retry.
    BadToken,
    /// No token was ever issued for this client id. Permanent.
    UnknownClient,
    /// Protocol version not spoken by this server. Permanent.
    UnsupportedVersion,
    /// Too many connections for this client id or this server. Transient.
    TooManyConnections,
    /// Server draining or restarting. Transient.
    ShuttingDown,
    /// Server-side failure (e.g. registry unreachable). Transient.
    Internal,
}

impl RefusalCode {
    /// Whether retrying later can succeed without the operator changing anything.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            RefusalCode::TooManyConnections | RefusalCode::ShuttingDown | RefusalCode::Internal
        )
    }
}

/// First frame on every stream the server opens to the agent: what the stream is for.
///
/// `S` and `B` are how its strings and header values are held: owned by
/// default, borrowed from the frame being decoded or the message being
/// encoded in [`OpenRef`] (the same bytes on the wire either way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "S: Serialize, B: AsRef<[u8]>",
    deserialize = "S: Deserialize<'de>, B: bytes::WireBytes<'de>"
))]
pub enum Open<S = String, B = Vec<u8>> {
    /// An HTTP request; the raw request body follows until FIN.
    Http(RequestHead<S, B>),
    /// A client WebSocket to pass through to the upstream at the same path
    /// (the head carries the upgrade request's headers). After a `Reply::Head`
    /// with status 101, both directions carry [`WsMessage`] frames.
    WebSocket(RequestHead<S, B>),
    /// The channel for this connection's rooms: [`RoomEvent`] frames from the
    /// server, [`RoomCommand`] frames from the agent (after a `Reply::Head`).
    Rooms,
    /// An HTTP request whose bodies may end with trailer fields (only to an
    /// agent that said [`capability::TRAILERS`]): the request body (when
    /// `body`) and the response body after `Reply::Head` are [`BodyPart`]
    /// frames, then FIN.
    HttpWithTrailers(RequestHead<S, B>),
}

/// A piece of a body on an `Open::HttpWithTrailers` stream. Data parts are
/// written and read without going through serde (see [`crate::body`]); the
/// bytes are the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "S: Serialize, B: AsRef<[u8]>",
    deserialize = "S: Deserialize<'de>, B: bytes::WireBytes<'de>"
))]
pub enum BodyPart<S = String, B = Vec<u8>> {
    /// Body bytes, at most [`MAX_DATA_PART`](crate::MAX_DATA_PART).
    Data(#[serde(with = "bytes")] B),
    /// The trailer fields: the body's last part.
    Trailers(Vec<Header<S, B>>),
}

/// [`BodyPart`] borrowing its bytes and trailer fields.
pub type BodyPartRef<'a> = BodyPart<&'a str, &'a [u8]>;

/// One WebSocket message on a pass-through stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WsMessage {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The sender's side closed with this code (1005: no code given).
    Close {
        code: u16,
        reason: String,
    },
}

/// A room message's bytes, exactly as the client or backend sent them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// A WebSocket text message (UTF-8), else binary.
    pub text: bool,
    #[serde(with = "bytes")]
    pub data: Vec<u8>,
}

/// Server → agent, on the rooms stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomEvent {
    /// A client connected to `room`. With `credentials` (the client's first
    /// message, when the agent asked for authentication) the server waits for
    /// `Accept` or `Refuse`; without, the member is in at once.
    Join {
        room: String,
        conn: u64,
        credentials: Option<Payload>,
        headers: Vec<Header>,
    },
    /// A member left (its close code), or was dropped.
    Leave { room: String, conn: u64, code: u16 },
    /// A member sent a message.
    Message {
        room: String,
        conn: u64,
        payload: Payload,
    },
}

/// Agent → server, on the rooms stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomCommand {
    Accept {
        conn: u64,
    },
    Refuse {
        conn: u64,
        code: u16,
        reason: String,
    },
    /// To one member.
    Send {
        conn: u64,
        payload: Payload,
    },
    /// To every member of `room` (but `except`); crosses the tunnel once.
    Broadcast {
        room: String,
        payload: Payload,
        except: Option<u64>,
    },
    /// Close a member's connection (only the backend can).
    Kick {
        conn: u64,
        code: u16,
        reason: String,
    },
}

/// Room close codes the server uses (WebSocket private-use range).
pub mod room_close {
    /// The room wanted a first message (credentials) and none came in time.
    pub const AUTH_TIMEOUT: u16 = 4004;
    /// The member could not keep up: its bounded queue was full.
    pub const TOO_SLOW: u16 = 4008;
    /// The agent's connection (and with it the room) went away.
    pub const AGENT_GONE: u16 = 4010;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "S: Serialize, B: AsRef<[u8]>",
    deserialize = "S: Deserialize<'de>, B: bytes::WireBytes<'de>"
))]
pub struct RequestHead<S = String, B = Vec<u8>> {
    /// Server-assigned id, carried in both sides' logs.
    pub request_id: u64,
    pub method: S,
    /// Path and query as the upstream should see them (`clientId` removed).
    pub uri: S,
    /// End-to-end headers in arrival order; repeated names are repeated entries.
    pub headers: Vec<Header<S, B>>,
    pub mode: Mode,
    /// Whether a body follows. `false`: the stream is finished right after the
    /// head, and the agent sends the upstream no body at all.
    pub body: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "S: Serialize, B: AsRef<[u8]>",
    deserialize = "S: Deserialize<'de>, B: bytes::WireBytes<'de>"
))]
pub struct Header<S = String, B = Vec<u8>> {
    pub name: S,
    #[serde(with = "bytes")]
    pub value: B,
}

/// A header borrowed from a frame being decoded (or a map being encoded).
pub type HeaderRef<'a> = Header<&'a str, &'a [u8]>;
/// [`Open`] borrowing its strings and header values: no allocation per header.
pub type OpenRef<'a> = Open<&'a str, &'a [u8]>;
/// [`Reply`] borrowing its header names and values.
pub type ReplyRef<'a> = Reply<&'a str, &'a [u8]>;

/// How the server answers the client; the agent behaves the same either way but
/// may log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Stream,
    Blocking,
}

/// First frame the agent writes back on a request stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "S: Serialize, B: AsRef<[u8]>",
    deserialize = "S: Deserialize<'de>, B: bytes::WireBytes<'de>"
))]
pub enum Reply<S = String, B = Vec<u8>> {
    /// The upstream answered; the raw response body follows until FIN. A stream
    /// reset instead of FIN means the body is truncated.
    Head(ResponseHead<S, B>),
    /// The upstream could not be asked; nothing follows.
    Error(StreamError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "S: Serialize, B: AsRef<[u8]>",
    deserialize = "S: Deserialize<'de>, B: bytes::WireBytes<'de>"
))]
pub struct ResponseHead<S = String, B = Vec<u8>> {
    pub status: u16,
    pub headers: Vec<Header<S, B>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Upstream refused the connection or failed before answering (→ 502).
    UpstreamUnavailable,
    /// Upstream did not answer in time (→ 504).
    UpstreamTimeout,
    /// The request head could not be turned into a valid upstream request (→ 400).
    BadRequest,
    /// The agent is at capacity (→ 503).
    Overloaded,
}

/// Application error codes for stream resets (QUIC `RESET_STREAM`/`STOP_SENDING`).
/// Transports without codes (yamux) only convey "reset".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ResetCode {
    /// The reader no longer wants the data (client went away).
    Cancelled = 1,
    /// The upstream failed mid-body: what was sent is truncated.
    UpstreamAborted = 2,
    /// The peer broke the protocol on this stream.
    ProtocolError = 3,
}

/// Connection close codes (QUIC `CONNECTION_CLOSE` application codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly shutdown.
    Normal = 0,
    /// Hello refused (the `Refused` frame says why).
    Refused = 1,
    /// Peer missed its heartbeats.
    Timeout = 2,
    /// Peer broke the protocol on the control stream.
    ProtocolError = 3,
    /// A newer connection took over or the operator revoked the agent.
    Replaced = 4,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A version 1 agent's Hello payload: five fields, no `transport_note` or
    /// `replaces` (client "music", token "wrn_ab", agent "warren/0.1.0",
    /// capabilities ["rooms"]).
    const V1_HELLO: &str = "0001056d757369630677726e5f61620c77617272656e2f302e312e300105726f6f6d73";

    #[test]
    fn peek_reads_the_version_of_any_hello() {
        let v1 = unhex(V1_HELLO);
        assert_eq!(peek_hello_version(&v1), Some(1));
        // The rest of a v1 Hello does not decode as this version's Hello.
        assert!(crate::decode_payload::<Control>(&v1).is_err());

        let v2 = Control::Hello(Hello {
            version: crate::PROTOCOL_VERSION,
            client_id: "music".into(),
            token: "wrn_ab".into(),
            agent: "warren/0.2.0".into(),
            capabilities: vec![capability::ROOMS_AUTH.into()],
            transport_note: "QUIC".into(),
            replaces: None,
        });
        let frame = crate::encode_frame(&v2, crate::MAX_CONTROL_FRAME).unwrap();
        assert_eq!(peek_hello_version(&frame[crate::LEN_PREFIX..]), Some(2));

        // Versions past one varint byte, up to the largest u16 (ff ff 03).
        assert_eq!(peek_hello_version(&[0x00, 0xac, 0x02]), Some(300));
        assert_eq!(
            peek_hello_version(&[0x00, 0xff, 0xff, 0x03]),
            Some(u16::MAX)
        );
    }

    #[test]
    fn peek_refuses_what_is_not_a_hello() {
        // Ping { seq: 1 }: variant 3.
        assert_eq!(peek_hello_version(&[0x03, 0x01]), None);
        // Empty, or a Hello cut before its version.
        assert_eq!(peek_hello_version(&[]), None);
        assert_eq!(peek_hello_version(&[0x00]), None);
        // A varint that does not end, or does not fit a u16.
        assert_eq!(peek_hello_version(&[0x00, 0x80]), None);
        assert_eq!(peek_hello_version(&[0x00, 0xff, 0xff, 0x04]), None);
        // A variant index that is not 0 in a longer varint form.
        assert_eq!(peek_hello_version(&[0x80, 0x01, 0x01]), None);
    }

    #[test]
    fn version_refusal_names_both_versions() {
        let refusal = Refusal::unsupported_version(1);
        assert_eq!(refusal.code, RefusalCode::UnsupportedVersion);
        assert_eq!(
            refusal.message,
            "agent speaks protocol 1, this server speaks 2; upgrade the older side"
        );
    }
}

/// Byte-string fields (`Vec<u8>`, or `&[u8]` borrowed from the frame) as
/// serde bytes. On the wire this is exactly what a sequence of `u8` is in
/// postcard (a varint length, then the bytes), so nothing changes for a peer;
/// decoding copies the bytes in one go (or not at all, borrowed) instead of
/// visiting them one by one.
pub mod bytes {
    use std::fmt;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<B: AsRef<[u8]>, S: Serializer>(value: &B, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(value.as_ref())
    }

    pub fn deserialize<'de, B: WireBytes<'de>, D: Deserializer<'de>>(d: D) -> Result<B, D::Error> {
        B::deserialize_bytes(d)
    }

    /// How a byte-string field is decoded: owned, or borrowed from the input.
    pub trait WireBytes<'de>: AsRef<[u8]> + Sized {
        fn deserialize_bytes<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
    }

    impl<'de> WireBytes<'de> for Vec<u8> {
        fn deserialize_bytes<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_byte_buf(Visitor)
        }
    }

    impl<'de: 'a, 'a> WireBytes<'de> for &'a [u8] {
        fn deserialize_bytes<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            <&'a [u8]>::deserialize(d)
        }
    }

    struct Visitor;

    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        // Self-describing formats may hand bytes over as a sequence.
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}
