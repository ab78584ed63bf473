//! The login flow (examples/browser-login.json) through baton against the same flow done
//! directly by Python Selenium (bench/browser/reference.py), in one run, side by side.
//!
//! baton: a coordinator and one agent (1 slot) on loopback; each repeat is one job
//! (cold: a fresh browser), submitted and followed with WatchJob; "total" is the
//! client's wall time from submit to the final state, every other figure comes from the
//! job's BrowserReport. Selenium: the reference script against the same reference site,
//! fresh browser per run; "total" is session start → quit. Both sides get 2 warm-up runs
//! that are left out.
//!
//! `cargo build --release --bins && target/release/bench-browser [--repeat N]`

use baton_bench::{Table, json_f64, median_p90, num, ratio, run_job, run_python_json};
use baton_proto::v1::{BrowserReport, SubmitJobRequest, job_result, job_spec};
use baton_tests::{Cluster, Site, example};

const WARMUP: usize = 2;

/// The figures compared, as (row label, the reference script's per-run field).
const FIGURES: [(&str, &str); 9] = [
    ("session start", "sessionStartMs"),
    ("page load (wall)", "pageLoadWallMs"),
    ("ttfb (browser)", "ttfbMs"),
    ("domContentLoaded (browser)", "domContentLoadedMs"),
    ("load (browser)", "loadMs"),
    ("interaction (browser clock)", "interactionBrowserMs"),
    ("interaction (wall)", "interactionWallMs"),
    ("flow (steps, no session start/quit)", "flowMs"),
    ("total", "totalMs"),
];

fn login_at(site: &Site) -> SubmitJobRequest {
    let mut req = example("browser-login.json");
    let Some(job_spec::Kind::Browser(b)) = req.spec.as_mut().and_then(|s| s.kind.as_mut()) else {
        panic!("examples/browser-login.json is not a browser job")
    };
    assert_eq!(b.repeat.max(1), 1, "one browser session per job");
    b.variables.insert("base".into(), site.base.clone());
    req
}

/// One baton job's figures in the order of FIGURES.
fn figures(report: &BrowserReport, total_ms: f64) -> [f64; 9] {
    let rep = report.repeats.first().expect("one repeat");
    let open = rep.steps.iter().find(|s| s.kind == "open").expect("an open step");
    let page = open.page.as_ref().expect("the open step's page timing");
    let interaction = rep.steps.iter().find_map(|s| s.interaction.as_ref()).expect("the click → dashboard interaction");
    [
        rep.session_start_ms,
        open.wall_ms,
        page.ttfb_ms,
        page.dom_content_loaded_ms,
        page.load_ms,
        interaction.browser_ms,
        interaction.wall_ms,
        rep.scenario_wall_ms,
        total_ms,
    ]
}

#[tokio::main]
async fn main() {
    let repeat = baton_bench::flag_usize("--repeat", 20);
    assert!(repeat >= 1, "--repeat must be at least 1");
    let site = Site::start().await;
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("bench-browser", 1, &[]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;

    eprintln!("baton: {WARMUP} warm-up + {repeat} login jobs");
    let mut baton: Vec<Vec<f64>> = vec![Vec::new(); FIGURES.len()];
    let mut version = String::new();
    for i in 0..WARMUP + repeat {
        let (job, wall) = run_job(&mut client, login_at(&site)).await;
        let Some(job_result::Kind::Browser(report)) = job.result.and_then(|r| r.kind) else {
            panic!("no browser result")
        };
        version = report.browser_version.clone();
        if i >= WARMUP {
            for (column, v) in baton.iter_mut().zip(figures(&report, wall.as_secs_f64() * 1e3)) {
                column.push(v);
            }
        }
    }
    // SIGTERM lets the agent stop its chromedriver (Drop's SIGKILL would orphan it); the
    // cluster is gone before Selenium runs.
    for agent in &mut cluster.agents {
        agent.terminate();
    }
    drop(cluster);

    eprintln!("selenium: {WARMUP} warm-up + {repeat} runs of bench/browser/reference.py");
    let args =
        vec!["--repeat".to_string(), (WARMUP + repeat).to_string(), "--url".into(), format!("{}/login", site.base)];
    let reference = run_python_json("bench/browser/reference.py", &args, &[]);
    let runs = reference["runs"].as_array().expect("the reference's runs");
    assert_eq!(runs.len(), WARMUP + repeat, "the reference ran every repeat");
    let selenium: Vec<Vec<f64>> = FIGURES
        .iter()
        .map(|(_, key)| runs[WARMUP..].iter().map(|r| json_f64(r, &format!("/{key}"))).collect())
        .collect();

    println!(
        "login flow, {repeat} runs each (after {WARMUP} warm-up), Chromium {version}, headless, fresh profile per run; ms"
    );
    let mut table =
        Table::new(&["figure", "baton median", "baton p90", "selenium median", "selenium p90", "ratio (median)"]);
    for (i, (label, _)) in FIGURES.iter().enumerate() {
        let (bm, b90) = median_p90(&baton[i]);
        let (sm, s90) = median_p90(&selenium[i]);
        table.row(vec![label.to_string(), num(bm, 1), num(b90, 1), num(sm, 1), num(s90, 1), ratio(bm, sm)]);
    }
    table.print();
    let total = FIGURES.len() - 1;
    let (bt, _) = median_p90(&baton[total]);
    let (st, _) = median_p90(&selenium[total]);
    println!();
    println!("baton total = submit → result on the client (coordinator, agent, browser start, flow, quit, report);");
    println!("selenium total = webdriver.Chrome() (chromedriver + browser start) → quit.");
    println!(
        "aim: end-to-end ≤ 1.05× the direct script: {} ({})",
        ratio(bt, st),
        if bt <= 1.05 * st { "met" } else { "NOT met" }
    );
    let within = (2..5).all(|i| {
        let (b, _) = median_p90(&baton[i]);
        let (s, _) = median_p90(&selenium[i]);
        (b / s - 1.0).abs() <= 0.05
    });
    println!(
        "aim: page-load figures (ttfb, domContentLoaded, load medians) within 5%: {}",
        if within { "met" } else { "NOT met" }
    );
}
