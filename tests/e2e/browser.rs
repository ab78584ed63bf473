//! Browser jobs through the real coordinator and agent, with real Chromium and
//! chromedriver (issue 4).

use crate::backbone::finished;
use baton_proto::v1::{BrowserStep, JobState, OpenStep, SubmitJobRequest, browser_step, job_result, job_spec};
use baton_tests::{Cluster, Jaeger, Site, example};
use std::time::Duration;

/// A cloud metadata address: an agent refuses it before it starts a browser.
pub(crate) const DENIED_BASE: &str = "http://169.254.169.254";

/// The example spec pointed at this test's reference site.
pub(crate) fn at_site(req: SubmitJobRequest, site: &Site) -> SubmitJobRequest {
    at_base(req, &site.base)
}

/// The example spec with its `base` variable (where its URLs start) set to `base`.
pub(crate) fn at_base(mut req: SubmitJobRequest, base: &str) -> SubmitJobRequest {
    if let Some(job_spec::Kind::Browser(b)) = req.spec.as_mut().and_then(|s| s.kind.as_mut()) {
        b.variables.insert("base".into(), base.to_string());
    }
    req
}

/// The login flow with its Login button looked for under a text it does not have.
fn missing_element(mut req: SubmitJobRequest) -> SubmitJobRequest {
    if let Some(job_spec::Kind::Browser(b)) = req.spec.as_mut().and_then(|s| s.kind.as_mut()) {
        let click = b.steps.iter_mut().find(|s| s.name == "click Login").unwrap();
        let json = serde_json::to_string(click).unwrap().replace("text()=\\\"Login\\\"", "text()=\\\"Logn\\\"");
        *click = serde_json::from_str(&json).unwrap();
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_flow_runs_as_a_job_with_page_and_interaction_timings_in_result_and_jaeger() {
    let site = Site::start().await;
    let jaeger = Jaeger::start().await;
    let mut cluster = Cluster::start(&[], &jaeger.exporter_env()).await;
    cluster.add_agent("desktop-1", 1, &[]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;
    // The login flow, then a page with 24 sub-resources (stylesheets, images, scripts).
    let mut req = at_site(example("browser-login.json"), &site);
    if let Some(job_spec::Kind::Browser(b)) = req.spec.as_mut().and_then(|s| s.kind.as_mut()) {
        let open = BrowserStep {
            name: "open heavy page".into(),
            kind: Some(browser_step::Kind::Open(OpenStep { url: "${base}/heavy".into() })),
        };
        b.steps.push(open);
    }
    let id = client.submit_job(req).await.unwrap().into_inner().id;
    let job = finished(&cluster, &id, Duration::from_secs(90)).await;
    assert_eq!(job.state(), JobState::Succeeded, "{}", job.reason);
    let Some(job_result::Kind::Browser(report)) = job.result.and_then(|r| r.kind) else { panic!("no browser result") };
    let steps = &report.repeats[0].steps;
    let page = steps[0].page.as_ref().expect("the open step has page timing");
    assert!(page.ttfb_ms > 0.0, "{page:?}");
    assert!(page.ttfb_ms <= page.dom_content_loaded_ms && page.dom_content_loaded_ms <= page.load_ms, "{page:?}");
    let dashboard = steps.iter().find(|s| s.name == "dashboard visible").expect("the wait step");
    let interaction = dashboard.interaction.as_ref().expect("click → dashboard is measured");
    assert!(interaction.browser_ms > 0.0 && interaction.wall_ms > 0.0, "{interaction:?}");

    let repeats = report.repeats.len();
    let repeat_1 = format!("repeat 1 of {repeats}");
    let trace = jaeger
        .trace(&job.trace_id, &["dispatch", "execute", &repeat_1, "step 1 open login page", "step 4 click Login"])
        .await;
    let text = trace.to_string();
    assert!(!text.contains("s3cret-pass"), "the secret leaked into the trace");
    // Issue 13: each repeat is a span of its own, and its steps hang under it.
    let spans = trace["spans"].as_array().expect("spans");
    let id_of = |name: &str| spans.iter().find(|s| s["operationName"] == name).map(|s| s["spanID"].clone());
    let step = spans.iter().find(|s| s["operationName"] == "step 1 open login page").expect("the first step");
    let parent = step["references"].as_array().and_then(|r| r.first()).map(|r| r["spanID"].clone());
    assert_eq!(parent, id_of(&repeat_1), "step 1 hangs under its repeat");

    // Issue 13: the heavy page's load is a waterfall under its step, at the browser's
    // times, and every figure of the step is an attribute of its span, named as in the result.
    let trace = jaeger.trace(&job.trace_id, &["step 7 open heavy page", "documentLoad", "resourceFetch"]).await;
    let spans = trace["spans"].as_array().expect("spans");
    let parent_of = |s: &serde_json::Value| s["references"][0]["spanID"].as_str().unwrap_or_default().to_string();
    let named = |name: &'static str| spans.iter().filter(move |s| s["operationName"] == name);
    let step = named("step 7 open heavy page").next().expect("the heavy page's step");
    let load = named("documentLoad").find(|s| parent_of(s) == step["spanID"]).expect("documentLoad under the step");
    let under_load = |name: &'static str| named(name).filter(|s| parent_of(s) == load["spanID"]).count();
    assert_eq!(under_load("documentFetch"), 1, "documentFetch under documentLoad");
    let heavy = steps.last().and_then(|s| s.page.as_ref()).expect("the heavy page's timing");
    assert!(heavy.resource_count >= 20, "{heavy:?}");
    assert_eq!(under_load("resourceFetch") as u32, heavy.resource_count, "one resourceFetch per resource");
    let events: Vec<&str> = load["logs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|log| log["fields"].as_array().into_iter().flatten())
        .filter(|f| f["key"] == "event")
        .filter_map(|f| f["value"].as_str())
        .collect();
    for event in ["fetchStart", "responseStart", "domInteractive", "domContentLoadedEventEnd", "loadEventEnd"] {
        assert!(events.contains(&event), "documentLoad has no {event} event: {events:?}");
    }
    // Jaeger times are µs; the browser's clock and the agent's are one machine's clock.
    let time = |s: &serde_json::Value| {
        let start = s["startTime"].as_i64().unwrap_or_default();
        (start, start + s["duration"].as_i64().unwrap_or_default())
    };
    let ((step_start, step_end), (load_start, load_end)) = (time(step), time(load));
    assert!(step_start - 2_000 <= load_start && load_end <= step_end + 2_000, "the waterfall lies within its step");
    let tag = |name: &str| {
        step["tags"].as_array().into_iter().flatten().find(|t| t["key"] == name).map(|t| t["value"].clone())
    };
    for (figure, value) in
        [("ttfbMs", heavy.ttfb_ms), ("loadMs", heavy.load_ms), ("resourceCount", f64::from(heavy.resource_count))]
    {
        let attribute =
            tag(figure).and_then(|v| v.as_f64()).unwrap_or_else(|| panic!("step 7 has no attribute {figure}"));
        assert!((attribute - value).abs() < 1e-6, "{figure}: span says {attribute}, result {value}");
    }
    assert!(tag("wallMs").is_some(), "wallMs is an attribute of the step");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_element_fails_the_job_naming_the_step_with_a_screenshot_and_denied_urls_never_start_a_browser() {
    let site = Site::start().await;
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("desktop-1", 1, &[]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;

    let broken = missing_element(at_site(example("browser-login.json"), &site));
    let id = client.submit_job(broken).await.unwrap().into_inner().id;
    let job = finished(&cluster, &id, Duration::from_secs(90)).await;
    assert_eq!(job.state(), JobState::Failed);
    assert!(
        job.reason.starts_with("step 4 \"click Login\": no element matches xpath //button[text()=\"Logn\"]"),
        "{}",
        job.reason
    );
    let Some(job_result::Kind::Browser(report)) = job.result.and_then(|r| r.kind) else {
        panic!("the failure keeps its report")
    };
    let failure = report.failure.expect("the failure is described");
    assert!(failure.screenshot_png.starts_with(b"\x89PNG"), "a PNG screenshot is attached");
    assert!(failure.page_url.ends_with("/login"), "{}", failure.page_url);

    let denied = at_base(example("browser-login.json"), DENIED_BASE);
    let id = client.submit_job(denied).await.unwrap().into_inner().id;
    let job = finished(&cluster, &id, Duration::from_secs(30)).await;
    assert_eq!(job.state(), JobState::Failed);
    assert!(job.reason.starts_with("http://169.254.169.254/login is not allowed on this agent"), "{}", job.reason);
}

/// Issue 11: an agent that is not root runs Chromium with its sandbox (user namespaces
/// are available here), and the login flow works in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_keeps_its_sandbox_when_the_agent_is_not_root() {
    let site = Site::start().await;
    let cluster = Cluster::start(&[], &[]).await;
    let home = baton_tests::TempDir::new("nobody-home");
    std::fs::set_permissions(&home.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(baton_tests::bin("baton-agent"));
    cmd.args(["--coordinator", &cluster.url, "--name", "nobody"]).env("HOME", &home.0);
    let agent = baton_tests::Proc::spawn("nobody", cmd, &cluster.dir.0);
    cluster.wait_agents(1).await;
    let req = at_site(example("browser-login.json"), &site);
    let id = cluster.jobs().await.submit_job(req).await.unwrap().into_inner().id;
    let job = finished(&cluster, &id, Duration::from_secs(90)).await;
    assert_eq!(job.state(), JobState::Succeeded, "{}\n{}", job.reason, agent.log());
    assert!(agent.log().contains("Chromium runs with its sandbox"), "{}", agent.log());
}

/// Issue 12: Firefox for real (Debian's firefox-esr, geckodriver from crates.io): the login
/// flow with page and interaction timings, and a failure with its screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_runs_the_login_flow_and_a_failure_leaves_a_screenshot() {
    let site = Site::start().await;
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("firefox-1", 1, &[]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;
    let on_firefox = |mut req: SubmitJobRequest| {
        if let Some(job_spec::Kind::Browser(b)) = req.spec.as_mut().and_then(|s| s.kind.as_mut()) {
            b.browser = "firefox".into();
        }
        req
    };
    let id =
        client.submit_job(on_firefox(at_site(example("browser-login.json"), &site))).await.unwrap().into_inner().id;
    let job = finished(&cluster, &id, Duration::from_secs(90)).await;
    assert_eq!(job.state(), JobState::Succeeded, "{}", job.reason);
    let Some(job_result::Kind::Browser(report)) = job.result.and_then(|r| r.kind) else { panic!("no browser result") };
    assert_eq!(report.browser, "firefox");
    assert!(report.browser_version.starts_with("1"), "{}", report.browser_version);
    let steps = &report.repeats[0].steps;
    let page = steps[0].page.as_ref().expect("the open step has page timing");
    assert!(page.ttfb_ms > 0.0 && page.ttfb_ms <= page.dom_content_loaded_ms, "{page:?}");
    assert!(page.dom_content_loaded_ms <= page.load_ms, "{page:?}");
    let dashboard = steps.iter().find(|s| s.name == "dashboard visible").expect("the wait step");
    let interaction = dashboard.interaction.as_ref().expect("click → dashboard is measured");
    assert!(interaction.browser_ms > 0.0 && interaction.wall_ms > 0.0, "{interaction:?}");

    let broken = missing_element(on_firefox(at_site(example("browser-login.json"), &site)));
    let id = client.submit_job(broken).await.unwrap().into_inner().id;
    let job = finished(&cluster, &id, Duration::from_secs(90)).await;
    assert_eq!(job.state(), JobState::Failed);
    assert!(job.reason.starts_with("step 4 \"click Login\": no element matches"), "{}", job.reason);
    let Some(job_result::Kind::Browser(report)) = job.result.and_then(|r| r.kind) else { panic!("no report") };
    let failure = report.failure.expect("the failure is described");
    assert!(failure.screenshot_png.starts_with(b"\x89PNG"), "a PNG screenshot is attached");
}

/// Issue 12: click → visible across a navigation, timed by baton with the page's clock, is
/// within 5 ms of the page's own stamps (its pointerdown; its own MutationObserver seeing
/// the element appended), in Chromium and in Firefox, although the new page's load event
/// comes 300 ms after the element: the watch runs from the start of the new document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interaction_times_match_the_page_own_stamps_across_a_navigation() {
    let site = Site::start().await;
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("stamps-1", 1, &[]);
    cluster.wait_agents(1).await;
    for browser in ["chrome", "firefox"] {
        let spec = serde_json::json!({"spec": {"name": "stamped", "browser": {
        "browser": browser, "repeat": 10, "mode": "warm",
        "steps": [
            {"name": "open", "open": {"url": format!("{}/stamped", site.base)}},
            {"name": "click Go", "find": {"locator": {"id": "go"}, "click": true}},
            {"name": "result visible", "wait": {"visible": {"id": "result"}}},
            {"name": "page stamps", "script": {"script":
                "return Number(sessionStorage.getItem('siteAppendedAt')) - Number(sessionStorage.getItem('siteInputAt'))"}},
        ]}}});
        let req = baton_proto::spec::parse_request(&spec.to_string()).unwrap();
        let id = cluster.jobs().await.submit_job(req).await.unwrap().into_inner().id;
        let job = finished(&cluster, &id, Duration::from_secs(120)).await;
        assert_eq!(job.state(), JobState::Succeeded, "{browser}: {}", job.reason);
        let Some(job_result::Kind::Browser(report)) = job.result.and_then(|r| r.kind) else {
            panic!("no browser result")
        };
        let (mut baton, mut page) = (Vec::new(), Vec::new());
        for repeat in &report.repeats {
            baton.push(repeat.steps[2].interaction.as_ref().expect("click → visible is measured").browser_ms);
            page.push(repeat.steps[3].script_result_json.parse::<f64>().expect("the page's stamps"));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        let (b, p) = (median(&mut baton), median(&mut page));
        println!("{browser}: click → visible: baton {b:.1} ms, the page's own stamps {p:.1} ms (medians of 10)");
        assert!(p > 0.0, "{browser}: the page stamped its events: {page:?}");
        assert!(
            (b - p).abs() <= 5.0,
            "{browser}: baton {b:.1} ms vs the page's own {p:.1} ms (medians of 10): {baton:?} {page:?}"
        );
    }
}
