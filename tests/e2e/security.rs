//! Security (issue 11): what must never leak or get in.

use crate::backbone::{finished, request, sleep_spec};
use crate::browser::at_site;
use baton_proto::v1::{
    BrowserStep, CancelJobRequest, JobState, SubmitJobRequest, WaitStep, browser_step, job_spec, wait_step,
};
use baton_tests::{Cluster, Etcd, Jaeger, Proc, Site, bin, example, free_port};
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
        assert!(line.contains("audit who=\"127.0.0.1:"), "{line}");
    }
}
