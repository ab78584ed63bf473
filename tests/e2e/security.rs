//! Security (issue 11): what must never leak or get in.

use crate::backbone::{finished, request, sleep_spec};
use crate::browser::at_site;
use baton_proto::v1::{
    BrowserStep, CancelJobRequest, JobState, SubmitJobRequest, WaitStep, browser_step, job_spec, wait_step,
};
use baton_tests::{
    Cluster, Etcd, Jaeger, Proc, Site, TempDir, TestCa, bin, eventually, example, free_port, tool, workspace,
};
use std::path::Path;
use std::time::Duration;

const SECRET: &str = "s3cret-pass";

/// Every file under `dir` that holds `needle`, byte for byte.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
            found.push(path.display().to_string());
        }
    }
    found
}

/// The login example, plus a check (after typing the password) that the page got the real
/// secret, not the mask: only the agent running the attempt may hold it.
fn login_checking_the_password(site: &Site) -> SubmitJobRequest {
    let mut req = at_site(example("browser-login.json"), site);
    if let Some(job_spec::Kind::Browser(b)) = req.spec.as_mut().and_then(|s| s.kind.as_mut()) {
        let check = format!("document.querySelector('input[type=password]').value.length === {}", SECRET.len());
        let wait = WaitStep { condition: Some(wait_step::Condition::Js(check)), timeout_ms: 5000 };
        let step = BrowserStep { name: "the password arrived".into(), kind: Some(browser_step::Kind::Wait(wait)) };
        b.steps.insert(3, step);
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_masked_in_every_view_sealed_at_rest_and_opened_only_for_the_agent() {
    let site = Site::start().await;
    let jaeger = Jaeger::start().await;
    let mut cluster = Cluster::start(&[], &jaeger.exporter_env()).await;
    let data = cluster.dir.0.join("data-0");
    let mut client = cluster.jobs().await;
    // Queued (no agent yet), so its secrets stay sealed in the store.
    let id = client.submit_job(login_checking_the_password(&site)).await.unwrap().into_inner().id;

    let masked = |what: &str, text: &str| {
        assert!(!text.contains(SECRET), "{what} shows the secret:\n{text}");
        assert!(text.contains("\"***\"") || text.contains("***"), "{what} shows no mask:\n{text}");
    };
    let (_, out, _) = cluster.cli(&["get", &id, "-o", "json"], None);
    masked("baton get -o json", &out);
    let (_, out, _) = cluster.cli(&["get", &id, "-o", "yaml"], None);
    masked("baton get -o yaml", &out);
    let get = format!(r#"{{"id":"{id}"}}"#);
    masked("GetJob", &cluster.grpcurl(&["-d", &get, "baton.v1.JobService/GetJob"]));
    masked("ListJobs (full)", &cluster.grpcurl(&["-d", r#"{"view":"JOB_VIEW_FULL"}"#, "baton.v1.JobService/ListJobs"]));
    assert_eq!(
        files_holding(&data, SECRET.as_bytes()),
        Vec::<String>::new(),
        "the store holds the secret in the clear"
    );
    let key = data.join("secrets.key");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the key is the owner's only");

    // The key is lost: the coordinator refuses to start rather than hold a job it cannot
    // run, and says which key it needs.
    cluster.kill9_coordinator();
    let old_key = cluster.dir.0.join("old.key");
    std::fs::rename(&key, &old_key).unwrap();
    let mut cmd = std::process::Command::new(bin("baton-coordinator"));
    cmd.args(["--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"]).arg(&data);
    let mut refused = Proc::spawn("coordinator-without-its-key", cmd, &cluster.dir.0);
    let status = refused.exit_within(Duration::from_secs(20)).await.expect("the coordinator stops");
    assert!(!status.success());
    let log = refused.log();
    assert!(log.contains(&format!("job {id}'s secrets cannot be opened")), "{log}");
    assert!(log.contains("--secrets-old-key-file"), "{log}");

    // Rotated: a new key seals, the old one still opens; the job runs with the real value.
    cluster.coordinator_args[0] = vec!["--secrets-old-key-file".into(), old_key.display().to_string()];
    cluster.start_coordinator().await;
    cluster.add_agent("desktop-1", 1, &[]);
    let job = finished(&cluster, &id, Duration::from_secs(90)).await;
    assert_eq!(job.state(), JobState::Succeeded, "{}", job.reason);
    let (_, out, _) = cluster.cli(&["get", &id, "-o", "json"], None);
    masked("baton get -o json after the run", &out);
    assert_eq!(files_holding(&data, SECRET.as_bytes()), Vec::<String>::new(), "the store holds the secret");
    let trace = jaeger.trace(&job.trace_id, &["step 5 click Login"]).await.to_string();
    assert!(!trace.contains(SECRET), "the trace holds the secret");
    for process in cluster.coordinators.iter().flatten().chain(&cluster.agents) {
        assert!(!process.log().contains(SECRET), "{}'s log holds the secret", process.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_on_etcd_without_a_secrets_key_refuse_jobs_with_secrets_and_calls_are_audited() {
    let etcd = Etcd::start().await;
    let cluster = Cluster::start(&etcd.coordinator_args(), &[]).await;
    cluster.wait_leader(&etcd, Duration::from_secs(20)).await;
    let mut client = cluster.jobs().await;
    let site = Site::start().await;
    let status = client.submit_job(login_checking_the_password(&site)).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "spec.browser.secrets: this coordinator keeps no secrets: start it with --secrets-key-file (the same key on every coordinator)"
    );
    // Jobs without secrets are not affected; every state-changing call leaves an audit line.
    let id = client.submit_job(request(sleep_spec(1))).await.unwrap().into_inner().id;
    client.cancel_job(CancelJobRequest { id: id.clone(), reason: String::new() }).await.unwrap();
    let log = cluster.coordinator().log();
    for call in ["SubmitJob", "CancelJob"] {
        let line = log.lines().find(|l| l.contains(&format!("call=\"{call}\" job_id=\"{id}\"")));
        let line = line.unwrap_or_else(|| panic!("no audit line for {call} of {id}:\n{log}"));
        assert!(line.contains("audit who=\"anonymous\" from=\"127.0.0.1:"), "{line}");
    }
}

/// Coordinators serving TLS with client certificates and an access file (tokens for alice
/// and bob: submit, reader: read, root: admin), and the `baton` CLI run against them.
pub struct Secured {
    pub dir: TempDir,
    /// The first coordinator's URL and port.
    url: String,
    pub port: u16,
    ports: Vec<u16>,
    pub ca: TestCa,
    /// The serving certificate and key files (shared by the coordinators).
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    coordinators: Vec<Proc>,
}

impl Secured {
    /// `n` coordinators with `extra` flags; waits until the first answers.
    pub async fn start(n: usize, extra: &[&str]) -> Self {
        let dir = TempDir::new("tls");
        let ca = TestCa::new(&dir.0, "ca");
        let (cert, key) = ca.issue("coordinator", "coordinator", &["127.0.0.1", "localhost"]);
        // `baton token` makes each token file and prints its access-file entry.
        let mut access = String::from("tokens:\n");
        for (name, role) in [("alice", "submit"), ("bob", "submit"), ("reader", "read"), ("root", "admin")] {
            let out = std::process::Command::new(bin("baton"))
                .args(["token", name, "--role", role, "--out"])
                .arg(dir.0.join(format!("{name}.token")))
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            access.push_str(&String::from_utf8(out.stdout).unwrap());
        }
        let token = std::fs::read_to_string(dir.0.join("alice.token")).unwrap();
        assert!(!access.contains(token.trim()), "the access file holds only hashes:\n{access}");
        std::fs::write(dir.0.join("wrong.token"), "baton_not-a-real-token\n").unwrap();
        let access_file = dir.0.join("access.yaml");
        std::fs::write(&access_file, &access).unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let coordinators = (0..n)
            .map(|i| {
                let mut cmd = std::process::Command::new(bin("baton-coordinator"));
                cmd.args(["--listen", &format!("127.0.0.1:{}", ports[i]), "--data-dir"])
                    .arg(dir.0.join(format!("data-{i}")));
                cmd.arg("--advertise-url").arg(format!("https://127.0.0.1:{}", ports[i]));
                cmd.arg("--tls-cert").arg(&cert).arg("--tls-key").arg(&key).arg("--client-ca").arg(&ca.cert);
                cmd.arg("--access-file").arg(&access_file).arg("--tls-ca").arg(&ca.cert).args(extra);
                Proc::spawn(&format!("coordinator-{i}"), cmd, &dir.0)
            })
            .collect();
        let url = format!("https://127.0.0.1:{}", ports[0]);
        let s = Self { url, port: ports[0], ports, ca, cert, key, coordinators, dir };
        eventually(Duration::from_secs(20), "the TLS coordinator to answer", || async {
            (s.baton(Some("root"), &["agents"]).0 == 0).then_some(())
        })
        .await;
        s
    }

    fn token(&self, name: &str) -> std::path::PathBuf {
        self.dir.0.join(format!("{name}.token"))
    }

    /// `baton --coordinator URL --tls-ca CA [--token-file NAME.token] ARGS`: (exit code, stdout + stderr).
    fn baton(&self, token: Option<&str>, args: &[&str]) -> (i32, String) {
        self.baton_with(&self.url, &self.ca.cert, token, args)
    }

    fn baton_with(&self, url: &str, ca: &Path, token: Option<&str>, args: &[&str]) -> (i32, String) {
        let mut cmd = std::process::Command::new(bin("baton"));
        cmd.arg("--coordinator").arg(url);
        if url.starts_with("https") {
            cmd.arg("--tls-ca").arg(ca);
        }
        if let Some(name) = token {
            cmd.arg("--token-file").arg(self.token(name));
        }
        let out = cmd.args(args).output().expect("running baton");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    pub fn agent(&self, name: &str, cert: Option<(&Path, &Path)>) -> Proc {
        let mut cmd = std::process::Command::new(bin("baton-agent"));
        cmd.args(["--coordinator", &self.url, "--name", name, "--tls-ca"]).arg(&self.ca.cert);
        if let Some((cert, key)) = cert {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        Proc::spawn(&name.replace('/', "-"), cmd, &self.dir.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_who_belongs_gets_in_over_tls_with_tokens_and_client_certificates() {
    let s = Secured::start(1, &[]).await;
    let (port, token) = (s.port, std::fs::read_to_string(s.token("alice")).unwrap());
    let (cert, key) = (s.cert.clone(), s.key.clone());
    // A client that connects and never starts its handshake holds up no one: it stays
    // connected through every check below.
    let _stalled = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();

    // Plaintext, no credentials, an unknown token, a wrong role: refused, each saying why.
    let (code, out) = s.baton_with(&format!("http://127.0.0.1:{port}"), &s.ca.cert, Some("root"), &["list"]);
    assert_ne!(code, 0, "plaintext got in: {out}");
    let (code, out) = s.baton(None, &["list"]);
    assert_eq!(
        (code, out.trim()),
        (
            1,
            "error: unauthenticated: this coordinator needs a bearer token (authorization: Bearer <token>) or a client certificate"
        )
    );
    let (_, out) = s.baton(Some("wrong"), &["list"]);
    assert_eq!(out.trim(), "error: unauthenticated: authorization: the bearer token is not in the access file");
    let hello = workspace().join("examples/hello.json");
    let hello = hello.to_str().unwrap();
    let (_, out) = s.baton(Some("reader"), &["submit", hello]);
    assert_eq!(out.trim(), "error: permission denied: reader may not call SubmitJob: it needs the submit role");

    // Through a port-forward the URL's host is not the certificate's name: --tls-server-name.
    let (code, out) = s.baton(Some("root"), &["--tls-server-name", "localhost", "agents"]);
    assert_eq!(code, 0, "{out}");
    let (code, _) = s.baton(Some("root"), &["--tls-server-name", "elsewhere.example", "agents"]);
    assert_ne!(code, 0, "a certificate without the name was accepted");

    // Submitters see and cancel only their own jobs; readers see all; admins change all.
    let (code, out) = s.baton(Some("alice"), &["submit", hello, "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["owner"], "alice");
    let (_, out) = s.baton(Some("bob"), &["get", &id]);
    assert_eq!(
        out.trim(),
        "error: permission denied: bob may not call GetJob on another's job: it needs the read role"
    );
    let (_, out) = s.baton(Some("bob"), &["cancel", &id]);
    assert!(out.contains("bob may not call CancelJob on another's job: it needs the admin role"), "{out}");
    let (_, out) = s.baton(Some("bob"), &["list", "-o", "json"]);
    assert!(!out.contains(&id), "bob lists alice's job:\n{out}");
    for who in ["alice", "reader", "root"] {
        let (code, out) = s.baton(Some(who), &["list", "-o", "json"]);
        assert!(code == 0 && out.contains(&id), "{who} does not list the job:\n{out}");
    }
    let (_, out) = s.baton(Some("alice"), &["drain", "x"]);
    assert_eq!(out.trim(), "error: permission denied: alice may not call DrainAgent: it needs the admin role");

    // The agent is who its certificate says; it may not claim another name; without a
    // certificate it does not get in.
    let (agent_cert, agent_key) = s.ca.issue("pool-a", "pool-a", &[]);
    let _agent = s.agent("pool-a/1", Some((&agent_cert, &agent_key)));
    let _impostor = s.agent("pool-b", Some((&agent_cert, &agent_key)));
    let anonymous = s.agent("pool-a/2", None);
    let job = eventually(Duration::from_secs(30), "alice's job to succeed on the agent", || async {
        let (_, out) = s.baton(Some("alice"), &["get", &id, "-o", "json"]);
        let job: serde_json::Value = serde_json::from_str(&out).ok()?;
        (job["state"] == "JOB_STATE_SUCCEEDED").then_some(job)
    })
    .await;
    assert_eq!(job["agentId"], "pool-a/1");
    let impostor = eventually(Duration::from_secs(10), "the impostor to be refused", || async {
        let log = std::fs::read_to_string(s.dir.0.join("pool-b.log")).ok()?;
        log.contains("hello.agentId: must be pool-a or start with pool-a/").then_some(())
    });
    impostor.await;
    eventually(Duration::from_secs(10), "the agent without a certificate to be refused", || async {
        anonymous.log().contains("this coordinator needs a bearer token").then_some(())
    })
    .await;
    let (_, out) = s.baton(Some("root"), &["agents", "-o", "json"]);
    assert!(out.contains("\"pool-a/1\"") && !out.contains("pool-b") && !out.contains("pool-a/2"), "{out}");
    let (code, out) = s.baton(Some("root"), &["drain", "pool-a/1"]);
    assert_eq!(code, 0, "{out}");

    // grpcurl speaks TLS with the CA and sends the token as a header, as the README shows.
    let grpcurl = |headers: &[String]| {
        let mut cmd = std::process::Command::new(tool("grpcurl"));
        cmd.arg("-cacert").arg(&s.ca.cert);
        for h in headers {
            cmd.args(["-H", h]);
        }
        let out = cmd.arg(format!("127.0.0.1:{}", s.port)).arg("baton.v1.JobService/ListJobs").output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let bearer = format!("authorization: Bearer {}", std::fs::read_to_string(s.token("reader")).unwrap().trim());
    assert!(grpcurl(&[bearer]).contains(&id));
    assert!(grpcurl(&[]).contains("Code: Unauthenticated"));

    // Every state-changing call is audited under the principal's name.
    let log = s.coordinators[0].log();
    for (who, call) in [("alice", "SubmitJob"), ("root", "DrainAgent")] {
        assert!(
            log.lines().any(|l| l.contains(&format!("audit who=\"{who}\"")) && l.contains(&format!("call=\"{call}\""))),
            "no audit line for {who}'s {call}:\n{log}"
        );
    }
    assert!(!log.contains(token.trim()), "a token reached the log");

    // An access file broken while running keeps the rules loaded before, and says so.
    std::fs::write(s.dir.0.join("access.yaml"), "tokens: [not, a, list, of, entries]\n").unwrap();
    eventually(Duration::from_secs(10), "the broken access file to be noticed", || async {
        s.coordinators[0].log().contains("access file does not load: keeping the old one").then_some(())
    })
    .await;
    let (code, out) = s.baton(Some("reader"), &["list"]);
    assert_eq!(code, 0, "the old rules no longer hold: {out}");

    // Rotation: a certificate from another CA written over the files serves new connections
    // within a reload period, without a restart; the old CA no longer verifies it.
    let new_ca = TestCa::new(&s.dir.0, "new-ca");
    let (new_cert, new_key) = new_ca.issue("rotated", "coordinator", &["127.0.0.1"]);
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    eventually(Duration::from_secs(15), "the rotated certificate to serve", || async {
        (s.baton_with(&s.url, &new_ca.cert, Some("root"), &["agents"]).0 == 0).then_some(())
    })
    .await;
    let (code, out) = s.baton(Some("root"), &["agents"]);
    assert_ne!(code, 0, "the old CA still verifies the coordinator: {out}");

    // A listener other than loopback is refused without TLS and authentication (before it binds).
    let out = std::process::Command::new(bin("baton-coordinator"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(s.dir.0.join("open"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "--listen 0.0.0.0:0: not a loopback address, so it needs TLS (--tls-cert and --tls-key), or --insecure"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_over_tls_and_the_leader_checks_the_token_again() {
    let etcd = Etcd::start().await;
    let s = Secured::start(2, &etcd.coordinator_args()).await;
    let leader = eventually(Duration::from_secs(20), "a leader", || async { etcd.leader_url() }).await;
    let follower = (0..2).find(|i| format!("https://127.0.0.1:{}", s.ports[*i]) != leader).unwrap();
    let via = format!("https://127.0.0.1:{}", s.ports[follower]);
    let hello = workspace().join("examples/hello.json");
    let hello = hello.to_str().unwrap();
    // The follower reaches its https:// leader with --tls-ca; the token goes along and the
    // leader checks it again, so the job is alice's and the leader's audit names her.
    let (code, out) = s.baton_with(&via, &s.ca.cert, Some("alice"), &["submit", hello, "-o", "json"]);
    assert_eq!(code, 0, "{out}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["owner"], "alice");
    let id = job["id"].as_str().unwrap();
    let audited = s.coordinators[1 - follower].log();
    assert!(
        audited.lines().any(|l| l.contains("audit who=\"alice\"") && l.contains(&format!("job_id=\"{id}\""))),
        "the leader did not audit alice's submit:\n{audited}"
    );
    let (_, out) = s.baton_with(&via, &s.ca.cert, Some("reader"), &["submit", hello]);
    assert_eq!(out.trim(), "error: permission denied: reader may not call SubmitJob: it needs the submit role");
    let (_, out) = s.baton_with(&via, &s.ca.cert, Some("wrong"), &["list"]);
    assert_eq!(out.trim(), "error: unauthenticated: authorization: the bearer token is not in the access file");
}

/// While a browser job runs, every request goes through the agent's policy proxy: an
/// image, a fetch and a script-initiated navigation to a denied address never leave the
/// machine (the address sees no connection at all); the browser gets the refusal instead.
/// In Chromium and in Firefox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_reaches_nothing_the_policy_denies() {
    let site = Site::start().await;
    // The denied address: a listener that would see any connection (never accepted).
    let denied = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    denied.set_nonblocking(true).unwrap();
    let target = format!("http://127.0.0.3:{}", denied.local_addr().unwrap().port());
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("guarded", 1, &["--deny-url", "127.0.0.3"]);
    cluster.wait_agents(1).await;
    let steps = serde_json::json!([
        {"name": "open the login page", "open": {"url": "${base}/login"}},
        {"name": "fetch from the denied address", "script": {"script": format!(
            "window.__done = 0; const img = new Image(); img.onload = img.onerror = () => window.__done++; \
             img.src = '{target}/pixel.png'; \
             fetch('{target}/beacon', {{mode: 'no-cors'}}).then(() => window.__done++, () => window.__done++);"
        )}},
        {"name": "both answered", "wait": {"js": "window.__done === 2", "timeoutMs": 10000}},
        {"name": "navigate there", "script": {"script": format!("location.href = '{target}/landing';")}},
        {"name": "the refusal shows", "wait": {"textPresent": "baton refused this request: host 127.0.0.3 matches the deny pattern 127.0.0.3", "timeoutMs": 10000}},
    ]);
    let text =
        serde_json::json!({"spec": {"name": "guarded", "browser": {"variables": {"base": site.base}, "steps": steps}}});
    let req = baton_proto::spec::parse_request(&text.to_string()).unwrap();
    let id = cluster.jobs().await.submit_job(req).await.unwrap().into_inner().id;
    let job = finished(&cluster, &id, Duration::from_secs(60)).await;
    assert_eq!(job.state(), JobState::Succeeded, "{}", job.reason);
    match denied.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the denied address was reached: {other:?}"),
    }
    let refusals = cluster.agents[0].log().lines().filter(|l| l.contains("the browser's request was refused")).count();
    assert!(
        refusals >= 3,
        "the image, the fetch and the navigation were not all refused:\n{}",
        cluster.agents[0].log()
    );
}
