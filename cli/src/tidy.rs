//! The tidy table of what jobs measured: one row per point and figure. A point is a
//! sweep's combination of values, its repeats pooled (a job outside a sweep is a point
//! of its own). Reports, exports and comparisons all read these rows.

use baton_proto::figures::repeat_figures;
use baton_proto::spec::sweep::{last_field, short_names, show, to_json};
use baton_proto::stats::{Summary, summarize};
use baton_proto::v1::{BrowserReport, Gpt2InferReport, Gpt2TrainReport, Job, PhaseStats, job_result};
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Ms,
    PerS,
    Ratio,
    Bytes,
    Count,
}

impl Unit {
    /// A figure's unit, as its name says it (`loadMs`, `tokensPerS`, `transferBytes`, `mfu`).
    pub fn of(figure: &str) -> Unit {
        if figure.ends_with("Ms") {
            Unit::Ms
        } else if figure.ends_with("PerS") {
            Unit::PerS
        } else if figure.ends_with("Bytes") {
            Unit::Bytes
        } else if figure == "mfu" {
            Unit::Ratio
        } else {
            Unit::Count
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::PerS => "1/s",
            Unit::Ratio => "ratio",
            Unit::Bytes => "bytes",
            Unit::Count => "count",
        }
    }
}

/// One figure of one point.
#[derive(Debug, Clone)]
pub struct Row {
    /// Which point this is: the rows of one point share it (a sweep's values, or the id of
    /// a job outside a sweep).
    pub key: String,
    /// The point's values by field path; empty for a job outside a sweep.
    pub point: BTreeMap<String, Json>,
    /// What the point's model has (GPT-2; 0 otherwise): the x of a swept model.
    pub parameters: f64,
    /// Where it ran: cpu, cuda:0, or the browser's name.
    pub device: String,
    /// The browser step the figure is about; "" for the whole job.
    pub step: String,
    pub figure: String,
    pub unit: Unit,
    /// Every measured value: steps of every repeat, or one value per repeat.
    pub samples: Vec<f64>,
    /// The jobs pooled into this point.
    pub jobs: Vec<String>,
}

impl Row {
    pub fn summary(&self) -> Summary {
        summarize(&self.samples).unwrap_or(Summary {
            count: 0,
            mean: f64::NAN,
            p10: f64::NAN,
            p50: f64::NAN,
            p90: f64::NAN,
            p99: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        })
    }

    /// `seqLen=64 threads=1` (short names, as in the points' job names).
    pub fn label(&self, factors: &[String]) -> String {
        factors
            .iter()
            .zip(short_names(factors))
            .map(|(f, name)| format!("{name}={}", self.value(f)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The point's value of a factor, as people read it.
    pub fn value(&self, factor: &str) -> String {
        self.point.get(factor).map(show).unwrap_or_default()
    }

    /// Another figure of the same point.
    pub fn sibling<'a>(&self, rows: &'a [Row], step: &str, figure: &str) -> Option<&'a Row> {
        rows.iter().find(|r| r.key == self.key && r.step == step && r.figure == figure)
    }

    /// A factor's value as a number on a plot's x axis: numbers as they are, a swept
    /// model as its parameter count; None for other values (they split series instead).
    pub fn x(&self, factor: &str) -> Option<f64> {
        match self.point.get(factor)? {
            Json::Number(n) => n.as_f64(),
            _ if is_model(factor) && self.parameters > 0.0 => Some(self.parameters),
            _ => None,
        }
    }
}

fn is_model(factor: &str) -> bool {
    factor.split('.').any(|s| s == "model")
}

/// A factor's axis title: a swept model is plotted by its parameter count.
pub fn axis_title(factor: &str) -> String {
    if is_model(factor) { "parameters".into() } else { last_field(factor).to_string() }
}

/// The time each kind of job is about: a GPT-2 training step, a generated token, a browser
/// scenario, a sleep. Tables lead with it; laws are fitted to it.
pub const MAIN_TIMES: [&str; 4] = ["stepMs", "tpotMs", "scenarioWallMs", "sleptMs"];

/// The model's step time (training or generation): what threads and devices are compared by.
pub const MODEL_STEPS: [&str; 2] = ["stepMs", "tpotMs"];

struct Measure {
    step: String,
    figure: &'static str,
    samples: Vec<f64>,
}

fn one(figure: &'static str, value: f64) -> Measure {
    Measure { step: String::new(), figure, samples: vec![value] }
}

fn phase(figure: &'static str, stats: &Option<PhaseStats>) -> Option<Measure> {
    let stats = stats.as_ref().filter(|s| s.count > 0)?;
    // Reports from before samples were kept carry only their percentiles.
    let samples = if stats.samples_ms.is_empty() { vec![stats.p50_ms] } else { stats.samples_ms.clone() };
    Some(Measure { step: String::new(), figure, samples })
}

fn train(r: &Gpt2TrainReport) -> Vec<Measure> {
    let mut m: Vec<Measure> = [
        ("stepMs", &r.step),
        ("dataMs", &r.data),
        ("forwardMs", &r.forward),
        ("backwardMs", &r.backward),
        ("optimizerMs", &r.optimizer),
    ]
    .into_iter()
    .filter_map(|(f, s)| phase(f, s))
    .collect();
    m.push(one("tokensPerS", r.tokens_per_s));
    if r.mfu > 0.0 {
        m.push(one("mfu", r.mfu));
    }
    m.push(one("peakMemoryBytes", r.peak_memory_bytes as f64));
    m
}

fn infer(r: &Gpt2InferReport) -> Vec<Measure> {
    let mut m = vec![one("ttftMs", r.ttft_ms)];
    m.extend(phase("tpotMs", &r.tpot));
    m.push(one("tokensPerS", r.tokens_per_s));
    m.push(one("totalMs", r.total_ms));
    m.push(one("peakMemoryBytes", r.peak_memory_bytes as f64));
    m
}

/// The browser's figures, one sample per repeat, as the report's summary has them
/// ([`baton_proto::figures`]), in the scenario's order.
fn browser(r: &BrowserReport) -> Vec<Measure> {
    let mut measures: Vec<Measure> = Vec::new();
    for (step, figure, v) in r.repeats.iter().flat_map(repeat_figures) {
        match measures.iter_mut().find(|m| m.step == step && m.figure == figure) {
            Some(m) => m.samples.push(v),
            None => measures.push(Measure { step: step.to_string(), figure, samples: vec![v] }),
        }
    }
    measures
}

fn measures(job: &Job) -> (Vec<Measure>, f64, String) {
    match job.result.as_ref().and_then(|r| r.kind.as_ref()) {
        Some(job_result::Kind::Gpt2Train(r)) => {
            let c = r.config.clone().unwrap_or_default();
            (train(r), c.parameters as f64, c.device)
        }
        Some(job_result::Kind::Gpt2Infer(r)) => {
            let c = r.config.clone().unwrap_or_default();
            (infer(r), c.parameters as f64, c.device)
        }
        Some(job_result::Kind::Browser(r)) => (browser(r), 0.0, r.browser.clone()),
        Some(job_result::Kind::Sleep(s)) => (vec![one("sleptMs", s.slept_ms as f64)], 0.0, String::new()),
        Some(job_result::Kind::Noop(_)) | None => (Vec::new(), 0.0, String::new()),
    }
}

/// The rows of these jobs (in submission order), repeats of a point pooled; jobs that
/// did not succeed are left out.
pub fn rows(jobs: &[Job]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut index: BTreeMap<(String, String, &'static str), usize> = BTreeMap::new();
    for job in jobs.iter().filter(|j| j.state() == baton_proto::v1::JobState::Succeeded) {
        let point: BTreeMap<String, Json> = match &job.point {
            Some(p) => p.values.iter().map(|(k, v)| (k.clone(), to_json(v))).collect(),
            None => BTreeMap::new(),
        };
        // A job outside a sweep is its own point.
        let key =
            if job.sweep_id.is_empty() { job.id.clone() } else { serde_json::to_string(&point).unwrap_or_default() };
        let (measures, parameters, device) = measures(job);
        for m in measures {
            let slot = *index.entry((key.clone(), m.step.clone(), m.figure)).or_insert_with(|| {
                rows.push(Row {
                    key: key.clone(),
                    point: point.clone(),
                    parameters,
                    device: device.clone(),
                    step: m.step.clone(),
                    figure: m.figure.to_string(),
                    unit: Unit::of(m.figure),
                    samples: Vec::new(),
                    jobs: Vec::new(),
                });
                rows.len() - 1
            });
            rows[slot].samples.extend(m.samples);
            rows[slot].jobs.push(job.id.clone());
        }
    }
    rows
}

/// The point fields whose values differ between rows: what the sweep varied.
pub fn factors(rows: &[Row]) -> Vec<String> {
    let mut values: BTreeMap<&str, Vec<&Json>> = BTreeMap::new();
    for row in rows {
        for (k, v) in &row.point {
            let seen = values.entry(k).or_default();
            if !seen.contains(&v) {
                seen.push(v);
            }
        }
    }
    values.into_iter().filter(|(_, v)| v.len() > 1).map(|(k, _)| k.to_string()).collect()
}

const COLUMNS: [&str; 11] = ["step", "figure", "unit", "count", "median", "p10", "p90", "mean", "min", "max", "jobs"];

/// One line per row: the factors, then the figure's summary.
pub fn csv(rows: &[Row]) -> String {
    let factors = factors(rows);
    let mut out = String::new();
    let header: Vec<String> = factors.iter().cloned().chain(COLUMNS.iter().map(|c| c.to_string())).collect();
    out.push_str(&header.iter().map(|h| quote(h)).collect::<Vec<_>>().join(","));
    out.push('\n');
    for row in rows {
        let s = row.summary();
        let mut cells: Vec<String> = factors.iter().map(|f| quote(&row.value(f))).collect();
        cells.extend([quote(&row.step), quote(&row.figure), row.unit.name().to_string(), s.count.to_string()]);
        cells.extend([s.p50, s.p10, s.p90, s.mean, s.min, s.max].iter().map(|v| format!("{v}")));
        cells.push(quote(&row.jobs.join(" ")));
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

fn quote(cell: &str) -> String {
    if cell.contains([',', '"', '\n']) { format!("\"{}\"", cell.replace('"', "\"\"")) } else { cell.to_string() }
}

/// The rows as JSON objects (values typed; the samples included).
pub fn json(rows: &[Row]) -> Json {
    Json::Array(
        rows.iter()
            .map(|row| {
                let s = row.summary();
                json!({
                    "point": row.point, "device": row.device, "parameters": row.parameters,
                    "step": row.step, "figure": row.figure, "unit": row.unit.name(), "count": s.count,
                    "median": s.p50, "p10": s.p10, "p90": s.p90, "mean": s.mean, "min": s.min, "max": s.max,
                    "jobs": row.jobs, "samples": row.samples,
                })
            })
            .collect(),
    )
}
