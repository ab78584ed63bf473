//! Hugging Face GPT-2 checkpoint folders: config.json + model.safetensors.
//!
//! Tensor names may carry `transformer.` (what `save_pretrained` writes for
//! `GPT2LMHeadModel`) or not (OpenAI's original upload); the attention-mask buffers
//! (`attn.bias`, `attn.masked_bias`) and the tied `lm_head.weight` are not parameters.

use crate::Gpt2Error;
use crate::model::{Gpt2, Gpt2Config};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn error(path: &Path, problem: impl Into<String>) -> Gpt2Error {
    Gpt2Error::Checkpoint { path: path.display().to_string(), problem: problem.into() }
}

/// The files of a checkpoint folder that are read.
pub const FILES: [&str; 2] = ["config.json", "model.safetensors"];

/// Reads config.json of a checkpoint folder.
pub fn read_config(dir: &Path) -> Result<Gpt2Config, Gpt2Error> {
    if !dir.is_dir() {
        return Err(error(dir, "no such folder on this agent"));
    }
    let file = dir.join("config.json");
    let text = std::fs::read_to_string(&file).map_err(|e| error(dir, format!("cannot read config.json: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| error(dir, format!("config.json is not valid JSON: {e}")))?;
    let int = |names: &[&str]| -> Result<i64, Gpt2Error> {
        names
            .iter()
            .find_map(|n| json.get(*n).and_then(|v| v.as_i64()))
            .filter(|v| *v >= 1)
            .ok_or_else(|| error(dir, format!("config.json needs a positive integer {}", names[0])))
    };
    let float = |name: &str, default: f64| json.get(name).and_then(|v| v.as_f64()).unwrap_or(default);
    if let Some(act) = json.get("activation_function").and_then(|v| v.as_str())
        && act != "gelu_new"
        && act != "gelu_pytorch_tanh"
    {
        return Err(error(dir, format!("activation_function {act:?} is not supported (GPT-2 uses gelu_new)")));
    }
    for flag in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"] {
        if json.get(flag).and_then(|v| v.as_bool()) == Some(true) {
            return Err(error(dir, format!("{flag} is not supported")));
        }
    }
    let n_embd = int(&["n_embd", "hidden_size"])?;
    let n_head = int(&["n_head", "num_attention_heads"])?;
    if n_embd % n_head != 0 {
        return Err(error(dir, format!("n_head ({n_head}) must divide n_embd ({n_embd})")));
    }
    Ok(Gpt2Config {
        n_layer: int(&["n_layer", "num_hidden_layers"])?,
        n_head,
        n_embd,
        n_inner: json.get("n_inner").and_then(|v| v.as_i64()).unwrap_or(4 * n_embd),
        n_ctx: int(&["n_positions", "n_ctx"])?,
        vocab_size: int(&["vocab_size"])?,
        layer_norm_epsilon: float("layer_norm_epsilon", 1e-5),
        embd_pdrop: float("embd_pdrop", 0.1),
        attn_pdrop: float("attn_pdrop", 0.1),
        resid_pdrop: float("resid_pdrop", 0.1),
    })
}

/// Loads a checkpoint folder onto `device` in fp32, naming any missing or mis-shaped tensor.
pub fn load(dir: &Path, config: Gpt2Config, device: Device) -> Result<Gpt2, Gpt2Error> {
    let file = dir.join("model.safetensors");
    if !file.is_file() {
        return Err(error(dir, "no model.safetensors in the folder"));
    }
    let tensors = Tensor::read_safetensors(&file).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        error(dir, format!("cannot read model.safetensors: {first}"))
    })?;
    let mut by_name: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(name, t)| (name.strip_prefix("transformer.").map(str::to_string).unwrap_or(name), t))
        .collect();
    Gpt2::from_tensors(config, |name, shape| {
        let t = by_name.remove(name).ok_or_else(|| error(dir, format!("missing tensor {name}")))?;
        if t.size() != shape {
            return Err(error(dir, format!("tensor {name} has shape {:?}, expected {shape:?}", t.size())));
        }
        Ok(t.to_kind(Kind::Float).to_device(device).contiguous())
    })
}
