//! `baton-agent --coordinator URL [--slots N] [--label k=v]...`

use baton_agent::connection::{self, Identity};
use baton_agent::executor::{Builtin, Executor};
use baton_agent::probe;
use baton_agent::runner::Runner;
use clap::Parser;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs baton jobs handed out by a coordinator.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The coordinator's gRPC URL.
    #[arg(long, env = "BATON_COORDINATOR", default_value = "http://127.0.0.1:7070")]
    coordinator: String,
    /// Jobs run at the same time. Timings are cleanest with 1 (the default).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    slots: u32,
    /// A label jobs can require (repeatable), e.g. --label zone=eu --label gpu=h200.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// This agent's id; default HOSTNAME-PID (a restarted agent is a new agent).
    #[arg(long)]
    name: Option<String>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or_else(|| format!("label {text:?} must look like key=value"))?;
    if k.is_empty() {
        return Err(format!("label {text:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = baton_proto::telemetry::init("baton-agent");
    let executors: Vec<Arc<dyn Executor>> = vec![Arc::new(Builtin)];
    let (runner, events) = Runner::new(executors);
    let agent_id = args.name.unwrap_or_else(|| format!("{}-{}", baton_proto::telemetry::hostname(), std::process::id()));
    let identity = Identity {
        agent_id: agent_id.clone(),
        slots: args.slots,
        labels: args.labels.into_iter().collect::<HashMap<_, _>>(),
        capabilities: probe::base_capabilities(runner.job_kinds()),
    };
    tracing::info!(agent_id = %agent_id, slots = args.slots, cores = identity.capabilities.cpu_cores, "agent starting");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        baton_proto::telemetry::terminated().await;
        stop.cancel();
    });
    connection::run(args.coordinator, identity, runner, events, shutdown).await;
    Ok(())
}
