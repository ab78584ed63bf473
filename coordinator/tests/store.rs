//! Both stores keep the same promises, checked against a real redb file and a real etcd
//! (built by deploy/install.sh): what was committed is there after reopening, results
//! come back whole (also when etcd needs them in parts), removals take record and result.

use baton_coordinator::record::JobRecord;
use baton_coordinator::store::{Commit, EtcdStore, RedbStore, Store, Stored};
use baton_proto::v1::{BrowserReport, JobResult, RepeatReport, StepTiming, job_result};
use baton_tests::{Etcd, TempDir};
use std::sync::Arc;

fn noop() -> JobResult {
    JobResult { kind: Some(job_result::Kind::Noop(Default::default())) }
}

/// A result of about 2.5 MiB: etcd keeps it in parts.
fn big_result() -> JobResult {
    let step = StepTiming { script_result_json: "x".repeat(2_500_000), ..Default::default() };
    let report =
        BrowserReport { repeats: vec![RepeatReport { steps: vec![step], ..Default::default() }], ..Default::default() };
    JobResult { kind: Some(job_result::Kind::Browser(report)) }
}

async fn committed_changes_survive_reopen<S: Store, F: std::future::Future<Output = S>>(open: impl Fn() -> F) {
    {
        let store = open().await;
        let jobs: Vec<JobRecord> =
            (1..=300).map(|seq| JobRecord { id: format!("j{seq}"), seq, ..Default::default() }).collect();
        let results = vec![("j2".to_string(), big_result()), ("j3".to_string(), noop())];
        store.commit(Arc::new(Commit { jobs: jobs.clone(), results, ..Default::default() })).await.unwrap();
        let change = Commit {
            jobs: vec![JobRecord { attempt: 2, ..jobs[1].clone() }],
            results: vec![("j2".to_string(), noop())],
            removed: vec!["j3".into()],
            drained_agents: vec!["agent-1".to_string(), "agent-2".to_string()],
            undrained_agents: Vec::new(),
        };
        store.commit(Arc::new(change)).await.unwrap();
        let undrain = Commit { undrained_agents: vec!["agent-2".to_string()], ..Default::default() };
        store.commit(Arc::new(undrain)).await.unwrap();
    }
    let store = open().await;
    let Stored { mut jobs, drained_agents } = store.load().await.unwrap();
    jobs.sort_by_key(|j| j.seq);
    assert_eq!(jobs.len(), 299, "300 committed, one removed");
    assert_eq!((jobs[1].id.as_str(), jobs[1].attempt), ("j2", 2));
    assert_eq!(drained_agents, ["agent-1"]);
    assert_eq!(store.result("j2").await.unwrap(), Some(noop()), "a smaller result replaces a bigger one whole");
    assert!(store.result("j3").await.unwrap().is_none(), "removed with its record");
    assert!(store.result("j4").await.unwrap().is_none());
}

#[tokio::test]
async fn the_embedded_store_keeps_what_it_committed() {
    let dir = TempDir::new("redb");
    committed_changes_survive_reopen(|| async { RedbStore::open(&dir.0).unwrap() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_store_keeps_what_it_committed() {
    let etcd = Etcd::start().await;
    let endpoints = vec![etcd.endpoint.clone()];
    committed_changes_survive_reopen(|| async { EtcdStore::connect(&endpoints, "/baton-test/").await.unwrap() }).await;
    let store = EtcdStore::connect(&endpoints, "/baton-test/").await.unwrap();
    let result = big_result();
    store
        .commit(Arc::new(Commit { results: vec![("big".into(), result.clone())], ..Default::default() }))
        .await
        .unwrap();
    assert_eq!(store.result("big").await.unwrap(), Some(result), "a 2.5 MiB result comes back whole from parts");
}
