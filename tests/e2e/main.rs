//! End-to-end tests: real binaries over loopback gRPC, real grpcurl, real Jaeger.
//! Build the binaries first: `cargo build --bins` (the test command in .ci/run does).

mod backbone;
mod browser;
mod faults;
mod gpt2;
mod ha;
mod history;
mod invalid;
mod traces;
