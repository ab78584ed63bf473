//! The agent's Prometheus metrics (`--metrics-listen`): its jobs, and the engines' own
//! figures as histograms, each observation carrying its job's trace as exemplar.
//!
//! One finished attempt is one observation per figure: a GPT-2 phase is observed at the
//! attempt's median step, a page load once per repeat and figure. Label sets stay
//! bounded: sequence length and batch are rounded up to a power of two, a model read
//! from a checkpoint is `checkpoint`, the device is `cpu` or `cuda`.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `baton_agent_slots`, `baton_agent_running_jobs` | gauge | — |
//! | `baton_agent_jobs_finished_total` | counter | `kind`, `outcome` (every pair from 0 at start) |
//! | `baton_agent_job_seconds` | histogram | `kind`, `outcome` |
//! | `baton_gpt2_phase_seconds` | histogram | `phase` (step, data, forward, backward, optimizer, ttft, token), `mode` (train, infer), `model`, `device`, `dtype`, `seq_len`, `batch` |
//! | `baton_gpt2_tokens_per_second` | histogram | `mode`, `model`, `device`, `dtype`, `seq_len`, `batch` |
//! | `baton_gpt2_mfu_ratio` | histogram | `mode` (train), `model`, `device`, `dtype`, `seq_len`, `batch` |
//! | `baton_browser_page_seconds` | histogram | `figure` (ttfb, domContentLoaded, load, firstContentfulPaint, largestContentfulPaint), `browser`, `mode` |
//! | `baton_browser_interaction_seconds` | histogram | `clock` (browser, agent), `browser`, `mode` |
//! | `baton_browser_session_start_seconds` | histogram | `browser`, `mode` |

use crate::runner::Runner;
use baton_proto::metrics::{ExemplarFamily, TraceExemplar, seconds_family};
use baton_proto::v1::{
    BrowserReport, Gpt2InferReport, Gpt2RunConfig, Gpt2TrainReport, JobFinished, PhaseStats, job_finished, job_result,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets};
use prometheus_client::registry::Registry;
use std::sync::Weak;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    outcome: String,
}

/// The conditions a GPT-2 figure was measured under.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Gpt2Labels {
    mode: String,
    model: String,
    device: String,
    dtype: String,
    seq_len: String,
    batch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
    #[prometheus(flatten)]
    run: Gpt2Labels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PageLabels {
    figure: String,
    browser: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InteractionLabels {
    clock: String,
    browser: String,
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrowserLabels {
    browser: String,
    mode: String,
}

/// What the agent observes as attempts finish.
pub struct AgentMetrics {
    jobs: Family<JobLabels, Counter>,
    job_seconds: ExemplarFamily<JobLabels>,
    gpt2_phase: ExemplarFamily<PhaseLabels>,
    gpt2_tokens_per_second: ExemplarFamily<Gpt2Labels>,
    gpt2_mfu: ExemplarFamily<Gpt2Labels>,
    page: ExemplarFamily<PageLabels>,
    interaction: ExemplarFamily<InteractionLabels>,
    session_start: ExemplarFamily<BrowserLabels>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let metrics = Self {
            jobs: Family::default(),
            job_seconds: seconds_family(),
            gpt2_phase: seconds_family(),
            gpt2_tokens_per_second: Family::new_with_constructor(|| {
                HistogramWithExemplars::new(exponential_buckets(1.0, 2.0, 24))
            }),
            gpt2_mfu: Family::new_with_constructor(|| {
                // Finer below 5 %, where small models and CPUs sit; then every 5 %.
                HistogramWithExemplars::new(
                    [0.005, 0.01, 0.02, 0.03, 0.04].into_iter().chain(linear_buckets(0.05, 0.05, 19)),
                )
            }),
            page: seconds_family(),
            interaction: seconds_family(),
            session_start: seconds_family(),
        };
        // Every counter starts at 0: Prometheus takes a series' first sample as its base,
        // so without it a rate would miss each kind's first finished attempt, and a
        // failures panel would say "no data" rather than 0.
        for kind in baton_proto::job::KIND_NAMES {
            for outcome in OUTCOMES {
                let _ = metrics.jobs.get_or_create(&JobLabels { kind: kind.to_string(), outcome: outcome.to_string() });
            }
        }
        metrics
    }
}

fn ms(value: f64) -> f64 {
    value / 1000.0
}

/// Rounded up to a power of two: a bounded label for a free number.
fn power_of_two(n: u32) -> String {
    n.max(1).next_power_of_two().to_string()
}

/// "cpu" or "cuda", whatever the device index.
fn device_class(device: &str) -> String {
    if device.starts_with("cuda") { "cuda" } else { "cpu" }.to_string()
}

/// A preset's name or "custom"; a model read from a checkpoint path is "checkpoint".
fn model_class(model: &str) -> String {
    if model.starts_with("gpt2") || model == "custom" { model.to_string() } else { "checkpoint".to_string() }
}

fn gpt2_labels(mode: &str, config: &Gpt2RunConfig, seq_len: u32, batch: u32) -> Gpt2Labels {
    Gpt2Labels {
        mode: mode.to_string(),
        model: model_class(&config.model),
        device: device_class(&config.device),
        dtype: config.dtype.clone(),
        seq_len: power_of_two(seq_len),
        batch: power_of_two(batch),
    }
}

impl AgentMetrics {
    /// Records a finished attempt that ran `took`.
    pub fn finished(&self, kind: &str, report: &JobFinished, took: Duration, traceparent: &str) {
        let outcome = outcome_name(&report.outcome);
        let exemplar = || TraceExemplar::from_traceparent(traceparent);
        let labels = JobLabels { kind: kind.to_string(), outcome: outcome.to_string() };
        self.jobs.get_or_create(&labels).inc();
        self.job_seconds.get_or_create(&labels).observe(took.as_secs_f64(), exemplar(), None);
        match report.result.as_ref().and_then(|r| r.kind.as_ref()) {
            Some(job_result::Kind::Gpt2Train(r)) => self.gpt2_train(r, exemplar),
            Some(job_result::Kind::Gpt2Infer(r)) => self.gpt2_infer(r, exemplar),
            Some(job_result::Kind::Browser(r)) => self.browser(r, exemplar),
            _ => {}
        }
    }

    fn phase(&self, phase: &str, run: &Gpt2Labels, ms_value: f64, exemplar: Option<TraceExemplar>) {
        let labels = PhaseLabels { phase: phase.to_string(), run: run.clone() };
        self.gpt2_phase.get_or_create(&labels).observe(ms(ms_value), exemplar, None);
    }

    fn gpt2_train(&self, r: &Gpt2TrainReport, exemplar: impl Fn() -> Option<TraceExemplar>) {
        let (Some(config), Some(spec)) = (&r.config, &r.spec) else { return };
        let run = gpt2_labels("train", config, spec.seq_len, spec.batch);
        let phases: [(&str, &Option<PhaseStats>); 5] = [
            ("step", &r.step),
            ("data", &r.data),
            ("forward", &r.forward),
            ("backward", &r.backward),
            ("optimizer", &r.optimizer),
        ];
        for (phase, stats) in phases {
            if let Some(stats) = stats.as_ref().filter(|s| s.count > 0) {
                self.phase(phase, &run, stats.p50_ms, exemplar());
            }
        }
        self.gpt2_tokens_per_second.get_or_create(&run).observe(r.tokens_per_s, exemplar(), None);
        if r.mfu > 0.0 {
            self.gpt2_mfu.get_or_create(&run).observe(r.mfu, exemplar(), None);
        }
    }

    fn gpt2_infer(&self, r: &Gpt2InferReport, exemplar: impl Fn() -> Option<TraceExemplar>) {
        let (Some(config), Some(spec)) = (&r.config, &r.spec) else { return };
        let batch = (spec.prompts.len() + spec.prompt_ids.len()).max(1) as u32;
        let prompt_len = (r.prompt_tokens as u32) / batch;
        let run = gpt2_labels("infer", config, prompt_len, batch);
        self.phase("ttft", &run, r.ttft_ms, exemplar());
        if let Some(tpot) = r.tpot.as_ref().filter(|s| s.count > 0) {
            self.phase("token", &run, tpot.p50_ms, exemplar());
        }
        self.gpt2_tokens_per_second.get_or_create(&run).observe(r.tokens_per_s, exemplar(), None);
    }

    fn browser(&self, r: &BrowserReport, exemplar: impl Fn() -> Option<TraceExemplar>) {
        let who = BrowserLabels { browser: r.browser.clone(), mode: r.mode.clone() };
        for repeat in &r.repeats {
            self.session_start.get_or_create(&who).observe(ms(repeat.session_start_ms), exemplar(), None);
            for step in &repeat.steps {
                if let Some(page) = &step.page {
                    let figures = [
                        ("ttfb", page.ttfb_ms),
                        ("domContentLoaded", page.dom_content_loaded_ms),
                        ("load", page.load_ms),
                        ("firstContentfulPaint", page.first_contentful_paint_ms),
                        ("largestContentfulPaint", page.largest_contentful_paint_ms),
                    ];
                    for (figure, value) in figures.into_iter().filter(|(_, v)| *v > 0.0) {
                        let labels = PageLabels {
                            figure: figure.to_string(),
                            browser: who.browser.clone(),
                            mode: who.mode.clone(),
                        };
                        self.page.get_or_create(&labels).observe(ms(value), exemplar(), None);
                    }
                }
                if let Some(interaction) = &step.interaction {
                    for (clock, value) in [("browser", interaction.browser_ms), ("agent", interaction.wall_ms)] {
                        if value > 0.0 {
                            let labels = InteractionLabels {
                                clock: clock.to_string(),
                                browser: who.browser.clone(),
                                mode: who.mode.clone(),
                            };
                            self.interaction.get_or_create(&labels).observe(ms(value), exemplar(), None);
                        }
                    }
                }
            }
        }
    }
}

/// Every name [`outcome_name`] gives.
const OUTCOMES: [&str; 5] = ["succeeded", "failed", "cancelled", "timed_out", "handed_back"];

/// The outcome's name, as logs and metrics say it.
pub fn outcome_name(outcome: &Option<job_finished::Outcome>) -> &'static str {
    match outcome {
        None => "succeeded",
        Some(job_finished::Outcome::Failure(_)) => "failed",
        Some(job_finished::Outcome::Cancelled(_)) => "cancelled",
        Some(job_finished::Outcome::TimedOut(_)) => "timed_out",
        Some(job_finished::Outcome::HandedBack(_)) => "handed_back",
    }
}

/// The registry a scrape encodes: the observations, and the slots and running jobs now.
pub fn registry(metrics: &AgentMetrics, runner: Weak<Runner>, slots: u32) -> Registry {
    let mut r = Registry::default();
    r.register("baton_agent_jobs_finished", "Attempts this agent finished, by outcome", metrics.jobs.clone());
    r.register("baton_agent_job_seconds", "Duration of an attempt on this agent", metrics.job_seconds.clone());
    r.register(
        "baton_gpt2_phase_seconds",
        "GPT-2 phase time: an attempt's median step (train) or its TTFT and median per-token time (infer)",
        metrics.gpt2_phase.clone(),
    );
    r.register(
        "baton_gpt2_tokens_per_second",
        "GPT-2 throughput of an attempt",
        metrics.gpt2_tokens_per_second.clone(),
    );
    r.register(
        "baton_gpt2_mfu_ratio",
        "GPT-2 training model FLOPs utilization of an attempt",
        metrics.gpt2_mfu.clone(),
    );
    r.register("baton_browser_page_seconds", "Page-load figures from the browser's own timing", metrics.page.clone());
    r.register(
        "baton_browser_interaction_seconds",
        "From an action to the awaited condition, by the page's clock (browser) and the agent's",
        metrics.interaction.clone(),
    );
    r.register("baton_browser_session_start_seconds", "Browser session start", metrics.session_start.clone());
    r.register_collector(Box::new(Live { runner, slots }));
    r
}

struct Live {
    runner: Weak<Runner>,
    slots: u32,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let running = self.runner.upgrade().map_or(0, |r| r.running().len());
        ConstGauge::new(i64::from(self.slots)).encode(encoder.encode_descriptor(
            // Not baton_agent_slots: that is the coordinator's sum by pool, and a query
            // without a job label would add this agent's own figure to it.
            "baton_agent_slots",
            "Jobs this agent runs at once (--slots)",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(running as i64).encode(encoder.encode_descriptor(
            "baton_agent_running_jobs",
            "Attempts running on this agent now",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_counts_from_zero() {
        use job_finished::Outcome;
        let outcomes = [
            None,
            Some(Outcome::Failure(String::new())),
            Some(Outcome::Cancelled(String::new())),
            Some(Outcome::TimedOut(String::new())),
            Some(Outcome::HandedBack(String::new())),
        ];
        let names: Vec<&str> = outcomes.iter().map(outcome_name).collect();
        assert_eq!(names, OUTCOMES);
        let mut text = String::new();
        let metrics = AgentMetrics::default();
        let registry = registry(&metrics, Weak::new(), 1);
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"baton_agent_jobs_finished_total{kind="browser",outcome="timed_out"} 0"#), "{text}");
    }
}
