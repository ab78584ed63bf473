//! baton's contract between coordinator, agent and CLI.
//!
//! Layout: [`v1`] holds the generated `baton.v1` messages and services (with proto3 JSON
//! through serde), [`spec`] reads spec files and validates specs, [`job`] holds the
//! small domain helpers every side shares (kind names, terminal states), [`limits`] the
//! message size limits both sides enforce, [`stats`] the
//! percentile definition of every report, [`figures`] the names of a browser report's
//! figures, and
//! [`context`] is what an engine receives when it runs a job; [`telemetry`] (feature
//! `telemetry`) sets up logs and OTLP trace export for the binaries, [`metrics`] (same
//! feature) serves their Prometheus endpoint; [`client`] is how every client reaches a
//! coordinator (TLS, client certificates, bearer tokens), [`access`] the roles and tokens.

pub mod access;
pub mod client;
pub mod context;
pub mod figures;
pub mod job;
pub mod limits;
#[cfg(feature = "telemetry")]
pub mod metrics;
pub mod spec;
pub mod stats;
#[cfg(feature = "telemetry")]
pub mod telemetry;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("baton.v1");
    include!(concat!(env!("OUT_DIR"), "/baton.v1.serde.rs"));
}

/// The gRPC metadata key by which a follower coordinator tells an agent (or any caller)
/// which coordinator leads: the leader's URL.
pub const LEADER_METADATA: &str = "baton-leader";

/// The encoded descriptor set for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_descriptor");
