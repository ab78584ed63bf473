//! Docs that run (issue 13): every `baton …` and `grpcurl …` command in a shell code block
//! of README.md, helm/baton/README.md and docs/*.md runs, as written, against a real
//! coordinator and agent, and exits 0. The only changes: the coordinator's address is the
//! test's (`127.0.0.1:7070` in grpcurl lines, `BATON_COORDINATOR` for the CLI),
//! `<id>`/`<job id>` is a job that ran, `<traceId>` its trace, `<sweep id>` and `<other
//! sweep id>` two sweeps of the same work that ran, and `<agent id>` the agent.
//! Commands with TLS files (`--tls-ca`, `-cacert`) run in the folder of a TLS coordinator
//! with tokens and an agent with a certificate (`ca.pem`, `alice.token`, … as the docs name
//! them; `127.0.0.1:7443` is its address); `baton token` runs in a fresh folder each time.

use crate::backbone::finished;
use crate::security::Secured;
use baton_tests::{Cluster, Jaeger, TempDir, bin, tool, workspace};
use std::path::Path;
use std::time::Duration;

/// (where, command) for every command line of the docs' code blocks, in order.
fn documented_commands() -> Vec<(String, String)> {
    let root = workspace();
    let mut files = vec![root.join("README.md"), root.join("helm/baton/README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("a docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut commands = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("reading a doc");
        let name = file.strip_prefix(&root).unwrap_or(&file).display().to_string();
        // Shell blocks only (```sh, ```bash): plain ``` blocks hold diagrams and output.
        let (mut in_code, mut in_shell) = (false, false);
        for (i, line) in text.lines().enumerate() {
            if let Some(info) = line.trim_start().strip_prefix("```") {
                in_code = !in_code;
                in_shell = in_code && matches!(info.trim(), "sh" | "bash" | "shell" | "console");
                continue;
            }
            let line = line.trim();
            if in_shell && (line.starts_with("baton ") || line.starts_with("grpcurl ")) {
                // A trailing comment is set off by two spaces.
                let command = line.split("  #").next().unwrap_or(line).trim().to_string();
                commands.push((format!("{name}:{}", i + 1), command));
            }
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_baton_and_grpcurl_command_in_the_docs_runs() {
    let commands = documented_commands();
    assert!(commands.len() >= 15, "the docs' commands were not found: {commands:?}");
    let jaeger = Jaeger::start().await;
    let mut cluster = Cluster::start(&[], &jaeger.exporter_env()).await;
    cluster.add_agent("docs-agent", 1, &["--no-browser"]);
    cluster.wait_agents(1).await;
    let hello = workspace().join("examples/hello.json");
    let (code, out, err) = cluster.cli(&["-o", "json", "submit", &hello.to_string_lossy()], None);
    assert_eq!(code, 0, "{out}{err}");
    let job: serde_json::Value = serde_json::from_str(&out).expect("the job as JSON");
    let id = job["id"].as_str().expect("a job id").to_string();
    let trace_id = finished(&cluster, &id, Duration::from_secs(30)).await.trace_id;
    let mut sweeps = Vec::new();
    for _ in 0..2 {
        let sweep = r#"{"spec": {"name": "naps", "matrix": {"sleep.durationMs": [20, 40]}, "repeat": 3, "sleep": {}}}"#;
        let (code, out, err) = cluster.cli(&["-o", "json", "submit", "-", "--wait"], Some(sweep));
        assert_eq!(code, 0, "{out}{err}");
        let sweep: serde_json::Value = serde_json::from_str(&out).expect("the sweep as JSON");
        sweeps.push(sweep["id"].as_str().expect("a sweep id").to_string());
    }
    let secured = Secured::start(1, &[]).await;
    let (cert, key) = secured.ca.issue("pool-a", "pool-a", &[]);
    let _secured_agent = secured.agent("pool-a/1", Some((&cert, &key)));
    std::os::unix::fs::symlink(workspace().join("examples"), secured.dir.0.join("examples")).unwrap();

    let dirs = [bin("baton"), tool("grpcurl")].map(|p| p.parent().map(Path::to_path_buf).unwrap_or_default());
    let path = format!("{}:{}:{}", dirs[0].display(), dirs[1].display(), std::env::var("PATH").unwrap_or_default());
    let mut failed = Vec::new();
    for (at, command) in &commands {
        let scratch = TempDir::new("docs-token");
        let cwd = if command.starts_with("baton token ") {
            scratch.0.clone()
        } else if command.contains("--tls-ca") || command.contains("-cacert") {
            secured.dir.0.clone()
        } else {
            workspace()
        };
        let command = command
            .replace("127.0.0.1:7070", &format!("127.0.0.1:{}", cluster.port))
            .replace("127.0.0.1:7443", &format!("127.0.0.1:{}", secured.port))
            .replace("<other sweep id>", &sweeps[1])
            .replace("<sweep id>", &sweeps[0])
            .replace("<job id>", &id)
            .replace("<id>", &id)
            .replace("<traceId>", &trace_id)
            .replace("<agent id>", "docs-agent");
        let out = tokio::process::Command::new("timeout")
            .args(["180", "bash", "-c", &command])
            .current_dir(&cwd)
            .env("PATH", &path)
            .env("BATON_COORDINATOR", &cluster.url)
            .output()
            .await
            .expect("running bash");
        if !out.status.success() {
            let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            failed.push(format!("{at}: {command}\n  → {}\n{output}", out.status));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} documented commands failed:\n{}",
        failed.len(),
        commands.len(),
        failed.join("\n")
    );
}
