//! Runs a gpt2Train or gpt2Infer spec file in this process, without coordinator or agent,
//! and prints the report as JSON: for profiling the engine alone.
//!
//! usage: cargo run --release -p baton-gpt2 --example run_spec -- SPEC.json

use baton_proto::context::JobContext;
use baton_proto::v1::job_spec::Kind;
use std::process::ExitCode;

fn main() -> ExitCode {
    // SAFETY: first thing in main, the process has one thread.
    unsafe { baton_gpt2::device::configure_memory() };
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: run_spec SPEC.json");
        return ExitCode::from(2);
    };
    let request = std::fs::read_to_string(&path)
        .map_err(|e| format!("{path}: {e}"))
        .and_then(|text| baton_proto::spec::parse_request(&text));
    let kind = match request.map(|r| r.spec.and_then(|s| s.kind)) {
        Ok(Some(kind)) => kind,
        Ok(None) => {
            eprintln!("{path}: no job kind");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let caps = baton_gpt2::probe();
    let ctx = JobContext::new("run_spec".into(), 1, Default::default(), |p| eprintln!("{}", p.message));
    let report = match &kind {
        Kind::Gpt2Train(spec) => baton_gpt2::train(spec, &ctx, &caps).map(|r| serde_json::to_string_pretty(&r)),
        Kind::Gpt2Infer(spec) => baton_gpt2::infer(spec, &ctx, &caps).map(|r| serde_json::to_string_pretty(&r)),
        _ => {
            eprintln!("{path}: not a gpt2Train or gpt2Infer spec");
            return ExitCode::from(2);
        }
    };
    match report {
        Ok(Ok(json)) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("cannot print the report: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
