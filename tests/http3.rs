//! HTTP/3 for clients through the real binary, over both transports: a Rust
//! h3 client (h3 + quinn; the installed curl has no HTTP/3) on the UDP side
//! of the HTTPS port, served as HTTP/1.1 and HTTP/2 are: routing and its
//! errors, both modes, uploads and large downloads, trailers both ways (to
//! an HTTP/1.1 service), a truncated
//! response as a stream error (never a clean end); `Alt-Svc` announcing it
//! on HTTPS answers; and malformed HTTP/3 closing only the client that sent
//! it.

mod common;

use std::{sync::Arc, time::Duration};

use bytes::{Buf, Bytes};
use common::*;
use http::{HeaderMap, Request, StatusCode};
use warren::sample::{pattern_sha256, SampleUpstream};

/// A server process with HTTPS and HTTP/3 (self-signed for `localhost`),
/// the sample upstream, and an agent process for `home`.
struct H3Stack {
    dir: tempfile::TempDir,
    server: ServerProcess,
    _agent: WarrenProcess,
    _upstream: SampleUpstream,
    cert: rustls::pki_types::CertificateDer<'static>,
}

impl H3Stack {
    async fn start(t: Transport) -> H3Stack {
        H3Stack::start_with(t, &[]).await
    }

    /// [`H3Stack::start`], with more server flags.
    async fn start_with(t: Transport, extra: &[&str]) -> H3Stack {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--api-http3"];
        args.extend(extra);
        let (server, cert, token) = https_server_process(dir.path(), "home", &args).await;
        let upstream = SampleUpstream::spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let agent = agent_process_for(&server, dir.path(), "home", &token, &upstream.url(), t, &[]);
        let stack = H3Stack {
            dir,
            server,
            _agent: agent,
            _upstream: upstream,
            cert,
        };
        let connected = eventually(Duration::from_secs(20), || async {
            let mut client = stack.h3().await;
            client.get("/bytes/1?clientId=home").await.0 == StatusCode::OK
        })
        .await;
        assert!(connected, "the agent connects");
        stack
    }

    fn tls(&self, alpn: &[u8]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![alpn.to_vec()];
        tls
    }

    /// A QUIC connection to the HTTP/3 port, offering `alpn`.
    async fn quic(&self, alpn: &[u8]) -> quinn::Connection {
        self.quic_from(alpn).await.1
    }

    /// [`H3Stack::quic`], with the client's endpoint (to move it).
    async fn quic_from(&self, alpn: &[u8]) -> (quinn::Endpoint, quinn::Connection) {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(self.tls(alpn)).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = endpoint
            .connect(self.server.api, "localhost")
            .unwrap()
            .await
            .expect("QUIC handshake with the HTTP/3 port");
        (endpoint, conn)
    }

    async fn h3(&self) -> H3Client {
        self.h3_on(self.quic(b"h3").await).await
    }

    async fn h3_on(&self, conn: quinn::Connection) -> H3Client {
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        H3Client { send }
    }
}

struct H3Client {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
}

/// What came back: status, headers, the body (or how it broke off), trailers.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Result<Vec<u8>, String>,
    trailers: Option<HeaderMap>,
}

impl H3Client {
    async fn send(&mut self, req: Request<()>, body: Option<Bytes>) -> Answer {
        self.send_with_trailers(req, body, None).await
    }

    /// [`H3Client::send`], the body followed by a trailer field.
    async fn send_with_trailers(
        &mut self,
        req: Request<()>,
        body: Option<Bytes>,
        trailer: Option<(&'static str, &'static str)>,
    ) -> Answer {
        let mut stream = self.send.send_request(req).await.expect("request sent");
        if let Some(body) = body {
            for chunk in body.chunks(64 * 1024) {
                stream
                    .send_data(Bytes::copy_from_slice(chunk))
                    .await
                    .unwrap();
            }
        }
        if let Some((name, value)) = trailer {
            let mut trailers = HeaderMap::new();
            trailers.insert(name, value.parse().unwrap());
            stream.send_trailers(trailers).await.unwrap();
        }
        stream.finish().await.unwrap();
        let resp = stream.recv_response().await.expect("a response head");
        let mut body = Vec::new();
        let broke = loop {
            match stream.recv_data().await {
                Ok(Some(mut chunk)) => {
                    let bytes = chunk.copy_to_bytes(chunk.remaining());
                    body.extend_from_slice(&bytes);
                }
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        let trailers = match broke {
            None => stream.recv_trailers().await.ok().flatten(),
            Some(_) => None,
        };
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: match broke {
                None => Ok(body),
                Some(e) => Err(e),
            },
            trailers,
        }
    }

    async fn get(&mut self, path: &str) -> (StatusCode, Vec<u8>) {
        let req = Request::get(format!("https://localhost{path}"))
            .body(())
            .unwrap();
        let answer = self.send(req, None).await;
        (answer.status, answer.body.expect("a whole body"))
    }
}

async fn http3_serves_as_the_other_versions_do(t: Transport) {
    let stack = H3Stack::start(t).await;
    let mut client = stack.h3().await;

    // Routing and its errors, as on the other versions.
    let (status, body) = client.get("/bytes/1000?clientId=home").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256_hex(&body), pattern_sha256(0, 1000));
    let (status, body) = client.get("/bytes/10?clientId=nobody").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("unknown_agent"));

    // The service saw an HTTPS client.
    let (status, body) = client.get("/headers?clientId=home").await;
    assert_eq!(status, StatusCode::OK);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let proto = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "x-forwarded-proto")
        .map(|h| h[1].clone());
    assert_eq!(proto, Some(serde_json::json!("https")));

    // 16 MiB down, streamed and blocking; 8 MiB up.
    let size = 16 << 20;
    let (status, body) = client.get(&format!("/bytes/{size}?clientId=home")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256_hex(&body), pattern_sha256(0, size as u64));
    let (status, body) = client
        .get("/bytes/100000?clientId=home&mode=blocking")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256_hex(&body), pattern_sha256(0, 100_000));
    let upload = Bytes::from(vec![9u8; 8 << 20]);
    let req = Request::post("https://localhost/sha256?clientId=home")
        .body(())
        .unwrap();
    let answer = client.send(req, Some(upload.clone())).await;
    assert_eq!(answer.status, StatusCode::OK);
    let summed: serde_json::Value = serde_json::from_slice(&answer.body.unwrap()).unwrap();
    assert_eq!(summed["bytes"], 8 << 20);
    assert_eq!(summed["sha256"], sha256_hex(&upload));

    // Many requests at once on the one connection.
    let mut calls = Vec::new();
    for i in 0..32u64 {
        let mut send = client.send.clone();
        calls.push(tokio::spawn(async move {
            let req = Request::get(format!(
                "https://localhost/bytes/{}?clientId=home",
                1000 + i
            ))
            .body(())
            .unwrap();
            let mut stream = send.send_request(req).await.unwrap();
            stream.finish().await.unwrap();
            let resp = stream.recv_response().await.unwrap();
            let mut n = 0;
            while let Some(chunk) = stream.recv_data().await.unwrap() {
                n += chunk.remaining() as u64;
            }
            (resp.status(), n, 1000 + i)
        }));
    }
    for call in calls {
        let (status, n, want) = call.await.unwrap();
        assert_eq!((status, n), (StatusCode::OK, want));
    }

    // A response that breaks off is a stream error, never a clean end.
    let req = Request::get("https://localhost/truncate/200000?clientId=home")
        .body(())
        .unwrap();
    let answer = client.send(req, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.is_err(), "a truncated body is an error");
    assert!(answer.headers.contains_key("x-warren-request-id"));
    assert!(answer.trailers.is_none());

    // Trailers both ways: the request's reach the service (echoed back),
    // the service's come back.
    let req = Request::post("https://localhost/trailers?clientId=home")
        .header("trailer", "x-checksum")
        .body(())
        .unwrap();
    let sent = Bytes::from(vec![5u8; 300_000]);
    let answer = client
        .send_with_trailers(req, Some(sent.clone()), Some(("x-checksum", "c0ffee")))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.unwrap(), b"300000 bytes\n");
    let trailers = answer.trailers.expect("response trailers");
    assert_eq!(trailers["x-echo-x-checksum"], "c0ffee");
    assert_eq!(trailers["x-body-sha256"], sha256_hex(&sent).as_str());

    // HTTPS answers announce HTTP/3 on the same port.
    let port = stack.server.api.port();
    let https = format!("https://localhost:{port}/bytes/1?clientId=home");
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-D", "-", "--resolve"])
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(stack.dir.path().join("api.pem"))
        .arg(&https)
        .output()
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        head.contains(&format!("alt-svc: h3=\":{port}\"; ma=86400")),
        "{head}"
    );
}

/// A client whose address changes mid-download (a phone moving from Wi-Fi
/// to mobile data) keeps its stream: the download completes, whole.
async fn a_download_survives_the_client_moving(t: Transport) {
    let stack = H3Stack::start(t).await;
    let (endpoint, conn) = stack.quic_from(b"h3").await;
    let mut client = stack.h3_on(conn.clone()).await;
    let size: u64 = 32 << 20;
    let req = Request::get(format!("https://localhost/bytes/{size}?clientId=home"))
        .body(())
        .unwrap();
    let mut stream = client.send.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    assert_eq!(
        stream.recv_response().await.unwrap().status(),
        StatusCode::OK
    );
    let mut body = Vec::with_capacity(size as usize);
    let mut moved = false;
    while let Some(mut chunk) = stream.recv_data().await.expect("the stream goes on") {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        if !moved && body.len() > 1 << 20 {
            // A new socket: a new source port, as after a network change.
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            endpoint.rebind(socket).unwrap();
            moved = true;
        }
    }
    assert!(moved);
    assert_eq!(body.len() as u64, size);
    assert_eq!(sha256_hex(&body), pattern_sha256(0, size));
}

/// A request stream whose headers never come is dropped after the header
/// deadline, as a slow HTTP/1.1 head is; the connection and others go on.
async fn a_request_without_headers_is_cut_off(t: Transport) {
    let stack = H3Stack::start_with(t, &["--header-read-timeout", "1s"]).await;
    let conn = stack.quic(b"h3").await;
    let mut good = stack.h3_on(conn.clone()).await;
    // A bidirectional stream that says nothing (a HEADERS frame never sent).
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // A byte of a frame type, so the stream exists at the server, and no more.
    send.write_all(&[0x01]).await.unwrap();
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024))
        .await
        .expect("the server ends the stream");
    // No response at all (an error to any HTTP/3 client), and the server
    // reads no more of it (STOP_SENDING).
    assert_eq!(ended.expect("ended by the server"), Vec::<u8>::new());
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "after the deadline, not before"
    );
    let stopped = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    assert!(matches!(stopped, Ok(Ok(Some(_)))), "stopped: {stopped:?}");
    // The same connection serves a whole request.
    let (status, body) = good.get("/bytes/100?clientId=home").await;
    assert_eq!((status, body.len()), (StatusCode::OK, 100));
}

/// Bad HTTP/3 closes the connection that sent it, with a log line and a
/// clear error code; other clients go on.
async fn malformed_http3_closes_only_its_connection(t: Transport) {
    let stack = H3Stack::start(t).await;
    let mut good = stack.h3().await;

    // A request stream that opens with DATA instead of HEADERS.
    let bad = stack.quic(b"h3").await;
    // (The server may close the connection at the first: later writes may
    // fail, which is the point.)
    let (mut send, _recv) = bad.open_bi().await.unwrap();
    let _ = send.write_all(&[0x00, 0x03, b'a', b'b', b'c']).await;
    let _ = send.finish();
    // And a control stream that is not one (its first frame must be SETTINGS).
    if let Ok(mut uni) = bad.open_uni().await {
        let _ = uni.write_all(&[0x00, 0x00, 0x03, b'x', b'y', b'z']).await;
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), bad.closed())
        .await
        .expect("the server closes the malformed connection");
    let reason = closed.to_string();
    assert!(
        reason.contains("H3_") || reason.contains("closed by peer"),
        "closed with an HTTP/3 error code: {reason}"
    );

    // Not HTTP/3 at all: a foreign ALPN is refused in the handshake.
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(stack.tls(b"h2")).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let refused = endpoint
        .connect(stack.server.api, "localhost")
        .unwrap()
        .await;
    assert!(refused.is_err(), "a QUIC client without h3 is refused");

    // Others are served throughout.
    let (status, body) = good.get("/bytes/2048?clientId=home").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 2048);
    let mut fresh = stack.h3().await;
    assert_eq!(fresh.get("/bytes/1?clientId=home").await.0, StatusCode::OK);
    assert!(
        stack
            .server
            .log
            .wait_for("HTTP/3 client connection closed", Duration::from_secs(5))
            .await,
        "the server says why it closed the connection"
    );
}

/// At the connection limit an idle HTTP/3 connection makes room for a new
/// client, as an idle HTTP/1.1 or HTTP/2 one does; a connection serving
/// something is never closed for it.
async fn idle_http3_connections_make_room_at_the_limit(t: Transport) {
    let stack = H3Stack::start_with(t, &["--max-client-connections", "4"]).await;
    // One connection busy with a download it does not read yet.
    let mut busy = stack.h3().await;
    let size: u64 = 16 << 20;
    let req = Request::get(format!("https://localhost/bytes/{size}?clientId=home"))
        .body(())
        .unwrap();
    let mut download = busy.send.send_request(req).await.unwrap();
    download.finish().await.unwrap();
    assert_eq!(
        download.recv_response().await.unwrap().status(),
        StatusCode::OK
    );
    // The other places held by idle connections, each served once.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut client = stack.h3().await;
        assert_eq!(
            client.get("/bytes/10?clientId=home").await.0,
            StatusCode::OK
        );
        held.push(client);
    }
    // New clients in turn: each takes the place of an idle one.
    for i in 0..8 {
        let mut client = stack.h3().await;
        let (status, body) = client.get("/bytes/10?clientId=home").await;
        assert_eq!((status, body.len()), (StatusCode::OK, 10), "client {i}");
        held.push(client);
    }
    // The busy one was never touched: its download comes whole.
    let mut body = Vec::with_capacity(size as usize);
    while let Some(mut chunk) = download.recv_data().await.expect("the download goes on") {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    assert_eq!(sha256_hex(&body), pattern_sha256(0, size));
}

over_transports!(
    http3_serves_as_the_other_versions_do,
    a_download_survives_the_client_moving,
    a_request_without_headers_is_cut_off,
    malformed_http3_closes_only_its_connection,
    idle_http3_connections_make_room_at_the_limit
);
