//! The `browser` job kind: the browser engine (agent/browser) behind the executor trait.

use crate::executor::{ExecError, Executor};
use baton_browser::{BrowserEngine, BrowserError};
use baton_proto::context::JobContext;
use baton_proto::v1::{JobResult, JobSpec, job_result, job_spec};
use std::sync::Arc;

pub struct BrowserExecutor {
    pub engine: Arc<BrowserEngine>,
}

#[async_trait::async_trait]
impl Executor for BrowserExecutor {
    fn kinds(&self) -> Vec<&'static str> {
        vec!["browser"]
    }

    async fn run(&self, spec: JobSpec, ctx: JobContext) -> Result<JobResult, ExecError> {
        let Some(job_spec::Kind::Browser(scenario)) = spec.kind else {
            return Err(ExecError::failed("the browser executor got a job of another kind"));
        };
        let as_result = |report| JobResult { kind: Some(job_result::Kind::Browser(report)) };
        match self.engine.run(&scenario, &ctx).await {
            Ok(report) => Ok(as_result(report)),
            Err(BrowserError::Cancelled) => Err(ExecError::Cancelled),
            // A failed step keeps its report: the screenshot and console errors go with the job.
            Err(e) => Err(ExecError::Failed {
                reason: e.to_string(),
                result: e.report().cloned().map(|r| Box::new(as_result(r))),
            }),
        }
    }
}
