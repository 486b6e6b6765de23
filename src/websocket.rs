//! WebSocket pass-through, shared by server and agent: converting messages to
//! and from their wire form, and relaying one WebSocket over one tunnel stream
//! with a message-size limit and an idle timeout. A close on either side is
//! forwarded with its code and reason.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    tungstenite::{
        protocol::{frame::coding::CloseCode, CloseFrame, WebSocketConfig},
        Message,
    },
    WebSocketStream,
};
use warren_proto::WsMessage;

use crate::transport::{RecvStream, SendStream};

/// Limits for pass-through WebSockets (and room members).
#[derive(Debug, Clone)]
pub struct WsLimits {
    /// Largest message, either way. 16 MiB: room for large binary messages,
    /// bounded so one client cannot make a node buffer without limit.
    pub max_message: usize,
    /// Close (1001) after this long without a message either way.
    pub idle_timeout: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            max_message: 16 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl WsLimits {
    pub fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message))
            // tungstenite allocates its read buffer up front (128 KiB by
            // default): a room of thousands of members would cost that
            // each. Larger messages still arrive whole, in more reads.
            .read_buffer_size(READ_BUFFER)
    }

    /// Frame limit on the tunnel stream: the message plus its envelope.
    fn frame_limit(&self) -> usize {
        self.max_message + 1024
    }
}

/// Bytes read from a WebSocket at once: a few frames of chat or playback
/// state; 4 KiB keeps an idle member's socket small.
const READ_BUFFER: usize = 4 * 1024;

/// No close code given (RFC 6455 §7.1.5).
pub const NO_STATUS: u16 = 1005;

pub fn to_wire(message: Message) -> Option<WsMessage> {
    Some(match message {
        Message::Text(t) => WsMessage::Text(t.as_str().to_owned()),
        Message::Binary(b) => WsMessage::Binary(b.to_vec()),
        Message::Ping(p) => WsMessage::Ping(p.to_vec()),
        Message::Pong(p) => WsMessage::Pong(p.to_vec()),
        Message::Close(frame) => match frame {
            Some(f) => WsMessage::Close {
                code: f.code.into(),
                reason: f.reason.as_str().to_owned(),
            },
            None => WsMessage::Close {
                code: NO_STATUS,
                reason: String::new(),
            },
        },
        Message::Frame(_) => return None,
    })
}

pub fn from_wire(message: WsMessage) -> Message {
    match message {
        WsMessage::Text(t) => Message::Text(t.into()),
        WsMessage::Binary(b) => Message::Binary(b.into()),
        // A peer's over-long ping or pong is cut to what a control frame holds.
        WsMessage::Ping(mut p) => {
            p.truncate(MAX_CONTROL_PAYLOAD);
            Message::Ping(p.into())
        }
        WsMessage::Pong(mut p) => {
            p.truncate(MAX_CONTROL_PAYLOAD);
            Message::Pong(p.into())
        }
        WsMessage::Close { code, reason } => close(code, &reason),
    }
}

/// A room payload as the WebSocket message it came from (text stays text).
pub fn payload_message(payload: warren_proto::Payload) -> Message {
    if payload.text {
        match String::from_utf8(payload.data) {
            Ok(text) => Message::Text(text.into()),
            Err(e) => Message::Binary(bytes::Bytes::from(e.into_bytes())),
        }
    } else {
        Message::Binary(bytes::Bytes::from(payload.data))
    }
}

/// A data message's bytes as a room payload; `None` for control messages.
pub fn message_payload(message: Message) -> Option<warren_proto::Payload> {
    match message {
        Message::Text(t) => Some(warren_proto::Payload {
            text: true,
            data: t.as_bytes().to_vec(),
        }),
        Message::Binary(b) => Some(warren_proto::Payload {
            text: false,
            data: b.to_vec(),
        }),
        _ => None,
    }
}

/// A close frame with `code` and `reason`. The reason is cut (at a character
/// boundary) to the 123 bytes a control frame has room for (RFC 6455 §5.5):
/// longer would make an invalid frame that peers drop the connection over.
pub fn close(code: u16, reason: &str) -> Message {
    if code == NO_STATUS {
        Message::Close(None)
    } else {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: fit(reason, MAX_CLOSE_REASON).into(),
        }))
    }
}

/// Control frames carry at most 125 bytes; a close frame's code takes 2.
const MAX_CONTROL_PAYLOAD: usize = 125;
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// `text` cut to at most `max` bytes at a character boundary.
fn fit(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn now_ms(start: tokio::time::Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Relays `ws` over the tunnel stream until either side closes, the idle
/// timeout passes, or `stop` resolves (the node is shutting down); returns
/// the close code that ended it. The last two close both sides with 1001.
pub async fn relay<S>(
    ws: WebSocketStream<S>,
    mut send: SendStream,
    mut recv: RecvStream,
    limits: &WsLimits,
    stop: impl std::future::Future<Output = ()>,
) -> u16
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let start = tokio::time::Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let limit = limits.frame_limit();
    // WebSocket → tunnel.
    let outbound = async {
        while let Some(message) = ws_rx.next().await {
            let Ok(message) = message else {
                // A broken connection, or a message over the limit (1009).
                let _ = send
                    .write_frame(
                        &WsMessage::Close {
                            code: 1009,
                            reason: "message too big or connection broken".into(),
                        },
                        limit,
                    )
                    .await;
                let _ = send.finish().await;
                return 1006;
            };
            last.store(now_ms(start), Ordering::Relaxed);
            let Some(wire) = to_wire(message) else {
                continue;
            };
            let closing = match &wire {
                WsMessage::Close { code, .. } => Some(*code),
                _ => None,
            };
            if send.write_frame(&wire, limit).await.is_err() {
                return 1006;
            }
            if let Some(code) = closing {
                let _ = send.finish().await;
                return code;
            }
        }
        let _ = send
            .write_frame(
                &WsMessage::Close {
                    code: 1006,
                    reason: String::new(),
                },
                limit,
            )
            .await;
        let _ = send.finish().await;
        1006
    };
    // Tunnel → WebSocket.
    let inbound = async {
        loop {
            let wire = match recv.read_frame::<WsMessage>(limit).await {
                Ok(wire) => wire,
                Err(_) => {
                    let _ = ws_tx.send(close(1011, "tunnel stream ended")).await;
                    return 1011;
                }
            };
            last.store(now_ms(start), Ordering::Relaxed);
            let closing = match &wire {
                WsMessage::Close { code, .. } => Some(*code),
                _ => None,
            };
            if ws_tx.send(from_wire(wire)).await.is_err() {
                return 1006;
            }
            if let Some(code) = closing {
                return code;
            }
        }
    };
    let idle = async {
        loop {
            tokio::time::sleep(limits.idle_timeout / 4).await;
            let quiet = now_ms(start).saturating_sub(last.load(Ordering::Relaxed));
            if quiet >= limits.idle_timeout.as_millis() as u64 {
                return;
            }
        }
    };
    let code = {
        tokio::pin!(outbound, inbound);
        tokio::select! {
            code = &mut outbound => {
                // Give the other side a moment to answer the close, then stop.
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut inbound).await;
                Ok(code)
            }
            code = &mut inbound => {
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut outbound).await;
                Ok(code)
            }
            _ = idle => Err("idle timeout"),
            _ = stop => Err("server shutting down"),
        }
    };
    match code {
        Ok(code) => code,
        Err(reason) => {
            let _ = ws_tx.send(close(1001, reason)).await;
            let bye = WsMessage::Close {
                code: 1001,
                reason: reason.into(),
            };
            let _ = send.write_frame(&bye, limit).await;
            let _ = send.finish().await;
            1001
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_stay_within_their_125_bytes() {
        let Message::Close(Some(frame)) = close(4000, &"é".repeat(100)) else {
            panic!("a close frame")
        };
        assert!(frame.reason.len() <= 123);
        assert!(
            frame.reason.as_str().chars().all(|c| c == 'é'),
            "cut at a character boundary"
        );
        let Message::Ping(p) = from_wire(WsMessage::Ping(vec![1; 300])) else {
            panic!("a ping")
        };
        assert_eq!(p.len(), 125);
    }
}
