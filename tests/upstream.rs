//! The agent's keep-alive connections to the local service: reused request
//! after request, never reused once the service closed them or once a
//! response was abandoned part-way (its rest is still on the wire), and a
//! request that meets a connection closed under it goes on a new one.
//!
//! The service here is a hand-written HTTP/1.1 server that counts its
//! connections and can misbehave on purpose (close when idle, close after
//! every response, send a body slowly).

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How the test service treats a connection after answering on it.
#[derive(Clone, Copy)]
enum After {
    /// Waits for the next request.
    KeepAlive,
    /// Closes the connection this long after the response, without a word.
    CloseIdle(Duration),
    /// Says `Connection: close` and closes.
    Close,
}

struct Service {
    url: String,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// Connections that have ended (the peer closed, or we did).
    ended: Arc<AtomicUsize>,
}

/// Answers `GET /small` with 5 bytes and `GET /slow` with 64 KiB chunks every
/// 20 ms for 10 s (a stream a client may walk away from).
async fn service(after: After) -> Service {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let (c, e) = (connections.clone(), ended.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let e = e.clone();
            tokio::spawn(async move {
                serve_connection(tcp, after).await;
                e.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Service {
        url,
        connections,
        ended,
    }
}

async fn serve_connection(mut tcp: TcpStream, after: After) {
    let mut buf = Vec::new();
    loop {
        // Read one request head (these requests have no body).
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        buf.drain(..head_end);
        let close = matches!(after, After::Close);
        let connection = if close { "connection: close\r\n" } else { "" };
        if head.starts_with("GET /slow") {
            let chunk = vec![b'x'; 64 * 1024];
            let total = chunk.len() * 500;
            let start = format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\n{connection}\r\n");
            if tcp.write_all(start.as_bytes()).await.is_err() {
                return;
            }
            for _ in 0..500 {
                if tcp.write_all(&chunk).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n{connection}\r\nhello");
            if tcp.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
        match after {
            After::KeepAlive => {}
            After::Close => return,
            After::CloseIdle(idle) => {
                let mut byte = [0u8; 1];
                match tokio::time::timeout(idle, tcp.peek(&mut byte)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
            }
        }
    }
}

async fn stack_for(service: &Service) -> Stack {
    let mut stack = Stack::server_only(StackOptions::new(Transport::Quic)).await;
    let mut config = stack.agent_config();
    config.upstream.url = service.url.clone();
    stack.add_agent(config).await;
    stack
}

async fn get_small(stack: &Stack) -> StatusCode {
    let resp = get(&stack.url("/small")).await;
    let status = resp.status();
    let body = read_body(resp).await.expect("a whole body");
    if status == StatusCode::OK {
        assert_eq!(&body[..], b"hello");
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_reused() {
    let service = service(After::KeepAlive).await;
    let stack = stack_for(&service).await;
    for _ in 0..20 {
        assert_eq!(get_small(&stack).await, StatusCode::OK);
    }
    assert_eq!(
        service.connections.load(Ordering::SeqCst),
        1,
        "20 requests one after another share one connection"
    );
    // Eight at a time, five rounds: never more connections than requests
    // in flight at once (plus the one already open).
    for _ in 0..5 {
        let all = (0..8).map(|_| get_small(&stack));
        for status in futures_util::future::join_all(all).await {
            assert_eq!(status, StatusCode::OK);
        }
    }
    let n = service.connections.load(Ordering::SeqCst);
    assert!(n <= 9, "{n} connections for at most 8 requests at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_service_closes_are_not_reused() {
    // Closed 20 ms after each response, without `Connection: close`: by the
    // next request (100 ms later) the agent must have noticed.
    let service = service(After::CloseIdle(Duration::from_millis(20))).await;
    let stack = stack_for(&service).await;
    for _ in 0..10 {
        assert_eq!(get_small(&stack).await, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(service.connections.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_honoured() {
    let service = service(After::Close).await;
    let stack = stack_for(&service).await;
    for _ in 0..10 {
        assert_eq!(get_small(&stack).await, StatusCode::OK);
    }
    assert_eq!(service.connections.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_response_closes_its_connection() {
    let service = service(After::KeepAlive).await;
    let stack = stack_for(&service).await;
    assert_eq!(get_small(&stack).await, StatusCode::OK);
    // Walk away from a long response after its first bytes.
    let body = read_at_least(get(&stack.url("/slow")).await, 64 * 1024).await;
    drop(body);
    // The service sees that connection end (nobody reads the rest of it)...
    let closed = eventually(Duration::from_secs(5), || async {
        service.ended.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(closed, "the abandoned response's connection was closed");
    // ...and the next requests are served (on the idle one, or a new one).
    for _ in 0..3 {
        assert_eq!(get_small(&stack).await, StatusCode::OK);
    }
    // A bodiless request after an abandoned one still reads cleanly.
    let resp = get(&stack.url("/small")).await;
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "hello"
    );
}
