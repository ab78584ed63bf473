//! The gRPC services: decode, validate, call the coordinator, map errors — nothing more.

use crate::access::{Access, Principal};
use crate::core::JobFilter;
use crate::record::NewJob;
use crate::role::{Role, caller, forwarded, was_forwarded};
use crate::secrets::Keyring;
use crate::state::{AgentEntry, StateError};
use baton_proto::access::AccessRole;
use baton_proto::limits::MAX_CANCEL_REASON_CHARS;
use baton_proto::spec::sweep::Point;
use baton_proto::spec::{MAX_IDEMPOTENCY_KEY_CHARS, SpecError};
use baton_proto::v1::admin_service_server::AdminService;
use baton_proto::v1::agent_message::Kind as AgentKind;
use baton_proto::v1::agent_service_server::AgentService;
use baton_proto::v1::job_service_server::JobService;
use baton_proto::v1::{
    Agent, AgentMessage, CancelJobRequest, CoordinatorMessage, DrainAgentRequest, GetJobRequest, Hello, Job, JobSpec,
    JobState, JobView, ListAgentsRequest, ListAgentsResponse, ListJobsRequest, ListJobsResponse, SubmitJobRequest,
    SubmitJobsRequest, SubmitJobsResponse, UndrainAgentRequest, WatchJobRequest, Welcome, coordinator_message,
};
use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::{UnboundedReceiverStream, WatchStream};
use tonic::{Request, Response, Status, Streaming};

pub const MAX_BATCH: usize = 10_000;
/// Most slots one agent may offer (the agent's own flag has the same bound).
pub const MAX_SLOTS: u32 = 1024;
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

#[derive(Clone)]
pub struct Api {
    /// Leader (serves) or follower (forwards clients, redirects agents).
    pub role: Arc<Role>,
    /// Who may do what.
    pub access: Arc<Access>,
    /// Ends the long-lived streams (agents, watches) so a graceful shutdown can finish.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Api {
    /// The caller, if it has `role`: UNAUTHENTICATED or PERMISSION_DENIED otherwise.
    fn allow<T>(&self, req: &Request<T>, role: AccessRole, call: &str) -> Result<Principal, Status> {
        let who = self.access.authenticate(req)?;
        who.require(role, call)?;
        Ok(who)
    }
}

/// The coordinator when this one leads; otherwise the call goes to the leader as it is.
macro_rules! lead_or_forward {
    ($self:ident, $req:ident, $client:ident . $method:ident) => {
        match $self.role.coordinator() {
            Some(coordinator) => coordinator.clone(),
            None if was_forwarded(&$req) => return Err(not_leading()),
            None => return $self.role.$client()?.$method(forwarded($req)).await,
        }
    };
}

/// For a forwarded call that reached a coordinator which does not lead (leadership moved).
fn not_leading() -> Status {
    Status::unavailable("leadership is moving between coordinators; try again")
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl From<StateError> for Status {
    fn from(e: StateError) -> Self {
        Status::not_found(e.to_string())
    }
}

impl From<crate::core::Error> for Status {
    fn from(e: crate::core::Error) -> Self {
        match e {
            crate::core::Error::State(e) => e.into(),
            crate::core::Error::Store(e) => Status::unavailable(e.to_string()),
        }
    }
}

fn invalid(e: SpecError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Checks one submit request and seals its secrets; `prefix` locates it inside a batch
/// (`jobs[3].`).
fn check_submit(req: SubmitJobRequest, prefix: &str, keyring: &Keyring, owner: &str) -> Result<NewJob, SpecError> {
    if req.idempotency_key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(SpecError::new(
            format!("{prefix}idempotencyKey"),
            format!("must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"),
        ));
    }
    let mut spec = req.spec.ok_or_else(|| SpecError::new(format!("{prefix}spec"), "is required"))?;
    let located = |e: SpecError| SpecError::new(format!("{prefix}{}", e.field), e.rule);
    let seal = |spec: &mut JobSpec| {
        keyring.seal(spec).map_err(|e| SpecError::new(format!("{prefix}spec.browser.secrets"), e.to_string()))
    };
    let mut points = Vec::new();
    for Point { mut spec, point } in baton_proto::spec::check(&spec).map_err(located)? {
        let secrets = seal(&mut spec)?;
        points.push(NewJob { spec, secrets, point: Some(point), owner: owner.to_string(), ..Default::default() });
    }
    // A sweep never runs itself: its secrets are masked in its spec and sealed only in
    // its points'.
    let secrets = seal(&mut spec)?.filter(|_| points.is_empty());
    Ok(NewJob {
        spec,
        idempotency_key: req.idempotency_key,
        secrets,
        owner: owner.to_string(),
        points,
        ..Default::default()
    })
}

/// One audit line per job a state-changing call touched: who (the principal, and the
/// address the call came from), what, which job.
fn audit<'a>(who: &Principal, from: &str, call: &str, job_ids: impl IntoIterator<Item = &'a str>) {
    let who = who.who();
    for job_id in job_ids {
        tracing::info!(target: "baton::audit", who, from, call, job_id, "audit");
    }
}

/// What an agent's hello must hold before the state sees it.
pub fn check_hello(hello: &Hello) -> Result<(), Status> {
    if hello.agent_id.is_empty() {
        return Err(Status::invalid_argument("hello.agentId: is required"));
    }
    if hello.slots == 0 || hello.slots > MAX_SLOTS {
        return Err(Status::invalid_argument(format!("hello.slots: must be between 1 and {MAX_SLOTS}")));
    }
    Ok(())
}

fn require_id(id: &str, field: &str) -> Result<(), Status> {
    if id.is_empty() { Err(Status::invalid_argument(format!("{field}: is required"))) } else { Ok(()) }
}

/// The caller's W3C trace context, when its metadata carries one.
fn client_context<T>(req: &Request<T>) -> opentelemetry::Context {
    let fields: HashMap<String, String> = ["traceparent", "tracestate"]
        .iter()
        .filter_map(|k| req.metadata().get(*k).and_then(|v| v.to_str().ok()).map(|v| (k.to_string(), v.to_string())))
        .collect();
    baton_proto::telemetry::extract(&fields)
}

#[tonic::async_trait]
impl JobService for Api {
    async fn submit_job(&self, req: Request<SubmitJobRequest>) -> Result<Response<Job>, Status> {
        let who = self.allow(&req, AccessRole::Submit, "SubmitJob")?;
        let coordinator = lead_or_forward!(self, req, jobs.submit_job);
        let (cx, from) = (client_context(&req), caller(&req));
        let one = check_submit(req.into_inner(), "", &coordinator.config.keyring, &who.name).map_err(invalid)?;
        let mut jobs = coordinator.submit(vec![one], &cx).await;
        audit(&who, &from, "SubmitJob", jobs.iter().map(|j| j.id.as_str()));
        jobs.pop().map(Response::new).ok_or_else(|| Status::internal("submitted job vanished"))
    }

    async fn submit_jobs(&self, req: Request<SubmitJobsRequest>) -> Result<Response<SubmitJobsResponse>, Status> {
        let who = self.allow(&req, AccessRole::Submit, "SubmitJobs")?;
        let coordinator = lead_or_forward!(self, req, jobs.submit_jobs);
        let (cx, from) = (client_context(&req), caller(&req));
        let jobs = req.into_inner().jobs;
        if jobs.is_empty() {
            return Err(Status::invalid_argument("jobs: must not be empty"));
        }
        if jobs.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!("jobs: at most {MAX_BATCH} per call")));
        }
        let checked = jobs
            .into_iter()
            .enumerate()
            .map(|(i, r)| check_submit(r, &format!("jobs[{i}]."), &coordinator.config.keyring, &who.name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        if checked.iter().map(|c| c.points.len().max(1)).sum::<usize>() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "jobs: at most {MAX_BATCH} per call, sweeps' points included"
            )));
        }
        let jobs = coordinator.submit(checked, &cx).await;
        audit(&who, &from, "SubmitJobs", jobs.iter().map(|j| j.id.as_str()));
        Ok(Response::new(SubmitJobsResponse { jobs }))
    }

    async fn get_job(&self, req: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let who = self.access.authenticate(&req)?;
        let coordinator = lead_or_forward!(self, req, jobs.get_job);
        let id = req.into_inner().id;
        require_id(&id, "id")?;
        let job = coordinator.get(&id).await?;
        who.require_job(&job.owner, AccessRole::Read, "GetJob")?;
        Ok(Response::new(job))
    }

    async fn list_jobs(&self, req: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        let who = self.access.authenticate(&req)?;
        // Who may not see every job sees its own.
        let owner = if who.sees_all() {
            None
        } else {
            who.require(AccessRole::Submit, "ListJobs")?;
            Some(who.name.clone())
        };
        let coordinator = lead_or_forward!(self, req, jobs.list_jobs);
        let req = req.into_inner();
        if req.page_size > MAX_PAGE {
            return Err(Status::invalid_argument(format!("pageSize: must be at most {MAX_PAGE}")));
        }
        let page_size = if req.page_size == 0 { DEFAULT_PAGE } else { req.page_size } as usize;
        let before = if req.page_token.is_empty() {
            None
        } else {
            Some(
                req.page_token
                    .parse::<u64>()
                    .map_err(|_| Status::invalid_argument("pageToken: must be a nextPageToken returned by ListJobs"))?,
            )
        };
        let mut states = Vec::new();
        for s in &req.states {
            match JobState::try_from(*s) {
                Ok(JobState::Unspecified) | Err(_) => {
                    return Err(Status::invalid_argument(format!("states: {s} is not a job state")));
                }
                Ok(state) => states.push(state as i32),
            }
        }
        let full = match JobView::try_from(req.view) {
            Ok(JobView::Unspecified | JobView::Basic) => false,
            Ok(JobView::Full) => true,
            Err(_) => return Err(Status::invalid_argument(format!("view: {} is not a job view", req.view))),
        };
        let filter = JobFilter { states, labels: req.labels, owner, sweep_id: req.sweep_id };
        let (jobs, next) = coordinator.list(&filter, before, page_size, full).await?;
        Ok(Response::new(ListJobsResponse { jobs, next_page_token: next.map(|s| s.to_string()).unwrap_or_default() }))
    }

    type WatchJobStream = BoxStream<Job>;

    async fn watch_job(&self, req: Request<WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let who = self.access.authenticate(&req)?;
        let Some(coordinator) = self.role.coordinator() else {
            if was_forwarded(&req) {
                return Err(not_leading());
            }
            let watched = self.role.jobs()?.watch_job(forwarded(req)).await?;
            let stream: Self::WatchJobStream =
                Box::pin(watched.into_inner().take_until(self.shutdown.clone().cancelled_owned()));
            return Ok(Response::new(stream));
        };
        let id = req.into_inner().id;
        require_id(&id, "id")?;
        let (job, rx) = coordinator.watch(&id).await?;
        who.require_job(&job.owner, AccessRole::Read, "WatchJob")?;
        let Some(rx) = rx else {
            return Ok(Response::new(Box::pin(futures::stream::once(async { Ok(job) }))));
        };
        // Yields the current version, then each change, and ends after a finished one.
        let stream = WatchStream::new(rx).scan(false, |done, job| {
            let out = (!*done).then(|| Ok(job.clone()));
            *done = job.state().is_terminal();
            futures::future::ready(out)
        });
        Ok(Response::new(Box::pin(stream.take_until(self.shutdown.clone().cancelled_owned()))))
    }

    async fn cancel_job(&self, req: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        let who = self.access.authenticate(&req)?;
        let coordinator = lead_or_forward!(self, req, jobs.cancel_job);
        let from = caller(&req);
        let req = req.into_inner();
        require_id(&req.id, "id")?;
        who.require_job(&coordinator.owner(&req.id)?, AccessRole::Admin, "CancelJob")?;
        if req.reason.chars().count() > MAX_CANCEL_REASON_CHARS {
            return Err(Status::invalid_argument(format!(
                "reason: must be at most {MAX_CANCEL_REASON_CHARS} characters"
            )));
        }
        let job = coordinator.cancel(&req.id, &req.reason).await?;
        audit(&who, &from, "CancelJob", [job.id.as_str()]);
        Ok(Response::new(job))
    }
}

fn agent_view(a: AgentEntry) -> Agent {
    Agent {
        id: a.id,
        connected: a.connected,
        draining: a.draining,
        slots: a.slots,
        running: a.running.len() as u32,
        labels: a.labels,
        capabilities: Some(a.capabilities),
        connected_at: Some(a.connected_at),
        last_heartbeat_at: Some(a.last_heartbeat_at),
    }
}

#[tonic::async_trait]
impl AdminService for Api {
    async fn list_agents(&self, req: Request<ListAgentsRequest>) -> Result<Response<ListAgentsResponse>, Status> {
        self.allow(&req, AccessRole::Read, "ListAgents")?;
        let coordinator = lead_or_forward!(self, req, admin.list_agents);
        let agents = coordinator.agents().into_iter().map(agent_view).collect();
        Ok(Response::new(ListAgentsResponse { agents }))
    }

    async fn drain_agent(&self, req: Request<DrainAgentRequest>) -> Result<Response<Agent>, Status> {
        let who = self.allow(&req, AccessRole::Admin, "DrainAgent")?;
        let coordinator = lead_or_forward!(self, req, admin.drain_agent);
        let from = caller(&req);
        let id = req.into_inner().agent_id;
        require_id(&id, "agentId")?;
        let agent = coordinator.drain(&id, true).await?;
        tracing::info!(target: "baton::audit", who = who.who(), from, call = "DrainAgent", agent_id = %id, "audit");
        Ok(Response::new(agent_view(agent)))
    }

    async fn undrain_agent(&self, req: Request<UndrainAgentRequest>) -> Result<Response<Agent>, Status> {
        let who = self.allow(&req, AccessRole::Admin, "UndrainAgent")?;
        let coordinator = lead_or_forward!(self, req, admin.undrain_agent);
        let from = caller(&req);
        let id = req.into_inner().agent_id;
        require_id(&id, "agentId")?;
        let agent = coordinator.drain(&id, false).await?;
        tracing::info!(target: "baton::audit", who = who.who(), from, call = "UndrainAgent", agent_id = %id, "audit");
        Ok(Response::new(agent_view(agent)))
    }
}

#[tonic::async_trait]
impl AgentService for Api {
    type ConnectAgentStream = BoxStream<CoordinatorMessage>;

    async fn connect_agent(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectAgentStream>, Status> {
        let who = self.allow(&req, AccessRole::Agent, "ConnectAgent")?;
        let Some(coordinator) = self.role.coordinator().cloned() else { return Err(self.role.redirect_agent()) };
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(AgentMessage { kind: Some(AgentKind::Hello(h)) }) => h,
            _ => return Err(Status::invalid_argument("the first message on ConnectAgent must be hello")),
        };
        check_hello(&hello)?;
        // An authenticated agent's id is its identity (or under it, `name/...`: agents that
        // share one pool certificate), never a free claim.
        if !who.name.is_empty() && hello.agent_id != who.name && !hello.agent_id.starts_with(&format!("{}/", who.name))
        {
            return Err(Status::permission_denied(format!(
                "hello.agentId: must be {0} or start with {0}/ (the identity this agent authenticated as)",
                who.name
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let welcome = Welcome {
            heartbeat_interval: Some(baton_proto::job::from_duration(coordinator.config.heartbeat_interval)),
        };
        // Unbounded is safe here: an agent gets at most one message per slot, cancel or
        // report, and the stream drains as fast as the agent reads.
        let _ = tx.send(Ok(CoordinatorMessage { kind: Some(coordinator_message::Kind::Welcome(welcome)) }));
        let agent_id = hello.agent_id.clone();
        let connection = coordinator.agent_connected(&hello, tx);
        tracing::info!(agent_id = %agent_id, slots = hello.slots, running = hello.running.len(), "agent connected");
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        if !coordinator.agent_message(&agent_id, connection, msg) {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(agent_id = %agent_id, error = %e, "agent stream broke");
                        break;
                    }
                }
            }
            coordinator.agent_gone(&agent_id, connection);
            tracing::info!(agent_id = %agent_id, "agent disconnected");
        });
        let outbound = UnboundedReceiverStream::new(rx).take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(outbound)))
    }
}
