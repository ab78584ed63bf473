//! Sweeps, reports and comparisons through the real coordinator, agents, libtorch,
//! Chromium, Firefox and Jaeger (issue 12).

use crate::backbone::finished;
use crate::browser::at_site;
use baton_proto::v1::{JobState, ListJobsRequest, job_spec};
use baton_tests::{Cluster, Jaeger, Site, TempDir, eventually, example};
use serde_json::{Value, json};
use std::time::Duration;

/// Submits a spec with the CLI, waits for it, and returns the finished job as JSON.
fn submit_and_wait(cluster: &Cluster, spec: &Value) -> Value {
    let (code, out, err) = cluster.cli(&["submit", "-", "--wait", "-o", "json"], Some(&spec.to_string()));
    assert!(code == 0 || code == 1, "baton submit: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"))
}

/// The `data-plot` names of an HTML report, after checking it is one self-contained page
/// with an SVG in every plot.
fn plots_in(html: &str) -> Vec<String> {
    assert!(html.starts_with("<!doctype html>") && html.trim_end().ends_with("</html>"));
    assert!(!html.contains("<script") && !html.contains(" src=") && !html.contains(" href="), "nothing fetched");
    let plots: Vec<String> =
        html.split("<figure data-plot=\"").skip(1).map(|s| s.split('"').next().unwrap().to_string()).collect();
    assert_eq!(html.matches("<svg").count(), plots.len(), "an SVG in every plot");
    plots
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpt2_sweep_runs_each_point_where_it_fits_and_its_report_fits_the_laws() {
    let jaeger = Jaeger::start().await;
    let mut cluster = Cluster::start(&[], &jaeger.exporter_env()).await;
    cluster.add_agent("cpu-1", 1, &["--no-browser"]);
    cluster.wait_agents(1).await;
    let model = json!({"custom": {"nLayer": 2, "nHead": 2, "nEmbd": 64, "nCtx": 256}});
    let spec = json!({"spec": {
        "name": "tiny sweep",
        "matrix": {"gpt2Train.seqLen": [16, 32, 64, 128], "gpt2Train.threads": [1, 2]},
        "gpt2Train": {"model": model, "batch": 2, "steps": 5, "warmupSteps": 1, "device": "cpu", "seed": 1},
    }});
    let sweep = submit_and_wait(&cluster, &spec);
    assert_eq!(sweep["state"], "JOB_STATE_SUCCEEDED", "{sweep}");
    assert_eq!(sweep["sweep"], json!({"points": 8, "succeeded": 8}), "{sweep}");
    assert_eq!(sweep["progress"]["fraction"], 1.0);
    let id = sweep["id"].as_str().unwrap();

    // Its points: jobs of their own, named by their values, each with a trace linked to
    // the sweep's.
    let mut client = cluster.jobs().await;
    let request = ListJobsRequest { sweep_id: id.into(), page_size: 100, ..Default::default() };
    let points = client.list_jobs(request).await.unwrap().into_inner().jobs;
    assert_eq!(points.len(), 8);
    let mut names: Vec<&str> = points.iter().map(|p| p.spec.as_ref().unwrap().name.as_str()).collect();
    names.sort();
    assert_eq!(names[0], "tiny sweep seqLen=128 threads=1");
    assert!(points.iter().all(|p| p.state() == JobState::Succeeded && p.point.as_ref().unwrap().values.len() == 2));
    let point = &points[0];
    assert_ne!(point.trace_id, sweep["traceId"].as_str().unwrap());
    let trace = jaeger.trace(&point.trace_id, &["baton.sweep.point", "queue", "execute"]).await;
    let root = trace["spans"].as_array().unwrap().iter().find(|s| s["operationName"] == "baton.sweep.point").unwrap();
    assert!(
        root["references"].as_array().unwrap().iter().any(|r| r["traceID"] == sweep["traceId"]),
        "the point's trace links to the sweep's: {root}"
    );
    let sweep_trace = jaeger.trace(sweep["traceId"].as_str().unwrap(), &["baton.v1.JobService/SubmitJob"]).await;
    let spans = sweep_trace["spans"].as_array().unwrap();
    let submit = spans.iter().find(|s| s["operationName"] == "baton.v1.JobService/SubmitJob").unwrap();
    let linked = submit["references"].as_array().unwrap().iter().filter(|r| r["refType"] == "FOLLOWS_FROM").count();
    assert_eq!(linked, 8, "the sweep's trace links to each point's: {submit}");

    // The report: a line per point, power laws, the tidy table and one HTML page.
    let dir = TempDir::new("sweep-report");
    let (html, csv, tidy) = (dir.0.join("r.html"), dir.0.join("r.csv"), dir.0.join("r.json"));
    let args = [
        "report",
        id,
        "--html",
        html.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--json",
        tidy.to_str().unwrap(),
    ];
    let (code, out, err) = cluster.cli(&args, None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sweep of 8 points: 8 succeeded"), "{out}");
    assert!(out.contains("stepMs ∝ seqLen^k (threads=1): k = "), "{out}");
    let plots = plots_in(&std::fs::read_to_string(&html).unwrap());
    for want in [
        "law stepMs gpt2Train.seqLen",
        "law forwardMs gpt2Train.seqLen",
        "law backwardMs gpt2Train.seqLen",
        "law optimizerMs gpt2Train.seqLen",
        "scaling stepMs gpt2Train.threads",
    ] {
        assert!(plots.iter().any(|p| p == want), "{want:?} not in {plots:?}");
    }
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert!(csv.starts_with("gpt2Train.seqLen,gpt2Train.threads,step,figure,unit,count,median,p10,p90,"), "{csv}");
    assert_eq!(csv.lines().filter(|l| l.contains(",stepMs,ms,5,")).count(), 8, "{csv}");
    let rows: Value = serde_json::from_str(&std::fs::read_to_string(&tidy).unwrap()).unwrap();
    let forward: Vec<&Value> = rows.as_array().unwrap().iter().filter(|r| r["figure"] == "forwardMs").collect();
    assert_eq!(forward.len(), 8);
    assert!(forward.iter().all(|r| r["samples"].as_array().unwrap().len() == 5 && r["device"] == "cpu"));

    // CPU and CUDA points in one sweep: each goes only where it can run; cancelling the
    // sweep cancels the point no agent can take.
    let mixed = json!({"spec": {
        "name": "cpu vs cuda",
        "matrix": {"gpt2Train.device": ["cpu", "cuda"]},
        "gpt2Train": {"model": model, "batch": 1, "seqLen": 16, "steps": 1, "seed": 1},
    }});
    let (code, out, err) = cluster.cli(&["submit", "-", "-o", "json"], Some(&mixed.to_string()));
    assert_eq!(code, 0, "{err}");
    let mixed_id = serde_json::from_str::<Value>(&out).unwrap()["id"].as_str().unwrap().to_string();
    let request = ListJobsRequest { sweep_id: mixed_id.clone(), ..Default::default() };
    let half_done = cluster
        .wait_job(&mixed_id, Duration::from_secs(60), "have its CPU point done", |j| {
            j.sweep.as_ref().is_some_and(|s| s.succeeded == 1)
        })
        .await;
    assert_eq!(half_done.state(), JobState::Running);
    let points = client.list_jobs(request).await.unwrap().into_inner().jobs;
    let waiting = points.iter().find(|p| p.state() == JobState::Queued).expect("the CUDA point waits");
    assert_eq!(waiting.reason, "no connected agent can run this job: a CUDA device is required");
    let (code, out, err) = cluster.cli(&["cancel", &mixed_id, "--wait", "-o", "json"], None);
    assert_eq!(code, 0, "{out} {err}");
    let cancelled: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cancelled["state"], "JOB_STATE_CANCELLED");
    assert_eq!(cancelled["reason"], "1 of 2 points were cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_point_refuses_the_sweep_and_compare_finds_an_injected_slowdown() {
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("cpu-1", 4, &["--no-browser"]);
    cluster.wait_agents(1).await;
    let bad = json!({"spec": {"matrix": {"sleep.durationMs": [10, 999_999_999]}, "sleep": {}}});
    let (code, _, err) = cluster.cli(&["submit", "-"], Some(&bad.to_string()));
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "error: invalid argument: spec.sleep.durationMs: must be at most 86400000 (24 h) (in the sweep's point durationMs=999999999)"
    );
    let (code, out, _) = cluster.cli(&["list", "-o", "json"], None);
    assert_eq!((code, out.trim()), (0, "[]"), "nothing of a refused sweep is kept");

    // Two runs of the same work, and one 20 % slower.
    let sleeps = |ms: u64| json!({"spec": {"name": format!("sleep {ms}"), "repeat": 8, "sleep": {"durationMs": ms}}});
    let base = submit_and_wait(&cluster, &sleeps(50));
    let again = submit_and_wait(&cluster, &sleeps(50));
    let slower = submit_and_wait(&cluster, &sleeps(60));
    for sweep in [&base, &again, &slower] {
        assert_eq!(sweep["sweep"]["succeeded"], 8, "{sweep}");
    }
    let id = |v: &Value| v["id"].as_str().unwrap().to_string();
    let dir = TempDir::new("compare");
    let page = dir.0.join("compare.html");
    let (code, out, err) = cluster.cli(&["compare", &id(&base), &id(&slower), "--html", page.to_str().unwrap()], None);
    assert_eq!(code, 2, "a regression exits 2: {out} {err}");
    assert!(out.contains("sleptMs") && out.contains("REGRESSION"), "{out}");
    assert!(err.contains("1 figure(s) regressed"), "{err}");
    assert_eq!(plots_in(&std::fs::read_to_string(&page).unwrap()), ["ratios"]);
    let (code, out, err) = cluster.cli(&["compare", &id(&base), &id(&again), "-o", "json"], None);
    assert_eq!(code, 0, "the same work twice is no regression: {out} {err}");
    let found: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(found[0]["figure"], "sleptMs");
    assert_eq!(found[0]["verdict"], "same");
    assert_eq!((found[0]["aCount"].as_u64(), found[0]["bCount"].as_u64()), (Some(8), Some(8)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sweep_crosses_modes_and_browsers_and_reports_page_loads_and_interactions() {
    let site = Site::start().await;
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("desktop-1", 1, &[]);
    cluster.wait_agents(1).await;
    let mut req = at_site(example("sweep-browser.json"), &site);
    let spec = req.spec.as_mut().unwrap();
    spec.matrix.insert("browser.browser".into(), json_list(&["chrome", "firefox"]));
    if let Some(job_spec::Kind::Browser(b)) = spec.kind.as_mut() {
        b.repeat = 3;
    }
    let mut client = cluster.jobs().await;
    let id = client.submit_job(req).await.unwrap().into_inner().id;
    let sweep = finished(&cluster, &id, Duration::from_secs(300)).await;
    assert_eq!(sweep.state(), JobState::Succeeded, "{}", sweep.reason);
    assert_eq!(sweep.sweep.as_ref().unwrap().succeeded, 4);

    let dir = TempDir::new("browser-report");
    let (html, csv) = (dir.0.join("r.html"), dir.0.join("r.csv"));
    let (code, out, err) =
        cluster.cli(&["report", &id, "--html", html.to_str().unwrap(), "--csv", csv.to_str().unwrap()], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loadMs (open login page)"), "{out}");
    let plots = plots_in(&std::fs::read_to_string(&html).unwrap());
    assert!(plots.contains(&"pageload open login page".to_string()), "{plots:?}");
    assert!(plots.contains(&"interaction dashboard visible".to_string()), "{plots:?}");
    let csv = std::fs::read_to_string(&csv).unwrap();
    assert!(csv.starts_with("browser.browser,browser.mode,step,figure,"), "{csv}");
    for (browser, mode) in [("chrome", "cold"), ("chrome", "warm"), ("firefox", "cold"), ("firefox", "warm")] {
        let row = format!("{browser},{mode},dashboard visible,interactionBrowserMs,ms,3,");
        assert!(csv.contains(&row), "{row:?} not in {csv}");
    }
}

fn json_list(values: &[&str]) -> pbjson_types::ListValue {
    serde_json::from_value(json!(values)).unwrap()
}

/// The sweep's counts as its points' states say them: (queued, running, succeeded, failed,
/// cancelled).
async fn counted_from_points(cluster: &Cluster, sweep_id: &str) -> [u32; 5] {
    let request = ListJobsRequest { sweep_id: sweep_id.into(), page_size: 100, ..Default::default() };
    let points = cluster.jobs().await.list_jobs(request).await.unwrap().into_inner().jobs;
    let mut c = [0; 5];
    for p in points {
        c[match p.state() {
            JobState::Queued | JobState::Unspecified => 0,
            JobState::Assigned | JobState::Running => 1,
            JobState::Succeeded => 2,
            JobState::Failed => 3,
            JobState::Cancelled => 4,
        }] += 1;
    }
    c
}

/// A sweep survives its coordinator killed (SIGKILL) and an agent killed mid-point: every
/// point succeeds, and the sweep's counts — stored in the same commit as each point's move
/// — agree with its points after each restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_survives_its_coordinator_and_an_agent_killed_and_its_counts_agree_with_its_points() {
    let mut cluster = Cluster::start(&["--lease-timeout", "2s", "--heartbeat-interval", "500ms"], &[]).await;
    let first = cluster.add_agent("a1", 2, &["--no-browser"]);
    cluster.wait_agents(1).await;
    let spec =
        json!({"spec": {"name": "naps", "matrix": {"sleep.durationMs": [300, 600, 900]}, "repeat": 4, "sleep": {}}});
    let (code, out, err) = cluster.cli(&["submit", "-", "-o", "json"], Some(&spec.to_string()));
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<Value>(&out).unwrap()["id"].as_str().unwrap().to_string();
    let counts = |job: &baton_proto::v1::Job| {
        let c = job.sweep.unwrap();
        [c.queued, c.running, c.succeeded, c.failed, c.cancelled]
    };

    tokio::time::sleep(Duration::from_millis(1200)).await;
    cluster.kill9_coordinator();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.start_coordinator().await;
    // Points keep moving (the agent reconnects): compare when the sweep reads the same
    // before and after its points were listed.
    let get = || async {
        let request = baton_proto::v1::GetJobRequest { id: id.clone() };
        cluster.jobs().await.get_job(request).await.unwrap().into_inner()
    };
    eventually(Duration::from_secs(20), "the restored sweep's counts to agree with its points", || async {
        let before = get().await;
        let points = counted_from_points(&cluster, &id).await;
        let after = get().await;
        (before.sweep.unwrap().points == 12 && counts(&before) == counts(&after) && counts(&before) == points)
            .then_some(())
    })
    .await;

    cluster.wait_agents(1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.agents[first].kill9();
    cluster.add_agent("a2", 2, &["--no-browser"]);
    let done = finished(&cluster, &id, Duration::from_secs(60)).await;
    assert_eq!(done.state(), JobState::Succeeded, "{}", done.reason);
    assert_eq!(counts(&done), [0, 0, 12, 0, 0]);
    assert_eq!(counted_from_points(&cluster, &id).await, [0, 0, 12, 0, 0]);
    assert_eq!(done.progress.unwrap().fraction, 1.0);
    let request = ListJobsRequest { sweep_id: id.clone(), page_size: 100, ..Default::default() };
    let points = cluster.jobs().await.list_jobs(request).await.unwrap().into_inner().jobs;
    assert!(points.iter().any(|p| p.attempt == 2), "a point the killed agent ran ran again elsewhere");
}
