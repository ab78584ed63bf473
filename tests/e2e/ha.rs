//! Several coordinators on one etcd, one leader (issue 9): the leader killed again and
//! again, paused past its lease, cut off from etcd; clients and agents pointed at a
//! follower. Each run is checked with the history checker of the exactly-once suite.

use crate::backbone::{finished, request, sleep_spec};
use crate::faults::{Flow, Rng, SETTLE, Workload, secs, seed};
use crate::history::Recorder;
use baton_proto::v1::JobState;
use baton_tests::{Cluster, Etcd, FaultProxy};
use std::time::{Duration, Instant};
use tokio::time::sleep;

/// The coordinator flags of every coordinator here: an etcd store and short agent leases.
fn flags(etcd_endpoint: &str) -> Vec<String> {
    ["--store", "etcd", "--etcd-endpoints", etcd_endpoint, "--lease-timeout", "3s", "--heartbeat-interval", "500ms"]
        .map(str::to_string)
        .to_vec()
}

async fn three_coordinators(etcd_endpoint: &str) -> Cluster {
    let flags = flags(etcd_endpoint);
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    Cluster::start_several(3, &args, &[]).await
}

/// Issue 9: the leader killed with SIGKILL ten times while ~500 jobs flow across 4 agents;
/// a follower takes over each time, nothing acknowledged is lost or done twice. Prints the
/// failover times (kill → the first job acknowledged through the new leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_ten_times_loses_and_repeats_no_job() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let etcd = Etcd::start().await;
    let mut cluster = three_coordinators(&etcd.endpoint).await;
    for i in 0..4 {
        cluster.add_agent(&format!("a{i}"), 4, &[]);
    }
    cluster.wait_agents(4).await;
    let recorder = Recorder::start(&cluster);
    let workload = Workload::start(&recorder, seed, Flow { batch: 10, every_ms: 120, longest_ms: 400, for_s: 50 });
    let mut failovers = Vec::new();
    for _ in 0..10 {
        sleep(rng.millis(1000, 2000)).await;
        let leader = cluster.wait_leader(&etcd, secs(15)).await;
        recorder.fault(format!("kill -9 the leader, coordinator-{leader}"));
        let killed = Instant::now();
        cluster.kill9_coordinator_at(leader);
        let acked = retry_until_acked(&recorder, secs(15)).await;
        failovers.push(killed.elapsed().as_secs_f64());
        assert!(acked, "no job was acknowledged within 15 s of killing the leader");
        cluster.start_coordinator_at(leader).await;
    }
    let acked = workload.finish().await;
    failovers.sort_by(f64::total_cmp);
    println!(
        "failover (kill → first acknowledged job) over {} kills: p50 {:.2} s, max {:.2} s; {acked} jobs acknowledged",
        failovers.len(),
        failovers[failovers.len() / 2],
        failovers[failovers.len() - 1]
    );
    assert!(failovers[failovers.len() - 1] < 10.0, "failover took {:?} s", failovers);
    recorder.check(&cluster, Some(seed), SETTLE).await;
}

/// Submits a job every 50 ms until one is acknowledged (true) or `within` passes.
async fn retry_until_acked(recorder: &Recorder, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if recorder.submit(vec![request(sleep_spec(0))]).await.is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until coordinator `i` logs that it lost its leadership.
async fn wait_stepped_down(cluster: &Cluster, i: usize, what: &str) {
    let log = || cluster.coordinators[i].as_ref().map(|p| p.log()).unwrap_or_default();
    baton_tests::eventually(secs(10), what, || async { log().contains("lost the leadership").then_some(()) }).await;
}

/// Issue 9: a leader paused (SIGSTOP) past its etcd lease is replaced; resumed, it finds
/// its fence gone, writes nothing, and starts again as a follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_never_writes_again() {
    let etcd = Etcd::start().await;
    let mut cluster = three_coordinators(&etcd.endpoint).await;
    cluster.add_agent("a0", 4, &[]);
    cluster.add_agent("a1", 4, &[]);
    cluster.wait_agents(2).await;
    let recorder = Recorder::start(&cluster);
    let workload = Workload::start(&recorder, 7, Flow { batch: 5, every_ms: 150, longest_ms: 300, for_s: 12 });
    sleep(secs(2)).await;
    let paused = cluster.wait_leader(&etcd, secs(10)).await;
    let proc = cluster.coordinators[paused].as_ref().expect("the leader runs");
    recorder.fault(format!("SIGSTOP the leader, coordinator-{paused}, for 5 s (lease 2 s)"));
    proc.signal("STOP");
    sleep(secs(5)).await;
    let successor = cluster.wait_leader(&etcd, secs(10)).await;
    assert_ne!(successor, paused, "another coordinator leads while the old leader is paused");
    recorder.fault(format!("SIGCONT coordinator-{paused}"));
    proc.signal("CONT");
    wait_stepped_down(&cluster, paused, "the resumed leader to step down").await;
    workload.finish().await;
    assert_eq!(cluster.wait_leader(&etcd, secs(10)).await, successor, "the resumed coordinator follows");
    recorder.check(&cluster, None, SETTLE).await;
}

/// Issue 9: an agent and the CLI given only a follower's URL end up at the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_and_a_client_given_only_a_follower_work() {
    let etcd = Etcd::start().await;
    let mut cluster = three_coordinators(&etcd.endpoint).await;
    let leader = cluster.wait_leader(&etcd, secs(10)).await;
    let follower_url = cluster.coordinator_url((leader + 1) % 3);
    cluster.add_agent_via("only-follower", 1, &[], &follower_url);
    cluster.wait_agents(1).await;
    let text = serde_json::to_string(&request(sleep_spec(50))).expect("a spec serializes");
    let (code, out, err) = cluster.cli_via(&follower_url, &["-o", "json", "submit", "-", "--wait"], Some(&text));
    assert_eq!(code, 0, "{err}");
    let job: serde_json::Value = serde_json::from_str(&out).expect("the CLI prints the job");
    assert_eq!((job["state"].as_str(), job["agentId"].as_str()), (Some("JOB_STATE_SUCCEEDED"), Some("only-follower")));
    // grpcurl against the follower too: reflection, and a call it forwards.
    let listed = std::process::Command::new(baton_tests::tool("grpcurl"))
        .args(["-plaintext", follower_url.trim_start_matches("http://"), "baton.v1.AdminService/ListAgents"])
        .output()
        .expect("running grpcurl");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("only-follower"), "{listed:?}");
}

/// Issue 9: the leader cut off from etcd loses its lease and steps down; a coordinator
/// that still reaches etcd takes over and the jobs in flight finish once; healed, the old
/// leader follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_is_replaced() {
    let etcd = Etcd::start().await;
    let etcd_addr = etcd.endpoint.trim_start_matches("http://").parse().expect("etcd's address");
    let proxies: Vec<FaultProxy> = (0..3).map(|_| FaultProxy::start(etcd_addr)).collect();
    let mut cluster = Cluster::start_each(proxies.iter().map(|p| flags(&p.url())).collect(), &[]).await;
    cluster.add_agent("a0", 4, &[]);
    cluster.add_agent("a1", 4, &[]);
    cluster.wait_agents(2).await;
    let leader = cluster.wait_leader(&etcd, secs(10)).await;
    let recorder = Recorder::start(&cluster);
    let in_flight = recorder.submit((0..6).map(|_| request(sleep_spec(3000))).collect()).await.expect("acknowledged");

    recorder.fault(format!("cut the leader, coordinator-{leader}, off from etcd"));
    proxies[leader].cut();
    wait_stepped_down(&cluster, leader, "the cut-off leader to step down").await;
    let successor = cluster.wait_leader(&etcd, secs(10)).await;
    assert_ne!(successor, leader);
    let mut direct = cluster.jobs_at(successor).await;
    let after = direct.submit_job(request(sleep_spec(100))).await.expect("the new leader acknowledges").into_inner();
    baton_tests::eventually(secs(15), "a job through the new leader to succeed", || {
        let mut direct = direct.clone();
        let id = after.id.clone();
        async move {
            let job = direct.get_job(baton_proto::v1::GetJobRequest { id }).await.ok()?.into_inner();
            (job.state() == JobState::Succeeded).then_some(())
        }
    })
    .await;

    recorder.fault("heal");
    proxies[leader].heal();
    for id in &in_flight {
        assert_eq!(finished(&cluster, id, secs(20)).await.state(), JobState::Succeeded);
    }
    assert_eq!(cluster.wait_leader(&etcd, secs(5)).await, successor, "the healed coordinator follows");
    recorder.check(&cluster, None, SETTLE).await;
}

/// Issue 9: on a 3-member etcd cluster, one member restarted mid-run, then the whole etcd
/// cluster; the coordinators wait (acknowledging nothing), go on by themselves, and no
/// acknowledged job is lost, done twice or changed once finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_members_and_the_whole_etcd_cluster_restarted_mid_run_lose_nothing() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let mut etcd = Etcd::start_members(3).await;
    let mut cluster = three_coordinators(&etcd.endpoint).await;
    cluster.add_agent("a0", 4, &[]);
    cluster.add_agent("a1", 4, &[]);
    cluster.wait_agents(2).await;
    let recorder = Recorder::start(&cluster);
    let workload = Workload::start(&recorder, seed, Flow { batch: 6, every_ms: 150, longest_ms: 400, for_s: 20 });
    for _ in 0..2 {
        sleep(rng.millis(1500, 3000)).await;
        let member = rng.below(3) as usize;
        recorder.fault(format!("kill -9 etcd member m{member}, back after 2 s"));
        etcd.kill9_member(member);
        sleep(secs(2)).await;
        etcd.start_member(member);
        etcd.wait_healthy().await;
    }
    sleep(secs(2)).await;
    recorder.fault("kill -9 every etcd member, back after 2 s");
    etcd.kill9();
    sleep(secs(2)).await;
    etcd.restart().await;
    let acked = workload.finish().await;
    assert!(acked >= 100, "only {acked} jobs were acknowledged");
    // The coordinators go on by themselves: a leader again, taking jobs.
    cluster.wait_leader(&etcd, secs(15)).await;
    let id = recorder.submit_one(request(sleep_spec(0))).await;
    assert_eq!(finished(&cluster, &id, secs(15)).await.state(), JobState::Succeeded);
    recorder.check(&cluster, Some(seed), SETTLE).await;
}
