//! No secret at any log level: real server and agent processes at
//! `WARREN_LOG=trace` (every dependency's tracing too), driven through
//! requests, a WebSocket, a room join, a wrong token and a replayed Hello;
//! then every line either process wrote is searched for the token (as text
//! and as hex), the client and admin tokens (used through the client API and
//! the admin API, right and wrong) and, on a two-node cluster, for the
//! cluster secret. Over QUIC the processes log JSON (`--log-format json`),
//! and every line must be a JSON object; over WebSocket, text.

mod common;

use std::{process::Stdio, time::Duration};

use common::*;
use http::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};

over_transports!(no_token_at_trace);

fn assert_absent(log: &[String], secret: &str, what: &str) {
    let hex = hex::encode(secret.as_bytes());
    let found: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(secret) || l.contains(&hex))
        .take(3)
        .collect();
    assert!(found.is_empty(), "{what} found in the log: {found:?}");
}

async fn no_token_at_trace(t: Transport) {
    let format = if t == Transport::Quic { "json" } else { "text" };
    let stack = Stack::server_only(StackOptions::new(t)).await;
    let dir = stack.dir.path();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "server",
            "--api-listen",
            "127.0.0.1:0",
            "--tunnel-listen",
            "127.0.0.1:0",
        ])
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("trace.db").display()))
        .arg("--certs")
        .arg(dir.join("certs"))
        .args(["--admin-listen", "127.0.0.1:0", "--access-log"])
        .args(["--log-format", format])
        .env("WARREN_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let server_log = StderrWatch::on(&mut server, "the server process");
    let mut out = BufReader::new(server.stdout.take().unwrap()).lines();
    let (mut api, mut tunnel, mut admin) = (String::new(), String::new(), String::new());
    while let Ok(Some(line)) = out.next_line().await {
        if let Some(rest) = line.strip_prefix("client API on http://") {
            api = rest.trim().to_string();
        }
        if let Some(rest) = line.strip_prefix("tunnel on ") {
            tunnel = rest.split_whitespace().next().unwrap().to_string();
        }
        if let Some(rest) = line.strip_prefix("admin API on http://") {
            admin = rest.split_whitespace().next().unwrap().to_string();
            break;
        }
    }
    let registry =
        warren::registry::Registry::open(&format!("sqlite://{}", dir.join("trace.db").display()))
            .await
            .unwrap();
    let token = warren::auth::issue_token(&registry, &stack.client_id)
        .await
        .unwrap();
    let admin_token = warren::auth::issue_admin_token(&registry, "ops")
        .await
        .unwrap();
    let client_token = warren::auth::issue_client_token(&registry, &stack.client_id)
        .await
        .unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token).unwrap();
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "agent",
            "--server",
            &tunnel,
            "--client-id",
            &stack.client_id,
        ])
        .arg("--token-file")
        .arg(&token_file)
        .args(["--upstream", &stack.upstream.url(), "--transport", t.flag()])
        .arg("--ca")
        .arg(stack.ca_path())
        .args(["--log-format", format])
        .env("WARREN_LOG", "trace")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let agent_log = StderrWatch::on(&mut agent, "the agent process");

    let base = format!("http://{api}");
    let url = format!(
        "{base}/bytes/100000?clientId={}&token={client_token}",
        stack.client_id
    );
    let up = eventually(Duration::from_secs(20), || {
        let url = url.clone();
        async move {
            client()
                .request(http::Request::get(url).body(empty()).unwrap())
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
    assert!(up, "served through the agent");
    let resp = get(&url).await;
    assert_eq!(read_body(resp).await.unwrap().len(), 100_000);
    // The client token as a Bearer header, and a wrong one.
    for presented in [client_token.clone(), format!("{client_token}x")] {
        let req = http::Request::get(format!("{base}/bytes/10?clientId={}", stack.client_id))
            .header("authorization", format!("Bearer {presented}"))
            .body(empty())
            .unwrap();
        read_body(send(req).await).await.unwrap();
    }
    // The admin API, with the admin token and with a wrong one.
    let wrong_admin = format!("{admin_token}x");
    for presented in [&admin_token, &wrong_admin] {
        let req = http::Request::get(format!("http://{admin}/api/agents"))
            .header("authorization", format!("Bearer {presented}"))
            .body(empty())
            .unwrap();
        read_body(send(req).await).await.unwrap();
    }
    let api_addr: std::net::SocketAddr = api.parse().unwrap();
    let (ws, _) = ws_upgrade(
        api_addr,
        &format!("/ws/echo?clientId={}&token={client_token}", stack.client_id),
        None,
    )
    .await
    .unwrap();
    drop(ws);
    let _ = ws_upgrade(
        api_addr,
        &format!(
            "/_warren/rooms/lobby?clientId={}&token={client_token}",
            stack.client_id
        ),
        None,
    )
    .await;
    // A wrong token, and the real one replayed by a second peer after Welcome.
    let mut peer = stack;
    peer.tunnel = tunnel.parse().unwrap();
    let session = raw_session(&peer, t, &peer.client_id).await;
    let (mut send, mut recv) = session.open().await.unwrap();
    let wrong = format!("{}x", &token[..token.len() - 1]);
    send.write_frame(
        &hello(&peer.client_id, &wrong, "wrong"),
        warren_proto::MAX_CONTROL_FRAME,
    )
    .await
    .unwrap();
    let _ = recv
        .read_frame::<warren_proto::Control>(warren_proto::MAX_CONTROL_FRAME)
        .await;
    let session = raw_session(&peer, t, &peer.client_id).await;
    let (mut send, mut recv) = session.open().await.unwrap();
    let hello = hello(&peer.client_id, &token, "replayer");
    send.write_frame(&hello, warren_proto::MAX_CONTROL_FRAME)
        .await
        .unwrap();
    let _ = recv
        .read_frame::<warren_proto::Control>(warren_proto::MAX_CONTROL_FRAME)
        .await;
    send.write_frame(&hello, warren_proto::MAX_CONTROL_FRAME)
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), session.closed()).await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.start_kill().unwrap();
    server.start_kill().unwrap();
    let _ = agent.wait().await;
    let _ = server.wait().await;
    assert!(server_log.closed(Duration::from_secs(5)).await);
    assert!(agent_log.closed(Duration::from_secs(5)).await);
    let mut log = server_log.lines();
    log.extend(agent_log.lines());
    assert!(
        log.len() > 100 && log.iter().any(|l| l.contains("TRACE")),
        "the processes really logged at trace ({} lines)",
        log.len()
    );
    assert_absent(&log, &token, "the agent's token");
    assert_absent(&log, &wrong, "a wrong token");
    assert_absent(&log, &client_token, "a client token");
    assert_absent(&log, &admin_token, "the admin token");
    assert_absent(&log, &wrong_admin, "a wrong admin token");
    assert!(
        log.iter().any(|l| l.contains("warren::access")),
        "the access log was on"
    );
    if format == "json" {
        for line in &log {
            let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
            assert!(
                parsed.is_ok_and(|v| v.is_object() && v["level"].is_string()),
                "not a JSON log object: {line}"
            );
        }
        // The request spans' fields travel with each event.
        assert!(
            log.iter()
                .any(|l| l.contains("\"request_id\"") && l.contains("\"client_id\"")),
            "no event carries its request's span fields"
        );
    }
}
