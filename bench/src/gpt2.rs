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

/// The memory settings baton's agent runs with (libtorch puts big tensors on huge pages;
/// glibc keeps freed memory for reuse), as environment variables, so eager can have them.
const MEMORY_ENV: &[(&str, &str)] = &[
    ("THP_MEM_ALLOC_ENABLE", "1"),
    (
        "GLIBC_TUNABLES",
        "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615:glibc.malloc.arena_max=1",
    ),
];

/// One way of running the reference: extra arguments and environment variables.
struct Variant {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
}

/// One eager run's configuration, as the table names it.
fn eager_label(reference: &serde_json::Value) -> String {
    let base = match reference.pointer("/adamwImpl").and_then(|v| v.as_str()) {
        Some(adamw) => format!("{adamw} AdamW"),
        None => "its KV-cache loop".to_string(),
    };
    let memory = reference.pointer("/config/memoryEnv").and_then(|v| v.as_object()).is_some_and(|m| !m.is_empty());
    format!("{base}{}", if memory { " + baton's memory settings" } else { "" })
}

/// The eager runs of one configuration: as transformers runs by default, and the fastest
/// of all tried (by step p50 or tokens/s).
struct Eager {
    default: serde_json::Value,
    best: serde_json::Value,
}

impl Eager {
    /// Runs the reference once per variant (`variants[0]` is the default) and keeps the
    /// default and the best by the figure at `key` (the lowest, or the highest when
    /// `higher_is_better`).
    fn run(args: &[String], variants: &[Variant], config: &Gpt2RunConfig, key: &str, higher_is_better: bool) -> Self {
        let score = |r: &serde_json::Value| if higher_is_better { json_f64(r, key) } else { -json_f64(r, key) };
        let mut runs = Vec::new();
        for variant in variants {
            let mut args = args.to_vec();
            args.extend(variant.args.iter().map(|a| a.to_string()));
            let shown: Vec<String> = variant.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
            eprintln!("eager: {}{SCRIPT} {}", shown.concat(), args.join(" "));
            let reference = run_python_json(SCRIPT, &args, variant.env);
            check_config(config, &reference);
            eprintln!("eager {}: {key} {:.1}", eager_label(&reference), json_f64(&reference, key));
            runs.push(reference);
        }
        let best = runs.iter().max_by(|a, b| score(a).total_cmp(&score(b))).cloned().expect("eager runs");
        Self { default: runs.swap_remove(0), best }
    }
}

/// Runs the spec through baton, then the eager reference with each of torch's AdamW
/// implementations (for-loop — the default —, foreach, fused), and fused again with
/// baton's memory settings, so baton is held against eager's best configuration too.
async fn train(client: &mut Client, spec: &str) -> (Gpt2TrainReport, Eager) {
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
    let variants = [
        Variant { args: &["--adamw-impl", "default"], env: &[] },
        Variant { args: &["--adamw-impl", "foreach"], env: &[] },
        Variant { args: &["--adamw-impl", "fused"], env: &[] },
        Variant { args: &["--adamw-impl", "fused"], env: MEMORY_ENV },
    ];
    let eager = Eager::run(&args, &variants, &config, "/step/p50Ms", false);
    (report, eager)
}

/// Runs the spec through baton, then the eager reference as it is and with baton's memory
/// settings.
async fn infer(client: &mut Client, spec: &str) -> (Gpt2InferReport, Eager) {
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
    let variants = [Variant { args: &[], env: &[] }, Variant { args: &[], env: MEMORY_ENV }];
    let eager = Eager::run(&args, &variants, &config, "/tokensPerS", true);
    (report, eager)
}

fn phase(p: &Option<PhaseStats>) -> &PhaseStats {
    p.as_ref().expect("phase statistics")
}

/// A row: baton's figure, eager's default and best runs' (at `key`), and the ratios.
fn row(table: &mut Table, label: &str, unit: &str, baton: f64, eager: &Eager, key: &str, aim: &str) {
    let (default, best) = (json_f64(&eager.default, key), json_f64(&eager.best, key));
    table.row(vec![
        label.into(),
        unit.into(),
        num(baton, 1),
        num(default, 1),
        ratio(baton, default),
        num(best, 1),
        ratio(baton, best),
        aim.into(),
    ]);
}

/// An aim judged against eager's default and its best run (figure at `key`): `met(eager)`
/// says whether baton's figure meets the aim against that eager figure.
fn aim_verdict(aim: &str, baton: f64, eager: &Eager, key: &str, met: impl Fn(f64) -> bool) -> String {
    let judge = |run: &serde_json::Value| {
        let figure = json_f64(run, key);
        (ratio(baton, figure), if met(figure) { "met" } else { "NOT met" })
    };
    let ((default_ratio, default_verdict), (best_ratio, best_verdict)) = (judge(&eager.default), judge(&eager.best));
    format!(
        "{aim}: {default_ratio} of eager's default ({default_verdict}); {best_ratio} of eager's best, {} ({best_verdict})",
        eager_label(&eager.best)
    )
}

#[tokio::main]
async fn main() {
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("bench-gpt2", 1, &["--no-browser"]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;

    let mut table =
        Table::new(&["figure", "unit", "baton", "eager default", "baton/default", "eager best", "baton/best", "aim"]);
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
            ("forward+loss p50", &b.forward, "/forward/p50Ms"),
            ("backward p50", &b.backward, "/backward/p50Ms"),
            ("clip+AdamW p50", &b.optimizer, "/optimizer/p50Ms"),
            ("step p50", &b.step, "/step/p50Ms"),
        ] {
            let aim = if name == "step p50" { format!("≤ {aim}×") } else { String::new() };
            row(&mut table, &format!("train {label} {name}"), "ms", phase(stats).p50_ms, &e, key, &aim);
        }
        row(&mut table, &format!("train {label} step mean"), "ms", phase(&b.step).mean_ms, &e, "/step/meanMs", "");
        let bs = phase(&b.step).p50_ms;
        verdicts.push(aim_verdict(
            &format!("train step {label} ≤ {aim}× eager (p50)"),
            bs,
            &e,
            "/step/p50Ms",
            |eager| bs <= aim * eager,
        ));
    }
    let (b, e) = infer(&mut client, "bench/gpt2/infer-64.json").await;
    let bt = b.tokens_per_s;
    row(&mut table, "generate 64 tokens/s", "tok/s", bt, &e, "/tokensPerS", "≥ 1.5×");
    row(&mut table, "generate 64 TPOT p50", "ms", phase(&b.tpot).p50_ms, &e, "/tpot/p50Ms", "");
    row(&mut table, "generate 64 TTFT", "ms", b.ttft_ms, &e, "/ttftMs", "");
    row(&mut table, "generate 64 tokens/s, HF generate()", "tok/s", bt, &e, "/generateTokensPerS", "");
    verdicts.push(aim_verdict("generation ≥ 1.5× eager tokens/s", bt, &e, "/tokensPerS", |eager| bt >= 1.5 * eager));
    let transformers = e.default.pointer("/config/transformers").and_then(|v| v.as_str()).unwrap_or("?").to_string();

    println!(
        "GPT-2 124M fp32 on {device}; baton through coordinator + agent vs PyTorch eager (transformers {transformers})"
    );
    table.print();
    println!();
    for v in verdicts {
        println!("aim: {v}");
    }
}
