//! The HTTP/3 client of the tests that run over client versions
//! (`over_transports_and_versions!`): a request written for the other
//! versions (`http://ADDR/...`) goes over a QUIC connection of its own to
//! the HTTP/3 endpoint of the server listening at ADDR, registered when that
//! server started ([`register`]). As hyper's HTTP/2 client does, it drops the
//! connection-specific headers HTTP/3 forbids; the body goes up while the
//! response comes down, and a response body that breaks off is an error.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
};

use bytes::{Buf, Bytes};
use http::{header, HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use rustls::pki_types::CertificateDer;

use super::{ClientBody, TestBody};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the server whose plain listener is at the key takes HTTP/3, and the
/// certificate it serves there.
#[derive(Clone)]
struct Endpoint {
    h3: SocketAddr,
    cert: CertificateDer<'static>,
}

fn endpoints() -> &'static Mutex<HashMap<SocketAddr, Endpoint>> {
    static ENDPOINTS: OnceLock<Mutex<HashMap<SocketAddr, Endpoint>>> = OnceLock::new();
    ENDPOINTS.get_or_init(Default::default)
}

/// Requests to `plain` go over HTTP/3 to `h3`, trusting `cert`.
pub fn register(plain: SocketAddr, h3: SocketAddr, cert: CertificateDer<'static>) {
    endpoints()
        .lock()
        .unwrap()
        .insert(plain, Endpoint { h3, cert });
}

/// Sends `req` over HTTP/3; `Err` if no response head came.
pub async fn send(req: Request<ClientBody>) -> Result<Response<TestBody>, BoxError> {
    let authority = req
        .uri()
        .authority()
        .ok_or("a URL with an address")?
        .to_string();
    let plain: SocketAddr = authority.parse()?;
    let endpoint = endpoints()
        .lock()
        .unwrap()
        .get(&plain)
        .cloned()
        .ok_or_else(|| {
            format!(
                "no HTTP/3 endpoint registered for {plain}: this server was not started for HTTP/3"
            )
        })?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(endpoint.cert)?;
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut quic = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap())?;
    quic.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = quic.connect(endpoint.h3, "localhost")?.await?;
    let (mut driver, mut sender) = h3::client::new(h3_quinn::Connection::new(conn)).await?;
    let driving = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });

    let (mut parts, body) = req.into_parts();
    strip_connection_headers(&mut parts.headers);
    // The same authority over TLS; a `Host` the test set is the authority
    // (HTTP/3 sends it as `:authority`, and both must agree).
    let authority = match parts.headers.remove(header::HOST) {
        Some(host) => host.to_str()?.to_string(),
        None => authority,
    };
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = format!("https://{authority}{path}").parse()?;
    let (mut up, mut down) = sender
        .send_request(Request::from_parts(parts, ()))
        .await?
        .split();
    // The body goes up beside the response coming down (a service may answer
    // before it has read all of it). No body: the FIN goes at once, with the
    // head, so the server sees a bodiless request as the other versions show it.
    if http_body::Body::is_end_stream(&body) {
        // A server that answers at once may stop reading (STOP_SENDING)
        // before the FIN goes: an answer all the same.
        let _ = up.finish().await;
    } else {
        tokio::spawn(upload(up, body));
    }
    let head = down.recv_response().await?;

    let (mut parts, ()) = head.into_parts();
    parts.version = http::Version::HTTP_3;

    // The body keeps the connection (and its endpoint) open while it is read.
    let held = (quic, sender, Abort(driving));
    let state = Some((down, held, false));
    let frames = futures_util::stream::unfold(state, |state| async move {
        let (mut down, held, data_over) = state?;
        if !data_over {
            match down.recv_data().await {
                Ok(Some(mut chunk)) => {
                    let data = chunk.copy_to_bytes(chunk.remaining());
                    return Some((Ok(Frame::data(data)), Some((down, held, false))));
                }
                Ok(None) => {}
                Err(e) => return Some((Err(BoxError::from(e)), None)),
            }
        }
        match down.recv_trailers().await {
            Ok(Some(trailers)) => Some((Ok(Frame::trailers(trailers)), None)),
            Ok(None) => None,
            Err(e) => Some((Err(BoxError::from(e)), None)),
        }
    });
    let body = http_body_util::StreamBody::new(frames).boxed_unsync();
    Ok(Response::from_parts(parts, body))
}

type Up = h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// Sends a request body: data, then trailers if any, then FIN; a client body
/// that fails leaves the stream unfinished (an error at the server).
async fn upload(mut up: Up, mut body: ClientBody) {
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return };
        let sent = match frame.into_data() {
            Ok(data) => up.send_data(data).await,
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => up.send_trailers(trailers).await,
                Err(_) => continue,
            },
        };
        if sent.is_err() {
            return;
        }
    }
    let _ = up.finish().await;
}

/// Stops the connection's driver when the response body goes.
struct Abort(tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What hyper's HTTP/2 client removes (`Connection` and what it names,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, a `TE`
/// other than `trailers`): HTTP/3 forbids them too.
fn strip_connection_headers(headers: &mut HeaderMap) {
    if let Some(listed) = headers.remove(header::CONNECTION) {
        for name in listed.to_str().unwrap_or("").split(',') {
            headers.remove(name.trim());
        }
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    if headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
}
