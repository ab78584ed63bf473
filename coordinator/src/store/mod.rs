//! Durable job records behind one trait: the embedded redb store (the default: one file,
//! no services) and the etcd store (state outside the coordinator's disk; the ground for
//! several coordinators with one leader).
//!
//! **Architecture invariant:** `commit` returns only once every change in it is durable;
//! the coordinator acknowledges nothing before that. A failed commit may have applied part
//! of the change: every write is the record's latest version, so committing it again is
//! harmless, and nothing of it was acknowledged.

mod etcd;
mod redb;

pub use self::etcd::EtcdStore;
pub use self::redb::RedbStore;
use crate::record::JobRecord;
use baton_proto::v1::JobResult;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {at}: {error}")]
    Open { at: String, error: String },
    #[error("store: {0}")]
    Io(String),
    #[error("store: job {id} is unreadable: {source}")]
    Corrupt { id: String, source: prost::DecodeError },
    /// The write's fence no longer holds: another coordinator leads now.
    #[error("store: this coordinator no longer leads; its writes are refused")]
    Deposed,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// What the coordinator loads at start: job records (results stay in the store until
/// asked for) and the agents an operator drained.
#[derive(Debug, Default)]
pub struct Stored {
    /// In no particular order (the caller sorts by `seq`).
    pub jobs: Vec<JobRecord>,
    pub drained_agents: Vec<String>,
}

/// One group commit's worth of changes.
#[derive(Debug, Default)]
pub struct Commit {
    /// Latest records to write.
    pub jobs: Vec<JobRecord>,
    /// Results of jobs that finished, kept apart from their records.
    pub results: Vec<(String, JobResult)>,
    /// Jobs to delete, record and result (retention).
    pub removed: Vec<String>,
    /// Agents drained since the last commit.
    pub drained_agents: Vec<String>,
    /// Agents whose drain ended since the last commit.
    pub undrained_agents: Vec<String>,
}

impl Commit {
    /// Only messages rode on this batch: there is nothing to make durable.
    pub fn writes_nothing(&self) -> bool {
        self.jobs.is_empty()
            && self.results.is_empty()
            && self.removed.is_empty()
            && self.drained_agents.is_empty()
            && self.undrained_agents.is_empty()
    }
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn load(&self) -> Result<Stored, StoreError>;
    /// A finished job's result, read on demand.
    async fn result(&self, job_id: &str) -> Result<Option<JobResult>, StoreError>;
    /// Makes the whole change durable. On an error it may be tried again as it is.
    async fn commit(&self, change: Arc<Commit>) -> Result<(), StoreError>;
}
