//! Transport choice with UDP silently dropped (a gate in front of the tunnel
//! port passes TCP and swallows UDP): `auto` falls back to WebSocket, moves back
//! to QUIC once UDP gets through — without failing a request — and `quic` alone
//! fails with an error that names the likely cause.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use http::StatusCode;
use warren::{
    agent::{Agent, AgentStatus, TransportChoice},
    lab::UdpGate,
    sample::pattern_sha256,
    shutdown,
};

fn transport_of(status: &AgentStatus) -> Option<String> {
    match status {
        AgentStatus::Connected { transport, .. } => Some(transport.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_ws_when_udp_is_dropped() {
    let mut stack = Stack::server_only(StackOptions::new(Transport::Quic)).await;
    let gate = UdpGate::spawn(stack.tunnel, false).await.unwrap();
    let mut config = stack.agent_config();
    config.servers = vec![gate.addr().to_string()];
    config.transport = TransportChoice::Auto;
    let status = stack.add_agent(config).await;
    assert_eq!(transport_of(&status.borrow()).as_deref(), Some("ws"));

    let rows = stack
        .registry
        .connections_for(&stack.client_id)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].transport, "ws");
    assert!(
        rows[0].transport_note.contains("WebSocket won the race"),
        "the row says why: {:?}",
        rows[0].transport_note
    );
    let resp = get(&stack.url("/bytes/4096")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(read_body(resp).await.unwrap().len(), 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_prefers_quic_when_udp_works() {
    let mut stack = Stack::server_only(StackOptions::new(Transport::Quic)).await;
    let gate = UdpGate::spawn(stack.tunnel, true).await.unwrap();
    let mut config = stack.agent_config();
    config.servers = vec![gate.addr().to_string()];
    config.transport = TransportChoice::Auto;
    let status = stack.add_agent(config).await;
    assert_eq!(transport_of(&status.borrow()).as_deref(), Some("quic"));
    let rows = stack
        .registry
        .connections_for(&stack.client_id)
        .await
        .unwrap();
    assert!(
        rows[0].transport_note.contains("QUIC handshake completed"),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_moves_back_to_quic_without_failing_a_request() {
    let mut stack = Stack::server_only(StackOptions::new(Transport::Quic)).await;
    let gate = UdpGate::spawn(stack.tunnel, false).await.unwrap();
    let mut config = stack.agent_config();
    config.servers = vec![gate.addr().to_string()];
    config.transport = TransportChoice::Auto;
    config.quic_probe_interval = Duration::from_millis(300);
    let mut status = stack.add_agent(config).await;
    assert_eq!(transport_of(&status.borrow()).as_deref(), Some("ws"));

    // A paced download in flight on WebSocket: 8 MiB in 64 KiB chunks every 20 ms
    // (~2.5 s), so it is still running when the agent moves.
    let long_url = stack.url("/bytes/8388608?chunk=65536&delay_ms=20");
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let long = tokio::spawn(async move {
        use http_body_util::BodyExt;
        let resp = get(&long_url).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut all = Vec::new();
        // Bytes are flowing on WebSocket before UDP opens: really mid-download.
        while all.is_empty() {
            let frame = body.frame().await.expect("a first chunk")?;
            all.extend_from_slice(&frame.into_data().unwrap_or_default());
        }
        let _ = started_tx.send(());
        while let Some(frame) = body.frame().await {
            all.extend_from_slice(&frame?.into_data().unwrap_or_default());
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(all)
    });
    // Meanwhile a steady stream of short requests.
    let url = stack.url("/bytes/1000");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_requests = stop.clone();
    let steady = tokio::spawn(async move {
        let mut served = 0;
        while !stop_requests.load(std::sync::atomic::Ordering::SeqCst) {
            let resp = get(&url).await;
            assert_eq!(
                resp.status(),
                StatusCode::OK,
                "no request fails during the move"
            );
            assert_eq!(read_body(resp).await.expect("complete body").len(), 1000);
            served += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        served
    });
    started.await.expect("the download started");
    gate.set_udp(true);
    tokio::time::timeout(
        Duration::from_secs(15),
        status.wait_for(|s| transport_of(s).as_deref() == Some("quic")),
    )
    .await
    .expect("the agent moves to QUIC once UDP gets through")
    .unwrap();
    assert!(
        !long.is_finished(),
        "the move happened while the download was in flight (else this test proves nothing)"
    );

    let body = long
        .await
        .unwrap()
        .expect("the download in flight finishes on WebSocket");
    assert_eq!(sha256_hex(&body), pattern_sha256(0, 8 * 1024 * 1024));
    // The WebSocket connection goes once drained; the QUIC one stays.
    let registry = stack.registry.clone();
    let client_id = stack.client_id.clone();
    let settled = eventually(Duration::from_secs(10), || async {
        let rows = registry.connections_for(&client_id).await.unwrap();
        rows.len() == 1 && rows[0].transport == "quic"
    })
    .await;
    assert!(settled, "only the QUIC connection remains");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let served = steady.await.unwrap();
    assert!(
        served > 10,
        "requests kept flowing during the move ({served})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_only_with_udp_dropped_fails_clearly() {
    let stack = Stack::server_only(StackOptions::new(Transport::Quic)).await;
    let gate = UdpGate::spawn(stack.tunnel, false).await.unwrap();
    let mut config = stack.agent_config();
    config.servers = vec![gate.addr().to_string()];
    config.transport = TransportChoice::Quic;
    config.connect_timeout = Duration::from_millis(500);
    let agent = Agent::new(config).unwrap();
    let mut status = agent.status();
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(agent.run(stop));
    let reason = wait_disconnected(&mut status).await;
    assert!(
        reason.contains("UDP"),
        "the error names the likely cause: {reason}"
    );
    assert!(
        reason.contains("--transport ws"),
        "and the way out: {reason}"
    );
    trigger.fire();
    task.await.unwrap().unwrap();
}
