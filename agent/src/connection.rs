//! Holds the ConnectAgent stream open: hello, heartbeats, reports out; assignments,
//! cancels and acks in. Reconnects with capped, jittered backoff until told to close.
//! After every hello the reports the coordinator has not acknowledged go out again, one
//! message each; reports queued for a broken stream are superseded by that.

use crate::runner::Runner;
use baton_proto::LEADER_METADATA;
use baton_proto::client::ClientAuth;
use baton_proto::limits::MAX_AGENT_MESSAGE_BYTES;
use baton_proto::v1::agent_service_client::AgentServiceClient;
use baton_proto::v1::{
    AgentMessage, AttemptRef, Capabilities, Heartbeat, Hello, Leaving, agent_message, coordinator_message,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

pub struct Identity {
    pub agent_id: String,
    pub slots: u32,
    pub labels: HashMap<String, String>,
    pub capabilities: Capabilities,
    /// TLS files and token, read again at each connect (rotation).
    pub auth: ClientAuth,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_REDIRECTS: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The agent's stop: `leaving` fires when it begins (the coordinator is told, and sends no
/// more work), `close` when the agent is done and the stream may go.
#[derive(Clone, Default)]
pub struct Stopping {
    pub leaving: CancellationToken,
    pub grace_period: Duration,
    pub close: CancellationToken,
}

/// Runs until `stopping.close` fires. With several coordinators it tries them in turn and
/// goes straight to the leader when a follower names it; it backs off only after every
/// coordinator failed once.
pub async fn run(
    coordinators: Vec<String>,
    identity: Identity,
    runner: Arc<Runner>,
    mut events: mpsc::UnboundedReceiver<AgentMessage>,
    stopping: Stopping,
) {
    let shutdown = stopping.close.clone();
    let mut backoff = MIN_BACKOFF;
    let mut turn = 0;
    let mut leader: Option<String> = None;
    // Redirects followed in a row: past a few, leadership is moving; back off as usual.
    let mut redirects = 0;
    loop {
        let coordinator = leader.take().unwrap_or_else(|| coordinators[turn % coordinators.len()].clone());
        let session = session(&coordinator, &identity, &runner, &mut events, &stopping);
        let connected_for = tokio::time::Instant::now();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = session => match result {
                Ok(()) => tracing::warn!(coordinator = %coordinator, "coordinator closed the stream"),
                Err(e) => match leader_named_in(&e) {
                    Some(url) if redirects < MAX_REDIRECTS => {
                        tracing::info!(coordinator = %coordinator, leader = %url, "following the coordinator to its leader");
                        leader = Some(url);
                        redirects += 1;
                        continue;
                    }
                    _ => tracing::warn!(coordinator = %coordinator, error = %e, "cannot reach the coordinator"),
                },
            },
        }
        redirects = 0;
        if connected_for.elapsed() > MAX_BACKOFF {
            backoff = MIN_BACKOFF;
        }
        turn += 1;
        if turn % coordinators.len() != 0 {
            continue;
        }
        // Up to 100 ms of jitter, from the clock's nanoseconds, spreads a fleet's reconnects.
        let jitter =
            Duration::from_millis(u64::from(std::time::UNIX_EPOCH.elapsed().unwrap_or_default().subsec_nanos() % 100));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The leader a follower named when it turned the agent away.
fn leader_named_in(error: &anyhow::Error) -> Option<String> {
    let status = error.downcast_ref::<tonic::Status>()?;
    status.metadata().get(LEADER_METADATA)?.to_str().ok().map(str::to_string)
}

fn msg(kind: agent_message::Kind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

async fn session(
    coordinator: &str,
    identity: &Identity,
    runner: &Arc<Runner>,
    events: &mut mpsc::UnboundedReceiver<AgentMessage>,
    stopping: &Stopping,
) -> anyhow::Result<()> {
    let credentials = identity.auth.credentials()?;
    let channel = identity
        .auth
        .endpoint(coordinator)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        // A coordinator that stops answering (paused, cut off) is noticed within ~3 s.
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    // Reports queued while away are superseded by the hello (what runs) and the
    // unacknowledged reports sent right after it.
    while events.try_recv().is_ok() {}
    let (out, out_rx) = mpsc::channel(1024);
    let unacknowledged = runner.unacknowledged();
    let leaving = stopping.leaving.is_cancelled();
    let hello = Hello {
        agent_id: identity.agent_id.clone(),
        slots: identity.slots,
        labels: identity.labels.clone(),
        capabilities: Some(identity.capabilities.clone()),
        running: runner.running(),
        finished: unacknowledged
            .iter()
            .map(|f| AttemptRef { job_id: f.job_id.clone(), attempt: f.attempt, started_at: None })
            .collect(),
        leaving,
    };
    out.send(msg(agent_message::Kind::Hello(hello))).await?;
    let mut inbound = AgentServiceClient::with_interceptor(channel, credentials)
        .max_decoding_message_size(MAX_AGENT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_AGENT_MESSAGE_BYTES)
        .connect_agent(ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    for report in unacknowledged {
        out.send(msg(agent_message::Kind::Finished(report))).await?;
    }
    let mut told_leaving = leaving;
    tracing::info!(coordinator = %coordinator, agent_id = %identity.agent_id, "connected");
    let mut heartbeat = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Some(message) = message? else { return Ok(()) };
                match message.kind {
                    Some(coordinator_message::Kind::Welcome(w)) => {
                        if let Some(every) = w.heartbeat_interval.as_ref().map(baton_proto::job::to_duration)
                            && !every.is_zero() {
                                heartbeat = tokio::time::interval(every);
                            }
                    }
                    Some(coordinator_message::Kind::Assignment(a)) => {
                        tracing::debug!(job_id = %a.job_id, attempt = a.attempt, "assigned");
                        runner.start(a);
                    }
                    Some(coordinator_message::Kind::Cancel(c)) => runner.cancel(&c.job_id, c.attempt, &c.reason),
                    Some(coordinator_message::Kind::Ack(a)) => runner.acknowledged(&a.job_id, a.attempt),
                    Some(coordinator_message::Kind::Drain(_)) => {
                        tracing::info!("drained by an operator: finishing running jobs, taking no new ones");
                    }
                    None => {}
                }
            }
            Some(event) = events.recv() => out.send(event).await?,
            _ = stopping.leaving.cancelled(), if !told_leaving => {
                told_leaving = true;
                let grace_period = Some(baton_proto::job::from_duration(stopping.grace_period));
                out.send(msg(agent_message::Kind::Leaving(Leaving { grace_period }))).await?;
            }
            _ = heartbeat.tick() => out.send(msg(agent_message::Kind::Heartbeat(Heartbeat {}))).await?,
        }
    }
}
