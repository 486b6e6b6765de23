//! End-to-end HTTP through the tunnel: real server, agent and upstream on
//! loopback, a real HTTP client; every test runs over each transport, each
//! client version (HTTP/1.1, HTTP/2, HTTP/3) and against an http:// and an
//! https:// upstream.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use warren::sample::{pattern, pattern_sha256};

const MIB: u64 = 1024 * 1024;

over_transports_versions_and_upstreams!(
    download_64mib_stream_mode,
    download_64mib_blocking_mode,
    range_and_head,
    upload_64mib_streamed,
    repeated_headers_and_binary_bodies,
    forwarding_headers_and_warren_params,
    header_and_subdomain_routing,
    stalled_reader_does_not_stall_others,
    client_gone_aborts_upstream,
    truncated_upstream_is_an_error,
    blocking_over_cap_is_502,
    unknown_and_offline_agents,
    upstream_refused_and_timeout,
);

async fn download_64mib_stream_mode(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let resp = get(&stack.url(&format!("/bytes/{}", 64 * MIB))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-length"],
        (64 * MIB).to_string().as_str()
    );
    let body = read_body(resp).await.expect("complete body");
    assert_eq!(body.len() as u64, 64 * MIB);
    assert_eq!(sha256_hex(&body), pattern_sha256(0, 64 * MIB));
}

async fn download_64mib_blocking_mode(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    // Chunked upstream pacing does not matter: blocking mode answers with a
    // Content-Length once everything has arrived.
    let resp = get(&stack.url(&format!("/bytes/{}?mode=blocking", 64 * MIB))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-length"],
        (64 * MIB).to_string().as_str()
    );
    let body = read_body(resp).await.expect("complete body");
    assert_eq!(sha256_hex(&body), pattern_sha256(0, 64 * MIB));

    // The header form selects the mode too.
    let req = Request::get(stack.url("/bytes/1000"))
        .header("x-warren-mode", "blocking")
        .body(empty())
        .unwrap();
    let resp = send(req).await;
    assert_eq!(resp.headers()["content-length"], "1000");
    assert_eq!(read_body(resp).await.unwrap(), pattern().slice(0..1000));
}

async fn range_and_head(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let len = 10 * MIB;
    let req = Request::get(stack.url(&format!("/bytes/{len}")))
        .header("range", "bytes=1000-1999")
        .body(empty())
        .unwrap();
    let resp = send(req).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 1000-1999/{len}").as_str()
    );
    let body = read_body(resp).await.unwrap();
    assert_eq!(body, pattern().slice(1000..2000));

    let req = Request::head(stack.url(&format!("/bytes/{len}")))
        .body(empty())
        .unwrap();
    let resp = send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-length"], len.to_string().as_str());
    assert!(read_body(resp).await.unwrap().is_empty());

    // HEAD in blocking mode keeps the upstream's Content-Length.
    let req = Request::head(stack.url(&format!("/bytes/{len}?mode=blocking")))
        .body(empty())
        .unwrap();
    let resp = send(req).await;
    assert_eq!(resp.headers()["content-length"], len.to_string().as_str());
}

async fn upload_64mib_streamed(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let total = 64 * MIB;
    // A streamed (chunked, no Content-Length) upload of 64 MiB.
    let chunks = (0..total / (256 * 1024)).map(|i| {
        let start = (i * 256 * 1024) as usize % pattern().len();
        Ok::<_, std::io::Error>(http_body::Frame::data(
            pattern().slice(start..start + 256 * 1024),
        ))
    });
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync();
    let req = Request::post(stack.url("/sha256")).body(body).unwrap();
    let resp = send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json(resp).await;
    assert_eq!(v["bytes"], total);
    assert_eq!(v["sha256"], pattern_sha256(0, total));
}

async fn repeated_headers_and_binary_bodies(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let resp = get(&stack.url("/cookies")).await;
    let cookies: Vec<_> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        cookies,
        ["a=1; Path=/", "b=2; Path=/", "c=3; Path=/; HttpOnly"]
    );

    let req = Request::get(stack.url("/headers"))
        .header("x-multi", "one")
        .header("x-multi", "two")
        .body(empty())
        .unwrap();
    let v = json(send(req).await).await;
    let multi: Vec<&str> = v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "x-multi")
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(multi, ["one", "two"]);

    // Every byte value, both ways, for each method that carries a body.
    let all: Bytes = (0..=255u8).cycle().take(300_000).collect::<Vec<_>>().into();
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let req = Request::builder()
            .method(method.clone())
            .uri(stack.url("/echo"))
            .header("content-type", "application/octet-stream")
            .body(full(all.clone()))
            .unwrap();
        let resp = send(req).await;
        assert_eq!(resp.status(), StatusCode::OK, "{method}");
        assert_eq!(resp.headers()["content-type"], "application/octet-stream");
        assert_eq!(read_body(resp).await.unwrap(), all, "{method}");
    }
}

async fn forwarding_headers_and_warren_params(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let req = Request::get(format!(
        "http://{}/headers?a=1&clientId={}&b=two%20words&mode=stream",
        stack.api, stack.client_id
    ))
    .header("connection", "keep-alive, x-hop")
    .header("x-hop", "must not pass")
    .header("keep-alive", "timeout=5")
    .header("x-forwarded-for", "203.0.113.7")
    .header("x-end-to-end", "passes")
    .body(empty())
    .unwrap();
    let v = json(send(req).await).await;
    assert_eq!(
        v["uri"], "/headers?a=1&b=two%20words",
        "warren's parameters removed, the rest byte-exact"
    );
    let headers = v["headers"].as_array().unwrap();
    let get = |name: &str| {
        headers
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_string())
    };
    assert_eq!(get("x-hop"), None);
    assert_eq!(get("keep-alive"), None);
    assert_eq!(get("x-end-to-end").as_deref(), Some("passes"));
    assert_eq!(
        get("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(get("x-forwarded-proto").as_deref(), Some(client_scheme()));
    assert_eq!(get("x-forwarded-host"), Some(stack.api.to_string()));
    // The upstream sees its own authority as Host by default.
    assert_eq!(get("host"), Some(stack.upstream_authority()));
}

async fn header_and_subdomain_routing(t: Transport) {
    let mut opts = StackOptions::new(t);
    opts.server.base_domain = Some("tunnel.test".into());
    let stack = Stack::start(opts).await;
    let req = Request::get(format!("http://{}/bytes/10", stack.api))
        .header("x-warren-client", &stack.client_id)
        .body(empty())
        .unwrap();
    let resp = send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-warren-request-id"));
    assert_eq!(read_body(resp).await.unwrap(), pattern().slice(0..10));

    let req = Request::get(format!("http://{}/bytes/10", stack.api))
        .header("host", format!("{}.tunnel.test:8080", stack.client_id))
        .body(empty())
        .unwrap();
    let resp = send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(read_body(resp).await.unwrap(), pattern().slice(0..10));

    let resp = get(&format!("http://{}/bytes/10", stack.api)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(resp).await["error"], "missing_client_id");

    let resp = get(&format!("http://{}/x?clientId=bad/id", stack.api)).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(resp).await["error"], "invalid_client_id");
}

async fn stalled_reader_does_not_stall_others(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    // Five clients start huge downloads and never read past the head.
    let mut stalled = Vec::new();
    for _ in 0..5 {
        let resp = get(&stack.url(&format!("/bytes/{}", 1024 * MIB))).await;
        assert_eq!(resp.status(), StatusCode::OK);
        stalled.push(resp);
    }
    // A sixth client on the same agent still gets its whole download.
    let resp = get(&stack.url(&format!("/bytes/{}", 64 * MIB))).await;
    let body = tokio::time::timeout(Duration::from_secs(60), read_body(resp))
        .await
        .expect("the concurrent download makes progress to its end")
        .expect("complete body");
    assert_eq!(sha256_hex(&body), pattern_sha256(0, 64 * MIB));
    // The stalled ones are still alive, merely paused (backpressure, not loss).
    let mut first = stalled.pop().unwrap().into_body();
    let frame = first.frame().await.unwrap().unwrap();
    assert!(!frame.into_data().unwrap().is_empty());
}

async fn client_gone_aborts_upstream(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let stats = stack.upstream.stats();
    let resp = get(&stack.url(&format!("/bytes/{}", 1024 * MIB))).await;
    let body = read_at_least(resp, MIB as usize).await;
    assert_eq!(
        stats.open_bodies.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    drop(body);
    // The client hung up: the agent must abandon the upstream body promptly,
    // not read the rest of the gigabyte.
    let aborted = eventually(Duration::from_secs(10), || async {
        stats.open_bodies.load(std::sync::atomic::Ordering::SeqCst) == 0
    })
    .await;
    assert!(
        aborted,
        "upstream response still open after the client left"
    );
}

async fn truncated_upstream_is_an_error(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    // Stream mode: the head went out, so the only honest signal left is an
    // aborted body, never a clean short one.
    let resp = get(&stack.url(&format!("/truncate/{}", MIB))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        read_body(resp).await.is_err(),
        "a truncated body must be an error"
    );

    // Blocking mode: nothing was sent yet, so the client gets a clear 502.
    let resp = get(&stack.url(&format!("/truncate/{}?mode=blocking", MIB))).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(json(resp).await["error"], "response_truncated");
}

async fn blocking_over_cap_is_502(t: Transport) {
    let mut opts = StackOptions::new(t);
    opts.server.max_blocking_body = MIB;
    let stack = Stack::start(opts).await;
    let resp = get(&stack.url(&format!("/bytes/{}?mode=blocking", 2 * MIB))).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let v = json(resp).await;
    assert_eq!(v["error"], "response_too_large");
    assert_eq!(v["clientId"], stack.client_id.as_str());
    // Without a declared length (chunked), the cap still holds mid-stream.
    let big = Bytes::from(vec![7u8; 2 * MIB as usize]);
    let body = StreamBody::new(futures_util::stream::iter([Ok::<_, std::io::Error>(
        http_body::Frame::data(big),
    )]))
    .boxed_unsync();
    let resp = send(
        Request::post(stack.url("/echo?mode=blocking"))
            .body(body)
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(json(resp).await["error"], "response_too_large");
    // Just under the cap passes.
    let resp = get(&stack.url(&format!("/bytes/{}?mode=blocking", MIB))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(read_body(resp).await.unwrap().len() as u64, MIB);
}

async fn unknown_and_offline_agents(t: Transport) {
    let mut stack = Stack::server_only(StackOptions::new(t)).await;
    let resp = get(&format!("http://{}/?clientId=nobody-here", stack.api)).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let v = json(resp).await;
    assert_eq!(v["error"], "unknown_agent");
    assert_eq!(v["clientId"], "nobody-here");

    // A token exists but no agent is connected.
    let resp = get(&stack.url("/")).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "5");
    let v = json(resp).await;
    assert_eq!(v["error"], "agent_offline");
    assert_eq!(v["clientId"], stack.client_id.as_str());

    let health = format!("http://{}/_warren/health", stack.api);
    let resp = get(&health).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json(resp).await;
    assert_eq!(v["status"], "ok");
    assert_eq!(
        (v["agents"].as_u64(), v["admitted"].as_u64()),
        (Some(0), Some(0))
    );

    // An agent that connects, leaves and comes back: one connected, two
    // admissions (how a flapping agent shows in the report).
    let config = stack.agent_config();
    stack.add_agent(config.clone()).await;
    for agent in stack.take_agents() {
        agent.stop().await;
    }
    stack.add_agent(config).await;
    let settled = eventually(Duration::from_secs(10), || async {
        let v = json(get(&health).await).await;
        (v["agents"].as_u64(), v["admitted"].as_u64()) == (Some(1), Some(2))
    })
    .await;
    assert!(
        settled,
        "health does not report one agent after two admissions"
    );
}

async fn upstream_refused_and_timeout(t: Transport) {
    let mut stack = Stack::server_only(StackOptions::new(t)).await;
    // An upstream port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let mut config = stack.agent_config();
    config.upstream.url = format!("{}://{closed_addr}", upstream_scheme());
    stack.add_agent(config).await;
    let resp = get(&stack.url("/")).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let v = json(resp).await;
    assert_eq!(v["error"], "upstream_unavailable");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains(&closed_addr.to_string()));
    for agent in stack.take_agents() {
        agent.stop().await;
    }

    let mut config = stack.agent_config();
    config.upstream.response_timeout = Duration::from_millis(300);
    stack.add_agent(config).await;
    let resp = get(&stack.url("/hang")).await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(json(resp).await["error"], "upstream_timeout");
    // The agent still serves other requests.
    let resp = get(&stack.url("/bytes/5")).await;
    assert_eq!(resp.status(), StatusCode::OK);
}
