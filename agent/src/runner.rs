//! Runs attempts: one task each, with a cancellation token and a deadline; a panic ends
//! only its own job. Finished reports wait in an outbox until the coordinator
//! acknowledges them, so a result produced while the coordinator is away is not lost.

use crate::executor::{ExecError, Executor};
use baton_proto::context::JobContext;
use baton_proto::job::{kind_name, to_duration};
use baton_proto::v1::{
    AgentMessage, Assignment, AttemptRef, JobFinished, JobProgress, JobResult, JobStarted, agent_message, job_finished,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Running {
    attempt: u32,
    cancel: CancellationToken,
    cancel_reason: Arc<Mutex<Option<String>>>,
}

#[derive(Default)]
struct Book {
    running: HashMap<String, Running>,
    /// Finished and not yet acknowledged, by (job, attempt).
    outbox: HashMap<(String, u32), JobFinished>,
}

pub struct Runner {
    executors: HashMap<&'static str, Arc<dyn Executor>>,
    book: Mutex<Book>,
    /// Reports for the coordinator; the connection forwards them while connected.
    events: mpsc::UnboundedSender<AgentMessage>,
}

fn msg(kind: agent_message::Kind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

impl Runner {
    /// Returns the runner and the receiver of its reports.
    pub fn new(executors: Vec<Arc<dyn Executor>>) -> (Arc<Self>, mpsc::UnboundedReceiver<AgentMessage>) {
        let mut by_kind = HashMap::new();
        for e in executors {
            for k in e.kinds() {
                by_kind.insert(k, e.clone());
            }
        }
        let (events, rx) = mpsc::unbounded_channel();
        (Arc::new(Self { executors: by_kind, book: Mutex::new(Book::default()), events }), rx)
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // Book updates are single inserts/removes; a poisoned lock holds consistent data.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn job_kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.executors.keys().map(|k| k.to_string()).collect();
        kinds.sort();
        kinds
    }

    /// Attempts running now, for the hello after a reconnect.
    pub fn running(&self) -> Vec<AttemptRef> {
        self.book().running.iter().map(|(id, r)| AttemptRef { job_id: id.clone(), attempt: r.attempt }).collect()
    }

    /// Finished reports not yet acknowledged, for the hello after a reconnect.
    pub fn unacknowledged(&self) -> Vec<JobFinished> {
        self.book().outbox.values().cloned().collect()
    }

    pub fn acknowledged(&self, job_id: &str, attempt: u32) {
        self.book().outbox.remove(&(job_id.to_string(), attempt));
    }

    pub fn cancel(&self, job_id: &str, attempt: u32, reason: &str) {
        let book = self.book();
        if let Some(r) = book.running.get(job_id).filter(|r| r.attempt == attempt) {
            *r.cancel_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
            r.cancel.cancel();
        }
    }

    /// Starts an attempt in its own task; a repeated assignment of a running attempt is ignored.
    pub fn start(self: &Arc<Self>, assignment: Assignment) {
        let cancel = CancellationToken::new();
        let cancel_reason = Arc::new(Mutex::new(None));
        {
            let mut book = self.book();
            if book.running.get(&assignment.job_id).is_some_and(|r| r.attempt == assignment.attempt) {
                return;
            }
            book.running.insert(
                assignment.job_id.clone(),
                Running { attempt: assignment.attempt, cancel: cancel.clone(), cancel_reason: cancel_reason.clone() },
            );
        }
        let this = self.clone();
        tokio::spawn(async move {
            let (job_id, attempt) = (assignment.job_id.clone(), assignment.attempt);
            let _ = this.events.send(msg(agent_message::Kind::Started(JobStarted { job_id: job_id.clone(), attempt })));
            let (result, outcome) = this.execute(assignment, cancel, cancel_reason).await;
            let finished = JobFinished { job_id: job_id.clone(), attempt, result, outcome };
            {
                let mut book = this.book();
                book.outbox.insert((job_id.clone(), attempt), finished.clone());
                if book.running.get(&job_id).is_some_and(|r| r.attempt == attempt) {
                    book.running.remove(&job_id);
                }
            }
            let _ = this.events.send(msg(agent_message::Kind::Finished(finished)));
        });
    }

    async fn execute(
        &self,
        assignment: Assignment,
        cancel: CancellationToken,
        cancel_reason: Arc<Mutex<Option<String>>>,
    ) -> (Option<JobResult>, Option<job_finished::Outcome>) {
        let Assignment { job_id, attempt, spec, trace_context } = assignment;
        let spec = spec.unwrap_or_default();
        let kind = spec.kind.as_ref().map(kind_name).unwrap_or("");
        let span = tracing::info_span!(
            "execute",
            baton.job.id = %job_id,
            baton.job.attempt = attempt,
            baton.job.kind = kind,
            baton.job.name = baton_proto::job::display_name(&spec),
        );
        let _ = span.set_parent(baton_proto::telemetry::extract(&trace_context));
        let Some(executor) = self.executors.get(kind).cloned() else {
            return (None, Some(job_finished::Outcome::Failure(format!("this agent cannot run job kind {kind:?}"))));
        };
        let timeout = spec.timeout.as_ref().map(to_duration).unwrap_or(baton_proto::spec::DEFAULT_TIMEOUT);
        let events = self.events.clone();
        let (progress_job, progress_attempt) = (job_id.clone(), attempt);
        let ctx = JobContext::new(job_id.clone(), attempt, cancel.clone(), move |progress| {
            let _ = events.send(msg(agent_message::Kind::Progress(JobProgress {
                job_id: progress_job.clone(),
                attempt: progress_attempt,
                progress: Some(progress),
            })));
        });
        let mut task = tokio::spawn(async move { executor.run(spec, ctx).await }.instrument(span.clone()));
        let joined = tokio::select! {
            joined = &mut task => Some(joined),
            _ = tokio::time::sleep(timeout) => None,
        };
        use job_finished::Outcome;
        let (result, outcome) = match joined {
            None => {
                // Out of time: stop the executor and wait until it has stopped.
                cancel.cancel();
                let _ = task.await;
                (None, Some(Outcome::TimedOut(format!("timed out after {}", humantime::format_duration(timeout)))))
            }
            Some(Ok(Ok(result))) => (Some(result), None),
            Some(Ok(Err(ExecError::Failed { reason, result }))) => (result.map(|r| *r), Some(Outcome::Failure(reason))),
            Some(Ok(Err(ExecError::Cancelled))) => {
                let reason = cancel_reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
                (None, Some(Outcome::Cancelled(reason.unwrap_or_else(|| "cancelled".into()))))
            }
            Some(Err(e)) if e.is_panic() => {
                (None, Some(Outcome::Failure(format!("executor panicked: {}", panic_message(e)))))
            }
            Some(Err(e)) => (None, Some(Outcome::Failure(format!("executor stopped: {e}")))),
        };
        span.in_scope(|| match &outcome {
            None => tracing::info!(job_id = %job_id, "job succeeded"),
            Some(other) => tracing::warn!(job_id = %job_id, outcome = ?other, "job did not succeed"),
        });
        (result, outcome)
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::v1::{JobSpec, NoopSpec, job_spec};

    struct Panics;

    #[async_trait::async_trait]
    impl Executor for Panics {
        fn kinds(&self) -> Vec<&'static str> {
            vec!["noop"]
        }
        async fn run(&self, _spec: JobSpec, _ctx: JobContext) -> Result<JobResult, ExecError> {
            panic!("boom")
        }
    }

    #[tokio::test]
    async fn a_panic_fails_only_its_job_and_waits_for_ack() {
        let (runner, mut events) = Runner::new(vec![Arc::new(Panics)]);
        let spec = JobSpec { kind: Some(job_spec::Kind::Noop(NoopSpec {})), ..Default::default() };
        runner.start(Assignment { job_id: "j".into(), attempt: 1, spec: Some(spec), trace_context: HashMap::new() });
        let finished = loop {
            if let Some(AgentMessage { kind: Some(agent_message::Kind::Finished(f)) }) = events.recv().await {
                break f;
            }
        };
        assert_eq!(finished.outcome, Some(job_finished::Outcome::Failure("executor panicked: boom".into())));
        assert!(runner.running().is_empty());
        assert_eq!(runner.unacknowledged().len(), 1);
        runner.acknowledged("j", 1);
        assert!(runner.unacknowledged().is_empty());
    }
}
