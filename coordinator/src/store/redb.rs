//! The embedded store: one redb file in the data directory, the default.

use super::{Commit, Store, StoreError, Stored, io};
use crate::record::JobRecord;
use baton_proto::v1::JobResult;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::Path;
use std::sync::Arc;

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_records");
const RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_results");
const DRAINED: TableDefinition<&str, ()> = TableDefinition::new("drained_agents");

/// The embedded store: one redb file in the data directory.
pub struct RedbStore {
    db: Arc<Database>,
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
            .map_err(|e| StoreError::Open { at: path.display().to_string(), error: e.to_string() })?;
        let txn = db.begin_write().map_err(io)?;
        txn.open_table(JOBS).map_err(io)?;
        txn.open_table(RESULTS).map_err(io)?;
        txn.open_table(DRAINED).map_err(io)?;
        txn.commit().map_err(io)?;
        Ok(Self { db: Arc::new(db) })
    }
}

/// redb's calls block (file IO, fsync): they run on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(io)?
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn load(&self) -> Result<Stored, StoreError> {
        let db = self.db.clone();
        blocking(move || load(&db)).await
    }

    async fn result(&self, job_id: &str) -> Result<Option<JobResult>, StoreError> {
        let (db, job_id) = (self.db.clone(), job_id.to_string());
        blocking(move || result(&db, &job_id)).await
    }

    async fn commit(&self, change: Arc<Commit>) -> Result<(), StoreError> {
        let db = self.db.clone();
        blocking(move || commit(&db, &change)).await
    }
}

fn load(db: &Database) -> Result<Stored, StoreError> {
    let txn = db.begin_read().map_err(io)?;
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

fn result(db: &Database, job_id: &str) -> Result<Option<JobResult>, StoreError> {
    let txn = db.begin_read().map_err(io)?;
    let table = txn.open_table(RESULTS).map_err(io)?;
    let Some(value) = table.get(job_id).map_err(io)? else { return Ok(None) };
    let result =
        JobResult::decode(value.value()).map_err(|source| StoreError::Corrupt { id: job_id.to_string(), source })?;
    Ok(Some(result))
}

fn commit(db: &Database, change: &Commit) -> Result<(), StoreError> {
    if change.writes_nothing() {
        return Ok(());
    }
    let txn = db.begin_write().map_err(io)?;
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
        for id in &change.undrained_agents {
            drained.remove(id.as_str()).map_err(io)?;
        }
    }
    txn.commit().map_err(io)
}
