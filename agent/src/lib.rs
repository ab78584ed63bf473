//! baton's agent.
//!
//! Layout: [`probe`] finds what this machine offers; [`executor`] is the small trait every
//! engine implements, with the built-in `noop` and `sleep` kinds; [`runner`] runs
//! attempts concurrently up to the agent's slots, each with its cancellation token and
//! deadline, and keeps finished reports until the coordinator acknowledges them;
//! [`connection`] holds the ConnectAgent stream open, reconnecting with backoff;
//! [`metrics`] is what the agent tells Prometheus (its jobs, the engines' figures);
//! `browser` and `gpt2` (cargo features, on by default) adapt the engine crates in
//! agent/browser and agent/gpt2 to the executor trait.
//!
//! **Architecture invariant:** the agent never decides a job's fate beyond its own
//! attempt: it reports, the coordinator records.

#[cfg(feature = "browser")]
pub mod browser;
pub mod connection;
pub mod executor;
#[cfg(feature = "gpt2")]
pub mod gpt2;
pub mod metrics;
pub mod probe;
pub mod runner;
