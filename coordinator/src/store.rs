//! Durable job records behind one trait: the embedded redb store is the default; an etcd
//! store (several coordinators, one leader) satisfies the same trait.
//!
//! **Architecture invariant:** `commit` returns only once every job in it is durable; the
//! coordinator acknowledges nothing before that.

use baton_proto::v1::Job;
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

/// What the store holds: job records and the agents an operator drained.
#[derive(Debug, Default)]
pub struct Stored {
    /// In no particular order (the caller sorts by `seq`).
    pub jobs: Vec<Job>,
    pub drained_agents: Vec<String>,
}

/// One durable transaction's worth of changes.
#[derive(Debug, Default)]
pub struct Commit {
    /// Latest records to write.
    pub jobs: Vec<Job>,
    /// Job records to delete (retention).
    pub removed: Vec<String>,
    /// Agents drained since the last commit.
    pub drained_agents: Vec<String>,
}

pub trait Store: Send + Sync + 'static {
    fn load(&self) -> Result<Stored, StoreError>;
    /// Applies the whole change in one durable transaction.
    fn commit(&self, change: &Commit) -> Result<(), StoreError>;
}

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const DRAINED: TableDefinition<&str, ()> = TableDefinition::new("drained_agents");

/// The embedded store: one redb file in the data directory.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let path = data_dir.join("baton.redb");
        let db =
            Database::create(&path).map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        let txn = db.begin_write().map_err(io)?;
        txn.open_table(JOBS).map_err(io)?;
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
            let job = Job::decode(value.value())
                .map_err(|source| StoreError::Corrupt { id: key.value().to_string(), source })?;
            stored.jobs.push(job);
        }
        for entry in txn.open_table(DRAINED).map_err(io)?.iter().map_err(io)? {
            stored.drained_agents.push(entry.map_err(io)?.0.value().to_string());
        }
        Ok(stored)
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
            for id in &change.removed {
                table.remove(id.as_str()).map_err(io)?;
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
            let a = Job { id: "a".into(), seq: 1, ..Default::default() };
            let b = Job { id: "b".into(), seq: 2, ..Default::default() };
            let c = Job { id: "c".into(), seq: 3, ..Default::default() };
            store.commit(&Commit { jobs: vec![a, b.clone(), c], ..Default::default() }).unwrap();
            let drained_agents = vec!["agent-1".to_string()];
            let change = Commit { jobs: vec![Job { attempt: 2, ..b }], removed: vec!["c".into()], drained_agents };
            store.commit(&change).unwrap();
        }
        let store = RedbStore::open(&dir).unwrap();
        let Stored { mut jobs, drained_agents } = store.load().unwrap();
        jobs.sort_by_key(|j| j.seq);
        assert_eq!(jobs.iter().map(|j| (j.id.as_str(), j.attempt)).collect::<Vec<_>>(), [("a", 0), ("b", 2)]);
        assert_eq!(drained_agents, ["agent-1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
