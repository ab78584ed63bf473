//! Dispatch latency and end-to-end throughput of `noop` jobs through the real
//! coordinator (durable store) and agents on loopback, with an empty queue and — with
//! `--backlog N` — side by side with N jobs already queued, half of which no agent can
//! run (issue 8: cost per change must not grow with the queue).
//!
//! Latency: one job at a time, submit → the coordinator records the agent's "started"
//! (both stamps on the coordinator's clock, so it includes the start report's trip back).
//! Throughput: N jobs submitted in batches (SubmitJobs, several calls in flight) to the
//! moment the last of them is recorded as finished.
//! Backlog figures: the coordinator's resident memory per queued job, its CPU while
//! nothing changes, and how long a restart (kill -9) takes until it answers again.
//!
//! With `--store etcd` the 8-agent figures run again with the coordinator on a real etcd
//! (one member, fsync on), side by side with the embedded store.
//!
//! `cargo build --release --bins && target/release/bench-pipeline [--jobs N] [--backlog N] [--store etcd]`

use baton_bench::{flag, percentile, ratio};
use baton_proto::job::to_system_time;
use baton_proto::v1::job_service_client::JobServiceClient;
use baton_proto::v1::{
    GetJobRequest, JobSpec, NoopSpec, Requirements, SubmitJobRequest, SubmitJobsRequest, WatchJobRequest, job_spec,
};
use baton_tests::{Cluster, Etcd};
use futures::StreamExt;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const AGENTS: usize = 8;
const SLOTS: u32 = 64;

fn noop() -> SubmitJobRequest {
    SubmitJobRequest {
        spec: Some(JobSpec { kind: Some(job_spec::Kind::Noop(NoopSpec {})), ..Default::default() }),
        idempotency_key: String::new(),
    }
}

/// A noop job that needs a label no agent has: it stays queued.
fn unrunnable() -> SubmitJobRequest {
    let requirements =
        Requirements { agent_labels: [("pool".to_string(), "nowhere".to_string())].into(), min_cpu_cores: 0 };
    let mut req = noop();
    if let Some(spec) = req.spec.as_mut() {
        spec.requirements = Some(requirements);
    }
    req
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

/// Submits `jobs` jobs made by `make(i)` in batches, `in_flight` calls at a time; returns
/// their ids in submission order.
async fn submit_all(
    client: &JobServiceClient<Channel>,
    jobs: usize,
    batch: usize,
    in_flight: usize,
    make: impl Fn(usize) -> SubmitJobRequest,
) -> Vec<String> {
    let batches: Vec<SubmitJobsRequest> = (0..jobs.div_ceil(batch))
        .map(|b| SubmitJobsRequest { jobs: (b * batch..((b + 1) * batch).min(jobs)).map(&make).collect() })
        .collect();
    let submitted = futures::stream::iter(batches)
        .map(|req| {
            let mut client = client.clone();
            async move { client.submit_jobs(req).await.expect("batch submit").into_inner().jobs }
        })
        .buffered(in_flight);
    submitted.flat_map(futures::stream::iter).map(|j| j.id).collect().await
}

/// Waits until the last jobs of `ids` (by submission order: FIFO makes them the last to
/// run) are finished.
async fn wait_finished(client: &JobServiceClient<Channel>, ids: &[String]) {
    for id in ids.iter().rev().take(256) {
        let mut client = client.clone();
        loop {
            let job = client.get_job(GetJobRequest { id: id.clone() }).await.expect("get").into_inner();
            if job.state().is_terminal() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Jobs per second from submitting `jobs` runnable noop jobs to the last one finished.
async fn throughput(cluster: &Cluster, jobs: usize) -> f64 {
    let client = cluster.jobs().await;
    let started = Instant::now();
    let ids = submit_all(&client, jobs, 1000, 4, |_| noop()).await;
    wait_finished(&client, &ids).await;
    ids.len() as f64 / started.elapsed().as_secs_f64()
}

/// A field of the coordinator's last log line that has it (e.g. `jobs_per_commit`).
fn logged(cluster: &Cluster, field: &str) -> String {
    let log = cluster.coordinator().log();
    let key = format!("{field}=");
    log.lines()
        .rev()
        .find_map(|l| l.split(&key).nth(1).map(|v| v.split_whitespace().next().unwrap_or("").to_string()))
        .unwrap_or_else(|| "?".into())
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next());
    kib.and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) * 1024.0
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // utime, stime: fields 14 and 15, in USER_HZ (100)
}

fn coordinator_pid(cluster: &Cluster) -> u32 {
    cluster.coordinator().pid()
}

async fn backlog(jobs: usize, measured: usize, empty: (f64, f64, f64)) {
    println!("\nbacklog: {jobs} jobs queued first, half of them needing a label no agent has");
    let mut cluster = Cluster::start(&[], &[]).await;
    let client = cluster.jobs().await;
    let pid = coordinator_pid(&cluster);
    let rss_before = rss_bytes(pid);
    let started = Instant::now();
    let ids = submit_all(&client, jobs, 10_000, 4, |i| if i % 2 == 0 { noop() } else { unrunnable() }).await;
    let submit_rate = jobs as f64 / started.elapsed().as_secs_f64();
    let per_job = (rss_bytes(pid) - rss_before) / jobs as f64;

    let cpu_before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu = (cpu_seconds(pid) - cpu_before) / 5.0 * 100.0;

    cluster.kill9_coordinator();
    let restarted = Instant::now();
    cluster.start_coordinator().await;
    let mut client = cluster.jobs().await;
    while client.get_job(GetJobRequest { id: ids[0].clone() }).await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready_s = restarted.elapsed().as_secs_f64();
    let load_ms = logged(&cluster, "load_ms");
    let per_job_loaded = (rss_bytes(coordinator_pid(&cluster)) - rss_before) / jobs as f64;

    for i in 0..AGENTS {
        cluster.add_agent(&format!("bench-{i}"), SLOTS, &[]);
    }
    cluster.wait_agents(AGENTS).await;
    let runnable: Vec<String> = ids.iter().step_by(2).cloned().collect();
    let drain_started = Instant::now();
    wait_finished(&client, &runnable).await;
    let drain_rate = runnable.len() as f64 / drain_started.elapsed().as_secs_f64();
    let (p50, p99) = latency(&cluster, 1000).await;
    let rate = throughput(&cluster, measured).await;

    compare("1M queued", empty, (p50, p99, rate), ("≤ 2 ms", "≥ 20,000/s"));
    row("backlog's runnable half drained", "-".into(), format!("{drain_rate:.0}/s"), "-".into(), "");
    row("submit of the backlog", "-".into(), format!("{submit_rate:.0}/s"), "-".into(), "");
    row("resident memory per queued job", "-".into(), format!("{per_job:.0} B"), "-".into(), "≤ 1,024 B");
    row("  the same, loaded after a restart", "-".into(), format!("{per_job_loaded:.0} B"), "-".into(), "≤ 1,024 B");
    row("coordinator CPU, 5 s with nothing changing", "-".into(), format!("{idle_cpu:.1} %"), "-".into(), "≈ 0");
    row("restart (kill -9) until it answers", "-".into(), format!("{ready_s:.2} s"), "-".into(), "≤ 10 s");
    row("  of which loading the store", "-".into(), format!("{load_ms} ms"), "-".into(), "");
}

/// Three coordinators on one etcd member, agents and a client: the leader is killed
/// `kills` times; prints the time from each kill to the first job acknowledged after it.
async fn failover(kills: usize) {
    let etcd = Etcd::start().await;
    let mut cluster = Cluster::start_several(3, &etcd.coordinator_args(), &[]).await;
    for i in 0..AGENTS {
        cluster.add_agent(&format!("bench-{i}"), SLOTS, &[]);
    }
    cluster.wait_agents(AGENTS).await;
    let client = cluster.jobs().await;
    let mut seconds = Vec::with_capacity(kills);
    for _ in 0..kills {
        let leader = cluster.wait_leader(&etcd, Duration::from_secs(15)).await;
        let killed = Instant::now();
        cluster.kill9_coordinator_at(leader);
        while client.clone().submit_job(noop()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seconds.push(killed.elapsed().as_secs_f64());
        cluster.start_coordinator_at(leader).await;
    }
    seconds.sort_by(f64::total_cmp);
    row(
        "failover: leader kill -9 → first job acknowledged",
        "-".into(),
        format!("p50 {:.2} s", percentile(&seconds, 0.5)),
        "-".into(),
        "≤ 5 s",
    );
    row(&format!("  the longest of {kills}"), "-".into(), format!("{:.2} s", seconds[kills - 1]), "-".into(), "≤ 5 s");
}

/// Dispatch p50, p99 and throughput with `agents` agents and a coordinator started with
/// `args`; prints the row.
async fn measure(args: &[&str], agents: usize, jobs: usize) -> (f64, f64, f64) {
    let mut cluster = Cluster::start(args, &[]).await;
    for i in 0..agents {
        cluster.add_agent(&format!("bench-{i}"), SLOTS, &[]);
    }
    cluster.wait_agents(agents).await;
    let (p50, p99) = latency(&cluster, 1000).await;
    let _ = throughput(&cluster, 5_000).await; // warm-up
    let rate = throughput(&cluster, jobs).await;
    cluster.coordinators[0].as_mut().expect("running").terminate();
    let per_commit = logged(&cluster, "jobs_per_commit");
    println!("{agents:>7} | {p50:>11.3} ms | {p99:>11.3} ms | {rate:>8.0} jobs/s | {per_commit:>12}");
    (p50, p99, rate)
}

/// One row of a side-by-side table: figure, reference, measured, ratio, aim.
fn row(name: &str, reference: String, measured: String, ratio: String, aim: &str) {
    println!("{name:<42} | {reference:>12} | {measured:>12} | {ratio:>7} | {aim}");
}

/// The empty-queue embedded figures against another run's, with ratios and aims.
fn compare(name: &str, empty: (f64, f64, f64), other: (f64, f64, f64), aims: (&str, &str)) {
    let ((e50, e99, erate), (o50, o99, orate)) = (empty, other);
    row("figure (8 agents)", "embedded".into(), name.into(), "ratio".into(), "aim");
    row("dispatch p50", format!("{e50:.3} ms"), format!("{o50:.3} ms"), ratio(o50, e50), "");
    row("dispatch p99", format!("{e99:.3} ms"), format!("{o99:.3} ms"), ratio(o99, e99), aims.0);
    row(
        "throughput (noop, submit → done)",
        format!("{erate:.0}/s"),
        format!("{orate:.0}/s"),
        ratio(orate, erate),
        aims.1,
    );
}

#[tokio::main]
async fn main() {
    let jobs = baton_bench::flag_usize("--jobs", 50_000);
    let backlog_jobs = baton_bench::flag_usize("--backlog", 0);
    println!("baton pipeline benchmark: noop jobs, redb store with a durable commit per batch, loopback gRPC");
    println!(
        "{:>7} | {:>14} | {:>14} | {:>14} | {:>12}",
        "agents", "dispatch p50", "dispatch p99", "throughput", "jobs/commit"
    );
    let mut empty = (0.0, 0.0, 0.0);
    for agents in [1usize, AGENTS] {
        empty = measure(&[], agents, jobs).await;
    }
    if flag("--store").as_deref() == Some("etcd") {
        println!("\nthe same with the coordinator's store on etcd (fsync on), one member, then three:");
        let one = Etcd::start().await;
        let on_one = measure(&one.coordinator_args(), AGENTS, jobs).await;
        drop(one);
        let three = Etcd::start_members(3).await;
        let on_three = measure(&three.coordinator_args(), AGENTS, jobs).await;
        drop(three);
        compare("etcd, 1 member", empty, on_one, ("≤ 5 ms", "≥ 5,000/s"));
        compare("etcd, 3 members", empty, on_three, ("", ""));
        failover(10).await;
    }
    if backlog_jobs > 0 {
        backlog(backlog_jobs, jobs, empty).await;
    }
}
