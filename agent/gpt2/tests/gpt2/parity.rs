//! A random GPT-2 made by transformers loads in baton and computes the same thing.

use crate::{checkpoint, checkpoint_model, cpu_agent};
use baton_proto::context::JobContext;
use baton_proto::v1::{Gpt2InferSpec, TokenIds};
use tch::{Device, Kind, Tensor};

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn matches_transformers_logits_loss_and_greedy_continuation() {
    let _serial = crate::one_job_at_a_time();
    let (dir, reference) = checkpoint();
    let config = baton_gpt2::checkpoint::read_config(dir.path()).unwrap();
    assert_eq!((config.n_layer, config.n_head, config.n_embd, config.vocab_size), (3, 4, 64, 1000));
    let model = baton_gpt2::checkpoint::load(dir.path(), config, Device::Cpu).unwrap();

    let rows: Vec<Vec<i64>> = reference["input_ids"].as_array().unwrap().iter().map(ids).collect();
    let input = Tensor::from_slice(&rows.concat()).view([rows.len() as i64, rows[0].len() as i64]);
    let want_shape = ids(&reference["logits_shape"]);
    let want: Vec<f32> = reference["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let want = Tensor::from_slice(&want).view(want_shape.as_slice());
    tch::no_grad(|| {
        let logits = model.forward(&input);
        let diff = (&logits - &want).abs().max().double_value(&[]);
        assert!(diff <= 1e-4, "max abs logit difference {diff} > 1e-4");

        // transformers shifts labels inside: position t predicts token t+1.
        let t = input.size()[1];
        let loss = model.loss(&input.narrow(1, 0, t - 1), &input.narrow(1, 1, t - 1)).double_value(&[]);
        let want_loss = reference["loss"].as_f64().unwrap();
        assert!((loss - want_loss).abs() < 1e-4, "loss {loss} vs transformers {want_loss}");
        assert_eq!(logits.kind(), Kind::Float);
    });

    let prompt: Vec<u32> = ids(&reference["prompt"]).into_iter().map(|x| x as u32).collect();
    let greedy: Vec<u32> = ids(&reference["greedy"]).into_iter().map(|x| x as u32).collect();
    for kv_cache in [true, false] {
        let spec = Gpt2InferSpec {
            model: checkpoint_model(dir.path()),
            prompt_ids: vec![TokenIds { ids: prompt.clone() }],
            max_new_tokens: greedy.len() as u32,
            kv_cache: Some(kv_cache),
            device: "cpu".into(),
            ..Default::default()
        };
        let report = baton_gpt2::infer(&spec, &JobContext::detached("parity"), &cpu_agent()).unwrap();
        assert_eq!(report.generations[0].token_ids, greedy, "greedy continuation with kvCache {kv_cache}");
    }
}

/// Backward is right: with dropout off, every parameter's gradient of the loss is
/// transformers' (the tied wte's included: lookup rows plus lm_head).
#[test]
fn gradients_match_transformers() {
    let _serial = crate::one_job_at_a_time();
    let (dir, reference) = checkpoint();
    let mut config = baton_gpt2::checkpoint::read_config(dir.path()).unwrap();
    config.set_dropout(0.0);
    let mut model = baton_gpt2::checkpoint::load(dir.path(), config, Device::Cpu).unwrap();
    model.set_trainable();
    let want: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("gradients.safetensors")).unwrap().into_iter().collect();

    let rows: Vec<Vec<i64>> = reference["input_ids"].as_array().unwrap().iter().map(ids).collect();
    let input = Tensor::from_slice(&rows.concat()).view([rows.len() as i64, rows[0].len() as i64]);
    let t = input.size()[1];
    let loss = model.train_loss(&input.narrow(1, 0, t - 1), &input.narrow(1, 1, t - 1));
    let grads = model.gradients(&loss).unwrap();
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(grads.len(), names.len());
    for (name, grad) in names.iter().zip(&grads) {
        let reference = &want[&format!("transformer.{name}")];
        let diff = (grad - reference).abs().max().double_value(&[]);
        let scale = reference.abs().max().double_value(&[]);
        assert!(diff <= 1e-5 * scale.max(1.0), "{name}: max abs gradient difference {diff} (largest {scale})");
    }
}
