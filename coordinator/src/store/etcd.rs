//! The etcd store: job records, results and drains as keys under one prefix.
//!
//! Keys: `PREFIX/jobs/ID` (a `JobRecord`), `PREFIX/results/ID/NNNN` (a result, in parts of
//! at most 1 MiB), `PREFIX/drained/AGENT`. A commit is a set of transactions cut below
//! etcd's default limits (128 operations, 1.5 MiB per request), sent at once so etcd's raft
//! batches them into few fsyncs: first the results, then the records that point at them,
//! so a record never names a result that is not there. Loading reads the records in pages
//! at one revision. The key history is compacted every minute (a minute of history kept).

use super::{Commit, Store, StoreError, Stored, io};
use crate::leader::Fence;
use crate::record::JobRecord;
use baton_proto::v1::JobResult;
use etcd_client::{Client, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp};
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// etcd's default `--max-txn-ops` is 128.
const MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` is 1.5 MiB; stay well below with the key overhead.
const MAX_TXN_BYTES: usize = 1 << 20;
/// A result is split into parts of at most this size.
const RESULT_PART_BYTES: usize = 768 << 10;
/// Records read per page at start.
const LOAD_PAGE: i64 = 5_000;
const COMPACT_EVERY: Duration = Duration::from_secs(60);

pub struct EtcdStore {
    client: Client,
    prefix: String,
    /// Every write is conditioned on it: only the leader that holds it can write.
    fence: Option<Fence>,
    /// (when, the newest revision then): the revision compacted to a minute later.
    compaction: Mutex<(Instant, i64)>,
}

/// One transaction's operations and their size.
#[derive(Default)]
struct Batch {
    ops: Vec<TxnOp>,
    bytes: usize,
}

/// Cuts operations into transactions within etcd's limits.
#[derive(Default)]
struct Cutter {
    done: Vec<Vec<TxnOp>>,
    open: Batch,
}

impl Cutter {
    fn push(&mut self, op: TxnOp, bytes: usize) {
        if !self.open.ops.is_empty() && (self.open.ops.len() == MAX_TXN_OPS || self.open.bytes + bytes > MAX_TXN_BYTES)
        {
            self.cut();
        }
        self.open.ops.push(op);
        self.open.bytes += bytes;
    }

    fn cut(&mut self) {
        let batch = std::mem::take(&mut self.open);
        if !batch.ops.is_empty() {
            self.done.push(batch.ops);
        }
    }

    fn finish(mut self) -> Vec<Vec<TxnOp>> {
        self.cut();
        self.done
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdStore {
    /// A client of etcd (any of `endpoints`); it connects as it is used, so a coordinator
    /// can start while etcd is away (it campaigns once etcd answers).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let at = endpoints.join(",");
        // TLS and authentication to etcd come with security (issue 11): `ConnectOptions`
        // is where they go.
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let open = |e: etcd_client::Error| StoreError::Open { at: at.clone(), error: e.to_string() };
        let client = Client::connect(endpoints, Some(options)).await.map_err(open)?;
        let prefix = if prefix.ends_with('/') { prefix.to_string() } else { format!("{prefix}/") };
        Ok(Self { client, prefix, fence: None, compaction: Mutex::new((Instant::now(), 0)) })
    }

    /// The client, for the election.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The prefix every key of this baton starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The same store, writing only while `fence` holds.
    pub fn fenced(self, fence: Fence) -> Self {
        Self { fence: Some(fence), ..self }
    }

    fn key(&self, kind: &str, id: &str) -> Vec<u8> {
        format!("{}{kind}/{id}", self.prefix).into_bytes()
    }

    fn results_of(&self, job_id: &str) -> Vec<u8> {
        format!("{}results/{job_id}/", self.prefix).into_bytes()
    }

    /// Every key under `prefix`, in key order, read in pages at one revision.
    async fn range(&self, prefix: &[u8]) -> Result<Vec<etcd_client::KeyValue>, StoreError> {
        let mut kv = self.client.kv_client();
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut revision = 0;
        let mut all = Vec::new();
        loop {
            let options = GetOptions::new().with_range(end.clone()).with_limit(LOAD_PAGE).with_revision(revision);
            let mut page = kv.get(from.clone(), Some(options)).await.map_err(io)?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            let kvs = page.take_kvs();
            let full = kvs.len() as i64 == LOAD_PAGE;
            if let Some(last) = kvs.last() {
                from = [last.key(), &[0]].concat();
            }
            all.extend(kvs);
            if !full {
                return Ok(all);
            }
        }
    }

    /// Sends the transactions at once, each conditioned on the fence; returns the newest
    /// revision they made.
    async fn run(&self, batches: Vec<Vec<TxnOp>>) -> Result<i64, StoreError> {
        let sent = batches.into_iter().map(|ops| {
            let txn = match &self.fence {
                Some(fence) => Txn::new().when([fence.compare()]).and_then(ops),
                None => Txn::new().and_then(ops),
            };
            let mut kv = self.client.kv_client();
            async move { kv.txn(txn).await }
        });
        let done = futures::future::try_join_all(sent).await.map_err(io)?;
        if done.iter().any(|r| !r.succeeded()) {
            return Err(StoreError::Deposed);
        }
        Ok(done.iter().filter_map(|r| r.header().map(|h| h.revision())).max().unwrap_or(0))
    }

    /// Compacts the key history to the newest revision of a minute ago, once a minute.
    async fn compact(&self, revision: i64) {
        let due = {
            let mut last = self.compaction.lock().unwrap_or_else(|e| e.into_inner());
            if last.0.elapsed() < COMPACT_EVERY {
                return;
            }
            std::mem::replace(&mut *last, (Instant::now(), revision)).1
        };
        if due > 0
            && let Err(e) = self.client.kv_client().compact(due, None).await
        {
            tracing::warn!(error = %e, revision = due, "etcd compaction failed; the next one will try again");
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn load(&self) -> Result<Stored, StoreError> {
        let mut stored = Stored::default();
        for kv in self.range(&self.key("jobs", "")).await? {
            let id = String::from_utf8_lossy(kv.key()).into_owned();
            stored.jobs.push(JobRecord::decode(kv.value()).map_err(|source| StoreError::Corrupt { id, source })?);
        }
        let drained = self.key("drained", "");
        for kv in self.range(&drained).await? {
            stored.drained_agents.push(String::from_utf8_lossy(&kv.key()[drained.len()..]).into_owned());
        }
        Ok(stored)
    }

    async fn result(&self, job_id: &str) -> Result<Option<JobResult>, StoreError> {
        let parts = self.range(&self.results_of(job_id)).await?;
        if parts.is_empty() {
            return Ok(None);
        }
        let bytes: Vec<u8> = parts.iter().flat_map(|kv| kv.value().iter().copied()).collect();
        let result =
            JobResult::decode(bytes.as_slice()).map_err(|source| StoreError::Corrupt { id: job_id.into(), source })?;
        Ok(Some(result))
    }

    async fn commit(&self, change: Arc<Commit>) -> Result<(), StoreError> {
        if change.writes_nothing() {
            // The batch's messages (acks, cancels) go out only from the leader: check the
            // fence alone.
            self.run(vec![Vec::new()]).await?;
            return Ok(());
        }
        // Results first: each in parts, and whatever parts an older result left beyond them deleted.
        let mut results = Cutter::default();
        for (id, result) in &change.results {
            let bytes = result.encode_to_vec();
            let base = self.results_of(id);
            let mut parts = 0;
            for (n, part) in bytes.chunks(RESULT_PART_BYTES).enumerate() {
                let key = [base.as_slice(), format!("{n:04}").as_bytes()].concat();
                results.push(TxnOp::put(key, part, None), part.len() + base.len() + 4);
                parts = n + 1;
            }
            let beyond = [base.as_slice(), format!("{parts:04}").as_bytes()].concat();
            results.push(TxnOp::delete(beyond, Some(DeleteOptions::new().with_range(prefix_end(&base)))), base.len());
        }
        self.run(results.finish()).await?;
        let mut records = Cutter::default();
        for job in &change.jobs {
            let value = job.encode_to_vec();
            let key = self.key("jobs", &job.id);
            let bytes = key.len() + value.len();
            records.push(TxnOp::put(key, value, None), bytes);
        }
        for id in &change.removed {
            records.push(TxnOp::delete(self.key("jobs", id), None), id.len());
            let base = self.results_of(id);
            records.push(TxnOp::delete(base.clone(), Some(DeleteOptions::new().with_prefix())), base.len());
        }
        for agent in &change.drained_agents {
            records.push(TxnOp::put(self.key("drained", agent), Vec::new(), None), agent.len());
        }
        for agent in &change.undrained_agents {
            records.push(TxnOp::delete(self.key("drained", agent), None), agent.len());
        }
        let revision = self.run(records.finish()).await?;
        self.compact(revision).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_cut_within_etcds_limits() {
        let mut cutter = Cutter::default();
        for _ in 0..300 {
            cutter.push(TxnOp::put("k", "v", None), 2);
        }
        assert_eq!(cutter.finish().len(), 3, "128 + 128 + 44 operations");
        let mut cutter = Cutter::default();
        for _ in 0..3 {
            cutter.push(TxnOp::put("k", "v", None), 600 << 10);
        }
        assert_eq!(cutter.finish().len(), 3, "no transaction over 1 MiB");
        assert_eq!(prefix_end(b"/baton/results/j/"), b"/baton/results/j0".to_vec());
    }
}
