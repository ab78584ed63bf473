//! What this coordinator is right now: the leader, which serves every call itself, or a
//! follower, which forwards clients' calls to the leader and tells agents where it is.
//!
//! A process is a follower until it wins the election, then the leader until it loses
//! it; then it starts again as a follower (see `main`). With the embedded store it leads
//! from the start.

use crate::core::Coordinator;
use baton_proto::LEADER_METADATA;
use baton_proto::client::{AUTHORIZATION, ClientAuth};
use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_proto::v1::job_service_client::JobServiceClient;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Request, Status};

pub struct Role {
    leader: OnceLock<Arc<Coordinator>>,
    /// Who leads, as the election sees it (followers only).
    leader_url: watch::Receiver<Option<String>>,
    /// This coordinator's own advertise URL: never forwarded to.
    own_url: String,
    /// How to reach the leader (TLS files for `https://` URLs).
    peers: ClientAuth,
    /// A channel to the leader, kept while it leads.
    channel: Mutex<Option<(String, Channel)>>,
}

impl Role {
    /// Leads from the start (the embedded store).
    pub fn leading(coordinator: Arc<Coordinator>) -> Self {
        let role = Self::following(watch::channel(None).1, String::new(), ClientAuth::default());
        role.lead(coordinator);
        role
    }

    pub fn following(leader_url: watch::Receiver<Option<String>>, own_url: String, peers: ClientAuth) -> Self {
        Self { leader: OnceLock::new(), leader_url, own_url, peers, channel: Mutex::new(None) }
    }

    /// Won the election and loaded the state: serve from now on.
    pub fn lead(&self, coordinator: Arc<Coordinator>) {
        let _ = self.leader.set(coordinator);
    }

    /// The coordinator, when this one leads.
    pub fn coordinator(&self) -> Option<&Arc<Coordinator>> {
        self.leader.get()
    }

    /// The leader's URL, or why there is none to go to.
    pub fn leader_url(&self) -> Result<String, Status> {
        match self.leader_url.borrow().clone() {
            Some(url) if url != self.own_url => Ok(url),
            Some(_) => Err(Status::unavailable("this coordinator is taking over as the leader; try again shortly")),
            None => Err(Status::unavailable("no coordinator leads right now (an election is under way); try again")),
        }
    }

    fn channel(&self) -> Result<Channel, Status> {
        let url = self.leader_url()?;
        let mut cached = self.channel.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, channel)) = cached.as_ref()
            && *at == url
        {
            return Ok(channel.clone());
        }
        let endpoint =
            self.peers.endpoint(&url).map_err(|e| Status::internal(format!("cannot reach the leader: {e}")))?;
        // A leader that stops answering (paused, cut off) fails forwarded calls within ~3 s.
        let channel = endpoint
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(1))
            .keep_alive_timeout(std::time::Duration::from_secs(2))
            .connect_lazy();
        *cached = Some((url, channel.clone()));
        Ok(channel)
    }

    /// A client of the leader's JobService, for forwarding.
    pub fn jobs(&self) -> Result<JobServiceClient<Channel>, Status> {
        Ok(JobServiceClient::new(self.channel()?)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20))
    }

    /// A client of the leader's AdminService, for forwarding.
    pub fn admin(&self) -> Result<AdminServiceClient<Channel>, Status> {
        Ok(AdminServiceClient::new(self.channel()?))
    }

    /// What an agent that called a follower hears: where the leader is.
    pub fn redirect_agent(&self) -> Status {
        match self.leader_url() {
            Ok(url) => {
                let mut status = Status::unavailable(format!("this coordinator follows; the leader is at {url}"));
                if let Ok(value) = url.parse() {
                    status.metadata_mut().insert(LEADER_METADATA, value);
                }
                status
            }
            Err(status) => status,
        }
    }
}

/// Marks a call a follower forwarded: a coordinator that gets one and does not lead
/// refuses it rather than forward it again (no call bounces between coordinators).
const FORWARDED_METADATA: &str = "baton-forwarded";

/// Where the call came from: the client's address, or for a call a follower forwarded,
/// the address the follower saw (who the caller is: [`crate::access`]).
pub fn caller<T>(request: &Request<T>) -> String {
    if let Some(original) = request.metadata().get(FORWARDED_METADATA).and_then(|v| v.to_str().ok()) {
        return original.to_string();
    }
    request.remote_addr().map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

/// Whether a follower already forwarded this call.
pub fn was_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_METADATA)
}

/// The call as it goes on to the leader: the message, the caller's credentials (the
/// leader checks them again) and trace context, and the mark that it was forwarded,
/// naming the caller's address (for the leader's audit log).
pub fn forwarded<T>(request: Request<T>) -> Request<T> {
    let caller = caller(&request);
    let (metadata, _, message) = request.into_parts();
    let mut onward = Request::new(message);
    let mark = caller.parse().unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static("unknown"));
    onward.metadata_mut().insert(FORWARDED_METADATA, mark);
    for key in [AUTHORIZATION, "traceparent", "tracestate"] {
        if let Some(value) = metadata.get(key) {
            onward.metadata_mut().insert(key, value.clone());
        }
    }
    onward
}
