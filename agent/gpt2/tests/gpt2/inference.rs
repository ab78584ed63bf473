use crate::{checkpoint, checkpoint_model, cpu_agent, custom};
use baton_proto::context::JobContext;
use baton_proto::v1::{Gpt2InferSpec, Gpt2Sampling, TokenIds};

fn spec() -> Gpt2InferSpec {
    Gpt2InferSpec {
        model: custom(2, 2, 32, 64, 0),
        prompts: vec!["Hello world".into(), "Goodbye baton".into()],
        max_new_tokens: 6,
        device: "cpu".into(),
        seed: 3,
        ..Default::default()
    }
}

#[test]
fn generates_a_batch_and_times_it() {
    let _serial = crate::one_job_at_a_time();
    let report = baton_gpt2::infer(&spec(), &JobContext::detached("infer"), &cpu_agent()).unwrap();
    assert_eq!(report.generations.len(), 2);
    for g in &report.generations {
        assert_eq!(g.token_ids.len(), 6);
        assert!(!g.text.is_empty());
    }
    assert_eq!(report.prompt_tokens, 6, "2 + 4 tokens, without padding");
    assert_eq!(report.tpot.unwrap().count, 5, "time per output token after the first");
    assert!(report.ttft_ms > 0.0 && report.ttft_ms <= report.total_ms);
    assert!(report.tokens_per_s > 0.0);
    assert_eq!(report.spec.unwrap().kv_cache, Some(true));
}

/// Generations compared across code paths need clear margins between the top logits:
/// the checkpoint from transformers has them, a GPT-2-initialised random model does not.
fn peaked_spec(prompts: &[&[u32]]) -> Gpt2InferSpec {
    Gpt2InferSpec {
        model: checkpoint_model(checkpoint().0.path()),
        prompts: vec![],
        prompt_ids: prompts.iter().map(|p| TokenIds { ids: p.to_vec() }).collect(),
        ..spec()
    }
}

#[test]
fn sampling_is_reproducible_with_a_seed_and_cache_does_not_change_it() {
    let _serial = crate::one_job_at_a_time();
    let sampled = |kv_cache: bool, seed: u64| {
        let s = Gpt2InferSpec {
            sampling: Some(Gpt2Sampling { temperature: 0.8, top_k: 50, top_p: 0.9 }),
            kv_cache: Some(kv_cache),
            seed,
            warmup_runs: 1,
            ..peaked_spec(&[&[1, 2, 3], &[4, 5, 6]])
        };
        let r = baton_gpt2::infer(&s, &JobContext::detached("sample"), &cpu_agent()).unwrap();
        r.generations.into_iter().map(|g| g.token_ids).collect::<Vec<_>>()
    };
    let a = sampled(true, 5);
    assert_eq!(a, sampled(true, 5));
    assert_eq!(a, sampled(false, 5));
    assert_ne!(a, sampled(true, 6));
}

#[test]
fn shorter_prompts_are_padded_without_changing_their_continuation() {
    let _serial = crate::one_job_at_a_time();
    let (short, long): (&[u32], &[u32]) = (&[7, 8], &[9, 10, 11, 12, 13]);
    let alone = |prompt: &[u32]| {
        let s = peaked_spec(&[prompt]);
        baton_gpt2::infer(&s, &JobContext::detached("alone"), &cpu_agent()).unwrap().generations.remove(0).token_ids
    };
    for kv_cache in [true, false] {
        let s = Gpt2InferSpec { kv_cache: Some(kv_cache), ..peaked_spec(&[short, long]) };
        let r = baton_gpt2::infer(&s, &JobContext::detached("padded"), &cpu_agent()).unwrap();
        assert_eq!(r.generations[0].token_ids, alone(short), "kvCache {kv_cache}");
        assert_eq!(r.generations[1].token_ids, alone(long), "kvCache {kv_cache}");
    }
}
