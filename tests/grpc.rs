//! gRPC end to end through the real binaries, over both transports: a tonic
//! client (HTTP/2: h2c on the plain listener, and over HTTPS) and a tonic
//! service behind the agent (`--upstream-http2`). Unary, server streaming,
//! client streaming, bidirectional (each answer before the next question), a
//! status error with metadata in the trailers, a deadline the client gives up
//! on (the service sees the cancel), trailers both ways on plain HTTP/2 and
//! chunked HTTP/1.1, trailers over the head limit failing only their own
//! request, and an agent from before trailers served as before.

mod common;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes};
use common::*;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    server::{ClientStreamingService, ServerStreamingService, StreamingService, UnaryService},
    Code, Status, Streaming,
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Messages are raw bytes: the test is about how calls are carried, not
/// about protobuf.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// What the service saw of the call that was given up on.
#[derive(Default)]
struct Seen {
    slow_started: AtomicBool,
    slow_cancelled: AtomicBool,
    timeout_header: Mutex<Option<String>>,
}

/// Sets `slow_cancelled` when the slow call's future is dropped unfinished.
struct CancelGuard(Arc<Seen>, bool);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.slow_cancelled.store(true, Ordering::SeqCst);
        }
    }
}

struct Unary(Arc<Seen>);

impl UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        let seen = self.0.clone();
        Box::pin(async move {
            let who = req
                .metadata()
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            let msg = req.into_inner();
            match &msg[..] {
                b"fail" => {
                    let mut meta = tonic::metadata::MetadataMap::new();
                    meta.insert("x-detail", "42".parse().unwrap());
                    Err(Status::with_metadata(
                        Code::FailedPrecondition,
                        "told to fail",
                        meta,
                    ))
                }
                b"slow" => {
                    seen.slow_started.store(true, Ordering::SeqCst);
                    let mut guard = CancelGuard(seen.clone(), false);
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    guard.1 = true;
                    Ok(tonic::Response::new(Bytes::from_static(b"late")))
                }
                _ => {
                    let mut out = b"echo:".to_vec();
                    out.extend_from_slice(&msg);
                    let mut resp = tonic::Response::new(Bytes::from(out));
                    resp.metadata_mut().insert("x-proto", who.parse().unwrap());
                    Ok(resp)
                }
            }
        })
    }
}

/// `n` messages of 1 KiB, each starting with its index.
struct Count;

impl ServerStreamingService<Bytes> for Count {
    type Response = Bytes;
    type ResponseStream = BoxStream<Bytes>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, Status>>;
    fn call(&mut self, req: tonic::Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let n: usize = std::str::from_utf8(req.get_ref())
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Status::invalid_argument("send a count"))?;
            let stream = futures_util::stream::iter((0..n).map(|i| {
                let mut m = format!("{i}:").into_bytes();
                m.resize(1024, b'x');
                Ok(Bytes::from(m))
            }));
            Ok(tonic::Response::new(Box::pin(stream) as BoxStream<Bytes>))
        })
    }
}

/// Total bytes and message count of what the client streamed.
struct Sum;

impl ClientStreamingService<Bytes> for Sum {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;
    fn call(&mut self, req: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = req.into_inner();
            let (mut count, mut bytes) = (0usize, 0usize);
            while let Some(msg) = stream.message().await? {
                count += 1;
                bytes += msg.len();
            }
            Ok(tonic::Response::new(Bytes::from(format!(
                "{count} messages, {bytes} bytes"
            ))))
        })
    }
}

/// Answers each message as it comes (`re:` + message).
struct Chat;

impl StreamingService<Bytes> for Chat {
    type Response = Bytes;
    type ResponseStream = BoxStream<Bytes>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, Status>>;
    fn call(&mut self, req: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(async move {
            let stream = req.into_inner().map(|msg| {
                msg.map(|m| {
                    let mut out = b"re:".to_vec();
                    out.extend_from_slice(&m);
                    Bytes::from(out)
                })
            });
            Ok(tonic::Response::new(Box::pin(stream) as BoxStream<Bytes>))
        })
    }
}

type ServiceBody = http_body_util::combinators::UnsyncBoxBody<Bytes, tonic::Status>;

/// The upstream: tonic's gRPC handlers on a hyper HTTP/2 (h2c) server, plus
/// two plain routes for trailers without gRPC.
async fn route(
    req: Request<Incoming>,
    seen: Arc<Seen>,
) -> Result<Response<ServiceBody>, Infallible> {
    let boxed = |resp: Response<tonic::body::Body>| resp.map(|b| b.boxed_unsync());
    if let Some(t) = req.headers().get("grpc-timeout") {
        *seen.timeout_header.lock().unwrap() = t.to_str().ok().map(String::from);
    }
    let mut grpc = tonic::server::Grpc::new(Raw);
    Ok(match req.uri().path() {
        "/test.Echo/Unary" => boxed(grpc.unary(Unary(seen), req).await),
        "/test.Echo/Count" => boxed(grpc.server_streaming(Count, req).await),
        "/test.Echo/Sum" => boxed(grpc.client_streaming(Sum, req).await),
        "/test.Echo/Chat" => boxed(grpc.streaming(Chat, req).await),
        "/echo-trailers" => echo_trailers(req).await,
        "/big-trailers" => {
            let size: usize = req
                .uri()
                .query()
                .and_then(|q| q.parse().ok())
                .unwrap_or(1024);
            let mut trailers = HeaderMap::new();
            trailers.insert("x-big", HeaderValue::from_str(&"b".repeat(size)).unwrap());
            respond_with_trailers(Bytes::from_static(b"body"), trailers)
        }
        _ => boxed(Status::unimplemented("no such method").into_http()),
    })
}

/// Reads the body to its end and answers with its length, the request's
/// trailers echoed back as response trailers (`x-echo-NAME`), and
/// `x-seen-bytes`.
async fn echo_trailers(req: Request<Incoming>) -> Response<ServiceBody> {
    let collected = req.into_body().collect().await.unwrap();
    let theirs = collected.trailers().cloned().unwrap_or_default();
    let body = collected.to_bytes();
    let mut trailers = HeaderMap::new();
    for (name, value) in &theirs {
        let echo = http::HeaderName::from_bytes(format!("x-echo-{name}").as_bytes()).unwrap();
        trailers.append(echo, value.clone());
    }
    trailers.insert("x-seen-bytes", HeaderValue::from(body.len()));
    respond_with_trailers(Bytes::from(format!("{} bytes", body.len())), trailers)
}

/// A response of `body` then `trailers`, announced in `Trailer` (which an
/// HTTP/1.1 hop needs to send them).
fn respond_with_trailers(body: Bytes, trailers: HeaderMap) -> Response<ServiceBody> {
    let names: Vec<&str> = trailers.keys().map(|k| k.as_str()).collect();
    let announce = HeaderValue::from_str(&names.join(", ")).unwrap();
    let frames = futures_util::stream::iter([
        Ok::<_, Status>(Frame::data(body)),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    resp.headers_mut().insert(http::header::TRAILER, announce);
    resp
}

/// Serves [`route`] over h2c on a loopback port.
async fn grpc_upstream(seen: Arc<Seen>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| route(req, seen.clone()));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// A tonic client's transport: one HTTP/2 connection (h2c or TLS), every
/// call naming the agent in `x-warren-client`, plus headers of the test's.
#[derive(Clone)]
struct Conn {
    sender: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    extra: HeaderMap,
}

impl tower_service::Service<Request<tonic::body::Body>> for Conn {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<Result<Response<Incoming>, hyper::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<tonic::body::Body>) -> Self::Future {
        req.headers_mut()
            .insert("x-warren-client", HeaderValue::from_static("home"));
        for (name, value) in &self.extra {
            req.headers_mut().insert(name, value.clone());
        }
        let sent = self.sender.send_request(req);
        Box::pin(sent)
    }
}

/// A TCP connection with Nagle off, as real clients have it (HEADERS and
/// DATA are separate writes, and would wait out the peer's delayed ACK).
async fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

async fn h2_conn<IO>(io: IO) -> hyper::client::conn::http2::SendRequest<tonic::body::Body>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

type Client = tonic::client::Grpc<Conn>;

fn client(
    sender: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    origin: &str,
) -> Client {
    let conn = Conn {
        sender,
        extra: HeaderMap::new(),
    };
    tonic::client::Grpc::with_origin(conn, origin.parse::<Uri>().unwrap())
}

fn path(method: &str) -> http::uri::PathAndQuery {
    format!("/test.Echo/{method}").parse().unwrap()
}

async fn unary(client: &mut Client, msg: &'static [u8]) -> Result<tonic::Response<Bytes>, Status> {
    client.ready().await.unwrap();
    client
        .unary(
            tonic::Request::new(Bytes::from_static(msg)),
            path("Unary"),
            Raw,
        )
        .await
}

/// A server process with HTTPS (self-signed for `localhost`) and a plain
/// listener beside it, the gRPC upstream, and an agent process for `home`
/// speaking HTTP/2 to it.
struct Grpc {
    _dir: tempfile::TempDir,
    server: ServerProcess,
    agent: WarrenProcess,
    seen: Arc<Seen>,
    /// The server's certificate, to trust.
    cert: rustls::pki_types::CertificateDer<'static>,
}

impl Grpc {
    async fn start(t: Transport, extra: &[&str]) -> Grpc {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--api-plain-listen", "127.0.0.1:0"];
        args.extend(extra);
        let (server, cert, token) = https_server_process(dir.path(), "home", &args).await;
        let seen = Arc::new(Seen::default());
        let upstream = grpc_upstream(seen.clone()).await;
        let upstream_url = format!("http://{upstream}");
        let agent = agent_process_for(
            &server,
            dir.path(),
            "home",
            &token,
            &upstream_url,
            t,
            &["--upstream-http2"],
        );
        let plain = server.plain.expect("a plain listener");
        let probe = format!("http://{plain}/?clientId=home");
        assert!(
            eventually(Duration::from_secs(20), || async {
                client_get_status(&probe).await.is_some_and(|s| s != 503)
            })
            .await,
            "the agent connects"
        );
        Grpc {
            _dir: dir,
            server,
            agent,
            seen,
            cert,
        }
    }

    async fn h2c(&self) -> Client {
        let plain = self.server.plain.unwrap();
        let tcp = connect(plain).await;
        client(h2_conn(tcp).await, &format!("http://{plain}"))
    }

    async fn https(&self) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = connect(self.server.api).await;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        client(
            h2_conn(tls).await,
            &format!("https://localhost:{}", self.server.api.port()),
        )
    }
}

/// The status of a plain GET, or `None` when the server does not answer.
async fn client_get_status(url: &str) -> Option<u16> {
    let req = Request::get(url).body(common::empty()).unwrap();
    common::client()
        .request(req)
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Every kind of call, on one connection.
async fn every_kind_of_call(client: &mut Client, proto: &str) {
    // Unary, with response metadata; the service saw how the client came.
    let resp = unary(client, b"hi").await.expect("unary call");
    assert_eq!(resp.metadata().get("x-proto").unwrap(), proto);
    assert_eq!(&resp.into_inner()[..], b"echo:hi");

    // Server streaming: 1000 messages in order.
    client.ready().await.unwrap();
    let mut stream = client
        .server_streaming(
            tonic::Request::new(Bytes::from_static(b"1000")),
            path("Count"),
            Raw,
        )
        .await
        .expect("server streaming call")
        .into_inner();
    let mut n = 0;
    while let Some(msg) = stream.message().await.expect("each message") {
        assert!(
            msg.starts_with(format!("{n}:").as_bytes()),
            "message {n} in order"
        );
        assert_eq!(msg.len(), 1024);
        n += 1;
    }
    assert_eq!(n, 1000, "every message, then a clean status");

    // Client streaming: 500 messages of 4 KiB.
    client.ready().await.unwrap();
    let outgoing = futures_util::stream::iter((0..500).map(|_| Bytes::from(vec![7u8; 4096])));
    let resp = client
        .client_streaming(tonic::Request::new(outgoing), path("Sum"), Raw)
        .await
        .expect("client streaming call");
    assert_eq!(&resp.into_inner()[..], b"500 messages, 2048000 bytes");

    // Bidirectional: each answer comes before the next question is asked,
    // so nothing waits for either side's end.
    client.ready().await.unwrap();
    let (questions, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut answers = client
        .streaming(tonic::Request::new(outgoing), path("Chat"), Raw)
        .await
        .expect("bidirectional call")
        .into_inner();
    for i in 0..20 {
        questions.send(Bytes::from(format!("q{i}"))).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .expect("an answer before the next question")
            .unwrap()
            .unwrap();
        assert_eq!(answer, Bytes::from(format!("re:q{i}")));
    }
    drop(questions);
    assert!(answers.message().await.unwrap().is_none(), "a clean end");

    // A status error: code, message and metadata, all from the trailers.
    let err = unary(client, b"fail")
        .await
        .expect_err("the service fails it");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), "told to fail");
    assert_eq!(err.metadata().get("x-detail").unwrap(), "42");
}

async fn grpc_calls(t: Transport) {
    let stack = Grpc::start(t, &[]).await;
    let mut h2c = stack.h2c().await;
    every_kind_of_call(&mut h2c, "http").await;
    let mut https = stack.https().await;
    every_kind_of_call(&mut https, "https").await;

    // Blocking mode collects the response, trailers and all.
    let blocking = Conn {
        sender: h2_conn(connect(stack.server.plain.unwrap()).await).await,
        extra: HeaderMap::from_iter([(
            http::HeaderName::from_static("x-warren-mode"),
            HeaderValue::from_static("blocking"),
        )]),
    };
    let origin: Uri = format!("http://{}", stack.server.plain.unwrap())
        .parse()
        .unwrap();
    let mut blocking = tonic::client::Grpc::with_origin(blocking, origin);
    assert_eq!(
        &unary(&mut blocking, b"b").await.unwrap().into_inner()[..],
        b"echo:b"
    );
    let err = unary(&mut blocking, b"fail").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

/// A client that gives up at its deadline cancels the call all the way to
/// the service, which was told the deadline (`grpc-timeout`).
async fn deadline_cancels_the_call(t: Transport) {
    let stack = Grpc::start(t, &[]).await;
    let mut client = stack.h2c().await;
    client.ready().await.unwrap();
    let mut req = tonic::Request::new(Bytes::from_static(b"slow"));
    req.set_timeout(Duration::from_millis(300));
    let call = client.unary::<Bytes, Bytes, Raw>(req, path("Unary"), Raw);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), call)
            .await
            .is_err(),
        "the slow call is still running at the deadline"
    );
    assert!(stack.seen.slow_started.load(Ordering::SeqCst));
    assert!(
        eventually(Duration::from_secs(5), || async {
            stack.seen.slow_cancelled.load(Ordering::SeqCst)
        })
        .await,
        "the service's handler is cancelled when the client gives up: {}",
        stack.agent.log.text()
    );
    assert_eq!(
        stack.seen.timeout_header.lock().unwrap().as_deref(),
        Some("300000u"),
        "the service was told the deadline (tonic writes it in microseconds)"
    );
    // The connection and the agent are fine for the next call.
    assert_eq!(
        &unary(&mut client, b"after").await.unwrap().into_inner()[..],
        b"echo:after"
    );
}

/// Trailers without gRPC: request trailers from an HTTP/2 client and from a
/// chunked HTTP/1.1 one reach the service, and its trailers come back.
async fn trailers_both_ways(t: Transport) {
    let stack = Grpc::start(t, &[]).await;
    let plain = stack.server.plain.unwrap();
    let send = |version: http::Version, announce: bool| async move {
        let frames = futures_util::stream::iter([
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![1u8; 100_000]))),
            Ok(Frame::trailers(HeaderMap::from_iter([(
                http::HeaderName::from_static("x-checksum"),
                HeaderValue::from_static("c0ffee"),
            )]))),
        ]);
        let mut req = Request::post(format!("http://{plain}/echo-trailers?clientId=home"))
            .header("te", "trailers")
            .body(StreamBody::new(frames))
            .unwrap();
        if announce {
            req.headers_mut().insert(
                http::header::TRAILER,
                HeaderValue::from_static("x-checksum"),
            );
        }
        let tcp = connect(plain).await;
        let resp = if version == http::Version::HTTP_2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        };
        assert_eq!(resp.status(), 200, "{version:?}");
        let collected = resp.into_body().collect().await.expect("whole body");
        let trailers = collected.trailers().cloned().expect("response trailers");
        assert_eq!(&collected.to_bytes()[..], b"100000 bytes");
        trailers
    };
    for version in [http::Version::HTTP_2, http::Version::HTTP_11] {
        let trailers = send(version, true).await;
        assert_eq!(
            trailers.get("x-echo-x-checksum").unwrap(),
            "c0ffee",
            "{version:?}"
        );
        assert_eq!(
            trailers.get("x-seen-bytes").unwrap(),
            "100000",
            "{version:?}"
        );
    }
}

/// Trailers larger than the server's head limit fail that response (an error
/// to the client, never a clean end without them, and a log line saying why)
/// and nothing else.
async fn trailers_over_the_limit(t: Transport) {
    let stack = Grpc::start(t, &["--max-head", "8KiB"]).await;
    let plain = stack.server.plain.unwrap();
    let tcp = connect(plain).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |size: usize| {
        Request::get(format!("http://{plain}/big-trailers?{size}"))
            .header("x-warren-client", "home")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };
    // The agent resets the stream, and the client sees an error: the
    // stream reset outright (hyper had the head and the error together), a
    // 502 (the reset overtook the head: QUIC may discard what it had not yet
    // delivered), or a body that breaks off.
    match sender.send_request(get(12 * 1024)).await {
        // The stream's RST_STREAM (the connection itself goes on: below).
        Err(e) => assert!(!sender.is_closed(), "only the stream failed: {e}"),
        Ok(resp) if resp.status() == 200 => {
            let result = resp.into_body().collect().await;
            assert!(
                result.is_err(),
                "the response ends in an error, not without its trailers"
            );
        }
        Ok(resp) => assert_eq!(resp.status(), 502),
    }
    assert!(
        stack
            .agent
            .log
            .wait_for("trailers of", Duration::from_secs(5))
            .await,
        "the agent says why the response was cut off: {}",
        stack.agent.log.text()
    );
    // The same connection carries the next, smaller one whole.
    let resp = sender.send_request(get(1024)).await.unwrap();
    let collected = resp.into_body().collect().await.expect("whole body");
    assert_eq!(
        collected.trailers().unwrap().get("x-big").unwrap().len(),
        1024
    );
    let mut grpc = stack.h2c().await;
    assert_eq!(
        &unary(&mut grpc, b"ok").await.unwrap().into_inner()[..],
        b"echo:ok"
    );
}

/// An agent from before trailers (its Hello without `"trailers"`) is sent
/// `Open::Http` even for an HTTP/2 request with trailers: the raw body, no
/// body parts it could not read; the request is served, its trailers
/// dropped (and logged, once).
async fn an_agent_without_trailers_gets_raw_bodies(t: Transport) {
    use warren_proto::{Open, Reply, ResponseHead};
    let stack = Stack::server_only(StackOptions::new(t)).await;
    // Its Hello names no capabilities, as one from before trailers.
    let (session, _heartbeat) =
        welcomed_session(&stack, t, &stack.client_id, &stack.token, &[]).await;
    // The old agent's request stream: what it was sent, and a plain answer.
    let served = tokio::spawn(async move {
        let (mut send, mut recv) = session.accept().await.expect("a request stream");
        let open = recv.read_frame::<Open>(1 << 20).await.unwrap();
        let mut body = Vec::new();
        while let Some(chunk) = recv.read_chunk(1 << 16).await.unwrap() {
            body.extend_from_slice(&chunk);
        }
        let reply: Reply = Reply::Head(ResponseHead {
            status: 200,
            headers: Vec::new(),
        });
        send.write_frame(&reply, 1 << 20).await.unwrap();
        send.write_last(Bytes::from_static(b"ok")).await.unwrap();
        (open, body)
    });
    let frames = futures_util::stream::iter([
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"raw bytes"))),
        Ok(Frame::trailers(HeaderMap::from_iter([(
            http::HeaderName::from_static("x-checksum"),
            HeaderValue::from_static("c0ffee"),
        )]))),
    ]);
    let req = Request::post(stack.url("/old"))
        .body(StreamBody::new(frames))
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        TokioIo::new(connect(stack.api).await),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        &resp.into_body().collect().await.unwrap().to_bytes()[..],
        b"ok"
    );
    let (open, body) = served.await.unwrap();
    assert!(matches!(open, Open::Http(_)), "{open:?}");
    assert_eq!(body, b"raw bytes", "the body as it was, unframed");
}

over_transports!(
    grpc_calls,
    deadline_cancels_the_call,
    trailers_both_ways,
    trailers_over_the_limit,
    an_agent_without_trailers_gets_raw_bodies
);
