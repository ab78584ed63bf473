//! Serves the coordinator: JobService, AgentService, AdminService, gRPC health and
//! server reflection (v1 and v1alpha), until `shutdown` fires or, on etcd, leadership is
//! lost.

use crate::access::Access;
use crate::api::Api;
use crate::core::{Config, Coordinator};
use crate::leader::Election;
use crate::role::Role;
use crate::store::{EtcdStore, Store};
use crate::tls::{RELOAD_EVERY, Tls};
use baton_proto::limits::MAX_AGENT_MESSAGE_BYTES;
use baton_proto::v1::{
    admin_service_server::AdminServiceServer, agent_service_server::AgentServiceServer,
    job_service_server::JobServiceServer,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The health service name a liveness probe asks for: SERVING while the process serves.
pub const LIVENESS: &str = "liveness";

/// Where the coordinator keeps its state, and so how it comes to lead.
pub enum Mode {
    /// The embedded store: this coordinator leads from the start.
    Embedded(Arc<dyn Store>),
    /// Several coordinators on one etcd: follow (forwarding) until elected, then lead.
    Etcd {
        store: Box<EtcdStore>,
        advertise_url: String,
        leader_lease: Duration,
        /// How a follower reaches the leader (TLS with `https://` advertise URLs).
        peers: baton_proto::client::ClientAuth,
    },
}

/// Why serving ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// `shutdown` fired.
    Shutdown,
    /// This coordinator led and lost its leadership: start again as a follower.
    LostLeadership,
}

/// Where the coordinator listens: gRPC, and optionally the Prometheus endpoint.
pub struct Listeners {
    pub grpc: tokio::net::TcpListener,
    pub metrics: Option<tokio::net::TcpListener>,
}

/// How callers reach the coordinator and prove who they are.
pub struct Security {
    /// TLS on the gRPC listener (plaintext without).
    pub tls: Option<Arc<Tls>>,
    /// Who may do what.
    pub access: Arc<Access>,
}

pub async fn serve(
    listeners: Listeners,
    mode: Mode,
    config: Config,
    security: Security,
    shutdown: CancellationToken,
) -> anyhow::Result<Ended> {
    let Listeners { grpc: listener, metrics } = listeners;
    let Security { tls, access } = security;
    let timings = config.timings.clone();
    let (grpc_health, health_service) = tonic_health::server::health_reporter();
    let (ready, readyz) = watch::channel(false);
    let health = Health { grpc: grpc_health, ready: Arc::new(ready) };
    // Liveness (`grpc.health.v1` service "liveness") says only that this process answers
    // gRPC; "" and the baton services follow the store (readiness: NOT_SERVING while it
    // refuses commits), so a store outage never restarts the coordinator.
    health.grpc.set_service_status(LIVENESS, ServingStatus::Serving).await;
    // Fires on shutdown and when leadership is lost: either way the streams (agents,
    // watches) end, so the server can stop.
    let stop = shutdown.child_token();
    let role = match mode {
        Mode::Embedded(store) => Arc::new(Role::leading(start(store, config, health).await?)),
        Mode::Etcd { store, advertise_url, leader_lease, peers } => {
            // A follower serves (it forwards); as the leader, health follows the store.
            set_health(&health, true).await;
            let (leader_url, follow) = watch::channel(None);
            let role = Arc::new(Role::following(follow, advertise_url.clone(), peers));
            let election = Election::new(store.client(), store.prefix(), advertise_url, leader_lease);
            let lead = lead_when_elected(role.clone(), election, leader_url, store, config, health);
            let stop = stop.clone();
            tokio::spawn(async move {
                if let Err(e) = lead.await {
                    tracing::error!(error = %e, "cannot take over as the leader");
                }
                stop.cancel();
            });
            role
        }
    };
    if let Some(metrics) = metrics {
        let registry = crate::metrics::registry(timings, role.clone());
        let scrape = baton_proto::metrics::Scrape { registry, ready: Some(readyz) };
        tokio::spawn(baton_proto::metrics::serve(metrics, Arc::new(scrape), stop.clone()));
    }
    tokio::spawn(reload_files(tls.clone(), access.clone(), stop.clone()));
    let api = Api { role, access, shutdown: stop.clone() };
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, tls = tls.is_some(), "coordinator listening");
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Specs over the limit get INVALID_ARGUMENT naming it, up to a transport limit well above.
        .add_service(JobServiceServer::new(api.clone()).max_decoding_message_size(16 << 20))
        .add_service(
            AgentServiceServer::new(api.clone())
                .max_decoding_message_size(MAX_AGENT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_AGENT_MESSAGE_BYTES),
        )
        .add_service(AdminServiceServer::new(api.clone()));
    let server = async {
        match tls {
            Some(tls) => {
                let incoming = crate::tls::incoming(listener, tls, stop.clone());
                router.serve_with_incoming_shutdown(incoming, stop.cancelled()).await
            }
            None => {
                // Small messages (assignments, acks) must not wait for Nagle's algorithm: ~40 ms stalls.
                let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router.serve_with_incoming_shutdown(incoming, stop.cancelled()).await
            }
        }
    };
    // Calls still waiting for a commit when leadership is lost would wait for ever (their
    // changes will never be durable here): they get a moment, then the connections close
    // and their callers hear nothing was acknowledged.
    tokio::select! {
        served = server => served?,
        _ = async {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        } => tracing::warn!("calls still in flight after stopping: closing their connections"),
    }
    if let Some(coordinator) = api.role.coordinator() {
        coordinator.log_store_statistics();
    }
    Ok(if shutdown.is_cancelled() { Ended::Shutdown } else { Ended::LostLeadership })
}

/// Looks at the TLS files and the access file every [`RELOAD_EVERY`]: a rotated
/// certificate or a changed token list applies without a restart.
async fn reload_files(tls: Option<Arc<Tls>>, access: Arc<Access>, stop: CancellationToken) {
    let mut every = tokio::time::interval(RELOAD_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {
                let (tls, access) = (tls.clone(), access.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(tls) = tls {
                        tls.reload();
                    }
                    access.reload();
                })
                .await;
            }
        }
    }
}

/// Loads the state and starts the coordinator's writer and timers; health follows the
/// store from then on: NOT_SERVING while it refuses commits (nothing is acknowledged then).
async fn start(store: Arc<dyn Store>, config: Config, health: Health) -> anyhow::Result<Arc<Coordinator>> {
    let coordinator = Coordinator::new(store, config).await?;
    tokio::spawn(coordinator.clone().run_writer());
    tokio::spawn(coordinator.clone().run_expiry());
    let mut store_ok = coordinator.store_health();
    tokio::spawn(async move {
        loop {
            let ok = *store_ok.borrow_and_update();
            set_health(&health, ok).await;
            if store_ok.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(coordinator)
}

/// Readiness, told two ways: the gRPC health service ("" and the baton services) and the
/// metrics endpoint's `/readyz` (for probes that cannot speak TLS, like the kubelet's).
#[derive(Clone)]
struct Health {
    grpc: HealthReporter,
    ready: Arc<watch::Sender<bool>>,
}

async fn set_health(health: &Health, serving: bool) {
    health.ready.send_replace(serving);
    let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    for service in ["", "baton.v1.JobService", "baton.v1.AgentService", "baton.v1.AdminService"] {
        health.grpc.set_service_status(service, status).await;
    }
}

/// Campaigns; once elected, loads the state, leads, and returns when leadership is lost
/// (the lease ran out, or a write found the fence gone).
async fn lead_when_elected(
    role: Arc<Role>,
    election: Election,
    leader_url: watch::Sender<Option<String>>,
    store: Box<EtcdStore>,
    config: Config,
    health: Health,
) -> anyhow::Result<()> {
    let leadership = election.campaign(&leader_url).await;
    let coordinator = start(Arc::new(store.fenced(leadership.fence)), config, health).await?;
    role.lead(coordinator.clone());
    tracing::info!("now the leader: serving");
    tokio::select! {
        _ = leadership.lost.cancelled() => {}
        _ = coordinator.deposed() => {}
    }
    Ok(())
}
