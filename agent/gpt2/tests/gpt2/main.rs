//! End-to-end tests of the GPT-2 engine on real libtorch (one binary, several modules).
//!
//! The parity test runs `tests/make_checkpoint.py` with the Python of the repo's venv
//! (`.venv`, made by deploy/install.sh), or with `$BATON_PYTHON`; without it the test fails
//! and says so.

mod errors;
mod inference;
mod parity;
mod tokenizer;
mod training;

use baton_gpt2::Gpt2Capabilities;
use baton_proto::v1::{Gpt2Model, Gpt2Size, gpt2_model};

/// Runs one job at a time: libtorch's random generator is process-wide, so a test that
/// compares seeded results must not share it with another test's job.
pub fn one_job_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a CPU-only agent offers: no CUDA, two threads, plenty of memory, and files under
/// the temp dir (where the tests make their checkpoints).
pub fn cpu_agent() -> Gpt2Capabilities {
    let data_roots = baton_gpt2::files::DataRoots::new(&[std::env::temp_dir()]).expect("the temp dir");
    Gpt2Capabilities { cuda_devices: vec![], torch_threads: 2, memory_bytes: 16 << 30, data_roots }
}

pub fn custom(n_layer: u32, n_head: u32, n_embd: u32, n_ctx: u32, vocab_size: u32) -> Option<Gpt2Model> {
    Some(Gpt2Model {
        source: Some(gpt2_model::Source::Custom(Gpt2Size { n_layer, n_head, n_embd, n_ctx, vocab_size })),
    })
}

pub fn checkpoint_model(dir: &std::path::Path) -> Option<Gpt2Model> {
    Some(Gpt2Model { source: Some(gpt2_model::Source::Checkpoint(dir.display().to_string())) })
}

/// The random checkpoint from transformers and its reference outputs, made once per run.
pub fn checkpoint() -> &'static (tempfile::TempDir, serde_json::Value) {
    static CHECKPOINT: std::sync::OnceLock<(tempfile::TempDir, serde_json::Value)> = std::sync::OnceLock::new();
    CHECKPOINT.get_or_init(make_checkpoint)
}

fn make_checkpoint() -> (tempfile::TempDir, serde_json::Value) {
    let python = std::env::var("BATON_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/python").to_string());
    assert!(
        std::path::Path::new(&python).exists(),
        "the parity test needs Python with torch and transformers at {python}: run deploy/install.sh \
         (or set BATON_PYTHON)"
    );
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/make_checkpoint.py");
    let out = std::process::Command::new(&python).arg(script).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "make_checkpoint.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let reference = std::fs::read_to_string(dir.path().join("reference.json")).unwrap();
    (dir, serde_json::from_str(&reference).unwrap())
}
