//! Several server nodes sharing one MariaDB registry (runs when
//! `WARREN_TEST_MYSQL_URL` is set): any node serves any agent's clients, dead
//! nodes are reaped, agents move and keep several connections.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use rustls_pki_types::pem::PemObject;
use warren::{
    agent::{Agent, AgentConfig, AgentStatus},
    auth,
    registry::Registry,
    sample::{pattern_sha256, SampleUpstream},
    server::{ClusterConfig, Server, ServerConfig},
    shutdown::{self, ShutdownTrigger},
    tls::Trust,
};

const MIB: u64 = 1024 * 1024;

/// A node running in this process.
struct Node {
    id: String,
    api: std::net::SocketAddr,
    cluster: std::net::SocketAddr,
    tunnel: std::net::SocketAddr,
    /// The admin listener, when the node was tuned to have one.
    admin: Option<std::net::SocketAddr>,
    trigger: Option<ShutdownTrigger>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    async fn start(url: &str, certs: &std::path::Path, id: &str) -> Node {
        Node::start_with(url, certs, id, None).await
    }

    /// A node whose cluster link uses the cluster CA in `tls` (mutual TLS).
    async fn start_with(
        url: &str,
        certs: &std::path::Path,
        id: &str,
        tls: Option<&std::path::Path>,
    ) -> Node {
        Node::start_tuned(url, certs, id, tls, |_| {}).await
    }

    /// A node with `tune` applied to its configuration.
    async fn start_tuned(
        url: &str,
        certs: &std::path::Path,
        id: &str,
        tls: Option<&std::path::Path>,
        tune: impl FnOnce(&mut ServerConfig),
    ) -> Node {
        let mut cluster = ClusterConfig::new("127.0.0.1:0".parse().unwrap(), SECRET);
        cluster.lease = Duration::from_secs(2);
        cluster.tls_dir = tls.map(|d| d.to_path_buf());
        let mut config = ServerConfig {
            api_listen: "127.0.0.1:0".parse().unwrap(),
            tunnel_listen: "127.0.0.1:0".parse().unwrap(),
            database_url: url.into(),
            certs_dir: certs.into(),
            node_id: id.into(),
            heartbeat: Duration::from_millis(500),
            cluster: Some(cluster),
            ..ServerConfig::default()
        };
        tune(&mut config);
        let server = Server::bind(config).await.expect("node binds");
        let (api, tunnel) = (server.api_addr(), server.tunnel_addr());
        let cluster = server.cluster_addr().expect("clustered");
        let admin = server.admin_addr();
        let (trigger, stop) = shutdown::channel();
        let task = tokio::spawn(async move { server.run(stop).await.expect("node runs") });
        Node {
            id: id.into(),
            api,
            cluster,
            tunnel,
            admin,
            trigger: Some(trigger),
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        if let (Some(trigger), Some(task)) = (self.trigger.take(), self.task.take()) {
            trigger.fire();
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
    }
}

struct Fixture {
    url: String,
    dir: tempfile::TempDir,
    registry: Registry,
    upstream: SampleUpstream,
    client_id: String,
    token: String,
}

async fn fixture() -> Option<Fixture> {
    let url = mysql_url()?;
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&url).await.expect("MariaDB reachable");
    let client_id = unique("ha");
    let token = auth::issue_token(&registry, &client_id).await.unwrap();
    let upstream = SampleUpstream::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Some(Fixture {
        url,
        dir,
        registry,
        upstream,
        client_id,
        token,
    })
}

impl Fixture {
    fn certs(&self) -> std::path::PathBuf {
        self.dir.path().join("certs")
    }

    fn agent(
        &self,
        servers: Vec<String>,
        connections: usize,
    ) -> (Agent, ShutdownTrigger, shutdown::Shutdown) {
        let mut config = AgentConfig::new(
            &servers[0],
            &self.client_id,
            &self.token,
            &self.upstream.url(),
            Trust::CaFile(self.certs().join("server.pem")),
        );
        config.servers = servers;
        config.connections = connections;
        config.backoff_min = Duration::from_millis(50);
        config.backoff_max = Duration::from_millis(500);
        let agent = Agent::new(config).unwrap();
        let (trigger, stop) = shutdown::channel();
        (agent, trigger, stop)
    }

    /// Two nodes, A and B, and an agent connected to B only.
    async fn two_nodes_agent_on_b(
        &self,
    ) -> (
        Node,
        Node,
        ShutdownTrigger,
        tokio::task::JoinHandle<Result<(), warren::agent::AgentError>>,
    ) {
        let a = Node::start(&self.url, &self.certs(), &unique("node-a")).await;
        let b = Node::start(&self.url, &self.certs(), &unique("node-b")).await;
        let (agent, trigger, stop) = self.agent(vec![b.tunnel.to_string()], 1);
        let mut status = agent.status();
        let task = tokio::spawn(agent.run(stop));
        wait_connected(&mut status).await;
        (a, b, trigger, task)
    }

    fn url(&self, api: std::net::SocketAddr, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("http://{api}{path}{sep}clientId={}", self.client_id)
    }

    async fn nodes_of_rows(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .registry
            .connections_for(&self.client_id)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.node_id)
            .collect();
        nodes.sort();
        nodes
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_any_agent() {
    let Some(fx) = fixture().await else { return };
    // The agent is on B only; clients come to A.
    let (mut a, mut b, trigger, task) = fx.two_nodes_agent_on_b().await;
    assert_eq!(fx.nodes_of_rows().await, vec![b.id.clone()]);

    for mode in ["stream", "blocking"] {
        let resp = get(&fx.url(a.api, &format!("/bytes/{}?mode={mode}", 16 * MIB))).await;
        assert_eq!(resp.status(), StatusCode::OK, "{mode}");
        if mode == "blocking" {
            assert_eq!(
                resp.headers()["content-length"],
                (16 * MIB).to_string().as_str()
            );
        }
        let body = read_body(resp).await.expect("complete body");
        assert_eq!(
            sha256_hex(&body),
            pattern_sha256(0, 16 * MIB),
            "{mode}: byte-identical via A"
        );
    }
    // An upload crosses both hops too.
    let data = bytes::Bytes::from(vec![42u8; 3 * MIB as usize]);
    let req = Request::post(fx.url(a.api, "/sha256"))
        .body(full(data.clone()))
        .unwrap();
    let v = json(send(req).await).await;
    assert_eq!(v["sha256"], sha256_hex(&data));

    // Backpressure holds across the extra hop: stalled readers via A do not
    // stop another download via A.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(get(&fx.url(a.api, &format!("/bytes/{}", 1024 * MIB))).await);
    }
    let resp = get(&fx.url(a.api, &format!("/bytes/{}", 8 * MIB))).await;
    let body = tokio::time::timeout(Duration::from_secs(60), read_body(resp))
        .await
        .expect("progress")
        .unwrap();
    assert_eq!(body.len() as u64, 8 * MIB);
    drop(stalled);

    // A client WebSocket at A reaches the upstream behind B's agent.
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let path = format!("/ws/echo?clientId={}", fx.client_id);
        let (mut ws, _) = ws_upgrade(a.api, &path, None).await.expect("upgrade via A");
        ws.send(Message::Text("across nodes".into())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Text("across nodes".into())
        );
        ws.send(warren::websocket::close(4001, "done"))
            .await
            .unwrap();
    }

    // The internal link refuses strangers: no secret, or a wrong one.
    let resp = get(&fx.url(b.cluster, "/bytes/10")).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let req = Request::get(fx.url(b.cluster, "/bytes/10"))
        .header("x-warren-cluster-secret", "guess-guess-guess-guess")
        .body(empty())
        .unwrap();
    assert_eq!(send(req).await.status(), StatusCode::UNAUTHORIZED);

    trigger.fire();
    let _ = task.await;
    a.stop().await;
    b.stop().await;
    assert!(
        !fx.registry.node_ids().await.unwrap().contains(&a.id),
        "a stopped node deregisters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_is_reaped_and_its_agent_moves() {
    let Some(fx) = fixture().await else { return };
    let a = Node::start(&fx.url, &fx.certs(), &unique("node-a")).await;
    let b_id = unique("node-b");
    let mut b = node_process(&fx.url, &fx.certs(), &b_id).await;

    // Agent 1 prefers B but knows A; agent 2 (another client id) knows only B.
    let (agent, trigger, stop) = fx.agent(vec![b.tunnel.clone(), a.tunnel.to_string()], 1);
    let mut status = agent.status();
    let task = tokio::spawn(agent.run(stop));
    wait_connected(&mut status).await;
    assert_eq!(fx.nodes_of_rows().await, vec![b_id.clone()]);
    let other_id = unique("only-b");
    let other_token = auth::issue_token(&fx.registry, &other_id).await.unwrap();
    let mut config = AgentConfig::new(
        &b.tunnel,
        &other_id,
        &other_token,
        &fx.upstream.url(),
        Trust::CaFile(fx.certs().join("server.pem")),
    );
    config.backoff_max = Duration::from_millis(500);
    let other = Agent::new(config).unwrap();
    let mut other_status = other.status();
    let (other_trigger, other_stop) = shutdown::channel();
    let other_task = tokio::spawn(other.run(other_stop));
    wait_connected(&mut other_status).await;

    let resp = get(&fx.url(a.api, "/bytes/1000")).await;
    assert_eq!(resp.status(), StatusCode::OK, "served via A from B");

    // SIGKILL: B leaves its rows and its node entry behind.
    b.child.start_kill().unwrap();
    let _ = b.child.wait().await;

    // The agent notices (heartbeats) and reconnects to A, replacing its row.
    let moved = eventually(Duration::from_secs(20), || async {
        fx.nodes_of_rows().await == vec![a.id.clone()]
    })
    .await;
    assert!(
        moved,
        "the agent's row moved to A: {:?}",
        fx.nodes_of_rows().await
    );
    let served = eventually(Duration::from_secs(10), || async {
        matches!(client().request(Request::get(fx.url(a.api, "/bytes/1000")).body(empty()).unwrap()).await,
            Ok(r) if r.status() == StatusCode::OK)
    })
    .await;
    assert!(served, "reachable again through A");

    // B's lease (2 s) expires: A reaps B and the rows of agents that had only B.
    let reaped = eventually(Duration::from_secs(15), || async {
        !fx.registry.node_ids().await.unwrap().contains(&b_id)
            && fx
                .registry
                .connections_for(&other_id)
                .await
                .unwrap()
                .is_empty()
    })
    .await;
    assert!(reaped, "the dead node and its rows are gone");
    let resp = get(&format!("http://{}/?clientId={other_id}", a.api)).await;
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "no route to a dead node"
    );

    trigger.fire();
    other_trigger.fire();
    let _ = task.await;
    let _ = other_task.await;
}

/// Trailers cross the HTTP/1.1 link both ways, in both modes, to an HTTP/2
/// client and to an HTTP/1.1 client that asks for them with `TE: trailers`;
/// an HTTP/2 upload of unknown length crosses whole (it went empty while the
/// link request kept the client's version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_cross_the_link_between_nodes() {
    use http_body::Frame;
    let Some(fx) = fixture().await else { return };
    let (mut a, mut b, trigger, task) = fx.two_nodes_agent_on_b().await;

    let data = bytes::Bytes::from(vec![7u8; 300_000]);
    let h2 = {
        let mut builder =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
        builder.http2_only(true);
        builder.build::<_, ClientBody>(hyper_util::client::legacy::connect::HttpConnector::new())
    };
    for mode in ["stream", "blocking"] {
        // HTTP/2: the request's trailers go to the service, its trailers come back.
        let mut theirs = http::HeaderMap::new();
        theirs.insert("x-client-check", "yes".parse().unwrap());
        let frames = [Ok(Frame::data(data.clone())), Ok(Frame::trailers(theirs))];
        let body =
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        // (Announced: the service behind the agent is HTTP/1.1.)
        let req = Request::post(fx.url(a.api, &format!("/trailers?mode={mode}")))
            .header("trailer", "x-client-check")
            .body(body)
            .unwrap();
        let resp = h2.request(req).await.expect("HTTP/2 request via A");
        assert_eq!(resp.status(), StatusCode::OK, "{mode}");
        assert!(!resp.headers().contains_key("x-warren-length"), "{mode}");
        let collected = resp.into_body().collect().await.expect("whole body");
        let trailers = collected.trailers().cloned().expect("trailers via A");
        assert_eq!(trailers["x-echo-x-client-check"], "yes", "{mode}");
        assert_eq!(
            trailers["x-body-sha256"],
            sha256_hex(&data).as_str(),
            "{mode}"
        );
        assert!(
            !trailers.contains_key("x-warren-trailer"),
            "{mode}: unpacked"
        );
        assert_eq!(
            collected.to_bytes(),
            format!("{} bytes\n", data.len()),
            "{mode}"
        );

        // HTTP/1.1 asking for trailers: the announced ones come back.
        let req = Request::post(fx.url(a.api, &format!("/trailers?mode={mode}")))
            .header("te", "trailers")
            .body(full(data.clone()))
            .unwrap();
        let resp = send(req).await;
        assert_eq!(resp.status(), StatusCode::OK, "{mode}");
        let announced = resp.headers()["trailer"].to_str().unwrap().to_string();
        assert!(!announced.contains("x-warren"), "{mode}: {announced}");
        let collected = resp.into_body().collect().await.expect("whole body");
        let trailers = collected
            .trailers()
            .cloned()
            .expect("HTTP/1.1 trailers via A");
        assert_eq!(
            trailers["x-body-sha256"],
            sha256_hex(&data).as_str(),
            "{mode}"
        );
    }
    trigger.fire();
    let _ = task.await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keeps_connections_on_several_nodes() {
    let Some(fx) = fixture().await else { return };
    let mut a = Node::start(&fx.url, &fx.certs(), &unique("node-a")).await;
    let mut b = Node::start(&fx.url, &fx.certs(), &unique("node-b")).await;
    let (agent, trigger, stop) = fx.agent(vec![a.tunnel.to_string(), b.tunnel.to_string()], 2);
    let (mut s0, mut s1) = (agent.slot_status(0).unwrap(), agent.slot_status(1).unwrap());
    let task = tokio::spawn(agent.run(stop));
    wait_connected(&mut s0).await;
    wait_connected(&mut s1).await;
    let mut both = vec![a.id.clone(), b.id.clone()];
    both.sort();
    assert_eq!(
        fx.nodes_of_rows().await,
        both,
        "one connection on each node"
    );
    for api in [a.api, b.api] {
        for _ in 0..5 {
            assert_eq!(
                get(&fx.url(api, "/bytes/100")).await.status(),
                StatusCode::OK
            );
        }
    }
    // Losing a node leaves the agent reachable through the other.
    b.stop().await;
    for _ in 0..10 {
        let resp = get(&fx.url(a.api, "/bytes/100")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let _ = resp.into_body().collect().await;
    }
    trigger.fire();
    let _ = task.await;
    a.stop().await;
    let _ = AgentStatus::Connecting;
}

/// Revoking an agent's token through one node's admin API closes its
/// connection on another node at once (over the cluster link); its
/// reconnection is refused, so the agent stops with the refusal, and no
/// node serves it any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_on_one_node_disconnects_the_agent_on_another() {
    let Some(fx) = fixture().await else { return };
    let mut a = Node::start_tuned(&fx.url, &fx.certs(), &unique("node-a"), None, |c| {
        c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut b = Node::start(&fx.url, &fx.certs(), &unique("node-b")).await;
    let (agent, _trigger, stop) = fx.agent(vec![b.tunnel.to_string()], 1);
    let mut status = agent.status();
    let task = tokio::spawn(agent.run(stop));
    wait_connected(&mut status).await;
    assert_eq!(
        get(&fx.url(a.api, "/bytes/100")).await.status(),
        StatusCode::OK
    );
    let admin_token = auth::issue_admin_token(&fx.registry, &unique("ops"))
        .await
        .unwrap();
    let req = Request::delete(format!(
        "http://{}/api/tokens/{}",
        a.admin.unwrap(),
        fx.client_id
    ))
    .header("authorization", format!("Bearer {admin_token}"))
    .body(empty())
    .unwrap();
    let answer = json(send(req).await).await;
    assert_eq!(answer["disconnected"], 1, "{answer}");
    let end = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the revoked agent stops")
        .unwrap();
    assert!(
        matches!(end, Err(warren::agent::AgentError::Refused { .. })),
        "{end:?}"
    );
    for api in [a.api, b.api] {
        let resp = get(&fx.url(api, "/bytes/100")).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{api}");
    }
    a.stop().await;
    b.stop().await;
}

/// `--cluster-tls`: the link between nodes is mutual TLS under the cluster
/// CA. Requests and WebSockets cross it as before; a peer without the
/// cluster's certificate (plain HTTP even with the secret, or TLS without a
/// client certificate) gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_is_mutual_tls_with_the_cluster_ca() {
    let Some(fx) = fixture().await else { return };
    let tls_dir = fx.dir.path().join("cluster-tls");
    assert!(warren::cluster_tls::create(&tls_dir).unwrap(), "created");
    assert!(
        !warren::cluster_tls::create(&tls_dir).unwrap(),
        "kept on a second run"
    );
    let mut a = Node::start_with(&fx.url, &fx.certs(), &unique("tls-a"), Some(&tls_dir)).await;
    let mut b = Node::start_with(&fx.url, &fx.certs(), &unique("tls-b"), Some(&tls_dir)).await;
    let (agent, trigger, stop) = fx.agent(vec![b.tunnel.to_string()], 1);
    let mut status = agent.status();
    let task = tokio::spawn(agent.run(stop));
    wait_connected(&mut status).await;

    let resp = get(&fx.url(a.api, &format!("/bytes/{}", 4 * MIB))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = read_body(resp).await.unwrap();
    assert_eq!(
        sha256_hex(&body),
        pattern_sha256(0, 4 * MIB),
        "via A over TLS to B"
    );
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let path = format!("/ws/echo?clientId={}", fx.client_id);
        let (mut ws, _) = ws_upgrade(a.api, &path, None).await.expect("upgrade via A");
        ws.send(Message::Text("over the TLS link".into()))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Text("over the TLS link".into())
        );
    }

    // Plain HTTP with the right secret: no HTTP answer at all.
    let req = Request::get(fx.url(b.cluster, "/bytes/10"))
        .header("x-warren-cluster-secret", SECRET)
        .body(empty())
        .unwrap();
    assert!(
        client().request(req).await.is_err(),
        "plain HTTP gets nothing"
    );
    // TLS trusting the cluster CA but without a client certificate: refused.
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls_pki_types::CertificateDer::pem_file_iter(tls_dir.join("cluster-ca.pem")).unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(b.cluster).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let refused = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = connector
            .connect(warren::cluster_tls::server_name(), tcp)
            .await
            .ok()?;
        tls.write_all(b"GET /_warren/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await.ok()?;
        (n > 0).then_some(())
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .expect("refused in time")
            .is_none(),
        "no answer without a cluster certificate"
    );

    trigger.fire();
    let _ = task.await;
    a.stop().await;
    b.stop().await;
}

/// The node holding the agent's only connection finds it dead under a
/// forwarded request (the agent process frozen: the connection looks open
/// and answers nothing). Meanwhile the agent has come back on the node the
/// client asked: that node serves the bodiless request itself instead of
/// passing the other node's 502 on, and the client sees none of the link's
/// bookkeeping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_remote_agent_connection_died_is_served_another_way() {
    let Some(fx) = fixture().await else { return };
    let quick = |c: &mut ServerConfig| {
        c.probe_after = Duration::from_millis(300);
        c.probe_timeout = Duration::from_millis(500);
        c.failover_wait = Duration::from_secs(3);
    };
    let mut a = Node::start_tuned(&fx.url, &fx.certs(), &unique("lost-a"), None, quick).await;
    let mut b = Node::start_tuned(&fx.url, &fx.certs(), &unique("lost-b"), None, quick).await;
    let frozen = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["agent", "--client-id", &fx.client_id, "--token", &fx.token])
        .args([
            "--server",
            &b.tunnel.to_string(),
            "--upstream",
            &fx.upstream.url(),
        ])
        .arg("--ca")
        .arg(fx.certs().join("server.pem"))
        .env("WARREN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let frozen = WarrenProcess::new(frozen, "the frozen agent");
    let on_b = eventually(Duration::from_secs(20), || async {
        fx.nodes_of_rows().await == vec![b.id.clone()]
    })
    .await;
    assert!(on_b, "the first agent is connected to node B only");
    signal(&frozen, "-STOP");

    // Asked of A, which holds no connection: forwarded to B, whose agent
    // connection does not answer.
    let url = fx.url(a.api, "/bytes/1000");
    let request = tokio::spawn(async move { client().get(url.parse().unwrap()).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The agent comes back, on A.
    let (agent, trigger, stop) = fx.agent(vec![a.tunnel.to_string()], 1);
    let task = tokio::spawn(agent.run(stop));

    let resp = tokio::time::timeout(Duration::from_secs(20), request)
        .await
        .expect("answered")
        .unwrap()
        .expect("a response");
    assert!(resp.headers().get("x-warren-agent-moved").is_none());
    let status = resp.status();
    let body = read_body(resp).await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "served through the agent's new connection: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(body.len(), 1000);

    signal(&frozen, "-CONT");
    trigger.fire();
    let _ = task.await;
    a.stop().await;
    b.stop().await;
}

/// A rolling restart under steady load: each node in turn is sent SIGTERM
/// (it stops accepting, drains, tells the agent GoAway) and started again on
/// the same addresses, while clients — like a load balancer, moving to the
/// other node when one refuses connections — keep requesting. Every request
/// a node accepted is answered in full: none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_no_request() {
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    };
    let Some(fx) = fixture().await else { return };
    let ids = [unique("roll-a"), unique("roll-b")];
    let mut nodes = Vec::new();
    for id in &ids {
        nodes.push(node_process(&fx.url, &fx.certs(), id).await);
    }
    let apis: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(nodes.iter().map(|n| n.api.clone()).collect()));
    let (agent, trigger, stop) = fx.agent(nodes.iter().map(|n| n.tunnel.clone()).collect(), 2);
    let task = tokio::spawn(agent.run(stop));
    let spread = eventually(Duration::from_secs(20), || async {
        fx.nodes_of_rows().await.len() == 2
    })
    .await;
    assert!(spread, "the agent holds a connection to each node");

    let done = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..4usize {
        let (apis, done, served) = (apis.clone(), done.clone(), served.clone());
        let id = fx.client_id.clone();
        load.push(tokio::spawn(async move {
            let mut i = worker;
            while !done.load(Ordering::Relaxed) {
                i += 1;
                // Some requests take ~0.5 s, to be in flight across a drain.
                let size = if i % 4 == 0 { 512 * 1024 } else { 4096 };
                let path = if i % 4 == 0 {
                    format!("/bytes/{size}?chunk=65536&delay_ms=60&clientId={id}")
                } else {
                    format!("/bytes/{size}?clientId={id}")
                };
                let mut attempt = 0;
                loop {
                    let api = apis.lock().unwrap()[(i + attempt) % 2].clone();
                    let req = Request::get(format!("http://{api}{path}"))
                        .body(empty())
                        .unwrap();
                    match client().request(req).await {
                        // Turned away at connect (draining or down): the
                        // balancer tries the other node; nothing was lost.
                        Err(e) if e.is_connect() => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        Err(e) => panic!("request {i} via {api} accepted, then failed: {e:?}"),
                        Ok(resp) => {
                            if resp.status() != StatusCode::OK {
                                let status = resp.status();
                                let body = read_body(resp).await.unwrap_or_default();
                                panic!(
                                    "request {i} via {api}: {status} {}",
                                    String::from_utf8_lossy(&body)
                                );
                            }
                            let body = read_body(resp)
                                .await
                                .unwrap_or_else(|e| panic!("request {i} via {api}: body cut: {e}"));
                            assert_eq!(sha256_hex(&body), pattern_sha256(0, size as u64));
                            served.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The stopped nodes' logs, for a failure's report.
    let mut stopped_logs = Vec::new();
    for n in 0..2 {
        let node = &mut nodes[n];
        signal(&node.child, "-TERM");
        let status = tokio::time::timeout(Duration::from_secs(40), node.child.wait())
            .await
            .expect("the node drains and exits")
            .unwrap();
        assert!(status.success());
        let restarted = node_process_on(
            &fx.url,
            &fx.certs(),
            &ids[n],
            [&node.api, &node.tunnel, &node.cluster],
        )
        .await;
        stopped_logs.push((node.api.clone(), node.log.text()));
        *node = restarted;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    done.store(true, Ordering::Relaxed);
    for worker in load {
        if let Err(lost) = worker.await {
            // What the nodes said, to tell why (this has been seen, rarely).
            for (api, log) in &stopped_logs {
                eprintln!("--- node {api} log, before its restart:\n{log}");
            }
            for node in &nodes {
                eprintln!("--- node {} log:\n{}", node.api, node.log.text());
            }
            panic!("no request a node accepted was lost: {lost}");
        }
    }
    let served = served.load(Ordering::Relaxed);
    eprintln!("rolling restart: {served} requests served, none lost");
    assert!(served > 50, "steady load throughout ({served})");
    trigger.fire();
    let _ = task.await;
}
