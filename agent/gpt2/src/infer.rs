//! The `gpt2Infer` job: timed generation (time to first token, time per output token).

use crate::Gpt2Error;
use crate::device::{self, Gpt2Capabilities, JobDevice};
use crate::model::{Gpt2, LeftPadding};
use crate::setup::{self, ModelPlan};
use crate::stats::phase_stats;
use crate::tokenizer::Gpt2Tokenizer;
use baton_proto::context::JobContext;
use baton_proto::spec::gpt2 as rules;
use baton_proto::v1::{Gpt2Generation, Gpt2InferReport, Gpt2InferSpec, Gpt2Sampling, Progress};
use std::time::Instant;
use tch::{Kind, Tensor};

/// Runs an inference job. Blocking: the agent calls it inside `spawn_blocking`. Stops
/// between tokens when `ctx` is cancelled, returning [`Gpt2Error::Cancelled`].
pub fn infer(spec: &Gpt2InferSpec, ctx: &JobContext, caps: &Gpt2Capabilities) -> Result<Gpt2InferReport, Gpt2Error> {
    rules::validate_infer(spec)?;
    let spec = Gpt2InferSpec {
        kv_cache: spec.kv_cache.or(Some(true)),
        sampling: spec.sampling.or(Some(Gpt2Sampling::default())),
        dtype: setup::dtype(&spec.dtype).to_string(),
        device: if spec.device.is_empty() { "auto".into() } else { spec.device.clone() },
        ..spec.clone()
    };
    let device = device::resolve(&spec.device, caps)?;
    let dtype = setup::dtype(&spec.dtype);
    let plan = ModelPlan::new(spec.model.as_ref(), &caps.data_roots)?;
    let tokenizer = Gpt2Tokenizer::new();
    let prompts: Vec<Vec<u32>> = if spec.prompts.is_empty() {
        spec.prompt_ids.iter().map(|p| p.ids.clone()).collect()
    } else {
        spec.prompts.iter().map(|p| tokenizer.encode(p)).collect()
    };
    let prompt_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let c = &plan.config;
    if let Some(bad) = prompts.iter().flatten().find(|&&id| i64::from(id) >= c.vocab_size) {
        return Err(Gpt2Error::Prompt(format!(
            "token id {bad} is outside the model's vocabulary (vocabSize {})",
            c.vocab_size
        )));
    }
    let total_len = prompt_len + spec.max_new_tokens as usize;
    if total_len as i64 > c.n_ctx {
        return Err(Gpt2Error::Prompt(format!(
            "{prompt_len} prompt tokens plus maxNewTokens ({}) exceed nCtx ({}) of model {}",
            spec.max_new_tokens, c.n_ctx, plan.name
        )));
    }
    setup::check_memory(&device, setup::infer_bytes(c, prompts.len(), total_len, dtype == "bf16"))?;
    setup::set_threads(spec.threads, caps.torch_threads);
    setup::seed_torch(spec.seed);
    device.reset_peak_memory();

    let name = plan.name.clone();
    let mut model = plan.build(device.device)?;
    if dtype == "bf16" {
        model.cast_weights(Kind::BFloat16);
    }
    // Shorter prompts are padded on the left (with token 0, never attended to).
    let flat: Vec<i64> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(0, prompt_len - p.len()).chain(p.iter().map(|&id| i64::from(id))))
        .collect();
    let prompt = Tensor::from_slice(&flat).view([prompts.len() as i64, prompt_len as i64]).to_device(device.device);
    let lengths: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
    let padding = lengths
        .iter()
        .any(|&l| l != prompt_len as i64)
        .then(|| LeftPadding::new(&lengths, prompt_len as i64, total_len as i64, device.device));
    let run = Run { model: &model, device: &device, spec: &spec, name: &name, ctx, padding: padding.as_ref() };
    for _ in 0..spec.warmup_runs {
        run.generate(&prompt, true)?;
    }
    let g = run.generate(&prompt, false)?;

    let generated = prompts.len() as f64 * f64::from(spec.max_new_tokens);
    let (peak_memory_bytes, peak_memory_source) = device.peak_memory();
    let generations = g
        .ids
        .into_iter()
        .map(|ids| Gpt2Generation { text: tokenizer.decode(&ids).unwrap_or_default(), token_ids: ids })
        .collect();
    Ok(Gpt2InferReport {
        config: Some(setup::run_config(&model, &name, dtype, &device, spec.seed)),
        spec: Some(spec),
        ttft_ms: g.ttft_ms,
        tpot: Some(phase_stats(&g.tpot_ms)),
        tokens_per_s: generated / (g.total_ms / 1000.0),
        prompt_tokens: lengths.iter().sum::<i64>() as u64,
        total_ms: g.total_ms,
        peak_memory_bytes,
        peak_memory_source,
        generations,
    })
}

struct Run<'a> {
    model: &'a Gpt2,
    device: &'a JobDevice,
    spec: &'a Gpt2InferSpec,
    name: &'a str,
    ctx: &'a JobContext,
    padding: Option<&'a LeftPadding>,
}

struct Generated {
    ids: Vec<Vec<u32>>,
    ttft_ms: f64,
    tpot_ms: Vec<f64>,
    total_ms: f64,
}

impl Run<'_> {
    fn generate(&self, prompt: &Tensor, warmup: bool) -> Result<Generated, Gpt2Error> {
        let spec = self.spec;
        let sampling = spec.sampling.unwrap_or_default();
        let (batch, prompt_len) = (prompt.size()[0], prompt.size()[1]);
        let max_new = i64::from(spec.max_new_tokens);
        let span = tracing::info_span!(
            "gpt2.infer.generate",
            warmup,
            gen_ai.operation.name = "text_completion",
            gen_ai.request.model = self.name,
            gen_ai.request.max_tokens = max_new,
            gen_ai.request.temperature = sampling.temperature,
            gen_ai.request.top_k = sampling.top_k,
            gen_ai.request.top_p = sampling.top_p,
            gen_ai.request.seed = spec.seed,
            gen_ai.usage.input_tokens = batch * prompt_len,
            gen_ai.usage.output_tokens = batch * max_new,
            gen_ai.server.time_to_first_token = tracing::field::Empty,
            gpt2.kv_cache = spec.kv_cache.unwrap_or(true),
        );
        let _g = span.enter();
        setup::seed_torch(spec.seed);
        let use_cache = spec.kv_cache.unwrap_or(true);
        tch::no_grad(|| {
            let start = Instant::now();
            let mut cache = use_cache.then(|| self.model.new_cache(batch, prompt_len + max_new, self.device.device));
            let mut sequence = prompt.shallow_clone();
            let mut new_tokens = Vec::with_capacity(max_new as usize);
            let mut tpot_ms = Vec::with_capacity(max_new as usize);
            let mut ttft_ms = 0.0;
            for i in 0..max_new {
                if self.ctx.is_cancelled() {
                    return Err(Gpt2Error::Cancelled);
                }
                let t = Instant::now();
                let token_span = if i == 0 {
                    tracing::info_span!("prefill", gen_ai.usage.input_tokens = batch * prompt_len)
                } else {
                    tracing::info_span!("decode", token = i)
                };
                let _t = token_span.enter();
                let input = match &cache {
                    Some(_) if i > 0 => sequence.narrow(1, prompt_len + i - 1, 1),
                    _ => sequence.shallow_clone(),
                };
                let logits = self.model.next_token_logits(&input, cache.as_mut(), self.padding);
                let next = sample(&logits, &sampling)?;
                sequence = Tensor::cat(&[&sequence, &next.unsqueeze(1)], 1);
                new_tokens.push(next);
                self.device.synchronize();
                let elapsed = t.elapsed().as_secs_f64() * 1000.0;
                if i == 0 {
                    ttft_ms = start.elapsed().as_secs_f64() * 1000.0;
                    span.record("gen_ai.server.time_to_first_token", ttft_ms / 1000.0);
                } else {
                    tpot_ms.push(elapsed);
                }
                if !warmup {
                    self.ctx.report(Progress {
                        fraction: (i + 1) as f64 / max_new as f64,
                        message: format!("token {}/{max_new}", i + 1),
                        metrics: [("token_ms".to_string(), elapsed)].into(),
                    });
                }
            }
            let total_ms = start.elapsed().as_secs_f64() * 1000.0;
            let ids = Tensor::stack(&new_tokens, 1).to_device(tch::Device::Cpu);
            let rows = Vec::<Vec<i64>>::try_from(&ids)?;
            let ids = rows.into_iter().map(|r| r.into_iter().map(|id| id as u32).collect()).collect();
            Ok(Generated { ids, ttft_ms, tpot_ms, total_ms })
        })
    }
}

/// The next token of each sequence: greedy at temperature 0, else sampled from the
/// temperature-scaled distribution cut to the top k and the top-p nucleus.
fn sample(logits: &Tensor, s: &Gpt2Sampling) -> Result<Tensor, Gpt2Error> {
    if s.temperature == 0.0 {
        return Ok(logits.f_argmax(-1, false)?);
    }
    let mut l = logits.to_kind(Kind::Float) / s.temperature;
    let vocab = l.size()[1];
    if s.top_k > 0 && i64::from(s.top_k) < vocab {
        let (top, _) = l.f_topk(i64::from(s.top_k), -1, true, true)?;
        let threshold = top.narrow(1, i64::from(s.top_k) - 1, 1);
        l = l.masked_fill(&l.lt_tensor(&threshold), f64::NEG_INFINITY);
    }
    if s.top_p > 0.0 && s.top_p < 1.0 {
        let (sorted, order) = l.f_sort(-1, true)?;
        let probs = sorted.softmax(-1, Kind::Float);
        // Drop a token when the tokens ranked above it already reach top_p (the most
        // likely token always stays).
        let drop = (probs.cumsum(-1, Kind::Float) - &probs).gt(s.top_p);
        let sorted = sorted.masked_fill(&drop, f64::NEG_INFINITY);
        l = l.scatter(-1, &order, &sorted);
    }
    Ok(l.softmax(-1, Kind::Float).f_multinomial(1, false)?.squeeze_dim(-1))
}
