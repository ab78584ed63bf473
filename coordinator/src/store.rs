//! Durable job records behind one trait: the embedded redb store is the default; an etcd
//! store (several coordinators, one leader) satisfies the same trait.
//!
//! **Architecture invariant:** `commit` returns only once every job in it is durable; the
//! coordinator acknowledges nothing before that.

use crate::record::JobRecord;
use baton_proto::v1::JobResult;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open { path: String, source: redb::DatabaseError },
    #[error("store: {0}")]
    Io(String),
    #[error("store: job record {id} is unreadable: {source}")]
    Corrupt { id: String, source: prost::DecodeError },
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

/// One durable transaction's worth of changes.
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
}

pub trait Store: Send + Sync + 'static {
    fn load(&self) -> Result<Stored, StoreError>;
    /// A finished job's result, read on demand.
    fn result(&self, job_id: &str) -> Result<Option<JobResult>, StoreError>;
    /// Applies the whole change in one durable transaction.
    fn commit(&self, change: &Commit) -> Result<(), StoreError>;
}

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_records");
const RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_results");
const DRAINED: TableDefinition<&str, ()> = TableDefinition::new("drained_agents");

/// The embedded store: one redb file in the data directory.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let path = data_dir.join("baton.redb");
        // The coordinator keeps what it schedules with in memory and reads the store only at
        // start and for results: a small page cache is enough (redb's default is 1 GiB).
        let db = Database::builder()
            .set_cache_size(64 << 20)
            .create(&path)
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        let txn = db.begin_write().map_err(io)?;
        txn.open_table(JOBS).map_err(io)?;
        txn.open_table(RESULTS).map_err(io)?;
        txn.open_table(DRAINED).map_err(io)?;
        txn.commit().map_err(io)?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Stored, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(JOBS).map_err(io)?;
        let mut stored = Stored { jobs: Vec::with_capacity(table.len().map_err(io)? as usize), ..Default::default() };
        for entry in table.iter().map_err(io)? {
            let (key, value) = entry.map_err(io)?;
            let job = JobRecord::decode(value.value())
                .map_err(|source| StoreError::Corrupt { id: key.value().to_string(), source })?;
            stored.jobs.push(job);
        }
        for entry in txn.open_table(DRAINED).map_err(io)?.iter().map_err(io)? {
            stored.drained_agents.push(entry.map_err(io)?.0.value().to_string());
        }
        Ok(stored)
    }

    fn result(&self, job_id: &str) -> Result<Option<JobResult>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(RESULTS).map_err(io)?;
        let Some(value) = table.get(job_id).map_err(io)? else { return Ok(None) };
        let result = JobResult::decode(value.value())
            .map_err(|source| StoreError::Corrupt { id: job_id.to_string(), source })?;
        Ok(Some(result))
    }

    fn commit(&self, change: &Commit) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut table = txn.open_table(JOBS).map_err(io)?;
            let mut buf = Vec::new();
            for job in &change.jobs {
                buf.clear();
                job.encode(&mut buf).map_err(io)?;
                table.insert(job.id.as_str(), buf.as_slice()).map_err(io)?;
            }
            let mut results = txn.open_table(RESULTS).map_err(io)?;
            for (id, result) in &change.results {
                buf.clear();
                result.encode(&mut buf).map_err(io)?;
                results.insert(id.as_str(), buf.as_slice()).map_err(io)?;
            }
            for id in &change.removed {
                table.remove(id.as_str()).map_err(io)?;
                results.remove(id.as_str()).map_err(io)?;
            }
            let mut drained = txn.open_table(DRAINED).map_err(io)?;
            for id in &change.drained_agents {
                drained.insert(id.as_str(), ()).map_err(io)?;
            }
        }
        txn.commit().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_changes_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("baton-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = RedbStore::open(&dir).unwrap();
            let a = JobRecord { id: "a".into(), seq: 1, ..Default::default() };
            let b = JobRecord { id: "b".into(), seq: 2, ..Default::default() };
            let c = JobRecord { id: "c".into(), seq: 3, ..Default::default() };
            let noop = JobResult { kind: Some(baton_proto::v1::job_result::Kind::Noop(Default::default())) };
            let results = vec![("b".to_string(), noop.clone()), ("c".to_string(), noop)];
            store.commit(&Commit { jobs: vec![a, b.clone(), c], results, ..Default::default() }).unwrap();
            let drained_agents = vec!["agent-1".to_string()];
            let jobs = vec![JobRecord { attempt: 2, ..b }];
            store.commit(&Commit { jobs, removed: vec!["c".into()], drained_agents, ..Default::default() }).unwrap();
        }
        let store = RedbStore::open(&dir).unwrap();
        let Stored { mut jobs, drained_agents } = store.load().unwrap();
        jobs.sort_by_key(|j| j.seq);
        assert_eq!(jobs.iter().map(|j| (j.id.as_str(), j.attempt)).collect::<Vec<_>>(), [("a", 0), ("b", 2)]);
        assert_eq!(drained_agents, ["agent-1"]);
        assert!(store.result("b").unwrap().is_some());
        assert!(store.result("c").unwrap().is_none(), "removed with its record");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
