//! Shared by the test files: the text of PROTOCOL.md, and the Rust values of its
//! golden examples (§7) under the document's names. The document is the source
//! of truth; these values are what it says, written as Rust so they can be
//! encoded and compared.

// Each test file uses part of this module.
#![allow(dead_code)]

use warren_proto::*;

/// PROTOCOL.md, read at build time (a change to it rebuilds the tests).
pub const DOC: &str = include_str!("../../PROTOCOL.md");

/// One golden example per message kind, by enum.
pub struct Examples {
    pub control: Vec<(&'static str, Control)>,
    pub open: Vec<(&'static str, Open)>,
    pub reply: Vec<(&'static str, Reply)>,
    pub body: Vec<(&'static str, BodyPart)>,
    pub ws: Vec<(&'static str, WsMessage)>,
    pub room_event: Vec<(&'static str, RoomEvent)>,
    pub room_command: Vec<(&'static str, RoomCommand)>,
}

fn header(name: &str, value: &[u8]) -> Header {
    Header {
        name: name.into(),
        value: value.to_vec(),
    }
}

fn payload(text: bool, data: &[u8]) -> Payload {
    Payload {
        text,
        data: data.to_vec(),
    }
}

pub fn examples() -> Examples {
    Examples {
        control: vec![
            (
                "control.hello",
                Control::Hello(Hello {
                    version: 2,
                    client_id: "music".into(),
                    token: "wrn_ab".into(),
                    agent: "warren/0.1.0".into(),
                    capabilities: vec!["rooms".into()],
                    transport_note: "q".into(),
                    replaces: Some("t-0".into()),
                }),
            ),
            (
                "control.welcome",
                Control::Welcome(Welcome {
                    tunnel_ws_id: "t-1".into(),
                    node_id: "n1".into(),
                    heartbeat_ms: 10_000,
                    limits: Limits {
                        max_head_frame: 262_144,
                        max_streams: 1024,
                    },
                }),
            ),
            (
                "control.refused",
                Control::Refused(Refusal {
                    code: RefusalCode::BadToken,
                    message: "no".into(),
                }),
            ),
            (
                "control.refused_version",
                Control::Refused(Refusal::unsupported_version(1)),
            ),
            ("control.ping", Control::Ping { seq: 300 }),
            ("control.pong", Control::Pong { seq: 1 }),
            (
                "control.goaway",
                Control::GoAway {
                    reason: "bye".into(),
                },
            ),
            (
                "control.credit",
                Control::Credit {
                    request_id: 7,
                    offset: 131_072,
                },
            ),
            (
                "control.addresses",
                Control::Addresses {
                    urls: vec!["https://music.example.com/".into()],
                },
            ),
        ],
        open: vec![
            (
                "open.http",
                Open::Http(RequestHead {
                    request_id: 7,
                    method: "GET".into(),
                    uri: "/a?b=1".into(),
                    headers: vec![header("x", &[0xff])],
                    mode: Mode::Blocking,
                    body: false,
                }),
            ),
            (
                "open.websocket",
                Open::WebSocket(RequestHead {
                    request_id: 8,
                    method: "GET".into(),
                    uri: "/chat".into(),
                    headers: vec![header("sec-websocket-protocol", b"chat")],
                    mode: Mode::Stream,
                    body: false,
                }),
            ),
            ("open.rooms", Open::Rooms),
            (
                "open.http_with_trailers",
                Open::HttpWithTrailers(RequestHead {
                    request_id: 9,
                    method: "POST".into(),
                    uri: "/g".into(),
                    headers: vec![header("te", b"trailers")],
                    mode: Mode::Stream,
                    body: true,
                }),
            ),
        ],
        reply: vec![
            (
                "reply.head",
                Reply::Head(ResponseHead {
                    status: 206,
                    headers: vec![header("content-range", b"bytes 0-1/2")],
                }),
            ),
            (
                "reply.error",
                Reply::Error(StreamError {
                    kind: ErrorKind::UpstreamTimeout,
                    message: "slow".into(),
                }),
            ),
        ],
        ws: vec![
            ("ws.text", WsMessage::Text("hi".into())),
            ("ws.binary", WsMessage::Binary(vec![0, 0xff])),
            ("ws.ping", WsMessage::Ping(vec![1])),
            ("ws.pong", WsMessage::Pong(vec![1])),
            (
                "ws.close",
                WsMessage::Close {
                    code: 1000,
                    reason: "bye".into(),
                },
            ),
        ],
        body: vec![
            ("body.data", BodyPart::Data(b"hi".to_vec())),
            (
                "body.trailers",
                BodyPart::Trailers(vec![header("grpc-status", b"0")]),
            ),
        ],
        room_event: vec![
            (
                "room_event.join",
                RoomEvent::Join {
                    room: "lobby".into(),
                    conn: 7,
                    credentials: Some(payload(true, b"tok")),
                    headers: vec![header("x", b"1")],
                },
            ),
            (
                "room_event.leave",
                RoomEvent::Leave {
                    room: "lobby".into(),
                    conn: 7,
                    code: 1001,
                },
            ),
            (
                "room_event.message",
                RoomEvent::Message {
                    room: "lobby".into(),
                    conn: 7,
                    payload: payload(false, &[1, 2]),
                },
            ),
        ],
        room_command: vec![
            ("room_command.accept", RoomCommand::Accept { conn: 8 }),
            (
                "room_command.refuse",
                RoomCommand::Refuse {
                    conn: 8,
                    code: 4003,
                    reason: "bad token".into(),
                },
            ),
            (
                "room_command.send",
                RoomCommand::Send {
                    conn: 7,
                    payload: payload(true, b"hi"),
                },
            ),
            (
                "room_command.broadcast",
                RoomCommand::Broadcast {
                    room: "lobby".into(),
                    payload: payload(true, b"hi"),
                    except: Some(7),
                },
            ),
            (
                "room_command.kick",
                RoomCommand::Kick {
                    conn: 7,
                    code: 4000,
                    reason: "bye".into(),
                },
            ),
        ],
    }
}
