//! What the benchmark binaries share: percentiles, a plain-text table, running a baton
//! job to its result, and running a reference script that writes JSON.

use baton_proto::v1::job_service_client::JobServiceClient;
use baton_proto::v1::{Job, JobState, SubmitJobRequest, WatchJobRequest};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Percentiles: the one definition baton's reports use (linear interpolation, as numpy
/// and the Python reference scripts).
pub use baton_proto::stats::percentile;

/// Median and p90 of unsorted samples.
pub fn median_p90(samples: &[f64]) -> (f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    (percentile(&s, 0.5), percentile(&s, 0.9))
}

/// A table printed with its columns aligned; the first column left, the rest right.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { rows: vec![header.iter().map(|h| h.to_string()).collect()] }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        for (i, row) in self.rows.iter().enumerate() {
            let line: Vec<String> = row
                .iter()
                .enumerate()
                .map(
                    |(c, cell)| {
                        if c == 0 { format!("{cell:<w$}", w = width[c]) } else { format!("{cell:>w$}", w = width[c]) }
                    },
                )
                .collect();
            println!("{}", line.join(" | ").trim_end());
            if i == 0 {
                println!("{}", width.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-|-"));
            }
        }
    }
}

/// A number with `decimals` places.
pub fn num(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

/// `a / b` as "0.93×", or "-" when b is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 { "-".into() } else { format!("{:.2}×", a / b) }
}

/// Submits a job, follows it with WatchJob to its terminal state and returns the final
/// job with the client's wall time from sending the submit to receiving that state.
/// Panics when the job does not succeed.
pub async fn run_job(client: &mut JobServiceClient<Channel>, req: SubmitJobRequest) -> (Job, Duration) {
    let started = Instant::now();
    let id = client.submit_job(req).await.expect("submit").into_inner().id;
    let mut watch = client.watch_job(WatchJobRequest { id: id.clone() }).await.expect("watch").into_inner();
    let mut last = None;
    while let Some(job) = watch.message().await.expect("watching") {
        last = Some(job);
    }
    let wall = started.elapsed();
    let job = last.unwrap_or_else(|| panic!("job {id}: the watch ended without a job"));
    assert_eq!(job.state(), JobState::Succeeded, "job {id} did not succeed: {}", job.reason);
    (job, wall)
}

/// The Python of the workspace's .venv (torch, transformers, selenium).
pub fn python() -> PathBuf {
    let venv = baton_tests::workspace().join(".venv/bin/python");
    assert!(venv.exists(), "{} is missing: run deploy/install.sh", venv.display());
    venv
}

/// Runs `script` (a path under the workspace) with `args` plus `--json-out FILE` in the
/// venv's Python, with `env` added to its environment, stdout discarded, and returns the
/// JSON it wrote. Panics with the script's stderr when it fails.
pub fn run_python_json(script: &str, args: &[String], env: &[(&str, &str)]) -> serde_json::Value {
    let dir = baton_tests::TempDir::new("bench-py");
    let out = dir.0.join("out.json");
    let path = baton_tests::workspace().join(script);
    let run = Command::new(python())
        .arg(&path)
        .args(args)
        .envs(env.iter().copied())
        .arg("--json-out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    assert!(
        run.status.success(),
        "{script} {args:?} failed ({}):\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    read_json(&out)
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The number at a JSON pointer (e.g. `/step/p50Ms`); panics naming the pointer if absent.
pub fn json_f64(v: &serde_json::Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {pointer} in the reference's JSON"))
}

/// The value after `--flag` on the command line.
pub fn flag(flag: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != flag).nth(1)
}

/// The value of `--flag N` on the command line, or `default`.
pub fn flag_usize(name: &str, default: usize) -> usize {
    flag(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}
