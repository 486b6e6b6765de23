//! No tenant waits on another: an agent that completes its Hello, keeps its
//! heartbeat and then never serves a stream (a stalled or malicious tenant)
//! costs only its own requests. Everyone else's requests, WebSocket upgrades,
//! room joins and listings go on while the mute agent's are still pending,
//! and the mute agent's own end with clear errors once their deadlines pass.
//! And clients that stop reading their downloads hold only their own
//! streams: the agent's connection is not taken for dead.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

over_transports_and_versions!(
    a_mute_agent_stalls_no_one_else,
    readers_that_stop_reading_do_not_kill_the_connection,
    stalled_readers_do_not_hold_up_other_requests,
);

/// Connects as `client_id` with a real token, is welcomed, answers pings, and
/// never accepts a stream. Returns the task keeping it alive.
async fn mute_agent(
    stack: &Stack,
    t: Transport,
    client_id: &str,
    token: &str,
) -> tokio::task::JoinHandle<()> {
    // Alive on the control stream, deaf on every other (never accepted).
    let (session, heartbeat) = welcomed_session(stack, t, client_id, token, &[]).await;
    tokio::spawn(async move {
        let _session = session;
        let _ = heartbeat.await;
    })
}

async fn a_mute_agent_stalls_no_one_else(t: Transport) {
    let mut opts = StackOptions::new(t);
    opts.server.open_stream_timeout = Duration::from_secs(4);
    opts.server.response_timeout = Duration::from_secs(4);
    let stack = Stack::start(opts).await;
    let mute_id = unique("mute");
    let mute_token = warren::auth::issue_token(&stack.registry, &mute_id)
        .await
        .unwrap();
    let _mute = mute_agent(&stack, t, &mute_id, &mute_token).await;

    // The mute agent's own requests: a room join and an HTTP request, pending.
    let api = stack.api;
    let join_path = format!("/_warren/rooms/lobby?clientId={mute_id}");
    let mute_join = tokio::spawn(async move { ws_upgrade(api, &join_path, None).await });
    let mute_url = format!("http://{api}/bytes/10?clientId={mute_id}");
    let mute_get = tokio::spawn(async move { get(&mute_url).await.status() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!mute_join.is_finished() && !mute_get.is_finished());

    // Everyone else, meanwhile: HTTP, a WebSocket pass-through, the room
    // listing for the mute agent and for the good one.
    let resp = get(&stack.url("/bytes/1000")).await;
    assert_eq!(read_body(resp).await.unwrap().len(), 1000);
    let ws_path = format!("/ws/echo?clientId={}", stack.client_id);
    let (ws, _) = ws_upgrade(stack.api, &ws_path, None)
        .await
        .expect("pass-through upgrade");
    drop(ws);
    for id in [&mute_id, &stack.client_id] {
        let listing = get(&format!("http://{}/_warren/rooms?clientId={id}", stack.api)).await;
        assert_eq!(listing.status(), StatusCode::OK);
    }
    // A room join for the good agent (which has no rooms backend) gets its
    // answer from that agent at once, without queueing behind the mute one.
    let good_join = format!("/_warren/rooms/lobby?clientId={}", stack.client_id);
    match ws_upgrade(stack.api, &good_join, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert!(body.contains("no rooms backend"), "{body}");
        }
        other => panic!("expected the agent's refusal, got {other:?}"),
    }
    assert!(
        !mute_join.is_finished() && !mute_get.is_finished(),
        "all of that was served while the mute agent's requests were still waiting"
    );

    // The mute agent's requests end with clear errors at their deadlines.
    let join = tokio::time::timeout(Duration::from_secs(20), mute_join)
        .await
        .expect("the mute join ends")
        .unwrap();
    match join {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::BAD_GATEWAY, "rooms_unavailable")
        }
        other => panic!("expected a refused upgrade, got {other:?}"),
    }
    let status = tokio::time::timeout(Duration::from_secs(20), mute_get)
        .await
        .expect("the mute request ends")
        .unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    // And the good agent still serves.
    assert_eq!(get(&stack.url("/bytes/10")).await.status(), StatusCode::OK);
}

/// Downloads whose clients stop reading fill what the connection may have in
/// flight (over QUIC, one flow-control window for all streams: here 4 MiB
/// for five 1 MiB stream windows), so not even the agent's pongs can be sent.
/// The agent is congested, not dead: its connection stays up through several
/// heartbeat deadlines, and a request that waited meanwhile is answered once
/// the stalled clients give up.
async fn readers_that_stop_reading_do_not_kill_the_connection(t: Transport) {
    let mut opts = StackOptions::new(t);
    opts.server.tuning.stream_window = 1024 * 1024;
    opts.server.tuning.connection_window = 4 * 1024 * 1024;
    opts.server.probe_after = Duration::from_millis(300);
    opts.server.probe_timeout = Duration::from_millis(500);
    let mut stack = Stack::server_only(opts).await;
    let config = stack.agent_config();
    let mut status = stack.add_agent(config).await;
    let before = wait_connected(&mut status).await;

    let stalled = stalled_downloads(&stack, 6).await;
    // Let them fill their windows and the connection's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = stack.url("/bytes/1000");
    let waiting = tokio::spawn(async move { get(&url).await });
    // Several heartbeat deadlines (3 × 500 ms) and probe timeouts pass.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        *status.borrow(),
        before,
        "the congested connection was kept (not closed as dead)"
    );
    drop(stalled);
    let resp = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting request is answered")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(read_body(resp).await.unwrap().len(), 1000);
    assert_eq!(*status.borrow(), before, "still the same connection");
}

/// `n` downloads of 1 GiB whose clients read the status line and nothing more.
async fn stalled_downloads(stack: &Stack, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stalled = Vec::new();
    for _ in 0..n {
        let mut tcp = tokio::net::TcpStream::connect(stack.api).await.unwrap();
        let path = format!("/bytes/1073741824?clientId={}", stack.client_id);
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut first = [0u8; 12];
        tcp.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        stalled.push(tcp);
    }
    stalled
}

/// Forty downloads whose clients stop reading, on the default windows: more
/// than enough to fill what a QUIC connection may have in flight if each
/// held its stream's whole window. With credit each holds only what it was
/// given, so other requests on the same connection are still answered (not
/// left to their response timeout), and a download alongside still moves.
async fn stalled_readers_do_not_hold_up_other_requests(t: Transport) {
    let mut opts = StackOptions::new(t);
    opts.server.response_timeout = Duration::from_secs(20);
    let stack = Stack::start(opts).await;
    let stalled = stalled_downloads(&stack, 40).await;
    // Let them take what they can.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        let resp = get(&stack.url("/bytes/1000")).await;
        assert_eq!(resp.status(), StatusCode::OK, "answered, not timed out");
        assert_eq!(read_body(resp).await.unwrap().len(), 1000);
    }
    let resp = get(&stack.url("/bytes/33554432")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(read_body(resp).await.unwrap().len(), 32 << 20);
    drop(stalled);
}
