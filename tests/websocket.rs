//! Client WebSockets through the tunnel to the upstream's own WebSocket
//! endpoint: text, binary (1 MiB), subprotocols, close codes both ways.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

over_transports!(
    echo_text_and_binary,
    close_codes_flow_both_ways,
    upgrade_to_missing_route_is_an_http_error
);

async fn ws_connect(
    addr: std::net::SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> (Ws, http::Response<Option<Vec<u8>>>) {
    ws_upgrade(addr, path, protocol)
        .await
        .expect("upgrade succeeds")
}

fn path(stack: &Stack, p: &str) -> String {
    format!("{p}?clientId={}", stack.client_id)
}

async fn echo_text_and_binary(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let (mut ws, resp) = ws_connect(
        stack.api,
        &path(&stack, "/ws/echo"),
        Some("chat.v2, chat.v1"),
    )
    .await;
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "chat.v2",
        "the upstream's subprotocol choice reaches the client"
    );
    ws.send(Message::Text("héllo".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("héllo".into())
    );
    let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::Binary(big.clone().into())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Binary(b) => assert_eq!(b.as_ref(), big.as_slice(), "1 MiB binary round trip"),
        other => panic!("expected binary, got {other:?}"),
    }
    // Many small messages keep their order.
    for i in 0..100 {
        ws.send(Message::Text(format!("m{i}").into()))
            .await
            .unwrap();
    }
    for i in 0..100 {
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Text(format!("m{i}").into())
        );
    }
}

async fn close_codes_flow_both_ways(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    // Client closes with 4001: the upstream sees 4001.
    let (mut ws, _) = ws_connect(stack.api, &path(&stack, "/ws/echo"), None).await;
    ws.send(warren::websocket::close(4001, "client done"))
        .await
        .unwrap();
    let stats = stack.upstream.stats();
    let seen = eventually(Duration::from_secs(5), || async {
        stats
            .last_ws_close
            .load(std::sync::atomic::Ordering::SeqCst)
            == 4001
    })
    .await;
    assert!(seen, "upstream saw close code 4001");

    // The upstream closes with 4002: the client gets 4002 and the reason.
    let (mut ws, _) = ws_connect(stack.api, &path(&stack, "/ws/echo"), None).await;
    ws.send(Message::Text("close:4002".into())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4002);
            assert_eq!(frame.reason.as_str(), "asked to close");
        }
        other => panic!("expected close 4002, got {other:?}"),
    }
}

async fn upgrade_to_missing_route_is_an_http_error(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    match ws_upgrade(stack.api, &path(&stack, "/no-such-ws"), None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 404, "the upstream's own answer comes back");
        }
        other => panic!("expected an HTTP error, got {:?}", other.map(|_| ())),
    }
}
