//! Serves the coordinator: JobService, AgentService, AdminService, gRPC health and
//! server reflection (v1 and v1alpha), until `shutdown` fires.

use crate::api::Api;
use crate::core::{Config, Coordinator};
use crate::store::Store;
use baton_proto::limits::MAX_AGENT_MESSAGE_BYTES;
use baton_proto::v1::{
    admin_service_server::AdminServiceServer, agent_service_server::AgentServiceServer,
    job_service_server::JobServiceServer,
};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn Store>,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let coordinator = Coordinator::new(store, config).await?;
    tokio::spawn(coordinator.clone().run_writer());
    tokio::spawn(coordinator.clone().run_expiry());
    let api = Api { coordinator: coordinator.clone(), shutdown: shutdown.clone() };

    let (health, health_service) = tonic_health::server::health_reporter();
    // Health follows the store: NOT_SERVING while it refuses commits (nothing is
    // acknowledged then), SERVING again when it is back.
    let mut store_ok = coordinator.store_health();
    tokio::spawn(async move {
        loop {
            let status = if *store_ok.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
            health.set_service_status("", status).await;
            health.set_service_status("baton.v1.JobService", status).await;
            health.set_service_status("baton.v1.AgentService", status).await;
            health.set_service_status("baton.v1.AdminService", status).await;
            if store_ok.changed().await.is_err() {
                return;
            }
        }
    });
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(baton_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "coordinator listening");
    // Small messages (assignments, acks) must not wait for Nagle's algorithm: ~40 ms stalls.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
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
        .add_service(AdminServiceServer::new(api))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await?;
    coordinator.log_store_statistics();
    Ok(())
}
