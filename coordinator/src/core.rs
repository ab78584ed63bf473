//! The coordinator's one shared state and its path to durability.
//!
//! Every change goes through [`Coordinator::mutate`]: under one short lock the state
//! machine runs, the scheduler runs, and the changed jobs plus the messages they imply
//! join the pending batch. One writer task commits each batch in a single store
//! transaction (group commit) and only then sends the messages, answers the callers and
//! tells the watchers.
//!
//! **Architecture invariant:** nothing leaves the coordinator (reply, assignment, ack,
//! watch update) about a change before that change is durable. Progress is the one
//! exception: it is not stored and is forwarded to watchers as it comes.

use crate::metrics::Timings;
use crate::record::{JobRecord, NewJob, view as record_view};
use crate::secrets::Keyring;
use crate::state::{Action, AgentEntry, Figures, Retention, State, StateError};
use crate::store::{Commit, Store, StoreError};
use baton_proto::job::to_system_time;
use baton_proto::limits::MAX_PAGE_BYTES;
use baton_proto::telemetry::{extract, inject};
use baton_proto::v1::{
    AgentMessage, Assignment, CancelAssignment, CoordinatorMessage, FinishedAck, Hello, Job, JobResult, JobState,
    SweepProgress, coordinator_message,
};
use opentelemetry::trace::{Link, Span as _, SpanContext, SpanKind, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, global};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// An agent's outbound stream; an `Err` ends it with that status.
pub type AgentTx = mpsc::UnboundedSender<Result<CoordinatorMessage, Status>>;

#[derive(Debug, Clone)]
pub struct Config {
    /// An agent silent for this long is lost; its attempts are retried elsewhere.
    pub lease: Duration,
    /// Agents are asked to send a heartbeat this often.
    pub heartbeat_interval: Duration,
    /// How long finished jobs are kept.
    pub retention: Retention,
    /// Where queue waits, dispatch times and commits are observed (the metrics endpoint).
    pub timings: Arc<Timings>,
    /// Seals jobs' secrets at submit, opens them for the assignment.
    pub keyring: Arc<Keyring>,
}

struct AgentLink {
    connection: u64,
    tx: AgentTx,
}

enum Effect {
    Send(AgentTx, Box<coordinator_message::Kind>),
    Dispatch {
        tx: AgentTx,
        job: Box<JobRecord>,
        decided_at: SystemTime,
    },
    /// Ends an agent's stream with this status.
    Close(AgentTx, Status),
}

#[derive(Default)]
struct Batch {
    jobs: HashMap<String, JobRecord>,
    /// Finished versions of jobs removed in this same batch: for watchers only.
    last_versions: Vec<JobRecord>,
    /// Write actions taken into this batch (a job written twice counts twice).
    writes: usize,
    results: Vec<(String, JobResult)>,
    removed: Vec<String>,
    drained_agents: Vec<String>,
    undrained_agents: Vec<String>,
    effects: Vec<Effect>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.writes == 0 && self.effects.is_empty()
    }
}

struct Inner {
    state: State,
    links: HashMap<String, AgentLink>,
    watchers: HashMap<String, watch::Sender<Job>>,
    pending: Batch,
    /// The generation the pending batch will have once committed.
    pending_generation: u64,
    /// Jobs whose latest change is not durable yet, and the generation that makes it so.
    /// Reads wait for it: nobody sees a change the store could still lose.
    dirty: HashMap<String, u64>,
}

impl Inner {
    /// The generation to wait for before these jobs may be shown, if any is dirty.
    fn dirty_generation<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Option<u64> {
        ids.into_iter().filter_map(|id| self.dirty.get(id).copied()).max()
    }
}

/// Why a call could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the store cannot be read: {0}")]
    Store(#[from] StoreError),
}

/// Why a coordinator cannot start leading.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the store cannot be loaded: {0}")]
    Store(#[from] StoreError),
    #[error("job {job_id}'s secrets cannot be opened: {error}")]
    Secrets { job_id: String, error: crate::secrets::SecretsError },
}

/// A change waiting to become durable: await [`Coordinator::durable`] on it.
#[must_use]
pub struct Ticket(Option<u64>);

pub struct Coordinator {
    inner: Mutex<Inner>,
    store: Arc<dyn Store>,
    /// False while the store refuses commits: nothing is acknowledged then, and health
    /// says NOT_SERVING.
    store_ok: watch::Sender<bool>,
    /// Cancelled when a write found this coordinator no longer leads.
    deposed: CancellationToken,
    wake_writer: Notify,
    committed: watch::Sender<u64>,
    commits: AtomicU64,
    job_writes: AtomicU64,
    pub config: Config,
}

impl Coordinator {
    /// Loads the state. Refuses to start when a stored job's secrets cannot be opened
    /// (its key was not given): it could never run.
    pub async fn new(store: Arc<dyn Store>, config: Config) -> Result<Arc<Self>, StartError> {
        let began = Instant::now();
        let stored = store.load().await?;
        for job in &stored.jobs {
            if let Some(sealed) = &job.secrets {
                config.keyring.open(sealed).map_err(|error| StartError::Secrets { job_id: job.id.clone(), error })?;
            }
        }
        let state = State::restore(stored.jobs, stored.drained_agents, Instant::now());
        tracing::info!(
            jobs = state.job_count(),
            queued = state.queued_count(),
            load_ms = began.elapsed().as_millis() as u64,
            "store loaded"
        );
        Ok(Arc::new(Self {
            inner: Mutex::new(Inner {
                state,
                links: HashMap::new(),
                watchers: HashMap::new(),
                pending: Batch::default(),
                pending_generation: 1,
                dirty: HashMap::new(),
            }),
            store,
            store_ok: watch::Sender::new(true),
            deposed: CancellationToken::new(),
            wake_writer: Notify::new(),
            committed: watch::Sender::new(0),
            commits: AtomicU64::new(0),
            job_writes: AtomicU64::new(0),
            config,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the state as the panicking change left
        // it; the state machine never panics mid-change, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one change and the scheduler under the lock; returns the change's result and
    /// a ticket for its durability.
    fn mutate<R>(&self, change: impl FnOnce(&mut Inner) -> (R, Vec<Action>)) -> (R, Ticket) {
        let mut inner = self.lock();
        let (result, mut actions) = change(&mut inner);
        actions.extend(inner.state.schedule());
        let added = apply(&mut inner, actions);
        let ticket = Ticket(added.then_some(inner.pending_generation));
        drop(inner);
        if added {
            self.wake_writer.notify_one();
        }
        (result, ticket)
    }

    /// Runs a change of the state that may be refused; returns its ticket when accepted.
    fn try_mutate(
        &self,
        change: impl FnOnce(&mut State) -> Result<Vec<Action>, StateError>,
    ) -> Result<Ticket, StateError> {
        let (result, ticket) = self.mutate(|inner| match change(&mut inner.state) {
            Ok(actions) => (Ok(()), actions),
            Err(e) => (Err(e), Vec::new()),
        });
        result.map(|()| ticket)
    }

    /// Waits until the ticket's change is in the store.
    pub async fn durable(&self, ticket: Ticket) {
        if let Some(generation) = ticket.0 {
            let mut rx = self.committed.subscribe();
            // The sender lives as long as self, so wait_for cannot fail here.
            let _ = rx.wait_for(|g| *g >= generation).await;
        }
    }

    /// The group-commit loop: one store transaction per batch, then its effects.
    pub async fn run_writer(self: Arc<Self>) {
        loop {
            self.wake_writer.notified().await;
            loop {
                let (batch, generation) = {
                    let mut inner = self.lock();
                    if inner.pending.is_empty() {
                        break;
                    }
                    let generation = inner.pending_generation;
                    inner.pending_generation += 1;
                    (std::mem::take(&mut inner.pending), generation)
                };
                let change = Arc::new(Commit {
                    jobs: batch.jobs.into_values().collect(),
                    results: batch.results,
                    removed: batch.removed,
                    drained_agents: batch.drained_agents,
                    undrained_agents: batch.undrained_agents,
                });
                let began = Instant::now();
                if !self.commit_until_durable(&change, generation).await {
                    // Deposed: this batch and everything after it stay unacknowledged.
                    return;
                }
                self.config.timings.commit(batch.writes, began.elapsed());
                self.commits.fetch_add(1, Ordering::Relaxed);
                self.job_writes.fetch_add(change.jobs.len() as u64, Ordering::Relaxed);
                self.lock().dirty.retain(|_, g| *g > generation);
                self.committed.send_replace(generation);
                for effect in batch.effects {
                    run_effect(effect, &self.config);
                }
                self.notify_watchers(change.jobs.iter().chain(&batch.last_versions), &change.results);
            }
        }
    }

    /// Store commits so far and job records they wrote: group commit at work.
    pub fn log_store_statistics(&self) {
        let commits = self.commits.load(Ordering::Relaxed);
        let writes = self.job_writes.load(Ordering::Relaxed);
        let jobs_per_commit = if commits == 0 { 0.0 } else { writes as f64 / commits as f64 };
        let jobs_per_commit = (jobs_per_commit * 10.0).round() / 10.0;
        tracing::info!(commits, job_writes = writes, jobs_per_commit, "store statistics");
    }

    /// Commits one batch, trying again (with backoff, forever) while the store refuses:
    /// nothing in it is acknowledged until it is durable, and health says NOT_SERVING
    /// meanwhile.
    /// Returns false when the store refused it for good: another coordinator leads.
    async fn commit_until_durable(&self, change: &Arc<Commit>, generation: u64) -> bool {
        let mut backoff = Duration::from_millis(50);
        loop {
            let began = Instant::now();
            match self.store.commit(change.clone()).await {
                Ok(()) => {
                    tracing::debug!(commit_us = began.elapsed().as_micros() as u64, generation, "store commit");
                    if !*self.store_ok.borrow() {
                        tracing::info!("the store takes commits again; serving");
                        self.store_ok.send_replace(true);
                    }
                    return true;
                }
                Err(StoreError::Deposed) => {
                    tracing::error!("a write found another coordinator leading: stopping as the leader");
                    self.deposed.cancel();
                    return false;
                }
                Err(e) => {
                    if *self.store_ok.borrow() {
                        tracing::error!(error = %e, "the store refuses commits: acknowledging nothing until it is back");
                        self.store_ok.send_replace(false);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Resolves once a write found this coordinator no longer leads.
    pub async fn deposed(&self) {
        self.deposed.cancelled().await
    }

    /// Whether the store takes commits, now and as it changes.
    pub fn store_health(&self) -> watch::Receiver<bool> {
        self.store_ok.subscribe()
    }

    /// Sends each watched job's committed version (with its result once finished).
    fn notify_watchers<'a>(&self, jobs: impl Iterator<Item = &'a JobRecord>, results: &[(String, JobResult)]) {
        let mut inner = self.lock();
        if inner.watchers.is_empty() {
            return;
        }
        let results: HashMap<&str, &JobResult> = results.iter().map(|(id, r)| (id.as_str(), r)).collect();
        for job in jobs {
            if let Some(w) = inner.watchers.get(&job.id) {
                w.send_replace(view(&inner.state, job, results.get(job.id.as_str()).map(|r| (*r).clone())));
                if job.state().is_terminal() {
                    inner.watchers.remove(&job.id);
                }
            }
        }
    }

    /// Runs `read` until it touches no job with an uncommitted change, waiting for the
    /// commit in between: reads show only what is durable.
    async fn read_durable<T>(&self, mut read: impl FnMut(&mut Inner) -> Result<T, u64>) -> T {
        loop {
            let attempt = read(&mut self.lock());
            match attempt {
                Ok(value) => return value,
                Err(generation) => self.durable(Ticket(Some(generation))).await,
            }
        }
    }

    /// A finished job's result, from the store.
    async fn result(&self, job: &JobRecord) -> Result<Option<JobResult>, StoreError> {
        if !job.has_result {
            return Ok(None);
        }
        self.store.result(&job.id).await
    }

    /// Checks leases and deadlines, and removes finished jobs past the retention (a
    /// bounded number per tick, so the lock is never held long); call once, it loops.
    pub async fn run_expiry(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let (lease, retention) = (self.config.lease, self.config.retention);
        loop {
            tick.tick().await;
            let _ = self.mutate(|inner| {
                let mut actions = inner.state.expire(Instant::now(), lease);
                actions.extend(inner.state.expire_finished(retention, SystemTime::now(), 10_000));
                ((), actions)
            });
        }
    }

    // ---- jobs -------------------------------------------------------------------------

    /// Accepts checked submissions (spec validated, secrets sealed); the coordinator gives
    /// each its id and trace. An idempotency key already seen returns its job. The returned
    /// jobs are durable.
    pub async fn submit(&self, requests: Vec<NewJob>, client_cx: &Context) -> Vec<Job> {
        let tracer = global::tracer("baton-coordinator");
        let mut spans = Vec::new();
        let (ids, ticket) = self.mutate(|inner| {
            let state = &mut inner.state;
            let mut ids = Vec::with_capacity(requests.len());
            let mut actions = Vec::new();
            for mut new in requests {
                let key = &new.idempotency_key;
                if let Some(existing) =
                    (!key.is_empty()).then(|| state.job_by_key(&crate::record::scoped_key(&new.owner, key))).flatten()
                {
                    ids.push(existing.id.clone());
                    continue;
                }
                baton_proto::spec::normalize(&mut new.spec);
                let points = std::mem::take(&mut new.points);
                let n = points.len() as u32;
                new.sweep = (n > 0).then(|| SweepProgress { points: n, queued: n, ..Default::default() });
                let id = uuid::Uuid::now_v7().to_string();
                let spec = &new.spec;
                let mut span = tracer
                    .span_builder("baton.v1.JobService/SubmitJob")
                    .with_kind(SpanKind::Server)
                    .with_attributes([
                        KeyValue::new("rpc.system", "grpc"),
                        KeyValue::new("rpc.service", "baton.v1.JobService"),
                        KeyValue::new("rpc.method", "SubmitJob"),
                        KeyValue::new("baton.job.id", id.clone()),
                        KeyValue::new("baton.job.name", baton_proto::job::display_name(spec).to_string()),
                    ])
                    .start_with_context(&tracer, client_cx);
                let sweep_cx = span.span_context().clone();
                let (traceparent, trace_id) = trace_of(&sweep_cx);
                // The sweep is stored first: its points' moves update it.
                actions.extend(state.submit(NewJob { id: id.clone(), traceparent, trace_id, ..new }));
                // Each point has a trace of its own, linked both ways with the sweep's.
                for mut point in points {
                    baton_proto::spec::normalize(&mut point.spec);
                    let point_id = uuid::Uuid::now_v7().to_string();
                    let point_span = tracer
                        .span_builder("baton.sweep.point")
                        .with_links(vec![Link::with_context(sweep_cx.clone())])
                        .with_attributes([
                            KeyValue::new("baton.job.id", point_id.clone()),
                            KeyValue::new("baton.sweep.id", id.clone()),
                            KeyValue::new("baton.job.name", baton_proto::job::display_name(&point.spec).to_string()),
                        ])
                        .start_with_context(&tracer, &Context::new());
                    let point_cx = point_span.span_context().clone();
                    span.add_link(point_cx.clone(), Vec::new());
                    let (traceparent, trace_id) = trace_of(&point_cx);
                    spans.push(point_span);
                    let point = NewJob { id: point_id, sweep_id: id.clone(), traceparent, trace_id, ..point };
                    actions.extend(state.submit(point));
                }
                spans.push(span);
                ids.push(id);
            }
            (ids, actions)
        });
        self.durable(ticket).await;
        for mut span in spans {
            span.end();
        }
        let records = self
            .read_durable(|inner| {
                let records: Vec<JobRecord> = ids.iter().filter_map(|id| inner.state.job(id).cloned()).collect();
                inner.dirty_generation(ids.iter().map(String::as_str)).map_or(Ok(records), Err)
            })
            .await;
        let inner = self.lock();
        records.iter().map(|j| view(&inner.state, j, None)).collect()
    }

    /// Who submitted the job (it never changes, so no need to wait for durability or load
    /// its result): for checking a call on it.
    pub fn owner(&self, id: &str) -> Result<String, Error> {
        let inner = self.lock();
        Ok(inner.state.job(id).ok_or_else(|| StateError::JobNotFound(id.to_string()))?.owner.clone())
    }

    pub async fn get(&self, id: &str) -> Result<Job, Error> {
        let record = self
            .read_durable(|inner| inner.dirty_generation([id]).map_or_else(|| Ok(inner.state.job(id).cloned()), Err))
            .await
            .ok_or_else(|| StateError::JobNotFound(id.to_string()))?;
        let result = self.result(&record).await?;
        Ok(view(&self.lock().state, &record, result))
    }

    /// Newest first below `before_seq`, with results only when `full`; returns the page
    /// and the seq to continue below. A page ends early rather than exceed
    /// [`MAX_PAGE_BYTES`].
    pub async fn list(
        &self,
        filter: &JobFilter,
        before_seq: Option<u64>,
        page_size: usize,
        full: bool,
    ) -> Result<(Vec<Job>, Option<u64>), Error> {
        // A page examines at most MAX_SCAN jobs, so a filter few jobs match never holds the
        // lock for long; such a page may come back short, with a token to go on.
        const MAX_SCAN: usize = 10_000;
        let (records, resume) = self
            .read_durable(|inner| {
                let mut records: Vec<JobRecord> = Vec::with_capacity(page_size.min(1024));
                let mut resume = None;
                let mut last_examined = None;
                // Only the jobs returned are held to "durable only": a job whose uncommitted
                // change moved it out of the filter is left out (waiting on every job looked
                // at would keep a busy coordinator's lists waiting for ever).
                for (examined, job) in inner.state.jobs_newest_first(before_seq).enumerate() {
                    if records.len() == page_size || examined == MAX_SCAN {
                        resume = last_examined;
                        break;
                    }
                    last_examined = Some(job.seq);
                    if filter.matches(job) {
                        records.push(job.clone());
                    }
                }
                let dirty = inner.dirty_generation(records.iter().map(|r| r.id.as_str()));
                dirty.map_or(Ok((records, resume)), Err)
            })
            .await;
        let mut results = Vec::with_capacity(records.len());
        for record in &records {
            results.push(if full { self.result(record).await? } else { None });
        }
        let inner = self.lock();
        let mut jobs = Vec::with_capacity(records.len());
        let mut bytes = 0;
        for (record, result) in records.iter().zip(results) {
            let job = view(&inner.state, record, result);
            bytes += job.encoded_len();
            if bytes > MAX_PAGE_BYTES && !jobs.is_empty() {
                // Cut by size: go on below the last job sent.
                let last = records[jobs.len() - 1].seq;
                return Ok((jobs, Some(last)));
            }
            jobs.push(job);
        }
        Ok((jobs, resume))
    }

    /// The job now, and a receiver of its later versions (none once it is finished).
    pub async fn watch(&self, id: &str) -> Result<(Job, Option<watch::Receiver<Job>>), Error> {
        let (record, rx) = self
            .read_durable(|inner| {
                if let Some(generation) = inner.dirty_generation([id]) {
                    return Err(generation);
                }
                let Some(record) = inner.state.job(id).cloned() else { return Ok(None) };
                if record.state().is_terminal() {
                    return Ok(Some((record, None)));
                }
                let job = view(&inner.state, &record, None);
                let rx = inner.watchers.entry(id.to_string()).or_insert_with(|| watch::Sender::new(job)).subscribe();
                Ok(Some((record, Some(rx))))
            })
            .await
            .ok_or_else(|| StateError::JobNotFound(id.to_string()))?;
        let result = self.result(&record).await?;
        Ok((view(&self.lock().state, &record, result), rx))
    }

    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Job, Error> {
        let ticket = self.try_mutate(|state| state.cancel(id, reason))?;
        self.durable(ticket).await;
        self.get(id).await
    }

    // ---- agents -----------------------------------------------------------------------

    /// Registers an agent's stream and applies its hello; returns the connection number
    /// its later messages are checked against.
    pub fn agent_connected(&self, hello: &Hello, tx: AgentTx) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let connection = NEXT.fetch_add(1, Ordering::Relaxed);
        let _ = self.mutate(|inner| {
            // The link goes in first so the acks and cancels the hello produces reach it;
            // an older stream of the same agent is superseded (its sender dropped).
            inner.links.insert(hello.agent_id.clone(), AgentLink { connection, tx });
            ((), inner.state.hello(hello, Instant::now()))
        });
        connection
    }

    /// Applies a message from an agent's stream. Returns false when the stream is no
    /// longer the agent's current one (superseded or expelled): the caller stops reading.
    pub fn agent_message(&self, agent_id: &str, connection: u64, msg: AgentMessage) -> bool {
        let (current, _ticket) = self.mutate(|inner| {
            if inner.links.get(agent_id).is_none_or(|l| l.connection != connection) {
                return (false, Vec::new());
            }
            let applied = inner.state.agent_message(agent_id, msg, Instant::now());
            if let Some(job) = applied.started.as_deref().and_then(|id| inner.state.job(id)) {
                let assigned = job.assigned_at.as_ref().map(to_system_time).unwrap_or_else(SystemTime::now);
                let after = SystemTime::now().duration_since(assigned).unwrap_or_default();
                self.config.timings.dispatch(job.placement().kind, after, &job.traceparent);
            }
            // Progress is not stored; it goes to watchers unless the job has a change not
            // yet durable (the next update will carry it).
            if let Some(id) = applied.progressed.as_deref()
                && inner.dirty_generation([id]).is_none()
                && let (Some(w), Some(job)) = (inner.watchers.get(id), inner.state.job(id))
            {
                w.send_replace(view(&inner.state, job, None));
            }
            let actions = applied.actions;
            (true, actions)
        });
        current
    }

    pub fn agent_gone(&self, agent_id: &str, connection: u64) {
        let mut inner = self.lock();
        if inner.links.get(agent_id).is_some_and(|l| l.connection == connection) {
            inner.links.remove(agent_id);
            inner.state.disconnected(agent_id);
        }
    }

    /// The queues and the fleet now, for the metrics endpoint.
    pub fn figures(&self) -> Figures {
        self.lock().state.figures()
    }

    pub fn agents(&self) -> Vec<AgentEntry> {
        let inner = self.lock();
        let mut agents: Vec<_> = inner.state.agents().cloned().collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        agents
    }

    /// Drains an agent (`drain`) or ends its drain; returns once that is durable.
    pub async fn drain(&self, agent_id: &str, drain: bool) -> Result<AgentEntry, StateError> {
        let ticket = self.try_mutate(|state| if drain { state.drain(agent_id) } else { state.undrain(agent_id) })?;
        self.durable(ticket).await;
        let inner = self.lock();
        inner.state.agent(agent_id).cloned().ok_or_else(|| StateError::AgentNotFound(agent_id.to_string()))
    }
}

/// Which jobs ListJobs returns.
#[derive(Debug, Default)]
pub struct JobFilter {
    /// Any of these states; empty means all.
    pub states: Vec<i32>,
    /// All of these spec labels.
    pub labels: HashMap<String, String>,
    /// Only this principal's jobs (a caller who may see only its own).
    pub owner: Option<String>,
    /// Only this sweep's points ("" for any job).
    pub sweep_id: String,
}

impl JobFilter {
    fn matches(&self, job: &JobRecord) -> bool {
        (self.states.is_empty() || self.states.contains(&job.state))
            && (self.sweep_id.is_empty() || self.sweep_id == job.sweep_id)
            && self.owner.as_ref().is_none_or(|owner| *owner == job.owner)
            && (self.labels.is_empty() || {
                let labels = job.spec().labels;
                self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
    }
}

/// The job as clients see it: with its progress, and a queued job no connected agent can
/// run says why.
/// A span's W3C traceparent and trace id (empty when tracing is off).
fn trace_of(sc: &SpanContext) -> (String, String) {
    if !sc.is_valid() {
        return (String::new(), String::new());
    }
    let cx = Context::new().with_remote_span_context(sc.clone());
    (inject(&cx).remove("traceparent").unwrap_or_default(), sc.trace_id().to_string())
}

fn view(state: &State, record: &JobRecord, result: Option<JobResult>) -> Job {
    let mut job = record_view(record, result, state.progress_of(&record.id));
    if job.state() == JobState::Queued
        && record.sweep.is_none()
        && let Some(reason) = state.unschedulable_reason(record)
    {
        job.reason = reason;
    }
    job
}

fn message(kind: coordinator_message::Kind) -> Result<CoordinatorMessage, Status> {
    Ok(CoordinatorMessage { kind: Some(kind) })
}

/// Adds the actions' writes and messages to the pending batch; returns whether anything
/// was added (a caller then has something to wait for).
fn apply(inner: &mut Inner, actions: Vec<Action>) -> bool {
    let (writes, effects) = (inner.pending.writes, inner.pending.effects.len());
    for action in actions {
        match action {
            Action::Persist(id) => {
                if let Some(job) = inner.state.job(&id) {
                    inner.pending.jobs.insert(id.clone(), job.clone());
                    inner.pending.writes += 1;
                    inner.dirty.insert(id, inner.pending_generation);
                }
            }
            Action::StoreResult { job_id, result } => {
                inner.pending.results.push((job_id, *result));
                inner.pending.writes += 1;
            }
            Action::Remove(id) => {
                inner.pending.writes += 1;
                // A job removed in the batch that finished it: its watchers still get that version.
                if let Some(last) = inner.pending.jobs.remove(&id) {
                    inner.pending.last_versions.push(last);
                }
                inner.pending.removed.push(id);
            }
            Action::PersistDrain(agent_id) => {
                inner.pending.drained_agents.push(agent_id);
                inner.pending.writes += 1;
            }
            Action::PersistUndrain(agent_id) => {
                inner.pending.undrained_agents.push(agent_id);
                inner.pending.writes += 1;
            }
            Action::Drain { agent_id } => {
                if let Some(link) = inner.links.get(&agent_id) {
                    let kind = coordinator_message::Kind::Drain(Default::default());
                    inner.pending.effects.push(Effect::Send(link.tx.clone(), Box::new(kind)));
                }
            }
            Action::Expel { agent_id, reason } => {
                // No new message reaches the expelled stream; it ends once the batch is durable.
                if let Some(link) = inner.links.remove(&agent_id) {
                    tracing::warn!(agent_id = %agent_id, reason = %reason, "agent expelled; it must say hello again");
                    inner.pending.effects.push(Effect::Close(link.tx, Status::aborted(reason)));
                }
            }
            Action::Assign { agent_id, job_id } => {
                if let (Some(link), Some(job)) = (inner.links.get(&agent_id), inner.state.job(&job_id)) {
                    inner.pending.effects.push(Effect::Dispatch {
                        tx: link.tx.clone(),
                        job: Box::new(job.clone()),
                        decided_at: SystemTime::now(),
                    });
                }
            }
            Action::Cancel { agent_id, job_id, attempt, reason } => {
                if let Some(link) = inner.links.get(&agent_id) {
                    let kind = coordinator_message::Kind::Cancel(CancelAssignment { job_id, attempt, reason });
                    inner.pending.effects.push(Effect::Send(link.tx.clone(), Box::new(kind)));
                }
            }
            Action::Ack { agent_id, job_id, attempt } => {
                if let Some(link) = inner.links.get(&agent_id) {
                    let kind = coordinator_message::Kind::Ack(FinishedAck { job_id, attempt });
                    inner.pending.effects.push(Effect::Send(link.tx.clone(), Box::new(kind)));
                }
            }
        }
    }
    inner.pending.writes != writes || inner.pending.effects.len() != effects
}

fn run_effect(effect: Effect, config: &Config) {
    match effect {
        Effect::Send(tx, kind) => {
            // A closed link means the agent is gone; its lease settles the rest.
            let _ = tx.send(message(*kind));
        }
        Effect::Dispatch { tx, job, decided_at } => {
            // Decoded once: for the queue-wait kind and for the assignment.
            let mut spec = job.spec();
            if job.attempt == 1 {
                let submitted = job.submitted_at.as_ref().map(to_system_time).unwrap_or(decided_at);
                let wait = decided_at.duration_since(submitted).unwrap_or_default();
                let kind = spec.kind.as_ref().map(baton_proto::job::kind_name).unwrap_or("");
                config.timings.queue_wait(kind, wait, &job.traceparent);
            }
            let trace_context = trace_dispatch(&job, decided_at);
            if let Some(sealed) = &job.secrets
                && let Err(e) = config.keyring.unseal_into(&mut spec, sealed)
            {
                // Checked for every stored job at start: only a key file changed under a
                // running coordinator gets here. The attempt then times out and is retried.
                tracing::error!(job_id = %job.id, error = %e, "cannot open the job's secrets: not sending it");
                return;
            }
            let spec = Some(spec);
            let assignment = Assignment { job_id: job.id, attempt: job.attempt, spec, trace_context };
            let _ = tx.send(message(coordinator_message::Kind::Assignment(assignment)));
        }
        Effect::Close(tx, status) => {
            let _ = tx.send(Err(status));
        }
    }
}

/// Records the job's queue wait and dispatch spans under its submit span; returns the
/// dispatch span's context for the agent.
fn trace_dispatch(job: &JobRecord, decided_at: SystemTime) -> HashMap<String, String> {
    if job.traceparent.is_empty() {
        return HashMap::new();
    }
    let parent = extract(&HashMap::from([("traceparent".to_string(), job.traceparent.clone())]));
    let tracer = global::tracer("baton-coordinator");
    let attrs = || {
        vec![
            KeyValue::new("baton.job.id", job.id.clone()),
            KeyValue::new("baton.job.attempt", job.attempt as i64),
            KeyValue::new("baton.agent.id", job.agent_id.clone()),
        ]
    };
    let queued_at = job.submitted_at.as_ref().map(to_system_time).unwrap_or(decided_at);
    let mut queue = tracer
        .span_builder("queue")
        .with_start_time(queued_at)
        .with_attributes(attrs())
        .start_with_context(&tracer, &parent);
    queue.end_with_timestamp(decided_at);
    let mut dispatch = tracer
        .span_builder("dispatch")
        .with_kind(SpanKind::Producer)
        .with_start_time(decided_at)
        .with_attributes(attrs())
        .start_with_context(&tracer, &parent);
    let cx = Context::new().with_remote_span_context(dispatch.span_context().clone());
    dispatch.end();
    inject(&cx)
}
