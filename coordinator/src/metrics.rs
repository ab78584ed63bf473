//! The coordinator's Prometheus metrics (`--metrics-listen`).
//!
//! Timings are histograms observed as things happen (queue wait, dispatch, store
//! commits); everything else is read from the live state at each scrape ([`State::figures`]),
//! so a figure can never drift from what the coordinator holds.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `baton_coordinator_leader` | gauge | — |
//! | `baton_jobs` | gauge | `state` (queued, assigned, running), `kind` |
//! | `baton_jobs_submitted_total` | counter | `kind` |
//! | `baton_jobs_finished_total` | counter | `kind`, `state` (succeeded, failed, cancelled) |
//! | `baton_queue_depth` | gauge | `kind`, `pool_kind` (cpu, gpu, browser), `pool` (a job's `agentLabels.pool`; a series per value among queued jobs, gone with its queue) |
//! | `baton_agents` | gauge | `pool`, `status` (ready, draining, leaving, disconnected) |
//! | `baton_pool_slots`, `baton_pool_free_slots`, `baton_pool_busy_slots` | gauge | `pool` (connected agents' slots) |
//! | `baton_queue_wait_seconds` | histogram | `kind` (submitted → first assigned; every kind from 0 at start) |
//! | `baton_dispatch_seconds` | histogram | `kind` (assigned → started on the agent; likewise) |
//! | `baton_store_commit_seconds` | histogram | — |
//! | `baton_store_commit_writes` | histogram | — (writes per commit: group commit at work) |

use crate::role::Role;
use crate::state::{Figures, Slots};
use baton_proto::metrics::{ExemplarFamily, TraceExemplar, seconds_family};
use baton_proto::v1::JobState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// The timings the coordinator observes as they happen.
pub struct Timings {
    queue_wait: ExemplarFamily<KindLabel>,
    dispatch: ExemplarFamily<KindLabel>,
    commit_seconds: Histogram,
    commit_writes: Histogram,
}

impl std::fmt::Debug for Timings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Timings")
    }
}

impl Default for Timings {
    fn default() -> Self {
        let timings = Self {
            queue_wait: seconds_family(),
            dispatch: seconds_family(),
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            commit_writes: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
        };
        // Every kind's series from 0 at start: Prometheus takes a series' first sample as
        // its base, so a rate would otherwise miss each kind's first job.
        for kind in baton_proto::job::KIND_NAMES {
            let labels = KindLabel { kind: kind.to_string() };
            let _ = timings.queue_wait.get_or_create(&labels);
            let _ = timings.dispatch.get_or_create(&labels);
        }
        timings
    }
}

impl Timings {
    /// A job's first assignment, `wait` after it was submitted.
    pub fn queue_wait(&self, kind: &str, wait: Duration, traceparent: &str) {
        observe(&self.queue_wait, kind, wait, traceparent);
    }

    /// An attempt started on its agent, `after` its assignment was decided.
    pub fn dispatch(&self, kind: &str, after: Duration, traceparent: &str) {
        observe(&self.dispatch, kind, after, traceparent);
    }

    /// One store commit of `writes` writes that took `took`.
    pub fn commit(&self, writes: usize, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.commit_writes.observe(writes as f64);
    }
}

/// One job's time in a per-kind histogram, with the job's trace as exemplar.
fn observe(family: &ExemplarFamily<KindLabel>, kind: &str, took: Duration, traceparent: &str) {
    let labels = KindLabel { kind: kind.to_string() };
    family.get_or_create(&labels).observe(took.as_secs_f64(), TraceExemplar::from_traceparent(traceparent), None);
}

/// The registry a scrape encodes: the timings, and the live figures of whichever
/// coordinator this process is (a follower reports only that it does not lead).
pub fn registry(timings: Arc<Timings>, role: Arc<Role>) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "baton_queue_wait_seconds",
        "Time from a job's submission to its first assignment",
        timings.queue_wait.clone(),
    );
    registry.register(
        "baton_dispatch_seconds",
        "Time from an attempt's assignment to its start on the agent",
        timings.dispatch.clone(),
    );
    registry.register("baton_store_commit_seconds", "Duration of one store commit", timings.commit_seconds.clone());
    registry.register(
        "baton_store_commit_writes",
        "Writes (jobs, results, drains) per store commit",
        timings.commit_writes.clone(),
    );
    registry.register_collector(Box::new(Live { role }));
    registry
}

struct Live {
    role: Arc<Role>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let coordinator = self.role.coordinator();
        let leader = ConstGauge::new(i64::from(coordinator.is_some()));
        leader.encode(encoder.encode_descriptor(
            "baton_coordinator_leader",
            "1 when this coordinator leads (serves the state), 0 when it follows",
            None,
            MetricType::Gauge,
        )?)?;
        let Some(coordinator) = coordinator else { return Ok(()) };
        let figures = coordinator.figures();
        encode_figures(&mut encoder, figures)
    }
}

/// Encodes one family of constant values.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    values: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in values {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn encode_figures(encoder: &mut DescriptorEncoder, f: Figures) -> Result<(), std::fmt::Error> {
    // Every state and kind appears, at 0 when empty: a query never finds "no data" for a
    // quiet fleet.
    let mut jobs = Vec::new();
    for state in [JobState::Queued, JobState::Assigned, JobState::Running] {
        for kind in baton_proto::job::KIND_NAMES {
            let n = f.active_jobs.get(&(state, kind)).copied().unwrap_or(0);
            jobs.push((vec![("state", state.short_name()), ("kind", kind)], ConstGauge::new(n as i64)));
        }
    }
    family(encoder, "baton_jobs", "Jobs queued, assigned or running", MetricType::Gauge, jobs)?;
    let submitted = baton_proto::job::KIND_NAMES.map(|kind| {
        let n = f.tally.submitted.get(kind).copied().unwrap_or(0);
        (vec![("kind", kind)], ConstCounter::new(n))
    });
    family(
        encoder,
        "baton_jobs_submitted",
        "Jobs accepted since this coordinator leads",
        MetricType::Counter,
        submitted,
    )?;
    let mut finished = Vec::new();
    for state in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
        for kind in baton_proto::job::KIND_NAMES {
            let n = f.tally.finished.get(&(kind, state)).copied().unwrap_or(0);
            finished.push((vec![("kind", kind), ("state", state.short_name())], ConstCounter::new(n)));
        }
    }
    family(encoder, "baton_jobs_finished", "Jobs settled since this coordinator leads", MetricType::Counter, finished)?;
    let queued = f.queued.iter().map(|((kind, pool_kind, pool), n)| {
        (vec![("kind", *kind), ("pool_kind", *pool_kind), ("pool", pool.as_str())], ConstGauge::new(*n as i64))
    });
    family(
        encoder,
        "baton_queue_depth",
        "Queued jobs by kind and the agent pool they need (what autoscaling reads)",
        MetricType::Gauge,
        queued,
    )?;
    let agents = f
        .agents
        .iter()
        .map(|((pool, status), n)| (vec![("pool", pool.as_str()), ("status", *status)], ConstGauge::new(*n as i64)));
    family(encoder, "baton_agents", "Agents known to the coordinator", MetricType::Gauge, agents)?;
    let slots = [
        ("baton_pool_slots", "Job slots of connected agents", (|s: &Slots| s.all) as fn(&Slots) -> u64),
        ("baton_pool_free_slots", "Free job slots of agents taking work", |s| s.free),
        ("baton_pool_busy_slots", "Job slots holding an attempt (what autoscaling keeps)", |s| s.busy),
    ];
    for (name, help, value) in slots {
        let values = f.slots.iter().map(|(pool, s)| (vec![("pool", pool.as_str())], ConstGauge::new(value(s) as i64)));
        family(encoder, name, help, MetricType::Gauge, values)?;
    }
    Ok(())
}
