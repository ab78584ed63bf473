//! Every invalid input a user can hit gets a clear message naming the field and the rule.

use crate::backbone::{request, sleep_spec};
use baton_proto::v1::agent_service_client::AgentServiceClient;
use baton_proto::v1::{AgentMessage, Hello, agent_message};
use baton_proto::v1::{
    CancelJobRequest, DrainAgentRequest, GetJobRequest, JobSpec, ListJobsRequest, SubmitJobRequest, SubmitJobsRequest,
    WatchJobRequest,
};
use baton_tests::Cluster;
use tonic::Code;

fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, message: &str) {
    let status = result.expect_err("the call must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_names_the_field_and_the_rule() {
    let cluster = Cluster::start(&[], &[]).await;
    let mut c = cluster.jobs().await;
    let bad = Code::InvalidArgument;
    assert_status(c.submit_job(SubmitJobRequest::default()).await, bad, "spec: is required");
    assert_status(
        c.submit_job(request(JobSpec::default())).await,
        bad,
        "spec: exactly one job kind is required: one of noop, sleep, gpt2Train, gpt2Infer, browser",
    );
    assert_status(
        c.submit_job(request(sleep_spec(86_400_001))).await,
        bad,
        "spec.sleep.durationMs: must be at most 86400000 (24 h)",
    );
    assert_status(
        c.submit_job(request(JobSpec { max_attempts: 1000, ..sleep_spec(1) })).await,
        bad,
        "spec.maxAttempts: must be between 1 and 100 (0 means the default, 3)",
    );
    assert_status(
        c.submit_job(request(JobSpec {
            timeout: Some(pbjson_types::Duration { seconds: -1, nanos: 0 }),
            ..sleep_spec(1)
        }))
        .await,
        bad,
        "spec.timeout: must be positive",
    );
    assert_status(
        c.submit_job(request(JobSpec { labels: [("".to_string(), "x".to_string())].into(), ..sleep_spec(1) })).await,
        bad,
        "spec.labels[\"\"]: label keys must be 1-63 characters of letters, digits, '.', '_', '-' or '/'",
    );
    assert_status(
        c.submit_job(SubmitJobRequest { spec: Some(sleep_spec(1)), idempotency_key: "k".repeat(201) }).await,
        bad,
        "idempotencyKey: must be at most 200 characters",
    );
    assert_status(c.submit_jobs(SubmitJobsRequest { jobs: vec![] }).await, bad, "jobs: must not be empty");
    assert_status(
        c.submit_jobs(SubmitJobsRequest { jobs: vec![request(sleep_spec(1)), request(sleep_spec(u64::MAX))] }).await,
        bad,
        "jobs[1].spec.sleep.durationMs: must be at most 86400000 (24 h)",
    );
    assert_status(c.get_job(GetJobRequest { id: "nope".into() }).await, Code::NotFound, "no job with id nope");
    assert_status(c.get_job(GetJobRequest { id: String::new() }).await, bad, "id: is required");
    assert_status(c.watch_job(WatchJobRequest { id: "nope".into() }).await, Code::NotFound, "no job with id nope");
    assert_status(
        c.cancel_job(CancelJobRequest { id: "nope".into(), reason: String::new() }).await,
        Code::NotFound,
        "no job with id nope",
    );
    assert_status(
        c.list_jobs(ListJobsRequest { page_size: 1001, ..Default::default() }).await,
        bad,
        "pageSize: must be at most 1000",
    );
    assert_status(
        c.list_jobs(ListJobsRequest { page_token: "x".into(), ..Default::default() }).await,
        bad,
        "pageToken: must be a nextPageToken returned by ListJobs",
    );
    assert_status(
        c.list_jobs(ListJobsRequest { states: vec![42], ..Default::default() }).await,
        bad,
        "states: 42 is not a job state",
    );
    assert_status(
        c.list_jobs(ListJobsRequest { view: 7, ..Default::default() }).await,
        bad,
        "view: 7 is not a job view",
    );
    // Issue 8: a spec over the stated size is refused naming the limit, also well past
    // gRPC's default 4 MiB message size.
    let big = JobSpec { labels: (0..2400).map(|i| (format!("k{i}"), "v".repeat(250))).collect(), ..sleep_spec(1) };
    let status = c.submit_job(request(big)).await.expect_err("a 600 KiB spec is refused");
    assert_eq!(status.code(), bad, "{status:?}");
    assert!(
        status.message().starts_with("spec: is 6")
            && status.message().ends_with("KiB encoded; at most 512.0 KiB is accepted"),
        "{}",
        status.message()
    );
    let huge = JobSpec { labels: (0..20_000).map(|i| (format!("k{i}"), "v".repeat(250))).collect(), ..sleep_spec(1) };
    let status = c.submit_job(request(huge)).await.expect_err("a 5 MiB spec is refused");
    assert_eq!(status.code(), bad, "{status:?}");
    assert!(status.message().starts_with("spec: is 5.0 MiB encoded"), "{}", status.message());
    // An agent stream that claims too many slots, or says no hello first, is refused.
    let mut agents = AgentServiceClient::new(cluster.channel().await);
    let hello = |slots| AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello { agent_id: "greedy".into(), slots, ..Default::default() })),
    };
    assert_status(
        agents.connect_agent(futures::stream::iter([hello(4_294_967_295)])).await,
        bad,
        "hello.slots: must be between 1 and 1024",
    );
    let heartbeat = AgentMessage { kind: Some(agent_message::Kind::Heartbeat(Default::default())) };
    assert_status(
        agents.connect_agent(futures::stream::iter([heartbeat])).await,
        bad,
        "the first message on ConnectAgent must be hello",
    );
    let mut admin = cluster.admin().await;
    assert_status(
        admin.drain_agent(DrainAgentRequest { agent_id: "ghost".into() }).await,
        Code::NotFound,
        "no agent with id ghost",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_one_clear_line_and_exits_non_zero() {
    let cluster = Cluster::start(&[], &[]).await;
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (vec!["get", "nope"], None, "error: not found: no job with id nope\n"),
        (
            vec!["submit", "-"],
            Some(r#"{"spec":{"sleep":{"durationMs":100000000}}}"#),
            "error: invalid argument: spec.sleep.durationMs: must be at most 86400000 (24 h)\n",
        ),
        (
            vec!["submit", "/no/such/spec.json"],
            None,
            "error: reading /no/such/spec.json: No such file or directory (os error 2)\n",
        ),
        (
            vec!["list", "--state", "done"],
            None,
            "error: --state \"done\" is not a job state: use queued, assigned, running, succeeded, failed or cancelled\n",
        ),
        (vec!["list", "--label", "x"], None, "error: --label \"x\" must look like key=value\n"),
    ];
    for (args, stdin, want) in cases {
        let (code, _, err) = cluster.cli(&args, stdin);
        assert_eq!(code, 1, "{args:?}");
        assert_eq!(err, want, "{args:?}");
    }
    let (code, _, err) = cluster.cli(&["submit", "-"], Some(r#"{"spec":{"sleep":{"durationMS":1}}}"#));
    assert_eq!(code, 1);
    assert!(err.starts_with("error: -: invalid spec JSON: unknown field `durationMS`"), "{err}");
    let out = std::process::Command::new(baton_tests::bin("baton"))
        .args(["--coordinator", "http://127.0.0.1:1", "list"])
        .output()
        .expect("running baton");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: cannot reach the coordinator at http://127.0.0.1:1"), "{err}");
}
