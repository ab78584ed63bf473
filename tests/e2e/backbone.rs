//! The job lifecycle through the real coordinator and agents (issue 2).

use baton_proto::v1::{
    CancelJobRequest, GetJobRequest, Job, JobSpec, JobState, ListJobsRequest, NoopSpec, SleepSpec, SubmitJobRequest,
    SubmitJobsRequest, WatchJobRequest, job_spec,
};
use baton_tests::{Cluster, eventually, tool, workspace};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub fn sleep_spec(ms: u64) -> JobSpec {
    JobSpec { kind: Some(job_spec::Kind::Sleep(SleepSpec { duration_ms: ms, fail: false })), ..Default::default() }
}

pub fn request(spec: JobSpec) -> SubmitJobRequest {
    SubmitJobRequest { spec: Some(spec), idempotency_key: String::new() }
}

/// Waits until the job is in a finished state and returns it.
pub async fn finished(cluster: &Cluster, id: &str, within: Duration) -> Job {
    cluster.wait_job(id, within, "finish", |j| j.state().is_terminal()).await
}

async fn wait_state(cluster: &Cluster, id: &str, state: JobState) -> Job {
    cluster.wait_job(id, Duration::from_secs(20), &format!("be {}", state.short_name()), |j| j.state() == state).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_submits_the_readme_example() {
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("a1", 1, &[]);
    cluster.wait_agents(1).await;
    let addr = format!("127.0.0.1:{}", cluster.port);
    let grpcurl = |args: &[&str], stdin: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(tool("grpcurl"));
        cmd.arg("-plaintext").args(args);
        if let Some(file) = stdin {
            cmd.stdin(std::fs::File::open(file).expect("opening the example"));
        }
        let out = cmd.output().expect("running grpcurl");
        assert!(out.status.success(), "grpcurl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let services = grpcurl(&[&addr, "list"], None);
    for s in ["baton.v1.JobService", "baton.v1.AgentService", "baton.v1.AdminService", "grpc.health.v1.Health"] {
        assert!(services.contains(s), "{s} missing from {services}");
    }
    assert!(grpcurl(&[&addr, "describe", "baton.v1.JobService"], None).contains("rpc SubmitJob"));
    // As in the README: grpcurl -plaintext -d @ ADDR baton.v1.JobService/SubmitJob < examples/hello.json
    let example = workspace().join("examples/hello.json");
    let submitted = grpcurl(&["-d", "@", &addr, "baton.v1.JobService/SubmitJob"], Some(&example));
    let job: serde_json::Value = serde_json::from_str(&submitted).expect("grpcurl prints JSON");
    let id = job["id"].as_str().expect("the job has an id").to_string();
    let watched = grpcurl(&["-d", &format!("{{\"id\":\"{id}\"}}"), &addr, "baton.v1.JobService/WatchJob"], None);
    assert!(watched.contains("JOB_STATE_SUCCEEDED"), "{watched}");
    assert!(grpcurl(&[&addr, "grpc.health.v1.Health/Check"], None).contains("SERVING"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sleep_jobs_on_four_agents_all_succeed_once() {
    let mut cluster = Cluster::start(&[], &[]).await;
    for i in 0..4 {
        cluster.add_agent(&format!("agent-{i}"), 4, &[]);
    }
    cluster.wait_agents(4).await;
    let mut client = cluster.jobs().await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let jobs = (0..100).map(|_| request(sleep_spec(0))).collect();
        let resp = client.submit_jobs(SubmitJobsRequest { jobs }).await.expect("batch accepted").into_inner();
        ids.extend(resp.jobs.into_iter().map(|j| j.id));
    }
    assert_eq!(ids.len(), 1000);
    let jobs: Vec<Job> = eventually(Duration::from_secs(60), "1000 jobs to finish", || {
        let mut client = client.clone();
        async move {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let page = client
                    .list_jobs(ListJobsRequest { page_size: 1000, page_token: token, ..Default::default() })
                    .await
                    .ok()?
                    .into_inner();
                all.extend(page.jobs);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            all.iter().all(|j| j.state().is_terminal()).then_some(all)
        }
    })
    .await;
    assert_eq!(jobs.len(), 1000);
    let mut per_agent: HashMap<String, usize> = HashMap::new();
    for job in &jobs {
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
        assert_eq!(job.attempt, 1, "job {} ran more than once", job.id);
        *per_agent.entry(job.agent_id.clone()).or_default() += 1;
    }
    assert_eq!(per_agent.len(), 4, "work spread over all agents: {per_agent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_job_finishes_elsewhere_or_fails_as_agent_lost() {
    let mut cluster = Cluster::start(&["--lease-timeout", "1s", "--heartbeat-interval", "200ms"], &[]).await;
    let first = cluster.add_agent("doomed", 2, &[]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;
    let retried = client.submit_job(request(sleep_spec(1500))).await.unwrap().into_inner().id;
    let single =
        client.submit_job(request(JobSpec { max_attempts: 1, ..sleep_spec(1500) })).await.unwrap().into_inner().id;
    wait_state(&cluster, &retried, JobState::Running).await;
    wait_state(&cluster, &single, JobState::Running).await;
    cluster.agents[first].kill9();
    cluster.add_agent("survivor", 2, &[]);

    let job = finished(&cluster, &retried, Duration::from_secs(20)).await;
    assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
    assert_eq!((job.attempt, job.agent_id.as_str()), (2, "survivor"));

    let job = finished(&cluster, &single, Duration::from_secs(20)).await;
    assert_eq!(job.state(), JobState::Failed);
    assert!(job.reason.starts_with("agent lost"), "reason: {}", job.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_jobs_survive_a_coordinator_kill9_and_agents_reconnect() {
    let mut cluster = Cluster::start(&["--lease-timeout", "3s", "--heartbeat-interval", "500ms"], &[]).await;
    cluster.add_agent("a1", 2, &[]);
    cluster.add_agent("a2", 2, &[]);
    cluster.wait_agents(2).await;
    let mut client = cluster.jobs().await;
    let jobs = (0..12).map(|_| request(sleep_spec(700))).collect();
    let ids: Vec<String> = client
        .submit_jobs(SubmitJobsRequest { jobs })
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| j.id)
        .collect();
    wait_state(&cluster, &ids[0], JobState::Running).await;
    cluster.kill9_coordinator();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.start_coordinator().await;
    cluster.wait_agents(2).await;
    for id in &ids {
        let job = finished(&cluster, id, Duration::from_secs(60)).await;
        assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_within_a_second() {
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("a1", 1, &[]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;
    let id = client.submit_job(request(sleep_spec(60_000))).await.unwrap().into_inner().id;
    wait_state(&cluster, &id, JobState::Running).await;
    let mut watch = client.watch_job(WatchJobRequest { id: id.clone() }).await.unwrap().into_inner();
    let asked = Instant::now();
    client.cancel_job(CancelJobRequest { id: id.clone(), reason: "enough".into() }).await.unwrap();
    let mut last = None;
    while let Some(job) = watch.message().await.unwrap() {
        last = Some(job);
    }
    let took = asked.elapsed();
    let job = last.expect("the watch sent the job");
    assert_eq!(job.state(), JobState::Cancelled);
    assert_eq!(job.reason, "enough");
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    // The agent's slot is free again: a new job runs.
    let next = client.submit_job(request(sleep_spec(0))).await.unwrap().into_inner().id;
    assert_eq!(finished(&cluster, &next, Duration::from_secs(10)).await.state(), JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_respects_labels_priority_and_says_why_a_job_waits() {
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("plain", 1, &[]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;
    let gpu = JobSpec {
        requirements: Some(baton_proto::v1::Requirements {
            agent_labels: [("gpu".to_string(), "h200".to_string())].into(),
            min_cpu_cores: 0,
        }),
        priority: 10,
        ..sleep_spec(0)
    };
    let waiting = client.submit_job(request(gpu)).await.unwrap().into_inner();
    // It does not hold back a job the plain agent can run.
    let plain = client.submit_job(request(sleep_spec(0))).await.unwrap().into_inner().id;
    assert_eq!(finished(&cluster, &plain, Duration::from_secs(10)).await.state(), JobState::Succeeded);
    let job = client.get_job(GetJobRequest { id: waiting.id.clone() }).await.unwrap().into_inner();
    assert_eq!(job.state(), JobState::Queued);
    assert_eq!(job.reason, "no connected agent can run this job: label gpu=h200 is required");
    cluster.add_agent("gpu", 1, &["--label", "gpu=h200"]);
    assert_eq!(finished(&cluster, &waiting.id, Duration::from_secs(10)).await.agent_id, "gpu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_submit_filters_and_paging() {
    let cluster = Cluster::start(&[], &[]).await;
    let mut client = cluster.jobs().await;
    let keyed = SubmitJobRequest { spec: Some(sleep_spec(0)), idempotency_key: "nightly-42".into() };
    let a = client.submit_job(keyed.clone()).await.unwrap().into_inner();
    let b = client.submit_job(keyed).await.unwrap().into_inner();
    assert_eq!(a.id, b.id);
    for i in 0..5 {
        let spec = JobSpec {
            labels: [("suite".to_string(), "paging".to_string())].into(),
            name: format!("p{i}"),
            kind: Some(job_spec::Kind::Noop(NoopSpec {})),
            ..Default::default()
        };
        client.submit_job(request(spec)).await.unwrap();
    }
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_jobs(ListJobsRequest {
                labels: [("suite".to_string(), "paging".to_string())].into(),
                states: vec![JobState::Queued as i32],
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.jobs.len() <= 2);
        names.extend(page.jobs.into_iter().map(|j| j.spec.unwrap().name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, ["p4", "p3", "p2", "p1", "p0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_waits_and_prints_tables_and_json() {
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("a1", 1, &[]);
    cluster.wait_agents(1).await;
    let example = workspace().join("examples/hello.json");
    let (code, out, err) = cluster.cli(&["submit", example.to_str().unwrap(), "--wait"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("succeeded") && out.contains("slept 1"), "{out}");
    let yaml = "spec:\n  name: from-yaml\n  sleep:\n    durationMs: 10\n    fail: true\n";
    let (code, out, _) = cluster.cli(&["-o", "json", "submit", "-", "--wait"], Some(yaml));
    assert_eq!(code, 1, "a failed job makes --wait exit non-zero");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["state"], "JOB_STATE_FAILED");
    assert_eq!(job["reason"], "sleep job failed on request after 10 ms");
    let (code, out, _) = cluster.cli(&["list", "--state", "failed"], None);
    assert_eq!(code, 0);
    assert!(out.contains("from-yaml") && !out.contains("hello"), "{out}");
    let (code, out, _) = cluster.cli(&["agents"], None);
    assert_eq!(code, 0);
    assert!(out.contains("a1") && out.contains("ready"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_timeout_is_stopped_and_retried_then_failed() {
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("a1", 1, &[]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;
    let spec = JobSpec {
        timeout: Some(pbjson_types::Duration { seconds: 0, nanos: 300_000_000 }),
        max_attempts: 2,
        ..sleep_spec(60_000)
    };
    let id = client.submit_job(request(spec)).await.unwrap().into_inner().id;
    let job = finished(&cluster, &id, Duration::from_secs(10)).await;
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(job.attempt, 2, "a timed-out attempt is retried while attempts remain");
    assert_eq!(job.reason, "timed out after 300ms (attempt 2 of 2)");
}

/// Issue 8: a ListJobs page examines a bounded number of jobs, so a filter few jobs match
/// comes back in short pages with a token; the CLI follows the tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_label_is_found_through_short_pages() {
    let cluster = Cluster::start(&[], &[]).await;
    let mut client = cluster.jobs().await;
    let rare =
        JobSpec { labels: [("find".to_string(), "me".to_string())].into(), name: "needle".into(), ..sleep_spec(0) };
    client.submit_job(request(rare)).await.unwrap();
    for _ in 0..2 {
        let jobs = (0..7_500).map(|_| request(sleep_spec(0))).collect();
        client.submit_jobs(SubmitJobsRequest { jobs }).await.unwrap();
    }
    let filter = ListJobsRequest {
        labels: [("find".to_string(), "me".to_string())].into(),
        page_size: 10,
        ..Default::default()
    };
    let first = client.list_jobs(filter.clone()).await.unwrap().into_inner();
    assert!(first.jobs.is_empty(), "the newest 10,000 jobs hold no match");
    assert!(!first.next_page_token.is_empty(), "a short page says where to go on");
    let second = client.list_jobs(ListJobsRequest { page_token: first.next_page_token, ..filter }).await.unwrap();
    assert_eq!(
        second.into_inner().jobs.iter().map(|j| j.spec.as_ref().unwrap().name.as_str()).collect::<Vec<_>>(),
        ["needle"]
    );
    let (code, out, err) = cluster.cli(&["list", "--label", "find=me"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("needle"), "{out}");
}

/// Issue 8: finished jobs are removed after the retention, oldest first; open ones stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_past_the_retention_are_removed_oldest_first() {
    let mut cluster = Cluster::start(&["--keep-finished-jobs", "2"], &[]).await;
    cluster.add_agent("a1", 1, &[]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = client.submit_job(request(sleep_spec(0))).await.unwrap().into_inner().id;
        finished(&cluster, &id, Duration::from_secs(10)).await;
        ids.push(id);
    }
    let open = JobSpec {
        requirements: Some(baton_proto::v1::Requirements {
            agent_labels: [("pool".to_string(), "none".to_string())].into(),
            min_cpu_cores: 0,
        }),
        ..sleep_spec(0)
    };
    let open = client.submit_job(request(open)).await.unwrap().into_inner().id;
    for gone in &ids[..2] {
        eventually(Duration::from_secs(5), "the oldest finished jobs to go", || {
            let mut client = client.clone();
            let id = gone.clone();
            async move { client.get_job(GetJobRequest { id }).await.err().filter(|s| s.code() == tonic::Code::NotFound) }
        })
        .await;
    }
    for kept in ids[2..].iter().chain([&open]) {
        client.get_job(GetJobRequest { id: kept.clone() }).await.expect("kept");
    }
}

/// Issue 13 (output): `cancel` says `cancelling` until the agent confirms, `--wait` waits
/// for it; `drain` keeps work off an agent and `undrain` gives it work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_cancels_drains_and_undrains() {
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("a1", 1, &[]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;
    let long = client.submit_job(request(sleep_spec(60_000))).await.unwrap().into_inner().id;
    wait_state(&cluster, &long, JobState::Running).await;
    let (code, out, err) = cluster.cli(&["cancel", &long], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cancelling") || out.contains("cancelled"), "{out}");
    finished(&cluster, &long, Duration::from_secs(10)).await;
    let other = client.submit_job(request(sleep_spec(60_000))).await.unwrap().into_inner().id;
    wait_state(&cluster, &other, JobState::Running).await;
    let (code, out, err) = cluster.cli(&["-o", "json", "cancel", &other, "--wait", "--reason", "enough"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("JOB_STATE_CANCELLED") && out.contains("enough"), "{out}");

    let (code, out, _) = cluster.cli(&["drain", "a1"], None);
    assert_eq!(code, 0);
    assert!(out.contains("draining"), "{out}");
    let held = client.submit_job(request(sleep_spec(0))).await.unwrap().into_inner().id;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = client.get_job(GetJobRequest { id: held.clone() }).await.unwrap().into_inner();
    assert_eq!(job.state(), JobState::Queued, "a drained agent takes no work");
    let (code, out, _) = cluster.cli(&["undrain", "a1"], None);
    assert_eq!(code, 0);
    assert!(!out.contains("draining"), "{out}");
    assert_eq!(finished(&cluster, &held, Duration::from_secs(10)).await.state(), JobState::Succeeded);
}
