//! Fault-injection soak, short (the suite's version; `WARREN_SOAK_REQUESTS`
//! and `WARREN_SOAK_KILLS` make it long): mixed requests — streamed and
//! blocking downloads of 1 KiB to 4 MiB, uploads, WebSocket echoes — from
//! several clients at once, while the agent process is SIGKILLed and
//! restarted at random. Every response that completes is byte-exact
//! (SHA-256); every one that was cut is an error to its client, never a
//! clean short body. Afterwards nothing is left over: one registry row for
//! the one live agent, and the server's memory back near where it was.
//!
//! The same mix also runs through a two-node cluster on MariaDB while either
//! node process is SIGKILLed and restarted at random
//! (`WARREN_SOAK_NODE_KILLS`): afterwards both nodes are registered, and the
//! agent has exactly one row and one live connection on each.

mod common;

use std::{
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;

over_transports!(
    mixed_requests_through_agent_kills,
    mixed_requests_through_node_kills,
);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// Cut short or refused, and the client was told so.
    failed_loudly: AtomicUsize,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A response other than 200 must be a server error (the agent or node it
/// needed is gone): it counts as failed loudly.
fn refused_loudly(i: usize, resp: &http::Response<hyper::body::Incoming>) -> bool {
    assert!(
        resp.status().is_server_error(),
        "request {i}: unexpected status {}",
        resp.status()
    );
    false
}

/// One request of the mix; panics on a silent corruption or truncation.
async fn one(api: std::net::SocketAddr, client_id: &str, i: usize, tally: &Tally) {
    let sizes = [1024u64, 64 * 1024, 1 << 20, 4 << 20];
    let size = sizes[i % sizes.len()];
    let base = format!("http://{api}");
    let ok = match i % 5 {
        // Streamed and blocking downloads.
        0..=2 => {
            let mode = if i % 5 == 1 { "&mode=blocking" } else { "" };
            let url = format!("{base}/bytes/{size}?clientId={client_id}{mode}");
            match client()
                .request(http::Request::get(url).body(empty()).unwrap())
                .await
            {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    let declared = resp
                        .headers()
                        .get("content-length")
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    match resp.into_body().collect().await {
                        Ok(body) => {
                            let body = body.to_bytes();
                            // A complete body must be the whole, exact body.
                            assert_eq!(
                                body.len() as u64,
                                size,
                                "request {i}: a short body ended cleanly"
                            );
                            assert_eq!(
                                sha256_hex(&body),
                                warren::sample::pattern_sha256(0, size),
                                "request {i}: corrupted body"
                            );
                            if let Some(declared) = declared {
                                assert_eq!(declared, size);
                            }
                            true
                        }
                        Err(_) => false,
                    }
                }
                Ok(resp) => refused_loudly(i, &resp),
                Err(_) => false,
            }
        }
        // Uploads: the service reports what it received.
        3 => {
            let body = warren::sample::pattern().slice(0..(size as usize).min(1 << 20));
            let url = format!("{base}/sha256?clientId={client_id}");
            match client()
                .request(http::Request::post(url).body(full(body.clone())).unwrap())
                .await
            {
                Ok(resp) if resp.status() == StatusCode::OK => match read_body(resp).await {
                    Ok(bytes) => {
                        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                        assert_eq!(
                            v["sha256"],
                            sha256_hex(&body),
                            "request {i}: upload corrupted"
                        );
                        true
                    }
                    Err(_) => false,
                },
                Ok(resp) => refused_loudly(i, &resp),
                Err(_) => false,
            }
        }
        // A WebSocket: ten echoes, each exact, or the socket breaks.
        _ => {
            let path = format!("/ws/echo?clientId={client_id}");
            match ws_upgrade(api, &path, None).await {
                Ok((mut ws, _)) => {
                    let mut fine = true;
                    for n in 0..10u32 {
                        let payload = format!("soak-{i}-{n}");
                        if ws
                            .send(Message::Text(payload.clone().into()))
                            .await
                            .is_err()
                        {
                            fine = false;
                            break;
                        }
                        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                            Ok(Some(Ok(Message::Text(t)))) => {
                                assert_eq!(t.as_str(), payload, "request {i}: echo corrupted")
                            }
                            _ => {
                                fine = false;
                                break;
                            }
                        }
                    }
                    fine
                }
                Err(_) => false,
            }
        }
    };
    if ok {
        tally.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        tally.failed_loudly.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether the server at `api` reports exactly one connected agent (waiting
/// up to 15 s for it).
async fn one_agent_connection(api: std::net::SocketAddr) -> bool {
    let health = format!("http://{api}/_warren/health");
    eventually(Duration::from_secs(15), || {
        let url = health.clone();
        async move {
            match client()
                .request(http::Request::get(url).body(empty()).unwrap())
                .await
            {
                Ok(resp) => json(resp).await["agents"] == 1,
                Err(_) => false,
            }
        }
    })
    .await
}

/// Sends `requests` requests of the mix from `clients` workers at once
/// (request `i` through `apis[i % apis.len()]`) while `chaos` runs; `chaos`
/// is told through its flag when the requests are done, and stops. Panics on
/// a silent corruption or truncation; returns what `chaos` returned, with the
/// requests complete and exact and those that failed loudly.
async fn under_chaos<T>(
    what: &str,
    apis: Vec<std::net::SocketAddr>,
    client_id: &str,
    requests: usize,
    clients: usize,
    chaos: impl std::future::Future<Output = T>,
    done: Arc<AtomicBool>,
) -> T {
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (tally, next, id, apis) = (
            tally.clone(),
            next.clone(),
            client_id.to_string(),
            apis.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return;
                }
                one(apis[i % apis.len()], &id, i, &tally).await;
            }
        }));
    }
    let workers_done = async {
        for w in workers {
            w.await.expect("no silent corruption or truncation");
        }
        done.store(true, Ordering::Relaxed);
    };
    let (chaos, ()) = tokio::time::timeout(Duration::from_secs(170), async {
        tokio::join!(chaos, workers_done)
    })
    .await
    .expect("the soak finishes");
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed_loudly.load(Ordering::Relaxed);
    eprintln!("{what}: {requests} requests: {ok} complete and exact, {failed} cut or refused with an error");
    assert_eq!(ok + failed, requests);
    assert!(
        ok > requests / 2,
        "most requests complete ({ok} of {requests})"
    );
    chaos
}

async fn mixed_requests_through_agent_kills(t: Transport) {
    let requests = env_or("WARREN_SOAK_REQUESTS", 400);
    let kills = env_or("WARREN_SOAK_KILLS", 4);
    let clients = 8;
    let stack = Stack::server_only(StackOptions::new(t)).await;
    let dir = stack.dir.path();
    // A 1 s heartbeat: a killed agent's connection is closed within seconds
    // (probes only stop new requests going to it), so the leak check is quick.
    let server = server_process(dir, "127.0.0.1:0", &["--heartbeat", "1s"], false).await;
    let token = issue_process_token(dir, &stack.client_id).await;
    let registry =
        warren::registry::Registry::open(&format!("sqlite://{}", dir.join("warren.db").display()))
            .await
            .unwrap();
    let spawn_agent = || {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args([
                "agent",
                "--server",
                &server.tunnel.to_string(),
                "--client-id",
                &stack.client_id,
            ])
            .args(["--token", &token, "--upstream", &stack.upstream.url()])
            .args(["--transport", t.flag(), "--backoff-max", "500ms"])
            .arg("--ca")
            .arg(stack.ca_path())
            .env("WARREN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        WarrenProcess::new(child, "the agent process")
    };
    let mut agent = spawn_agent();
    let api = server.api;
    let id = stack.client_id.clone();
    let up = served(
        &format!("http://{api}/bytes/10?clientId={id}"),
        Duration::from_secs(15),
    )
    .await;
    assert!(up);
    let server_pid = server.child.id().unwrap();
    let rss_start = rss_kib(server_pid);

    let done = Arc::new(AtomicBool::new(false));
    // The chaos: SIGKILL the agent at random moments, restart it at once.
    let chaos = {
        let done = done.clone();
        async move {
            let mut killed = 0;
            while killed < kills && !done.load(Ordering::Relaxed) {
                let wait = 300 + rand::random::<u64>() % 1200;
                tokio::time::sleep(Duration::from_millis(wait)).await;
                agent.start_kill().unwrap();
                agent.wait().await.unwrap();
                agent = spawn_agent();
                killed += 1;
            }
            (agent, killed)
        }
    };
    let (agent, killed) = under_chaos(
        &format!("{t:?}, agent kills"),
        vec![api],
        &stack.client_id,
        requests,
        clients,
        chaos,
        done,
    )
    .await;
    eprintln!("{t:?}: {killed} agent kills");

    // Afterwards: the agent is back, one row for its one connection, and the
    // server holds nothing for the connections that died.
    assert!(
        one_agent_connection(api).await,
        "exactly one live agent connection at the end"
    );
    let rows = eventually(Duration::from_secs(15), || {
        let registry = registry.clone();
        let id = stack.client_id.clone();
        async move {
            registry
                .connections_for(&id)
                .await
                .map(|r| r.len())
                .unwrap_or(0)
                == 1
        }
    })
    .await;
    assert!(rows, "one registry row: dead connections' rows are gone");
    let rss_end = rss_kib(server_pid);
    eprintln!("{t:?}: server RSS {rss_start} KiB → {rss_end} KiB");
    assert!(
        rss_end < rss_start + 64 * 1024,
        "server memory did not keep growing: {rss_start} KiB → {rss_end} KiB"
    );
    drop(agent);
}

async fn mixed_requests_through_node_kills(t: Transport) {
    let Some(url) = mysql_url() else { return };
    let requests = env_or("WARREN_SOAK_REQUESTS", 600);
    let kills = env_or("WARREN_SOAK_NODE_KILLS", 3);
    let clients = 8;
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let registry = warren::registry::Registry::open(&url).await.unwrap();
    let client_id = unique("soak");
    let token = warren::auth::issue_token(&registry, &client_id)
        .await
        .unwrap();
    let upstream = warren::sample::SampleUpstream::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ids = [unique("soak-a"), unique("soak-b")];
    let mut nodes = Vec::new();
    for id in &ids {
        nodes.push(node_process(&url, &certs, id).await);
    }
    let apis: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.api.parse().unwrap()).collect();
    // One agent process, one connection to each node.
    let agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["agent", "--client-id", &client_id, "--token", &token])
        .args(["--server", &nodes[0].tunnel, "--server", &nodes[1].tunnel])
        .args(["--connections", "2", "--upstream", &upstream.url()])
        .args(["--transport", t.flag(), "--backoff-max", "500ms"])
        .arg("--ca")
        .arg(certs.join("server.pem"))
        .env("WARREN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut agent = WarrenProcess::new(agent, "the agent process");
    let on_both = |registry: warren::registry::Registry, client_id: String| async move {
        let mut rows: Vec<String> = registry
            .connections_for(&client_id)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.node_id)
            .collect();
        rows.sort();
        rows
    };
    let mut expected = ids.to_vec();
    expected.sort();
    let spread = eventually(Duration::from_secs(20), || {
        let (registry, client_id, expected) =
            (registry.clone(), client_id.clone(), expected.clone());
        async move { on_both(registry, client_id).await == expected }
    })
    .await;
    assert!(spread, "the agent holds one connection on each node");

    // Half the requests through each node: a killed node refuses its share
    // at connect, and the other node's requests for the agent's connection
    // on it are cut or refused, each with an error.
    let done = Arc::new(AtomicBool::new(false));
    // The chaos: SIGKILL a node at random, restart it at once on the same
    // addresses and node id.
    let chaos = {
        let done = done.clone();
        let (url, certs, ids) = (url.clone(), certs.clone(), ids.clone());
        async move {
            let mut killed = 0;
            while killed < kills && !done.load(Ordering::Relaxed) {
                let wait = 200 + rand::random::<u64>() % 600;
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let n = rand::random::<u64>() as usize % 2;
                let node = &mut nodes[n];
                node.child.start_kill().unwrap();
                node.child.wait().await.unwrap();
                let addrs = [node.api.clone(), node.tunnel.clone(), node.cluster.clone()];
                *node =
                    node_process_on(&url, &certs, &ids[n], [&addrs[0], &addrs[1], &addrs[2]]).await;
                killed += 1;
            }
            (nodes, killed)
        }
    };
    let (nodes, killed) = under_chaos(
        &format!("{t:?}, node kills"),
        apis.clone(),
        &client_id,
        requests,
        clients,
        chaos,
        done,
    )
    .await;
    eprintln!("{t:?}: {killed} node kills");

    // Afterwards: both nodes registered, the agent back on each with one row
    // per node (a killed node's rows replaced, not piled up) and one live
    // connection per node.
    let back = eventually(Duration::from_secs(20), || {
        let (registry, client_id, expected) =
            (registry.clone(), client_id.clone(), expected.clone());
        async move { on_both(registry, client_id).await == expected }
    })
    .await;
    assert!(
        back,
        "one row on each node at the end: {:?}",
        on_both(registry.clone(), client_id.clone()).await
    );
    let node_ids = registry.node_ids().await.unwrap();
    assert!(ids.iter().all(|id| node_ids.contains(id)), "{node_ids:?}");
    for api in &apis {
        assert!(
            one_agent_connection(*api).await,
            "{api}: exactly one live agent connection"
        );
    }
    let _ = agent.start_kill();
    drop(nodes);
}
