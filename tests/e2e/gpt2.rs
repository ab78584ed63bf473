//! GPT-2 jobs through the real coordinator and agent, on real libtorch (issue 3).

use crate::backbone::{finished, request};
use baton_proto::v1::{
    GetJobRequest, Gpt2InferSpec, Gpt2Model, Gpt2Size, Gpt2TrainSpec, JobSpec, JobState, gpt2_model, gpt2_train_spec,
    job_result, job_spec,
};
use baton_tests::{Cluster, Jaeger};
use std::time::Duration;

/// A two-layer GPT-2 with random weights: seconds on a CPU.
fn tiny_model() -> Option<Gpt2Model> {
    Some(Gpt2Model {
        source: Some(gpt2_model::Source::Custom(Gpt2Size {
            n_layer: 2,
            n_head: 2,
            n_embd: 64,
            n_ctx: 256,
            vocab_size: 0,
        })),
    })
}

pub(crate) fn tiny_train(seq_len: u32, device: &str) -> JobSpec {
    JobSpec {
        name: format!("train seq {seq_len}"),
        kind: Some(job_spec::Kind::Gpt2Train(Gpt2TrainSpec {
            model: tiny_model(),
            batch: 2,
            seq_len,
            steps: 3,
            warmup_steps: 1,
            device: device.into(),
            seed: 1,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Four new tokens after one short prompt.
pub(crate) fn tiny_infer(device: &str) -> JobSpec {
    JobSpec {
        name: "generate".into(),
        kind: Some(job_spec::Kind::Gpt2Infer(Gpt2InferSpec {
            model: tiny_model(),
            prompts: vec!["Hello world".into()],
            max_new_tokens: 4,
            device: device.into(),
            seed: 1,
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_jobs_at_three_sequence_lengths_report_phases_and_trace_steps() {
    let jaeger = Jaeger::start().await;
    let mut cluster = Cluster::start(&[], &jaeger.exporter_env()).await;
    cluster.add_agent("cpu-1", 1, &["--no-browser"]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;
    for seq_len in [64, 128, 256] {
        let id = client.submit_job(request(tiny_train(seq_len, "cpu"))).await.unwrap().into_inner().id;
        let job = finished(&cluster, &id, Duration::from_secs(120)).await;
        assert_eq!(job.state(), JobState::Succeeded, "{}", job.reason);
        let Some(job_result::Kind::Gpt2Train(report)) = job.result.and_then(|r| r.kind) else {
            panic!("no train report")
        };
        for (phase, stats) in
            [("forward", &report.forward), ("backward", &report.backward), ("optimizer", &report.optimizer)]
        {
            let stats = stats.as_ref().unwrap_or_else(|| panic!("{phase} timing missing"));
            assert_eq!(stats.count, 3, "{phase}: warm-up steps are not in the statistics");
            assert!(
                stats.p50_ms > 0.0 && stats.min_ms <= stats.p50_ms && stats.p50_ms <= stats.max_ms,
                "{phase}: {stats:?}"
            );
        }
        assert_eq!(report.loss.len(), 4, "loss per step, warm-up included");
        assert!(report.tokens_per_s > 0.0);
        if seq_len == 256 {
            let trace =
                jaeger.trace(&job.trace_id, &["execute", "gpt2.train.step", "forward", "backward", "optimizer"]).await;
            let steps =
                trace["spans"].as_array().unwrap().iter().filter(|s| s["operationName"] == "gpt2.train.step").count();
            assert_eq!(steps, 4, "one span per step, warm-up included");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_jobs_never_go_to_a_cpu_agent_and_bad_gpt2_specs_are_refused() {
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("cpu-1", 1, &["--no-browser"]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;
    let id = client.submit_job(request(tiny_train(64, "cuda:0"))).await.unwrap().into_inner().id;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = client.get_job(GetJobRequest { id }).await.unwrap().into_inner();
    assert_eq!(job.state(), JobState::Queued);
    assert_eq!(job.reason, "no connected agent can run this job: a CUDA device is required");

    let too_long = client.submit_job(request(tiny_train(512, "cpu"))).await.unwrap_err();
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument);
    assert!(too_long.message().starts_with("spec.gpt2Train.seqLen: must be at most"), "{}", too_long.message());

    let mut missing = tiny_train(64, "cpu");
    if let Some(job_spec::Kind::Gpt2Train(t)) = missing.kind.as_mut() {
        t.model = Some(Gpt2Model { source: Some(gpt2_model::Source::Checkpoint("/no/such/checkpoint".into())) });
    }
    let id = client.submit_job(request(missing)).await.unwrap().into_inner().id;
    let job = finished(&cluster, &id, Duration::from_secs(60)).await;
    assert_eq!(job.state(), JobState::Failed);
    assert!(job.reason.starts_with("checkpoint /no/such/checkpoint:"), "{}", job.reason);

    // Issue 11: a job reads no file an agent was not given (--data-root), devices least of all.
    let mut device = tiny_train(64, "cpu");
    if let Some(job_spec::Kind::Gpt2Train(t)) = device.kind.as_mut() {
        t.data = Some(gpt2_train_spec::Data::TextFile("/dev/zero".into()));
    }
    let id = client.submit_job(request(device)).await.unwrap().into_inner().id;
    let job = finished(&cluster, &id, Duration::from_secs(60)).await;
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(
        job.reason,
        "training data: textFile /dev/zero this agent reads no files for jobs: start it with --data-root DIR"
    );
}
