//! `https://` upstreams: the agent speaks TLS to the local service (SNI and
//! the certificate check from the upstream URL's host, `--upstream-ca` for a
//! self-signed service), for plain requests, request bodies and `wss://`
//! WebSocket pass-through; a certificate it cannot trust is a clear 502,
//! never a silent downgrade.
//!
//! The service is the sample upstream behind a TLS terminator
//! (`common::HttpsService`), which records the name each client asked for.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

async fn stack_with_https_upstream(t: Transport, trust: bool) -> (Stack, HttpsService) {
    let mut stack = Stack::server_only(StackOptions::new(t)).await;
    let behind = stack.upstream.addr().to_string();
    let service = HttpsService::spawn(stack.dir.path(), behind).await;
    let mut config = stack.agent_config();
    config.upstream.url = service.url.clone();
    config.upstream.ca = trust.then(|| service.cert.clone());
    stack.add_agent(config).await;
    (stack, service)
}

async fn requests_and_websockets_reach_an_https_upstream(t: Transport) {
    let (stack, service) = stack_with_https_upstream(t, true).await;
    let resp = get(&stack.url("/bytes/200000")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        read_body(resp).await.unwrap(),
        warren::sample::pattern().slice(0..200_000)
    );
    let body = vec![3u8; 3 << 20];
    let req = http::Request::post(stack.url("/sha256"))
        .body(full(body.clone()))
        .unwrap();
    let summed = json(send(req).await).await;
    assert_eq!(summed["sha256"], sha256_hex(&body).as_str());
    let seen = json(get(&stack.url("/headers")).await).await;
    assert!(
        seen["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "host" && h[1].as_str().unwrap().starts_with("localhost:")),
        "the upstream's own Host: {seen}"
    );

    // wss:// to the upstream.
    let path = format!("/ws/echo?clientId={}", stack.client_id);
    let (mut ws, _) = ws_upgrade(stack.api, &path, None).await.unwrap();
    ws.send(Message::text("through tls")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an echo")
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("through tls"));

    let names = service.names.lock().unwrap().clone();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|n| n.as_deref() == Some("localhost")),
        "SNI from the upstream URL: {names:?}"
    );
}

/// Without `--upstream-ca` the self-signed service is not trusted: each
/// request is answered 502 `upstream_unavailable`, saying why.
async fn an_untrusted_upstream_certificate_is_a_clear_502(t: Transport) {
    let (stack, _service) = stack_with_https_upstream(t, false).await;
    let resp = get(&stack.url("/bytes/10")).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let answer = json(resp).await;
    assert_eq!(answer["error"], "upstream_unavailable", "{answer}");
    let message = answer["message"].as_str().unwrap().to_lowercase();
    assert!(message.contains("certificate"), "{answer}");
}

over_transports_and_versions!(
    requests_and_websockets_reach_an_https_upstream,
    an_untrusted_upstream_certificate_is_a_clear_502
);

/// A bad `--upstream` or `--upstream-ca` stops the agent binary at start,
/// saying what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstream_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let cases: [(&[&str], &str); 2] = [
        (
            &["--upstream", "ftp://127.0.0.1:21"],
            "must be an http:// or https:// URL",
        ),
        (
            &[
                "--upstream",
                "https://127.0.0.1:8443",
                "--upstream-ca",
                junk.to_str().unwrap(),
            ],
            "junk.pem",
        ),
    ];
    for (args, says) in cases {
        let mut all: Vec<String> = ["agent", "--server", "127.0.0.1:9", "--client-id", "x"]
            .into_iter()
            .chain(["--token", "t", "--fingerprint"])
            .map(String::from)
            .collect();
        all.push("ab".repeat(32));
        all.extend(args.iter().map(|a| a.to_string()));
        refused_at_start(&all, says).await;
    }
}
