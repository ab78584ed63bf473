//! A Jepsen-style history of what clients saw, and its checker (issue 8: every job exactly
//! once, under every fault).
//!
//! Layout: [`Recorder`] runs beside a test and records into a [`History`] the jobs whose
//! submit was acknowledged, every job version read (ListJobs polls every 75 ms, one
//! WatchJob stream per job that resubscribes when the coordinator comes back, a GetJob
//! sweep at the end) with the interval in which it was read, and the faults injected.
//! [`check`] judges the history together with the agents' own `attempt finished` log
//! lines ([`attempt_reports`]) and returns a [`Report`] of violations.
//!
//! Reads are ordered as Jepsen orders operations: a read happened after another if it was
//! sent after the other's reply came back, or if both came on one watch stream, in order.
//! Reads that overlap in time are concurrent and never compared, so a slow stream cannot
//! fake a violation.

use baton_proto::v1::job_service_client::JobServiceClient;
use baton_proto::v1::{
    CancelJobRequest, GetJobRequest, Job, JobState, ListJobsRequest, SubmitJobRequest, SubmitJobsRequest,
    WatchJobRequest,
};
use baton_tests::Cluster;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

const POLL_EVERY: Duration = Duration::from_millis(75);
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// One version of a job as a client read it (progress left out: it is not part of the
/// guarantees), or the coordinator saying it has no such job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Job { state: JobState, attempt: u32, agent_id: String, reason: String },
    NotFound,
}

impl Seen {
    fn of(job: &Job) -> Self {
        Seen::Job {
            state: job.state(),
            attempt: job.attempt,
            agent_id: job.agent_id.clone(),
            reason: job.reason.clone(),
        }
    }

    fn terminal(&self) -> bool {
        matches!(self, Seen::Job { state, .. } if state.is_terminal())
    }

    fn attempt(&self) -> Option<u32> {
        match self {
            Seen::Job { attempt, .. } => Some(*attempt),
            Seen::NotFound => None,
        }
    }

    /// What must never change once terminal: (state, attempt, agent).
    fn key(&self) -> Option<(JobState, u32, &str)> {
        match self {
            Seen::Job { state, attempt, agent_id, .. } => Some((*state, *attempt, agent_id.as_str())),
            Seen::NotFound => None,
        }
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::NotFound => write!(f, "NOT_FOUND"),
            Seen::Job { state, attempt, agent_id, reason } => {
                write!(f, "{} attempt {attempt}", state.short_name())?;
                if !agent_id.is_empty() {
                    write!(f, " on {agent_id}")?;
                }
                if !reason.is_empty() {
                    write!(f, " ({reason})")?;
                }
                Ok(())
            }
        }
    }
}

/// How a version was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A ListJobs poll, a submit or cancel reply: one read each.
    Poll,
    /// A message of one WatchJob stream (numbered); a stream's messages are in order.
    Watch(u64),
    /// The GetJob sweep after the run has settled.
    Final,
}

/// One read. Times are since the recording began. A run of identical poll reads is kept as
/// one observation from the first reply to the last request (`invoked` > `received` then),
/// which orders it against other reads exactly as its members would be.
#[derive(Clone, Debug)]
pub struct Observation {
    pub job_id: String,
    pub seen: Seen,
    pub source: Source,
    /// Position in its watch stream.
    pub seq: u32,
    pub invoked: Duration,
    pub received: Duration,
}

impl Observation {
    /// Whether this read happened after `other`: sent after `other`'s reply arrived, or
    /// later on the same watch stream.
    fn after(&self, other: &Observation) -> bool {
        match (self.source, other.source) {
            (Source::Watch(a), Source::Watch(b)) if a == b => self.seq > other.seq,
            _ => self.invoked > other.received,
        }
    }
}

/// Everything the clients saw, in the order it was recorded.
#[derive(Default)]
pub struct History {
    /// Jobs whose submit was acknowledged, with when.
    pub acked: Vec<(String, Duration)>,
    pub observations: Vec<Observation>,
    pub faults: Vec<(Duration, String)>,
    /// Index of each job's latest poll observation, for merging identical polls.
    last_poll: HashMap<String, usize>,
    /// Index and count of each watch stream's latest observation.
    last_watched: HashMap<u64, (usize, u32)>,
}

impl History {
    pub fn ack(&mut self, job_id: &str, at: Duration) {
        self.acked.push((job_id.to_string(), at));
    }

    pub fn observe(&mut self, job_id: &str, seen: Seen, source: Source, invoked: Duration, received: Duration) {
        let mut seq = 0;
        match source {
            Source::Poll => {
                if let Some(&i) = self.last_poll.get(job_id)
                    && self.observations[i].seen == seen
                {
                    self.observations[i].invoked = self.observations[i].invoked.max(invoked);
                    return;
                }
                self.last_poll.insert(job_id.to_string(), self.observations.len());
            }
            Source::Watch(stream) => {
                if let Some(&(i, n)) = self.last_watched.get(&stream) {
                    if self.observations[i].seen == seen {
                        return;
                    }
                    seq = n;
                }
                self.last_watched.insert(stream, (self.observations.len(), seq + 1));
            }
            Source::Final => {}
        }
        self.observations.push(Observation { job_id: job_id.to_string(), seen, source, seq, invoked, received });
    }

    /// One complete ListJobs reading: every job in it, and NOT_FOUND for each job acknowledged
    /// before the reading began that it lacks.
    fn poll(&mut self, jobs: &[Job], invoked: Duration, received: Duration) {
        for job in jobs {
            self.observe(&job.id, Seen::of(job), Source::Poll, invoked, received);
        }
        let listed: BTreeSet<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        let missing: Vec<String> = self
            .acked
            .iter()
            .filter(|(id, at)| *at < invoked && !listed.contains(id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in missing {
            self.observe(&id, Seen::NotFound, Source::Poll, invoked, received);
        }
    }

    /// Acknowledged jobs whose latest poll does not show them finished.
    fn unfinished(&self) -> Vec<&str> {
        self.acked
            .iter()
            .filter(|(id, _)| !self.last_poll.get(id).is_some_and(|&i| self.observations[i].seen.terminal()))
            .map(|(id, _)| id.as_str())
            .collect()
    }
}

/// An agent's own account of one finished attempt: its log line `attempt finished` with
/// `job_id=`, `attempt=` and `outcome=` fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentReport {
    pub agent_id: String,
    pub job_id: String,
    pub attempt: u32,
    /// Lower case, quotes and any payload stripped: `succeeded`, `failed`, `handed_back`, ...
    pub outcome: String,
}

/// The `attempt finished` lines of one agent's log. Tolerates quoted values
/// (`outcome="succeeded"`), Debug-formatted ones (`outcome=Failure("...")`), span prefixes
/// and colour codes.
pub fn attempt_reports(agent_id: &str, log: &str) -> Vec<AgentReport> {
    log.lines()
        .map(strip_ansi)
        .filter(|line| line.contains("attempt finished"))
        .filter_map(|line| {
            // The last occurrence wins: event fields follow the message, span fields precede it.
            let field = |key: &str| {
                line.split_whitespace().rev().find_map(|token| {
                    let value = token.strip_prefix(key)?.strip_prefix('=')?;
                    let value: String = value
                        .trim_start_matches(['"', '\''])
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                        .collect();
                    (!value.is_empty()).then_some(value)
                })
            };
            Some(AgentReport {
                agent_id: agent_id.to_string(),
                job_id: field("job_id")?,
                attempt: field("attempt")?.parse().ok()?,
                outcome: field("outcome")?.to_ascii_lowercase(),
            })
        })
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One job that broke a guarantee, with why and its history.
#[derive(Debug)]
pub struct Violation {
    pub job_id: String,
    pub why: String,
    pub excerpt: String,
}

/// The checker's verdict over a whole history.
#[derive(Debug, Default)]
pub struct Report {
    pub jobs: usize,
    pub faults: usize,
    /// Acknowledged, and never finished by the end or not found at some point.
    pub lost: Vec<Violation>,
    /// A success no agent reported for that attempt, attempts going backwards, or two
    /// different terminal versions.
    pub duplicated: Vec<Violation>,
    /// Seen terminal, then read later as something else.
    pub changed_terminal: Vec<Violation>,
    /// Attempts an agent reported as succeeded that are not the job's final result:
    /// harmless if fenced, counted for the record.
    pub stale_successes: usize,
    pub seed: Option<u64>,
}

impl Report {
    pub fn summary(&self) -> String {
        let seed = self.seed.map_or("-".to_string(), |s| s.to_string());
        format!(
            "history: jobs={} faults={} lost={} duplicated={} changed_terminal={} stale_successes={} seed={seed}",
            self.jobs,
            self.faults,
            self.lost.len(),
            self.duplicated.len(),
            self.changed_terminal.len(),
            self.stale_successes,
        )
    }

    /// Panics naming the violating jobs (20 of each kind, 10 with their history) unless the
    /// history kept every guarantee.
    pub fn assert_clean(&self) {
        if self.lost.is_empty() && self.duplicated.is_empty() && self.changed_terminal.is_empty() {
            return;
        }
        let mut text = self.summary();
        for (kind, violations) in
            [("lost", &self.lost), ("duplicated", &self.duplicated), ("changed_terminal", &self.changed_terminal)]
        {
            if violations.is_empty() {
                continue;
            }
            let ids: Vec<&str> = violations.iter().take(20).map(|v| v.job_id.as_str()).collect();
            let more = violations.len().saturating_sub(ids.len());
            let _ = write!(text, "\n{kind}: {}", ids.join(" "));
            if more > 0 {
                let _ = write!(text, " and {more} more");
            }
            for v in violations.iter().take(10) {
                let _ = write!(text, "\n  {kind} {}: {}\n{}", v.job_id, v.why, v.excerpt);
            }
        }
        panic!("{text}");
    }
}

/// Judges the history against issue 8's guarantees, per acknowledged job.
pub fn check(history: &History, reports: &[AgentReport]) -> Report {
    let mut by_job: HashMap<&str, Vec<&Observation>> = HashMap::new();
    for o in &history.observations {
        by_job.entry(o.job_id.as_str()).or_default().push(o);
    }
    let mut report = Report { jobs: history.acked.len(), faults: history.faults.len(), ..Report::default() };
    for (id, _) in &history.acked {
        let mut seen = by_job.remove(id.as_str()).unwrap_or_default();
        seen.sort_by_key(|o| o.received);
        let job_reports: Vec<&AgentReport> = reports.iter().filter(|r| &r.job_id == id).collect();
        let violation = |why: String| Violation { job_id: id.clone(), why, excerpt: excerpt(&seen, &job_reports) };

        if let Some(why) = lost(&seen) {
            report.lost.push(violation(why));
        }
        if let Some(why) = changed_terminal(&seen) {
            report.changed_terminal.push(violation(why));
        }
        if let Some(why) = duplicated(&seen, &job_reports) {
            report.duplicated.push(violation(why));
        }
        let result = seen.iter().rev().find(|o| o.seen.terminal()).and_then(|o| o.seen.key());
        report.stale_successes += job_reports
            .iter()
            .filter(|r| r.outcome == "succeeded")
            .filter(|r| result != Some((JobState::Succeeded, r.attempt, r.agent_id.as_str())))
            .count();
    }
    report
}

fn lost(seen: &[&Observation]) -> Option<String> {
    if let Some(gone) = seen.iter().find(|o| o.seen == Seen::NotFound) {
        return Some(format!("not found at {}", at(gone.received)));
    }
    match seen.iter().rev().find(|o| o.source == Source::Final) {
        None => Some("never read after the run".into()),
        Some(o) if !o.seen.terminal() => Some(format!("still {} at the end", o.seen)),
        Some(_) => None,
    }
}

fn changed_terminal(seen: &[&Observation]) -> Option<String> {
    for first in seen.iter().filter(|o| o.seen.terminal()) {
        if let Some(later) = seen.iter().find(|o| o.after(first) && o.seen.key() != first.seen.key()) {
            return Some(format!(
                "{} at {}, then {} at {}",
                first.seen,
                at(first.received),
                later.seen,
                at(later.received)
            ));
        }
    }
    None
}

fn duplicated(seen: &[&Observation], reports: &[&AgentReport]) -> Option<String> {
    let mut terminal: Vec<(JobState, u32, &str)> =
        seen.iter().filter(|o| o.seen.terminal()).filter_map(|o| o.seen.key()).collect();
    terminal.sort();
    terminal.dedup();
    if terminal.len() > 1 {
        return Some(format!("finished {} different ways: {terminal:?}", terminal.len()));
    }
    for first in seen {
        let Some(a) = first.seen.attempt() else { continue };
        if let Some(later) = seen.iter().find(|o| o.after(first) && o.seen.attempt().is_some_and(|b| b < a)) {
            return Some(format!("attempt went back from {} at {} to {}", first.seen, at(first.received), later.seen));
        }
    }
    if let Some((JobState::Succeeded, attempt, agent)) = terminal.first().copied() {
        let owned = reports.iter().any(|r| r.agent_id == agent && r.attempt == attempt && r.outcome == "succeeded");
        if !owned {
            return Some(format!(
                "succeeded as attempt {attempt} on {agent}, which that agent never reported as succeeded"
            ));
        }
    }
    None
}

fn at(t: Duration) -> String {
    format!("{:.3}s", t.as_secs_f64())
}

fn excerpt(seen: &[&Observation], reports: &[&AgentReport]) -> String {
    let mut text = String::new();
    for o in seen {
        let source = match o.source {
            Source::Poll => "poll".to_string(),
            Source::Watch(n) => format!("watch#{n}.{}", o.seq),
            Source::Final => "final".to_string(),
        };
        let _ = writeln!(text, "    {:>9} .. {:>9} {source:<12} {}", at(o.invoked), at(o.received), o.seen);
    }
    for r in reports {
        let _ = writeln!(text, "    agent {} reported attempt {} {}", r.agent_id, r.attempt, r.outcome);
    }
    text
}

/// Records a [`History`] while a test runs. Cheap to clone: clones share the history.
#[derive(Clone)]
pub struct Recorder(Arc<Shared>);

struct Shared {
    t0: Instant,
    client: JobServiceClient<Channel>,
    history: Mutex<History>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    streams: AtomicU64,
}

impl Recorder {
    /// Starts polling the cluster's coordinator. Its connection is lazy and reconnects, so
    /// the coordinator may come and go; reads fail meanwhile and are not recorded.
    pub fn start(cluster: &Cluster) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(cluster.url.clone())
            .expect("a valid URL")
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        let client = JobServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let recorder = Self(Arc::new(Shared {
            t0: Instant::now(),
            client,
            history: Mutex::new(History::default()),
            tasks: Mutex::new(Vec::new()),
            streams: AtomicU64::new(0),
        }));
        recorder.spawn(recorder.clone().poll_forever());
        recorder
    }

    fn now(&self) -> Duration {
        self.0.t0.elapsed()
    }

    fn history(&self) -> MutexGuard<'_, History> {
        self.0.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.0.tasks.lock().unwrap_or_else(|e| e.into_inner()).push(handle);
    }

    fn client(&self) -> JobServiceClient<Channel> {
        self.0.client.clone()
    }

    /// Notes (and prints) a fault injected now.
    pub fn fault(&self, what: impl Into<String>) {
        let (t, what) = (self.now(), what.into());
        println!("[{:>8}] fault: {what}", at(t));
        self.history().faults.push((t, what));
    }

    /// Submits the jobs in one SubmitJobs call; on success records them as acknowledged and
    /// starts watching each. A failed call acknowledges nothing.
    pub async fn submit(&self, jobs: Vec<SubmitJobRequest>) -> Result<Vec<String>, tonic::Status> {
        let invoked = self.now();
        let jobs = self.client().submit_jobs(SubmitJobsRequest { jobs }).await?.into_inner().jobs;
        let received = self.now();
        {
            let mut history = self.history();
            for job in &jobs {
                history.ack(&job.id, received);
                history.observe(&job.id, Seen::of(job), Source::Poll, invoked, received);
            }
        }
        for job in &jobs {
            self.spawn(self.clone().watch(job.id.clone()));
        }
        Ok(jobs.into_iter().map(|j| j.id).collect())
    }

    /// Submits one job, which must be acknowledged.
    pub async fn submit_one(&self, job: SubmitJobRequest) -> String {
        let ids = self.submit(vec![job]).await.expect("the submit is acknowledged");
        ids.into_iter().next().expect("one job per request")
    }

    /// Asks for the job to be cancelled, recording the reply.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Job, tonic::Status> {
        let invoked = self.now();
        let request = CancelJobRequest { id: id.to_string(), reason: reason.to_string() };
        let job = self.client().cancel_job(request).await?.into_inner();
        self.history().observe(&job.id, Seen::of(&job), Source::Poll, invoked, self.now());
        Ok(job)
    }

    /// Whether any read of the job so far matched.
    pub fn ever(&self, id: &str, matches: impl Fn(&Seen) -> bool) -> bool {
        self.history().observations.iter().any(|o| o.job_id == id && matches(&o.seen))
    }

    /// Acknowledged job ids so far.
    pub fn acked(&self) -> Vec<String> {
        self.history().acked.iter().map(|(id, _)| id.clone()).collect()
    }

    async fn poll_forever(self) {
        let mut client = self.client();
        loop {
            let invoked = self.now();
            if let Ok(Ok(jobs)) = tokio::time::timeout(Duration::from_secs(2), list_all(&mut client)).await {
                let received = self.now();
                self.history().poll(&jobs, invoked, received);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Follows one job through WatchJob until a stream ends on a finished version,
    /// subscribing again whenever a stream breaks.
    async fn watch(self, id: String) {
        let mut client = self.client();
        loop {
            let stream = self.0.streams.fetch_add(1, Ordering::Relaxed);
            let invoked = self.now();
            match client.watch_job(WatchJobRequest { id: id.clone() }).await {
                Ok(response) => {
                    let mut messages = response.into_inner();
                    let mut finished = false;
                    while let Ok(Some(job)) = messages.message().await {
                        let seen = Seen::of(&job);
                        finished = seen.terminal();
                        self.history().observe(&id, seen, Source::Watch(stream), invoked, self.now());
                    }
                    if finished {
                        return;
                    }
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    self.history().observe(&id, Seen::NotFound, Source::Watch(stream), invoked, self.now());
                }
                Err(_) => {}
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Waits up to `limit` until every acknowledged job reads as finished; says how it went.
    pub async fn settle(&self, limit: Duration) {
        let began = Instant::now();
        loop {
            let unfinished = self.history().unfinished().len();
            if unfinished == 0 {
                println!("[{:>8}] settled in {:.1}s", at(self.now()), began.elapsed().as_secs_f64());
                return;
            }
            if began.elapsed() > limit {
                println!("[{:>8}] not settled after {limit:?}: {unfinished} jobs unfinished", at(self.now()));
                return;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Stops recording, reads every acknowledged job once more (GetJob), reads the agents'
    /// logs and checks the history; prints the totals and returns the report.
    pub async fn finish(&self, cluster: &Cluster, seed: Option<u64>) -> Report {
        for task in self.0.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut client = self.client();
        for id in self.acked() {
            loop {
                let invoked = self.now();
                let seen = match client.get_job(GetJobRequest { id: id.clone() }).await {
                    Ok(job) => Some(Seen::of(job.get_ref())),
                    Err(status) if status.code() == tonic::Code::NotFound => Some(Seen::NotFound),
                    Err(_) if Instant::now() < deadline => None,
                    Err(_) => break,
                };
                if let Some(seen) = seen {
                    self.history().observe(&id, seen, Source::Final, invoked, self.now());
                    break;
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
        }
        let reports: Vec<AgentReport> =
            cluster.agents.iter().flat_map(|agent| attempt_reports(&agent.name, &agent.log())).collect();
        let mut report = check(&self.history(), &reports);
        report.seed = seed;
        println!("{}", report.summary());
        report
    }

    /// Settles (up to `limit`), finishes and asserts that no guarantee was broken.
    pub async fn check(&self, cluster: &Cluster, seed: Option<u64>, limit: Duration) {
        self.settle(limit).await;
        self.finish(cluster, seed).await.assert_clean();
    }
}

/// Every job, through all pages.
async fn list_all(client: &mut JobServiceClient<Channel>) -> Result<Vec<Job>, tonic::Status> {
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    loop {
        let page =
            client.list_jobs(ListJobsRequest { page_size: 1000, page_token, ..Default::default() }).await?.into_inner();
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Ok(jobs);
        }
        page_token = page.next_page_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn job(state: JobState, attempt: u32, agent: &str) -> Seen {
        Seen::Job { state, attempt, agent_id: agent.into(), reason: String::new() }
    }

    fn report(agent: &str, attempt: u32, outcome: &str) -> AgentReport {
        AgentReport { agent_id: agent.into(), job_id: "j".into(), attempt, outcome: outcome.into() }
    }

    /// A history of job "j", acknowledged at 0, with these reads and a final read.
    fn history(reads: &[(Seen, Source, u64, u64)], last: Seen) -> History {
        let mut h = History::default();
        h.ack("j", ms(0));
        for (seen, source, invoked, received) in reads {
            h.observe("j", seen.clone(), *source, ms(*invoked), ms(*received));
        }
        h.observe("j", last, Source::Final, ms(10_000), ms(10_001));
        h
    }

    #[test]
    fn a_clean_history_passes() {
        let done = job(JobState::Succeeded, 2, "b");
        let h = history(
            &[
                (job(JobState::Running, 1, "a"), Source::Poll, 10, 20),
                (job(JobState::Queued, 1, "a"), Source::Watch(1), 0, 30),
                (done.clone(), Source::Watch(1), 0, 40),
            ],
            done,
        );
        let r = check(&h, &[report("a", 1, "succeeded"), report("b", 2, "succeeded")]);
        assert!(r.lost.is_empty() && r.duplicated.is_empty() && r.changed_terminal.is_empty(), "{r:?}");
        assert_eq!(r.stale_successes, 1, "a's fenced success is counted, not a violation");
    }

    #[test]
    fn a_stale_read_concurrent_with_the_terminal_one_is_not_a_violation() {
        let done = job(JobState::Succeeded, 1, "a");
        // The poll was sent (30) before the watch's terminal reply arrived (40).
        let h = history(
            &[(done.clone(), Source::Watch(1), 0, 40), (job(JobState::Running, 1, "a"), Source::Poll, 30, 50)],
            done,
        );
        let r = check(&h, &[report("a", 1, "succeeded")]);
        assert!(r.changed_terminal.is_empty(), "{r:?}");
    }

    #[test]
    fn a_terminal_job_read_later_as_running_changed_terminal_state() {
        let done = job(JobState::Succeeded, 1, "a");
        let h = history(
            &[(done.clone(), Source::Poll, 10, 20), (job(JobState::Running, 2, "b"), Source::Poll, 30, 40)],
            done,
        );
        let r = check(&h, &[report("a", 1, "succeeded")]);
        assert_eq!(r.changed_terminal.len(), 1, "{r:?}");
        assert!(r.changed_terminal[0].why.contains("then running attempt 2 on b"), "{}", r.changed_terminal[0].why);
    }

    #[test]
    fn identical_polls_merge_without_hiding_a_later_stale_read() {
        let running = job(JobState::Running, 1, "a");
        let done = job(JobState::Succeeded, 1, "a");
        let h = history(
            &[
                (running.clone(), Source::Poll, 0, 10),
                (done.clone(), Source::Watch(1), 0, 20),
                // Identical to the first poll, but sent after the terminal read arrived.
                (running, Source::Poll, 30, 40),
            ],
            done,
        );
        assert_eq!(h.observations.len(), 3, "the two running polls are one observation");
        assert_eq!(check(&h, &[report("a", 1, "succeeded")]).changed_terminal.len(), 1);
    }

    #[test]
    fn a_success_without_the_owning_attempts_report_is_a_duplicate() {
        let done = job(JobState::Succeeded, 2, "b");
        let h = history(&[], done);
        let r = check(&h, &[report("a", 1, "succeeded"), report("b", 2, "handed_back")]);
        assert_eq!(r.duplicated.len(), 1, "{r:?}");
    }

    #[test]
    fn unfinished_or_missing_jobs_are_lost() {
        let h = history(&[], job(JobState::Running, 1, "a"));
        assert_eq!(check(&h, &[]).lost.len(), 1);
        let h = history(&[(Seen::NotFound, Source::Poll, 10, 20)], job(JobState::Failed, 1, "a"));
        assert_eq!(check(&h, &[]).lost.len(), 1);
    }

    #[test]
    fn agent_reports_are_parsed_however_the_fields_are_quoted() {
        let log = "2025-01-01T00:00:00Z  INFO execute{baton.job.id=j baton.job.attempt=9}: attempt finished \
                   job_id=j attempt=2 outcome=\"succeeded\"\n\
                   \u{1b}[2m2025\u{1b}[0m WARN attempt finished \u{1b}[3mjob_id\u{1b}[0m\u{1b}[2m=\u{1b}[0mk \
                   attempt=1 outcome=Failure(\"boom\")\n\
                   INFO job succeeded job_id=j\n";
        let reports = attempt_reports("a", log);
        assert_eq!(
            reports,
            vec![report("a", 2, "succeeded"), AgentReport { job_id: "k".into(), ..report("a", 1, "failure") }]
        );
    }
}
