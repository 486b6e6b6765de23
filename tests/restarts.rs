//! Restarts are ordinary: with real processes and `kill -9`, at the default
//! heartbeat (10 s, so three missed beats would take 30 s).
//!
//! - An agent killed and restarted at once: a steady loop of requests never
//!   fails; requests caught on the dead connection are probed, and retried on
//!   the new one.
//! - A server killed and restarted on the same port: agents are back within
//!   seconds, not after their idle timeout (the restarted server's stateless
//!   resets are recognised, as its reset key derives from its own key).

mod common;

use std::{process::Stdio, time::Duration};

use common::*;
use http::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};

over_transports!(
    a_killed_agent_restarted_fails_no_request,
    a_killed_server_restarted_gets_its_agents_back_in_seconds
);

/// The default heartbeat: the tests show recovery does not wait for it.
fn default_heartbeat(opts: &mut StackOptions) {
    opts.server.heartbeat = warren::server::ServerConfig::default().heartbeat;
}

async fn wait_for_line(child: &mut tokio::process::Child, needle: &str) {
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(needle) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(found, "the process logged {needle:?}");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

async fn a_killed_agent_restarted_fails_no_request(t: Transport) {
    let mut opts = StackOptions::new(t);
    default_heartbeat(&mut opts);
    let stack = Stack::server_only(opts).await;
    let mut agent = stack.spawn_agent_process(&stack.token, &[]);
    wait_for_line(&mut agent, "connected").await;
    let url = stack.url("/bytes/1000");
    let expected = warren::sample::pattern().slice(0..1000);
    let check = move |phase: &'static str| {
        let (url, expected) = (url.clone(), expected.clone());
        async move {
            let resp = get(&url).await;
            assert_eq!(resp.status(), StatusCode::OK, "{phase}");
            assert_eq!(read_body(resp).await.unwrap(), expected, "{phase}");
        }
    };
    for _ in 0..5 {
        check("before the kill").await;
    }
    agent.start_kill().unwrap();
    agent.wait().await.unwrap();
    // Requests while the agent is dead and the server still holds its
    // connection: they must wait for the restarted agent, not fail.
    let during = tokio::spawn({
        let check = check.clone();
        async move {
            for _ in 0..3 {
                check("while the agent restarts").await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut restarted = stack.spawn_agent_process(&stack.token, &[]);
    wait_for_line(&mut restarted, "connected").await;
    tokio::time::timeout(Duration::from_secs(30), during)
        .await
        .expect("requests caught by the restart complete")
        .expect("and none failed");
    for _ in 0..32 {
        check("after the restart").await;
    }
    restarted.start_kill().unwrap();
}

async fn a_killed_server_restarted_gets_its_agents_back_in_seconds(t: Transport) {
    // The in-process stack only provides the upstream, tokens and certs.
    let stack = Stack::server_only(StackOptions::new(t)).await;
    let dir = stack.dir.path();
    let port = {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.local_addr().unwrap().port()
    };
    let tunnel = format!("127.0.0.1:{port}");
    let ServerProcess {
        child: mut server,
        api,
        ..
    } = server_process(dir, &tunnel, &[], false).await;
    let registry =
        warren::registry::Registry::open(&format!("sqlite://{}", dir.join("warren.db").display()))
            .await
            .unwrap();
    let token = warren::auth::issue_token(&registry, &stack.client_id)
        .await
        .unwrap();
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "agent",
            "--server",
            &tunnel,
            "--client-id",
            &stack.client_id,
        ])
        .args(["--token", &token, "--upstream", &stack.upstream.url()])
        .args(["--transport", t.flag(), "--backoff-max", "1s"])
        .arg("--ca")
        .arg(stack.ca_path())
        .env("WARREN_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_line(&mut agent, "connected").await;
    let url =
        |api: std::net::SocketAddr| format!("http://{api}/bytes/100?clientId={}", stack.client_id);
    assert_eq!(get(&url(api)).await.status(), StatusCode::OK);

    server.start_kill().unwrap();
    server.wait().await.unwrap();
    let ServerProcess {
        child: mut server,
        api,
        ..
    } = server_process(dir, &tunnel, &[], false).await;
    let started = tokio::time::Instant::now();
    let back = eventually(Duration::from_secs(20), || {
        let url = url(api);
        async move {
            let resp = client()
                .request(http::Request::get(url).body(empty()).unwrap())
                .await;
            resp.is_ok_and(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
    let took = started.elapsed();
    assert!(back, "the agent is served again after the restart");
    eprintln!("{t:?}: agent served again {took:?} after the server restarted");
    // The agent's idle timeout would take 30 s or more; stateless resets and
    // the keep-alive bring it back within a few.
    assert!(
        took < Duration::from_secs(8),
        "back in {took:?}, not after an idle timeout"
    );
    agent.start_kill().unwrap();
    server.start_kill().unwrap();
}
