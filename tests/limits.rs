//! Limits that limit: every configured cap holds against what a client can
//! open, including connections that left HTTP behind by upgrading.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

over_transports!(
    upgraded_websockets_count_toward_the_client_connection_limit,
    a_body_that_goes_quiet_is_cut_off_as_an_error
);

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

/// An upstream that sends its head and 10 bytes, then nothing: the client
/// gets those bytes and then an error (never a clean short body), once the
/// body idle timeout passes, instead of an open connection for ever.
async fn a_body_that_goes_quiet_is_cut_off_as_an_error(t: Transport) {
    let mut opts = StackOptions::new(t);
    opts.server.body_idle_timeout = Duration::from_secs(1);
    let stack = Stack::start(opts).await;
    let resp = get(&stack.url("/bytes/1000?chunk=10&delay_ms=60000")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(20), read_body(resp))
        .await
        .expect("the quiet body ends well before the upstream would go on");
    assert!(
        body.is_err(),
        "a cut-off body is an error, not a short success"
    );
    // Paced bodies with shorter pauses are untouched.
    let resp = get(&stack.url("/bytes/1000?chunk=250&delay_ms=200")).await;
    assert_eq!(read_body(resp).await.unwrap().len(), 1000);
}
