//! Agent lifecycle end to end: refusals, death mid-response, the `connections`
//! row, server restarts, certificate trust, and several agents per client id.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use warren::{agent::AgentStatus, tls::Trust};

over_transports_and_versions!(
    wrong_token_is_refused_and_agent_exits,
    unknown_client_id_is_refused_and_agent_exits,
    agent_killed_mid_response_aborts_the_client,
    server_restart_agent_reconnects,
    fingerprint_pinning,
    a_real_ca_chain_is_trusted,
    two_agents_one_client_id_share_the_load,
    a_registry_outage_reaches_the_agent_as_a_refusal,
    the_token_can_come_from_a_file,
);

async fn wait_exit(agent: &mut WarrenProcess) -> (i32, String) {
    let status = tokio::time::timeout(Duration::from_secs(15), agent.wait())
        .await
        .expect("agent exits on its own")
        .unwrap();
    assert!(agent.log.closed(Duration::from_secs(5)).await);
    (status.code().unwrap_or(-1), agent.log.text())
}

async fn wrong_token_is_refused_and_agent_exits(t: Transport) {
    let stack = Stack::server_only(StackOptions::new(t)).await;
    let mut child = stack.spawn_agent_process("wrn_not-the-token", &[]);
    let (code, stderr) = wait_exit(&mut child).await;
    assert_eq!(code, 2, "refused agents exit with 2; stderr:\n{stderr}");
    assert!(stderr.contains("wrong token"), "stderr:\n{stderr}");
    assert!(stack
        .registry
        .connections_for(&stack.client_id)
        .await
        .unwrap()
        .is_empty());
}

async fn unknown_client_id_is_refused_and_agent_exits(t: Transport) {
    let stack = Stack::server_only(StackOptions::new(t)).await;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["agent", "--server", &stack.tunnel.to_string()])
        .args(["--client-id", "never-issued", "--token", &stack.token])
        .args(["--upstream", &stack.upstream.url()])
        .arg("--ca")
        .arg(stack.ca_path())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut agent = WarrenProcess::new(child, "the agent process");
    let (code, stderr) = wait_exit(&mut agent).await;
    assert_eq!(code, 2, "stderr:\n{stderr}");
    assert!(
        stderr.contains("no token was ever issued"),
        "stderr:\n{stderr}"
    );
}

async fn agent_killed_mid_response_aborts_the_client(t: Transport) {
    let stack = Stack::server_only(StackOptions::new(t)).await;
    let mut child = stack.spawn_agent_process(&stack.token, &[]);
    let registry = stack.registry.clone();
    let client_id = stack.client_id.clone();
    let up = eventually(Duration::from_secs(15), || async {
        registry.connections_for(&client_id).await.unwrap().len() == 1
    })
    .await;
    assert!(up, "agent process connected");

    // A paced download (64 KiB every 20 ms), like a player streaming a track.
    let resp = get(&stack.url("/bytes/104857600?chunk=65536&delay_ms=20")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = read_at_least(resp, 256 * 1024).await;
    child.start_kill().unwrap(); // SIGKILL: no goodbye on the wire
    let _ = child.wait().await;
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) => return Err(()),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("the client learns of the dead agent within the heartbeat window");
    assert!(
        outcome.is_err(),
        "a body cut short by a dead agent must end in an error"
    );

    // The dead connection is forgotten: row gone, clients told it is offline.
    let gone = eventually(Duration::from_secs(10), || async {
        registry
            .connections_for(&client_id)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    assert!(gone, "connection row removed after the agent died");
    let resp = get(&stack.url("/")).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

async fn server_restart_agent_reconnects(t: Transport) {
    let mut stack = Stack::start(StackOptions::new(t)).await;
    let mut status = stack.take_agents().pop().unwrap();
    let first = match status.status.borrow().clone() {
        AgentStatus::Connected { tunnel_ws_id, .. } => tunnel_ws_id,
        other => panic!("not connected: {other:?}"),
    };
    stack.stop_server().await;
    // Shutdown is explicit and clean: the node's rows are gone.
    assert!(stack
        .registry
        .connections_for(&stack.client_id)
        .await
        .unwrap()
        .is_empty());
    tokio::time::timeout(
        Duration::from_secs(10),
        status
            .status
            .wait_for(|s| !matches!(s, AgentStatus::Connected { .. })),
    )
    .await
    .expect("agent notices the server left")
    .unwrap();

    // A new server on the same ports, certificates and database.
    let config = stack.config.clone();
    // The old socket is released by its driver task; allow it a moment.
    let mut server = None;
    for _ in 0..50 {
        match warren::server::Server::bind(config.clone()).await {
            Ok(s) => {
                server = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let server = server.expect("the same ports can be bound again");
    let (trigger, stop) = warren::shutdown::channel();
    let task = tokio::spawn(server.run(stop));
    let now = wait_connected(&mut status.status).await;
    let AgentStatus::Connected { tunnel_ws_id, .. } = now else {
        unreachable!()
    };
    assert_ne!(tunnel_ws_id, first, "a new connection, with a new id");
    let resp = get(&stack.url("/bytes/10")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    status.stop().await;
    trigger.fire();
    let _ = task.await;
}

async fn fingerprint_pinning(t: Transport) {
    let mut stack = Stack::server_only(StackOptions::new(t)).await;
    let mut config = stack.agent_config();
    // Colons and upper case are accepted, as fingerprints are often printed so.
    let pretty: Vec<String> = stack
        .fingerprint
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    config.trust = Trust::Fingerprint(pretty.join(":"));
    stack.add_agent(config).await;
    assert_eq!(get(&stack.url("/bytes/3")).await.status(), StatusCode::OK);

    let mut config = stack.agent_config();
    config.trust = Trust::Fingerprint("00".repeat(32));
    let agent = warren::agent::Agent::new(config).unwrap();
    let mut status = agent.status();
    let (trigger, stop) = warren::shutdown::channel();
    let task = tokio::spawn(agent.run(stop));
    let reason = wait_disconnected(&mut status).await;
    assert!(reason.contains("fingerprint"), "reason: {reason}");
    trigger.fire();
    let _ = task.await;
}

async fn two_agents_one_client_id_share_the_load(t: Transport) {
    let mut stack = Stack::start(StackOptions::new(t)).await;
    // The second agent has an upstream of its own, so each one's share of the
    // requests can be counted where it lands.
    let second_upstream = warren::sample::SampleUpstream::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut config = stack.agent_config();
    config.upstream.url = second_upstream.url();
    stack.add_agent(config).await;
    let rows = stack
        .registry
        .connections_for(&stack.client_id)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "both connections are recorded");
    assert_ne!(rows[0].tunnel_ws_id, rows[1].tunnel_ws_id);
    let first_before = stack
        .upstream
        .stats()
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(get(&stack.url("/bytes/100")).await.status(), StatusCode::OK);
    }
    let first = stack
        .upstream
        .stats()
        .requests
        .load(std::sync::atomic::Ordering::SeqCst)
        - first_before;
    let second = second_upstream
        .stats()
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(first + second, 10);
    assert!(
        first >= 3 && second >= 3,
        "both agents served a share (round robin): {first} and {second}"
    );
    // Losing one leaves the client id reachable through the other.
    let mut agents = stack.take_agents();
    agents.pop().unwrap().stop().await;
    for _ in 0..10 {
        assert_eq!(get(&stack.url("/bytes/100")).await.status(), StatusCode::OK);
    }
    let one_left = eventually(Duration::from_secs(5), || async {
        stack
            .registry
            .connections_for(&stack.client_id)
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    assert!(one_left);
}

/// The `connections` row while connected and after, on each database.
async fn connection_row_lifecycle(db: Db) {
    let mut opts = StackOptions::new(Transport::Quic);
    opts.db = db;
    let mut stack = Stack::start(opts).await;
    let agent = stack.take_agents().pop().unwrap();
    let AgentStatus::Connected {
        tunnel_ws_id,
        node_id,
        transport,
    } = agent.status.borrow().clone()
    else {
        panic!("agent not connected")
    };
    let rows = stack
        .registry
        .connections_for(&stack.client_id)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.tunnel_ws_id, tunnel_ws_id);
    assert_eq!(row.node_id, stack.node_id);
    assert_eq!(node_id, stack.node_id);
    assert_eq!(row.transport, transport);
    assert!(
        row.remote_addr.starts_with("127.0.0.1:"),
        "{}",
        row.remote_addr
    );
    agent.stop().await;
    let gone = eventually(Duration::from_secs(5), || async {
        stack
            .registry
            .connections_for(&stack.client_id)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    assert!(gone, "row removed when the agent leaves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_row_lifecycle_sqlite() {
    connection_row_lifecycle(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_row_lifecycle_mysql() {
    if mysql_url().is_some() {
        connection_row_lifecycle(Db::MySql).await;
    }
}

/// A certificate issued by a CA (not self-signed): `--ca ca.pem` trusts the
/// chain; a different CA does not.
async fn a_real_ca_chain_is_trusted(t: Transport) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let issue_ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca, ca_key) = issue_ca("warren test CA");
    let (other_ca, _) = issue_ca("someone else's CA");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(
        certs.join("server.pem"),
        format!("{}{}", leaf.pem(), ca.pem()),
    )
    .unwrap();
    std::fs::write(certs.join("server.key"), leaf_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("other.pem"), other_ca.pem()).unwrap();

    let mut opts = StackOptions::new(t);
    opts.certs_dir = Some(certs);
    let mut stack = Stack::server_only(opts).await;
    let mut config = stack.agent_config();
    config.trust = Trust::CaFile(dir.path().join("ca.pem"));
    stack.add_agent(config).await;
    assert_eq!(get(&stack.url("/bytes/3")).await.status(), StatusCode::OK);

    let mut config = stack.agent_config();
    config.trust = Trust::CaFile(dir.path().join("other.pem"));
    let agent = warren::agent::Agent::new(config).unwrap();
    let mut status = agent.status();
    let (trigger, stop) = warren::shutdown::channel();
    let task = tokio::spawn(agent.run(stop));
    let reason = wait_disconnected(&mut status).await;
    assert!(
        reason.to_lowercase().contains("certificate"),
        "refused for its certificate: {reason}"
    );
    trigger.fire();
    let _ = task.await;
}

/// The registry stalls (a writer holds the SQLite database): the server
/// refuses a connecting agent in words ("cannot reach its registry", a
/// transient refusal) within its registry timeout, before the agent's own
/// wait for Welcome runs out; once the registry is back, the agent connects.
async fn a_registry_outage_reaches_the_agent_as_a_refusal(t: Transport) {
    use sqlx::Connection;
    let stack = Stack::server_only(StackOptions::new(t)).await;
    let url = format!("sqlite://{}", stack.dir.path().join("warren.db").display());
    let mut writer = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut writer)
        .await
        .unwrap();
    let agent = stack.spawn_agent_process(&stack.token, &[]);
    let refused = agent
        .log
        .wait_for("cannot reach its registry", Duration::from_secs(30))
        .await;
    assert!(refused, "the agent hears about the outage in time");
    let timed_out: Vec<String> = agent
        .log
        .lines()
        .into_iter()
        .filter(|l| l.contains("no Welcome"))
        .collect();
    assert!(
        timed_out.is_empty(),
        "the agent must hear the refusal, not time out: {timed_out:?}"
    );
    sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
    let connected = agent
        .log
        .wait_for("connected", Duration::from_secs(30))
        .await;
    assert!(connected);
    assert_eq!(get(&stack.url("/bytes/10")).await.status(), StatusCode::OK);
}

/// `--token-file` (first line of the file) instead of a token on the command
/// line; an empty file is an error naming the file.
async fn the_token_can_come_from_a_file(t: Transport) {
    let stack = Stack::server_only(StackOptions::new(t)).await;
    let file = stack.dir.path().join("token");
    std::fs::write(&file, "\n").unwrap();
    let run = |file: &std::path::Path| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .arg("agent")
            .args(["--server", &stack.tunnel.to_string()])
            .args(["--client-id", &stack.client_id])
            .arg("--token-file")
            .arg(file)
            .args(["--upstream", &stack.upstream.url()])
            .args(["--transport", t.flag()])
            .arg("--ca")
            .arg(stack.ca_path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let output = tokio::time::timeout(Duration::from_secs(15), run(&file).wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is empty") && stderr.contains("token"),
        "{stderr}"
    );
    std::fs::write(&file, format!("{}\n", stack.token)).unwrap();
    let _agent = run(&file);
    let served = eventually(Duration::from_secs(15), || {
        let url = stack.url("/bytes/10");
        async move { get(&url).await.status() == StatusCode::OK }
    })
    .await;
    assert!(
        served,
        "the agent authenticated with the token from the file"
    );
}
