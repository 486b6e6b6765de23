//! WebSocket pass-through messages (`WsMessage`) as either side reads them
//! off the tunnel: the frame decoders under the default pass-through limit
//! (16 MiB message + 1024), then `websocket::from_wire`, which turns each
//! into the tungstenite message sent to the client or upstream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::websocket::{from_wire, to_wire};
use warren_proto::WsMessage;

/// `WsLimits::default().max_message` plus the envelope (`WsLimits::frame_limit`).
const LIMIT: usize = 16 * 1024 * 1024 + 1024;

fuzz_target!(|data: &[u8]| {
    let Some(wire) = warren_fuzz::frames::<WsMessage>(data, LIMIT) else {
        return;
    };
    let message = from_wire(wire.clone());
    // Control frames hold at most 125 bytes (RFC 6455 §5.5): longer pings and
    // pongs are cut to 125, close reasons to 123 at a character boundary.
    let expected = match wire.clone() {
        WsMessage::Ping(mut p) => {
            p.truncate(125);
            WsMessage::Ping(p)
        }
        WsMessage::Pong(mut p) => {
            p.truncate(125);
            WsMessage::Pong(p)
        }
        WsMessage::Close { code, reason } if code != 1005 => {
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            WsMessage::Close {
                code,
                reason: reason[..end].to_string(),
            }
        }
        other => other,
    };
    // Data messages come back as they went (a close's code and reason too,
    // but 1005 "no code", which has no frame, and takes its reason with it).
    match (&wire, to_wire(message)) {
        (WsMessage::Close { code: 1005, .. }, Some(WsMessage::Close { code, reason })) => {
            assert_eq!((code, reason.as_str()), (1005, ""));
        }
        (_, back) => assert_eq!(back.as_ref(), Some(&expected)),
    }
});
