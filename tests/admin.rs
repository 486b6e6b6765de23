//! The admin listener of real `warren server` and `warren agent` processes:
//! metrics scraped and parsed while traffic flows, the admin API with and
//! without its token, revoking a token (the agent is cut off at once and its
//! reconnection refused), the CLI commands that use it, the access log, and
//! bad input to every endpoint.

mod common;

use std::{collections::HashMap, net::SocketAddr, process::Stdio, time::Duration};

use common::*;
use http::{Method, Request, StatusCode};
use warren::{auth, registry::Registry, sample::SampleUpstream};

over_transports!(metrics_admin_api_and_revoke);

/// A server process with its admin listener and access log, an upstream,
/// and the tokens: the agent's and an admin one.
struct Deployment {
    dir: tempfile::TempDir,
    server: ServerProcess,
    admin: SocketAddr,
    upstream: SampleUpstream,
    agent_token: String,
    admin_token: String,
}

const CLIENT_ID: &str = "music";

async fn deploy() -> Deployment {
    deploy_with(&[]).await
}

/// [`deploy`], the server given `extra` flags too.
async fn deploy_with(extra: &[&str]) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = vec![
        "--admin-listen",
        "127.0.0.1:0",
        "--access-log",
        "--base-domain",
        "tunnels.example.com",
    ];
    flags.extend_from_slice(extra);
    let server = server_process(dir.path(), "127.0.0.1:0", &flags, true).await;
    let admin = server.admin.expect("the server printed its admin address");
    let registry = Registry::open(&format!(
        "sqlite://{}",
        dir.path().join("warren.db").display()
    ))
    .await
    .unwrap();
    let agent_token = auth::issue_token(&registry, CLIENT_ID).await.unwrap();
    let admin_token = auth::issue_admin_token(&registry, "ops").await.unwrap();
    registry.close().await;
    let upstream = SampleUpstream::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Deployment {
        dir,
        server,
        admin,
        upstream,
        agent_token,
        admin_token,
    }
}

impl Deployment {
    /// `warren agent` for `music`, with its own admin listener.
    fn agent(&self, t: Transport) -> WarrenProcess {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .arg("agent")
            .args(["--server", &self.server.tunnel.to_string()])
            .args(["--client-id", CLIENT_ID])
            .args(["--upstream", &self.upstream.url()])
            .args(["--transport", t.flag()])
            .args(["--admin-listen", "127.0.0.1:0"])
            .arg("--ca")
            .arg(self.dir.path().join("certs").join("server.pem"))
            .env("WARREN_TOKEN", &self.agent_token)
            .env("WARREN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        WarrenProcess::new(child, "the agent process")
    }

    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("http://{}{path}{sep}clientId={CLIENT_ID}", self.server.api)
    }

    /// An admin API call with `token` (none: no Authorization header).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.admin));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = send(req.body(full(body.to_string())).unwrap()).await;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = read_body(resp).await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, value)
    }

    /// Whether the admin API comes to say, within 15 s, that the agent is
    /// `connected` (or not).
    async fn says_connected(&self, connected: bool) -> bool {
        let path = format!("/api/agents/{CLIENT_ID}");
        eventually(Duration::from_secs(15), || async {
            self.api(Method::GET, &path, "").await.1["connected"] == connected
        })
        .await
    }

    async fn api(&self, method: Method, path: &str, body: &str) -> (StatusCode, serde_json::Value) {
        let (status, _, value) = self.call(method, path, Some(&self.admin_token), body).await;
        (status, value)
    }
}

/// The admin address an agent process logged.
async fn agent_admin(agent: &WarrenProcess) -> SocketAddr {
    assert!(
        agent
            .log
            .wait_for("admin listener up", Duration::from_secs(10))
            .await,
        "{}",
        agent.log.text()
    );
    let text = agent.log.text();
    let at = text.find("admin listener up addr=").unwrap() + "admin listener up addr=".len();
    text[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A scrape, parsed: every sample line `name{labels} value` into a map, and
/// each checked to be well formed (a line that is neither a comment nor a
/// sample fails the test).
async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let resp = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = String::from_utf8(read_body(resp).await.unwrap().to_vec()).unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line:?}"));
        assert!(
            name.starts_with("warren_") && name.chars().all(|c| c.is_ascii_graphic()),
            "{line:?}"
        );
        samples.insert(name.to_string(), value);
    }
    samples
}

fn sample(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

async fn metrics_admin_api_and_revoke(t: Transport) {
    let d = deploy().await;
    // Up before any agent: healthy and ready (the registry answers).
    assert!(
        served(
            &format!("http://{}/healthz", d.admin),
            Duration::from_secs(5)
        )
        .await
    );
    let ready = get(&format!("http://{}/readyz", d.admin)).await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(json(ready).await["ready"], true);

    let mut agent = d.agent(t);
    let agent_admin = agent_admin(&agent).await;
    assert!(d.says_connected(true).await, "{}", agent.log.text());
    assert!(
        served(
            &format!("http://{agent_admin}/readyz"),
            Duration::from_secs(5)
        )
        .await
    );
    // The agent says where its clients reach it, as the server told it.
    for url in [
        format!("url=http://{}/?clientId={CLIENT_ID}", d.server.api),
        format!("url=http://{CLIENT_ID}.tunnels.example.com/"),
    ] {
        assert!(
            agent.log.wait_for(&url, Duration::from_secs(5)).await,
            "{url}: {}",
            agent.log.text()
        );
    }

    // Traffic flows while the metrics are scraped.
    let before = scrape(d.admin).await;
    let traffic = {
        let (get_url, post_url) = (d.url("/bytes/65536"), d.url("/echo"));
        tokio::spawn(async move {
            for _ in 0..20 {
                let resp = get(&get_url).await;
                assert_eq!(resp.status(), StatusCode::OK);
                assert_eq!(read_body(resp).await.unwrap().len(), 65536);
                let resp = send(
                    Request::post(&post_url)
                        .body(full(vec![7u8; 10_000]))
                        .unwrap(),
                )
                .await;
                assert_eq!(resp.status(), StatusCode::OK);
                read_body(resp).await.unwrap();
            }
        })
    };
    let during = scrape(d.admin).await;
    traffic.await.unwrap();
    let resp = get(&format!(
        "http://{}/nothing-here?clientId=nobody",
        d.server.api
    ))
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let after = scrape(d.admin).await;

    let transport = format!("warren_agent_connections{{transport=\"{}\"}}", t.flag());
    assert_eq!(sample(&after, &transport), 1.0, "{after:?}");
    let ok = "warren_client_requests_total{class=\"2xx\"}";
    assert!(
        sample(&after, ok) - sample(&before, ok) >= 40.0,
        "{after:?}"
    );
    assert!(sample(&during, ok) >= sample(&before, ok));
    assert_eq!(
        sample(
            &after,
            "warren_client_request_errors_total{code=\"unknown_agent\"}"
        ),
        1.0
    );
    let sent = "warren_client_sent_bytes_total";
    assert!(sample(&after, sent) - sample(&before, sent) >= 20.0 * (65536.0 + 10_000.0));
    let received = "warren_client_received_bytes_total";
    assert!(sample(&after, received) - sample(&before, received) >= 200_000.0);
    let per_agent = format!("warren_agent_sent_bytes_total{{client_id=\"{CLIENT_ID}\"}}");
    assert!(sample(&after, &per_agent) >= 20.0 * 65536.0, "{after:?}");
    let count = "warren_client_request_duration_seconds_count";
    assert!(sample(&after, count) - sample(&before, count) >= 41.0);
    assert_eq!(sample(&after, "warren_client_requests_in_flight"), 0.0);
    assert!(sample(&after, "warren_registry_query_duration_seconds_count") >= 1.0);

    // The agent's own metrics: its connection and the upstream's answers.
    let agent_metrics = scrape(agent_admin).await;
    let up = format!("warren_agent_connections{{transport=\"{}\"}}", t.flag());
    assert_eq!(sample(&agent_metrics, &up), 1.0, "{agent_metrics:?}");
    assert!(
        sample(
            &agent_metrics,
            "warren_agent_upstream_responses_total{class=\"2xx\"}"
        ) >= 40.0,
        "{agent_metrics:?}"
    );

    // The admin API: the agent, its connection and what it carried.
    let (status, agent_entry) = d
        .api(Method::GET, &format!("/api/agents/{CLIENT_ID}"), "")
        .await;
    assert_eq!(status, StatusCode::OK);
    let conn = &agent_entry["connections"][0];
    assert_eq!(conn["transport"], t.flag());
    assert!(
        conn["sentBytes"].as_u64().unwrap() >= 20 * 65536,
        "{agent_entry}"
    );
    assert!(
        conn["receivedBytes"].as_u64().unwrap() >= 20 * 10_000,
        "{agent_entry}"
    );
    assert_eq!(conn["inFlight"], 0);
    // `warren status` shows it.
    let status_cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("status")
        .env("WARREN_ADMIN_URL", format!("http://{}", d.admin))
        .env("WARREN_ADMIN_TOKEN", &d.admin_token)
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&status_cmd.stdout);
    assert!(status_cmd.status.success(), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(CLIENT_ID) && l.contains("connected") && l.contains(t.flag())),
        "{table}"
    );

    // The access log: a line per request, its path without the query.
    let log = d.server.log.text();
    let line = log
        .lines()
        .find(|l| l.contains("warren::access") && l.contains("path=/bytes/65536"))
        .unwrap_or_else(|| panic!("no access line: {log}"));
    for field in [
        "method=GET",
        "status=200",
        "bytes=65536",
        "client_id=\"music\"",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(
        line.contains(&format!("transport=\"{}\"", t.flag())),
        "{line}"
    );
    assert!(
        !log.contains("clientId=music"),
        "a query reached the access log"
    );

    // Revoked: the agent is cut off at once (the very next request is not
    // served) and its reconnection is refused, so it exits (code 2).
    let (status, revoked) = d
        .api(Method::DELETE, &format!("/api/tokens/{CLIENT_ID}"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["disconnected"], 1, "{revoked}");
    let resp = get(&d.url("/bytes/10")).await;
    assert_ne!(
        resp.status(),
        StatusCode::OK,
        "a revoked agent served a request"
    );
    let exit = tokio::time::timeout(Duration::from_secs(15), agent.wait())
        .await
        .expect("the revoked agent exits")
        .unwrap();
    assert_eq!(exit.code(), Some(2), "{}", agent.log.text());
    // QUIC carries the close reason to the agent; yamux has no close
    // reason, so over WebSocket the agent learns it from the refusal.
    if t == Transport::Quic {
        assert!(agent.log.text().contains("token revoked by the operator"));
    }
    assert!(
        agent.log.text().contains("or it was revoked"),
        "{}",
        agent.log.text()
    );
    let (status, _) = d
        .api(Method::GET, &format!("/api/agents/{CLIENT_ID}"), "")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let resp = get(&d.url("/bytes/10")).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// Without the admin token, with a wrong one, and with bad requests: a
/// precise status and error code each, and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_refuses_bad_tokens_and_bad_input() {
    let d = deploy().await;
    for token in [None, Some("wad_not-a-token"), Some("")] {
        let (status, headers, body) = d.call(Method::GET, "/api/agents", token, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        assert!(headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let code = body["error"].as_str().unwrap();
        assert!(
            code == "admin_token_required" || code == "bad_admin_token",
            "{body}"
        );
    }
    // An agent token is not an admin token.
    let (status, _, _) = d
        .call(Method::GET, "/api/agents", Some(&d.agent_token), "")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let cases: &[(Method, &str, &str, StatusCode, &str)] = &[
        (
            Method::GET,
            "/api/agents/nobody",
            "",
            StatusCode::NOT_FOUND,
            "unknown_agent",
        ),
        (
            Method::POST,
            "/api/agents/nobody/disconnect",
            "",
            StatusCode::NOT_FOUND,
            "unknown_agent",
        ),
        (
            Method::DELETE,
            "/api/tokens/nobody",
            "",
            StatusCode::NOT_FOUND,
            "unknown_agent",
        ),
        (
            Method::POST,
            "/api/tokens",
            "{not json",
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            Method::POST,
            "/api/tokens",
            "{}",
            StatusCode::BAD_REQUEST,
            "missing_client_id",
        ),
        (
            Method::POST,
            "/api/tokens",
            r#"{"clientId":"a b"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_client_id",
        ),
        (
            Method::PUT,
            "/api/rooms",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/api/nothing",
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/nothing",
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, path, body, want, code) in cases {
        let (status, answer) = d.api(method.clone(), path, body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (*want, Some(*code)),
            "{method} {path}: {answer}"
        );
    }
    let huge = format!(r#"{{"clientId":"{}"}}"#, "x".repeat(20_000));
    let (status, answer) = d.api(Method::POST, "/api/tokens", &huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");

    // Issued through the API: a token the agent can connect with.
    let (status, issued) = d
        .api(Method::POST, "/api/tokens", r#"{"clientId":"radio"}"#)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let token = issued["token"].as_str().unwrap();
    let registry = Registry::open(&format!(
        "sqlite://{}",
        d.dir.path().join("warren.db").display()
    ))
    .await
    .unwrap();
    assert_eq!(
        auth::verify_token(&registry, "radio", token).await.unwrap(),
        auth::Verdict::Accepted
    );
    let (_, list) = d.api(Method::GET, "/api/tokens", "").await;
    let ids: Vec<&str> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["clientId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["music", "radio"]);

    // The CLI says what is wrong with a bad admin token, and exits non-zero.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("status")
        .env("WARREN_ADMIN_URL", format!("http://{}", d.admin))
        .env("WARREN_ADMIN_TOKEN", "wad_wrong")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("401") && stderr.contains("not valid"),
        "{stderr}"
    );

    // After all that, the server still serves its probes and metrics.
    assert!(
        served(
            &format!("http://{}/readyz", d.admin),
            Duration::from_secs(2)
        )
        .await
    );
    assert!(!scrape(d.admin).await.is_empty());
    // The wrong tokens were logged as refusals, never echoed.
    let log = d.server.log.text();
    assert!(
        log.contains("admin request with a wrong token refused"),
        "{log}"
    );
    assert!(!log.contains("wad_not-a-token") && !log.contains(&d.admin_token));
}

/// The page as headless Chromium renders it after its scripts ran and its
/// admin API calls came back.
async fn render(chromium: &str, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=5000", "--dump-dom", url])
        .stderr(Stdio::null())
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status page in a real browser: it renders the node and a connected
/// agent, reflects the agent going away, and with a wrong token shows the
/// API's refusal and asks for a token instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        return;
    };
    let d = deploy().await;
    let mut agent = d.agent(Transport::Quic);
    assert!(d.says_connected(true).await);
    let page = format!("http://{}/#token={}", d.admin, d.admin_token);
    let dom = render(chromium, &page).await;
    assert!(
        dom.contains(&format!(
            r#"data-client-id="{CLIENT_ID}" data-state="connected""#
        )),
        "{dom}"
    );
    assert!(
        dom.contains("<td>local</td>") && dom.contains(">quic<"),
        "{dom}"
    );
    assert!(dom.contains("updated "), "{dom}");

    // The agent stops (SIGTERM: it says GoAway and closes): the page says offline.
    signal(&agent, "-TERM");
    agent.wait().await.unwrap();
    assert!(d.says_connected(false).await);
    let dom = render(chromium, &page).await;
    assert!(
        dom.contains(&format!(
            r#"data-client-id="{CLIENT_ID}" data-state="offline""#
        )),
        "{dom}"
    );

    let dom = render(chromium, &format!("http://{}/#token=wad_wrong", d.admin)).await;
    assert!(
        dom.contains("admin API: the admin token is not valid"),
        "{dom}"
    );
    assert!(!dom.contains(r#"<form id="login" hidden"#), "{dom}");
    assert!(!dom.contains("data-client-id"), "{dom}");

    // The page keeps to itself: no framing, its own script only.
    let resp = get(&format!("http://{}/", d.admin)).await;
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
}

/// A token removed in the database alone (`warren token revoke` without
/// `--admin-url`): the server finds it at its next revocation check, closes
/// the agent's connection, and the agent's reconnection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_in_the_database_cuts_the_agent_off() {
    let d = deploy_with(&["--revocation-check", "500ms"]).await;
    let mut agent = d.agent(Transport::Quic);
    assert!(d.says_connected(true).await);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["token", "revoke", CLIENT_ID, "--database-url"])
        .arg(format!(
            "sqlite://{}",
            d.dir.path().join("warren.db").display()
        ))
        .env_remove("WARREN_ADMIN_URL")
        .env_remove("WARREN_ADMIN_TOKEN")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("revocation check"),
        "{stdout}"
    );
    let exit = tokio::time::timeout(Duration::from_secs(15), agent.wait())
        .await
        .expect("the revoked agent exits")
        .unwrap();
    assert_eq!(exit.code(), Some(2), "{}", agent.log.text());
    assert!(
        d.server
            .log
            .wait_for("agent disconnected: token revoked", Duration::from_secs(5))
            .await,
        "{}",
        d.server.log.text()
    );
}
