//! The HTTP version of one client connection, and the connection served in
//! it: HTTP/2 when TLS's ALPN chose `h2` or a plain connection opens with the
//! h2c preface (peeked, not read), else HTTP/1.1. Each connection holds only
//! its own version's state: hyper-util's auto builder holds room for both,
//! 12 KiB more per idle keep-alive connection.

use std::{future::Future, pin::Pin, time::Duration};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The HTTP version a client connection speaks.
#[derive(Clone, Copy)]
pub(super) enum Version {
    H1,
    H2,
}

/// The h2c preface a client with prior knowledge opens with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection opens with the HTTP/2 preface, read without
/// taking it from the socket. A closed connection or any other first bytes:
/// no (HTTP/1.1 answers or closes it).
pub(super) async fn opens_with_h2_preface(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return false;
        }
        if n == H2_PREFACE.len() {
            return true;
        }
        // Part of the preface so far (clients send it in one write, so this
        // is rare): peek again shortly rather than spin on what is there.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// HTTP/2 as the client API serves it.
pub(super) fn h2_builder(
    config: &super::config::ServerConfig,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let h2 = &config.h2;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_streams)
        // The same bound as an HTTP/1.1 head: a larger one is refused.
        .max_header_list_size(config.max_head_frame.min(u32::MAX as usize) as u32)
        // Rapid reset (CVE-2023-44487): streams a client opens and cancels
        // before they are served; past this many at once, GOAWAY.
        .max_pending_accept_reset_streams(h2.max_pending_resets)
        .max_local_error_reset_streams(h2.max_error_resets)
        .initial_stream_window_size(h2.stream_window)
        .initial_connection_window_size(h2.connection_window)
        .max_send_buf_size(h2.send_buffer)
        // A client gone without a FIN (a phone off the network) is found
        // by an unanswered ping instead of holding its streams for ever.
        .keep_alive_interval(h2.ping_interval)
        .keep_alive_timeout(h2.ping_interval);
    builder
}

/// A client connection's HTTP in the one version it speaks.
pub(super) enum HttpConn<A, B> {
    H1(Pin<Box<A>>),
    H2(Pin<Box<B>>),
}

impl<A, B> HttpConn<A, B>
where
    A: Future<Output = hyper::Result<()>> + GracefulShutdown,
    B: Future<Output = hyper::Result<()>> + GracefulShutdown,
{
    pub fn graceful_shutdown(&mut self) {
        match self {
            HttpConn::H1(c) => c.as_mut().shutdown_gracefully(),
            HttpConn::H2(c) => c.as_mut().shutdown_gracefully(),
        }
    }
}

impl<A, B> Future for HttpConn<A, B>
where
    A: Future<Output = hyper::Result<()>>,
    B: Future<Output = hyper::Result<()>>,
{
    type Output = hyper::Result<()>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            HttpConn::H1(c) => c.as_mut().poll(cx),
            HttpConn::H2(c) => c.as_mut().poll(cx),
        }
    }
}

/// hyper's connections of either version, told to finish and close.
pub(super) trait GracefulShutdown {
    fn shutdown_gracefully(self: Pin<&mut Self>);
}

impl<I, S> GracefulShutdown for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

impl<I, S, E> GracefulShutdown for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}
