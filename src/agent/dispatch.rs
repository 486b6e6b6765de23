//! Where each stream the server opens goes, by its `Open` frame: an HTTP
//! request or a WebSocket to the local service (`upstream`), or the rooms
//! channel to the rooms backend (`rooms`).

use std::sync::Arc;

use tracing::{warn, Instrument};
use warren_proto::{decode_payload_borrowed, ErrorKind, Open, OpenRef, ResetCode};

use super::{
    credit::CreditBook,
    metrics::AgentMetrics,
    rooms::Rooms,
    upstream::{self, Upstream},
};
use crate::transport::{RecvStream, SendStream};

pub(super) struct Dispatch {
    pub upstream: Upstream,
    /// The backend for rooms, when the agent has one.
    pub rooms: Option<Rooms>,
    pub metrics: Arc<AgentMetrics>,
}

impl Dispatch {
    /// Serves one stream the server opened.
    pub async fn serve_stream(
        self: Arc<Self>,
        mut send: SendStream,
        mut recv: RecvStream,
        max_head: usize,
        credit: &Arc<CreditBook>,
    ) {
        // Decoded in place: the head's strings and header values are slices
        // of `frame`, which lives as long as this stream's task.
        let read = recv.read_payload(max_head).await;
        let frame = read.as_ref().map_err(|e| e.to_string());
        let open = frame.and_then(|frame| {
            decode_payload_borrowed::<OpenRef>(frame)
                .map(|open| (open, frame))
                .map_err(|e| e.to_string())
        });
        let (open, frame) = match open {
            Ok(pair) => pair,
            Err(e) => {
                warn!("unreadable stream head from the server: {e}");
                send.reset(ResetCode::ProtocolError).await;
                return;
            }
        };
        // Bodies with trailers are framed as body parts; otherwise the same.
        let framed = matches!(open, Open::HttpWithTrailers(_));
        match open {
            Open::Http(head) | Open::HttpWithTrailers(head) => {
                let span = tracing::info_span!("request", request_id = head.request_id);
                let credit = credit.response(head.request_id);
                let stream = upstream::Exchange {
                    send,
                    recv,
                    max_head,
                    credit,
                    framed,
                };
                self.upstream
                    .http(head, frame, stream)
                    .instrument(span)
                    .await
            }
            Open::WebSocket(head) => {
                let span = tracing::info_span!("websocket", request_id = head.request_id);
                // Boxed, as is the rooms arm: every stream's task is as large
                // as its largest arm, and plain requests are the common case.
                Box::pin(self.upstream.websocket(head, frame, send, recv, max_head))
                    .instrument(span)
                    .await
            }
            Open::Rooms => match &self.rooms {
                Some(rooms) => Box::pin(rooms.serve(send, recv, max_head)).await,
                None => {
                    let message = "this agent has no rooms backend (--rooms-upstream)".to_string();
                    let _ = upstream::reply_error(
                        &mut send,
                        ErrorKind::UpstreamUnavailable,
                        message,
                        max_head,
                    )
                    .await;
                }
            },
        }
    }
}
