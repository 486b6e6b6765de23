//! The embedded agent: a program's own service (here the `embedded_files`
//! example, serving a 64 MiB file with `Range`) behind an agent built with
//! `Agent::builder`, through a real server over each transport.

mod common;

#[path = "../examples/embedded_files.rs"]
mod example;

use common::*;
use http::{Request, StatusCode};
use warren::{agent::Agent, tls::Trust};

over_transports_and_versions!(an_embedded_agent_serves_a_file_with_ranges);

const SIZE: usize = 64 * 1024 * 1024;

async fn an_embedded_agent_serves_a_file_with_ranges(t: Transport) {
    let mut stack = Stack::server_only(StackOptions::new(t)).await;
    let files = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(files.path().join("track.ogg"), &data).unwrap();
    let agent = Agent::builder()
        .server(&stack.tunnel.to_string())
        .client_id(&stack.client_id)
        .token(&stack.token)
        .trust(Trust::CaFile(stack.ca_path()))
        .configure(|c| c.transport = t.choice())
        .serve(example::file_service(files.path().to_path_buf()))
        .unwrap();
    stack.add_running(agent).await;

    // The whole file, streamed through the tunnel.
    let resp = get(&stack.url("/track.ogg")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-length"], SIZE.to_string());
    let body = read_body(resp).await.unwrap();
    assert_eq!(body.len(), SIZE);
    assert_eq!(sha256_hex(&body), sha256_hex(&data));

    // Ranges: the middle, an open end, a suffix; each the exact bytes.
    for (range, start, end) in [
        ("bytes=1000000-1999999", 1_000_000, 2_000_000),
        (&format!("bytes={}-", SIZE - 10) as &str, SIZE - 10, SIZE),
        ("bytes=-4096", SIZE - 4096, SIZE),
    ] {
        let req = Request::get(stack.url("/track.ogg"))
            .header("range", range)
            .body(empty())
            .unwrap();
        let resp = send(req).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            resp.headers()["content-range"],
            format!("bytes {start}-{}/{SIZE}", end - 1)
        );
        let body = read_body(resp).await.unwrap();
        assert_eq!(&body[..], &data[start..end], "{range}");
    }
    let req = Request::get(stack.url("/track.ogg"))
        .header("range", format!("bytes={SIZE}-"))
        .body(empty())
        .unwrap();
    let resp = send(req).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(resp.headers()["content-range"], format!("bytes */{SIZE}"));

    // What is not a file under the directory is not served; a WebSocket
    // (which an in-process service does not take) is refused in words.
    for path in ["/missing.ogg", "/../track.ogg", "/%2e%2e/etc/passwd"] {
        let resp = get(&stack.url(path)).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let refused = ws_upgrade(
        stack.api,
        &format!("/ws?clientId={}", stack.client_id),
        None,
    )
    .await;
    assert!(refused.is_err(), "an in-process service took a WebSocket");

    for agent in stack.take_agents() {
        agent.stop().await;
    }
}
