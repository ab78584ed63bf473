//! `baton-agent --coordinator URL[,URL...] [--slots N] [--label k=v]...`

use anyhow::Context as _;
use baton_agent::connection::{self, Identity, Stopping};
use baton_agent::executor::{Builtin, Executor};
use baton_agent::probe;
use baton_agent::runner::Runner;
use baton_proto::v1::Capabilities;
use clap::Parser;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs baton jobs handed out by a coordinator.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The coordinator's gRPC URL; several, comma-separated, when coordinators share etcd
    /// (the agent finds the leader).
    #[arg(long, env = "BATON_COORDINATOR", default_value = "http://127.0.0.1:7070", value_delimiter = ',')]
    coordinator: Vec<String>,
    /// TLS and credentials for https:// coordinators.
    #[command(flatten)]
    auth: baton_proto::client::ClientAuth,
    /// Jobs run at the same time. Timings are cleanest with 1 (the default).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    slots: u32,
    /// A label jobs can require (repeatable), e.g. --label zone=eu --label gpu=h200.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// This agent's id; default HOSTNAME-PID (a restarted agent is a new agent). Where the
    /// coordinator authenticates agents, the certificate's (or token's) name, or NAME/anything.
    #[arg(long)]
    name: Option<String>,
    /// On SIGTERM: how long running jobs may take to finish before they are handed back
    /// to the coordinator (which retries them elsewhere). Then unacknowledged reports are
    /// flushed (up to 5 s more) and the agent exits.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    grace_period: std::time::Duration,
    /// Serve Prometheus metrics (OpenMetrics text at /metrics, liveness at /healthz) on
    /// this address; without a value, 127.0.0.1:9464. Off unless given.
    #[arg(long, env = "BATON_METRICS_LISTEN", num_args = 0..=1, default_missing_value = baton_proto::metrics::DEFAULT_LISTEN)]
    metrics_listen: Option<String>,
    /// A folder GPT-2 jobs may read files under (checkpoints, textFile), repeatable.
    /// Without one, jobs read no files on this agent.
    #[cfg(feature = "gpt2")]
    #[arg(long = "data-root")]
    data_roots: Vec<std::path::PathBuf>,
    #[cfg(feature = "browser")]
    #[command(flatten)]
    browser: BrowserArgs,
}

#[cfg(feature = "browser")]
#[derive(clap::Args)]
struct BrowserArgs {
    /// Run no browser jobs, even when Chromium is installed.
    #[arg(long)]
    no_browser: bool,
    /// chromedriver to start and supervise (default: found on PATH).
    #[arg(long)]
    chromedriver: Option<std::path::PathBuf>,
    /// Use this WebDriver server (e.g. a Selenium Grid) instead of starting chromedriver.
    #[arg(long)]
    webdriver_url: Option<String>,
    /// X display for headed browsers and desktop input, e.g. :99.
    #[arg(long, env = "BATON_DISPLAY")]
    display: Option<String>,
    /// Allow desktop steps (OS keyboard and mouse through enigo) on the display.
    #[arg(long)]
    desktop_input: bool,
    /// Only URLs whose host matches one of these patterns (repeatable, e.g. 127.0.0.1, *.example.com).
    #[arg(long = "allow-url")]
    allow: Vec<String>,
    /// Never URLs whose host matches these patterns (repeatable). Link-local and cloud
    /// metadata addresses are always denied unless allowed explicitly.
    #[arg(long = "deny-url")]
    deny: Vec<String>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or_else(|| format!("label {text:?} must look like key=value"))?;
    if k.is_empty() {
        return Err(format!("label {text:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn main() -> anyhow::Result<()> {
    #[cfg(feature = "gpt2")]
    // SAFETY: before the runtime starts the process has one thread, so changing the
    // environment races with nothing.
    unsafe {
        baton_gpt2::device::configure_memory()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run());
    // A DNS lookup still running on a blocking thread (a coordinator name that does not
    // resolve can take many seconds) must not hold up the exit after SIGTERM.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = baton_proto::telemetry::init("baton-agent");
    let mut executors: Vec<Arc<dyn Executor>> = vec![Arc::new(Builtin)];
    let mut capabilities = Capabilities::default();
    #[cfg(feature = "browser")]
    let browser = start_browser(&args.browser).await;
    #[cfg(feature = "browser")]
    if let Some(engine) = &browser {
        let (browsers, display, desktop_input) = engine.capabilities();
        capabilities.browsers = browsers;
        capabilities.display = display.unwrap_or_default();
        capabilities.desktop_input = desktop_input;
        executors.push(Arc::new(baton_agent::browser::BrowserExecutor { engine: engine.clone() }));
    }
    #[cfg(feature = "gpt2")]
    {
        let mut gpt2 = baton_gpt2::probe();
        gpt2.data_roots = baton_gpt2::files::DataRoots::new(&args.data_roots)?;
        let gpt2 = Arc::new(gpt2);
        capabilities.cuda_devices = gpt2.cuda_devices.clone();
        capabilities.torch_threads = gpt2.torch_threads;
        executors.push(Arc::new(baton_agent::gpt2::Gpt2Executor { capabilities: gpt2 }));
    }
    let (runner, events) = Runner::new(executors);
    let metrics_stop = CancellationToken::new();
    if let Some(addr) = &args.metrics_listen {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --metrics-listen {addr}"))?;
        let registry = baton_agent::metrics::registry(&runner.metrics, Arc::downgrade(&runner), args.slots);
        let scrape = Arc::new(baton_proto::metrics::Scrape { registry, ready: None });
        tokio::spawn(baton_proto::metrics::serve(listener, scrape, metrics_stop.clone()));
    }
    let agent_id =
        args.name.unwrap_or_else(|| format!("{}-{}", baton_proto::telemetry::hostname(), std::process::id()));
    let identity = Identity {
        agent_id: agent_id.clone(),
        slots: args.slots,
        labels: args.labels.into_iter().collect::<HashMap<_, _>>(),
        capabilities: probe::capabilities(runner.job_kinds(), capabilities),
        auth: args.auth,
    };
    tracing::info!(agent_id = %agent_id, slots = args.slots, cores = identity.capabilities.cpu_cores, "agent starting");
    let stopping = Stopping {
        leaving: CancellationToken::new(),
        grace_period: args.grace_period,
        close: CancellationToken::new(),
    };
    let connection =
        tokio::spawn(connection::run(args.coordinator, identity, runner.clone(), events, stopping.clone()));
    baton_proto::telemetry::terminated().await;
    stop(&runner, &stopping, &agent_id).await;
    let _ = connection.await;
    metrics_stop.cancel();
    #[cfg(feature = "browser")]
    if let Some(engine) = browser.and_then(|e| Arc::try_unwrap(e).ok()) {
        engine.shutdown().await;
    }
    Ok(())
}

/// Stops taking work, gives running jobs the grace period, hands back what is left, and
/// flushes the reports the coordinator has not acknowledged.
async fn stop(runner: &Runner, stopping: &Stopping, agent_id: &str) {
    let grace = humantime::format_duration(stopping.grace_period);
    tracing::info!(agent_id, grace_period = %grace, "stopping: taking no new work, letting running jobs finish");
    runner.stop_taking_work();
    stopping.leaving.cancel();
    if !runner.wait_idle(stopping.grace_period).await {
        let reason = format!("agent {agent_id} stopped and its {grace} grace period ran out");
        tracing::warn!(agent_id, "grace period over: handing back the jobs still running");
        runner.hand_back_all(&reason);
        runner.wait_idle(FLUSH_TIME).await;
    }
    if !runner.wait_acknowledged(FLUSH_TIME).await {
        tracing::warn!(agent_id, "the coordinator did not acknowledge every report; it will retry those jobs");
    }
    stopping.close.cancel();
}

/// How long a stopping agent waits for handed-back jobs to stop and for acknowledgements.
const FLUSH_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The browser engine, or None (with a warning) when this machine has no browser.
#[cfg(feature = "browser")]
async fn start_browser(args: &BrowserArgs) -> Option<Arc<baton_browser::BrowserEngine>> {
    if args.no_browser {
        return None;
    }
    let config = baton_browser::BrowserConfig {
        chromedriver: args.chromedriver.clone(),
        remote_webdriver: args.webdriver_url.clone(),
        display: args.display.clone(),
        desktop_input: args.desktop_input,
        allow: args.allow.clone(),
        deny: args.deny.clone(),
    };
    match baton_browser::BrowserEngine::start(config).await {
        Ok(engine) => Some(Arc::new(engine)),
        Err(e) => {
            tracing::warn!(error = %e, "browser jobs disabled");
            None
        }
    }
}
