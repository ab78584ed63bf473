//! Backward and the optimizer are real: a small model overfits one batch.

use crate::{cpu_agent, custom};
use baton_proto::context::JobContext;
use baton_proto::v1::{AdamW, Gpt2TrainSpec, Progress, gpt2_train_spec::Data};
use std::sync::{Arc, Mutex};

fn overfit_spec() -> Gpt2TrainSpec {
    Gpt2TrainSpec {
        model: custom(2, 4, 64, 64, 512),
        batch: 2,
        seq_len: 32,
        steps: 60,
        warmup_steps: 2,
        adamw: Some(AdamW { lr: Some(3e-3), weight_decay: Some(0.0), ..Default::default() }),
        dropout: Some(0.0),
        device: "cpu".into(),
        threads: 2,
        seed: 1,
        repeat_batch: true,
        ..Default::default()
    }
}

#[test]
fn training_on_one_batch_drives_the_loss_down() {
    let _serial = crate::one_job_at_a_time();
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = seen.clone();
    let ctx = JobContext::new("overfit".into(), 1, Default::default(), move |p| sink.lock().unwrap().push(p));
    let spec = overfit_spec();
    let report = baton_gpt2::train(&spec, &ctx, &cpu_agent()).unwrap();

    let (first, last) = (report.loss[0], *report.loss.last().unwrap());
    assert!(last < 0.1 * first, "loss went from {first} to {last}");
    assert_eq!(report.loss.len(), 62, "warm-up steps are in the loss list");
    for phase in [&report.step, &report.data, &report.forward, &report.backward, &report.optimizer] {
        let s = phase.as_ref().unwrap();
        assert_eq!(s.count, 60, "warm-up steps are not in the statistics");
        assert!(s.min_ms <= s.p50_ms && s.p50_ms <= s.p90_ms && s.p90_ms <= s.max_ms);
    }
    let step = report.step.as_ref().unwrap();
    let phases = report.forward.unwrap().mean_ms + report.backward.unwrap().mean_ms + report.optimizer.unwrap().mean_ms;
    assert!(phases <= step.mean_ms, "phases fit in the step");
    assert!(report.tokens_per_s > 0.0 && report.achieved_flops_per_s > 0.0);
    assert!(report.mfu > 0.0 && report.mfu < 1.0, "mfu {} against {}", report.mfu, report.peak_source);
    assert!(report.peak_memory_bytes > 0);
    assert!(report.peak_memory_source.contains("VmHWM"), "{}", report.peak_memory_source);
    assert!(report.cuda_events.is_none(), "CUDA events on a CPU job");

    let config = report.config.unwrap();
    assert_eq!(
        (config.device.as_str(), config.dtype.as_str(), config.seed, config.torch_threads),
        ("cpu", "fp32", 1, 2)
    );
    assert!(config.torch_version.starts_with("2."), "{}", config.torch_version);
    let resolved = report.spec.unwrap();
    assert_eq!(resolved.grad_clip, Some(1.0), "defaults are written into the report's spec");
    assert!(matches!(resolved.data, Some(Data::Synthetic(_))));

    let progress = seen.lock().unwrap();
    assert_eq!(progress.len(), 62);
    assert_eq!(progress[61].message, "step 62/62");
    assert_eq!(progress[61].fraction, 1.0);
    assert_eq!(progress[61].metrics["loss"], last);
}

#[test]
fn bf16_training_runs_and_learns() {
    let _serial = crate::one_job_at_a_time();
    let spec = Gpt2TrainSpec { dtype: "bf16".into(), steps: 30, ..overfit_spec() };
    let report = baton_gpt2::train(&spec, &JobContext::detached("bf16"), &cpu_agent()).unwrap();
    assert!(report.loss.last().unwrap() < &(0.5 * report.loss[0]), "{:?}", report.loss);
}

#[test]
fn text_data_is_tokenized_with_gpt2_bpe() {
    let _serial = crate::one_job_at_a_time();
    let spec = Gpt2TrainSpec {
        model: custom(1, 2, 32, 64, 0),
        batch: 1,
        seq_len: 4,
        steps: 2,
        repeat_batch: false,
        data: Some(Data::Text("Hello world, hello baton, goodbye world.".into())),
        ..overfit_spec()
    };
    let report = baton_gpt2::train(&spec, &JobContext::detached("text"), &cpu_agent()).unwrap();
    assert_eq!(report.loss.len(), 4);
    assert_eq!(report.config.unwrap().size.unwrap().vocab_size, 50257);
}

#[test]
fn cancelling_stops_the_job() {
    let _serial = crate::one_job_at_a_time();
    let ctx = JobContext::detached("cancel");
    ctx.cancel.cancel();
    let err = baton_gpt2::train(&overfit_spec(), &ctx, &cpu_agent()).unwrap_err();
    assert_eq!(err.to_string(), "cancelled");
}
