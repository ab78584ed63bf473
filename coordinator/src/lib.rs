//! baton's coordinator.
//!
//! Layout: [`state`] is the job lifecycle and the scheduler (pure); [`record`] is the
//! stored job record and the API view built from it; [`store`] keeps records and results
//! durable; [`core`] owns the shared state and the group-commit path from a change to its
//! effects; [`api`] is the gRPC surface (jobs, agents, admin); [`server`] wires it
//! together with health and reflection; [`metrics`] is the Prometheus view of it all;
//! [`tls`] serves TLS with certificates that rotate, [`access`] decides who may call what.

pub mod access;
pub mod api;
pub mod core;
pub mod leader;
#[cfg(test)]
mod lifecycle_model;
pub mod metrics;
pub mod record;
pub mod role;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
