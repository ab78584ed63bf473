//! The Grafana dashboards of deploy/grafana against a real Prometheus scraping a real
//! cluster (issue 10): every panel's query finds data once jobs of each kind have run, and
//! the latency panels' exemplars name the jobs' traces.

use crate::backbone::{finished, request, sleep_spec};
use crate::browser::{DENIED_BASE, at_base, at_site};
use crate::gpt2::{tiny_infer, tiny_train};
use baton_proto::v1::{JobState, SubmitJobRequest};
use baton_tests::{Cluster, Jaeger, Prometheus, Site, example, free_port, workspace};
use serde_json::Value;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What Grafana puts in place of its built-in interval variables when it sends a query.
const BUILT_INS: [(&str, &str); 3] = [("__rate_interval", "1m"), ("__interval", "15s"), ("__range", "5m")];

/// One panel target's query, with the template variables filled in as Grafana would with
/// every filter at "All".
struct PanelQuery {
    dashboard: String,
    panel: String,
    expr: String,
    exemplar: bool,
}

impl std::fmt::Display for PanelQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {:?}: {}", self.dashboard, self.panel, self.expr)
    }
}

fn dashboard_files() -> Vec<PathBuf> {
    let dir = workspace().join("deploy/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn dashboards() -> Vec<(String, Value)> {
    dashboard_files()
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, json)
        })
        .collect()
}

fn variables(dashboard: &Value) -> &[Value] {
    dashboard["templating"]["list"].as_array().map_or(&[], Vec::as_slice)
}

/// `$name` and `${name}` replaced: built-ins by [`BUILT_INS`], a filter by its "All" value,
/// another variable by its default.
fn substitute(expr: &str, dashboard: &Value) -> String {
    let mut values: Vec<(String, String)> = BUILT_INS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for var in variables(dashboard) {
        let value = var["allValue"].as_str().or(var["query"].as_str()).unwrap_or_default();
        values.push((var["name"].as_str().unwrap_or_default().to_string(), value.to_string()));
    }
    // Longest first, so `$__range` never eats the start of a longer name.
    values.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut expr = expr.to_string();
    for (name, value) in values {
        expr = expr.replace(&format!("${{{name}}}"), &value).replace(&format!("${name}"), &value);
    }
    expr
}

fn panel_queries() -> Vec<PanelQuery> {
    let mut queries = Vec::new();
    for (name, dashboard) in dashboards() {
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = substitute(target["expr"].as_str().unwrap_or_default(), &dashboard);
                let query = PanelQuery {
                    dashboard: name.clone(),
                    panel: panel["title"].as_str().unwrap_or_default().to_string(),
                    expr,
                    exemplar: target["exemplar"] == true,
                };
                assert!(!query.expr.contains('$'), "a variable the test does not know: {query}");
                queries.push(query);
            }
        }
    }
    queries
}

#[test]
fn dashboards_are_grafana_json_on_a_prometheus_variable_with_exemplars_and_jaeger_links() {
    let files = dashboard_files();
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["baton-fleet.json", "baton-gpt2.json", "baton-browser.json"] {
        assert!(names.iter().any(|n| n == expected), "{expected} is missing: {names:?}");
    }
    let mut uids = HashSet::new();
    for (name, d) in dashboards() {
        assert_eq!(d["schemaVersion"], 39, "{name}");
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(uids.insert(uid.to_string()) && name == format!("{uid}.json"), "{name}: uid {uid:?}");
        let var = |n: &str| variables(&d).iter().find(|v| v["name"] == n).cloned().unwrap_or_default();
        let (datasource, jaeger_url) = (var("datasource"), var("jaeger_url"));
        assert!(datasource["type"] == "datasource" && datasource["query"] == "prometheus", "{name}: {datasource}");
        assert!(
            jaeger_url["type"] == "textbox" && jaeger_url["query"] == "http://localhost:16686",
            "{name}: {jaeger_url}"
        );
        assert!(d["links"].to_string().contains("${jaeger_url}/search"), "{name}: a link to Jaeger's search");
        let mut ids = HashSet::new();
        for panel in d["panels"].as_array().unwrap() {
            let title = format!("{name} / {}", panel["title"]);
            let kind = panel["type"].as_str().unwrap_or_default();
            assert!(["timeseries", "stat", "bargauge", "table"].contains(&kind), "{title}: type {kind}");
            assert!(ids.insert(panel["id"].as_u64().unwrap()), "{title}: id taken");
            assert!(panel["gridPos"]["w"].as_u64().is_some_and(|w| w <= 24), "{title}: gridPos");
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
                let expr = target["expr"].as_str().unwrap_or_default();
                if expr.contains("_bucket") && target["range"] == true {
                    assert_eq!(target["exemplar"], true, "{title}: a histogram over time shows exemplars");
                }
            }
        }
    }
    let provisioning = workspace().join("deploy/grafana/provisioning");
    let yaml = |file: &str| -> Value {
        let text = std::fs::read_to_string(provisioning.join(file)).unwrap();
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let sources = yaml("datasources/baton.yaml");
    let source = |t: &str| sources["datasources"].as_array().unwrap().iter().find(|s| s["type"] == t).cloned();
    let prometheus = source("prometheus").expect("a Prometheus data source");
    let destination = &prometheus["jsonData"]["exemplarTraceIdDestinations"][0];
    assert!(destination["name"] == "trace_id" && destination["datasourceUid"] == "jaeger", "{destination}");
    assert_eq!(source("jaeger").expect("a Jaeger data source")["uid"], "jaeger");
    let provider = &yaml("dashboards/baton.yaml")["providers"][0];
    assert!(
        provider["type"] == "file" && provider["options"]["path"] == "/var/lib/grafana/dashboards/baton",
        "{provider}"
    );
}

/// One round of work that feeds every panel: sleeps, GPT-2 training and inference, a
/// browser flow that succeeds and one that fails; with the state each must end in.
fn round(site: &Site) -> Vec<(SubmitJobRequest, JobState)> {
    let mut work: Vec<(SubmitJobRequest, JobState)> =
        (0..3).map(|_| (request(sleep_spec(20)), JobState::Succeeded)).collect();
    work.push((request(tiny_train(64, "cpu")), JobState::Succeeded));
    work.push((request(tiny_infer("cpu")), JobState::Succeeded));
    work.push((at_site(example("browser-login.json"), site), JobState::Succeeded));
    work.push((at_base(example("browser-login.json"), DENIED_BASE), JobState::Failed));
    work
}

/// Whether any series of an instant query's result has a number (not NaN, not ±Inf).
fn has_a_number(result: &[Value]) -> bool {
    result
        .iter()
        .any(|series| series["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(f64::is_finite))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_finds_data_in_a_real_prometheus_and_latencies_link_to_job_traces() {
    let queries = panel_queries();
    let site = Site::start().await;
    let jaeger = Jaeger::start().await;
    let coordinator_metrics = format!("127.0.0.1:{}", free_port());
    let agent_metrics = format!("127.0.0.1:{}", free_port());
    let mut cluster = Cluster::start(&["--metrics-listen", &coordinator_metrics], &jaeger.exporter_env()).await;
    cluster.add_agent("cpu-1", 1, &["--metrics-listen", &agent_metrics, "--label", "pool=cpu"]);
    cluster.wait_agents(1).await;
    let prometheus =
        Prometheus::start(&[("baton-coordinator", &coordinator_metrics), ("baton-agent", &agent_metrics)]).await;
    let started = Instant::now();
    let mut client = cluster.jobs().await;

    // A job no agent here can run keeps a queue, and so baton_queue_depth, non-empty.
    let waiting = client.submit_job(request(tiny_train(64, "cuda:0"))).await.unwrap().into_inner();
    let mut trace_ids = HashSet::from([waiting.trace_id]);
    // The same work twice, the second after Prometheus has scraped the first: a rate needs
    // two samples of a series, and an engine's series appear with its first observation.
    let mut finished_attempts = 0;
    for _ in 0..2 {
        let mut ids = Vec::new();
        for (req, state) in round(&site) {
            ids.push((client.submit_job(req).await.unwrap().into_inner().id, state));
        }
        for (id, state) in ids {
            let job = finished(&cluster, &id, Duration::from_secs(120)).await;
            assert_eq!(job.state(), state, "{id}: {}", job.reason);
            trace_ids.insert(job.trace_id);
            finished_attempts += 1;
        }
        let scraped = format!("sum(baton_agent_jobs_finished_total) == {finished_attempts}");
        baton_tests::eventually(Duration::from_secs(20), "Prometheus to scrape the finished attempts", || {
            let found = prometheus.query(&scraped).map(|r| !r.is_empty());
            async move { found.unwrap_or(false).then_some(()) }
        })
        .await;
    }

    // What a user must see: each panel query with a number, each latency panel with an
    // exemplar of a job here, each filter with a value. A check that passed is done (the
    // rate windows move on while the others are asked again); a query Prometheus refuses
    // fails at once.
    type Check<'a> = (String, Box<dyn Fn() -> bool + 'a>);
    let (prometheus, trace_ids) = (&prometheus, &trace_ids);
    let mut checks: Vec<Check> = Vec::new();
    for query in &queries {
        checks.push((
            format!("{query}\n  → no series with a number"),
            Box::new(move || {
                has_a_number(&prometheus.query(&query.expr).unwrap_or_else(|e| panic!("{query}\nis refused: {e}")))
            }),
        ));
        // The store's commits belong to no job, so their histograms carry no trace.
        if query.exemplar && !query.expr.contains("baton_store_commit") {
            checks.push((
                format!("{query}\n  → no exemplar with the trace_id of a job here"),
                Box::new(move || {
                    let series = prometheus.query_exemplars(&query.expr, Duration::from_secs(600)).unwrap();
                    series
                        .iter()
                        .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
                        .any(|e| e["labels"]["trace_id"].as_str().is_some_and(|t| trace_ids.contains(t)))
                }),
            ));
        }
    }
    for (name, dashboard) in dashboards() {
        for var in variables(&dashboard).iter().filter(|v| v["type"] == "query") {
            let definition = var["definition"].as_str().unwrap_or_default().to_string();
            let args = definition.strip_prefix("label_values(").and_then(|a| a.strip_suffix(')'));
            let (selector, label) = args.and_then(|a| a.split_once(", ")).expect("label_values(metric, label)");
            let (selector, label) = (selector.to_string(), label.to_string());
            checks.push((
                format!("{name} / variable {}: {definition} lists nothing", var["name"]),
                Box::new(move || !prometheus.label_values(&selector, &label).unwrap().is_empty()),
            ));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        checks.retain(|(_, passes)| !passes());
        if checks.is_empty() {
            break;
        }
        let failed: Vec<&str> = checks.iter().map(|(what, _)| what.as_str()).collect();
        assert!(Instant::now() < deadline, "{} checks never passed:\n{}", failed.len(), failed.join("\n"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("{} panel queries answered, {:?} after Prometheus started", queries.len(), started.elapsed());

    // The chart's KEDA queries count what each pool should hold: the GPU pool the one CUDA
    // job waiting (no agent here has a GPU), the browser pool nothing once the coordinator's
    // next scrape shows its jobs done.
    let queries = scaled_object_queries();
    for (pool, expected) in [("one-baton-agent-h200", 1.0), ("one-baton-agent-desktop", 0.0)] {
        let query = &queries[pool];
        let value = || {
            let result = prometheus.query(query).unwrap_or_else(|e| panic!("{pool}: {query}\nis refused: {e}"));
            result.first().and_then(|s| s["value"][1].as_str()).and_then(|v| v.parse::<f64>().ok())
        };
        let what = format!("{pool}'s KEDA query to read {expected}: {query}");
        baton_tests::eventually(Duration::from_secs(20), &what, || {
            let v = value();
            async move { (v == Some(expected)).then_some(()) }
        })
        .await;
    }
}

/// The Prometheus query of each KEDA ScaledObject the chart renders with every pool kind
/// (deploy/kube-test-values.yaml), by name; helm comes from deploy/kube-tools.sh's cache.
fn scaled_object_queries() -> std::collections::HashMap<String, String> {
    let root = workspace();
    let tools = std::process::Command::new("bash").arg(root.join("deploy/kube-tools.sh")).output().unwrap();
    assert!(tools.status.success(), "deploy/kube-tools.sh: {}", String::from_utf8_lossy(&tools.stderr));
    let cache = String::from_utf8_lossy(&tools.stdout).lines().last().unwrap_or_default().to_string();
    let rendered = std::process::Command::new(PathBuf::from(cache).join("bin/helm"))
        .args(["template", "one", "helm/baton", "--kube-version", "1.37.2", "-f", "deploy/kube-test-values.yaml"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(rendered.status.success(), "helm template: {}", String::from_utf8_lossy(&rendered.stderr));
    let text = String::from_utf8_lossy(&rendered.stdout);
    text.split("\n---\n")
        .filter_map(|doc| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(doc).ok())
        .filter(|doc| doc["kind"].as_str() == Some("ScaledObject"))
        .map(|doc| {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let query = doc["spec"]["triggers"][0]["metadata"]["query"].as_str().unwrap_or_default().to_string();
            (name, query)
        })
        .collect()
}
