//! `warren demo`: the whole tunnel on loopback in one command — a sample
//! upstream, a server (throw-away SQLite registry and certificate in a temp
//! directory) and an agent — printing URLs to try with curl.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use warren::{
    agent::{Agent, AgentConfig, AgentStatus},
    auth,
    sample::SampleUpstream,
    server::{Server, ServerConfig},
    shutdown::{self, Shutdown},
    tls::Trust,
};

pub const DEMO_CLIENT_ID: &str = "demo";

/// Runs until `stop` fires. `ready` receives the client API address once an
/// agent is connected.
pub async fn run(
    api_listen: SocketAddr,
    stop: Shutdown,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let upstream = SampleUpstream::spawn("127.0.0.1:0".parse()?).await?;
    let config = ServerConfig {
        api_listen,
        tunnel_listen: "127.0.0.1:0".parse()?,
        database_url: format!("sqlite://{}", dir.0.join("demo.db").display()),
        certs_dir: dir.0.join("certs"),
        ..ServerConfig::default()
    };
    let server = Server::bind(config).await?;
    let api = server.api_addr();
    let token = auth::issue_token(server.registry(), DEMO_CLIENT_ID).await?;
    let agent = Agent::new(AgentConfig::new(
        &server.tunnel_addr().to_string(),
        DEMO_CLIENT_ID,
        &token,
        &upstream.url(),
        Trust::CaFile(dir.0.join("certs").join("server.pem")),
    ))?;
    let mut status = agent.status();
    let (trigger, inner) = shutdown::channel();
    let server_task = tokio::spawn(server.run(inner.clone()));
    let agent_task = tokio::spawn(agent.run(inner));
    tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| matches!(s, AgentStatus::Connected { .. })),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the demo agent did not connect within 10 s"))??;
    ready(api);
    let mut stop = stop;
    stop.wait().await;
    trigger.fire();
    let _ = agent_task.await;
    let _ = server_task.await;
    Ok(())
}

/// A private directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!(
            "warren-demo-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
