//! The coordinator's own record of a job, and the API view built from it.
//!
//! **API boundary:** clients see `baton.v1.Job`, built by [`view`]; the record's internal
//! fields (submission order, the submit span's traceparent, the copied scheduling
//! fields) never reach them, and the record can change shape without touching the API.

use baton_proto::spec::Placement;
use baton_proto::v1::{Job, JobResult, JobSpec, JobState, Progress, SweepPoint, SweepProgress};
use prost::Message;

#[allow(clippy::all, missing_docs)]
mod pb {
    tonic::include_proto!("baton.coordinator.v1");
}

pub use pb::{JobRecord, SealedSecrets, Secrets};

/// A job being accepted: its validated, normalized spec (secrets masked) and what came
/// with it.
#[derive(Debug, Default)]
pub struct NewJob {
    pub id: String,
    pub spec: JobSpec,
    pub idempotency_key: String,
    /// W3C traceparent of the submit span, and its trace id.
    pub traceparent: String,
    pub trace_id: String,
    pub secrets: Option<SealedSecrets>,
    /// Who submitted it (empty without authentication).
    pub owner: String,
    /// A point of a sweep: the sweep's id and the point's values.
    pub sweep_id: String,
    pub point: Option<SweepPoint>,
    /// A sweep: its points as checked (the coordinator gives them ids and `sweep_id`),
    /// and, once taken out, how they stand.
    pub points: Vec<NewJob>,
    pub sweep: Option<SweepProgress>,
}

impl JobRecord {
    /// A new queued job.
    pub fn queued(seq: u64, new: NewJob) -> Self {
        let NewJob { id, spec, idempotency_key, traceparent, trace_id, secrets, owner, sweep_id, point, sweep, .. } =
            new;
        Self {
            id,
            seq,
            state: JobState::Queued as i32,
            submitted_at: Some(baton_proto::job::now()),
            spec: spec.encode_to_vec(),
            priority: spec.priority,
            max_attempts: spec.max_attempts,
            timeout: spec.timeout,
            idempotency_key,
            traceparent,
            trace_id,
            secrets,
            owner,
            sweep_id,
            point,
            sweep,
            ..Default::default()
        }
    }

    /// The spec as submitted. The coordinator encoded it itself, so it decodes; a record
    /// damaged on disk is refused when the store loads.
    pub fn spec(&self) -> JobSpec {
        JobSpec::decode(self.spec.as_slice()).unwrap_or_default()
    }

    pub fn placement(&self) -> Placement {
        Placement::of(&self.spec())
    }

    /// The job's idempotency key as the coordinator indexes it.
    pub fn scoped_key(&self) -> String {
        scoped_key(&self.owner, &self.idempotency_key)
    }
}

/// Idempotency keys are per owner: one principal's key never returns another's job.
pub fn scoped_key(owner: &str, key: &str) -> String {
    if owner.is_empty() { key.to_string() } else { format!("{owner}\0{key}") }
}

/// The job as clients see it. A sweep's progress is how many of its points are finished.
pub fn view(record: &JobRecord, result: Option<JobResult>, progress: Option<&Progress>) -> Job {
    let progress = match &record.sweep {
        Some(c) => Some(sweep_progress(c)),
        None => progress.cloned(),
    };
    Job {
        id: record.id.clone(),
        spec: Some(record.spec()),
        state: record.state,
        attempt: record.attempt,
        agent_id: record.agent_id.clone(),
        reason: record.reason.clone(),
        submitted_at: record.submitted_at,
        started_at: record.started_at,
        finished_at: record.finished_at,
        progress,
        result,
        idempotency_key: record.idempotency_key.clone(),
        trace_id: record.trace_id.clone(),
        cancel_requested: record.cancel_requested,
        assigned_at: record.assigned_at,
        owner: record.owner.clone(),
        sweep_id: record.sweep_id.clone(),
        point: record.point.clone(),
        sweep: record.sweep,
    }
}

fn sweep_progress(c: &SweepProgress) -> Progress {
    let done = c.succeeded + c.failed + c.cancelled;
    let mut message = format!("{done} of {} points finished, {} running", c.points, c.running);
    for (n, what) in [(c.failed, "failed"), (c.cancelled, "cancelled")] {
        if n > 0 {
            message.push_str(&format!(", {n} {what}"));
        }
    }
    Progress {
        fraction: if c.points == 0 { 1.0 } else { f64::from(done) / f64::from(c.points) },
        message,
        metrics: Default::default(),
    }
}
