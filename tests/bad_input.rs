//! Bad input gets a clear answer and harms no one else: oversized headers,
//! slow-loris clients, and peers that speak garbage on the tunnel port.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

over_transports!(
    oversized_headers_get_431,
    slow_loris_is_cut_off,
    garbage_on_the_tunnel_is_refused,
    silent_peer_is_cut_off_at_the_handshake_timeout,
    protocol_1_agent_is_refused_in_words,
    a_second_hello_is_refused_without_echoing_the_token,
    two_different_client_ids_are_ambiguous,
    websocket_keys_must_be_nonces
);

async fn oversized_headers_get_431(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let req = http::Request::get(stack.url("/bytes/10"))
        .header("x-big", "v".repeat(300 * 1024))
        .body(empty())
        .unwrap();
    let status = match client().request(req).await {
        Ok(resp) => resp.status(),
        Err(e) => panic!("the server should answer, not drop: {e}"),
    };
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // Everyone else is served as before.
    assert_eq!(get(&stack.url("/bytes/10")).await.status(), StatusCode::OK);
}

async fn slow_loris_is_cut_off(t: Transport) {
    let mut opts = StackOptions::new(t);
    opts.server.header_read_timeout = Duration::from_millis(500);
    let stack = Stack::start(opts).await;
    let mut slow = tokio::net::TcpStream::connect(stack.api).await.unwrap();
    slow.write_all(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // Meanwhile, a normal client is unaffected.
    assert_eq!(get(&stack.url("/bytes/10")).await.status(), StatusCode::OK);
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "the server hangs up on a client that never finishes its headers"
    );
}

async fn garbage_on_the_tunnel_is_refused(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    for (junk, why) in [
        // A frame claiming 4 GiB: refused from its prefix alone.
        (
            Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
            "exceeds the limit",
        ),
        // A well-sized frame that is not a Hello.
        (
            Bytes::from_static(&[0, 0, 0, 3, 0x63, 0x63, 0x63]),
            "the first message was not a Hello",
        ),
    ] {
        let session = raw_session(&stack, t, "rogue").await;
        let (mut send, _recv) = session.open().await.unwrap();
        send.write_chunk(junk).await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(15), session.closed())
            .await
            .expect("the server closes a peer that speaks garbage");
        // QUIC carries the server's reason; yamux has no close reasons.
        if t == Transport::Quic {
            assert!(reason.contains(why), "close reason {reason:?} says {why:?}");
        }
    }
    // The real agent and its clients never noticed.
    let resp = get(&stack.url("/bytes/1000")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(read_body(resp).await.unwrap().len(), 1000);
}

/// The handshake timeout covers the Hello too: a peer that opens the control
/// stream and then stays silent (here: half a length prefix) is closed once
/// it runs out, while the real agent keeps serving.
async fn silent_peer_is_cut_off_at_the_handshake_timeout(t: Transport) {
    let mut opts = StackOptions::new(t);
    opts.server.handshake_timeout = Duration::from_secs(1);
    let stack = Stack::start(opts).await;
    let session = raw_session(&stack, t, "rogue").await;
    let started = tokio::time::Instant::now();
    let (mut send, _recv) = session.open().await.unwrap();
    send.write_chunk(Bytes::from_static(&[0, 0])).await.unwrap();
    // Meanwhile the real agent serves.
    let resp = get(&stack.url("/bytes/1000")).await;
    assert_eq!(read_body(resp).await.unwrap().len(), 1000);
    let reason = tokio::time::timeout(Duration::from_secs(10), session.closed())
        .await
        .expect("the server closes a peer that never finishes its Hello");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "closed only after the timeout, not at once ({took:?})"
    );
    if t == Transport::Quic {
        assert!(
            reason.contains("no Hello in time"),
            "close reason: {reason}"
        );
    }
    assert_eq!(get(&stack.url("/bytes/10")).await.status(), StatusCode::OK);
}

/// An agent of protocol version 1 (whose Hello had five fields) gets a
/// refusal it can decode, naming both versions, instead of a dropped
/// connection.
async fn protocol_1_agent_is_refused_in_words(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let session = raw_session(&stack, t, "rogue").await;
    let (mut send, mut recv) = session.open().await.unwrap();
    // Control::Hello (0), version 1, client_id "music", token "wrn_ab",
    // agent "warren/0.1.0", capabilities ["rooms"]: the v1 bytes.
    let mut payload = vec![0x00, 0x01];
    for s in ["music", "wrn_ab", "warren/0.1.0"] {
        payload.push(s.len() as u8);
        payload.extend_from_slice(s.as_bytes());
    }
    payload.extend_from_slice(&[0x01, 0x05]);
    payload.extend_from_slice(b"rooms");
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    send.write_chunk(Bytes::from(frame)).await.unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        recv.read_frame::<warren_proto::Control>(warren_proto::MAX_CONTROL_FRAME),
    )
    .await
    .expect("the server answers")
    .expect("a readable answer");
    let warren_proto::Control::Refused(refusal) = reply else {
        panic!("expected a refusal, got {reply:?}");
    };
    assert_eq!(refusal.code, warren_proto::RefusalCode::UnsupportedVersion);
    assert!(
        refusal.message.contains('1') && refusal.message.contains('2'),
        "names both versions: {}",
        refusal.message
    );
    assert_eq!(get(&stack.url("/bytes/10")).await.status(), StatusCode::OK);
}

/// A second Hello after Welcome is a protocol error, named but never printed:
/// the token it carries does not go back over the wire in the close reason.
async fn a_second_hello_is_refused_without_echoing_the_token(t: Transport) {
    use warren_proto::{Control, MAX_CONTROL_FRAME};
    let stack = Stack::start(StackOptions::new(t)).await;
    let session = raw_session(&stack, t, "rogue").await;
    let (mut send, mut recv) = session.open().await.unwrap();
    let hello = hello(&stack.client_id, &stack.token, "replayer");
    send.write_frame(&hello, MAX_CONTROL_FRAME).await.unwrap();
    let welcome = recv.read_frame::<Control>(MAX_CONTROL_FRAME).await.unwrap();
    assert!(matches!(welcome, Control::Welcome(_)));
    send.write_frame(&hello, MAX_CONTROL_FRAME).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(10), session.closed())
        .await
        .expect("the server closes a peer that says Hello twice");
    assert!(
        !reason.contains(&stack.token),
        "the token is not echoed: {reason}"
    );
    if t == Transport::Quic {
        assert!(
            reason.contains("unexpected Hello"),
            "close reason: {reason}"
        );
    }
    assert_eq!(get(&stack.url("/bytes/10")).await.status(), StatusCode::OK);
}

/// `?clientId=a&clientId=b` used to go to `a` and pass `clientId=b` on to the
/// service; it is a clear 400 now. The same id twice is still one id.
async fn two_different_client_ids_are_ambiguous(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let url = format!(
        "http://{}/headers?clientId={}&clientId=someone-else",
        stack.api, stack.client_id
    );
    let resp = get(&url).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(resp).await["error"], "ambiguous_client_id");
    let same = format!(
        "http://{}/headers?clientId={id}&clientId={id}",
        stack.api,
        id = stack.client_id
    );
    assert_eq!(get(&same).await.status(), StatusCode::OK);
}

/// RFC 6455 §4.2.1: the key is a base64-encoded 16-byte nonce. Anything else
/// is refused before a stream to the agent is opened.
async fn websocket_keys_must_be_nonces(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let huge = "A".repeat(64 * 1024);
    for key in [
        "",
        "not base64 at all!!!!!==",
        "dGhlIHNhbXBsZSBub25jZQ",
        huge.as_str(),
    ] {
        for path in ["/ws/echo", "/_warren/rooms/lobby"] {
            let req = http::Request::get(stack.url(path))
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", key)
                .body(empty())
                .unwrap();
            let resp = send(req).await;
            assert_eq!(
                resp.status(),
                StatusCode::BAD_REQUEST,
                "key of {} bytes on {path}",
                key.len()
            );
            assert_eq!(json(resp).await["error"], "bad_websocket_handshake");
        }
    }
    // A proper key still works.
    let path = format!("/ws/echo?clientId={}", stack.client_id);
    assert!(ws_upgrade(stack.api, &path, None).await.is_ok());
}
