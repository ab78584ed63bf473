//! Size limits, written once and enforced on both sides of every stream.
//!
//! A job as a client reads it (spec + result + bookkeeping) stays under gRPC's default
//! 4 MiB message limit, so `grpcurl` and stock clients can always read it back.

use crate::v1::{JobFinished, Progress, job_finished};
use prost::Message;

/// A submitted spec, encoded.
pub const MAX_SPEC_BYTES: usize = 512 * 1024;
/// A job's result, encoded. A larger result fails its job (the agent stays online).
pub const MAX_RESULT_BYTES: usize = 3 * 1024 * 1024;
/// One progress update, encoded. A larger one is replaced by a note saying so.
pub const MAX_PROGRESS_BYTES: usize = 64 * 1024;
/// One message on an agent's stream, either way: a result at its limit plus the envelope.
pub const MAX_AGENT_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// One ListJobs page, encoded; a page ends early rather than grow past it.
pub const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;
/// A reason (why a job failed, was cancelled, timed out), in characters; a longer one is cut.
pub const MAX_REASON_CHARS: usize = 4000;
/// A cancel request's reason, in characters; a longer one is refused.
pub const MAX_CANCEL_REASON_CHARS: usize = 1000;

/// `3.0 MiB`, `600.0 KiB`, `12 bytes`.
pub fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / (1 << 10) as f64)
    } else {
        format!("{bytes} bytes")
    }
}

/// Cuts a reason to [`MAX_REASON_CHARS`], saying how long it was.
pub fn cut_reason(reason: &mut String) {
    let chars = reason.chars().count();
    if chars > MAX_REASON_CHARS {
        let keep: String = reason.chars().take(MAX_REASON_CHARS).collect();
        *reason = format!("{keep}… [cut: {chars} characters in all]");
    }
}

/// Holds a finished report to the limits: its reason is cut to [`MAX_REASON_CHARS`], and a
/// result over [`MAX_RESULT_BYTES`] makes it a failure that says so (returns true then).
pub fn enforce_report_limits(report: &mut JobFinished) -> bool {
    use job_finished::Outcome;
    if let Some(Outcome::Failure(r) | Outcome::Cancelled(r) | Outcome::TimedOut(r) | Outcome::HandedBack(r)) =
        report.outcome.as_mut()
    {
        cut_reason(r);
    }
    let bytes = report.result.as_ref().map_or(0, Message::encoded_len);
    if bytes <= MAX_RESULT_BYTES {
        return false;
    }
    report.result = None;
    report.outcome = Some(job_finished::Outcome::Failure(format!(
        "result too large: {} encoded, over the {} limit for a job's result; it was dropped",
        size(bytes),
        size(MAX_RESULT_BYTES)
    )));
    true
}

/// A progress update over [`MAX_PROGRESS_BYTES`] keeps its fraction and says why the rest is gone.
pub fn enforce_progress_limit(progress: &mut Progress) {
    let bytes = progress.encoded_len();
    if bytes > MAX_PROGRESS_BYTES {
        *progress = Progress {
            fraction: progress.fraction,
            message: format!("[progress update of {} cut: over the {} limit]", size(bytes), size(MAX_PROGRESS_BYTES)),
            metrics: Default::default(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{JobResult, ScriptStep};

    #[test]
    fn an_oversized_result_fails_its_job_and_says_why() {
        let big = JobResult { kind: Some(crate::v1::job_result::Kind::Noop(Default::default())) };
        let mut small = JobFinished { job_id: "j".into(), attempt: 1, result: Some(big), outcome: None };
        assert!(!enforce_report_limits(&mut small));
        assert!(small.outcome.is_none());
        // Any result kind: the limit is on the encoded bytes.
        let step = ScriptStep { script: "x".repeat(MAX_RESULT_BYTES + 300 * 1024) };
        let report = crate::v1::BrowserReport {
            repeats: vec![crate::v1::RepeatReport {
                steps: vec![crate::v1::StepTiming { script_result_json: step.script, ..Default::default() }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut big = JobFinished {
            job_id: "j".into(),
            attempt: 1,
            result: Some(JobResult { kind: Some(crate::v1::job_result::Kind::Browser(report)) }),
            outcome: None,
        };
        assert!(enforce_report_limits(&mut big));
        assert!(big.result.is_none());
        let Some(job_finished::Outcome::Failure(reason)) = big.outcome else { panic!("not a failure") };
        assert!(reason.starts_with("result too large: 3.3 MiB encoded, over the 3.0 MiB limit"), "{reason}");
    }

    #[test]
    fn a_long_reason_is_cut_and_says_so() {
        let outcome = Some(job_finished::Outcome::Failure("é".repeat(10_000)));
        let mut report = JobFinished { job_id: "j".into(), attempt: 1, result: None, outcome };
        enforce_report_limits(&mut report);
        let Some(job_finished::Outcome::Failure(reason)) = report.outcome else { panic!("still a failure") };
        assert!(reason.ends_with("… [cut: 10000 characters in all]"), "{}", &reason[reason.len() - 40..]);
        assert_eq!(reason.chars().count(), MAX_REASON_CHARS + "… [cut: 10000 characters in all]".chars().count());
    }

    #[test]
    fn an_oversized_progress_update_is_cut_with_a_marker() {
        let mut p = Progress { fraction: 0.5, message: "m".repeat(100_000), metrics: Default::default() };
        enforce_progress_limit(&mut p);
        assert_eq!(p.fraction, 0.5);
        assert_eq!(p.message, "[progress update of 97.7 KiB cut: over the 64.0 KiB limit]");
    }
}
