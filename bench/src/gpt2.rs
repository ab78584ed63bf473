//! GPT-2: baton (through the coordinator and an agent, figures from the job's result)
//! against PyTorch eager with transformers' GPT2LMHeadModel (bench/gpt2/reference.py), the
//! same work, in one run, side by side.
//!
//! With no arguments it runs the CPU set (GPT-2 124M, fp32, 2 threads) and judges its
//! aims; given spec files (e.g. bench/gpt2/gpu/*.json) it runs those, on whatever device
//! they name. The reference's arguments (model, batch, seq len, steps, warm-up, threads,
//! device, dtype, prompt, new tokens) are taken from the spec as baton ran it, so both
//! sides do the same work.
//!
//! `cargo build --release --bins && target/release/bench-gpt2 [SPEC.json ...]`

use baton_bench::{Table, json_f64, num, ratio, run_job, run_python_json};
use baton_proto::v1::{Gpt2InferReport, Gpt2RunConfig, Gpt2TrainReport, PhaseStats, job_result};
use baton_tests::{Cluster, workspace};
use tonic::transport::Channel;

type Client = baton_proto::v1::job_service_client::JobServiceClient<Channel>;

const SCRIPT: &str = "bench/gpt2/reference.py";

/// The CPU set, run when no spec is named, and each one's aim: a train step's p50 at most
/// `aim`× eager's, generation at least `aim`× eager's tokens/s.
const CPU_SET: [(&str, f64); 3] =
    [("bench/gpt2/train-1x128.json", 0.75), ("bench/gpt2/train-4x128.json", 0.9), ("bench/gpt2/infer-64.json", 1.5)];

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

fn on_cuda(config: &Gpt2RunConfig) -> bool {
    config.device.starts_with("cuda")
}

/// The reference's arguments every mode takes, from the run as baton reports it.
fn common_args(mode: &str, config: &Gpt2RunConfig) -> Vec<String> {
    let device = if on_cuda(config) { "cuda" } else { "cpu" };
    [
        mode,
        "--model",
        &config.model,
        "--threads",
        &config.torch_threads.to_string(),
        "--seed",
        &config.seed.to_string(),
        "--device",
        device,
        "--dtype",
        &config.dtype,
    ]
    .map(String::from)
    .to_vec()
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

    /// The default and best runs' figures at `key`, times `scale`.
    fn at(&self, key: &str, scale: f64) -> (f64, f64) {
        (json_f64(&self.default, key) * scale, json_f64(&self.best, key) * scale)
    }
}

/// Runs the eager reference for a train run baton made: on CPU with each of torch's AdamW
/// implementations (for-loop — the default —, foreach, fused), and fused again with
/// baton's memory settings, so baton is held against eager's best configuration too; on
/// CUDA torch's default (foreach) and fused.
fn eager_train(report: &Gpt2TrainReport) -> Eager {
    let config = report.config.as_ref().expect("the run's config");
    let s = report.spec.as_ref().expect("the spec as run");
    let mut args = common_args("train", config);
    for (flag, v) in
        [("--batch", s.batch), ("--seq-len", s.seq_len), ("--steps", s.steps), ("--warmup-steps", s.warmup_steps)]
    {
        args.extend([flag.to_string(), v.to_string()]);
    }
    let cpu = [
        Variant { args: &["--adamw-impl", "default"], env: &[] },
        Variant { args: &["--adamw-impl", "foreach"], env: &[] },
        Variant { args: &["--adamw-impl", "fused"], env: &[] },
        Variant { args: &["--adamw-impl", "fused"], env: MEMORY_ENV },
    ];
    let cuda = [
        Variant { args: &["--adamw-impl", "default"], env: &[] },
        Variant { args: &["--adamw-impl", "fused"], env: &[] },
    ];
    let variants: &[Variant] = if on_cuda(config) { &cuda } else { &cpu };
    Eager::run(&args, variants, config, "/step/p50Ms", false)
}

/// Runs the eager reference for a generation baton made (its prompts all alike, as
/// `--batch` copies of one): as it is, and on CPU with baton's memory settings too.
fn eager_infer(report: &Gpt2InferReport) -> Eager {
    let config = report.config.as_ref().expect("the run's config");
    let s = report.spec.as_ref().expect("the spec as run");
    let first = s.prompt_ids.first().expect("the reference takes prompts given as ids");
    assert!(s.prompt_ids.iter().all(|p| p.ids == first.ids), "the reference takes copies of one prompt");
    let ids: Vec<String> = first.ids.iter().map(u32::to_string).collect();
    let mut args = common_args("infer", config);
    args.extend([
        "--batch".into(),
        s.prompt_ids.len().to_string(),
        "--new-tokens".into(),
        s.max_new_tokens.to_string(),
        "--warmup-runs".into(),
        s.warmup_runs.to_string(),
        "--prompt-ids".into(),
        ids.join(","),
    ]);
    let plain = Variant { args: &[], env: &[] };
    let variants = if on_cuda(config) { vec![plain] } else { vec![plain, Variant { args: &[], env: MEMORY_ENV }] };
    Eager::run(&args, &variants, config, "/tokensPerS", true)
}

fn phase(p: &Option<PhaseStats>) -> &PhaseStats {
    p.as_ref().expect("phase statistics")
}

/// A row: baton's figure, eager's default and best runs' (see [`Eager::at`]), and the
/// ratios.
fn row(table: &mut Table, label: &str, unit: &str, baton: f64, (default, best): (f64, f64), aim: &str) {
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

/// The peak memory row; baton's cell says "-" where the agent could not measure it (its
/// report says why).
fn memory_row(table: &mut Table, label: &str, baton_bytes: u64, e: &Eager) {
    const MIB: f64 = 1024.0 * 1024.0;
    let (default, best) = e.at("/peakMemoryBytes", 1.0 / MIB);
    let baton = baton_bytes as f64 / MIB;
    let (cell, vs_default, vs_best) = if baton_bytes == 0 {
        ("-".to_string(), "-".to_string(), "-".to_string())
    } else {
        (num(baton, 0), ratio(baton, default), ratio(baton, best))
    };
    table.row(vec![
        format!("{label} peak memory"),
        "MiB".into(),
        cell,
        num(default, 0),
        vs_default,
        num(best, 0),
        vs_best,
        String::new(),
    ]);
}

/// What a run is, for the table: `gpt2 fp32 cpu`.
fn what(config: &Gpt2RunConfig) -> String {
    format!("{} {} {}", config.model, config.dtype, config.device)
}

/// `forward 40.12 vs 40.03 ms (+0.09)`, …: each phase's synchronized and event times.
fn sync_vs_events(phases: &[(&str, f64, f64)]) -> String {
    let shown: Vec<String> = phases
        .iter()
        .map(|(name, synced, events)| format!("{name} {synced:.2} vs {events:.2} ms ({:+.2})", synced - events))
        .collect();
    shown.join(", ")
}

/// The rows of a train run and, with an aim, its verdict; notes what the run says about
/// its timing.
fn train_rows(table: &mut Table, notes: &mut Vec<String>, b: &Gpt2TrainReport, e: &Eager, aim: Option<f64>) {
    let config = b.config.as_ref().expect("config");
    let s = b.spec.as_ref().expect("spec");
    let label = format!("train {} {}x{}", what(config), s.batch, s.seq_len);
    for (name, stats, key) in [
        ("forward+loss p50", &b.forward, "/forward/p50Ms"),
        ("backward p50", &b.backward, "/backward/p50Ms"),
        ("clip+AdamW p50", &b.optimizer, "/optimizer/p50Ms"),
        ("step p50", &b.step, "/step/p50Ms"),
    ] {
        let aim = match aim {
            Some(a) if name == "step p50" => format!("≤ {a}×"),
            _ => String::new(),
        };
        row(table, &format!("{label} {name}"), "ms", phase(stats).p50_ms, e.at(key, 1.0), &aim);
    }
    row(table, &format!("{label} step mean"), "ms", phase(&b.step).mean_ms, e.at("/step/meanMs", 1.0), "");
    row(table, &format!("{label} tokens/s"), "tok/s", b.tokens_per_s, e.at("/tokensPerS", 1.0), "");
    // Eager does the same FLOPs per token, so its MFU is baton's scaled by the tokens/s.
    let mfu = b.mfu * 100.0;
    row(table, &format!("{label} MFU"), "%", mfu, e.at("/tokensPerS", mfu / b.tokens_per_s), "");
    memory_row(table, &label, b.peak_memory_bytes, e);
    notes.push(format!("{label}: MFU against {:.2} TFLOP/s ({})", b.peak_flops_per_s / 1e12, b.peak_source));
    notes.push(format!("{label}: baton's peak memory is {}", b.peak_memory_source));
    // Both sides wait for the device at each phase boundary and record a CUDA event there.
    if let Some(ev) = &b.cuda_events {
        let baton: Vec<(&str, f64, f64)> = [
            ("step", &b.step, &ev.step),
            ("data", &b.data, &ev.data),
            ("forward", &b.forward, &ev.forward),
            ("backward", &b.backward, &ev.backward),
            ("optimizer", &b.optimizer, &ev.optimizer),
        ]
        .map(|(name, synced, events)| (name, phase(synced).p50_ms, phase(events).p50_ms))
        .to_vec();
        notes.push(format!("{label}: baton's phases, synchronized vs CUDA events (p50): {}", sync_vs_events(&baton)));
    }
    if let Some(events) = e.best.pointer("/cudaEvents") {
        let eager: Vec<(&str, f64, f64)> = ["step", "data", "forward", "backward", "optimizer"]
            .map(|name| {
                (name, json_f64(&e.best, &format!("/{name}/p50Ms")), json_f64(events, &format!("/{name}/p50Ms")))
            })
            .to_vec();
        notes.push(format!("{label}: eager's phases, synchronized vs CUDA events (p50): {}", sync_vs_events(&eager)));
    }
    if let Some(a) = aim {
        let bs = phase(&b.step).p50_ms;
        notes.push(aim_verdict(&format!("aim: {label} step ≤ {a}× eager (p50)"), bs, e, "/step/p50Ms", |eager| {
            bs <= a * eager
        }));
    }
}

/// The rows of a generation and, with an aim, its verdict.
fn infer_rows(table: &mut Table, notes: &mut Vec<String>, b: &Gpt2InferReport, e: &Eager, aim: Option<f64>) {
    let config = b.config.as_ref().expect("config");
    let s = b.spec.as_ref().expect("spec");
    let label = format!("generate {} batch {} x {}", what(config), s.prompt_ids.len(), s.max_new_tokens);
    let bt = b.tokens_per_s;
    let shown = aim.map(|a| format!("≥ {a}×")).unwrap_or_default();
    row(table, &format!("{label} tokens/s"), "tok/s", bt, e.at("/tokensPerS", 1.0), &shown);
    row(table, &format!("{label} TPOT p50"), "ms", phase(&b.tpot).p50_ms, e.at("/tpot/p50Ms", 1.0), "");
    row(table, &format!("{label} TTFT"), "ms", b.ttft_ms, e.at("/ttftMs", 1.0), "");
    row(table, &format!("{label} tokens/s, HF generate()"), "tok/s", bt, e.at("/generateTokensPerS", 1.0), "");
    memory_row(table, &label, b.peak_memory_bytes, e);
    if let Some(a) = aim {
        notes.push(aim_verdict(&format!("aim: {label} ≥ {a}× eager tokens/s"), bt, e, "/tokensPerS", |eager| {
            bt >= a * eager
        }));
    }
}

#[tokio::main]
async fn main() {
    let named: Vec<String> = std::env::args().skip(1).collect();
    let specs: Vec<(String, Option<f64>)> = if named.is_empty() {
        CPU_SET.iter().map(|(spec, aim)| (spec.to_string(), Some(*aim))).collect()
    } else {
        named.into_iter().map(|spec| (spec, None)).collect()
    };
    let mut cluster = Cluster::start(&[], &[]).await;
    cluster.add_agent("bench-gpt2", 1, &["--no-browser"]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;

    let mut table =
        Table::new(&["figure", "unit", "baton", "eager default", "baton/default", "eager best", "baton/best", "aim"]);
    let mut notes = Vec::new();
    let mut devices = std::collections::BTreeSet::new();
    let mut versions = String::new();
    // The sides alternate per spec (baton, then eager), so a load change mid-run hits one
    // spec of both sides rather than one whole side.
    for (spec, aim) in &specs {
        let (config, eager) = match baton_job(&mut client, spec).await {
            job_result::Kind::Gpt2Train(b) => {
                let e = eager_train(&b);
                train_rows(&mut table, &mut notes, &b, &e, *aim);
                (b.config.expect("config"), e)
            }
            job_result::Kind::Gpt2Infer(b) => {
                let e = eager_infer(&b);
                infer_rows(&mut table, &mut notes, &b, &e, *aim);
                (b.config.expect("config"), e)
            }
            other => panic!("{spec}: not a GPT-2 result: {other:?}"),
        };
        devices.insert(format!("{} ({}), {} threads", config.device, config.device_name, config.torch_threads));
        let get = |p: &str| eager.default.pointer(p).and_then(|v| v.as_str()).unwrap_or("-").to_string();
        versions = format!(
            "torch {} (baton) and {} (eager), transformers {}, CUDA {}",
            config.torch_version,
            get("/config/torch"),
            get("/config/transformers"),
            get("/config/cuda")
        );
    }
    let devices: Vec<String> = devices.into_iter().collect();
    println!(
        "GPT-2 on {}; {versions}; baton through coordinator + agent vs PyTorch eager (transformers GPT2LMHeadModel)",
        devices.join(", ")
    );
    table.print();
    println!();
    for n in notes {
        println!("{n}");
    }
}
