//! Holds the ConnectAgent stream open: hello, heartbeats, reports out; assignments,
//! cancels and acks in. Reconnects with capped, jittered backoff, forever.

use crate::runner::Runner;
use baton_proto::v1::agent_service_client::AgentServiceClient;
use baton_proto::v1::{AgentMessage, Capabilities, Heartbeat, Hello, agent_message, coordinator_message};
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
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `shutdown` fires.
pub async fn run(
    coordinator: String,
    identity: Identity,
    runner: Arc<Runner>,
    mut events: mpsc::UnboundedReceiver<AgentMessage>,
    shutdown: CancellationToken,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let session = session(&coordinator, &identity, &runner, &mut events);
        let connected_for = tokio::time::Instant::now();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = session => match result {
                Ok(()) => tracing::warn!(coordinator = %coordinator, "coordinator closed the stream"),
                Err(e) => tracing::warn!(coordinator = %coordinator, error = %e, "cannot reach the coordinator"),
            },
        }
        if connected_for.elapsed() > MAX_BACKOFF {
            backoff = MIN_BACKOFF;
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

fn msg(kind: agent_message::Kind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

async fn session(
    coordinator: &str,
    identity: &Identity,
    runner: &Arc<Runner>,
    events: &mut mpsc::UnboundedReceiver<AgentMessage>,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(coordinator.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .connect()
        .await?;
    // Reports queued while away are superseded by the hello's running and finished lists.
    while events.try_recv().is_ok() {}
    let (out, out_rx) = mpsc::channel(1024);
    let hello = Hello {
        agent_id: identity.agent_id.clone(),
        slots: identity.slots,
        labels: identity.labels.clone(),
        capabilities: Some(identity.capabilities.clone()),
        running: runner.running(),
        finished: runner.unacknowledged(),
    };
    out.send(msg(agent_message::Kind::Hello(hello))).await?;
    let mut inbound = AgentServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .connect_agent(ReceiverStream::new(out_rx))
        .await?
        .into_inner();
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
                        tracing::info!("draining: finishing running jobs, taking no new ones");
                    }
                    None => {}
                }
            }
            Some(event) = events.recv() => out.send(event).await?,
            _ = heartbeat.tick() => out.send(msg(agent_message::Kind::Heartbeat(Heartbeat {}))).await?,
        }
    }
}
