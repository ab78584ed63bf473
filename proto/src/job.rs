//! Domain helpers over the generated types, shared by coordinator, agent and CLI.

use crate::v1::{JobSpec, JobState, job_result, job_spec};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The job kind's name as users write it in JSON (`noop`, `sleep`, `gpt2Train`, ...).
pub fn kind_name(kind: &job_spec::Kind) -> &'static str {
    match kind {
        job_spec::Kind::Noop(_) => "noop",
        job_spec::Kind::Sleep(_) => "sleep",
        job_spec::Kind::Gpt2Train(_) => "gpt2Train",
        job_spec::Kind::Gpt2Infer(_) => "gpt2Infer",
        job_spec::Kind::Browser(_) => "browser",
    }
}

/// Every job kind's name, in the order the proto declares them.
pub const KIND_NAMES: [&str; 5] = ["noop", "sleep", "gpt2Train", "gpt2Infer", "browser"];

/// The result kind's name, matching [`kind_name`].
pub fn result_kind_name(kind: &job_result::Kind) -> &'static str {
    match kind {
        job_result::Kind::Noop(_) => "noop",
        job_result::Kind::Sleep(_) => "sleep",
        job_result::Kind::Gpt2Train(_) => "gpt2Train",
        job_result::Kind::Gpt2Infer(_) => "gpt2Infer",
        job_result::Kind::Browser(_) => "browser",
    }
}

impl JobState {
    /// Finished for good: no further transition happens.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    /// The short name people read: `queued`, `running`, ...
    pub fn short_name(self) -> &'static str {
        match self {
            JobState::Unspecified => "unspecified",
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses a short name (`running`) or the proto name (`JOB_STATE_RUNNING`).
    pub fn parse(text: &str) -> Option<JobState> {
        let upper = text.to_ascii_uppercase();
        JobState::from_str_name(&upper)
            .or_else(|| JobState::from_str_name(&format!("JOB_STATE_{upper}")))
            .filter(|s| *s != JobState::Unspecified)
    }
}

/// The job's display name: its own, else its kind.
pub fn display_name(spec: &JobSpec) -> &str {
    if !spec.name.is_empty() { &spec.name } else { spec.kind.as_ref().map(kind_name).unwrap_or("") }
}

pub fn timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

pub fn now() -> pbjson_types::Timestamp {
    timestamp(SystemTime::now())
}

pub fn to_system_time(t: &pbjson_types::Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
}

pub fn to_duration(d: &pbjson_types::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

pub fn from_duration(d: Duration) -> pbjson_types::Duration {
    pbjson_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// Why an attempt was stopped at its deadline: `timed out after 300ms`. The agent and
/// the coordinator's backstop say it the same way.
pub fn timed_out_reason(timeout: Duration) -> String {
    format!("timed out after {}", humantime::format_duration(timeout))
}
