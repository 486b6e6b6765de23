//! Client access control: an agent with a client token answers only clients
//! presenting it (Bearer header or `?token=`), checked at the edge; the
//! token never reaches the service; everything else about the request is
//! unchanged.

mod common;

use common::*;
use http::StatusCode;

over_transports_and_versions!(client_tokens_guard_an_agent);

async fn client_tokens_guard_an_agent(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let id = stack.client_id.clone();
    // Issued before any request, so no cached "open" answer is in the way.
    let token = warren::auth::issue_client_token(&stack.registry, &id)
        .await
        .unwrap();
    let headers_url = |query: &str| format!("http://{}/headers?clientId={id}{query}", stack.api);

    let resp = get(&headers_url("")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));
    assert_eq!(json(resp).await["error"], "client_token_required");

    let wrong = http::Request::get(headers_url(""))
        .header("authorization", "Bearer wcl_not-it")
        .body(empty())
        .unwrap();
    let resp = send(wrong).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(resp).await["error"], "bad_client_token");

    // The right token as a Bearer header: served, and the service never
    // sees the header.
    let right = http::Request::get(headers_url("&x=1"))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    let resp = send(right).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = json(resp).await;
    let names: Vec<String> = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap().to_ascii_lowercase())
        .collect();
    assert!(!names.contains(&"authorization".to_string()), "{names:?}");
    assert_eq!(seen["uri"], "/headers?x=1");

    // As a query parameter: served, and removed from what is forwarded.
    let resp = get(&headers_url(&format!("&x=1&token={token}&y=2"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json(resp).await["uri"], "/headers?x=1&y=2");

    // WebSockets and room listings are guarded the same way.
    let ws_path = format!("/ws/echo?clientId={id}");
    match ws_upgrade(stack.api, &ws_path, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("an upgrade without the token is refused, got {other:?}"),
    }
    let with_token = format!("/ws/echo?clientId={id}&token={token}");
    assert!(ws_upgrade(stack.api, &with_token, None).await.is_ok());
    let listing = get(&format!("http://{}/_warren/rooms?clientId={id}", stack.api)).await;
    assert_eq!(listing.status(), StatusCode::UNAUTHORIZED);
}
