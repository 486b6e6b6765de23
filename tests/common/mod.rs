//! Test harness: a real server, agent and sample upstream on loopback, plus a
//! real HTTP client. Shared by the end-to-end test files.
#![allow(dead_code)]

pub mod h3_client;
mod https_upstream;
mod nodes;
mod process;
pub use https_upstream::HttpsService;
#[allow(unused_imports)] // not every test file runs cluster nodes
pub use nodes::*;
pub use process::*;

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::{sync::watch, task::JoinHandle};
use warren::{
    agent::{Agent, AgentConfig, AgentStatus},
    auth,
    registry::Registry,
    sample::SampleUpstream,
    server::{Server, ServerConfig},
    shutdown::{self, ShutdownTrigger},
    tls::Trust,
};

/// Which transport a test's agent uses. Tests are written once and run over
/// each (see `over_transports!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Quic,
    Ws,
}

impl Transport {
    pub fn choice(self) -> warren::agent::TransportChoice {
        match self {
            Transport::Quic => warren::agent::TransportChoice::Quic,
            Transport::Ws => warren::agent::TransportChoice::Ws,
        }
    }

    pub fn flag(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Ws => "ws",
        }
    }
}

/// One test of the matrix: `$f` run over transport `$t`, with client
/// version `$v`, against an https upstream when `$tls`. Each has a time
/// limit, so a hang fails with its name instead of stalling the suite.
#[macro_export]
macro_rules! matrix_test {
    ($name:ident = $f:path; $t:ident, $v:ident, $tls:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            use $crate::common::{ClientVersion, Transport, CLIENT_VERSION, UPSTREAM_TLS};
            let run = UPSTREAM_TLS.scope(
                $tls,
                CLIENT_VERSION.scope(ClientVersion::$v, $f(Transport::$t)),
            );
            tokio::time::timeout(std::time::Duration::from_secs(180), run)
                .await
                .expect("test finished within 180 s");
        }
    };
}

/// Generates one `#[tokio::test]` per transport for each named
/// `async fn name(t: Transport)` in the calling file.
#[macro_export]
macro_rules! over_transports {
    ($($name:ident),* $(,)?) => {
        mod quic {
            $( $crate::matrix_test!($name = super::$name; Quic, Http1, false); )*
        }
        mod ws {
            $( $crate::matrix_test!($name = super::$name; Ws, Http1, false); )*
        }
    };
}

/// Generates, for each named `async fn name(t: Transport)`, one test per
/// transport and client HTTP version (HTTP/1.1, HTTP/2 with prior
/// knowledge, HTTP/3): [`get`] and [`send`] speak the test's version, and
/// so does [`client`] but for HTTP/3 (tasks the test spawns speak
/// HTTP/1.1). Under HTTP/3 a [`Stack`]'s server also serves HTTPS and
/// HTTP/3, its `api` being the plain listener beside them.
#[macro_export]
macro_rules! over_transports_and_versions {
    ($($name:ident),* $(,)?) => {
        mod quic {
            $crate::over_client_versions!(Quic; $($name),*);
        }
        mod ws {
            $crate::over_client_versions!(Ws; $($name),*);
        }
    };
}

/// The inner half of [`over_transports_and_versions`].
#[macro_export]
macro_rules! over_client_versions {
    ($t:ident; $($name:ident),*) => {
        mod h1 {
            $( $crate::matrix_test!($name = super::super::$name; $t, Http1, false); )*
        }
        mod h2 {
            $( $crate::matrix_test!($name = super::super::$name; $t, Http2, false); )*
        }
        mod h3 {
            $( $crate::matrix_test!($name = super::super::$name; $t, Http3, false); )*
        }
    };
}

/// [`over_transports_and_versions`], each also against an `http://` and an
/// `https://` upstream (the sample service behind TLS, [`HttpsService`]):
/// a [`Stack`]'s agents reach the test's upstream.
#[macro_export]
macro_rules! over_transports_versions_and_upstreams {
    ($($name:ident),* $(,)?) => {
        mod quic {
            $crate::over_versions_and_upstreams!(Quic; $($name),*);
        }
        mod ws {
            $crate::over_versions_and_upstreams!(Ws; $($name),*);
        }
    };
}

/// The middle part of [`over_transports_versions_and_upstreams`].
#[macro_export]
macro_rules! over_versions_and_upstreams {
    ($t:ident; $($name:ident),*) => {
        mod h1 {
            $crate::over_upstreams!($t, Http1; $($name),*);
        }
        mod h2 {
            $crate::over_upstreams!($t, Http2; $($name),*);
        }
        mod h3 {
            $crate::over_upstreams!($t, Http3; $($name),*);
        }
    };
}

/// The inner part of [`over_transports_versions_and_upstreams`].
#[macro_export]
macro_rules! over_upstreams {
    ($t:ident, $v:ident; $($name:ident),*) => {
        mod http {
            $( $crate::matrix_test!($name = super::super::super::$name; $t, $v, false); )*
        }
        mod https {
            $( $crate::matrix_test!($name = super::super::super::$name; $t, $v, true); )*
        }
    };
}

/// The HTTP version test clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientVersion {
    Http1,
    /// h2c with prior knowledge.
    Http2,
    /// Over QUIC to the server's HTTP/3 endpoint (see [`h3_client`]).
    Http3,
}

tokio::task_local! {
    /// The version of the test running in this task (see
    /// [`over_transports_and_versions`]); HTTP/1.1 outside one.
    pub static CLIENT_VERSION: ClientVersion;
}

tokio::task_local! {
    /// Whether a [`Stack`]'s agents reach the sample upstream over TLS (see
    /// [`over_transports_versions_and_upstreams`]); plain outside one.
    pub static UPSTREAM_TLS: bool;
}

/// The scheme of the upstream the test's agents reach.
pub fn upstream_scheme() -> &'static str {
    if UPSTREAM_TLS.try_with(|tls| *tls).unwrap_or(false) {
        "https"
    } else {
        "http"
    }
}

pub fn client_version() -> ClientVersion {
    CLIENT_VERSION
        .try_with(|v| *v)
        .unwrap_or(ClientVersion::Http1)
}

/// Which registry database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    MySql,
}

/// Where the tests look for MySQL/MariaDB when `WARREN_TEST_MYSQL_URL` is unset.
const LOCAL_MYSQL: &str = "mysql://root@127.0.0.1:3306/test";

/// The MySQL URL to test against: `WARREN_TEST_MYSQL_URL`, else a MariaDB
/// answering on 127.0.0.1:3306. `None` when there is none: the test is then
/// skipped, and says so (see [`skip`]).
pub fn mysql_url() -> Option<String> {
    if let Ok(url) = std::env::var("WARREN_TEST_MYSQL_URL") {
        if !url.is_empty() {
            return Some(url);
        }
    }
    let addr: SocketAddr = "127.0.0.1:3306".parse().unwrap();
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
        return Some(LOCAL_MYSQL.to_string());
    }
    skip("MySQL/MariaDB: set WARREN_TEST_MYSQL_URL or run MariaDB on 127.0.0.1:3306");
    None
}

/// Records that the calling test did not run, for `tests/run`'s closing line
/// (`N passed, N failed, N skipped`). Under CI (`CI` set) a missing
/// dependency is a failure, never a skip.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_string();
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI must run every test, but: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        use std::io::Write;
        let _ = writeln!(file, "{test}: {why}");
    }
}

/// A unique suffix, so tests sharing one MySQL database never collide.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

pub type ClientBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// A response body as [`send`] gives it, whatever the version.
pub type TestBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The scheme a server sees the test's client speak (`X-Forwarded-Proto`).
pub fn client_scheme() -> &'static str {
    match client_version() {
        ClientVersion::Http3 => "https",
        ClientVersion::Http1 | ClientVersion::Http2 => "http",
    }
}

/// A client speaking the test's HTTP version ([`client_version`]); HTTP/3
/// has no hyper client: use [`send`].
pub fn client() -> Client<HttpConnector, ClientBody> {
    let mut builder = Client::builder(TokioExecutor::new());
    match client_version() {
        ClientVersion::Http1 => {}
        ClientVersion::Http2 => {
            builder.http2_only(true);
        }
        ClientVersion::Http3 => panic!("no hyper client for HTTP/3: the test should use send()"),
    }
    builder.build(HttpConnector::new())
}

pub fn empty() -> ClientBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub upstream: SampleUpstream,
    pub api: SocketAddr,
    pub tunnel: SocketAddr,
    pub registry: Registry,
    pub client_id: String,
    pub token: String,
    pub node_id: String,
    pub fingerprint: String,
    pub transport: Transport,
    /// What the server was started with, its listeners' ports filled in.
    pub config: ServerConfig,
    /// The upstream behind TLS, for a test run against an https upstream.
    pub https_upstream: Option<HttpsService>,
    server: Option<(ShutdownTrigger, JoinHandle<()>)>,
    agents: Vec<RunningAgent>,
}

pub struct RunningAgent {
    pub status: watch::Receiver<AgentStatus>,
    trigger: ShutdownTrigger,
    pub task: JoinHandle<Result<(), warren::agent::AgentError>>,
}

impl RunningAgent {
    /// Stops the agent and checks how it ended: in order, without a panic or
    /// an error (a crash in its background tasks must not pass unseen).
    pub async fn stop(self) {
        self.trigger.fire();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the agent stops within 10 s")
            .expect("the agent task did not panic")
            .expect("the agent ended without an error");
    }
}

pub struct StackOptions {
    pub db: Db,
    pub transport: Transport,
    pub server: ServerConfig,
    /// Use this certificate directory instead of a fresh self-signed one.
    pub certs_dir: Option<PathBuf>,
}

impl StackOptions {
    pub fn new(transport: Transport) -> Self {
        StackOptions {
            db: Db::Sqlite,
            certs_dir: None,
            transport,
            server: ServerConfig {
                // Short heartbeat so dead agents are found within ~1.5 s.
                heartbeat: Duration::from_millis(500),
                ..ServerConfig::default()
            },
        }
    }
}

impl Stack {
    /// Server + sample upstream; no agent yet.
    pub async fn server_only(opts: StackOptions) -> Stack {
        init_logging();
        let dir = tempfile::tempdir().expect("tempdir");
        let database_url = match opts.db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("warren.db").display()),
            Db::MySql => mysql_url().expect("the MySQL variant needs MySQL/MariaDB"),
        };
        let node_id = unique("node");
        let mut config = ServerConfig {
            api_listen: "127.0.0.1:0".parse().unwrap(),
            tunnel_listen: "127.0.0.1:0".parse().unwrap(),
            database_url,
            certs_dir: opts
                .certs_dir
                .clone()
                .unwrap_or_else(|| dir.path().join("certs")),
            node_id: node_id.clone(),
            ..opts.server
        };
        // HTTP/3 needs HTTPS: the test's requests go there (see `h3_client`), and
        // whatever else speaks plain HTTP to `api`, the listener beside it.
        let over_h3 = client_version() == ClientVersion::Http3;
        let h3_cert = over_h3.then(|| {
            let (cert, key, der) = localhost_certificate(dir.path());
            config.api_tls = Some(warren::server::ApiTlsConfig::new(vec![
                warren::server::CertPair { cert, key },
            ]));
            config.api_plain_listen = Some("127.0.0.1:0".parse().unwrap());
            config.api_http3 = true;
            der
        });
        let server = Server::bind(config.clone()).await.expect("server binds");
        let api = match &h3_cert {
            None => server.api_addr(),
            Some(cert) => {
                let plain = server.api_plain_addr().expect("a plain listener");
                let h3 = server.api_http3_addr().expect("HTTP/3 on");
                h3_client::register(plain, h3, cert.clone());
                config.api_listen = server.api_addr();
                config.api_plain_listen = Some(plain);
                plain
            }
        };
        config.tunnel_listen = server.tunnel_addr();
        if h3_cert.is_none() {
            config.api_listen = api;
        }
        let registry = server.registry().clone();
        let client_id = unique("agent");
        let token = auth::issue_token(&registry, &client_id).await.unwrap();
        let upstream = SampleUpstream::spawn("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let https_upstream = match upstream_scheme() {
            "https" => Some(HttpsService::spawn(dir.path(), upstream.addr().to_string()).await),
            _ => None,
        };
        let (trigger, stop) = shutdown::channel();
        let tunnel = server.tunnel_addr();
        let fingerprint = server.identity().fingerprint();
        let task = tokio::spawn(async move {
            server.run(stop).await.expect("server runs");
        });
        Stack {
            dir,
            upstream,
            api,
            tunnel,
            registry,
            client_id,
            token,
            node_id,
            fingerprint,
            transport: opts.transport,
            config,
            https_upstream,
            server: Some((trigger, task)),
            agents: Vec::new(),
        }
    }

    /// Server, upstream and one connected agent.
    pub async fn start(opts: StackOptions) -> Stack {
        let mut stack = Stack::server_only(opts).await;
        let config = stack.agent_config();
        stack.add_agent(config).await;
        stack
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("certs").join("server.pem")
    }

    /// The URL the test's agents reach the upstream at: the sample
    /// service's, or its TLS terminator's.
    pub fn upstream_url(&self) -> String {
        match &self.https_upstream {
            Some(tls) => tls.url.clone(),
            None => self.upstream.url(),
        }
    }

    /// What the upstream sees as its own authority (`Host`).
    pub fn upstream_authority(&self) -> String {
        let url = self.upstream_url();
        url.split_once("://")
            .map_or(url.clone(), |(_, a)| a.to_string())
    }

    pub fn agent_config(&self) -> AgentConfig {
        let mut config = AgentConfig::new(
            &self.tunnel.to_string(),
            &self.client_id,
            &self.token,
            &self.upstream_url(),
            Trust::CaFile(self.ca_path()),
        );
        config.upstream.ca = self.https_upstream.as_ref().map(|tls| tls.cert.clone());
        config.transport = self.transport.choice();
        config.backoff_min = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(500);
        config
    }

    /// Starts an in-process agent and waits until it is connected.
    pub async fn add_agent(&mut self, config: AgentConfig) -> watch::Receiver<AgentStatus> {
        self.add_running(Agent::new(config).expect("agent config"))
            .await
    }

    /// Runs `agent` in this process and waits until it is connected.
    pub async fn add_running(&mut self, agent: Agent) -> watch::Receiver<AgentStatus> {
        let mut status = agent.status();
        let (trigger, stop) = shutdown::channel();
        let task = tokio::spawn(agent.run(stop));
        wait_connected(&mut status).await;
        self.agents.push(RunningAgent {
            status: status.clone(),
            trigger,
            task,
        });
        status
    }

    /// Stops and returns the agents started so far.
    pub fn take_agents(&mut self) -> Vec<RunningAgent> {
        std::mem::take(&mut self.agents)
    }

    pub fn url(&self, path_and_query: &str) -> String {
        let sep = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "http://{}{path_and_query}{sep}clientId={}",
            self.api, self.client_id
        )
    }

    /// Stops the server (explicit shutdown path) and waits for it to finish.
    pub async fn stop_server(&mut self) {
        if let Some((trigger, task)) = self.server.take() {
            trigger.fire();
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server stops within 15 s")
                .expect("server task");
        }
    }

    /// Spawns `warren agent` as a real process.
    pub fn spawn_agent_process(&self, token: &str, extra: &[&str]) -> WarrenProcess {
        self.agent_process_to(&self.tunnel.to_string(), token, extra)
    }

    /// `warren agent` as a real process for this stack's client id, upstream
    /// and CA, dialing `tunnel` (e.g. a server process's); logs at info on a
    /// watched stderr.
    pub fn agent_process_to(&self, tunnel: &str, token: &str, extra: &[&str]) -> WarrenProcess {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .arg("agent")
            .args(["--server", tunnel])
            .args(["--client-id", &self.client_id])
            .args(["--token", token])
            .args(["--upstream", &self.upstream.url()])
            .args(["--transport", self.transport.flag()])
            .arg("--ca")
            .arg(self.ca_path())
            .args(extra)
            .env("WARREN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn warren agent");
        WarrenProcess::new(child, "the agent process")
    }
}

pub async fn wait_connected(status: &mut watch::Receiver<AgentStatus>) -> AgentStatus {
    tokio::time::timeout(
        Duration::from_secs(15),
        status.wait_for(|s| matches!(s, AgentStatus::Connected { .. })),
    )
    .await
    .expect("agent connects within 15 s")
    .expect("agent alive")
    .clone()
}

/// Panics in spawned tasks (on runtime worker threads), which tokio would
/// otherwise swallow: a test's `Stack` fails when any happened.
static TASK_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_task_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                TASK_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

impl Drop for Stack {
    /// A test passes only if nothing behind it crashed: the server task (when
    /// it already ended) ended without a panic, and no spawned task panicked.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if let Some((_, task)) = &mut self.server {
            use futures_util::FutureExt;
            if let Some(Err(e)) = task.now_or_never() {
                panic!("the server task failed: {e}");
            }
        }
        let panics = TASK_PANICS.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            panics, 0,
            "a spawned task panicked during the tests (see above)"
        );
    }
}

/// Logs to the test output when `WARREN_TEST_LOG` is set (e.g. `debug`).
pub fn init_logging() {
    count_task_panics();
    if let Ok(filter) = std::env::var("WARREN_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn get(url: &str) -> Response<TestBody> {
    send(Request::get(url).body(empty()).unwrap()).await
}

/// Sends `req` in the test's HTTP version, and checks it was answered in it.
pub async fn send(req: Request<ClientBody>) -> Response<TestBody> {
    let resp = match client_version() {
        ClientVersion::Http3 => h3_client::send(req).await.expect("request succeeds"),
        _ => client()
            .request(req)
            .await
            .expect("request succeeds")
            .map(|body| body.map_err(Into::into).boxed_unsync()),
    };
    let version = match client_version() {
        ClientVersion::Http1 => http::Version::HTTP_11,
        ClientVersion::Http2 => http::Version::HTTP_2,
        ClientVersion::Http3 => http::Version::HTTP_3,
    };
    assert_eq!(
        resp.version(),
        version,
        "answered in the test's HTTP version"
    );
    resp
}

/// Reads a whole body; `Err` if the connection broke before its end.
pub async fn read_body<B: http_body::Body>(resp: Response<B>) -> Result<Bytes, B::Error> {
    Ok(resp.into_body().collect().await?.to_bytes())
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

pub async fn json<B>(resp: Response<B>) -> serde_json::Value
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let body = read_body(resp).await.expect("body");
    serde_json::from_slice(&body).expect("JSON body")
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A real WebSocket client handshake to `ws://addr{path}`.
pub async fn ws_upgrade(
    addr: std::net::SocketAddr,
    path: &str,
    protocol: Option<&str>,
) -> Result<(Ws, http::Response<Option<Vec<u8>>>), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::handshake::client::generate_key;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
    let mut req = http::Request::get(format!("ws://{addr}{path}"))
        .header("host", addr.to_string())
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", generate_key());
    if let Some(p) = protocol {
        req = req.header("sec-websocket-protocol", p);
    }
    let config = warren::websocket::WsLimits::default().config();
    tokio_tungstenite::client_async_with_config(req.body(()).unwrap(), tcp, Some(config)).await
}

/// Waits for the agent's next `Disconnected` status and returns its reason.
pub async fn wait_disconnected(status: &mut watch::Receiver<AgentStatus>) -> String {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            status.changed().await.unwrap();
            if let AgentStatus::Disconnected { reason } = status.borrow().clone() {
                return reason;
            }
        }
    })
    .await
    .expect("the agent reports the failure in time")
}

/// Reads frames until at least `n` bytes have arrived; returns the body so the
/// rest can be read (or abandoned) by the caller.
pub async fn read_at_least<B>(resp: Response<B>, n: usize) -> B
where
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut body = resp.into_body();
    let mut seen = 0;
    while seen < n {
        let frame = body.frame().await.expect("more body").expect("body frame");
        seen += frame
            .into_data()
            .map(|d| bytes::Buf::remaining(&d))
            .unwrap_or(0);
    }
    body
}

/// A peer that completes the transport handshake on the stack's tunnel port
/// and then speaks (or does not speak) whatever the test wants: a rogue or
/// hand-driven agent.
pub async fn raw_session(
    stack: &Stack,
    t: Transport,
    client_id: &str,
) -> warren::transport::Session {
    raw_session_result(stack, t, client_id)
        .await
        .expect("the transport handshake itself works")
}

/// Like [`raw_session`], for tests where the server may turn the peer away.
pub async fn raw_session_result(
    stack: &Stack,
    t: Transport,
    client_id: &str,
) -> Result<warren::transport::Session, warren::transport::TransportError> {
    use warren::{
        tls,
        transport::{self, Dial, TransportKind, TransportTuning},
    };
    let kind = match t {
        Transport::Quic => TransportKind::Quic,
        Transport::Ws => TransportKind::Ws,
    };
    let tls = tls::client_config(&Trust::CaFile(stack.ca_path())).unwrap();
    let host = stack.tunnel.to_string();
    transport::connect(
        kind,
        Dial {
            addr: stack.tunnel,
            server_name: "localhost",
            host: &host,
            client_id,
            tls,
            tuning: &TransportTuning::default(),
            timeout: Duration::from_secs(5),
        },
    )
    .await
}

/// The Hello a hand-driven agent sends (current protocol version).
pub fn hello(client_id: &str, token: &str, agent: &str) -> warren_proto::Control {
    warren_proto::Control::Hello(warren_proto::Hello {
        version: warren_proto::PROTOCOL_VERSION,
        client_id: client_id.into(),
        token: token.into(),
        agent: agent.into(),
        capabilities: Vec::new(),
        transport_note: String::new(),
        replaces: None,
    })
}

/// A hand-driven agent for `client_id`: its Hello (with `capabilities`)
/// welcomed, its heartbeat kept on the control stream by a task (returned);
/// the streams the server opens are the caller's to accept, or to ignore.
pub async fn welcomed_session(
    stack: &Stack,
    t: Transport,
    client_id: &str,
    token: &str,
    capabilities: &[&str],
) -> (warren::transport::Session, JoinHandle<()>) {
    use warren_proto::{Control, MAX_CONTROL_FRAME};
    let session = raw_session(stack, t, client_id).await;
    let (mut send, mut recv) = session.open().await.unwrap();
    let mut hello = hello(client_id, token, "hand-driven");
    if let Control::Hello(h) = &mut hello {
        h.capabilities = capabilities.iter().map(|c| c.to_string()).collect();
    }
    send.write_frame(&hello, MAX_CONTROL_FRAME).await.unwrap();
    let reply = recv.read_frame::<Control>(MAX_CONTROL_FRAME).await.unwrap();
    let Control::Welcome(welcome) = reply else {
        panic!("the hand-driven agent is welcomed: {reply:?}");
    };
    let beat = Duration::from_millis(u64::from(welcome.heartbeat_ms));
    let control = session.clone();
    let task = tokio::spawn(async move {
        let liveness = warren::control::Liveness::new(control.clone());
        warren::control::keepalive(
            send,
            recv,
            beat,
            &liveness,
            std::future::pending(),
            |_| {},
            Default::default(),
        )
        .await;
    });
    (session, task)
}

/// A self-signed certificate for `localhost`, written to `dir` as
/// `api.pem` and `api.key` (for `--api-tls-cert`/`--api-tls-key`); returns
/// the two paths and the certificate, for a client to trust.
pub fn localhost_certificate(
    dir: &std::path::Path,
) -> (PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (pem, key_path) = (dir.join("api.pem"), dir.join("api.key"));
    std::fs::write(&pem, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (pem, key_path, cert.der().clone())
}

/// `warren server` in `dir` with HTTPS on its client API (a
/// [`localhost_certificate`]) and `extra` flags; returns it, the
/// certificate to trust, and a token for `client_id`.
pub async fn https_server_process(
    dir: &std::path::Path,
    client_id: &str,
    extra: &[&str],
) -> (
    ServerProcess,
    rustls::pki_types::CertificateDer<'static>,
    String,
) {
    let (pem, key, cert) = localhost_certificate(dir);
    let token = issue_process_token(dir, client_id).await;
    let mut args = vec![
        "--api-tls-cert",
        pem.to_str().unwrap(),
        "--api-tls-key",
        key.to_str().unwrap(),
    ];
    args.extend(extra);
    let server = server_process(dir, "127.0.0.1:0", &args, true).await;
    (server, cert, token)
}

/// `warren agent` for `client_id` as a real process, connected to `server`
/// (its certificates in `dir`) over `t`, serving `upstream`; `extra` flags.
pub fn agent_process_for(
    server: &ServerProcess,
    dir: &std::path::Path,
    client_id: &str,
    token: &str,
    upstream: &str,
    t: Transport,
    extra: &[&str],
) -> WarrenProcess {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["agent", "--server", &server.tunnel.to_string()])
        .args(["--client-id", client_id, "--token", token])
        .args(["--upstream", upstream, "--transport", t.flag()])
        .args(extra)
        .arg("--ca")
        .arg(dir.join("certs").join("server.pem"))
        .env("WARREN_LOG", "warn")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    WarrenProcess::new(child, "the agent process")
}

/// Runs `warren ARGS` and checks that it refuses to start, saying `says`
/// on its standard error.
pub async fn refused_at_start(args: &[String], says: &str) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env("WARREN_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("warren exits")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} is refused");
    assert!(stderr.contains(says), "{args:?}: {stderr}");
}

/// A token for `client_id` in the registry a [`server_process`] started in
/// `dir` uses.
pub async fn issue_process_token(dir: &std::path::Path, client_id: &str) -> String {
    let url = format!("sqlite://{}", dir.join("warren.db").display());
    let registry = Registry::open(&url).await.unwrap();
    auth::issue_token(&registry, client_id).await.unwrap()
}

/// Whether `url` answers 200 within `within` (polled; for "is it up yet").
pub async fn served(url: &str, within: Duration) -> bool {
    eventually(within, || async {
        client()
            .request(Request::get(url).body(empty()).unwrap())
            .await
            .is_ok_and(|r| r.status() == http::StatusCode::OK)
    })
    .await
}

/// `warren server` as a real process (so it can be killed, or its log read).
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub log: StderrWatch,
    /// The client API (HTTPS when `https`).
    pub api: SocketAddr,
    pub https: bool,
    /// The plain listener beside HTTPS (`--api-plain-listen`).
    pub plain: Option<SocketAddr>,
    pub tunnel: SocketAddr,
    /// The admin listener, when `--admin-listen` was among the flags.
    pub admin: Option<SocketAddr>,
}

/// Starts `warren server` on `tunnel` (e.g. `127.0.0.1:0`) with its registry
/// and certificates in `dir`; it logs at info with `log`, else at warn.
pub async fn server_process(
    dir: &std::path::Path,
    tunnel: &str,
    extra: &[&str],
    log: bool,
) -> ServerProcess {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "server",
            "--api-listen",
            "127.0.0.1:0",
            "--tunnel-listen",
            tunnel,
        ])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("warren.db").display()))
        .arg("--certs")
        .arg(dir.join("certs"))
        .args(extra)
        .env("WARREN_LOG", if log { "info" } else { "warn" })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = StderrWatch::on(&mut child, "the server process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut api, mut tunnel, mut admin, mut plain, mut https) = (None, None, None, None, false);
    // The admin line, when there is one, is the last the server prints.
    let with_admin = extra.contains(&"--admin-listen");
    while let Some(line) = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("server process starts")
        .unwrap()
    {
        if let Some(rest) = line.strip_prefix("client API on http://") {
            api = rest.trim().parse().ok();
        }
        if let Some(rest) = line.strip_prefix("client API on https://") {
            (api, https) = (rest.trim().parse().ok(), true);
        }
        if let Some(rest) = line.strip_prefix("client API (plain HTTP) on http://") {
            plain = rest.trim().parse().ok();
        }
        if let Some(rest) = line.strip_prefix("tunnel on ") {
            tunnel = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.strip_prefix("admin API on http://") {
            admin = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if tunnel.is_some() && (admin.is_some() || !with_admin) {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    ServerProcess {
        child,
        log,
        api: api.expect("API address printed"),
        https,
        plain,
        tunnel: tunnel.expect("tunnel address printed"),
        admin,
    }
}

/// The installed Chromium's command, if there is one: tests that need a
/// browser skip (and say so, or fail under CI) without it.
pub fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser"].into_iter().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .output()
            .is_ok()
    });
    if found.is_none() {
        skip("Chromium is not installed (apt-get install chromium)");
    }
    found
}
