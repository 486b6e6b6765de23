//! The `warren` command as users drive it: real processes, real flags.

mod common;

use std::{process::Stdio, time::Duration};

use common::*;
use http::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use warren::{auth, registry::Registry};

fn warren() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.kill_on_drop(true).env("WARREN_LOG", "warn");
    cmd
}

/// Reads stdout lines until one contains `needle`; returns all lines so far.
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    needle: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains(needle);
            seen.push(line);
            if done {
                return;
            }
        }
        panic!("stdout ended before {needle:?}: {seen:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} on stdout in time"));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_issue_prints_the_token_last_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("w.db").display());
    let out = warren()
        .args(["token", "issue", "box-1", "--database-url", &url])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("wrn_"), "{stdout}");
    let registry = Registry::open(&url).await.unwrap();
    assert_eq!(
        auth::verify_token(&registry, "box-1", &token)
            .await
            .unwrap(),
        auth::Verdict::Accepted
    );
    assert_eq!(
        registry.token_hash("box-1").await.unwrap().unwrap(),
        auth::hash_token(&token)
    );

    let out = warren()
        .args(["token", "issue", "not/valid", "--database-url", &url])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid client id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_are_generated_once_and_fingerprinted() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let run = || async {
        let out = warren()
            .arg("certs")
            .arg("--certs")
            .arg(&certs)
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run().await;
    assert!(first.starts_with("generated"), "{first}");
    let second = run().await;
    assert!(second.starts_with("found"), "{second}");
    let fp = |s: &str| {
        s.lines()
            .last()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(fp(&first), fp(&second));
    assert_eq!(fp(&first).len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the private key is readable by its owner only"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_sample_through_the_tunnel_and_stops_on_sigint() {
    // Port 0: the demo binds a free port itself and prints its URLs (no port
    // picked here and handed over, which another process could take first).
    let mut child = warren()
        .args(["demo", "--api-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let seen = read_until(&mut lines, "Ctrl-C").await;
    let url = seen
        .iter()
        .find_map(|l| {
            l.trim()
                .strip_prefix("curl '")
                .map(|u| u.trim_end_matches('\'').to_string())
        })
        .expect("the demo prints a URL to curl");
    let resp = get(&url).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = read_body(resp).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("sample upstream behind warren"));

    signal(&child, "-INT");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("demo stops on Ctrl-C")
        .unwrap();
    assert!(status.success());
}

/// The README's "run it for real" path: server, token, agent as separate
/// processes, trusting the server's self-signed certificate file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_agent_processes() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("w.db").display());
    let certs = dir.path().join("certs");
    let upstream = warren::sample::SampleUpstream::spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    let out = warren()
        .args(["token", "issue", "home", "--database-url", &db])
        .output()
        .await
        .unwrap();
    let token = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();

    let mut server = warren()
        .args(["server", "--api-listen", "127.0.0.1:0"])
        .args(["--tunnel-listen", "127.0.0.1:0"])
        .args(["--database-url", &db])
        .arg("--certs")
        .arg(&certs)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let seen = read_until(&mut lines, "tunnel on").await;
    assert!(seen.iter().any(|l| l.contains("fingerprint")), "{seen:?}");
    // The addresses the server bound, as it prints them.
    let api = seen
        .iter()
        .find_map(|l| l.strip_prefix("client API on http://"))
        .expect("the API address is printed")
        .trim()
        .to_string();
    let tunnel = seen
        .iter()
        .find_map(|l| l.strip_prefix("tunnel on "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the tunnel address is printed")
        .to_string();

    let mut agent = warren()
        .args(["agent", "--server", &tunnel, "--client-id", "home"])
        .args(["--upstream", &upstream.url()])
        .arg("--ca")
        .arg(certs.join("server.pem"))
        .env("WARREN_TOKEN", &token) // secrets may come from the environment
        .spawn()
        .unwrap();
    let url = format!("http://{api}/bytes/1000?clientId=home");
    let served = eventually(Duration::from_secs(20), || async {
        matches!(
            client().request(http::Request::get(&url).body(empty()).unwrap()).await,
            Ok(r) if r.status() == StatusCode::OK
        )
    })
    .await;
    assert!(
        served,
        "a request reaches the upstream through both processes"
    );
    let body = read_body(get(&url).await).await.unwrap();
    assert_eq!(body, warren::sample::pattern().slice(0..1000));

    for child in [&mut agent, &mut server] {
        signal(child, "-TERM");
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("stops on SIGTERM")
            .unwrap();
        assert!(status.success(), "clean exit on SIGTERM");
    }
}

/// Under a low soft limit on open files (1,024 is common; 256 here), the
/// server raises it to the hard limit at start and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_raises_its_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let hard: u64 = String::from_utf8(
        std::process::Command::new("bash")
            .args(["-c", "ulimit -Hn"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap_or(u64::MAX);
    if hard <= 256 {
        return; // nothing to raise to on this machine
    }
    let script = format!(
        "ulimit -Sn 256 && exec {} server --api-listen 127.0.0.1:0 --tunnel-listen 127.0.0.1:0 \
         --database-url sqlite://{}/w.db --certs {}/certs",
        env!("CARGO_BIN_EXE_warren"),
        dir.path().display(),
        dir.path().display()
    );
    let mut child = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .env("WARREN_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    read_until(&mut stdout, "tunnel on").await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id().unwrap())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(
        numbers[0], numbers[1],
        "soft limit raised to the hard one: {line}"
    );
    assert_ne!(numbers[0], "256");
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("open-file limit raised from 256"), "{log}");
}

/// The harness's own guard: a spawned process that panics (here a shell
/// printing what Rust's panic handler prints) fails the test that spawned
/// it when its stderr watch is dropped, even if every response was right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_spawned_process_fails_its_test() {
    let spawn = |text: &str| {
        tokio::process::Command::new("sh")
            .args(["-c", &format!("printf '%s\\n' \"{text}\" >&2")])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = spawn("thread 'tokio-rt-worker' panicked at src/server/api.rs:1:1:");
    let watch = StderrWatch::on(&mut child, "sh");
    assert!(watch.closed(Duration::from_secs(5)).await);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(watch)));
    assert!(dropped.is_err(), "the panic line fails the test");
    let mut child = spawn("WARN warren::agent: connection lost; reconnecting");
    let watch = StderrWatch::on(&mut child, "sh");
    assert!(watch.closed(Duration::from_secs(5)).await);
    drop(watch);
}

over_transports!(bench_remote_measures_a_running_deployment);

/// `warren bench --remote` measures a running deployment (here a real server
/// and agent in this process, over each transport) against its upstream
/// directly, and says plainly what is wrong with a set-up it cannot measure.
async fn bench_remote_measures_a_running_deployment(t: Transport) {
    let stack = Stack::start(StackOptions::new(t)).await;
    let out_dir = tempfile::tempdir().unwrap();
    let server = format!("http://{}", stack.api);
    let column = if t == Transport::Quic { "quic" } else { "ws" };
    let out = warren()
        .args(["bench", "--quick", "--remote", &server])
        .args(["--client-id", &stack.client_id, "--transport", column])
        .args(["--direct", &stack.upstream.url()])
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The table: every scenario with a direct figure and a tunnelled one
    // in the transport's column, the other column empty.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("remote.json")).unwrap())
            .unwrap();
    let rows = report["rows"].as_array().unwrap();
    let (here, there) = if column == "quic" { (0, 1) } else { (1, 0) };
    for metric in ["throughput", "requests", "latency p50", "added latency p50"] {
        let row = rows
            .iter()
            .find(|r| r["metric"] == metric)
            .unwrap_or_else(|| panic!("no {metric} row: {stdout}"));
        let value = row["tunnel"][here].as_f64().unwrap_or(0.0);
        assert!(value > 0.0, "{metric} over {column}: {row}");
        assert!(row["tunnel"][there].is_null(), "{row}");
        if metric != "added latency p50" {
            assert!(row["baseline"][here].as_f64().unwrap_or(0.0) > 0.0, "{row}");
        }
    }
    assert!(
        stdout.contains("| bulk 64 MiB | throughput (MB/s) |"),
        "{stdout}"
    );

    // An agent nobody runs, and a server that is not there: an error
    // naming the cause, not a table of failures.
    let wrong = warren()
        .args([
            "bench",
            "--quick",
            "--remote",
            &server,
            "--client-id",
            "nobody",
        ])
        .arg("--out")
        .arg(out_dir.path())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(
        stderr.contains("404") && stderr.contains("unknown_agent"),
        "{stderr}"
    );
    let refused = warren()
        .args([
            "bench",
            "--remote",
            "https://127.0.0.1:1",
            "--client-id",
            "x",
        ])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("plain HTTP"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// `--config FILE`: its `[server]` keys configure the server unless a
/// `WARREN_*` variable or a flag says otherwise (flags > environment > file
/// > defaults); `WARREN_CONFIG` names the file too; a key that is no flag
/// is refused with its name and line, bad TOML with the file's name; and
/// `warren config check` passes the annotated example in `deploy/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_precedence_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warren.toml");
    std::fs::write(
        &file,
        format!(
            "# a comment\n[server]\napi-listen = \"127.0.0.2:0\"\ntunnel-listen = \"127.0.0.1:0\"\n\
             database-url = \"sqlite://{}\"\ncerts = \"{}\"\naccess-log = true\n",
            dir.path().join("w.db").display(),
            dir.path().join("certs").display()
        ),
    )
    .unwrap();
    // Which address the client API came up on, for a given set-up.
    let api_ip = |env: Option<(&'static str, String)>, args: Vec<String>| {
        let mut cmd = warren();
        cmd.arg("server").args(&args).stdout(Stdio::piped());
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        async move {
            let mut child = cmd.spawn().unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let seen = read_until(&mut lines, "client API on http://").await;
            let line = seen.last().unwrap().clone();
            let _ = child.kill().await;
            line.trim_start_matches("client API on http://")
                .split(':')
                .next()
                .unwrap()
                .to_string()
        }
    };
    let config = file.display().to_string();
    assert_eq!(
        api_ip(None, vec!["--config".into(), config.clone()]).await,
        "127.0.0.2"
    );
    assert_eq!(
        api_ip(Some(("WARREN_CONFIG", config.clone())), vec![]).await,
        "127.0.0.2"
    );
    let env = || Some(("WARREN_API_LISTEN", "127.0.0.3:0".to_string()));
    assert_eq!(
        api_ip(env(), vec![format!("--config={config}")]).await,
        "127.0.0.3"
    );
    assert_eq!(
        api_ip(
            env(),
            vec![
                "--config".into(),
                config.clone(),
                "--api-listen".into(),
                "127.0.0.4:0".into()
            ]
        )
        .await,
        "127.0.0.4"
    );

    // Wrong keys and bad files: the file, the line, the key.
    let cases = [
        (
            "[server]\napi-listen = \"127.0.0.1:0\"\n\nmax-agentz = 5\n",
            vec!["line 4", "max-agentz"],
        ),
        ("[sever]\n", vec!["line 1", "sever"]),
        ("[server]\naccess-log = \"yes\"\n", vec!["line 2", "switch"]),
        ("[server\n", vec!["not valid TOML"]),
    ];
    for (text, wanted) in cases {
        std::fs::write(&file, text).unwrap();
        for args in [
            vec!["server", "--config", &config],
            vec!["config", "check", &config],
        ] {
            let out = warren().args(&args).output().await.unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} with {text:?}");
            assert!(stderr.contains(&config), "{stderr}");
            for w in &wanted {
                assert!(stderr.contains(w), "{w:?} in {stderr}");
            }
        }
    }
    // A value the flag does not take: the flag named, nothing started.
    std::fs::write(&file, "[server]\nmax-agents = \"lots\"\n").unwrap();
    let out = warren()
        .args(["config", "check", &config])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--max-agents"),
        "{stderr}"
    );

    // The annotated example, its files put where it says they are.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/warren.toml"))
            .unwrap();
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "wrn_placeholder\n").unwrap();
    let made = warren()
        .args(["certs", "--certs"])
        .arg(dir.path().join("certs"))
        .output()
        .await
        .unwrap();
    assert!(made.status.success());
    let example = example
        .replace("/etc/warren/agent.token", &token.display().to_string())
        .replace(
            "/etc/warren/server.pem",
            &dir.path().join("certs/server.pem").display().to_string(),
        );
    std::fs::write(&file, example).unwrap();
    let out = warren()
        .args(["config", "check", &config])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("[server] ok") && stdout.contains("[agent] ok"),
        "{stdout}"
    );
}

/// SIGHUP re-reads the config file: the log filter and the access log change
/// while the server runs, a changed limit is named as needing a restart, and
/// a broken file is refused with its reason while the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_what_can_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warren.toml");
    let write = |extra: &str| {
        std::fs::write(
            &file,
            format!(
                "[server]\napi-listen = \"127.0.0.1:0\"\ntunnel-listen = \"127.0.0.1:0\"\n\
                 database-url = \"sqlite://{}\"\ncerts = \"{}\"\n{extra}",
                dir.path().join("w.db").display(),
                dir.path().join("certs").display()
            ),
        )
        .unwrap()
    };
    write("log = \"warn\"\nmax-agents = 100\n");
    let mut child = warren()
        .env_remove("WARREN_LOG")
        .arg("server")
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = StderrWatch::on(&mut child, "the server process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let seen = read_until(&mut lines, "client API on http://").await;
    let api = seen
        .last()
        .unwrap()
        .trim_start_matches("client API on http://")
        .to_string();
    let probe = format!("http://{api}/x?clientId=nobody");
    assert_eq!(get(&probe).await.status(), StatusCode::NOT_FOUND);

    write("log = \"info\"\naccess-log = true\nmax-agents = 200\n");
    signal(&child, "-HUP");
    assert!(
        log.wait_for("SIGHUP: config file reloaded", Duration::from_secs(10))
            .await,
        "{}",
        log.text()
    );
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains("SIGHUP: config file reloaded"))
        .unwrap();
    assert!(
        line.contains(r#"applied=["access-log", "log"]"#)
            && line.contains(r#"needs_restart=["max-agents"]"#),
        "{line}"
    );
    // The access log is on now, without a restart.
    assert_eq!(get(&probe).await.status(), StatusCode::NOT_FOUND);
    assert!(
        log.wait_for("warren::access", Duration::from_secs(5)).await,
        "{}",
        log.text()
    );

    write("log = \"info\"\nmax-agentz = 1\n");
    signal(&child, "-HUP");
    assert!(
        log.wait_for("config file not reloaded", Duration::from_secs(10))
            .await,
        "{}",
        log.text()
    );
    assert!(log.text().contains("max-agentz"), "{}", log.text());
    assert_eq!(get(&probe).await.status(), StatusCode::NOT_FOUND);
    let _ = child.kill().await;
}
