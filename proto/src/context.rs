//! What an engine receives when the agent runs a job: identity, cancellation, progress.

use crate::v1::Progress;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

type ProgressSink = Arc<dyn Fn(Progress) + Send + Sync>;

/// One attempt of one job, as an engine sees it. Cheap to clone.
#[derive(Clone)]
pub struct JobContext {
    pub job_id: String,
    pub attempt: u32,
    /// Cancelled when the job is cancelled or its deadline passes: engines stop promptly.
    pub cancel: CancellationToken,
    progress: ProgressSink,
}

impl JobContext {
    pub fn new(
        job_id: String,
        attempt: u32,
        cancel: CancellationToken,
        progress: impl Fn(Progress) + Send + Sync + 'static,
    ) -> Self {
        Self { job_id, attempt, cancel, progress: Arc::new(progress) }
    }

    /// A context whose progress goes nowhere: for running an engine outside an agent
    /// (engine tests, benchmarks).
    pub fn detached(job_id: &str) -> Self {
        Self::new(job_id.to_string(), 1, CancellationToken::new(), |_| {})
    }

    /// Reports progress to the coordinator (and so to `baton watch`).
    pub fn report(&self, progress: Progress) {
        (self.progress)(progress)
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}
