//! Durable job records behind one trait: the embedded redb store is the default; an etcd
//! store (several coordinators, one leader) satisfies the same trait.
//!
//! **Architecture invariant:** `commit` returns only once every job in it is durable; the
//! coordinator acknowledges nothing before that.

use baton_proto::v1::Job;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
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

pub trait Store: Send + Sync + 'static {
    /// Every job record, in no particular order (the caller sorts by `seq`).
    fn load_jobs(&self) -> Result<Vec<Job>, StoreError>;
    /// Writes the jobs' latest records in one durable transaction.
    fn commit(&self, jobs: &[Job]) -> Result<(), StoreError>;
}

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");

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
        txn.commit().map_err(io)?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn load_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(JOBS).map_err(io)?;
        let mut jobs = Vec::new();
        for entry in table.iter().map_err(io)? {
            let (key, value) = entry.map_err(io)?;
            let job = Job::decode(value.value())
                .map_err(|source| StoreError::Corrupt { id: key.value().to_string(), source })?;
            jobs.push(job);
        }
        Ok(jobs)
    }

    fn commit(&self, jobs: &[Job]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut table = txn.open_table(JOBS).map_err(io)?;
            let mut buf = Vec::new();
            for job in jobs {
                buf.clear();
                job.encode(&mut buf).map_err(io)?;
                table.insert(job.id.as_str(), buf.as_slice()).map_err(io)?;
            }
        }
        txn.commit().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_jobs_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("baton-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = RedbStore::open(&dir).unwrap();
            let a = Job { id: "a".into(), seq: 1, ..Default::default() };
            let b = Job { id: "b".into(), seq: 2, ..Default::default() };
            store.commit(&[a, b.clone()]).unwrap();
            store.commit(&[Job { attempt: 2, ..b }]).unwrap();
        }
        let store = RedbStore::open(&dir).unwrap();
        let mut jobs = store.load_jobs().unwrap();
        jobs.sort_by_key(|j| j.seq);
        assert_eq!(jobs.iter().map(|j| (j.id.as_str(), j.attempt)).collect::<Vec<_>>(), [("a", 0), ("b", 2)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
