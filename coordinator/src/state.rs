//! The job state machine and the scheduler: plain data, plain functions, no IO.
//!
//! Every method mutates [`State`] and returns the [`Action`]s the caller must carry out
//! once the changed jobs are durable: persist, send an assignment, a cancel or an ack.
//!
//! **Architecture invariant:** a report from an agent is applied only when it names the
//! job's current attempt on the agent that holds it (fencing); anything else is stale.

use baton_proto::job::{kind_name, now, to_duration};
use baton_proto::v1::{Capabilities, Hello, Job, JobFinished, JobSpec, JobState, Progress, job_finished};
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// What the caller does after the state changed, in this order, once durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write the job's new record to the store (and tell its watchers).
    Persist(String),
    /// Send the job's current attempt to the agent.
    Assign { agent_id: String, job_id: String },
    /// Tell the agent to stop an attempt.
    Cancel { agent_id: String, job_id: String, attempt: u32, reason: String },
    /// Tell the agent its finished report is safe; it may forget it.
    Ack { agent_id: String, job_id: String, attempt: u32 },
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
    pub draining: bool,
    /// Jobs whose current attempt this agent holds.
    pub running: HashSet<String>,
    pub last_seen: Instant,
    pub connected_at: pbjson_types::Timestamp,
    pub last_heartbeat_at: pbjson_types::Timestamp,
}

impl AgentEntry {
    fn free_slots(&self) -> u32 {
        if !self.connected || self.draining {
            return 0;
        }
        self.slots.saturating_sub(self.running.len() as u32)
    }
}

#[derive(Default)]
pub struct State {
    jobs: HashMap<String, Job>,
    /// seq → id: listing order.
    by_seq: BTreeMap<u64, String>,
    /// (priority desc, seq asc) → id: the queue.
    queue: BTreeMap<(Reverse<i32>, u64), String>,
    by_key: HashMap<String, String>,
    agents: HashMap<String, AgentEntry>,
    next_seq: u64,
}

/// Why this agent cannot run this spec (ignoring free slots), or `None` when it can.
pub fn mismatch(spec: &JobSpec, agent: &AgentEntry) -> Option<String> {
    let caps = &agent.capabilities;
    let kind = spec.kind.as_ref().map(kind_name).unwrap_or("");
    if !caps.job_kinds.iter().any(|k| k == kind) {
        return Some(format!("job kind {kind} is not supported"));
    }
    if let Some(r) = &spec.requirements {
        for (k, v) in &r.agent_labels {
            if agent.labels.get(k) != Some(v) {
                return Some(format!("label {k}={v} is required"));
            }
        }
        if r.min_cpu_cores > caps.cpu_cores {
            return Some(format!("{} CPU cores are required", r.min_cpu_cores));
        }
    }
    baton_proto::spec::agent_mismatch(spec, caps)
}

/// Jobs with equal classes match exactly the same agents.
fn requirement_class(spec: &JobSpec) -> u64 {
    let mut h = DefaultHasher::new();
    spec.kind.as_ref().map(kind_name).hash(&mut h);
    baton_proto::spec::needs(spec).hash(&mut h);
    if let Some(r) = &spec.requirements {
        let mut labels: Vec<_> = r.agent_labels.iter().collect();
        labels.sort();
        labels.hash(&mut h);
        r.min_cpu_cores.hash(&mut h);
    }
    h.finish()
}

impl State {
    /// Rebuilds the state from stored records. Jobs that were assigned or running stay
    /// with their agent until it reconnects or its lease (counted from `now`) expires.
    pub fn restore(mut jobs: Vec<Job>, now_instant: Instant) -> Self {
        jobs.sort_by_key(|j| j.seq);
        let mut state = State::default();
        for job in jobs {
            state.next_seq = state.next_seq.max(job.seq + 1);
            let id = job.id.clone();
            if !job.idempotency_key.is_empty() {
                state.by_key.insert(job.idempotency_key.clone(), id.clone());
            }
            state.by_seq.insert(job.seq, id.clone());
            match job.state() {
                JobState::Queued => {
                    state.queue.insert(queue_key(&job), id.clone());
                }
                JobState::Assigned | JobState::Running => {
                    let agent = state.agents.entry(job.agent_id.clone()).or_insert_with(|| AgentEntry {
                        id: job.agent_id.clone(),
                        slots: 0,
                        labels: HashMap::new(),
                        capabilities: Capabilities::default(),
                        connected: false,
                        draining: false,
                        running: HashSet::new(),
                        last_seen: now_instant,
                        connected_at: Default::default(),
                        last_heartbeat_at: Default::default(),
                    });
                    agent.running.insert(id.clone());
                }
                _ => {}
            }
            state.jobs.insert(id, job);
        }
        state
    }

    pub fn job(&self, id: &str) -> Option<&Job> {
        self.jobs.get(id)
    }

    pub fn job_by_key(&self, key: &str) -> Option<&Job> {
        self.by_key.get(key).and_then(|id| self.jobs.get(id))
    }

    pub fn agents(&self) -> impl Iterator<Item = &AgentEntry> {
        self.agents.values()
    }

    pub fn agent(&self, id: &str) -> Option<&AgentEntry> {
        self.agents.get(id)
    }

    /// Jobs newest first, starting below `before_seq`.
    pub fn jobs_newest_first(&self, before_seq: Option<u64>) -> impl Iterator<Item = &Job> {
        let upper = before_seq.unwrap_or(u64::MAX);
        self.by_seq.range(..upper).rev().filter_map(|(_, id)| self.jobs.get(id))
    }

    /// Why a queued job waits, when no connected agent could ever run it.
    pub fn unschedulable_reason(&self, job: &Job) -> Option<String> {
        let spec = job.spec.as_ref()?;
        let connected: Vec<_> = self.agents.values().filter(|a| a.connected).collect();
        if connected.is_empty() {
            return Some("no agent is connected".into());
        }
        let mut reasons = Vec::new();
        for agent in connected {
            match mismatch(spec, agent) {
                None => return None,
                Some(r) => reasons.push(r),
            }
        }
        reasons.sort();
        reasons.dedup();
        Some(format!("no connected agent can run this job: {}", reasons.join("; ")))
    }

    /// Accepts a validated, normalized spec as a new queued job.
    pub fn submit(
        &mut self,
        id: String,
        spec: JobSpec,
        key: String,
        traceparent: String,
        trace_id: String,
    ) -> Vec<Action> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let job = Job {
            id: id.clone(),
            spec: Some(spec),
            state: JobState::Queued as i32,
            submitted_at: Some(now()),
            idempotency_key: key.clone(),
            seq,
            traceparent,
            trace_id,
            ..Default::default()
        };
        if !key.is_empty() {
            self.by_key.insert(key, id.clone());
        }
        self.by_seq.insert(seq, id.clone());
        self.queue.insert(queue_key(&job), id.clone());
        self.jobs.insert(id.clone(), job);
        vec![Action::Persist(id)]
    }

    /// Places queued jobs on agents with free slots: priority, then FIFO; a job no free
    /// agent can take never holds back one that can.
    pub fn schedule(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut free: u32 = self.agents.values().map(AgentEntry::free_slots).sum();
        if free == 0 || self.queue.is_empty() {
            return actions;
        }
        let mut blocked_classes = HashSet::new();
        let mut placed = Vec::new();
        for (key, id) in &self.queue {
            if free == 0 {
                break;
            }
            let Some(job) = self.jobs.get(id) else { continue };
            let Some(spec) = job.spec.as_ref() else { continue };
            let class = requirement_class(spec);
            if blocked_classes.contains(&class) {
                continue;
            }
            let best = self
                .agents
                .values()
                .filter(|a| a.free_slots() > 0 && mismatch(spec, a).is_none())
                .max_by(|a, b| a.free_slots().cmp(&b.free_slots()).then_with(|| b.id.cmp(&a.id)))
                .map(|a| a.id.clone());
            match best {
                None => {
                    blocked_classes.insert(class);
                }
                Some(agent_id) => {
                    if let Some(agent) = self.agents.get_mut(&agent_id) {
                        agent.running.insert(id.clone());
                    }
                    free -= 1;
                    placed.push((*key, id.clone(), agent_id));
                }
            }
        }
        for (key, id, agent_id) in placed {
            self.queue.remove(&key);
            if let Some(job) = self.jobs.get_mut(&id) {
                job.state = JobState::Assigned as i32;
                job.attempt += 1;
                job.agent_id = agent_id.clone();
                job.reason.clear();
                job.progress = None;
            }
            actions.push(Action::Persist(id.clone()));
            actions.push(Action::Assign { agent_id, job_id: id });
        }
        actions
    }

    /// An agent (re)connected. Reports it finished while away are applied first; then
    /// attempts we think it holds but it does not are lost, and attempts it holds that
    /// are no longer current are cancelled.
    pub fn hello(&mut self, hello: &Hello, now_instant: Instant) -> Vec<Action> {
        let id = hello.agent_id.clone();
        let previous = self.agents.remove(&id);
        let mut entry = AgentEntry {
            id: id.clone(),
            slots: hello.slots,
            labels: hello.labels.clone(),
            capabilities: hello.capabilities.clone().unwrap_or_default(),
            connected: true,
            draining: previous.as_ref().is_some_and(|p| p.draining),
            running: previous.map(|p| p.running).unwrap_or_default(),
            last_seen: now_instant,
            connected_at: now(),
            last_heartbeat_at: now(),
        };
        let held: HashMap<&str, u32> = hello.running.iter().map(|r| (r.job_id.as_str(), r.attempt)).collect();
        let mut actions = Vec::new();
        let mut lost = Vec::new();
        entry.running.retain(|job_id| {
            let current = self.jobs.get(job_id).map(|j| j.attempt);
            let finished_while_away = hello.finished.iter().any(|f| &f.job_id == job_id && Some(f.attempt) == current);
            let still_held = current.is_some() && held.get(job_id.as_str()).copied() == current;
            if !still_held && !finished_while_away {
                lost.push(job_id.clone());
            }
            still_held || finished_while_away
        });
        for r in &hello.running {
            let current = self.jobs.get(&r.job_id);
            let is_current =
                current.is_some_and(|j| j.attempt == r.attempt && j.agent_id == id && !j.state().is_terminal());
            if !is_current {
                actions.push(Action::Cancel {
                    agent_id: id.clone(),
                    job_id: r.job_id.clone(),
                    attempt: r.attempt,
                    reason: "attempt is no longer current".into(),
                });
            }
        }
        self.agents.insert(id.clone(), entry);
        for f in &hello.finished {
            actions.extend(self.finished(&id, f));
        }
        for job_id in lost {
            actions.extend(self.lose_attempt(&job_id, &format!("agent lost: {id} restarted without it")));
        }
        actions
    }

    /// Any message from an agent renews its lease.
    pub fn touch(&mut self, agent_id: &str, now_instant: Instant) {
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.last_seen = now_instant;
            a.last_heartbeat_at = now();
        }
    }

    pub fn disconnected(&mut self, agent_id: &str) {
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.connected = false;
        }
    }

    fn current_attempt(&self, agent_id: &str, job_id: &str, attempt: u32) -> bool {
        self.jobs
            .get(job_id)
            .is_some_and(|j| j.attempt == attempt && j.agent_id == agent_id && !j.state().is_terminal())
    }

    pub fn started(&mut self, agent_id: &str, job_id: &str, attempt: u32) -> Vec<Action> {
        if !self.current_attempt(agent_id, job_id, attempt) {
            return Vec::new();
        }
        let Some(job) = self.jobs.get_mut(job_id) else { return Vec::new() };
        if job.state() != JobState::Assigned {
            return Vec::new();
        }
        job.state = JobState::Running as i32;
        job.started_at = Some(now());
        vec![Action::Persist(job_id.to_string())]
    }

    /// Returns true when the progress was applied (the caller tells watchers).
    pub fn progress(&mut self, agent_id: &str, job_id: &str, attempt: u32, progress: Progress) -> bool {
        if !self.current_attempt(agent_id, job_id, attempt) {
            return false;
        }
        match self.jobs.get_mut(job_id) {
            Some(job) => {
                job.progress = Some(progress);
                true
            }
            None => false,
        }
    }

    pub fn finished(&mut self, agent_id: &str, report: &JobFinished) -> Vec<Action> {
        let ack =
            Action::Ack { agent_id: agent_id.to_string(), job_id: report.job_id.clone(), attempt: report.attempt };
        if !self.current_attempt(agent_id, &report.job_id, report.attempt) {
            // A duplicate of an applied report, or a stale attempt: nothing to apply, but
            // the agent may forget it.
            return vec![ack];
        }
        if let Some(a) = self.agents.get_mut(agent_id) {
            a.running.remove(&report.job_id);
        }
        let (state, reason) = match &report.outcome {
            Some(job_finished::Outcome::TimedOut(reason)) => {
                let mut actions = self.retry_or_fail(&report.job_id, reason, reason);
                actions.push(ack);
                return actions;
            }
            None => (JobState::Succeeded, String::new()),
            Some(job_finished::Outcome::Failure(reason)) => (JobState::Failed, reason.clone()),
            Some(job_finished::Outcome::Cancelled(reason)) => (JobState::Cancelled, reason.clone()),
        };
        let Some(job) = self.jobs.get_mut(&report.job_id) else { return vec![ack] };
        job.result = report.result.clone();
        finish(job, state, reason);
        vec![Action::Persist(report.job_id.clone()), ack]
    }

    /// The attempt is gone with its agent: retry while attempts remain.
    fn lose_attempt(&mut self, job_id: &str, reason: &str) -> Vec<Action> {
        self.retry_or_fail(job_id, reason, "agent lost")
    }

    fn retry_or_fail(&mut self, job_id: &str, retry_reason: &str, final_reason: &str) -> Vec<Action> {
        let Some(job) = self.jobs.get_mut(job_id) else { return Vec::new() };
        if job.state().is_terminal() {
            return Vec::new();
        }
        let max = job.spec.as_ref().map(|s| s.max_attempts).unwrap_or(1);
        if job.cancel_requested {
            finish(job, JobState::Cancelled, "cancelled".into());
        } else if job.attempt < max {
            job.state = JobState::Queued as i32;
            job.reason = format!("{retry_reason}; retrying (attempt {} of {max} done)", job.attempt);
            job.started_at = None;
            job.progress = None;
            self.queue.insert(queue_key(job), job_id.to_string());
        } else {
            let reason = if final_reason == retry_reason {
                format!("{final_reason} (attempt {} of {max})", job.attempt)
            } else {
                format!("{final_reason}: {retry_reason} (attempt {} of {max})", job.attempt)
            };
            finish(job, JobState::Failed, reason);
        }
        vec![Action::Persist(job_id.to_string())]
    }

    /// Agents whose lease ran out are removed and their attempts lost; attempts past
    /// their deadline by more than `grace` are cancelled and retried or failed.
    pub fn expire(&mut self, now_instant: Instant, lease: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        let expired: Vec<String> = self
            .agents
            .values()
            .filter(|a| now_instant.saturating_duration_since(a.last_seen) > lease)
            .map(|a| a.id.clone())
            .collect();
        for agent_id in expired {
            if let Some(agent) = self.agents.remove(&agent_id) {
                let mut running: Vec<_> = agent.running.into_iter().collect();
                running.sort_by_key(|id| self.jobs.get(id).map(|j| j.seq));
                for job_id in running {
                    actions.extend(self.lose_attempt(&job_id, &format!("agent lost: {agent_id} stopped responding")));
                }
            }
        }
        let wall_now = std::time::SystemTime::now();
        let overdue: Vec<(String, String, u32, Duration)> = self
            .agents
            .values()
            .flat_map(|a| a.running.iter().map(move |id| (a.id.clone(), id.clone())))
            .filter_map(|(agent_id, id)| {
                let job = self.jobs.get(&id)?;
                let started = baton_proto::job::to_system_time(job.started_at.as_ref()?);
                let timeout = to_duration(job.spec.as_ref()?.timeout.as_ref()?);
                let elapsed = wall_now.duration_since(started).unwrap_or_default();
                (elapsed > timeout + lease).then_some((agent_id, id, job.attempt, timeout))
            })
            .collect();
        for (agent_id, job_id, attempt, timeout) in overdue {
            if let Some(a) = self.agents.get_mut(&agent_id) {
                a.running.remove(&job_id);
            }
            let reason = format!("timed out after {}s", timeout.as_secs_f64());
            actions.push(Action::Cancel { agent_id, job_id: job_id.clone(), attempt, reason: reason.clone() });
            actions.extend(self.retry_or_fail(&job_id, &reason, &reason));
        }
        actions
    }

    /// Cancels a job: a queued one at once, a running one through its agent.
    pub fn cancel(&mut self, job_id: &str, reason: &str) -> Result<Vec<Action>, StateError> {
        let job = self.jobs.get_mut(job_id).ok_or_else(|| StateError::JobNotFound(job_id.to_string()))?;
        let reason = if reason.is_empty() { "cancelled by request".to_string() } else { reason.to_string() };
        match job.state() {
            JobState::Queued => {
                self.queue.remove(&queue_key(job));
                finish(job, JobState::Cancelled, reason);
                Ok(vec![Action::Persist(job_id.to_string())])
            }
            JobState::Assigned | JobState::Running if !job.cancel_requested => {
                job.cancel_requested = true;
                Ok(vec![
                    Action::Persist(job_id.to_string()),
                    Action::Cancel {
                        agent_id: job.agent_id.clone(),
                        job_id: job_id.to_string(),
                        attempt: job.attempt,
                        reason,
                    },
                ])
            }
            _ => Ok(Vec::new()),
        }
    }

    pub fn drain(&mut self, agent_id: &str) -> Result<(), StateError> {
        let agent = self.agents.get_mut(agent_id).ok_or_else(|| StateError::AgentNotFound(agent_id.to_string()))?;
        agent.draining = true;
        Ok(())
    }
}

fn queue_key(job: &Job) -> (Reverse<i32>, u64) {
    (Reverse(job.spec.as_ref().map(|s| s.priority).unwrap_or(0)), job.seq)
}

fn finish(job: &mut Job, state: JobState, reason: String) {
    job.state = state as i32;
    job.reason = reason;
    job.finished_at = Some(now());
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::v1::{AttemptRef, JobResult, NoopResult, Requirements, SleepSpec, job_result, job_spec};

    fn spec(priority: i32) -> JobSpec {
        JobSpec {
            priority,
            max_attempts: 2,
            kind: Some(job_spec::Kind::Sleep(SleepSpec { duration_ms: 1, fail: false })),
            ..Default::default()
        }
    }

    fn hello(id: &str, slots: u32, labels: &[(&str, &str)]) -> Hello {
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
        state.submit(id.into(), spec, String::new(), String::new(), String::new());
    }

    fn succeed(state: &mut State, agent: &str, id: &str) -> Vec<Action> {
        let attempt = state.job(id).unwrap().attempt;
        state.finished(
            agent,
            &JobFinished {
                job_id: id.into(),
                attempt,
                result: Some(JobResult { kind: Some(job_result::Kind::Noop(NoopResult {})) }),
                outcome: None,
            },
        )
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
    fn slots_bound_concurrency() {
        let mut s = State::default();
        for i in 0..5 {
            submit(&mut s, &format!("j{i}"), spec(0));
        }
        s.hello(&hello("a", 2, &[]), Instant::now());
        s.hello(&hello("b", 1, &[]), Instant::now());
        assert_eq!(assigned(&s.schedule()).len(), 3);
        assert!(assigned(&s.schedule()).is_empty());
    }

    #[test]
    fn stale_reports_are_fenced() {
        let mut s = State::default();
        submit(&mut s, "j", spec(0));
        let t0 = Instant::now();
        s.hello(&hello("a", 1, &[]), t0);
        s.schedule();
        // a goes silent; its attempt is lost and the job goes to b.
        let actions = s.expire(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(actions, [Action::Persist("j".into())]);
        assert_eq!(s.job("j").unwrap().state(), JobState::Queued);
        s.hello(&hello("b", 1, &[]), t0 + Duration::from_secs(11));
        assert_eq!(assigned(&s.schedule()), [("b".into(), "j".into())]);
        // a's late report for attempt 1 is acknowledged but not applied.
        let late = JobFinished {
            job_id: "j".into(),
            attempt: 1,
            result: None,
            outcome: Some(job_finished::Outcome::Failure("x".into())),
        };
        assert_eq!(s.finished("a", &late), [Action::Ack { agent_id: "a".into(), job_id: "j".into(), attempt: 1 }]);
        assert_eq!(s.job("j").unwrap().state(), JobState::Assigned);
        assert_eq!(s.job("j").unwrap().attempt, 2);
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
    fn reconnect_keeps_held_attempts_and_loses_the_rest() {
        let mut s = State::default();
        submit(&mut s, "kept", spec(0));
        submit(&mut s, "dropped", spec(0));
        let t0 = Instant::now();
        s.hello(&hello("a", 2, &[]), t0);
        s.schedule();
        let mut again = hello("a", 2, &[]);
        again.running = vec![AttemptRef { job_id: "kept".into(), attempt: 1 }];
        s.hello(&again, t0);
        assert_eq!(s.job("kept").unwrap().state(), JobState::Assigned);
        assert_eq!(s.job("dropped").unwrap().state(), JobState::Queued);
    }

    #[test]
    fn restore_waits_for_the_agent_then_requeues() {
        let mut s = State::default();
        submit(&mut s, "j", spec(0));
        s.hello(&hello("a", 1, &[]), Instant::now());
        s.schedule();
        let stored: Vec<Job> = vec![s.job("j").unwrap().clone()];
        let t0 = Instant::now();
        let mut r = State::restore(stored, t0);
        assert!(r.expire(t0 + Duration::from_secs(5), Duration::from_secs(10)).is_empty());
        r.expire(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(r.job("j").unwrap().state(), JobState::Queued);
    }

    #[test]
    fn cancel_queued_at_once_running_through_agent() {
        let mut s = State::default();
        submit(&mut s, "q", spec(0));
        submit(&mut s, "r", spec(9));
        s.hello(&hello("a", 1, &[]), Instant::now());
        s.schedule();
        s.cancel("q", "").unwrap();
        assert_eq!(s.job("q").unwrap().state(), JobState::Cancelled);
        let actions = s.cancel("r", "enough").unwrap();
        assert!(matches!(&actions[1], Action::Cancel { reason, .. } if reason == "enough"));
        assert_eq!(s.cancel("nope", ""), Err(StateError::JobNotFound("nope".into())));
    }
}
