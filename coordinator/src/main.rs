//! `baton-coordinator --listen ADDR [--data-dir DIR | --store etcd --etcd-endpoints URL,...]`

use anyhow::Context as _;
use baton_coordinator::core::Config;
use baton_coordinator::secrets::{Keyring, generate_key_file};
use baton_coordinator::server::{Ended, Listeners, Mode, serve};
use baton_coordinator::state::Retention;
use baton_coordinator::store::{EtcdStore, RedbStore};
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Hands jobs to agents and keeps every accepted job durable.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// gRPC address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070", env = "BATON_LISTEN")]
    listen: String,
    /// Serve Prometheus metrics (OpenMetrics text at /metrics) on this address; without a
    /// value, 127.0.0.1:9464. Off unless given.
    #[arg(long, env = "BATON_METRICS_LISTEN", num_args = 0..=1, default_missing_value = baton_proto::metrics::DEFAULT_LISTEN)]
    metrics_listen: Option<String>,
    /// Where jobs are kept: `embedded` (a redb file in --data-dir) or `etcd`.
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded, env = "BATON_STORE")]
    store: StoreKind,
    /// Directory of the embedded store.
    #[arg(long, default_value = "baton-data", env = "BATON_DATA_DIR")]
    data_dir: PathBuf,
    /// etcd's client URLs, comma-separated (with --store etcd).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379", env = "BATON_ETCD_ENDPOINTS")]
    etcd_endpoints: Vec<String>,
    /// The key prefix under which this baton keeps its state in etcd.
    #[arg(long, default_value = "/baton/", env = "BATON_ETCD_PREFIX")]
    etcd_prefix: String,
    /// How the other coordinators, agents and clients reach this one (with --store etcd);
    /// default: http://LISTEN.
    #[arg(long, env = "BATON_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// The leader's etcd lease (with --store etcd): a leader silent this long is replaced.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    leader_lease: Duration,
    /// An agent silent this long is lost and its jobs go back to the queue (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease_timeout: Duration,
    /// How often agents send heartbeats.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Finished jobs older than this are removed from memory and the store (e.g. 7d, 12h).
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    keep_finished_for: Duration,
    /// At most this many finished jobs are kept; the oldest go first.
    #[arg(long, default_value_t = usize::MAX, hide_default_value = true)]
    keep_finished_jobs: usize,
    /// The key that seals jobs' secrets in the store: 32 random bytes, base64 (e.g.
    /// `head -c32 /dev/urandom | base64 > secrets.key`). Default with the embedded store:
    /// DATA_DIR/secrets.key, made on first start. With etcd give every coordinator the
    /// same file; without one, jobs with secrets are refused.
    #[arg(long, env = "BATON_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// An older secrets key that still opens jobs sealed with it (repeatable): rotation.
    #[arg(long)]
    secrets_old_key_file: Vec<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StoreKind {
    Embedded,
    Etcd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = baton_proto::telemetry::init("baton-coordinator");
    if args.heartbeat_interval >= args.lease_timeout {
        anyhow::bail!("--heartbeat-interval must be shorter than --lease-timeout");
    }
    if args.leader_lease < Duration::from_secs(2) {
        anyhow::bail!("--leader-lease must be at least 2s (etcd's shortest lease)");
    }
    let keyring = Arc::new(keyring(&args)?);
    if let Some(id) = keyring.current_id() {
        tracing::info!(key_id = id, "jobs' secrets are sealed in the store");
    }
    let mode = match args.store {
        StoreKind::Embedded => Mode::Embedded(Arc::new(
            RedbStore::open(&args.data_dir).with_context(|| format!("opening {}", args.data_dir.display()))?,
        )),
        StoreKind::Etcd => Mode::Etcd {
            store: Box::new(EtcdStore::connect(&args.etcd_endpoints, &args.etcd_prefix).await?),
            advertise_url: args.advertise_url.clone().unwrap_or_else(|| format!("http://{}", args.listen)),
            leader_lease: args.leader_lease,
        },
    };
    let grpc = tokio::net::TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let metrics = match &args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --metrics-listen {addr}"))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        baton_proto::telemetry::terminated().await;
        stop.cancel();
    });
    let retention = Retention { max_age: args.keep_finished_for, max_jobs: args.keep_finished_jobs };
    let config = Config {
        lease: args.lease_timeout,
        heartbeat_interval: args.heartbeat_interval,
        retention,
        timings: Default::default(),
        keyring,
    };
    if serve(Listeners { grpc, metrics }, mode, config, shutdown).await? == Ended::LostLeadership {
        restart_as_follower();
    }
    Ok(())
}

/// The secrets keys: the given files, or with the embedded store DATA_DIR/secrets.key
/// (made on first start).
fn keyring(args: &Args) -> anyhow::Result<Keyring> {
    let current = match (&args.secrets_key_file, args.store) {
        (Some(path), _) => Some(path.clone()),
        (None, StoreKind::Embedded) => {
            std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
            let path = args.data_dir.join("secrets.key");
            if !path.exists() {
                generate_key_file(&path)?;
                tracing::info!(path = %path.display(), "made a secrets key");
            }
            Some(path)
        }
        (None, StoreKind::Etcd) => None,
    };
    Ok(Keyring::load(current.as_deref(), &args.secrets_old_key_file)?)
}

/// A coordinator that lost its leadership starts again as a new process (same pid, same
/// arguments): a follower with nothing of the old leader's state, campaigning again.
fn restart_as_follower() -> ! {
    use std::os::unix::process::CommandExt;
    tracing::warn!("lost the leadership: starting again as a follower");
    let error = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec(),
        Err(e) => e,
    };
    tracing::error!(error = %error, "cannot start again; exiting");
    std::process::exit(1)
}
