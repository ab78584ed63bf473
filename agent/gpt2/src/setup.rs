//! What train and infer jobs share before the first step: the model's config and
//! weights, threads, the memory check, and the run configuration for reports.

use crate::device::{JobDevice, cpu_info};
use crate::files::DataRoots;
use crate::model::{Gpt2, Gpt2Config};
use crate::{Gpt2Error, checkpoint};
use baton_proto::spec::gpt2::{known_size, model_name};
use baton_proto::v1::{Gpt2Model, Gpt2RunConfig, gpt2_model};
use std::path::PathBuf;

/// The model a job asked for, before its weights exist.
pub struct ModelPlan {
    pub config: Gpt2Config,
    pub name: String,
    checkpoint: Option<PathBuf>,
}

impl ModelPlan {
    /// Reads the preset, custom size or checkpoint config (a validated spec has a model).
    pub fn new(model: Option<&Gpt2Model>, roots: &DataRoots) -> Result<Self, Gpt2Error> {
        let missing = || baton_proto::spec::SpecError::new("model", "one of preset, custom or checkpoint is required");
        let model = model.ok_or_else(missing)?;
        let name = model_name(model);
        if let Some(gpt2_model::Source::Checkpoint(path)) = &model.source {
            let dir = roots
                .folder(path, &checkpoint::FILES)
                .map_err(|problem| Gpt2Error::Checkpoint { path: path.clone(), problem })?;
            let config = checkpoint::read_config(&dir)?;
            return Ok(Self { config, name, checkpoint: Some(dir) });
        }
        let size = known_size(model).ok_or_else(missing)?;
        Ok(Self { config: Gpt2Config::from_size(&size), name, checkpoint: None })
    }

    /// Random weights (seeded by the caller) or the checkpoint's, in fp32 on `device`.
    pub fn build(self, device: tch::Device) -> Result<Gpt2, Gpt2Error> {
        match self.checkpoint {
            Some(dir) => checkpoint::load(&dir, self.config, device),
            None => Ok(Gpt2::random(self.config, device)),
        }
    }
}

/// Refuses a job whose estimated memory exceeds what the device has (0: unknown, allowed).
pub fn check_memory(device: &JobDevice, needed_bytes: u64) -> Result<(), Gpt2Error> {
    if device.memory_bytes > 0 && needed_bytes > device.memory_bytes {
        return Err(Gpt2Error::NotEnoughMemory {
            device: device.label.clone(),
            needed_bytes,
            available_bytes: device.memory_bytes,
        });
    }
    Ok(())
}

/// Training memory: fp32 weights, gradients and two AdamW moments (16 bytes per
/// parameter, +2 for bf16 copies), activations kept for backward (~10·nEmbd + 3·nInner
/// values per token and layer) and logits with their gradient. With `attention_matrices`
/// (attention dropout in fp32 on the CPU, where attention is computed explicitly), also
/// the three batch × heads × seq² matrices per layer that backward keeps: probabilities,
/// dropout mask and dropped probabilities.
pub fn train_bytes(c: &Gpt2Config, batch: u32, seq_len: u32, bf16: bool, attention_matrices: bool) -> u64 {
    let params = c.parameters() as f64;
    let tokens = f64::from(batch) * f64::from(seq_len);
    let per_param = if bf16 { 18.0 } else { 16.0 };
    let activations = c.n_layer as f64 * tokens * (10 * c.n_embd + 3 * c.n_inner) as f64 * 4.0;
    let logits = tokens * c.vocab_size as f64 * 4.0 * 3.0;
    let attention = if attention_matrices {
        c.n_layer as f64 * tokens * c.n_head as f64 * f64::from(seq_len) * 4.0 * 3.0
    } else {
        0.0
    };
    (params * per_param + activations + logits + attention) as u64
}

/// Inference memory: fp32 weights while loading, the KV cache, and the prompt's activations.
pub fn infer_bytes(c: &Gpt2Config, batch: usize, total_len: usize, bf16: bool) -> u64 {
    let params = c.parameters() as f64;
    let elem = if bf16 { 2.0 } else { 4.0 };
    let tokens = (batch * total_len) as f64;
    let cache = 2.0 * c.n_layer as f64 * tokens * c.n_embd as f64 * elem;
    let activations = tokens * (4 * c.n_embd + 2 * c.n_inner) as f64 * 4.0 + batch as f64 * c.vocab_size as f64 * 4.0;
    (params * 4.0 + cache + activations) as u64
}

/// libtorch's intra-op threads for this job (the spec's, else the agent's default). Set on
/// the calling thread, which runs the whole job.
pub fn set_threads(spec_threads: u32, default_threads: u32) -> u32 {
    let threads = if spec_threads == 0 { default_threads.max(1) } else { spec_threads };
    tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
    threads
}

pub fn run_config(model: &Gpt2, name: &str, dtype: &str, device: &JobDevice, seed: u64) -> Gpt2RunConfig {
    Gpt2RunConfig {
        model: name.to_string(),
        size: Some(model.config.size()),
        parameters: model.config.parameters(),
        dropout: model.config.resid_pdrop,
        dtype: dtype.to_string(),
        device: device.label.clone(),
        device_name: device.name.clone(),
        torch_threads: u32::try_from(tch::get_num_threads()).unwrap_or(0),
        cpu_cores: cpu_info().cores,
        seed,
        torch_version: crate::LIBTORCH_VERSION.to_string(),
        tch_version: crate::TCH_VERSION.to_string(),
        baton_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// `fp32` unless the spec says `bf16`.
pub fn dtype(spec_dtype: &str) -> &'static str {
    if spec_dtype == "bf16" { "bf16" } else { "fp32" }
}

/// The spec's seed as libtorch takes it.
pub fn seed_torch(seed: u64) {
    // libtorch reads the i64 back as the same 64 bits: every u64 seed stays distinct.
    tch::manual_seed(seed as i64);
}
