//! Bad input gets a clear answer and harms no one else: oversized headers,
//! slow-loris clients, and peers that speak garbage on the tunnel port.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::{
    tls::{self, Trust},
    transport::{self, Dial, TransportKind, TransportTuning},
};

over_transports!(
    oversized_headers_get_431,
    slow_loris_is_cut_off,
    garbage_on_the_tunnel_is_refused
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
    let kind = match t {
        Transport::Quic => TransportKind::Quic,
        Transport::Ws => TransportKind::Ws,
    };
    let tls = tls::client_config(&Trust::CaFile(stack.ca_path())).unwrap();
    let host = stack.tunnel.to_string();
    for junk in [
        // A frame claiming 4 GiB: refused from its prefix alone.
        Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        // A well-sized frame that is not a Hello.
        Bytes::from_static(&[0, 0, 0, 3, 0x63, 0x63, 0x63]),
    ] {
        let session = transport::connect(
            kind,
            Dial {
                addr: stack.tunnel,
                server_name: "localhost",
                host: &host,
                client_id: "rogue",
                tls: tls.clone(),
                tuning: &TransportTuning::default(),
                timeout: Duration::from_secs(5),
            },
        )
        .await
        .expect("the transport handshake itself works");
        let (mut send, _recv) = session.open().await.unwrap();
        send.write_chunk(junk).await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(15), session.closed())
            .await
            .expect("the server closes a peer that speaks garbage");
        assert!(!reason.is_empty());
    }
    // The real agent and its clients never noticed.
    let resp = get(&stack.url("/bytes/1000")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(read_body(resp).await.unwrap().len(), 1000);
}
