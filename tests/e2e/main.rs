//! End-to-end tests: real binaries over loopback gRPC, real grpcurl, Jaeger and Prometheus.
//! Build the binaries first: `cargo build --bins` (the test command in .ci/run does).

mod backbone;
mod browser;
mod docs;
mod faults;
mod gpt2;
mod ha;
mod history;
mod invalid;
mod kube;
mod metrics;
mod security;
mod sweeps;
mod traces;
