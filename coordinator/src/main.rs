//! `baton-coordinator --listen ADDR [--data-dir DIR | --store etcd --etcd-endpoints URL,...]`

use anyhow::Context as _;
use baton_coordinator::access::Access;
use baton_coordinator::core::Config;
use baton_coordinator::secrets::{Keyring, generate_key_file};
use baton_coordinator::server::{Ended, Listeners, Mode, Security, serve};
use baton_coordinator::state::Retention;
use baton_coordinator::store::{EtcdStore, RedbStore};
use baton_coordinator::tls::{Tls, TlsFiles};
use baton_proto::client::ClientAuth;
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
    /// Serve TLS with this certificate (PEM, with its chain); re-read when it changes.
    #[arg(long, env = "BATON_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "BATON_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Client certificates signed by this CA (PEM) authenticate: agents, named by the
    /// certificate's common name (mutual TLS; needs --tls-cert).
    #[arg(long, env = "BATON_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Who may do what: bearer tokens (by SHA-256) and certificate names with their roles
    /// (YAML; re-read when it changes). With it or --client-ca every call must authenticate.
    #[arg(long, env = "BATON_ACCESS_FILE")]
    access_file: Option<PathBuf>,
    /// The CA (PEM) that signed the other coordinators' certificates: how a follower
    /// checks its leader (https:// advertise URLs, with --store etcd).
    #[arg(long, env = "BATON_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Serve a non-loopback address without TLS or without authentication (a network
    /// you trust entirely, e.g. a pod network with policies).
    #[arg(long, env = "BATON_INSECURE")]
    insecure: bool,
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
    // Decided before binding: a refused configuration never listens, even for a moment.
    let addrs: Vec<_> =
        tokio::net::lookup_host(&args.listen).await.with_context(|| format!("--listen {}", args.listen))?.collect();
    let security = security(&args, addrs.iter().all(|a| a.ip().is_loopback()))?;
    let grpc = tokio::net::TcpListener::bind(&*addrs).await.with_context(|| format!("binding {}", args.listen))?;
    let scheme = if security.tls.is_some() { "https" } else { "http" };
    let mode = match args.store {
        StoreKind::Embedded => Mode::Embedded(Arc::new(
            RedbStore::open(&args.data_dir).with_context(|| format!("opening {}", args.data_dir.display()))?,
        )),
        StoreKind::Etcd => Mode::Etcd {
            store: Box::new(EtcdStore::connect(&args.etcd_endpoints, &args.etcd_prefix).await?),
            advertise_url: args.advertise_url.clone().unwrap_or_else(|| format!("{scheme}://{}", args.listen)),
            leader_lease: args.leader_lease,
            peers: ClientAuth { tls_ca: args.tls_ca.clone(), ..Default::default() },
        },
    };
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
    if serve(Listeners { grpc, metrics }, mode, config, security, shutdown).await? == Ended::LostLeadership {
        restart_as_follower();
    }
    Ok(())
}

/// TLS and who may call. A loopback listener may stay plaintext and open (the quick
/// start); any other needs TLS and authentication unless --insecure says otherwise.
fn security(args: &Args, loopback: bool) -> anyhow::Result<Security> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(Tls::load(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: args.client_ca.clone() })?)
        }
        _ => None,
    };
    let authenticated = args.access_file.is_some() || args.client_ca.is_some();
    if !loopback && !args.insecure {
        if tls.is_none() {
            anyhow::bail!(
                "--listen {}: not a loopback address, so it needs TLS (--tls-cert and --tls-key), or --insecure",
                args.listen
            );
        }
        if !authenticated {
            anyhow::bail!(
                "--listen {}: not a loopback address, so callers must authenticate (--access-file or --client-ca), or --insecure",
                args.listen
            );
        }
    }
    let access = if authenticated { Access::required(args.access_file.clone())? } else { Access::open() };
    Ok(Security { tls, access: Arc::new(access) })
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
