//! GPT-2 124M on CPU: baton (through the coordinator and an agent, figures from the job's
//! result) against PyTorch eager with transformers' GPT2LMHeadModel
//! (bench/gpt2/reference.py), the same three configurations, in one run, side by side.
//!
//! The reference's arguments (batch, seq len, steps, warm-up, threads, prompt, new tokens)
//! are taken from the spec as baton ran it, so both sides do the same work.
//!
//! `cargo build --release --bins && target/release/bench-gpt2`

use baton_bench::{Table, json_f64, num, ratio, run_job, run_python_json};
use baton_proto::v1::{Gpt2InferReport, Gpt2RunConfig, Gpt2TrainReport, PhaseStats, job_result};
use baton_tests::{Cluster, workspace};
use tonic::transport::Channel;

type Client = baton_proto::v1::job_service_client::JobServiceClient<Channel>;

const SCRIPT: &str = "bench/gpt2/reference.py";

async fn baton_job(client: &mut Client, spec: &str) -> job_result::Kind {
    let path = workspace().join(spec);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let req = baton_proto::spec::parse_request(&text).unwrap_or_else(|e| panic!("{spec}: {e}"));
    eprintln!("baton: {spec}");
    let (job, _) = run_job(client, req).await;
    job.result.and_then(|r| r.kind).expect("a result")
}

fn check_config(config: &Gpt2RunConfig, reference: &serde_json::Value) {
    let threads = json_f64(reference, "/config/threads") as u32;
    assert_eq!(
        threads, config.torch_threads,
        "the reference ran with {threads} threads, baton with {}",
        config.torch_threads
    );
}

fn common_args(mode: &str, config: &Gpt2RunConfig) -> Vec<String> {
    vec![
        mode.into(),
        "--model".into(),
        config.model.clone(),
        "--threads".into(),
        config.torch_threads.to_string(),
        "--seed".into(),
        config.seed.to_string(),
    ]
}

/// Runs the spec through baton, then the eager reference with each of torch's AdamW
/// implementations (for-loop, foreach, fused); returns baton's report and the fastest
/// eager run (by step p50), so baton is held against eager's best configuration.
async fn train(client: &mut Client, spec: &str) -> (Gpt2TrainReport, serde_json::Value) {
    let job_result::Kind::Gpt2Train(report) = baton_job(client, spec).await else {
        panic!("{spec}: not a train result")
    };
    let config = report.config.clone().expect("the run's config");
    let s = report.spec.clone().expect("the spec as run");
    let mut args = common_args("train", &config);
    for (flag, v) in
        [("--batch", s.batch), ("--seq-len", s.seq_len), ("--steps", s.steps), ("--warmup-steps", s.warmup_steps)]
    {
        args.extend([flag.to_string(), v.to_string()]);
    }
    let mut best: Option<serde_json::Value> = None;
    for implementation in ["default", "foreach", "fused"] {
        let mut args = args.clone();
        args.extend(["--adamw-impl".to_string(), implementation.to_string()]);
        eprintln!("eager: {SCRIPT} {}", args.join(" "));
        let reference = run_python_json(SCRIPT, &args);
        check_config(&config, &reference);
        let step = json_f64(&reference, "/step/p50Ms");
        eprintln!("eager AdamW {implementation}: step p50 {step:.1} ms");
        if best.as_ref().is_none_or(|b| step < json_f64(b, "/step/p50Ms")) {
            best = Some(reference);
        }
    }
    (report, best.expect("three eager runs"))
}

async fn infer(client: &mut Client, spec: &str) -> (Gpt2InferReport, serde_json::Value) {
    let job_result::Kind::Gpt2Infer(report) = baton_job(client, spec).await else {
        panic!("{spec}: not an infer result")
    };
    let config = report.config.clone().expect("the run's config");
    let s = report.spec.clone().expect("the spec as run");
    assert_eq!(s.prompt_ids.len(), 1, "{spec}: the reference takes one prompt given as ids");
    let ids: Vec<String> = s.prompt_ids[0].ids.iter().map(u32::to_string).collect();
    let mut args = common_args("infer", &config);
    args.extend([
        "--new-tokens".into(),
        s.max_new_tokens.to_string(),
        "--warmup-runs".into(),
        s.warmup_runs.to_string(),
    ]);
    args.extend(["--prompt-ids".into(), ids.join(",")]);
    eprintln!("eager: {SCRIPT} {}", args.join(" "));
    let reference = run_python_json(SCRIPT, &args);
    check_config(&config, &reference);
    (report, reference)
}

fn phase(p: &Option<PhaseStats>) -> &PhaseStats {
    p.as_ref().expect("phase statistics")
}

fn row(table: &mut Table, label: &str, unit: &str, baton: f64, eager: f64, aim: &str) {
    table.row(vec![label.into(), unit.into(), num(baton, 1), num(eager, 1), ratio(baton, eager), aim.into()]);
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

#[tokio::main]
async fn main() {
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("bench-gpt2", 1, &["--no-browser"]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;

    let mut table = Table::new(&["figure", "unit", "baton", "eager", "baton/eager", "aim"]);
    let mut verdicts = Vec::new();
    let mut device = String::new();
    for (spec, label, aim) in
        [("bench/gpt2/train-1x128.json", "1x128", 0.75), ("bench/gpt2/train-4x128.json", "4x128", 0.9)]
    {
        let (b, e) = train(&mut client, spec).await;
        let config = b.config.as_ref().expect("config");
        device = format!(
            "{} ({}), {} threads, torch {}",
            config.device, config.device_name, config.torch_threads, config.torch_version
        );
        for (name, stats, key) in [
            ("forward+loss p50", &b.forward, "forward"),
            ("backward p50", &b.backward, "backward"),
            ("clip+AdamW p50", &b.optimizer, "optimizer"),
        ] {
            row(
                &mut table,
                &format!("train {label} {name}"),
                "ms",
                phase(stats).p50_ms,
                json_f64(&e, &format!("/{key}/p50Ms")),
                "",
            );
        }
        let (bs, es) = (phase(&b.step).p50_ms, json_f64(&e, "/step/p50Ms"));
        let implementation = e.pointer("/adamwImpl").and_then(|v| v.as_str()).unwrap_or("?").to_string();
        row(
            &mut table,
            &format!("train {label} step p50 (eager's best AdamW: {implementation})"),
            "ms",
            bs,
            es,
            &format!("≤ {aim}×"),
        );
        row(
            &mut table,
            &format!("train {label} step mean"),
            "ms",
            phase(&b.step).mean_ms,
            json_f64(&e, "/step/meanMs"),
            "",
        );
        verdicts.push(format!(
            "train step {label} ≤ {aim}× eager (p50): {} ({})",
            ratio(bs, es),
            verdict(bs <= aim * es)
        ));
    }
    let (b, e) = infer(&mut client, "bench/gpt2/infer-64.json").await;
    let (bt, et) = (b.tokens_per_s, json_f64(&e, "/tokensPerS"));
    row(&mut table, "generate 64 tokens/s", "tok/s", bt, et, "≥ 1.5×");
    row(&mut table, "generate 64 TPOT p50", "ms", phase(&b.tpot).p50_ms, json_f64(&e, "/tpot/p50Ms"), "");
    row(&mut table, "generate 64 TTFT", "ms", b.ttft_ms, json_f64(&e, "/ttftMs"), "");
    row(&mut table, "generate 64 tokens/s, HF generate()", "tok/s", bt, json_f64(&e, "/generateTokensPerS"), "");
    verdicts.push(format!("generation ≥ 1.5× eager tokens/s: {} ({})", ratio(bt, et), verdict(bt >= 1.5 * et)));

    println!(
        "GPT-2 124M fp32 on {device}; baton through coordinator + agent vs PyTorch eager (transformers {})",
        e.pointer("/config/transformers").and_then(|v| v.as_str()).unwrap_or("?")
    );
    table.print();
    println!();
    for v in verdicts {
        println!("aim: {v}");
    }
}
