//! Limits that limit: every configured cap holds against what a client can
//! open, including connections that left HTTP behind by upgrading.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

over_transports!(upgraded_websockets_count_toward_the_client_connection_limit);

async fn upgraded_websockets_count_toward_the_client_connection_limit(t: Transport) {
    let mut opts = StackOptions::new(t);
    opts.server.max_client_connections = 4;
    let stack = Stack::start(opts).await;
    let path = format!("/ws/echo?clientId={}", stack.client_id);
    let mut sockets = Vec::new();
    for _ in 0..4 {
        sockets.push(ws_upgrade(stack.api, &path, None).await.expect("upgrade").0);
    }
    // Four sockets hold all four places: a fifth connection is turned away.
    let refused = client()
        .request(
            http::Request::get(stack.url("/bytes/10"))
                .body(empty())
                .unwrap(),
        )
        .await;
    assert!(
        refused.is_err(),
        "a fifth connection is refused: {:?}",
        refused.map(|r| r.status())
    );
    // Closing one socket gives its place back.
    drop(sockets.pop());
    let ok = eventually(Duration::from_secs(10), || {
        let url = stack.url("/bytes/10");
        async move {
            client()
                .request(http::Request::get(url).body(empty()).unwrap())
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
    assert!(ok, "the place freed by a closed socket is usable again");
}
