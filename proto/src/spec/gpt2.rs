//! Validation of `gpt2Train` and `gpt2Infer` specs (pure; runs on the coordinator at submit),
//! the model presets, and the defaults every side agrees on.
//!
//! Checks that need the agent (checkpoint present, memory, device) run there, at job start.

use super::{Check, SpecError};
use crate::v1::{Gpt2InferSpec, Gpt2Model, Gpt2Size, Gpt2TrainSpec, gpt2_model, gpt2_train_spec};

pub const DEFAULT_N_CTX: u32 = 1024;
pub const DEFAULT_VOCAB_SIZE: u32 = 50257;
pub const DEFAULT_LR: f64 = 6e-4;
pub const DEFAULT_BETA1: f64 = 0.9;
pub const DEFAULT_BETA2: f64 = 0.95;
pub const DEFAULT_EPS: f64 = 1e-8;
pub const DEFAULT_WEIGHT_DECAY: f64 = 0.1;
pub const DEFAULT_GRAD_CLIP: f64 = 1.0;
pub const DTYPES: [&str; 2] = ["fp32", "bf16"];
pub const MAX_THREADS: u32 = 1024;

/// The named presets and their (nLayer, nHead, nEmbd), as Hugging Face's configs give them.
pub const PRESETS: [(&str, u32, u32, u32); 4] =
    [("gpt2", 12, 12, 768), ("gpt2-medium", 24, 16, 1024), ("gpt2-large", 36, 20, 1280), ("gpt2-xl", 48, 25, 1600)];

pub fn preset(name: &str) -> Option<Gpt2Size> {
    PRESETS.iter().find(|p| p.0 == name).map(|&(_, n_layer, n_head, n_embd)| Gpt2Size {
        n_layer,
        n_head,
        n_embd,
        n_ctx: DEFAULT_N_CTX,
        vocab_size: DEFAULT_VOCAB_SIZE,
    })
}

/// The model's size when the spec alone tells it (presets and custom sizes), with the
/// zero defaults filled in; `None` for checkpoints (their config.json tells, on the agent).
pub fn known_size(model: &Gpt2Model) -> Option<Gpt2Size> {
    match model.source.as_ref()? {
        gpt2_model::Source::Preset(name) => preset(name),
        gpt2_model::Source::Custom(size) => Some(Gpt2Size {
            n_layer: size.n_layer,
            n_head: size.n_head,
            n_embd: size.n_embd,
            n_ctx: if size.n_ctx == 0 { DEFAULT_N_CTX } else { size.n_ctx },
            vocab_size: if size.vocab_size == 0 { DEFAULT_VOCAB_SIZE } else { size.vocab_size },
        }),
        gpt2_model::Source::Checkpoint(_) => None,
    }
}

/// How the model is named in messages: `gpt2`, `custom`, or `checkpoint /path`.
pub fn model_name(model: &Gpt2Model) -> String {
    match &model.source {
        Some(gpt2_model::Source::Preset(name)) => name.clone(),
        Some(gpt2_model::Source::Custom(_)) => "custom".to_string(),
        Some(gpt2_model::Source::Checkpoint(path)) => format!("checkpoint {path}"),
        None => "none".to_string(),
    }
}

/// True when the job must go to an agent with CUDA (`cuda` or `cuda:N`; `auto` need not).
pub fn needs_cuda_train(spec: &Gpt2TrainSpec) -> bool {
    is_cuda(&spec.device)
}

pub fn needs_cuda_infer(spec: &Gpt2InferSpec) -> bool {
    is_cuda(&spec.device)
}

fn is_cuda(device: &str) -> bool {
    device == "cuda" || device.starts_with("cuda:")
}

pub fn validate_train(spec: &Gpt2TrainSpec) -> Check {
    const K: &str = "spec.gpt2Train";
    let size = validate_model(K, spec.model.as_ref())?;
    at_least_one(K, "batch", spec.batch)?;
    at_least_one(K, "seqLen", spec.seq_len)?;
    at_least_one(K, "steps", spec.steps)?;
    if let (Some(size), Some(model)) = (&size, &spec.model)
        && spec.seq_len > size.n_ctx
    {
        return Err(SpecError::new(
            format!("{K}.seqLen"),
            format!("must be at most nCtx ({}) of model {}", size.n_ctx, model_name(model)),
        ));
    }
    if let Some(a) = &spec.adamw {
        if let Some(lr) = a.lr {
            positive(&format!("{K}.adamw.lr"), lr)?;
        }
        for (name, beta) in [("beta1", a.beta1), ("beta2", a.beta2)] {
            if let Some(b) = beta
                && !(0.0..1.0).contains(&b)
            {
                return Err(SpecError::new(format!("{K}.adamw.{name}"), "must be in [0, 1)"));
            }
        }
        if let Some(eps) = a.eps {
            positive(&format!("{K}.adamw.eps"), eps)?;
        }
        if let Some(wd) = a.weight_decay {
            non_negative(&format!("{K}.adamw.weightDecay"), wd)?;
        }
    }
    if let Some(clip) = spec.grad_clip {
        non_negative(&format!("{K}.gradClip"), clip)?;
    }
    if let Some(p) = spec.dropout
        && !(0.0..1.0).contains(&p)
    {
        return Err(SpecError::new(format!("{K}.dropout"), "must be in [0, 1)"));
    }
    if let Some(peak) = spec.peak_flops {
        positive(&format!("{K}.peakFlops"), peak)?;
    }
    validate_runtime(K, &spec.dtype, &spec.device, spec.threads)?;
    match &spec.data {
        None | Some(gpt2_train_spec::Data::Synthetic(_)) => Ok(()),
        Some(gpt2_train_spec::Data::Text(t)) if t.is_empty() => {
            Err(SpecError::new(format!("{K}.text"), "must not be empty"))
        }
        Some(gpt2_train_spec::Data::TextFile(p)) if p.is_empty() => {
            Err(SpecError::new(format!("{K}.textFile"), "must be a path on the agent"))
        }
        Some(gpt2_train_spec::Data::TokenIds(t)) => {
            if t.ids.len() < 2 {
                return Err(SpecError::new(
                    format!("{K}.tokenIds.ids"),
                    "must hold at least 2 tokens (an input and its target)",
                ));
            }
            token_ids_in_vocab(&format!("{K}.tokenIds.ids"), &t.ids, size.as_ref())
        }
        Some(_) => Ok(()),
    }
}

pub fn validate_infer(spec: &Gpt2InferSpec) -> Check {
    const K: &str = "spec.gpt2Infer";
    let size = validate_model(K, spec.model.as_ref())?;
    match (spec.prompts.is_empty(), spec.prompt_ids.is_empty()) {
        (true, true) => {
            return Err(SpecError::new(format!("{K}.prompts"), "one of prompts or promptIds is required"));
        }
        (false, false) => {
            return Err(SpecError::new(format!("{K}.promptIds"), "give prompts or promptIds, not both"));
        }
        _ => {}
    }
    for (i, p) in spec.prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(SpecError::new(format!("{K}.prompts[{i}]"), "must not be empty"));
        }
    }
    at_least_one(K, "maxNewTokens", spec.max_new_tokens)?;
    for (i, p) in spec.prompt_ids.iter().enumerate() {
        let field = format!("{K}.promptIds[{i}].ids");
        if p.ids.is_empty() {
            return Err(SpecError::new(field, "must not be empty"));
        }
        token_ids_in_vocab(&field, &p.ids, size.as_ref())?;
        if let (Some(size), Some(model)) = (&size, &spec.model) {
            let total = p.ids.len() as u64 + u64::from(spec.max_new_tokens);
            if total > u64::from(size.n_ctx) {
                return Err(SpecError::new(
                    format!("{K}.maxNewTokens"),
                    format!(
                        "prompt {i} ({} tokens) plus maxNewTokens ({}) must be at most nCtx ({}) of model {}",
                        p.ids.len(),
                        spec.max_new_tokens,
                        size.n_ctx,
                        model_name(model)
                    ),
                ));
            }
        }
    }
    if let Some(s) = &spec.sampling {
        if !s.temperature.is_finite() || s.temperature < 0.0 {
            return Err(SpecError::new(format!("{K}.sampling.temperature"), "must be 0 (greedy) or positive"));
        }
        if !(0.0..=1.0).contains(&s.top_p) {
            return Err(SpecError::new(format!("{K}.sampling.topP"), "must be in [0, 1]"));
        }
    }
    validate_runtime(K, &spec.dtype, &spec.device, spec.threads)
}

fn validate_model(k: &str, model: Option<&Gpt2Model>) -> Result<Option<Gpt2Size>, SpecError> {
    let source = model
        .and_then(|m| m.source.as_ref())
        .ok_or_else(|| SpecError::new(format!("{k}.model"), "one of preset, custom or checkpoint is required"))?;
    match source {
        gpt2_model::Source::Preset(name) => match preset(name) {
            Some(size) => Ok(Some(size)),
            None => {
                let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
                Err(SpecError::new(
                    format!("{k}.model.preset"),
                    format!("unknown preset {name:?}: one of {}", names.join(", ")),
                ))
            }
        },
        gpt2_model::Source::Custom(size) => {
            for (name, v) in [("nLayer", size.n_layer), ("nHead", size.n_head), ("nEmbd", size.n_embd)] {
                if v == 0 {
                    return Err(SpecError::new(format!("{k}.model.custom.{name}"), "must be at least 1"));
                }
            }
            if size.n_embd % size.n_head != 0 {
                return Err(SpecError::new(
                    format!("{k}.model.custom.nHead"),
                    format!("must divide nEmbd ({}); got {}", size.n_embd, size.n_head),
                ));
            }
            Ok(model.and_then(known_size))
        }
        gpt2_model::Source::Checkpoint(path) => {
            if path.is_empty() {
                return Err(SpecError::new(format!("{k}.model.checkpoint"), "must be a folder on the agent"));
            }
            Ok(None)
        }
    }
}

fn validate_runtime(k: &str, dtype: &str, device: &str, threads: u32) -> Check {
    if !dtype.is_empty() && !DTYPES.contains(&dtype) {
        return Err(SpecError::new(
            format!("{k}.dtype"),
            format!("must be one of {}; got {dtype:?}", DTYPES.join(", ")),
        ));
    }
    let device_ok = match device {
        "" | "auto" | "cpu" | "cuda" => true,
        d => d.strip_prefix("cuda:").is_some_and(|n| !n.is_empty() && n.parse::<u32>().is_ok()),
    };
    if !device_ok {
        return Err(SpecError::new(
            format!("{k}.device"),
            format!("must be auto, cpu, cuda or cuda:N; got {device:?}"),
        ));
    }
    if threads > MAX_THREADS {
        return Err(SpecError::new(format!("{k}.threads"), format!("must be at most {MAX_THREADS}")));
    }
    Ok(())
}

fn token_ids_in_vocab(field: &str, ids: &[u32], size: Option<&Gpt2Size>) -> Check {
    if let Some(size) = size
        && let Some(bad) = ids.iter().find(|&&id| id >= size.vocab_size)
    {
        return Err(SpecError::new(
            field,
            format!("token id {bad} is outside the vocabulary (vocabSize {})", size.vocab_size),
        ));
    }
    Ok(())
}

fn at_least_one(k: &str, name: &str, v: u32) -> Check {
    if v == 0 { Err(SpecError::new(format!("{k}.{name}"), "must be at least 1")) } else { Ok(()) }
}

fn positive(field: &str, v: f64) -> Check {
    if v.is_finite() && v > 0.0 { Ok(()) } else { Err(SpecError::new(field, "must be positive")) }
}

fn non_negative(field: &str, v: f64) -> Check {
    if v.is_finite() && v >= 0.0 { Ok(()) } else { Err(SpecError::new(field, "must be 0 or positive")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_request;
    use crate::v1::{AdamW, Gpt2Sampling, TokenIds, job_spec};

    fn model(preset: &str) -> Option<Gpt2Model> {
        Some(Gpt2Model { source: Some(gpt2_model::Source::Preset(preset.into())) })
    }

    fn train() -> Gpt2TrainSpec {
        Gpt2TrainSpec { model: model("gpt2"), batch: 1, seq_len: 128, steps: 3, ..Default::default() }
    }

    fn infer() -> Gpt2InferSpec {
        Gpt2InferSpec { model: model("gpt2"), prompts: vec!["Hello".into()], max_new_tokens: 8, ..Default::default() }
    }

    fn custom(n_layer: u32, n_head: u32, n_embd: u32) -> Option<Gpt2Model> {
        Some(Gpt2Model {
            source: Some(gpt2_model::Source::Custom(Gpt2Size { n_layer, n_head, n_embd, n_ctx: 64, vocab_size: 0 })),
        })
    }

    #[test]
    fn good_specs_pass() {
        validate_train(&train()).unwrap();
        validate_infer(&infer()).unwrap();
    }

    #[test]
    fn train_rules_name_the_field() {
        let cases: Vec<(Gpt2TrainSpec, &str)> = vec![
            (
                Gpt2TrainSpec { seq_len: 1025, ..train() },
                "spec.gpt2Train.seqLen: must be at most nCtx (1024) of model gpt2",
            ),
            (
                Gpt2TrainSpec { model: custom(2, 2, 64), seq_len: 65, ..train() },
                "spec.gpt2Train.seqLen: must be at most nCtx (64) of model custom",
            ),
            (
                Gpt2TrainSpec { model: None, ..train() },
                "spec.gpt2Train.model: one of preset, custom or checkpoint is required",
            ),
            (
                Gpt2TrainSpec { model: model("gpt3"), ..train() },
                "spec.gpt2Train.model.preset: unknown preset \"gpt3\": one of gpt2, gpt2-medium, gpt2-large, gpt2-xl",
            ),
            (
                Gpt2TrainSpec { model: custom(2, 3, 64), ..train() },
                "spec.gpt2Train.model.custom.nHead: must divide nEmbd (64); got 3",
            ),
            (
                Gpt2TrainSpec { model: custom(0, 2, 64), ..train() },
                "spec.gpt2Train.model.custom.nLayer: must be at least 1",
            ),
            (Gpt2TrainSpec { batch: 0, ..train() }, "spec.gpt2Train.batch: must be at least 1"),
            (Gpt2TrainSpec { steps: 0, ..train() }, "spec.gpt2Train.steps: must be at least 1"),
            (Gpt2TrainSpec { seq_len: 0, ..train() }, "spec.gpt2Train.seqLen: must be at least 1"),
            (
                Gpt2TrainSpec { dtype: "fp16".into(), ..train() },
                "spec.gpt2Train.dtype: must be one of fp32, bf16; got \"fp16\"",
            ),
            (
                Gpt2TrainSpec { device: "gpu".into(), ..train() },
                "spec.gpt2Train.device: must be auto, cpu, cuda or cuda:N; got \"gpu\"",
            ),
            (Gpt2TrainSpec { dropout: Some(1.0), ..train() }, "spec.gpt2Train.dropout: must be in [0, 1)"),
            (Gpt2TrainSpec { grad_clip: Some(-1.0), ..train() }, "spec.gpt2Train.gradClip: must be 0 or positive"),
            (
                Gpt2TrainSpec { adamw: Some(AdamW { beta2: Some(1.0), ..Default::default() }), ..train() },
                "spec.gpt2Train.adamw.beta2: must be in [0, 1)",
            ),
            (
                Gpt2TrainSpec { adamw: Some(AdamW { lr: Some(0.0), ..Default::default() }), ..train() },
                "spec.gpt2Train.adamw.lr: must be positive",
            ),
            (
                Gpt2TrainSpec {
                    data: Some(gpt2_train_spec::Data::TokenIds(TokenIds { ids: vec![1, 50257] })),
                    ..train()
                },
                "spec.gpt2Train.tokenIds.ids: token id 50257 is outside the vocabulary (vocabSize 50257)",
            ),
            (
                Gpt2TrainSpec { data: Some(gpt2_train_spec::Data::Text(String::new())), ..train() },
                "spec.gpt2Train.text: must not be empty",
            ),
        ];
        for (spec, want) in cases {
            let got = validate_train(&spec).unwrap_err().to_string();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn infer_rules_name_the_field() {
        let cases: Vec<(Gpt2InferSpec, &str)> = vec![
            (
                Gpt2InferSpec { prompts: vec![], ..infer() },
                "spec.gpt2Infer.prompts: one of prompts or promptIds is required",
            ),
            (
                Gpt2InferSpec { prompt_ids: vec![TokenIds { ids: vec![1] }], ..infer() },
                "spec.gpt2Infer.promptIds: give prompts or promptIds, not both",
            ),
            (Gpt2InferSpec { max_new_tokens: 0, ..infer() }, "spec.gpt2Infer.maxNewTokens: must be at least 1"),
            (
                Gpt2InferSpec {
                    model: custom(2, 2, 64),
                    prompts: vec![],
                    prompt_ids: vec![TokenIds { ids: vec![1; 60] }],
                    max_new_tokens: 5,
                    ..infer()
                },
                "spec.gpt2Infer.maxNewTokens: prompt 0 (60 tokens) plus maxNewTokens (5) must be at most nCtx (64) of model custom",
            ),
            (
                Gpt2InferSpec { sampling: Some(Gpt2Sampling { temperature: -1.0, ..Default::default() }), ..infer() },
                "spec.gpt2Infer.sampling.temperature: must be 0 (greedy) or positive",
            ),
            (
                Gpt2InferSpec { sampling: Some(Gpt2Sampling { top_p: 1.5, ..Default::default() }), ..infer() },
                "spec.gpt2Infer.sampling.topP: must be in [0, 1]",
            ),
            (
                Gpt2InferSpec { device: "cuda:x".into(), ..infer() },
                "spec.gpt2Infer.device: must be auto, cpu, cuda or cuda:N; got \"cuda:x\"",
            ),
        ];
        for (spec, want) in cases {
            let got = validate_infer(&spec).unwrap_err().to_string();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn cuda_jobs_are_marked() {
        assert!(!needs_cuda_train(&train()));
        assert!(!needs_cuda_train(&Gpt2TrainSpec { device: "auto".into(), ..train() }));
        assert!(needs_cuda_train(&Gpt2TrainSpec { device: "cuda:1".into(), ..train() }));
        assert!(needs_cuda_infer(&Gpt2InferSpec { device: "cuda".into(), ..infer() }));
    }

    #[test]
    fn example_spec_json_parses_and_validates() {
        let req = parse_request(
            r#"{"spec":{"name":"t","gpt2Train":{"model":{"custom":{"nLayer":2,"nHead":2,"nEmbd":64,"nCtx":128}},
                "batch":2,"seqLen":64,"steps":3,"warmupSteps":1,"adamw":{"lr":0.001},"gradClip":1.0,
                "dtype":"fp32","device":"cpu","threads":2,"seed":7,"synthetic":{}}}}"#,
        )
        .unwrap();
        let Some(job_spec::Kind::Gpt2Train(spec)) = req.spec.unwrap().kind else { panic!("not gpt2Train") };
        assert_eq!(spec.adamw.unwrap().lr, Some(0.001));
        assert_eq!(spec.grad_clip, Some(1.0));
        validate_train(&Gpt2TrainSpec { adamw: None, ..spec }).unwrap();
    }
}
