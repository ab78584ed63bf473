//! Model-based test of the job lifecycle (issue 8): random sequences of events — submits,
//! agents saying hello, going silent past their lease, dropping off, reporting for
//! attempts they hold or held long ago, cancels, drains, agents stopping, retention —
//! run against [`State`] the way the coordinator runs them (every change followed by a
//! scheduling pass). Simulated agents receive only what the actions send them while they
//! are connected. After every step the guarantees are checked against what was observed
//! before: a terminal state never changes, attempts never go back, a stale report changes
//! nothing, the owning attempt's success settles the job, no job is lost, slots hold, the
//! indexes agree with the records, and a sweep's counts and state agree with its points.

use crate::record::{JobRecord, NewJob};
use crate::state::{Action, Retention, State};
use baton_proto::v1::{
    AttemptRef, Capabilities, Hello, JobFinished, JobResult, JobSpec, JobState, NoopResult, NoopSpec, Requirements,
    SweepProgress, job_finished, job_result, job_spec,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

const AGENTS: usize = 3;
const LEASE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Op {
    Submit {
        priority: i32,
        max_attempts: u32,
        eu_only: bool,
    },
    Hello {
        agent: usize,
    },
    Disconnect {
        agent: usize,
    },
    /// The agent stops sending anything; time passes beyond its lease.
    Silence {
        agent: usize,
    },
    /// Time passes; agents that are connected and not silent heartbeat first.
    Tick {
        secs: u64,
    },
    Start {
        agent: usize,
        pick: usize,
    },
    /// The agent reports one attempt it holds, or one it held long ago (stale).
    Finish {
        agent: usize,
        pick: usize,
        outcome: u8,
    },
    Cancel {
        job: usize,
    },
    /// A sweep of this many noop points, submitted as the coordinator does it.
    SubmitSweep {
        points: u32,
    },
    CancelSweep {
        sweep: usize,
    },
    Leave {
        agent: usize,
    },
    Drain {
        agent: usize,
    },
    Retain {
        max_jobs: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let agent = 0..AGENTS;
    prop_oneof![
        4 => (-1i32..2, 1u32..4, any::<bool>()).prop_map(|(priority, max_attempts, eu_only)| Op::Submit { priority, max_attempts, eu_only }),
        3 => agent.clone().prop_map(|agent| Op::Hello { agent }),
        1 => agent.clone().prop_map(|agent| Op::Disconnect { agent }),
        1 => agent.clone().prop_map(|agent| Op::Silence { agent }),
        2 => (1u64..6).prop_map(|secs| Op::Tick { secs }),
        3 => (agent.clone(), 0usize..8).prop_map(|(agent, pick)| Op::Start { agent, pick }),
        5 => (agent.clone(), 0usize..8, 0u8..5).prop_map(|(agent, pick, outcome)| Op::Finish { agent, pick, outcome }),
        1 => (0usize..40).prop_map(|job| Op::Cancel { job }),
        1 => (1u32..4).prop_map(|points| Op::SubmitSweep { points }),
        1 => (0usize..4).prop_map(|sweep| Op::CancelSweep { sweep }),
        1 => agent.clone().prop_map(|agent| Op::Leave { agent }),
        1 => agent.clone().prop_map(|agent| Op::Drain { agent }),
        1 => (0usize..10).prop_map(|max_jobs| Op::Retain { max_jobs }),
    ]
}

/// What a simulated agent knows: only what reached it.
#[derive(Default)]
struct SimAgent {
    connected: bool,
    silent: bool,
    leaving: bool,
    /// Attempts it runs.
    held: Vec<(String, u32)>,
    /// Attempts it ran once, kept to send stale reports.
    history: Vec<(String, u32)>,
    /// Finished, not yet acknowledged.
    outbox: BTreeMap<(String, u32), JobFinished>,
}

fn name(agent: usize) -> String {
    format!("agent-{agent}")
}

fn index(id: &str) -> usize {
    (0..AGENTS).find(|i| name(*i) == id).expect("a simulated agent")
}

fn slots(agent: usize) -> u32 {
    agent as u32 + 1
}

fn eu(agent: usize) -> bool {
    agent < 2
}

struct World {
    state: State,
    clock: Instant,
    agents: Vec<SimAgent>,
    submitted: Vec<String>,
    /// Sweeps and their points (the points are in `submitted` too).
    sweeps: Vec<(String, Vec<String>)>,
    /// The latest assignment of each job: (agent, attempt).
    assigned: HashMap<String, (String, u32)>,
    /// Jobs seen terminal, as first seen.
    settled: HashMap<String, JobRecord>,
    removed: HashSet<String>,
    attempts: HashMap<String, u32>,
}

fn outcome(code: u8) -> Option<job_finished::Outcome> {
    use job_finished::Outcome;
    match code {
        0 => None,
        1 => Some(Outcome::Failure("failed".into())),
        2 => Some(Outcome::Cancelled("cancelled".into())),
        3 => Some(Outcome::TimedOut("timed out after 1s".into())),
        _ => Some(Outcome::HandedBack("agent stopping".into())),
    }
}

impl World {
    fn new() -> Self {
        Self {
            state: State::default(),
            clock: Instant::now(),
            agents: (0..AGENTS).map(|_| SimAgent::default()).collect(),
            submitted: Vec::new(),
            sweeps: Vec::new(),
            assigned: HashMap::new(),
            settled: HashMap::new(),
            removed: HashSet::new(),
            attempts: HashMap::new(),
        }
    }

    /// Runs one change and the scheduler, then delivers what the actions send.
    fn step(&mut self, change: impl FnOnce(&mut State, Instant) -> Vec<Action>) {
        let mut actions = change(&mut self.state, self.clock);
        actions.extend(self.state.schedule());
        self.deliver(actions);
    }

    fn deliver(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Assign { agent_id, job_id } => {
                    let job = self.state.job(&job_id).expect("an assigned job exists");
                    let agent = index(&agent_id);
                    let a = &self.state.agent(&agent_id).expect("assigned to a known agent");
                    assert!(a.connected && !a.draining && !a.leaving, "assigned to {agent_id} that takes no work");
                    assert!(job.spec().requirements.is_none() || eu(agent), "placement");
                    self.assigned.insert(job_id.clone(), (agent_id, job.attempt));
                    if self.agents[agent].connected {
                        self.agents[agent].held.push((job_id.clone(), job.attempt));
                        self.agents[agent].history.push((job_id, job.attempt));
                    }
                }
                Action::Cancel { agent_id, job_id, attempt, .. } => {
                    let agent = &mut self.agents[index(&agent_id)];
                    if agent.connected && agent.held.iter().any(|h| *h == (job_id.clone(), attempt)) {
                        agent.held.retain(|h| *h != (job_id.clone(), attempt));
                        let report = JobFinished {
                            job_id,
                            attempt,
                            result: None,
                            outcome: Some(job_finished::Outcome::Cancelled("stopped".into())),
                        };
                        agent.outbox.insert((report.job_id.clone(), attempt), report);
                    }
                }
                Action::Ack { agent_id, job_id, attempt } => {
                    self.agents[index(&agent_id)].outbox.remove(&(job_id, attempt));
                }
                Action::Expel { agent_id, .. } => {
                    let agent = &mut self.agents[index(&agent_id)];
                    agent.connected = false;
                }
                Action::Remove(id) => {
                    assert!(self.settled.contains_key(&id), "retention removed {id}, which never finished");
                    self.removed.insert(id);
                }
                Action::StoreResult { job_id, .. } => {
                    let job = self.state.job(&job_id).expect("a job with a result exists");
                    assert!(job.state().is_terminal() && job.has_result, "result stored for an open job {job_id}");
                }
                Action::Persist(_) | Action::PersistDrain(_) | Action::PersistUndrain(_) | Action::Drain { .. } => {}
            }
        }
    }

    fn send_report(&mut self, agent: usize, report: JobFinished) {
        let id = name(agent);
        let key = (report.job_id.clone(), report.attempt);
        self.agents[agent].outbox.insert(key, report.clone());
        if self.agents[agent].connected {
            self.check_report(&id, report);
        }
    }

    /// Delivers a report and checks it did what the promise says.
    fn check_report(&mut self, agent_id: &str, report: JobFinished) {
        let before = self.state.job(&report.job_id).cloned();
        let latest = self.assigned.get(&report.job_id).cloned();
        let owner = latest.as_ref().is_some_and(|(a, n)| a == agent_id && *n == report.attempt)
            && before.as_ref().is_some_and(|j| matches!(j.state(), JobState::Assigned | JobState::Running));
        let success = report.outcome.is_none();
        let job_id = report.job_id.clone();
        self.state.touch(agent_id, self.clock);
        let mut actions = self.state.finished(agent_id, report);
        let after = self.state.job(&job_id).cloned();
        if !owner {
            assert_eq!(before, after, "a stale report from {agent_id} changed job {job_id}");
        } else if success {
            let state = after.as_ref().map(|j| j.state());
            assert_eq!(state, Some(JobState::Succeeded), "the owning attempt's success must settle {job_id}");
        }
        actions.extend(self.state.schedule());
        self.deliver(actions);
    }

    fn hello(&mut self, agent: usize) {
        let sim = &mut self.agents[agent];
        sim.connected = true;
        sim.silent = false;
        let hello = Hello {
            agent_id: name(agent),
            slots: slots(agent),
            labels: if eu(agent) { [("zone".to_string(), "eu".to_string())].into() } else { HashMap::new() },
            capabilities: Some(Capabilities { cpu_cores: 2, job_kinds: vec!["noop".into()], ..Default::default() }),
            running: sim
                .held
                .iter()
                .map(|(job_id, attempt)| AttemptRef { job_id: job_id.clone(), attempt: *attempt, started_at: None })
                .collect(),
            finished: sim
                .outbox
                .keys()
                .map(|(job_id, attempt)| AttemptRef { job_id: job_id.clone(), attempt: *attempt, started_at: None })
                .collect(),
            leaving: sim.leaving,
        };
        let reports: Vec<JobFinished> = sim.outbox.values().cloned().collect();
        self.step(|s, t| s.hello(&hello, t));
        for report in reports {
            if self.agents[agent].connected {
                self.check_report(&name(agent), report);
            }
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Submit { priority, max_attempts, eu_only } => {
                let id = format!("job-{}", self.submitted.len());
                let requirements = eu_only.then(|| Requirements {
                    agent_labels: [("zone".to_string(), "eu".to_string())].into(),
                    min_cpu_cores: 0,
                });
                let spec = JobSpec {
                    priority,
                    max_attempts,
                    timeout: Some(baton_proto::job::from_duration(Duration::from_secs(3600))),
                    requirements,
                    kind: Some(job_spec::Kind::Noop(NoopSpec {})),
                    ..Default::default()
                };
                self.submitted.push(id.clone());
                self.step(|s, _| s.submit(crate::record::NewJob { id, spec, ..Default::default() }));
            }
            Op::SubmitSweep { points } => {
                let sweep_id = format!("sweep-{}", self.sweeps.len());
                let spec = || JobSpec {
                    max_attempts: 2,
                    timeout: Some(baton_proto::job::from_duration(Duration::from_secs(3600))),
                    kind: Some(job_spec::Kind::Noop(NoopSpec {})),
                    ..Default::default()
                };
                let ids: Vec<String> = (0..points).map(|i| format!("{sweep_id}-point-{i}")).collect();
                self.submitted.extend(ids.iter().cloned());
                self.sweeps.push((sweep_id.clone(), ids.clone()));
                self.step(|s, _| {
                    let counts = SweepProgress { points, queued: points, ..Default::default() };
                    let sweep =
                        NewJob { id: sweep_id.clone(), spec: spec(), sweep: Some(counts), ..Default::default() };
                    let mut actions = s.submit(sweep);
                    for id in ids {
                        let point = NewJob { id, spec: spec(), sweep_id: sweep_id.clone(), ..Default::default() };
                        actions.extend(s.submit(point));
                    }
                    actions
                });
            }
            Op::CancelSweep { sweep } => {
                if let Some((id, _)) = self.sweeps.get(sweep).cloned()
                    && self.state.job(&id).is_some()
                {
                    self.step(|s, _| s.cancel(&id, "").expect("the sweep exists"));
                }
            }
            Op::Hello { agent } => self.hello(agent),
            Op::Disconnect { agent } => {
                self.agents[agent].connected = false;
                self.step(|s, _| {
                    s.disconnected(&name(agent));
                    Vec::new()
                });
            }
            Op::Silence { agent } => {
                self.agents[agent].silent = true;
                self.tick(LEASE.as_secs() + 1);
            }
            Op::Tick { secs } => self.tick(secs),
            Op::Start { agent, pick } => {
                let sim = &self.agents[agent];
                if sim.connected && !sim.held.is_empty() {
                    let (job_id, attempt) = sim.held[pick % sim.held.len()].clone();
                    self.step(|s, t| {
                        s.touch(&name(agent), t);
                        s.started(&name(agent), &job_id, attempt)
                    });
                }
            }
            Op::Finish { agent, pick, outcome: code } => {
                let sim = &mut self.agents[agent];
                // Mostly attempts it holds; sometimes one from long ago (a late, stale report).
                let (job_id, attempt) = if !sim.held.is_empty() && pick < 6 {
                    let i = pick % sim.held.len();
                    sim.held.remove(i)
                } else if !sim.history.is_empty() {
                    sim.history[pick % sim.history.len()].clone()
                } else {
                    return;
                };
                let result = Some(JobResult { kind: Some(job_result::Kind::Noop(NoopResult {})) });
                self.send_report(agent, JobFinished { job_id, attempt, result, outcome: outcome(code) });
            }
            Op::Cancel { job } => {
                if let Some(id) = self.submitted.get(job).cloned()
                    && !self.removed.contains(&id)
                {
                    self.step(|s, _| s.cancel(&id, "").expect("a submitted job exists"));
                }
            }
            Op::Leave { agent } => {
                self.agents[agent].leaving = true;
                if self.agents[agent].connected {
                    self.step(|s, _| {
                        s.leaving(&name(agent));
                        Vec::new()
                    });
                }
            }
            Op::Drain { agent } => self.step(|s, _| s.drain(&name(agent)).unwrap_or_default()),
            Op::Retain { max_jobs } => {
                let retention = Retention { max_age: Duration::from_secs(3600), max_jobs };
                self.step(|s, _| s.expire_finished(retention, SystemTime::now(), 3));
            }
        }
        self.check();
    }

    fn tick(&mut self, secs: u64) {
        self.clock += Duration::from_secs(secs);
        let alive: Vec<String> =
            (0..AGENTS).filter(|a| self.agents[*a].connected && !self.agents[*a].silent).map(name).collect();
        self.step(|s, t| {
            for id in &alive {
                s.touch(id, t);
            }
            s.expire(t, LEASE)
        });
    }

    /// The guarantees, checked against everything observed so far.
    fn check(&mut self) {
        let mut queued = 0;
        for id in &self.submitted {
            let Some(job) = self.state.job(id) else {
                assert!(self.removed.contains(id), "job {id} was lost");
                continue;
            };
            assert!(!self.removed.contains(id), "job {id} came back after retention removed it");
            let max = job.max_attempts;
            assert!(job.attempt <= max, "job {id}: attempt {} of {max}", job.attempt);
            let previous = self.attempts.insert(id.clone(), job.attempt).unwrap_or(0);
            assert!(job.attempt >= previous, "job {id}: attempt went back from {previous} to {}", job.attempt);
            match self.settled.get(id) {
                Some(first) => assert_eq!(first, job, "job {id} changed after it finished"),
                None if job.state().is_terminal() => {
                    self.settled.insert(id.clone(), job.clone());
                }
                None => {}
            }
            match job.state() {
                JobState::Queued => queued += 1,
                JobState::Assigned | JobState::Running => {
                    let agent = self.state.agent(&job.agent_id);
                    assert!(
                        agent.is_some_and(|a| a.running.contains(id)),
                        "job {id} is {:?} on {}, which does not hold it",
                        job.state(),
                        job.agent_id
                    );
                }
                _ => {}
            }
        }
        assert_eq!(self.state.queued_count(), queued, "the queue index disagrees with the records");
        for (id, points) in &self.sweeps {
            let Some(sweep) = self.state.job(id) else { continue };
            let c = sweep.sweep.expect("a sweep has counts");
            let (mut waiting, mut running, mut open) = (0, 0, false);
            for point in points.iter().filter_map(|p| self.state.job(p)) {
                match point.state() {
                    JobState::Queued => waiting += 1,
                    JobState::Assigned | JobState::Running => running += 1,
                    _ => {}
                }
                open |= !point.state().is_terminal();
            }
            // Retention may have removed finished points: only the unfinished can be counted.
            assert_eq!((c.queued, c.running), (waiting, running), "{id}'s counts disagree with its points: {c:?}");
            assert_eq!(c.points as usize, points.len(), "{id}: {c:?}");
            assert_eq!(c.points, c.queued + c.running + c.succeeded + c.failed + c.cancelled, "{id}: {c:?}");
            assert_eq!(sweep.state().is_terminal(), !open, "{id} is {:?} with points open: {open}", sweep.state());
            match sweep.state() {
                JobState::Queued => assert_eq!(c.queued, c.points, "{id} is queued: {c:?}"),
                JobState::Succeeded => assert_eq!(c.succeeded, c.points, "{id}: {c:?}"),
                JobState::Failed => assert!(c.failed > 0, "{id}: {c:?}"),
                JobState::Cancelled => assert!(c.cancelled > 0 && c.failed == 0, "{id}: {c:?}"),
                _ => {}
            }
            match self.settled.get(id) {
                Some(first) => assert_eq!(first, sweep, "sweep {id} changed after it finished"),
                None if sweep.state().is_terminal() => {
                    self.settled.insert(id.clone(), sweep.clone());
                }
                None => {}
            }
        }
        for agent in self.state.agents() {
            assert!(agent.running.len() as u32 <= slots(index(&agent.id)), "{} over its slots", agent.id);
            for id in &agent.running {
                let job = self.state.job(id).expect("a held job exists");
                assert_eq!(job.agent_id, agent.id, "{id} held by {} but owned by {}", agent.id, job.agent_id);
                assert!(
                    matches!(job.state(), JobState::Assigned | JobState::Running),
                    "{id} held but {:?}",
                    job.state()
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_lifecycle_keeps_its_promises_under_random_events(ops in proptest::collection::vec(op(), 1..150)) {
        let mut world = World::new();
        for op in ops {
            world.run(op);
        }
        // Heal everything: every agent says hello and finishes what it holds; then every
        // job still open must be able to finish.
        for _ in 0..40 {
            for agent in 0..AGENTS {
                world.agents[agent].leaving = false;
                world.hello(agent);
                while let Some((job_id, attempt)) = world.agents[agent].held.pop() {
                    let result = Some(JobResult { kind: Some(job_result::Kind::Noop(NoopResult {})) });
                    world.send_report(agent, JobFinished { job_id, attempt, result, outcome: None });
                }
            }
            world.check();
        }
        for id in world.submitted.clone() {
            if let Some(job) = world.state.job(&id) {
                let stuck = !job.state().is_terminal();
                // Only jobs waiting for a drained or eu-only placement may stay queued.
                prop_assert!(!stuck || job.state() == JobState::Queued, "job {id} stuck in {:?}", job.state());
            }
        }
    }
}
