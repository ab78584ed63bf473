//! The `gpt2Train` job: timed training steps (data, forward + loss, backward, clip + AdamW).

use crate::Gpt2Error;
use crate::adamw::{AdamW, AdamWConfig};
use crate::device::{self, Gpt2Capabilities};
use crate::files::DataRoots;
use crate::model;
use crate::setup::{self, ModelPlan};
use crate::stats::phase_stats;
use crate::tokenizer::Gpt2Tokenizer;
use baton_proto::context::JobContext;
use baton_proto::spec::SpecError;
use baton_proto::spec::gpt2 as rules;
use baton_proto::v1::{
    AdamW as AdamWSpec, Gpt2CudaEventTimes, Gpt2TrainReport, Gpt2TrainSpec, PhaseStats, Progress, SyntheticTokens,
    gpt2_train_spec::Data,
};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Runs a training job. Blocking: the agent calls it inside `spawn_blocking`. Stops between
/// steps when `ctx` is cancelled, returning [`Gpt2Error::Cancelled`].
pub fn train(spec: &Gpt2TrainSpec, ctx: &JobContext, caps: &Gpt2Capabilities) -> Result<Gpt2TrainReport, Gpt2Error> {
    rules::validate_train(spec)?;
    let spec = with_defaults(spec);
    let device = device::resolve(&spec.device, caps)?;
    let dtype = setup::dtype(&spec.dtype);
    let bf16 = dtype == "bf16";
    let mut plan = ModelPlan::new(spec.model.as_ref(), &caps.data_roots)?;
    if let Some(p) = spec.dropout {
        plan.config.set_dropout(p);
    }
    if i64::from(spec.seq_len) > plan.config.n_ctx {
        return Err(SpecError::new(
            "spec.gpt2Train.seqLen",
            format!("must be at most nCtx ({}) of model {}", plan.config.n_ctx, plan.name),
        )
        .into());
    }
    let compute = if bf16 { Kind::BFloat16 } else { Kind::Float };
    let attention_matrices = model::explicit_attention(device.device, compute, plan.config.attn_pdrop);
    setup::check_memory(&device, setup::train_bytes(&plan.config, spec.batch, spec.seq_len, bf16, attention_matrices))?;
    let mut data = TrainData::new(&spec, plan.config.vocab_size, &caps.data_roots, ctx)?;
    let threads = setup::set_threads(spec.threads, caps.torch_threads);
    setup::seed_torch(spec.seed);
    device.reset_peak_memory();

    let name = plan.name.clone();
    let mut model = plan.build(device.device)?;
    model.set_trainable();
    model.set_compute_kind(compute);
    let params = model.parameters();
    let adamw = spec.adamw.unwrap_or_default();
    let mut optimizer = AdamW::new(
        &params,
        AdamWConfig {
            lr: adamw.lr.unwrap_or(rules::DEFAULT_LR),
            beta1: adamw.beta1.unwrap_or(rules::DEFAULT_BETA1),
            beta2: adamw.beta2.unwrap_or(rules::DEFAULT_BETA2),
            eps: adamw.eps.unwrap_or(rules::DEFAULT_EPS),
            weight_decay: adamw.weight_decay.unwrap_or(rules::DEFAULT_WEIGHT_DECAY),
        },
        threads as usize,
    );
    let grad_clip = spec.grad_clip.unwrap_or(rules::DEFAULT_GRAD_CLIP);
    let (batch, seq) = (i64::from(spec.batch), i64::from(spec.seq_len));
    let total = spec.warmup_steps + spec.steps;
    let job_span = tracing::info_span!(
        "gpt2.train",
        gen_ai.operation.name = "train",
        gen_ai.request.model = %name,
        gpt2.batch = spec.batch,
        gpt2.seq_len = spec.seq_len,
        gpt2.dtype = dtype,
        gpt2.device = %device.label,
        gpt2.threads = threads,
    );
    let _job = job_span.enter();

    let mut times = PhaseTimes::default();
    let mut event_times = PhaseTimes::default();
    let mut losses = Vec::with_capacity(total as usize);
    for i in 0..total {
        if ctx.is_cancelled() {
            return Err(Gpt2Error::Cancelled);
        }
        let warmup = i < spec.warmup_steps;
        let step_span = tracing::info_span!(
            "gpt2.train.step",
            step = i,
            warmup,
            gen_ai.usage.input_tokens = batch * seq,
            loss = tracing::field::Empty,
        );
        let _step = step_span.enter();
        let start = Instant::now();
        let mut marks = vec![device.event()];

        let phase = Instant::now();
        let (input, target) = {
            let _s = tracing::info_span!("data").entered();
            let tokens = data.next_batch(batch, seq).to_device(device.device);
            let pair = (tokens.narrow(1, 0, seq), tokens.narrow(1, 1, seq));
            marks.push(device.boundary());
            pair
        };
        let data_ms = ms(phase);

        let phase = Instant::now();
        let loss = {
            let _s = tracing::info_span!("forward").entered();
            let loss = model.train_loss(&input, &target);
            marks.push(device.boundary());
            loss
        };
        let forward_ms = ms(phase);

        let phase = Instant::now();
        let grads = {
            let _s = tracing::info_span!("backward").entered();
            let grads = model.gradients(&loss)?;
            marks.push(device.boundary());
            grads
        };
        let backward_ms = ms(phase);

        let phase = Instant::now();
        {
            let _s = tracing::info_span!("optimizer").entered();
            optimizer.step(&params, &grads, grad_clip)?;
            drop(grads);
            marks.push(device.boundary());
        }
        let optimizer_ms = ms(phase);
        let step_ms = ms(start);

        let loss = loss.loss.f_double_value(&[])?;
        step_span.record("loss", loss);
        losses.push(loss);
        if !warmup {
            times.push(step_ms, data_ms, forward_ms, backward_ms, optimizer_ms);
            if let Some([step, data, forward, backward, optimizer]) = event_phases(&marks) {
                event_times.push(step, data, forward, backward, optimizer);
            }
        }
        ctx.report(Progress {
            fraction: f64::from(i + 1) / f64::from(total),
            message: format!("step {}/{}{}", i + 1, total, if warmup { " (warm-up)" } else { "" }),
            metrics: [("loss".to_string(), loss), ("step_ms".to_string(), step_ms)].into(),
        });
    }

    let [step, data, forward, backward, optimizer] = times.stats();
    let tokens = f64::from(spec.batch) * f64::from(spec.seq_len);
    let c = &model.config;
    // PaLM's estimate: 6·N per token for the matmuls (N without position embeddings) plus
    // 12·layers·width·seq per token for attention.
    let matmul_params = model.config.parameters() - (c.n_ctx * c.n_embd) as u64;
    let flops_per_step =
        tokens * (6.0 * matmul_params as f64 + 12.0 * (c.n_layer * c.n_embd) as f64 * f64::from(spec.seq_len));
    let achieved = flops_per_step / (step.mean_ms / 1000.0);
    let (peak, peak_source) = match spec.peak_flops {
        Some(p) => (p, "peakFlops given in the spec".to_string()),
        None => device::peak_flops(&device, threads, bf16),
    };
    let (peak_memory_bytes, peak_memory_source) = device.peak_memory();
    Ok(Gpt2TrainReport {
        config: Some(setup::run_config(&model, &name, dtype, &device, spec.seed)),
        spec: Some(spec),
        data: Some(data),
        forward: Some(forward),
        backward: Some(backward),
        optimizer: Some(optimizer),
        tokens_per_s: tokens / (step.mean_ms / 1000.0),
        step: Some(step),
        flops_per_step,
        achieved_flops_per_s: achieved,
        mfu: if peak > 0.0 { achieved / peak } else { 0.0 },
        peak_flops_per_s: peak,
        peak_source,
        peak_memory_bytes,
        peak_memory_source,
        loss: losses,
        cuda_events: (!event_times.step.is_empty()).then(|| {
            let [step, data, forward, backward, optimizer] = event_times.stats().map(Some);
            Gpt2CudaEventTimes { step, data, forward, backward, optimizer }
        }),
    })
}

/// A step's phases from the CUDA events at its boundaries (start, after data, forward,
/// backward, optimizer): step, data, forward, backward, optimizer in ms. None unless
/// every event was recorded and timed.
fn event_phases(marks: &[Option<crate::cuda::Event>]) -> Option<[f64; 5]> {
    let [Some(e0), Some(e1), Some(e2), Some(e3), Some(e4)] = marks else { return None };
    Some([e0.elapsed_ms(e4)?, e0.elapsed_ms(e1)?, e1.elapsed_ms(e2)?, e2.elapsed_ms(e3)?, e3.elapsed_ms(e4)?])
}

/// The spec with every default written in, so the report says exactly what ran.
fn with_defaults(spec: &Gpt2TrainSpec) -> Gpt2TrainSpec {
    let a = spec.adamw.unwrap_or_default();
    Gpt2TrainSpec {
        adamw: Some(AdamWSpec {
            lr: a.lr.or(Some(rules::DEFAULT_LR)),
            beta1: a.beta1.or(Some(rules::DEFAULT_BETA1)),
            beta2: a.beta2.or(Some(rules::DEFAULT_BETA2)),
            eps: a.eps.or(Some(rules::DEFAULT_EPS)),
            weight_decay: a.weight_decay.or(Some(rules::DEFAULT_WEIGHT_DECAY)),
        }),
        grad_clip: spec.grad_clip.or(Some(rules::DEFAULT_GRAD_CLIP)),
        dtype: setup::dtype(&spec.dtype).to_string(),
        device: if spec.device.is_empty() { "auto".into() } else { spec.device.clone() },
        data: spec.data.clone().or(Some(Data::Synthetic(SyntheticTokens {}))),
        ..spec.clone()
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[derive(Default)]
struct PhaseTimes {
    step: Vec<f64>,
    data: Vec<f64>,
    forward: Vec<f64>,
    backward: Vec<f64>,
    optimizer: Vec<f64>,
}

impl PhaseTimes {
    fn push(&mut self, step: f64, data: f64, forward: f64, backward: f64, optimizer: f64) {
        self.step.push(step);
        self.data.push(data);
        self.forward.push(forward);
        self.backward.push(backward);
        self.optimizer.push(optimizer);
    }

    /// Statistics of step, data, forward, backward and optimizer, in that order.
    fn stats(&self) -> [PhaseStats; 5] {
        [&self.step, &self.data, &self.forward, &self.backward, &self.optimizer].map(|ms| phase_stats(ms))
    }
}

/// Batches of `batch × (seqLen + 1)` token ids: inputs and, shifted by one, targets.
struct TrainData {
    source: Source,
    repeat: Option<Tensor>,
    repeat_batch: bool,
}

enum Source {
    Synthetic {
        vocab_size: i64,
    },
    /// Consecutive windows over the tokens, wrapping around at the end.
    Tokens {
        ids: Vec<i64>,
        cursor: usize,
    },
}

impl TrainData {
    fn new(spec: &Gpt2TrainSpec, vocab_size: i64, roots: &DataRoots, ctx: &JobContext) -> Result<Self, Gpt2Error> {
        let tokens = match &spec.data {
            None | Some(Data::Synthetic(_)) => None,
            Some(Data::Text(text)) => Some(Gpt2Tokenizer::new().encode(text)),
            Some(Data::TextFile(path)) => {
                let text = roots
                    .read_text(path, || ctx.is_cancelled())
                    .map_err(|e| Gpt2Error::Data(format!("textFile {path} {e}")))?
                    .ok_or(Gpt2Error::Cancelled)?;
                Some(Gpt2Tokenizer::new().encode(&text))
            }
            Some(Data::TokenIds(t)) => Some(t.ids.clone()),
        };
        let source = match tokens {
            None => Source::Synthetic { vocab_size },
            Some(ids) => {
                let need = spec.seq_len as usize + 1;
                if ids.len() < need {
                    return Err(Gpt2Error::Data(format!(
                        "{} tokens; seqLen {} needs at least {need}",
                        ids.len(),
                        spec.seq_len
                    )));
                }
                if let Some(bad) = ids.iter().find(|&&id| i64::from(id) >= vocab_size) {
                    return Err(Gpt2Error::Data(format!(
                        "token id {bad} is outside the model's vocabulary (vocabSize {vocab_size})"
                    )));
                }
                Source::Tokens { ids: ids.into_iter().map(i64::from).collect(), cursor: 0 }
            }
        };
        Ok(Self { source, repeat: None, repeat_batch: spec.repeat_batch })
    }

    /// The next `[batch, seq + 1]` int64 batch on the CPU.
    fn next_batch(&mut self, batch: i64, seq: i64) -> Tensor {
        if let Some(t) = &self.repeat {
            return t.shallow_clone();
        }
        let t = match &mut self.source {
            Source::Synthetic { vocab_size } => {
                Tensor::randint(*vocab_size, [batch, seq + 1], (Kind::Int64, Device::Cpu))
            }
            Source::Tokens { ids, cursor } => {
                let row = (seq + 1) as usize;
                let mut rows = Vec::with_capacity(batch as usize * row);
                for _ in 0..batch {
                    if *cursor + row > ids.len() {
                        *cursor = 0;
                    }
                    rows.extend_from_slice(&ids[*cursor..*cursor + row]);
                    *cursor += row;
                }
                Tensor::from_slice(&rows).view([batch, seq + 1])
            }
        };
        if self.repeat_batch {
            self.repeat = Some(t.shallow_clone());
        }
        t
    }
}
