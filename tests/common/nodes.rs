//! Cluster nodes as real processes on a shared MariaDB registry, so tests can
//! SIGKILL and restart them.

use std::{process::Stdio, time::Duration};

use tokio::io::{AsyncBufReadExt, BufReader};

/// The cluster secret every test node shares.
pub const SECRET: &str = "test-cluster-secret-0123456789";

/// A node as a real process, so it can be killed with SIGKILL.
pub struct NodeProcess {
    pub child: tokio::process::Child,
    pub log: super::StderrWatch,
    pub api: String,
    pub tunnel: String,
    pub cluster: String,
}

pub async fn node_process(url: &str, certs: &std::path::Path, id: &str) -> NodeProcess {
    node_process_on(url, certs, id, ["127.0.0.1:0"; 3]).await
}

/// A node process on given `[api, tunnel, cluster]` addresses (a restart
/// takes the addresses its first start was given).
pub async fn node_process_on(
    url: &str,
    certs: &std::path::Path,
    id: &str,
    [api, tunnel, cluster]: [&str; 3],
) -> NodeProcess {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["server", "--api-listen", api, "--tunnel-listen", tunnel])
        .args(["--database-url", url, "--node-id", id])
        .args(["--cluster-listen", cluster, "--cluster-secret", SECRET])
        .args(["--node-lease", "2s", "--heartbeat", "500ms"])
        .arg("--certs")
        .arg(certs)
        .env(
            "WARREN_LOG",
            std::env::var("NODE_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = super::StderrWatch::on(&mut child, &format!("node {id}"));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut api, mut tunnel, mut cluster) = (None, None, None);
    while let Some(line) = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("node process starts")
        .unwrap()
    {
        if let Some(rest) = line.strip_prefix("client API on http://") {
            api = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("tunnel on ") {
            tunnel = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("cluster link on ") {
            cluster = Some(rest.trim().to_owned());
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    NodeProcess {
        child,
        log,
        api: api.expect("API address printed"),
        tunnel: tunnel.expect("tunnel address printed"),
        cluster: cluster.expect("cluster address printed"),
    }
}
