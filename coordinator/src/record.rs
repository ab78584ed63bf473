//! The coordinator's own record of a job, and the API view built from it.
//!
//! **API boundary:** clients see `baton.v1.Job`, built by [`view`]; the record's internal
//! fields (submission order, the submit span's traceparent, the copied scheduling
//! fields) never reach them, and the record can change shape without touching the API.

use baton_proto::spec::Placement;
use baton_proto::v1::{Job, JobResult, JobSpec, JobState, Progress};
use prost::Message;

#[allow(clippy::all, missing_docs)]
mod pb {
    tonic::include_proto!("baton.coordinator.v1");
}

pub use pb::JobRecord;

impl JobRecord {
    /// A new queued job for a validated, normalized spec.
    pub fn queued(id: String, seq: u64, spec: &JobSpec, key: String, traceparent: String, trace_id: String) -> Self {
        Self {
            id,
            seq,
            state: JobState::Queued as i32,
            submitted_at: Some(baton_proto::job::now()),
            spec: spec.encode_to_vec(),
            priority: spec.priority,
            max_attempts: spec.max_attempts,
            timeout: spec.timeout,
            idempotency_key: key,
            traceparent,
            trace_id,
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
}

/// The job as clients see it.
pub fn view(record: &JobRecord, result: Option<JobResult>, progress: Option<&Progress>) -> Job {
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
        progress: progress.cloned(),
        result,
        idempotency_key: record.idempotency_key.clone(),
        trace_id: record.trace_id.clone(),
        cancel_requested: record.cancel_requested,
        assigned_at: record.assigned_at,
    }
}
