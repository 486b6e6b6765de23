//! The deployment files stay consistent with the CLI: every `warren` command
//! line in `deploy/` parses (flags exist, values are valid), and every
//! `WARREN_*` variable they set is one the CLI reads. Docker does not run here,
//! so this is the check that can run.

use std::process::Command;

fn warren(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .output()
        .unwrap()
}

/// `warren ARGS` parses and builds its configuration (`WARREN_CHECK_ARGS`),
/// given the secrets the deployment puts in the environment.
fn assert_args_ok(args: &[String], database_url: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env("WARREN_CHECK_ARGS", "1")
        .env("WARREN_DATABASE_URL", database_url)
        .env("WARREN_CLUSTER_SECRET", "change-me-to-a-long-random-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("arguments ok"),
        "`warren {}` is rejected: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `warren …` argument lists in the compose file.
fn compose_commands(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line
            .strip_prefix("command:")
            .or_else(|| line.strip_prefix("args:"))
        else {
            continue;
        };
        let list: Vec<String> =
            serde_json::from_str(rest.trim()).expect("commands are JSON-style lists");
        if list.len() == 1 && list[0].contains("warren ") {
            // A shell line: take the words from `warren` on, to the pipe.
            let shell = &list[0];
            let from = &shell[shell.find("warren ").unwrap() + "warren ".len()..];
            let words: Vec<String> = from
                .split_whitespace()
                .take_while(|w| *w != "|")
                .map(str::to_owned)
                .collect();
            out.push(words);
        } else if list.first().map(String::as_str) != Some("CMD") {
            out.push(list);
        }
    }
    out
}

#[test]
fn compose_commands_parse_with_the_real_cli() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/docker-compose.yml"
    ))
    .unwrap();
    for service in [
        "mariadb:",
        "cluster-ca:",
        "node-a:",
        "node-b:",
        "agent:",
        "upstream:",
    ] {
        assert!(
            text.contains(&format!("  {service}")),
            "compose defines {service}"
        );
    }
    let commands = compose_commands(&text);
    assert!(commands.len() >= 5, "{commands:?}");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "wrn_placeholder").unwrap();
    let certs = dir.path().join("certs");
    let made = warren(&["certs", "--certs", certs.to_str().unwrap()]);
    assert!(made.status.success());
    for args in &commands {
        // The whole command line, required arguments and conflicts included,
        // parsed and turned into a configuration by the real binary; the
        // environment the compose file gives each service, plus files it
        // expects to exist.
        let mut args: Vec<String> = args.clone();
        for arg in args.iter_mut() {
            if arg == "/shared/token" {
                *arg = token_file.display().to_string();
            } else if let Some(rest) = arg.strip_prefix("/shared/certs") {
                *arg = format!("{}{rest}", certs.display());
            } else if let Some(rest) = arg.strip_prefix("/shared/") {
                *arg = dir.path().join(rest).display().to_string();
            }
        }
        assert_args_ok(
            &args,
            "mysql://warren:warren-db-password@mariadb:3306/warren",
        );
    }
    // Both nodes are cluster nodes with distinct ids and advertised addresses.
    let nodes: Vec<_> = commands.iter().filter(|c| c[0] == "server").collect();
    assert_eq!(nodes.len(), 2);
    for node in &nodes {
        assert!(node.contains(&"--cluster-listen".to_string()));
        assert!(node.contains(&"--cluster-advertise".to_string()));
        assert!(
            node.contains(&"--cluster-tls".to_string()),
            "mutual TLS between nodes"
        );
    }
    assert_ne!(nodes[0][2], nodes[1][2], "distinct --node-id");
}

#[test]
fn deploy_files_only_set_variables_the_cli_reads() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    let mut texts = String::new();
    for path in [
        "docker-compose.yml",
        "systemd/warren-server.service",
        "systemd/warren-agent.service",
        "kubernetes/warren.yaml",
    ] {
        texts.push_str(&std::fs::read_to_string(format!("{dir}/{path}")).unwrap());
    }
    let help: String = ["server", "agent", "token issue x"]
        .iter()
        .map(|sub| {
            let mut args: Vec<&str> = sub.split(' ').collect();
            args.push("--help");
            String::from_utf8(warren(&args).stdout).unwrap()
        })
        .collect();
    let mut checked = 0;
    for word in texts.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("WARREN_") && word.len() > "WARREN_".len() {
            assert!(
                help.contains(&format!("env: {word}")),
                "{word} is not read by the CLI"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "checked {checked} variables");
}

/// The Kubernetes manifests: the server's argument list parses with the
/// real CLI (and is a cluster node with its admin listener, which the probes
/// use), and every WARREN_ variable they set is one the CLI reads (above).
#[test]
fn kubernetes_manifests_parse_with_the_real_cli() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/warren.yaml"
    ))
    .unwrap();
    let commands = compose_commands(&text);
    assert_eq!(commands.len(), 1, "{commands:?}");
    let args = &commands[0];
    assert_eq!(args[0], "server");
    for flag in [
        "--cluster-listen",
        "--cluster-tls",
        "--admin-listen",
        "--config",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }
    let admin = &args[args.iter().position(|a| a == "--admin-listen").unwrap() + 1];
    let port = admin.rsplit(':').next().unwrap();
    assert!(
        text.contains(&format!("containerPort: {port}")),
        "the admin port is exposed"
    );
    for probe in ["path: /readyz, port: admin", "path: /healthz, port: admin"] {
        assert!(text.contains(probe), "{probe}");
    }
    // The ConfigMap's config file, where the server is told to read it.
    let toml: String = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("warren.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{}\n", &l[4..]))
        .collect();
    assert!(toml.contains("[server]"), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warren.toml");
    std::fs::write(&file, &toml).unwrap();
    let checked = warren(&["config", "check", file.to_str().unwrap()]);
    assert!(
        checked.status.success(),
        "the ConfigMap's warren.toml: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a == "/etc/warren/config/warren.toml" {
                file.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    assert_args_ok(&args, "mysql://warren:change-me@mariadb:3306/warren");
}
