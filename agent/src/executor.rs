//! The executor trait every engine implements, and the built-in `noop` and `sleep` kinds.

use baton_proto::context::JobContext;
use baton_proto::v1::{JobResult, JobSpec, NoopResult, Progress, SleepResult, job_result, job_spec};
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExecError {
    /// The job failed; `reason` is the job's failure reason, `result` what it measured
    /// before failing (a browser step's screenshot, ...), kept with the job.
    #[error("{reason}")]
    Failed { reason: String, result: Option<Box<JobResult>> },
    /// The job stopped because its context was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl ExecError {
    /// A failure with nothing measured worth keeping.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::Failed { reason: reason.into(), result: None }
    }
}

/// Runs the job kinds it names. Implementations stop promptly once `ctx.cancel` fires.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// Job kinds by their JSON names (`sleep`, `gpt2Train`, ...).
    fn kinds(&self) -> Vec<&'static str>;
    async fn run(&self, spec: JobSpec, ctx: JobContext) -> Result<JobResult, ExecError>;
}

fn result(kind: job_result::Kind) -> JobResult {
    JobResult { kind: Some(kind) }
}

/// `noop` and `sleep`: for measuring and testing the pipeline itself.
pub struct Builtin;

#[async_trait::async_trait]
impl Executor for Builtin {
    fn kinds(&self) -> Vec<&'static str> {
        vec!["noop", "sleep"]
    }

    async fn run(&self, spec: JobSpec, ctx: JobContext) -> Result<JobResult, ExecError> {
        match spec.kind {
            Some(job_spec::Kind::Sleep(s)) => {
                let total = Duration::from_millis(s.duration_ms);
                let tick = (total / 10).max(Duration::from_millis(100));
                let start = tokio::time::Instant::now();
                let end = start + total;
                while tokio::time::Instant::now() < end {
                    let next = (tokio::time::Instant::now() + tick).min(end);
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Err(ExecError::Cancelled),
                        _ = tokio::time::sleep_until(next) => {}
                    }
                    let done = start.elapsed().as_secs_f64() / total.as_secs_f64();
                    ctx.report(Progress {
                        fraction: done.min(1.0),
                        message: format!(
                            "slept {} of {} ms",
                            start.elapsed().as_millis().min(total.as_millis()),
                            total.as_millis()
                        ),
                        ..Default::default()
                    });
                }
                if s.fail {
                    return Err(ExecError::failed(format!("sleep job failed on request after {} ms", s.duration_ms)));
                }
                Ok(result(job_result::Kind::Sleep(SleepResult { slept_ms: start.elapsed().as_millis() as u64 })))
            }
            Some(job_spec::Kind::Noop(_)) => Ok(result(job_result::Kind::Noop(NoopResult {}))),
            other => Err(ExecError::failed(format!(
                "this executor cannot run {}",
                other.as_ref().map(baton_proto::job::kind_name).unwrap_or("an empty spec")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::v1::SleepSpec;

    fn sleep(ms: u64, fail: bool) -> JobSpec {
        JobSpec { kind: Some(job_spec::Kind::Sleep(SleepSpec { duration_ms: ms, fail })), ..Default::default() }
    }

    #[tokio::test]
    async fn sleep_sleeps_fails_and_cancels() {
        let ok = Builtin.run(sleep(50, false), JobContext::detached("a")).await.unwrap();
        assert!(matches!(ok.kind, Some(job_result::Kind::Sleep(SleepResult { slept_ms })) if slept_ms >= 50));
        let failed = Builtin.run(sleep(1, true), JobContext::detached("b")).await.unwrap_err();
        assert_eq!(failed, ExecError::failed("sleep job failed on request after 1 ms"));
        let ctx = JobContext::detached("c");
        ctx.cancel.cancel();
        assert_eq!(Builtin.run(sleep(60_000, false), ctx).await.unwrap_err(), ExecError::Cancelled);
    }
}
