//! The client edge through the real binary. HTTPS: TLS 1.2 and 1.3 with
//! curl, certificates chosen by SNI (wildcards routing `--base-domain`
//! subdomains), reloads on change and on SIGHUP that leave open connections
//! alone, the plain listener beside it (serving or redirecting), and bad
//! input (plain HTTP, junk, a foreign ALPN, a stalled handshake, bad files)
//! answered clearly while good clients keep being served. HTTP/2: by ALPN
//! and h2c, many streams on one connection each its own tunnel stream (a
//! stalled one stalling only itself), and its limits (streams, header list,
//! rapid reset) refusing what passes them.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use warren::sample::SampleUpstream;

/// A test CA and the leaf certificates it signs, written as PEM files.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    dir: PathBuf,
}

impl TestCa {
    fn new(dir: &Path) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "warren test CA");
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        TestCa {
            cert,
            key,
            dir: dir.to_path_buf(),
        }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes `<stem>.pem` and `<stem>.key` for `names`; returns the leaf's DER.
    fn leaf(&self, stem: &str, names: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        std::fs::write(self.dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
        std::fs::write(self.dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        cert.der().to_vec()
    }

    fn pair_args(&self, stem: &str) -> [String; 4] {
        [
            "--api-tls-cert".into(),
            self.dir.join(format!("{stem}.pem")).display().to_string(),
            "--api-tls-key".into(),
            self.dir.join(format!("{stem}.key")).display().to_string(),
        ]
    }
}

/// A server process with HTTPS on its client API, a sample upstream and an
/// agent process serving it as `home`.
struct Edge {
    dir: tempfile::TempDir,
    ca: TestCa,
    server: ServerProcess,
    _agent: WarrenProcess,
    _upstream: SampleUpstream,
}

impl Edge {
    /// `leaves`: (file stem, names) of the pairs, in flag order.
    async fn start(t: Transport, leaves: &[(&str, &[&str])], extra: &[&str]) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let mut pairs = Vec::new();
        for (stem, names) in leaves {
            ca.leaf(stem, names);
            pairs.extend(ca.pair_args(stem));
        }
        let token = issue_process_token(dir.path(), "home").await;
        let mut args: Vec<&str> = pairs.iter().map(String::as_str).collect();
        // Refused handshakes are logged at debug (internet noise otherwise).
        args.extend(["--log", "info,warren::server::api=debug"]);
        args.extend(extra);
        let server = server_process(dir.path(), "127.0.0.1:0", &args, true).await;
        assert!(server.https, "the API is announced as https://");
        let upstream = SampleUpstream::spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let agent = agent_process_for(&server, dir.path(), "home", &token, &upstream.url(), t, &[]);
        let edge = Edge {
            dir,
            ca,
            server,
            _agent: agent,
            _upstream: upstream,
        };
        assert!(
            eventually(Duration::from_secs(20), || async {
                edge.curl(&[
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &edge.url("/bytes/1"),
                ])
                .await
                .0 == b"200"
            })
            .await,
            "the agent serves through HTTPS: {}",
            edge.server.log.text()
        );
        edge
    }

    /// One pair, for `localhost`.
    async fn localhost(t: Transport, extra: &[&str]) -> Edge {
        Edge::start(t, &[("api", &["localhost"])], extra).await
    }

    fn port(&self) -> u16 {
        self.server.api.port()
    }

    /// An https://localhost URL of the API for `home`.
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}?clientId=home", self.port())
    }

    /// curl trusting the test CA, `localhost` resolving to the API; its
    /// stdout and whether it succeeded.
    async fn curl(&self, args: &[&str]) -> (Vec<u8>, bool) {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(self.ca.ca_path())
            .args(["--resolve", &format!("localhost:{}:127.0.0.1", self.port())])
            .args(args)
            .output()
            .await
            .expect("curl runs");
        (out.stdout, out.status.success())
    }

    /// A TLS client trusting the test CA, offering `alpn`.
    fn connector(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(self.ca.ca_path()).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// A TLS connection to the API asking for `sni`.
    async fn tls(&self, sni: &str) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.tls_offering(sni, &[b"http/1.1"]).await
    }

    /// A TLS connection to the API asking for `sni`, offering `alpn`.
    async fn tls_offering(
        &self,
        sni: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.server.api).await?;
        let name = ServerName::try_from(sni.to_string()).unwrap();
        self.connector(alpn).connect(name, tcp).await
    }

    /// A raw HTTP/2 client connection (the h2 crate, to misbehave with),
    /// its settings exchanged; the connection is driven only by the caller.
    async fn raw_h2(
        &self,
    ) -> (
        h2::client::SendRequest<Bytes>,
        h2::client::Connection<tokio_rustls::client::TlsStream<TcpStream>>,
    ) {
        let tls = self.tls_offering("localhost", &[b"h2"]).await.unwrap();
        let (sender, mut conn) = h2::client::handshake(tls).await.unwrap();
        // Settings arrive with the connection's first frames.
        let _ = tokio::time::timeout(Duration::from_millis(300), &mut conn).await;
        (sender, conn)
    }

    /// The leaf certificate the server presents for `sni`.
    async fn served_cert(&self, sni: &str) -> Vec<u8> {
        let tls = self.tls(sni).await.expect("TLS handshake");
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    /// An HTTP/1.1 connection over TLS for `sni`, for several requests.
    async fn connection(&self, sni: &str) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
        let tls = self.tls(sni).await.expect("TLS handshake");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    fn pem(&self, stem: &str) -> PathBuf {
        self.dir.path().join(format!("{stem}.pem"))
    }
}

async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
) -> (StatusCode, Bytes) {
    sender.ready().await.expect("the connection is open");
    let req = http::Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("a response");
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

async fn https_carries_requests_and_websockets_over_tls_12_and_13(t: Transport) {
    let edge = Edge::localhost(t, &[]).await;
    let url = edge.url("/bytes/300000");
    let expected = sha256_hex(&warren::sample::pattern().slice(0..300_000));
    for version in [
        ["--tlsv1.3", "--tls-max", "1.3"],
        ["--tlsv1.2", "--tls-max", "1.2"],
    ] {
        let (out, ok) = edge
            .curl(&[&version[..], &["-o", "-", &url]].concat())
            .await;
        assert!(ok, "curl {version:?} succeeds");
        assert_eq!(sha256_hex(&out), expected, "{version:?}: the whole body");
    }

    // A request body up, the upstream told the client's scheme.
    let body = vec![7u8; 1 << 20];
    let file = edge.dir.path().join("up.bin");
    std::fs::write(&file, &body).unwrap();
    let (out, ok) = edge
        .curl(&[
            "--data-binary",
            &format!("@{}", file.display()),
            &edge.url("/sha256"),
        ])
        .await;
    assert!(ok);
    let summed: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(summed["sha256"], sha256_hex(&body).as_str(), "{summed}");
    let (out, _) = edge.curl(&[&edge.url("/headers")]).await;
    let seen: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let headers = seen["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "x-forwarded-proto" && h[1] == "https"),
        "the upstream is told the client used HTTPS: {seen}"
    );

    // A WebSocket over TLS (wss://) through the tunnel.
    let tls = edge.tls("localhost").await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(
        format!("wss://localhost:{}/ws/echo?clientId=home", edge.port()),
        tls,
    )
    .await
    .expect("the WebSocket handshake over TLS");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text("over tls")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an echo in time")
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("over tls"));
}

/// Two pairs: the client's SNI picks the certificate (the wildcard one for
/// `--base-domain` subdomains, which route to their agent); a name neither
/// covers, or none at all, gets the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_wildcards_route_subdomains() {
    let edge = Edge::start(
        Transport::Quic,
        &[("api", &["localhost"]), ("wild", &["*.tunnel.test"])],
        &["--base-domain", "tunnel.test"],
    )
    .await;
    let api = std::fs::read(edge.pem("api")).unwrap();
    let wild = std::fs::read(edge.pem("wild")).unwrap();
    let der = |pem: &[u8]| CertificateDer::from_pem_slice(pem).unwrap().to_vec();
    assert_eq!(edge.served_cert("localhost").await, der(&api));
    assert_eq!(edge.served_cert("home.tunnel.test").await, der(&wild));
    // A name no certificate covers gets the first (and the client's check
    // fails, as it should): read with openssl, which shows it anyway.
    let shown = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {} -servername elsewhere.example </dev/null 2>/dev/null \
             | openssl x509 -outform DER",
            edge.server.api
        ))
        .output()
        .await
        .unwrap();
    assert_eq!(shown.stdout, der(&api));

    // The subdomain names the agent; the certificate is valid for it.
    let mut conn = edge.connection("home.tunnel.test").await;
    let (status, body) = get_on(&mut conn, "home.tunnel.test", "/bytes/1000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, warren::sample::pattern().slice(0..1000));
    let (out, ok) = tokio::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(edge.ca.ca_path())
        .args([
            "--resolve",
            &format!("home.tunnel.test:{}:127.0.0.1", edge.port()),
        ])
        .arg(format!("https://home.tunnel.test:{}/bytes/10", edge.port()))
        .output()
        .await
        .map(|o| (o.stdout, o.status.success()))
        .unwrap();
    assert!(ok, "curl verifies the wildcard certificate");
    assert_eq!(out, warren::sample::pattern().slice(0..10));
}

/// Files rewritten (a renewal) are served from the next handshake on, while
/// a connection made before keeps working; a broken rewrite is refused with
/// a log line and the pair in use stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_when_their_files_change() {
    let edge = Edge::localhost(Transport::Quic, &["--api-tls-reload-check", "200ms"]).await;
    let first = edge.served_cert("localhost").await;
    let mut before = edge.connection("localhost").await;
    assert_eq!(
        get_on(&mut before, "localhost", "/bytes/5?clientId=home")
            .await
            .0,
        StatusCode::OK
    );

    let renewed = edge.ca.leaf("api", &["localhost"]);
    assert_ne!(renewed, first);
    assert!(
        eventually(Duration::from_secs(10), || async {
            edge.served_cert("localhost").await == renewed
        })
        .await,
        "the renewed certificate is served: {}",
        edge.server.log.text()
    );
    assert_eq!(
        get_on(&mut before, "localhost", "/bytes/5?clientId=home")
            .await
            .0,
        StatusCode::OK,
        "a connection made before the reload keeps serving"
    );

    std::fs::write(edge.pem("api"), "not a certificate").unwrap();
    assert!(
        edge.server
            .log
            .wait_for("were not reloaded", Duration::from_secs(10))
            .await,
        "{}",
        edge.server.log.text()
    );
    assert_eq!(
        edge.served_cert("localhost").await,
        renewed,
        "the pair in use stays"
    );
    let (_, ok) = edge
        .curl(&["-o", "/dev/null", &edge.url("/bytes/10")])
        .await;
    assert!(ok, "clients are still served");
}

/// With file checks far apart, SIGHUP is what applies a renewal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificates() {
    let edge = Edge::localhost(Transport::Ws, &["--api-tls-reload-check", "1h"]).await;
    let first = edge.served_cert("localhost").await;
    let renewed = edge.ca.leaf("api", &["localhost"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        edge.served_cert("localhost").await,
        first,
        "no reload without a signal"
    );
    signal(&edge.server.child, "-HUP");
    assert!(
        edge.server
            .log
            .wait_for(
                "SIGHUP: client API certificates reloaded (1 pair(s))",
                Duration::from_secs(10)
            )
            .await,
        "{}",
        edge.server.log.text()
    );
    assert_eq!(edge.served_cert("localhost").await, renewed);
}

/// Plain HTTP, junk, a client offering only a foreign ALPN protocol, and
/// one that stalls in its handshake: each gets a clear answer (or a closed
/// connection), a log line and a metric, while good clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_input_is_refused_and_others_are_served() {
    let edge = Edge::localhost(
        Transport::Quic,
        &[
            "--header-read-timeout",
            "1s",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    // A download in progress through it all (an idle keep-alive connection
    // would be closed by the 1 s header deadline, as it should be).
    const BIG: usize = 64 << 20;
    let mut good = edge.connection("localhost").await;
    let req = http::Request::get(format!("/bytes/{BIG}?clientId=home"))
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let mut download = good.send_request(req).await.unwrap().into_body();
    let mut got = 0;
    while got < 1 << 20 {
        got += download
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap()
            .len();
    }

    // Plain HTTP on the HTTPS port: told so, in plain HTTP.
    let mut tcp = TcpStream::connect(edge.server.api).await.unwrap();
    tcp.write_all(b"GET /bytes/5?clientId=home HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("this port speaks HTTPS"),
        "{answer}"
    );
    let (out, _) = edge
        .curl(&["-o", "-", &format!("http://localhost:{}/", edge.port())])
        .await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("this port speaks HTTPS"),
        "curl reads it whole: {out}"
    );

    // A TLS record header followed by junk: closed, nothing served.
    let mut tcp = TcpStream::connect(edge.server.api).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
        .await
        .expect("the junk connection is closed");
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/"),
        "{rest:?}"
    );

    // Only an ALPN protocol the API does not speak: refused in the handshake.
    let refused = edge.tls_offering("localhost", &[b"spdy/1"]).await;
    let err = refused.expect_err("no common application protocol");
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("application protocol")
            || err.to_string().contains("NoApplicationProtocol"),
        "{err}"
    );

    // Connects and never says anything: closed at the header deadline.
    let mut idle = TcpStream::connect(edge.server.api).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

    // Meanwhile the download went on, and new clients are served.
    while let Some(frame) = download.frame().await {
        got += frame
            .expect("the download is not cut")
            .into_data()
            .unwrap()
            .len();
    }
    assert_eq!(got, BIG);
    let (_, ok) = edge
        .curl(&["-o", "/dev/null", &edge.url("/bytes/10")])
        .await;
    assert!(ok);
    assert!(
        edge.server
            .log
            .wait_for("client TLS handshake failed", Duration::from_secs(5))
            .await,
        "{}",
        edge.server.log.text()
    );

    let metrics = read_body(get(&format!("http://{}/metrics", edge.server.admin.unwrap())).await)
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    for reason in ["plain_http", "handshake", "timeout"] {
        assert!(
            metrics.contains(&format!(
                "warren_client_connection_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason} counted: {metrics}"
        );
    }
}

/// The plain listener beside HTTPS: serving (as plain HTTP, and saying so
/// to the upstream), or only redirecting to the HTTPS port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_listener_serves_or_redirects() {
    let edge = Edge::localhost(Transport::Ws, &["--api-plain-listen", "127.0.0.1:0"]).await;
    let plain = edge.server.plain.expect("the plain address is printed");
    let resp = get(&format!("http://{plain}/headers?clientId=home")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = json(resp).await;
    assert!(
        seen["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-forwarded-proto" && h[1] == "http"),
        "{seen}"
    );

    let edge = Edge::localhost(
        Transport::Ws,
        &["--api-plain-listen", "127.0.0.1:0", "--api-plain-redirect"],
    )
    .await;
    let plain = edge.server.plain.unwrap();
    let req = http::Request::get(format!("http://{plain}/bytes/5?clientId=home"))
        .header("host", "tunnel.example:80")
        .body(empty())
        .unwrap();
    let resp = send(req).await;
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        resp.headers()["location"],
        format!(
            "https://tunnel.example:{}/bytes/5?clientId=home",
            edge.port()
        )
        .as_str()
    );
    // Over h2c the host comes from :authority; several Hosts, or user
    // info, are refused.
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .arg("--http2-prior-knowledge")
        .arg(format!("http://{plain}/bytes/5?clientId=home"))
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "308 https://127.0.0.1:{}/bytes/5?clientId=home",
            edge.port()
        )
    );
    for hosts in [
        &["a.example", "b.example"][..],
        &["evil.example@good.example"],
    ] {
        let mut raw = TcpStream::connect(plain).await.unwrap();
        let mut head = "GET / HTTP/1.1\r\n".to_string();
        for h in hosts {
            head += &format!("host: {h}\r\n");
        }
        raw.write_all(format!("{head}connection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        raw.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{hosts:?}: {answer}");
    }
    // curl follows it to HTTPS and gets the body.
    let (out, ok) = tokio::process::Command::new("curl")
        .args(["-sSL", "--cacert"])
        .arg(edge.ca.ca_path())
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", edge.port())])
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", plain.port()),
        ])
        .arg(format!(
            "http://localhost:{}/bytes/10?clientId=home",
            plain.port()
        ))
        .output()
        .await
        .map(|o| (o.stdout, o.status.success()))
        .unwrap();
    assert!(ok);
    assert_eq!(out, warren::sample::pattern().slice(0..10));
}

/// Bad certificate set-ups stop the server at start, naming the file and
/// the fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificate_files_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    ca.leaf("a", &["localhost"]);
    ca.leaf("b", &["localhost"]);
    let p = |name: &str| dir.path().join(name).display().to_string();
    let missing = p("missing.pem");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--api-tls-cert".into(),
                missing.clone(),
                "--api-tls-key".into(),
                p("a.key"),
            ],
            "missing.pem",
        ),
        (
            vec![
                "--api-tls-cert".into(),
                p("a.pem"),
                "--api-tls-key".into(),
                p("b.key"),
            ],
            "do not make a usable certificate/key pair",
        ),
        (
            vec![
                "--api-tls-cert".into(),
                p("a.pem"),
                "--api-tls-key".into(),
                p("a.pem"),
            ],
            "no usable PEM private key",
        ),
        (vec!["--api-tls-cert".into(), p("a.pem")], "come in pairs"),
        (
            vec!["--api-plain-listen".into(), "127.0.0.1:0".into()],
            "need HTTPS on the client API",
        ),
    ];
    for (args, says) in cases {
        let mut all: Vec<String> = ["server", "--api-listen", "127.0.0.1:0"]
            .into_iter()
            .chain(["--tunnel-listen", "127.0.0.1:0", "--certs"])
            .map(String::from)
            .collect();
        all.extend([
            p("certs"),
            "--database-url".into(),
            format!("sqlite://{}", p("w.db")),
        ]);
        all.extend(args);
        refused_at_start(&all, says).await;
    }
}

/// HTTP/2 through the tunnel: by ALPN on HTTPS and h2c (prior knowledge) on
/// the plain listener, curl as the client; a truncated response is an
/// error to it (a reset stream), never a clean short body.
async fn http2_by_alpn_and_prior_knowledge(t: Transport) {
    let edge = Edge::localhost(t, &["--api-plain-listen", "127.0.0.1:0"]).await;
    let expected = sha256_hex(&warren::sample::pattern().slice(0..1_000_000));
    let (out, ok) = edge
        .curl(&["--http2", "-o", "-", &edge.url("/bytes/1000000")])
        .await;
    assert!(ok);
    assert_eq!(sha256_hex(&out), expected);
    let (out, _) = edge
        .curl(&[
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &edge.url("/bytes/1"),
        ])
        .await;
    assert_eq!(out, b"2", "ALPN chose HTTP/2");
    let plain = edge.server.plain.unwrap();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-w", "\n%{http_version}"])
        .arg(format!("http://{plain}/bytes/100?clientId=home"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout.ends_with(b"\n2"),
        "h2c: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (_, ok) = edge
        .curl(&["--http2", "-o", "/dev/null", &edge.url("/truncate/100000")])
        .await;
    assert!(!ok, "a truncated response is an error over HTTP/2 too");
}

/// An HTTP/2 client connection to the API (ALPN h2), with hyper's client.
async fn h2_connection(edge: &Edge) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tls = edge.tls_offering("localhost", &[b"h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

fn h2_get(path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("https://localhost{path}"))
        .body(Empty::new())
        .unwrap()
}

/// 64 requests at once on one HTTP/2 connection, each its own tunnel
/// stream, all answered whole, while a 64 MiB response on the same
/// connection is not read at all: flow control stalls only that stream.
async fn many_streams_share_one_connection_and_a_stalled_one_stalls_alone(t: Transport) {
    let edge = Edge::localhost(t, &[]).await;
    let conn = h2_connection(&edge).await;
    let stalled = conn
        .clone()
        .send_request(h2_get(&format!("/bytes/{}?clientId=home", 64 << 20)))
        .await
        .expect("the big response starts");
    assert_eq!(stalled.status(), StatusCode::OK);
    let requests = (0..64).map(|i| {
        let mut conn = conn.clone();
        async move {
            let n = 1000 + i * 37;
            let resp = conn
                .send_request(h2_get(&format!("/bytes/{n}?clientId=home")))
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, warren::sample::pattern().slice(0..n), "request {i}");
        }
    });
    tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(requests),
    )
    .await
    .expect("every stream is answered while one is stalled");
    // The stalled one still reads to its end once read.
    let mut body = stalled.into_body();
    let mut got = 0;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().into_data().unwrap().len();
    }
    assert_eq!(got, 64 << 20);
}

over_transports!(
    https_carries_requests_and_websockets_over_tls_12_and_13,
    http2_by_alpn_and_prior_knowledge,
    many_streams_share_one_connection_and_a_stalled_one_stalls_alone,
    chromium_plays_audio_and_seeks
);

/// A rapid-reset flood (CVE-2023-44487: streams opened and cancelled at
/// once) gets GOAWAY, a warning and a metric; the advertised stream limit
/// and header list limit hold; other clients are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_and_oversized_headers_are_refused() {
    let edge = Edge::localhost(
        Transport::Quic,
        &[
            "--h2-max-streams",
            "16",
            "--max-head",
            "16KiB",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
    .await;

    // The stream limit, as advertised to the client.
    let (sender, conn) = edge.raw_h2().await;
    assert_eq!(conn.max_concurrent_send_streams(), 16);
    let task = tokio::spawn(conn);

    // A header list over --max-head: that request refused, the connection kept.
    let mut sender = sender.ready().await.unwrap();
    let big = http::Request::get("https://localhost/bytes/5?clientId=home")
        .header("x-big", "a".repeat(32 << 10))
        .body(())
        .unwrap();
    let refused = match sender.send_request(big, true) {
        Ok((resp, _)) => match resp.await {
            Ok(resp) => resp.status().as_u16() == 431,
            Err(e) => e.is_reset() || e.is_remote(),
        },
        Err(_) => true,
    };
    assert!(refused, "a header list over the limit is refused");
    drop(sender);
    task.abort();

    // Rapid reset: open and cancel, as fast as the client can.
    let (sender, conn) = edge.raw_h2().await;
    let driver = tokio::spawn(conn);
    let mut sender = sender;
    let mut sent = 0;
    for _ in 0..10_000 {
        let Ok(ready) = sender.ready().await else {
            break;
        };
        sender = ready;
        let req = http::Request::get("https://localhost/hang?clientId=home")
            .body(())
            .unwrap();
        let Ok((_, mut stream)) = sender.send_request(req, true) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(20), driver)
        .await
        .expect("the flooding connection is closed")
        .unwrap();
    // GOAWAY ENHANCE_YOUR_CALM, or (when the client was still writing as
    // the server closed) a broken pipe; the server's log says which.
    let err = ended.expect_err("closed with an error");
    assert!(
        err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || err.is_io(),
        "after {sent} resets: {err:?}"
    );
    assert!(
        edge.server
            .log
            .wait_for("ENHANCE_YOUR_CALM", Duration::from_secs(5))
            .await,
        "{}",
        edge.server.log.text()
    );

    // Everyone else is served.
    let (out, ok) = edge
        .curl(&["--http2", "-o", "-", &edge.url("/bytes/10")])
        .await;
    assert!(ok);
    assert_eq!(out, warren::sample::pattern().slice(0..10));
    let metrics = read_body(get(&format!("http://{}/metrics", edge.server.admin.unwrap())).await)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&metrics)
            .contains("warren_client_connection_failures_total{reason=\"h2_enhance_your_calm\"}"),
        "counted"
    );
}

/// What headless Chromium shows of `path` after running its scripts: over
/// HTTPS (and HTTP/2, by ALPN) through the tunnel, trusting the test
/// certificate by its public key (as an operator's own CA would be).
/// `None` when there is no browser here (the caller skips, or fails in CI).
async fn in_chromium(edge: &Edge, path: &str) -> Option<String> {
    let chromium = chromium()?;
    let spki = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64",
            edge.pem("api").display()
        ))
        .output()
        .await
        .unwrap();
    let spki = String::from_utf8(spki.stdout).unwrap().trim().to_string();
    assert_eq!(spki.len(), 44, "a base64 SHA-256: {spki:?}");
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
        ])
        .args([
            "--no-first-run",
            "--disable-background-networking",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
        ])
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=10000", "--dump-dom"])
        .arg(edge.url(path))
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("chromium finishes")
        .unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A real browser loads a page and fetches a byte range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_a_page_and_a_range_over_https_and_http2() {
    let edge = Edge::localhost(Transport::Quic, &[]).await;
    let Some(dom) = in_chromium(&edge, "/range-check").await else {
        return;
    };
    let expected = format!(
        "status=206 length=1000 first={} protocol=h2",
        warren::sample::pattern()[1000]
    );
    assert!(dom.contains(&expected), "{expected} in: {dom}");
}

/// A real browser plays audio and seeks in it (a range request far into
/// the file): it has the audio at the new place and plays on, over both
/// transports.
async fn chromium_plays_audio_and_seeks(t: Transport) {
    let edge = Edge::localhost(t, &[]).await;
    let Some(dom) = in_chromium(&edge, "/audio-check").await else {
        return;
    };
    let expected = "duration=30.0 landed=25.0 buffered=true playing=true";
    assert!(dom.contains(expected), "{expected} in: {dom}");
    assert!(dom.contains("protocol=h2"), "over HTTP/2: {dom}");
}

/// At --max-client-connections, idle HTTP/2 connections (preface and
/// settings, no streams; clients that never answer a GOAWAY) make room for
/// new clients as idle HTTP/1.1 ones do, instead of locking them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_make_room_at_the_limit() {
    let edge = Edge::localhost(Transport::Quic, &["--max-client-connections", "8"]).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        // The handshake's frames are exchanged; then the connection is
        // neither used nor driven again (a GOAWAY goes unanswered).
        held.push(edge.raw_h2().await);
    }
    for i in 0..12 {
        let (_, ok) = edge
            .curl(&["--http2", "-o", "/dev/null", &edge.url("/bytes/10")])
            .await;
        assert!(ok, "client {i} is served: {}", edge.server.log.text());
    }
    drop(held);
}
