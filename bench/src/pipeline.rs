//! Dispatch latency and end-to-end throughput of `noop` jobs through the real
//! coordinator (durable store) and agents on loopback.
//!
//! Latency: one job at a time, submit → the coordinator records the agent's "started"
//! (both stamps on the coordinator's clock, so it includes the start report's trip back).
//! Throughput: N jobs submitted in batches (SubmitJobs, several calls in flight) to the
//! moment the last one is recorded as succeeded.
//!
//! `cargo build --release --bins && target/release/bench-pipeline [--jobs N]`

use baton_bench::percentile;
use baton_proto::job::to_system_time;
use baton_proto::v1::{
    JobSpec, JobState, ListJobsRequest, NoopSpec, SubmitJobRequest, SubmitJobsRequest, WatchJobRequest, job_spec,
};
use baton_tests::Cluster;
use futures::StreamExt;
use std::time::{Duration, Instant};

fn noop() -> SubmitJobRequest {
    SubmitJobRequest {
        spec: Some(JobSpec { kind: Some(job_spec::Kind::Noop(NoopSpec {})), ..Default::default() }),
        idempotency_key: String::new(),
    }
}

async fn latency(cluster: &Cluster, samples: usize) -> (f64, f64) {
    let mut client = cluster.jobs().await;
    let mut ms = Vec::with_capacity(samples);
    for i in 0..samples + 50 {
        let job = client.submit_job(noop()).await.expect("submit").into_inner();
        let mut watch = client.watch_job(WatchJobRequest { id: job.id }).await.expect("watch").into_inner();
        let mut last = None;
        while let Some(j) = watch.message().await.expect("watching") {
            last = Some(j);
        }
        let job = last.expect("a finished job");
        if i < 50 {
            continue; // warm-up
        }
        let (Some(s), Some(r)) = (job.submitted_at.as_ref(), job.started_at.as_ref()) else { continue };
        ms.push(to_system_time(r).duration_since(to_system_time(s)).unwrap_or_default().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    (percentile(&ms, 0.5), percentile(&ms, 0.99))
}

async fn throughput(cluster: &Cluster, jobs: usize, batch: usize, in_flight: usize) -> f64 {
    let client = cluster.jobs().await;
    let started = Instant::now();
    let batches = jobs / batch;
    let submitted = futures::stream::iter(0..batches)
        .map(|_| {
            let mut client = client.clone();
            async move {
                let req = SubmitJobsRequest { jobs: (0..batch).map(|_| noop()).collect() };
                client.submit_jobs(req).await.expect("batch submit").into_inner().jobs.len()
            }
        })
        .buffer_unordered(in_flight);

    let total: usize = submitted.collect::<Vec<_>>().await.into_iter().sum();
    assert_eq!(total, batches * batch);
    let mut client = client.clone();
    loop {
        let open = client
            .list_jobs(ListJobsRequest {
                states: vec![JobState::Queued as i32, JobState::Assigned as i32, JobState::Running as i32],
                page_size: 1,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        if open.jobs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    total as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let jobs = baton_bench::flag_usize("--jobs", 50_000);
    println!("baton pipeline benchmark: noop jobs, redb store with a durable commit per batch, loopback gRPC");
    println!(
        "{:>7} | {:>14} | {:>14} | {:>14} | {:>12}",
        "agents", "dispatch p50", "dispatch p99", "throughput", "jobs/commit"
    );
    for agents in [1usize, 8] {
        let mut cluster = Cluster::start(&[], &[]).await;
        for i in 0..agents {
            cluster.add_agent(&format!("bench-{i}"), 64, &[]);
        }
        cluster.wait_agents(agents).await;
        let (p50, p99) = latency(&cluster, 1000).await;
        let _ = throughput(&cluster, 5_000, 1000, 4).await; // warm-up
        let rate = throughput(&cluster, jobs, 1000, 4).await;
        let coordinator = cluster.coordinator.as_mut().expect("running");
        coordinator.terminate();
        let per_commit = coordinator
            .log()
            .lines()
            .rev()
            .find_map(|l| {
                l.split("jobs_per_commit=").nth(1).map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            })
            .unwrap_or_else(|| "?".into());
        println!("{agents:>7} | {p50:>11.3} ms | {p99:>11.3} ms | {rate:>8.0} jobs/s | {per_commit:>12}");
    }
}
