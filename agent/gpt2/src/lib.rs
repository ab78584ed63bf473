//! baton's GPT-2 engine: `gpt2Train` and `gpt2Infer` jobs on libtorch (through `tch`).
//!
//! Layout: [`model`] is GPT-2 exactly as Hugging Face's `GPT2LMHeadModel` computes it,
//! with random init and checkpoint loading ([`checkpoint`]) and fast CPU dropout (`dropout`); [`tokenizer`] is GPT-2's BPE;
//! [`adamw`] is gradient clipping and a fused AdamW; [`device`] probes what the machine
//! offers (CUDA devices, memory, the CPU), picks the device a job runs on and measures its
//! peak memory (`cuda`: libtorch's CUDA allocator statistics and CUDA events); [`train`]
//! and [`infer`] run timed jobs and build their reports; [`stats`] turns timings into
//! percentiles.
//!
//! **Architecture invariant:** every figure is measured once: the same number goes into
//! the `tracing` span (an OpenTelemetry span under the agent) and into the report.

pub mod adamw;
pub mod checkpoint;
mod cuda;
pub mod device;
mod dropout;
pub mod files;
pub mod infer;
pub mod model;
mod setup;
pub mod stats;
pub mod tokenizer;
pub mod train;

pub use device::{Gpt2Capabilities, probe};
pub use infer::infer;
pub use train::train;

/// Why a GPT-2 job could not run. Each message is one line in the user's words.
#[derive(Debug, thiserror::Error)]
pub enum Gpt2Error {
    /// A spec rule (the same wording as submit-time validation).
    #[error(transparent)]
    Spec(#[from] baton_proto::spec::SpecError),
    #[error("checkpoint {path}: {problem}")]
    Checkpoint { path: String, problem: String },
    #[error("model needs ~{:.1} GiB on {device}, agent has {:.1} GiB available", gib(*.needed_bytes), gib(*.available_bytes))]
    NotEnoughMemory { device: String, needed_bytes: u64, available_bytes: u64 },
    #[error("device {requested} requested but this agent has no CUDA devices")]
    NoCuda { requested: String },
    #[error("device {requested} requested but this agent has {count} CUDA device(s) (cuda:0..cuda:{})", .count.saturating_sub(1))]
    NoSuchCudaDevice { requested: String, count: usize },
    #[error("training data: {0}")]
    Data(String),
    #[error("prompts: {0}")]
    Prompt(String),
    #[error("libtorch: {0}")]
    Torch(String),
    #[error("cancelled")]
    Cancelled,
}

impl From<tch::TchError> for Gpt2Error {
    /// libtorch errors carry C++ backtraces over many lines; the first line says what failed.
    fn from(e: tch::TchError) -> Self {
        let text = e.to_string();
        Gpt2Error::Torch(text.lines().next().unwrap_or_default().to_string())
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The version of libtorch this crate was built against (from torch's version.py).
pub const LIBTORCH_VERSION: &str = env!("BATON_LIBTORCH_VERSION");
pub const TCH_VERSION: &str = "0.24.0";
