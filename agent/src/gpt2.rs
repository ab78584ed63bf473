//! The `gpt2Train` and `gpt2Infer` job kinds: the GPT-2 engine (agent/gpt2) behind the
//! executor trait. The engine is blocking (libtorch), so each job runs on a blocking
//! thread, inside the job's span so its step and phase spans land in the job's trace.

use crate::executor::{ExecError, Executor};
use baton_gpt2::{Gpt2Capabilities, Gpt2Error};
use baton_proto::context::JobContext;
use baton_proto::v1::{JobResult, JobSpec, job_result, job_spec};
use std::sync::Arc;

pub struct Gpt2Executor {
    pub capabilities: Arc<Gpt2Capabilities>,
}

#[async_trait::async_trait]
impl Executor for Gpt2Executor {
    fn kinds(&self) -> Vec<&'static str> {
        vec!["gpt2Train", "gpt2Infer"]
    }

    async fn run(&self, spec: JobSpec, ctx: JobContext) -> Result<JobResult, ExecError> {
        let caps = self.capabilities.clone();
        let span = tracing::Span::current();
        let ran = tokio::task::spawn_blocking(move || {
            let result = span.in_scope(|| match spec.kind {
                Some(job_spec::Kind::Gpt2Train(s)) => {
                    baton_gpt2::train(&s, &ctx, &caps).map(job_result::Kind::Gpt2Train)
                }
                Some(job_spec::Kind::Gpt2Infer(s)) => {
                    baton_gpt2::infer(&s, &ctx, &caps).map(job_result::Kind::Gpt2Infer)
                }
                _ => Err(Gpt2Error::Torch("the GPT-2 executor got a job of another kind".into())),
            });
            baton_gpt2::device::release_memory();
            result
        })
        .await;
        match ran {
            Ok(Ok(kind)) => Ok(JobResult { kind: Some(kind) }),
            Ok(Err(Gpt2Error::Cancelled)) => Err(ExecError::Cancelled),
            Ok(Err(e)) => Err(ExecError::failed(e.to_string())),
            // The runner reports a panic of the executor itself; re-raise it there.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(ExecError::failed(format!("the GPT-2 job stopped: {e}"))),
        }
    }
}
