//! Bad inputs give one clear line each.

use crate::{checkpoint_model, cpu_agent, custom};
use baton_gpt2::Gpt2Capabilities;
use baton_proto::context::JobContext;
use baton_proto::v1::{Gpt2InferSpec, Gpt2Model, Gpt2TrainSpec, gpt2_model};
use tch::{Kind, Tensor};

fn train_err(spec: Gpt2TrainSpec, caps: &Gpt2Capabilities) -> String {
    baton_gpt2::train(&spec, &JobContext::detached("bad"), caps).unwrap_err().to_string()
}

fn small(model: Option<Gpt2Model>) -> Gpt2TrainSpec {
    Gpt2TrainSpec { model, batch: 1, seq_len: 8, steps: 1, device: "cpu".into(), ..Default::default() }
}

/// A checkpoint folder with a 1-layer config and the given tensors.
fn folder(tensors: &[(&str, Vec<i64>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let config =
        r#"{"n_layer":1,"n_head":2,"n_embd":8,"n_positions":16,"vocab_size":10,"activation_function":"gelu_new"}"#;
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let tensors: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, s)| (n.to_string(), Tensor::zeros(s.as_slice(), (Kind::Float, tch::Device::Cpu))))
        .collect();
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
    dir
}

fn good_tensors() -> Vec<(&'static str, Vec<i64>)> {
    vec![
        ("wte.weight", vec![10, 8]),
        ("wpe.weight", vec![16, 8]),
        ("h.0.ln_1.weight", vec![8]),
        ("h.0.ln_1.bias", vec![8]),
        ("h.0.attn.c_attn.weight", vec![8, 24]),
        ("h.0.attn.c_attn.bias", vec![24]),
        ("h.0.attn.c_proj.weight", vec![8, 8]),
        ("h.0.attn.c_proj.bias", vec![8]),
        ("h.0.ln_2.weight", vec![8]),
        ("h.0.ln_2.bias", vec![8]),
        ("h.0.mlp.c_fc.weight", vec![8, 32]),
        ("h.0.mlp.c_fc.bias", vec![32]),
        ("h.0.mlp.c_proj.weight", vec![32, 8]),
        ("h.0.mlp.c_proj.bias", vec![8]),
        ("ln_f.weight", vec![8]),
        ("ln_f.bias", vec![8]),
    ]
}

#[test]
fn a_hand_made_checkpoint_loads() {
    let _serial = crate::one_job_at_a_time();
    let dir = folder(&good_tensors());
    baton_gpt2::train(&small(checkpoint_model(dir.path())), &JobContext::detached("ok"), &cpu_agent()).unwrap();
}

#[test]
fn seq_len_over_n_ctx() {
    let _serial = crate::one_job_at_a_time();
    let spec = Gpt2TrainSpec {
        seq_len: 2048,
        ..small(Some(Gpt2Model { source: Some(gpt2_model::Source::Preset("gpt2".into())) }))
    };
    assert_eq!(train_err(spec, &cpu_agent()), "spec.gpt2Train.seqLen: must be at most nCtx (1024) of model gpt2");
    // A checkpoint's nCtx is only known on the agent.
    let dir = folder(&good_tensors());
    let spec = Gpt2TrainSpec { seq_len: 17, ..small(checkpoint_model(dir.path())) };
    assert_eq!(
        train_err(spec, &cpu_agent()),
        format!("spec.gpt2Train.seqLen: must be at most nCtx (16) of model checkpoint {}", dir.path().display())
    );
}

#[test]
fn missing_checkpoint() {
    let _serial = crate::one_job_at_a_time();
    let spec = small(checkpoint_model(std::path::Path::new("/nonexistent/gpt2")));
    let refused = train_err(spec, &cpu_agent());
    assert!(refused.starts_with("checkpoint /nonexistent/gpt2: is not under this agent's data roots ("), "{refused}");
    assert!(refused.ends_with("), or does not exist"), "{refused}");
}

#[test]
fn missing_tensor() {
    let _serial = crate::one_job_at_a_time();
    let mut tensors = good_tensors();
    tensors.retain(|(n, _)| *n != "h.0.attn.c_attn.weight");
    let dir = folder(&tensors);
    assert_eq!(
        train_err(small(checkpoint_model(dir.path())), &cpu_agent()),
        format!("checkpoint {}: missing tensor h.0.attn.c_attn.weight", dir.path().display())
    );
}

#[test]
fn wrong_shaped_tensor() {
    let _serial = crate::one_job_at_a_time();
    let mut tensors = good_tensors();
    tensors[0] = ("wte.weight", vec![10, 4]);
    let dir = folder(&tensors);
    assert_eq!(
        train_err(small(checkpoint_model(dir.path())), &cpu_agent()),
        format!("checkpoint {}: tensor wte.weight has shape [10, 4], expected [10, 8]", dir.path().display())
    );
}

#[test]
fn cuda_on_a_cpu_agent() {
    let _serial = crate::one_job_at_a_time();
    let spec = Gpt2TrainSpec { device: "cuda:0".into(), ..small(custom(1, 1, 8, 16, 10)) };
    assert_eq!(train_err(spec, &cpu_agent()), "device cuda:0 requested but this agent has no CUDA devices");
    let spec = Gpt2InferSpec {
        model: custom(1, 1, 8, 16, 10),
        prompt_ids: vec![baton_proto::v1::TokenIds { ids: vec![1] }],
        max_new_tokens: 1,
        device: "cuda".into(),
        ..Default::default()
    };
    let err = baton_gpt2::infer(&spec, &JobContext::detached("cuda"), &cpu_agent()).unwrap_err();
    assert_eq!(err.to_string(), "device cuda requested but this agent has no CUDA devices");
}

#[test]
fn model_too_big_for_the_agent() {
    let _serial = crate::one_job_at_a_time();
    let caps = Gpt2Capabilities { memory_bytes: 3 << 30, ..cpu_agent() };
    let spec = small(Some(Gpt2Model { source: Some(gpt2_model::Source::Preset("gpt2-xl".into())) }));
    let err = train_err(spec, &caps);
    assert!(err.starts_with("model needs ~2") && err.ends_with(" GiB on cpu, agent has 3.0 GiB available"), "{err}");
}

/// With attention dropout on the CPU, backward keeps three batch × heads × seq² matrices
/// per layer; the estimate counts them (8 × 12 heads × 1024² × 12 bytes ≈ 1.1 GiB here, ~1.2 in all),
/// and without dropout the same job fits.
#[test]
fn attention_matrices_count_against_memory() {
    let _serial = crate::one_job_at_a_time();
    let caps = Gpt2Capabilities { memory_bytes: 1 << 30, ..cpu_agent() };
    let spec = |dropout| Gpt2TrainSpec {
        batch: 8,
        seq_len: 1024,
        dropout: Some(dropout),
        threads: 2,
        ..small(custom(1, 12, 48, 1024, 10))
    };
    let err = train_err(spec(0.1), &caps);
    assert!(err.starts_with("model needs ~1.2 GiB on cpu"), "{err}");
    baton_gpt2::train(&spec(0.0), &JobContext::detached("fits"), &caps).unwrap();
}

#[test]
fn auto_device_falls_back_to_cpu() {
    let _serial = crate::one_job_at_a_time();
    let spec = Gpt2TrainSpec { device: "auto".into(), ..small(custom(1, 1, 8, 16, 10)) };
    let report = baton_gpt2::train(&spec, &JobContext::detached("auto"), &cpu_agent()).unwrap();
    assert_eq!(report.config.unwrap().device, "cpu");
}
