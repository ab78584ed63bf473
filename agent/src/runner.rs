//! Runs attempts: one task each, with a cancellation token and a deadline; a panic ends
//! only its own job. Finished reports wait in an outbox until the coordinator
//! acknowledges them, so a result produced while the coordinator is away is not lost.
//! When the agent stops, the runner takes no new work, lets running attempts finish
//! within the grace period and hands back the rest.

use crate::executor::{ExecError, Executor};
use crate::metrics::{AgentMetrics, outcome_name};
use baton_proto::context::JobContext;
use baton_proto::job::{kind_name, now, to_duration};
use baton_proto::limits::{enforce_progress_limit, enforce_report_limits};
use baton_proto::v1::{
    AgentMessage, Assignment, AttemptRef, JobFinished, JobProgress, JobResult, JobStarted, agent_message, job_finished,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Why an attempt was stopped before it finished.
#[derive(Debug, Clone)]
enum Stop {
    /// The coordinator cancelled it (on request, or at its deadline).
    Cancel(String),
    /// The agent is stopping; the coordinator retries the attempt elsewhere.
    HandBack(String),
}

struct Running {
    started_at: pbjson_types::Timestamp,
    cancel: CancellationToken,
    stop: Arc<Mutex<Option<Stop>>>,
}

impl Running {
    fn stop(&self, why: Stop) {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        self.cancel.cancel();
    }
}

#[derive(Default)]
struct Book {
    /// By (job, attempt): an older attempt of a job may still be stopping when a newer one starts.
    running: HashMap<(String, u32), Running>,
    /// Finished and not yet acknowledged, by (job, attempt).
    outbox: HashMap<(String, u32), JobFinished>,
}

pub struct Runner {
    executors: HashMap<&'static str, Arc<dyn Executor>>,
    book: Mutex<Book>,
    /// Reports for the coordinator; the connection forwards them while connected.
    events: mpsc::UnboundedSender<AgentMessage>,
    /// False once the agent is stopping: new assignments are handed back at once.
    accepting: AtomicBool,
    /// Wakes whoever waits for the book to change (an attempt ended, a report was acked).
    changed: Notify,
    /// Where finished attempts are observed (the metrics endpoint).
    pub metrics: AgentMetrics,
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
        let runner = Self {
            executors: by_kind,
            book: Mutex::new(Book::default()),
            events,
            accepting: AtomicBool::new(true),
            changed: Notify::new(),
            metrics: AgentMetrics::default(),
        };
        (Arc::new(runner), rx)
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
        let book = self.book();
        let refs = book.running.iter();
        refs.map(|((id, attempt), r)| AttemptRef {
            job_id: id.clone(),
            attempt: *attempt,
            started_at: Some(r.started_at),
        })
        .collect()
    }

    /// Finished reports not yet acknowledged, oldest first, for re-sending after a hello.
    pub fn unacknowledged(&self) -> Vec<JobFinished> {
        let mut reports: Vec<JobFinished> = self.book().outbox.values().cloned().collect();
        reports.sort_by(|a, b| (&a.job_id, a.attempt).cmp(&(&b.job_id, b.attempt)));
        reports
    }

    pub fn acknowledged(&self, job_id: &str, attempt: u32) {
        self.book().outbox.remove(&(job_id.to_string(), attempt));
        self.changed.notify_waiters();
    }

    pub fn cancel(&self, job_id: &str, attempt: u32, reason: &str) {
        if let Some(r) = self.book().running.get(&(job_id.to_string(), attempt)) {
            r.stop(Stop::Cancel(reason.to_string()));
        }
    }

    /// The agent is stopping: every later assignment is handed straight back.
    pub fn stop_taking_work(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Stops every running attempt; each reports itself handed back.
    pub fn hand_back_all(&self, reason: &str) {
        for r in self.book().running.values() {
            r.stop(Stop::HandBack(reason.to_string()));
        }
    }

    /// Waits until no attempt runs (true) or `within` passes (false).
    pub async fn wait_idle(&self, within: Duration) -> bool {
        self.wait_until(within, |book| book.running.is_empty()).await
    }

    /// Waits until the coordinator acknowledged every finished report (true) or `within` passes.
    pub async fn wait_acknowledged(&self, within: Duration) -> bool {
        self.wait_until(within, |book| book.outbox.is_empty()).await
    }

    async fn wait_until(&self, within: Duration, done: impl Fn(&Book) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            if done(&self.book()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return done(&self.book());
            }
        }
    }

    /// Starts an attempt in its own task; a repeated assignment of a running attempt is ignored.
    pub fn start(self: &Arc<Self>, assignment: Assignment) {
        let (job_id, attempt) = (assignment.job_id.clone(), assignment.attempt);
        if !self.accepting.load(Ordering::SeqCst) {
            let reason = "the agent is stopping and takes no new work".to_string();
            self.report(JobFinished {
                job_id,
                attempt,
                result: None,
                outcome: Some(job_finished::Outcome::HandedBack(reason)),
            });
            return;
        }
        let cancel = CancellationToken::new();
        let stop = Arc::new(Mutex::new(None));
        {
            let mut book = self.book();
            if book.running.contains_key(&(job_id.clone(), attempt)) {
                return;
            }
            let running = Running { started_at: now(), cancel: cancel.clone(), stop: stop.clone() };
            book.running.insert((job_id.clone(), attempt), running);
        }
        let this = self.clone();
        let kind = assignment.spec.as_ref().and_then(|s| s.kind.as_ref()).map(kind_name).unwrap_or("");
        let traceparent = assignment.trace_context.get("traceparent").cloned().unwrap_or_default();
        tokio::spawn(async move {
            let _ = this.events.send(msg(agent_message::Kind::Started(JobStarted { job_id: job_id.clone(), attempt })));
            let began = std::time::Instant::now();
            let (result, outcome) = this.execute(assignment, cancel, stop).await;
            let report = JobFinished { job_id, attempt, result, outcome };
            this.metrics.finished(kind, &report, began.elapsed(), &traceparent);
            this.report(report);
            baton_proto::telemetry::flush_spans();
        });
    }

    /// Moves a finished attempt from running to the outbox, where its report (held to the
    /// size limits) waits until acknowledged, and sends it.
    fn report(&self, mut finished: JobFinished) {
        enforce_report_limits(&mut finished);
        let outcome = outcome_name(&finished.outcome);
        tracing::info!(job_id = %finished.job_id, attempt = finished.attempt, outcome, "attempt finished");
        {
            // One step, so a hello built meanwhile lists the attempt as running or finished, never neither.
            let mut book = self.book();
            let key = (finished.job_id.clone(), finished.attempt);
            book.running.remove(&key);
            book.outbox.insert(key, finished.clone());
        }
        self.changed.notify_waiters();
        let _ = self.events.send(msg(agent_message::Kind::Finished(finished)));
    }

    async fn execute(
        &self,
        assignment: Assignment,
        cancel: CancellationToken,
        stop: Arc<Mutex<Option<Stop>>>,
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
        let ctx = JobContext::new(job_id.clone(), attempt, cancel.clone(), move |mut progress| {
            enforce_progress_limit(&mut progress);
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
                (None, Some(Outcome::TimedOut(baton_proto::job::timed_out_reason(timeout))))
            }
            Some(Ok(Ok(result))) => (Some(result), None),
            Some(Ok(Err(ExecError::Failed { reason, result }))) => (result.map(|r| *r), Some(Outcome::Failure(reason))),
            Some(Ok(Err(ExecError::Cancelled))) => match stop.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                Some(Stop::HandBack(reason)) => (None, Some(Outcome::HandedBack(reason))),
                Some(Stop::Cancel(reason)) => (None, Some(Outcome::Cancelled(reason))),
                None => (None, Some(Outcome::Cancelled("cancelled".into()))),
            },
            Some(Err(e)) if e.is_panic() => {
                (None, Some(Outcome::Failure(format!("executor panicked: {}", panic_message(e)))))
            }
            Some(Err(e)) => (None, Some(Outcome::Failure(format!("executor stopped: {e}")))),
        };
        if let Some(other) = &outcome {
            span.in_scope(|| tracing::warn!(job_id = %job_id, outcome = ?other, "job did not succeed"));
        }
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
