//! The job lifecycle and the scheduler: plain data, plain functions, no IO.
//!
//! Every method mutates [`State`] and returns the [`Action`]s the caller must carry out
//! once the changed jobs are durable: persist, send an assignment, a cancel or an ack.
//!
//! **Architecture invariant:** a job's state changes only through [`apply`], which refuses
//! every move not in [`TRANSITIONS`]; a terminal state has no way out.
//! **Architecture invariant:** a report from an agent is applied only when it names the
//! job's current attempt, the job is ASSIGNED or RUNNING, and the reporting agent holds it
//! (fencing); anything else is stale and only acknowledged.

use crate::record::{JobRecord, NewJob};
use baton_proto::job::{now, timed_out_reason, to_duration, to_system_time};
use baton_proto::limits::{enforce_progress_limit, enforce_report_limits};
use baton_proto::spec::Placement;
use baton_proto::v1::agent_message::Kind as AgentKind;
use baton_proto::v1::{
    AgentMessage, Capabilities, Hello, JobFinished, JobResult, JobState, Progress, SweepProgress, job_finished,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

/// Every legal change of a job's state, with what causes it. Nothing leaves a terminal
/// state (SUCCEEDED, FAILED, CANCELLED).
pub const TRANSITIONS: &[(JobState, JobState, &str)] = {
    use JobState::*;
    &[
        (Queued, Assigned, "the scheduler hands a new attempt to an agent"),
        (Queued, Cancelled, "cancelled before any agent ran it"),
        (Assigned, Running, "the agent reports the attempt started (or still runs it after a reconnect)"),
        (Assigned, Queued, "the attempt is lost, timed out or handed back, and attempts remain"),
        (Running, Queued, "the attempt is lost, timed out or handed back, and attempts remain"),
        (Assigned, Succeeded, "the owning attempt's report: success"),
        (Running, Succeeded, "the owning attempt's report: success"),
        (Assigned, Failed, "the owning attempt failed, or the last attempt was lost or timed out"),
        (Running, Failed, "the owning attempt failed, or the last attempt was lost or timed out"),
        (Assigned, Cancelled, "the owning attempt stopped on request"),
        (Running, Cancelled, "the owning attempt stopped on request"),
    ]
};

/// Every legal change of a sweep's state: it follows its points (`Event::Sweep`).
pub const SWEEP_TRANSITIONS: &[(JobState, JobState, &str)] = {
    use JobState::*;
    &[
        (Queued, Running, "one of its points is handed to an agent"),
        (Queued, Cancelled, "every point was cancelled before any ran"),
        (Running, Succeeded, "every point succeeded"),
        (Running, Failed, "every point is finished and one or more failed"),
        (Running, Cancelled, "every point is finished, none failed and one or more was cancelled"),
    ]
};

pub fn is_legal(from: JobState, to: JobState) -> bool {
    TRANSITIONS.iter().any(|(f, t, _)| *f == from && *t == to)
}

pub fn is_legal_for_sweep(from: JobState, to: JobState) -> bool {
    SWEEP_TRANSITIONS.iter().any(|(f, t, _)| *f == from && *t == to)
}

/// What happens to a job; [`apply`] turns it into the record's next version.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new attempt on this agent.
    Assign { agent_id: String },
    /// The attempt began executing on its agent.
    Start { at: pbjson_types::Timestamp },
    /// The job is settled: SUCCEEDED, FAILED or CANCELLED, with or without a result
    /// (which the store keeps apart from the record).
    Finish { state: JobState, reason: String, with_result: bool },
    /// The attempt ended without settling the job; it waits for the next one.
    Retry { reason: String },
    /// A sweep's points moved it to this state (sweeps take no other event).
    Sweep { state: JobState, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("illegal transition {from:?} -> {to:?}")]
pub struct Illegal {
    pub from: JobState,
    pub to: JobState,
}

/// The one function that changes a job's state.
pub fn apply(job: &mut JobRecord, event: Event) -> Result<(), Illegal> {
    let to = match &event {
        Event::Assign { .. } => JobState::Assigned,
        Event::Start { .. } => JobState::Running,
        Event::Finish { state, .. } => *state,
        Event::Retry { .. } => JobState::Queued,
        Event::Sweep { state, .. } => *state,
    };
    let from = job.state();
    let sweep = job.sweep.is_some();
    let legal = if sweep { is_legal_for_sweep(from, to) } else { is_legal(from, to) };
    if !legal || sweep != matches!(event, Event::Sweep { .. }) {
        return Err(Illegal { from, to });
    }
    match event {
        Event::Assign { agent_id } => {
            job.attempt += 1;
            job.agent_id = agent_id;
            job.assigned_at = Some(now());
            job.started_at = None;
            job.reason.clear();
        }
        Event::Start { at } => job.started_at = Some(at),
        Event::Finish { reason, with_result, .. } => {
            job.reason = reason;
            job.has_result = with_result;
            job.finished_at = Some(now());
            // A settled job runs no more: its secrets go.
            job.secrets = None;
        }
        Event::Retry { reason } => {
            job.reason = reason;
            job.started_at = None;
        }
        Event::Sweep { state, reason } => {
            job.reason = reason;
            if state == JobState::Running {
                job.started_at = Some(now());
            } else {
                job.finished_at = Some(now());
            }
        }
    }
    job.state = to as i32;
    Ok(())
}

/// What an agent's message did: the actions to carry out, and the job whose attempt just
/// started (the dispatch time is observed) or whose progress watchers may be told of.
#[derive(Debug, Default)]
pub struct Applied {
    pub actions: Vec<Action>,
    pub started: Option<String>,
    pub progressed: Option<String>,
}

/// What the caller does after the state changed, in this order, once durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write the job's new record to the store (and tell its watchers).
    Persist(String),
    /// Write the job's result to the store, next to its record.
    StoreResult { job_id: String, result: Box<JobResult> },
    /// Delete the finished job's record (retention).
    Remove(String),
    /// Store that this agent is drained.
    PersistDrain(String),
    /// Store that this agent is no longer drained.
    PersistUndrain(String),
    /// Send the job's current attempt to the agent.
    Assign { agent_id: String, job_id: String },
    /// Tell the agent to stop an attempt.
    Cancel { agent_id: String, job_id: String, attempt: u32, reason: String },
    /// Tell the agent its finished report is safe; it may forget it.
    Ack { agent_id: String, job_id: String, attempt: u32 },
    /// Tell the agent it is draining: finish what it runs, expect nothing new.
    Drain { agent_id: String },
    /// End the agent's stream: its lease expired, it must say hello again.
    Expel { agent_id: String, reason: String },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StateError {
    #[error("no job with id {0}")]
    JobNotFound(String),
    #[error("no agent with id {0}")]
    AgentNotFound(String),
}

#[derive(Debug, Clone)]
pub struct AgentEntry {
    pub id: String,
    pub slots: u32,
    pub labels: HashMap<String, String>,
    pub capabilities: Capabilities,
    pub connected: bool,
    /// Drained by an operator (durable): no new work.
    pub draining: bool,
    /// Stopping on its own (SIGTERM): no new work.
    pub leaving: bool,
    /// Jobs whose current attempt this agent holds.
    pub running: HashSet<String>,
    pub last_seen: Instant,
    pub connected_at: pbjson_types::Timestamp,
    pub last_heartbeat_at: pbjson_types::Timestamp,
}

impl AgentEntry {
    fn unknown(id: &str, now_instant: Instant) -> Self {
        Self {
            id: id.to_string(),
            slots: 0,
            labels: HashMap::new(),
            capabilities: Capabilities::default(),
            connected: false,
            draining: false,
            leaving: false,
            running: HashSet::new(),
            last_seen: now_instant,
            connected_at: Default::default(),
            last_heartbeat_at: Default::default(),
        }
    }

    pub fn free_slots(&self) -> u32 {
        if !self.connected || self.draining || self.leaving {
            return 0;
        }
        self.slots.saturating_sub(self.running.len() as u32)
    }

    /// Why this agent cannot run jobs of this placement (ignoring free slots).
    pub fn mismatch(&self, placement: &Placement) -> Option<String> {
        placement.mismatch(&self.labels, &self.capabilities)
    }
}

/// (priority, highest first; then submission order).
type QueueKey = (Reverse<i32>, u64);

/// How long finished jobs are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Finished jobs older than this are removed.
    pub max_age: Duration,
    /// At most this many finished jobs are kept (the oldest go first).
    pub max_jobs: usize,
}

#[derive(Default)]
pub struct State {
    /// Every job by its submission number (seq): listing order. Indexes hold seqs, not
    /// copies of ids, so a queued job costs its record and a few words. Boxed: appending
    /// in seq order leaves B-tree nodes half full, which costs little with 16-byte entries.
    records: BTreeMap<u64, Box<JobRecord>>,
    /// Job id → seq.
    seqs: HashMap<String, u64>,
    /// The latest progress of assigned and running jobs (not stored).
    progress: HashMap<String, Progress>,
    /// Queued jobs by placement: one queue per class of equally placeable jobs.
    queues: HashMap<Placement, BTreeSet<QueueKey>>,
    queued: usize,
    /// Finished jobs by (finished_at, seq): what retention removes first.
    finished: BTreeSet<(SystemTime, u64)>,
    /// Idempotency key → seq.
    by_key: HashMap<String, u64>,
    /// A sweep's id → its points' seqs.
    points: HashMap<String, BTreeSet<u64>>,
    agents: HashMap<String, AgentEntry>,
    /// Agents drained by an operator (durable, remembered across restarts).
    drained: HashSet<String>,
    next_seq: u64,
    tally: Tally,
}

/// Jobs submitted and settled since this coordinator started leading, by kind: what
/// throughput is read from.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub submitted: HashMap<&'static str, u64>,
    /// By kind and terminal state.
    pub finished: HashMap<(&'static str, JobState), u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Slots {
    pub all: u64,
    /// Free for new work (0 on a draining or leaving agent).
    pub free: u64,
    /// Holding an attempt.
    pub busy: u64,
}

/// The fleet and the queues as they are now, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Figures {
    /// Queued, assigned and running jobs by (state, kind).
    pub active_jobs: HashMap<(JobState, &'static str), u64>,
    /// Queued jobs by (kind, pool kind, pool): what an agent pool's autoscaler reads.
    pub queued: HashMap<(&'static str, &'static str, String), u64>,
    /// Agents by (pool, status): ready, draining, leaving or disconnected.
    pub agents: HashMap<(String, &'static str), u64>,
    /// Slots of connected agents by pool.
    pub slots: HashMap<String, Slots>,
    pub tally: Tally,
}

/// The count a job in this state is in.
fn count(c: &mut SweepProgress, state: JobState) -> &mut u32 {
    match state {
        JobState::Queued | JobState::Unspecified => &mut c.queued,
        JobState::Assigned | JobState::Running => &mut c.running,
        JobState::Succeeded => &mut c.succeeded,
        JobState::Failed => &mut c.failed,
        JobState::Cancelled => &mut c.cancelled,
    }
}

fn queue_key(job: &JobRecord) -> QueueKey {
    (Reverse(job.priority), job.seq)
}

fn finished_key(job: &JobRecord) -> (SystemTime, u64) {
    (job.finished_at.as_ref().map(to_system_time).unwrap_or(SystemTime::UNIX_EPOCH), job.seq)
}

impl State {
    /// Rebuilds the state from stored records. Jobs that were assigned or running stay
    /// with their agent until it reconnects or its lease (counted from `now`) expires.
    pub fn restore(mut jobs: Vec<JobRecord>, drained: Vec<String>, now_instant: Instant) -> Self {
        jobs.sort_by_key(|j| j.seq);
        let mut state = State { drained: drained.into_iter().collect(), ..Default::default() };
        for job in jobs {
            state.next_seq = state.next_seq.max(job.seq + 1);
            let id = job.id.clone();
            if !job.idempotency_key.is_empty() {
                state.by_key.insert(job.scoped_key(), job.seq);
            }
            state.seqs.insert(id.clone(), job.seq);
            if !job.sweep_id.is_empty() {
                state.points.entry(job.sweep_id.clone()).or_default().insert(job.seq);
            }
            match job.state() {
                // A sweep is never queued nor on an agent itself; its points are.
                JobState::Queued | JobState::Assigned | JobState::Running if job.sweep.is_some() => {}
                JobState::Queued => state.enqueue(&job),
                JobState::Assigned | JobState::Running => {
                    let agent = state
                        .agents
                        .entry(job.agent_id.clone())
                        .or_insert_with(|| AgentEntry::unknown(&job.agent_id, now_instant));
                    agent.running.insert(id.clone());
                }
                _ => {
                    state.finished.insert(finished_key(&job));
                }
            }
            state.records.insert(job.seq, Box::new(job));
        }
        // A sweep's counts are its points' states as stored: recounted here, so a store
        // that kept some writes of a commit and not others (etcd takes a large commit in
        // several transactions) cannot leave a sweep waiting for points that never come.
        let sweeps: Vec<String> = state
            .records
            .values()
            .filter(|j| j.sweep.is_some() && !j.state().is_terminal())
            .map(|j| j.id.clone())
            .collect();
        for id in sweeps {
            let mut c = SweepProgress::default();
            for point in state.points.get(&id).into_iter().flatten().filter_map(|seq| state.records.get(seq)) {
                c.points += 1;
                *count(&mut c, point.state()) += 1;
            }
            if let Some(sweep) = state.job_mut(&id) {
                sweep.sweep = Some(c);
            }
            state.follow_points(&id);
        }
        state
    }

    fn enqueue(&mut self, job: &JobRecord) {
        self.queues.entry(job.placement()).or_default().insert(queue_key(job));
        self.queued += 1;
    }

    fn dequeue(&mut self, job: &JobRecord) {
        let class = job.placement();
        if let Some(queue) = self.queues.get_mut(&class) {
            if queue.remove(&queue_key(job)) {
                self.queued -= 1;
            }
            if queue.is_empty() {
                self.queues.remove(&class);
            }
        }
    }

    pub fn job(&self, id: &str) -> Option<&JobRecord> {
        self.seqs.get(id).and_then(|seq| self.records.get(seq)).map(|job| &**job)
    }

    fn job_mut(&mut self, id: &str) -> Option<&mut JobRecord> {
        self.seqs.get(id).and_then(|seq| self.records.get_mut(seq)).map(|job| &mut **job)
    }

    /// The latest progress of an assigned or running job.
    pub fn progress_of(&self, id: &str) -> Option<&Progress> {
        self.progress.get(id)
    }

    /// The job submitted with this idempotency key ([`crate::record::scoped_key`]).
    pub fn job_by_key(&self, key: &str) -> Option<&JobRecord> {
        self.by_key.get(key).and_then(|seq| self.records.get(seq)).map(|job| &**job)
    }

    pub fn job_count(&self) -> usize {
        self.records.len()
    }

    pub fn queued_count(&self) -> usize {
        self.queued
    }

    pub fn agents(&self) -> impl Iterator<Item = &AgentEntry> {
        self.agents.values()
    }

    pub fn agent(&self, id: &str) -> Option<&AgentEntry> {
        self.agents.get(id)
    }

    /// The queues and the fleet now; costs O(queue classes + agents + running attempts),
    /// whatever the number of jobs.
    pub fn figures(&self) -> Figures {
        let mut figures = Figures { tally: self.tally.clone(), ..Default::default() };
        for (class, queue) in &self.queues {
            let n = queue.len() as u64;
            *figures.active_jobs.entry((JobState::Queued, class.kind)).or_default() += n;
            *figures.queued.entry((class.kind, class.pool_kind(), class.pool().to_string())).or_default() += n;
        }
        for agent in self.agents.values() {
            for job in agent.running.iter().filter_map(|id| self.job(id)) {
                *figures.active_jobs.entry((job.state(), job.placement().kind)).or_default() += 1;
            }
            let pool = agent.labels.get(baton_proto::spec::POOL_LABEL).cloned().unwrap_or_default();
            let status = match agent {
                a if !a.connected => "disconnected",
                a if a.leaving => "leaving",
                a if a.draining => "draining",
                _ => "ready",
            };
            *figures.agents.entry((pool.clone(), status)).or_default() += 1;
            if agent.connected {
                let slots = figures.slots.entry(pool).or_default();
                slots.all += u64::from(agent.slots);
                slots.free += u64::from(agent.free_slots());
                slots.busy += agent.running.len() as u64;
            }
        }
        figures
    }

    /// Jobs newest first, starting below `before_seq`.
    pub fn jobs_newest_first(&self, before_seq: Option<u64>) -> impl Iterator<Item = &JobRecord> {
        let upper = before_seq.unwrap_or(u64::MAX);
        self.records.range(..upper).rev().map(|(_, job)| &**job)
    }

    /// Why a queued job waits, when no connected agent could ever run it.
    pub fn unschedulable_reason(&self, job: &JobRecord) -> Option<String> {
        let placement = job.placement();
        let connected: Vec<_> = self.agents.values().filter(|a| a.connected).collect();
        if connected.is_empty() {
            return Some("no agent is connected".into());
        }
        let mut reasons = Vec::new();
        for agent in connected {
            match agent.mismatch(&placement) {
                None => return None,
                Some(r) => reasons.push(r),
            }
        }
        reasons.sort();
        reasons.dedup();
        Some(format!("no connected agent can run this job: {}", reasons.join("; ")))
    }

    /// Accepts a validated, normalized spec as a new queued job. A sweep is submitted
    /// before its points (each a `NewJob` naming it in `sweep_id`), in the same call.
    pub fn submit(&mut self, new: NewJob) -> Vec<Action> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = new.id.clone();
        let job = JobRecord::queued(seq, new);
        if !job.idempotency_key.is_empty() {
            self.by_key.insert(job.scoped_key(), seq);
        }
        self.seqs.insert(id.clone(), seq);
        if job.sweep.is_none() {
            *self.tally.submitted.entry(job.placement().kind).or_default() += 1;
            self.enqueue(&job);
        }
        if !job.sweep_id.is_empty() {
            self.points.entry(job.sweep_id.clone()).or_default().insert(seq);
        }
        self.records.insert(seq, Box::new(job));
        vec![Action::Persist(id)]
    }

    /// The one door to [`apply`] for a job in the state: a point's move also moves its
    /// sweep's counts, and the sweep's state when they say so (the extra actions persist
    /// the sweep).
    fn transition(&mut self, seq: u64, event: Event) -> Result<Vec<Action>, Illegal> {
        let Some(job) = self.records.get_mut(&seq) else { return Ok(Vec::new()) };
        let from = job.state();
        apply(job, event)?;
        let to = job.state();
        if job.sweep_id.is_empty() || from == to {
            return Ok(Vec::new());
        }
        let sweep_id = job.sweep_id.clone();
        Ok(self.point_moved(&sweep_id, from, to))
    }

    fn point_moved(&mut self, sweep_id: &str, from: JobState, to: JobState) -> Vec<Action> {
        let Some(counts) = self.job_mut(sweep_id).and_then(|s| s.sweep.as_mut()) else { return Vec::new() };
        let old = count(counts, from);
        *old = old.saturating_sub(1);
        *count(counts, to) += 1;
        self.follow_points(sweep_id);
        vec![Action::Persist(sweep_id.to_string())]
    }

    /// Moves a sweep to the state its counts say.
    fn follow_points(&mut self, sweep_id: &str) {
        let Some(sweep) = self.job_mut(sweep_id) else { return };
        let Some(c) = sweep.sweep else { return };
        let target = if c.points == 0 {
            JobState::Cancelled
        } else if c.succeeded + c.failed + c.cancelled < c.points {
            if c.queued == c.points { JobState::Queued } else { JobState::Running }
        } else if c.failed > 0 {
            JobState::Failed
        } else if c.cancelled > 0 {
            JobState::Cancelled
        } else {
            JobState::Succeeded
        };
        if target == sweep.state() {
            return;
        }
        let reason = match target {
            JobState::Failed => format!("{} of {} points failed", c.failed, c.points),
            JobState::Cancelled if c.points == 0 => "none of its points was stored".to_string(),
            JobState::Cancelled => format!("{} of {} points were cancelled", c.cancelled, c.points),
            _ => String::new(),
        };
        // Points that finished together (or a store that lost the sweep's last writes) can
        // take a queued sweep straight to its end: it ran first.
        if sweep.state() == JobState::Queued && matches!(target, JobState::Succeeded | JobState::Failed) {
            let _ = apply(sweep, Event::Sweep { state: JobState::Running, reason: String::new() });
        }
        match apply(sweep, Event::Sweep { state: target, reason }) {
            Ok(()) if target.is_terminal() => {
                let key = finished_key(sweep);
                self.finished.insert(key);
            }
            Ok(()) => {}
            Err(e) => tracing::warn!(sweep_id, error = %e, "a sweep's move refused by its lifecycle"),
        }
    }

    /// Places queued jobs on agents with free slots: priority, then FIFO across all
    /// classes; a class no free agent fits never holds back one that fits. A pass looks
    /// at each class's head only: O(classes × agents) per placed job, whatever the queue.
    pub fn schedule(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.queued == 0 {
            return actions;
        }
        let mut free: HashMap<String, u32> =
            self.agents.values().filter(|a| a.free_slots() > 0).map(|a| (a.id.clone(), a.free_slots())).collect();
        if free.is_empty() {
            return actions;
        }
        // The agents each class fits, worked out once per pass.
        let mut fitting: HashMap<Placement, Vec<String>> = HashMap::new();
        loop {
            let mut best: Option<(QueueKey, Placement, String, String)> = None;
            for (class, queue) in &self.queues {
                let Some(key) = queue.first() else { continue };
                if best.as_ref().is_some_and(|b| b.0 < *key) {
                    continue;
                }
                let agents = fitting.entry(class.clone()).or_insert_with(|| {
                    let mut ids: Vec<String> =
                        free.keys().filter(|id| self.agents[*id].mismatch(class).is_none()).cloned().collect();
                    ids.sort();
                    ids
                });
                // Most free slots wins; ties go to the first id.
                let agent = agents
                    .iter()
                    .filter(|id| free.get(*id).is_some_and(|n| *n > 0))
                    .max_by(|a, b| free[*a].cmp(&free[*b]).then_with(|| b.cmp(a)));
                if let (Some(agent), Some(job)) = (agent, self.records.get(&key.1)) {
                    best = Some((*key, class.clone(), job.id.clone(), agent.clone()));
                }
            }
            let Some((key, class, job_id, agent_id)) = best else { break };
            if let Some(queue) = self.queues.get_mut(&class) {
                queue.remove(&key);
                if queue.is_empty() {
                    self.queues.remove(&class);
                }
            }
            self.queued -= 1;
            if let Some(n) = free.get_mut(&agent_id) {
                *n -= 1;
            }
            let Ok(sweep) = self.transition(key.1, Event::Assign { agent_id: agent_id.clone() }) else { continue };
            actions.extend(sweep);
            self.progress.remove(&job_id);
            if let Some(agent) = self.agents.get_mut(&agent_id) {
                agent.running.insert(job_id.clone());
            }
            actions.push(Action::Persist(job_id.clone()));
            actions.push(Action::Assign { agent_id, job_id });
        }
        actions
    }

    /// The job whose current attempt this is, if the agent owns it: the job is ASSIGNED
    /// or RUNNING, on this attempt, on this agent.
    fn owned(&mut self, agent_id: &str, job_id: &str, attempt: u32) -> Option<&mut JobRecord> {
        self.job_mut(job_id).filter(|j| {
            matches!(j.state(), JobState::Assigned | JobState::Running)
                && j.attempt == attempt
                && j.agent_id == agent_id
        })
    }

    /// An agent said hello (first time, or again after a reconnect or an expired lease).
    /// Attempts it still runs stay with it (and are RUNNING); attempts it finished stay
    /// until their reports, which follow the hello, arrive; attempts we think it holds
    /// but it does not are lost; attempts it holds that are no longer current are
    /// cancelled. Cancels and a drain it missed are sent again.
    pub fn hello(&mut self, hello: &Hello, now_instant: Instant) -> Vec<Action> {
        let id = hello.agent_id.clone();
        let previous = self.agents.remove(&id);
        let mut entry = AgentEntry {
            slots: hello.slots,
            labels: hello.labels.clone(),
            capabilities: hello.capabilities.clone().unwrap_or_default(),
            connected: true,
            draining: self.drained.contains(&id),
            leaving: hello.leaving,
            running: previous.map(|p| p.running).unwrap_or_default(),
            last_seen: now_instant,
            connected_at: now(),
            last_heartbeat_at: now(),
            ..AgentEntry::unknown(&id, now_instant)
        };
        let finished: HashSet<(&str, u32)> = hello.finished.iter().map(|f| (f.job_id.as_str(), f.attempt)).collect();
        let mut actions = Vec::new();
        let mut lost = Vec::new();
        let mut kept = HashSet::new();
        for job_id in std::mem::take(&mut entry.running) {
            let Some(job) = self.job(&job_id) else { continue };
            let attempt = job.attempt;
            if let Some(held) = hello.running.iter().find(|r| r.job_id == job_id && r.attempt == attempt) {
                let cancel_requested = job.cancel_requested;
                let started_at = held.started_at.unwrap_or_else(now);
                if let Some(seq) =
                    self.owned(&id, &job_id, attempt).filter(|j| j.state() == JobState::Assigned).map(|j| j.seq)
                    && let Ok(sweep) = self.transition(seq, Event::Start { at: started_at })
                {
                    actions.push(Action::Persist(job_id.clone()));
                    actions.extend(sweep);
                }
                if cancel_requested {
                    actions.push(Action::Cancel {
                        agent_id: id.clone(),
                        job_id: job_id.clone(),
                        attempt,
                        reason: "cancelled by request".into(),
                    });
                }
                kept.insert(job_id);
            } else if finished.contains(&(job_id.as_str(), attempt)) {
                kept.insert(job_id);
            } else {
                lost.push(job_id);
            }
        }
        entry.running = kept;
        for r in &hello.running {
            if self.owned(&id, &r.job_id, r.attempt).is_none() {
                actions.push(Action::Cancel {
                    agent_id: id.clone(),
                    job_id: r.job_id.clone(),
                    attempt: r.attempt,
                    reason: "attempt is no longer current".into(),
                });
            }
        }
        if entry.draining {
            actions.push(Action::Drain { agent_id: id.clone() });
        }
        self.agents.insert(id.clone(), entry);
        lost.sort_by_key(|job_id| self.seqs.get(job_id).copied());
        for job_id in lost {
            actions.extend(self.retry_or_fail(
                &job_id,
                &format!("agent lost: {id} came back without it"),
                "agent lost",
            ));
        }
        actions
    }

    /// A message on an agent's stream after its hello: it renews the agent's lease and
    /// applies what it says (sizes held to the limits, whatever the agent enforced).
    pub fn agent_message(&mut self, agent_id: &str, message: AgentMessage, now_instant: Instant) -> Applied {
        self.touch(agent_id, now_instant);
        let mut applied = Applied::default();
        match message.kind {
            Some(AgentKind::Started(s)) => {
                applied.actions = self.started(agent_id, &s.job_id, s.attempt);
                applied.started = (!applied.actions.is_empty()).then_some(s.job_id);
            }
            Some(AgentKind::Progress(p)) => {
                let mut progress = p.progress.unwrap_or_default();
                enforce_progress_limit(&mut progress);
                applied.progressed = self.progress(agent_id, &p.job_id, p.attempt, progress).then_some(p.job_id);
            }
            Some(AgentKind::Finished(mut report)) => {
                enforce_report_limits(&mut report);
                applied.actions = self.finished(agent_id, report);
            }
            Some(AgentKind::Leaving(_)) => {
                tracing::info!(agent_id, "agent is stopping: no new work for it");
                self.leaving(agent_id);
            }
            Some(AgentKind::Heartbeat(_)) | Some(AgentKind::Hello(_)) | None => {}
        }
        applied
    }

    /// Any message from an agent renews its lease.
    pub fn touch(&mut self, agent_id: &str, now_instant: Instant) {
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.last_seen = now_instant;
            a.last_heartbeat_at = now();
        }
    }

    /// The agent's stream ended. A leaving agent with nothing left is forgotten; any
    /// other keeps its attempts until it says hello again or its lease expires.
    pub fn disconnected(&mut self, agent_id: &str) {
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.connected = false;
            if a.leaving && a.running.is_empty() {
                self.agents.remove(agent_id);
            }
        }
    }

    /// The agent is stopping: it gets no new work.
    pub fn leaving(&mut self, agent_id: &str) {
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.leaving = true;
        }
    }

    pub fn started(&mut self, agent_id: &str, job_id: &str, attempt: u32) -> Vec<Action> {
        let Some(seq) =
            self.owned(agent_id, job_id, attempt).filter(|j| j.state() == JobState::Assigned).map(|j| j.seq)
        else {
            return Vec::new();
        };
        match self.transition(seq, Event::Start { at: now() }) {
            Ok(sweep) => std::iter::once(Action::Persist(job_id.to_string())).chain(sweep).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Returns true when the progress was applied (the caller tells watchers).
    pub fn progress(&mut self, agent_id: &str, job_id: &str, attempt: u32, progress: Progress) -> bool {
        if self.owned(agent_id, job_id, attempt).is_none() {
            return false;
        }
        self.progress.insert(job_id.to_string(), progress);
        true
    }

    pub fn finished(&mut self, agent_id: &str, report: JobFinished) -> Vec<Action> {
        let JobFinished { job_id, attempt, result, outcome } = report;
        let ack = Action::Ack { agent_id: agent_id.to_string(), job_id: job_id.clone(), attempt };
        if self.owned(agent_id, &job_id, attempt).is_none() {
            // A duplicate of an applied report, or a stale attempt: nothing to apply, but
            // the agent may forget it.
            return vec![ack];
        }
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.running.remove(&job_id);
        }
        use job_finished::Outcome;
        let (state, reason) = match outcome {
            Some(Outcome::TimedOut(reason)) => {
                let mut actions = self.retry_or_fail(&job_id, &reason, &reason);
                actions.push(ack);
                return actions;
            }
            Some(Outcome::HandedBack(reason)) => {
                let mut actions = self.retry_or_fail(&job_id, &format!("handed back: {reason}"), "handed back");
                actions.push(ack);
                return actions;
            }
            None => (JobState::Succeeded, String::new()),
            Some(Outcome::Failure(reason)) => (JobState::Failed, reason),
            Some(Outcome::Cancelled(reason)) => (JobState::Cancelled, reason),
        };
        let with_result = result.is_some();
        let mut actions = self.settle(&job_id, Event::Finish { state, reason, with_result });
        if let Some(result) = result.filter(|_| !actions.is_empty()) {
            actions.push(Action::StoreResult { job_id, result: Box::new(result) });
        }
        actions.push(ack);
        actions
    }

    /// Applies an event that may settle the job; keeps the queue and the retention index
    /// in step with the job's new state.
    fn settle(&mut self, job_id: &str, event: Event) -> Vec<Action> {
        let Some(job) = self.job(job_id) else { return Vec::new() };
        let (seq, was_queued) = (job.seq, job.state() == JobState::Queued);
        let sweep = match self.transition(seq, event) {
            Ok(sweep) => sweep,
            Err(e) => {
                tracing::warn!(job_id, error = %e, "event refused by the job lifecycle");
                return Vec::new();
            }
        };
        let Some(job) = self.job(job_id).cloned() else { return Vec::new() };
        if was_queued {
            self.dequeue(&job);
        }
        if job.state() != JobState::Running {
            self.progress.remove(job_id);
        }
        match job.state() {
            JobState::Queued => self.enqueue(&job),
            s if s.is_terminal() => {
                self.finished.insert(finished_key(&job));
                *self.tally.finished.entry((job.placement().kind, s)).or_default() += 1;
            }
            _ => {}
        }
        std::iter::once(Action::Persist(job_id.to_string())).chain(sweep).collect()
    }

    /// The current attempt ended without settling the job: retry while attempts remain,
    /// else fail; a job whose cancel was asked for is cancelled instead.
    fn retry_or_fail(&mut self, job_id: &str, retry_reason: &str, final_reason: &str) -> Vec<Action> {
        let Some(job) = self.job(job_id) else { return Vec::new() };
        let max = job.max_attempts.max(1);
        let event = if job.cancel_requested {
            Event::Finish { state: JobState::Cancelled, reason: "cancelled by request".into(), with_result: false }
        } else if job.attempt < max {
            Event::Retry { reason: format!("{retry_reason}; retrying (attempt {} of {max} done)", job.attempt) }
        } else {
            let reason = if final_reason == retry_reason {
                format!("{final_reason} (attempt {} of {max})", job.attempt)
            } else {
                format!("{final_reason}: {retry_reason} (attempt {} of {max})", job.attempt)
            };
            Event::Finish { state: JobState::Failed, reason, with_result: false }
        };
        self.settle(job_id, event)
    }

    /// Agents whose lease ran out are expelled and their attempts lost; attempts past
    /// their deadline (counted from assignment, plus the lease for the report to come
    /// back) are cancelled and retried or failed. Costs O(agents + running attempts).
    pub fn expire(&mut self, now_instant: Instant, lease: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        let expired: Vec<String> = self
            .agents
            .values()
            .filter(|a| now_instant.saturating_duration_since(a.last_seen) > lease)
            .map(|a| a.id.clone())
            .collect();
        for agent_id in expired {
            let Some(agent) = self.agents.remove(&agent_id) else { continue };
            if agent.connected {
                let reason = format!("lease expired: nothing heard for over {}", humantime::format_duration(lease));
                actions.push(Action::Expel { agent_id: agent_id.clone(), reason });
            }
            let mut running: Vec<_> = agent.running.into_iter().collect();
            running.sort_by_key(|id| self.seqs.get(id).copied());
            for job_id in running {
                let reason = format!("agent lost: {agent_id} stopped responding");
                actions.extend(self.retry_or_fail(&job_id, &reason, "agent lost"));
            }
        }
        let wall_now = SystemTime::now();
        let mut overdue: Vec<(String, String, u32, Duration)> = Vec::new();
        for agent in self.agents.values() {
            for id in &agent.running {
                let Some(job) = self.job(id) else { continue };
                let (Some(assigned), Some(timeout)) = (job.assigned_at.as_ref(), job.timeout.as_ref()) else {
                    continue;
                };
                let timeout = to_duration(timeout);
                if wall_now.duration_since(to_system_time(assigned)).unwrap_or_default() > timeout + lease {
                    overdue.push((agent.id.clone(), id.clone(), job.attempt, timeout));
                }
            }
        }
        for (agent_id, job_id, attempt, timeout) in overdue {
            if let Some(a) = self.agents.get_mut(&agent_id) {
                a.running.remove(&job_id);
            }
            let reason = timed_out_reason(timeout);
            actions.push(Action::Cancel { agent_id, job_id: job_id.clone(), attempt, reason: reason.clone() });
            actions.extend(self.retry_or_fail(&job_id, &reason, &reason));
        }
        actions
    }

    /// Removes finished jobs past the retention, oldest first, at most `limit` per call.
    pub fn expire_finished(&mut self, retention: Retention, wall_now: SystemTime, limit: usize) -> Vec<Action> {
        let mut actions = Vec::new();
        while actions.len() < limit {
            let Some((finished_at, _)) = self.finished.first() else { break };
            let too_old = wall_now.duration_since(*finished_at).unwrap_or_default() > retention.max_age;
            if !too_old && self.finished.len() <= retention.max_jobs {
                break;
            }
            let Some((_, seq)) = self.finished.pop_first() else { break };
            let Some(job) = self.records.remove(&seq) else { continue };
            self.seqs.remove(&job.id);
            if !job.idempotency_key.is_empty() {
                self.by_key.remove(&job.scoped_key());
            }
            if let Some(points) = self.points.get_mut(&job.sweep_id) {
                points.remove(&seq);
            }
            self.points.remove(&job.id);
            actions.push(Action::Remove(job.id));
        }
        actions
    }

    /// Cancels a job: a queued one at once, a running one through its agent (the request
    /// is stored, and sent again whenever the agent says hello).
    pub fn cancel(&mut self, job_id: &str, reason: &str) -> Result<Vec<Action>, StateError> {
        let job = self.job_mut(job_id).ok_or_else(|| StateError::JobNotFound(job_id.to_string()))?;
        let reason = if reason.is_empty() { "cancelled by request".to_string() } else { reason.to_string() };
        if job.sweep.is_some() {
            return Ok(self.cancel_sweep(job_id, &reason));
        }
        match job.state() {
            JobState::Queued => {
                Ok(self.settle(job_id, Event::Finish { state: JobState::Cancelled, reason, with_result: false }))
            }
            JobState::Assigned | JobState::Running => {
                let mut actions = Vec::new();
                if !job.cancel_requested {
                    job.cancel_requested = true;
                    actions.push(Action::Persist(job_id.to_string()));
                }
                actions.push(Action::Cancel {
                    agent_id: job.agent_id.clone(),
                    job_id: job_id.to_string(),
                    attempt: job.attempt,
                    reason,
                });
                Ok(actions)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Cancels every point of a sweep that is not finished; the sweep follows them.
    fn cancel_sweep(&mut self, sweep_id: &str, reason: &str) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(sweep) = self.job_mut(sweep_id).filter(|s| !s.state().is_terminal() && !s.cancel_requested) {
            sweep.cancel_requested = true;
            actions.push(Action::Persist(sweep_id.to_string()));
        }
        let points: Vec<String> = self
            .points
            .get(sweep_id)
            .into_iter()
            .flatten()
            .filter_map(|seq| self.records.get(seq))
            .filter(|p| !p.state().is_terminal())
            .map(|p| p.id.clone())
            .collect();
        for id in points {
            actions.extend(self.cancel(&id, reason).unwrap_or_default());
        }
        actions
    }

    /// Drains an agent for good (until the coordinator's store is wiped): it finishes what
    /// it runs and gets nothing new, across reconnects and coordinator restarts.
    pub fn drain(&mut self, agent_id: &str) -> Result<Vec<Action>, StateError> {
        let agent = self.agents.get_mut(agent_id).ok_or_else(|| StateError::AgentNotFound(agent_id.to_string()))?;
        agent.draining = true;
        let mut actions = Vec::new();
        if self.drained.insert(agent_id.to_string()) {
            actions.push(Action::PersistDrain(agent_id.to_string()));
        }
        actions.push(Action::Drain { agent_id: agent_id.to_string() });
        Ok(actions)
    }

    /// Ends a drain: the agent gets jobs again (stored, like the drain).
    pub fn undrain(&mut self, agent_id: &str) -> Result<Vec<Action>, StateError> {
        let agent = self.agents.get_mut(agent_id).ok_or_else(|| StateError::AgentNotFound(agent_id.to_string()))?;
        agent.draining = false;
        Ok(if self.drained.remove(agent_id) { vec![Action::PersistUndrain(agent_id.to_string())] } else { Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::v1::{AttemptRef, JobResult, JobSpec, NoopResult, Requirements, SleepSpec, job_result, job_spec};

    pub(crate) fn spec(priority: i32) -> JobSpec {
        JobSpec {
            priority,
            max_attempts: 2,
            timeout: Some(baton_proto::job::from_duration(Duration::from_secs(60))),
            kind: Some(job_spec::Kind::Sleep(SleepSpec { duration_ms: 1, fail: false })),
            ..Default::default()
        }
    }

    pub(crate) fn hello(id: &str, slots: u32, labels: &[(&str, &str)]) -> Hello {
        Hello {
            agent_id: id.into(),
            slots,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            capabilities: Some(Capabilities {
                cpu_cores: 2,
                job_kinds: vec!["sleep".into(), "noop".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn assigned(actions: &[Action]) -> Vec<(String, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Assign { agent_id, job_id } => Some((agent_id.clone(), job_id.clone())),
                _ => None,
            })
            .collect()
    }

    fn submit(state: &mut State, id: &str, spec: JobSpec) {
        state.submit(NewJob { id: id.into(), spec, ..Default::default() });
    }

    fn report(id: &str, attempt: u32, outcome: Option<job_finished::Outcome>) -> JobFinished {
        let result = Some(JobResult { kind: Some(job_result::Kind::Noop(NoopResult {})) });
        JobFinished { job_id: id.into(), attempt, result, outcome }
    }

    fn succeed(state: &mut State, agent: &str, id: &str) -> Vec<Action> {
        let attempt = state.job(id).unwrap().attempt;
        state.finished(agent, report(id, attempt, None))
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        use JobState::*;
        for from in [Succeeded, Failed, Cancelled] {
            for to in [Queued, Assigned, Running, Succeeded, Failed, Cancelled] {
                assert!(!is_legal(from, to), "{from:?} -> {to:?}");
            }
        }
        let mut job = JobRecord { state: Succeeded as i32, attempt: 1, ..Default::default() };
        assert_eq!(apply(&mut job, Event::Retry { reason: "x".into() }), Err(Illegal { from: Succeeded, to: Queued }));
        assert_eq!(job.state(), Succeeded);
    }

    /// A sweep of `n` sleep points, submitted as the coordinator does it.
    fn submit_sweep(state: &mut State, id: &str, n: u32) {
        let sweep = Some(SweepProgress { points: n, queued: n, ..Default::default() });
        state.submit(NewJob { id: id.into(), spec: spec(0), sweep, ..Default::default() });
        for i in 0..n {
            let point = NewJob { id: format!("{id}-{i}"), spec: spec(0), sweep_id: id.into(), ..Default::default() };
            state.submit(point);
        }
    }

    fn counts(state: &State, id: &str) -> (JobState, [u32; 5]) {
        let job = state.job(id).unwrap();
        let c = job.sweep.unwrap();
        (job.state(), [c.queued, c.running, c.succeeded, c.failed, c.cancelled])
    }

    #[test]
    fn a_sweep_follows_its_points_and_is_persisted_with_each_move() {
        use JobState::*;
        let mut s = State::default();
        submit_sweep(&mut s, "sw", 3);
        assert_eq!(s.queued_count(), 3, "the points are queued, the sweep is not");
        assert_eq!(counts(&s, "sw"), (Queued, [3, 0, 0, 0, 0]));
        s.hello(&hello("a", 2, &[]), Instant::now());
        let actions = s.schedule();
        assert_eq!(assigned(&actions).len(), 2);
        assert!(actions.contains(&Action::Persist("sw".into())), "the sweep moves with its points: {actions:?}");
        assert_eq!(counts(&s, "sw"), (Running, [1, 2, 0, 0, 0]));
        let finish = s.finished("a", report("sw-0", 1, Some(job_finished::Outcome::Failure("oom".into()))));
        assert!(finish.contains(&Action::Persist("sw".into())));
        succeed(&mut s, "a", "sw-1");
        s.schedule();
        assert_eq!(counts(&s, "sw"), (Running, [0, 1, 1, 1, 0]));
        succeed(&mut s, "a", "sw-2");
        assert_eq!(counts(&s, "sw"), (Failed, [0, 0, 2, 1, 0]));
        assert_eq!(s.job("sw").unwrap().reason, "1 of 3 points failed");
        assert!(s.job("sw").unwrap().finished_at.is_some());

        // Restored, nothing is queued or assigned twice: the sweep itself never runs.
        let records: Vec<JobRecord> = s.jobs_newest_first(None).cloned().collect();
        let mut restored = State::restore(records, Vec::new(), Instant::now());
        assert_eq!(restored.queued_count(), 0);
        restored.hello(&hello("a", 2, &[]), Instant::now());
        assert!(assigned(&restored.schedule()).is_empty());
    }

    #[test]
    fn a_restored_sweep_is_counted_from_the_points_the_store_kept() {
        use JobState::*;
        let mut s = State::default();
        submit_sweep(&mut s, "sw", 3);
        s.hello(&hello("a", 3, &[]), Instant::now());
        s.schedule();
        succeed(&mut s, "a", "sw-0");
        succeed(&mut s, "a", "sw-1");
        // The store kept the points' last writes but not the sweep's, nor point 2 at all.
        let mut records: Vec<JobRecord> = s.jobs_newest_first(None).filter(|j| j.id != "sw-2").cloned().collect();
        let sweep = records.iter_mut().find(|j| j.id == "sw").unwrap();
        sweep.state = Queued as i32;
        sweep.sweep = Some(SweepProgress { points: 3, queued: 3, ..Default::default() });
        let restored = State::restore(records, Vec::new(), Instant::now());
        assert_eq!(counts(&restored, "sw"), (Succeeded, [0, 0, 2, 0, 0]));
        assert_eq!(restored.job("sw").unwrap().sweep.unwrap().points, 2);
    }

    #[test]
    fn cancelling_a_sweep_cancels_every_unfinished_point() {
        use JobState::*;
        let mut s = State::default();
        submit_sweep(&mut s, "sw", 3);
        s.hello(&hello("a", 1, &[]), Instant::now());
        s.schedule();
        succeed(&mut s, "a", "sw-0");
        s.schedule();
        let actions = s.cancel("sw", "").unwrap();
        assert!(actions.iter().any(|a| matches!(a, Action::Cancel { job_id, .. } if job_id == "sw-1")), "{actions:?}");
        assert_eq!(s.job("sw-2").unwrap().state(), Cancelled, "a queued point is cancelled at once");
        assert_eq!(counts(&s, "sw"), (Running, [0, 1, 1, 0, 1]));
        s.finished("a", report("sw-1", 1, Some(job_finished::Outcome::Cancelled("cancelled by request".into()))));
        assert_eq!(counts(&s, "sw"), (Cancelled, [0, 0, 1, 0, 2]));
        assert!(s.job("sw").unwrap().cancel_requested);

        let mut queued_only = State::default();
        submit_sweep(&mut queued_only, "q", 2);
        queued_only.cancel("q", "").unwrap();
        assert_eq!(counts(&queued_only, "q"), (Cancelled, [0, 0, 0, 0, 2]));
    }

    #[test]
    fn a_sweep_takes_only_sweep_events_and_a_job_none() {
        use JobState::*;
        let mut sweep = JobRecord { sweep: Some(SweepProgress::default()), ..Default::default() };
        sweep.state = Queued as i32;
        assert!(apply(&mut sweep, Event::Assign { agent_id: "a".into() }).is_err());
        assert!(apply(&mut sweep, Event::Sweep { state: Succeeded, reason: String::new() }).is_err());
        assert!(apply(&mut sweep, Event::Sweep { state: Running, reason: String::new() }).is_ok());
        let mut job = JobRecord { state: Running as i32, ..Default::default() };
        assert!(apply(&mut job, Event::Sweep { state: Succeeded, reason: String::new() }).is_err());
        for (from, to, _) in SWEEP_TRANSITIONS {
            assert!(!from.is_terminal(), "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn priority_then_fifo() {
        let mut s = State::default();
        submit(&mut s, "low1", spec(0));
        submit(&mut s, "high", spec(5));
        submit(&mut s, "low2", spec(0));
        s.hello(&hello("a", 1, &[]), Instant::now());
        assert_eq!(assigned(&s.schedule()), [("a".into(), "high".into())]);
        succeed(&mut s, "a", "high");
        assert_eq!(assigned(&s.schedule()), [("a".into(), "low1".into())]);
    }

    #[test]
    fn priority_then_fifo_across_classes() {
        let mut s = State::default();
        let labelled = |p| JobSpec {
            requirements: Some(Requirements { agent_labels: [("zone".into(), "eu".into())].into(), min_cpu_cores: 0 }),
            ..spec(p)
        };
        submit(&mut s, "plain-old", spec(0));
        submit(&mut s, "eu-new", labelled(0));
        submit(&mut s, "eu-urgent", labelled(9));
        s.hello(&hello("a", 1, &[("zone", "eu")]), Instant::now());
        assert_eq!(assigned(&s.schedule()), [("a".into(), "eu-urgent".into())]);
        succeed(&mut s, "a", "eu-urgent");
        assert_eq!(assigned(&s.schedule()), [("a".into(), "plain-old".into())]);
    }

    #[test]
    fn no_head_of_line_blocking() {
        let mut s = State::default();
        let gpu = JobSpec {
            requirements: Some(Requirements { agent_labels: [("gpu".into(), "h200".into())].into(), min_cpu_cores: 0 }),
            ..spec(10)
        };
        submit(&mut s, "needs-gpu", gpu);
        submit(&mut s, "plain", spec(0));
        s.hello(&hello("cpu", 4, &[]), Instant::now());
        assert_eq!(assigned(&s.schedule()), [("cpu".into(), "plain".into())]);
        let reason = s.unschedulable_reason(s.job("needs-gpu").unwrap()).unwrap();
        assert_eq!(reason, "no connected agent can run this job: label gpu=h200 is required");
    }

    #[test]
    fn figures_count_queues_by_pool_slots_by_agent_pool_and_settled_jobs() {
        let mut s = State::default();
        let for_pool = |pool: &str| JobSpec {
            requirements: Some(Requirements { agent_labels: [("pool".into(), pool.into())].into(), min_cpu_cores: 0 }),
            ..spec(0)
        };
        for i in 0..3 {
            submit(&mut s, &format!("any{i}"), spec(0));
        }
        submit(&mut s, "gpu-only", for_pool("h200"));
        s.hello(&hello("a", 2, &[("pool", "cpu")]), Instant::now());
        s.schedule();
        succeed(&mut s, "a", "any0");
        s.schedule();
        s.drain("a").unwrap();
        let f = s.figures();
        assert_eq!(f.queued.get(&("sleep", "cpu", String::new())), None, "all three taken (one finished)");
        assert_eq!(f.queued.get(&("sleep", "cpu", "h200".to_string())), Some(&1));
        assert_eq!(f.active_jobs.get(&(JobState::Queued, "sleep")), Some(&1));
        assert_eq!(f.active_jobs.get(&(JobState::Assigned, "sleep")), Some(&2));
        assert_eq!(f.slots.get("cpu"), Some(&Slots { all: 2, free: 0, busy: 2 }), "a draining agent has no free slot");
        assert_eq!(f.agents.get(&("cpu".to_string(), "draining")), Some(&1));
        assert_eq!(f.tally.submitted.get("sleep"), Some(&4));
        assert_eq!(f.tally.finished.get(&("sleep", JobState::Succeeded)), Some(&1));
        s.cancel("gpu-only", "").unwrap();
        assert_eq!(s.figures().tally.finished.get(&("sleep", JobState::Cancelled)), Some(&1));
        assert!(s.figures().queued.is_empty());
    }

    #[test]
    fn slots_bound_concurrency() {
        let mut s = State::default();
        for i in 0..5 {
            submit(&mut s, &format!("j{i}"), spec(0));
        }
        s.hello(&hello("a", 2, &[]), Instant::now());
        s.hello(&hello("b", 1, &[]), Instant::now());
        assert_eq!(assigned(&s.schedule()).len(), 3);
        assert!(assigned(&s.schedule()).is_empty());
        assert_eq!(s.queued_count(), 2);
    }

    /// Issue 8: a late report of the old owner was applied to a queued job, and the job
    /// then ran and succeeded a second time.
    #[test]
    fn a_late_report_of_a_lost_attempt_is_only_acknowledged() {
        let mut s = State::default();
        submit(&mut s, "j", spec(0));
        let t0 = Instant::now();
        s.hello(&hello("a", 1, &[]), t0);
        s.schedule();
        // a goes silent past its lease: it is expelled and the attempt goes back to the queue.
        let actions = s.expire(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert!(actions.contains(&Action::Expel {
            agent_id: "a".into(),
            reason: "lease expired: nothing heard for over 10s".into()
        }));
        assert_eq!(s.job("j").unwrap().state(), JobState::Queued);
        // Its late success for attempt 1 is acknowledged, not applied, while queued...
        let ack = Action::Ack { agent_id: "a".into(), job_id: "j".into(), attempt: 1 };
        assert_eq!(s.finished("a", report("j", 1, None)), std::slice::from_ref(&ack));
        assert_eq!(s.job("j").unwrap().state(), JobState::Queued);
        // ...and once attempt 2 runs elsewhere.
        s.hello(&hello("b", 1, &[]), t0 + Duration::from_secs(11));
        assert_eq!(assigned(&s.schedule()), [("b".into(), "j".into())]);
        assert_eq!(s.finished("a", report("j", 1, None)), [ack]);
        assert_eq!(s.job("j").unwrap().state(), JobState::Assigned);
        succeed(&mut s, "b", "j");
        assert_eq!(s.job("j").unwrap().state(), JobState::Succeeded);
        assert!(s.schedule().is_empty(), "a finished job is never scheduled again");
    }

    /// Issue 8: the resumed agent stayed connected but vanished for good (a ghost).
    #[test]
    fn an_expelled_agent_says_hello_again_and_gets_work() {
        let mut s = State::default();
        submit(&mut s, "j", spec(0));
        let t0 = Instant::now();
        s.hello(&hello("a", 1, &[]), t0);
        s.schedule();
        s.expire(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert!(s.agent("a").is_none());
        let mut again = hello("a", 1, &[]);
        again.running = vec![AttemptRef { job_id: "j".into(), attempt: 1, started_at: None }];
        let actions = s.hello(&again, t0 + Duration::from_secs(12));
        assert!(actions.iter().any(
            |a| matches!(a, Action::Cancel { attempt: 1, reason, .. } if reason == "attempt is no longer current")
        ));
        assert!(s.agent("a").unwrap().connected);
    }

    #[test]
    fn lost_on_last_attempt_fails_with_agent_lost() {
        let mut s = State::default();
        submit(&mut s, "j", JobSpec { max_attempts: 1, ..spec(0) });
        let t0 = Instant::now();
        s.hello(&hello("a", 1, &[]), t0);
        s.schedule();
        s.expire(t0 + Duration::from_secs(11), Duration::from_secs(10));
        let job = s.job("j").unwrap();
        assert_eq!(job.state(), JobState::Failed);
        assert!(job.reason.starts_with("agent lost"), "{}", job.reason);
    }

    #[test]
    fn reconnect_keeps_held_and_reported_attempts_and_loses_the_rest() {
        let mut s = State::default();
        for id in ["kept", "reported", "dropped"] {
            submit(&mut s, id, spec(0));
        }
        let t0 = Instant::now();
        s.hello(&hello("a", 3, &[]), t0);
        s.schedule();
        let mut again = hello("a", 3, &[]);
        // The Started report was lost in the reconnect: the hello says it runs.
        again.running = vec![AttemptRef { job_id: "kept".into(), attempt: 1, started_at: Some(now()) }];
        again.finished = vec![AttemptRef { job_id: "reported".into(), attempt: 1, started_at: None }];
        s.hello(&again, t0);
        assert_eq!(s.job("kept").unwrap().state(), JobState::Running);
        assert_eq!(s.job("reported").unwrap().state(), JobState::Assigned);
        assert_eq!(s.job("dropped").unwrap().state(), JobState::Queued);
        succeed(&mut s, "a", "reported");
        assert_eq!(s.job("reported").unwrap().state(), JobState::Succeeded);
    }

    #[test]
    fn restore_waits_for_the_agent_then_requeues() {
        let mut s = State::default();
        submit(&mut s, "j", spec(0));
        s.hello(&hello("a", 1, &[]), Instant::now());
        s.schedule();
        let stored: Vec<JobRecord> = vec![s.job("j").unwrap().clone()];
        let t0 = Instant::now();
        let mut r = State::restore(stored, Vec::new(), t0);
        assert!(r.expire(t0 + Duration::from_secs(5), Duration::from_secs(10)).is_empty());
        r.expire(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(r.job("j").unwrap().state(), JobState::Queued);
    }

    #[test]
    fn cancel_queued_at_once_running_through_agent_and_again_on_hello() {
        let mut s = State::default();
        submit(&mut s, "q", spec(0));
        submit(&mut s, "r", spec(9));
        s.hello(&hello("a", 1, &[]), Instant::now());
        s.schedule();
        s.cancel("q", "").unwrap();
        assert_eq!(s.job("q").unwrap().state(), JobState::Cancelled);
        assert_eq!(s.queued_count(), 0);
        let actions = s.cancel("r", "enough").unwrap();
        assert!(matches!(&actions[1], Action::Cancel { reason, .. } if reason == "enough"));
        assert_eq!(s.cancel("nope", ""), Err(StateError::JobNotFound("nope".into())));
        // The agent was away when the cancel went out: its hello gets it again.
        s.disconnected("a");
        let mut again = hello("a", 1, &[]);
        again.running = vec![AttemptRef { job_id: "r".into(), attempt: 1, started_at: None }];
        let actions = s.hello(&again, Instant::now());
        assert!(actions.iter().any(|a| matches!(a, Action::Cancel { job_id, attempt: 1, .. } if job_id == "r")));
        let cancelled = report("r", 1, Some(job_finished::Outcome::Cancelled("enough".into())));
        s.finished("a", cancelled);
        assert_eq!(s.job("r").unwrap().state(), JobState::Cancelled);
    }

    #[test]
    fn the_deadline_covers_an_attempt_that_never_started() {
        let mut s = State::default();
        let short = JobSpec { timeout: Some(baton_proto::job::from_duration(Duration::from_millis(1))), ..spec(0) };
        submit(&mut s, "j", short);
        let t0 = Instant::now();
        s.hello(&hello("a", 1, &[]), t0);
        s.schedule();
        std::thread::sleep(Duration::from_millis(20));
        let actions = s.expire(t0, Duration::from_millis(5));
        assert!(actions.iter().any(|a| matches!(a, Action::Cancel { reason, .. } if reason == "timed out after 1ms")));
        let job = s.job("j").unwrap();
        assert_eq!(
            (job.state(), job.reason.as_str()),
            (JobState::Queued, "timed out after 1ms; retrying (attempt 1 of 2 done)")
        );
    }

    #[test]
    fn a_handed_back_attempt_is_retried_and_drain_is_remembered() {
        let mut s = State::default();
        submit(&mut s, "j", spec(0));
        s.hello(&hello("a", 1, &[]), Instant::now());
        s.schedule();
        s.leaving("a");
        let back = report("j", 1, Some(job_finished::Outcome::HandedBack("agent stopping".into())));
        s.finished("a", back);
        assert_eq!(s.job("j").unwrap().state(), JobState::Queued);
        assert!(s.schedule().is_empty(), "a leaving agent gets no work");
        s.hello(&hello("b", 1, &[]), Instant::now());
        assert_eq!(s.drain("b").unwrap()[0], Action::PersistDrain("b".into()));
        assert_eq!(s.drain("b").unwrap(), [Action::Drain { agent_id: "b".into() }], "drained once, stored once");
        let mut undrained = State::restore(Vec::new(), vec!["b".into()], Instant::now());
        undrained.hello(&hello("b", 1, &[]), Instant::now());
        assert_eq!(undrained.undrain("b").unwrap(), [Action::PersistUndrain("b".into())]);
        submit(&mut undrained, "k", spec(0));
        assert_eq!(assigned(&undrained.schedule()), [("b".into(), "k".into())], "an undrained agent gets work");
        assert!(s.schedule().is_empty(), "a drained agent gets no work");
        let mut r = State::restore(vec![s.job("j").unwrap().clone()], vec!["b".into()], Instant::now());
        let actions = r.hello(&hello("b", 1, &[]), Instant::now());
        assert!(actions.contains(&Action::Drain { agent_id: "b".into() }));
        assert!(r.schedule().is_empty(), "the drain outlives a restart");
    }

    #[test]
    fn retention_removes_the_oldest_finished_jobs() {
        let mut s = State::default();
        for i in 0..5 {
            submit(&mut s, &format!("j{i}"), spec(0));
            s.cancel(&format!("j{i}"), "").unwrap();
        }
        submit(&mut s, "open", spec(0));
        let keep = Retention { max_age: Duration::from_secs(3600), max_jobs: 2 };
        let removed = s.expire_finished(keep, SystemTime::now(), 100);
        assert_eq!(removed, ["j0", "j1", "j2"].map(|id| Action::Remove(id.into())));
        let old = Retention { max_age: Duration::ZERO, max_jobs: 100 };
        let later = SystemTime::now() + Duration::from_secs(1);
        assert_eq!(s.expire_finished(old, later, 1), [Action::Remove("j3".into())]);
        assert_eq!(s.job_count(), 2, "j4 and the open job");
        assert!(s.job("open").is_some());
    }
}
