//! Leadership among coordinators that share one etcd: one leader schedules and writes, the
//! others (followers) forward clients to it and point agents at it.
//!
//! The leader holds `PREFIX/leader` — its advertise URL — on a lease it keeps alive. A
//! coordinator wins by creating that key (a transaction that succeeds only while the key
//! does not exist) and is known by the key's create revision. Every write of the leader
//! is a transaction conditioned on that create revision (the [`Fence`]): a leader whose
//! lease ran out — paused, cut off from etcd — cannot write anything however late it wakes
//! up, because whoever leads now created the key again, with a newer revision. A leader
//! that finds it lost the lease stops; the process starts again as a follower.
//!
//! **Architecture invariant:** the fence is enforced by etcd in every write, never by a
//! belief of the coordinator's that it still leads (Jepsen found etcd locks unsafe for
//! mutual exclusion; revisions are not).

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a follower looks whether the leader's key is gone.
const POLL: Duration = Duration::from_millis(200);

/// What every write of the leader is conditioned on.
#[derive(Debug, Clone)]
pub struct Fence {
    pub key: Vec<u8>,
    pub create_revision: i64,
}

impl Fence {
    /// The condition a write carries: the election key is still the one this leader made.
    pub fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.create_revision)
    }
}

pub struct Election {
    client: Client,
    key: Vec<u8>,
    /// This coordinator's advertise URL: what followers tell callers.
    url: String,
    lease: Duration,
}

/// Won leadership: the fence for writes, and a token cancelled when the lease is lost.
pub struct Leadership {
    pub fence: Fence,
    pub lost: CancellationToken,
}

impl Election {
    pub fn new(client: Client, prefix: &str, url: String, lease: Duration) -> Self {
        Self { client, key: format!("{prefix}leader").into_bytes(), url, lease }
    }

    /// Campaigns until this coordinator leads, publishing meanwhile who leads (`None` while
    /// nobody does or etcd cannot be reached).
    pub async fn campaign(&self, leader: &watch::Sender<Option<String>>) -> Leadership {
        let mut unreachable_logged = false;
        loop {
            match self.try_to_lead().await {
                Ok(Ok(leadership)) => {
                    // Never forward to a coordinator led before: this one is taking over.
                    leader.send_replace(Some(self.url.clone()));
                    return leadership;
                }
                Ok(Err(current)) => {
                    unreachable_logged = false;
                    if leader.borrow().as_deref() != current.as_deref() {
                        tracing::info!(leader = current.as_deref().unwrap_or("none"), "following");
                        leader.send_replace(current);
                    }
                }
                Err(e) => {
                    if !unreachable_logged {
                        tracing::warn!(error = %e, "cannot reach etcd to campaign; trying again");
                        unreachable_logged = true;
                    }
                    leader.send_replace(None);
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// One try: leads when the key is free; otherwise returns the current leader's URL.
    async fn try_to_lead(&self) -> Result<Result<Leadership, Option<String>>, etcd_client::Error> {
        let mut client = self.client.clone();
        let current = client.get(self.key.clone(), None).await?;
        if let Some(kv) = current.kvs().first() {
            let url = String::from_utf8_lossy(kv.value()).into_owned();
            // Our own key from before a restart: nobody to follow until it expires.
            return Ok(Err((url != self.url).then_some(url)));
        }
        let ttl = self.lease.as_secs().max(2) as i64;
        let lease = client.lease_grant(ttl, None).await?.id();
        let create = TxnOp::put(self.key.clone(), self.url.clone(), Some(PutOptions::new().with_lease(lease)));
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.clone(), CompareOp::Equal, 0)])
            .and_then([create])
            .or_else([TxnOp::get(self.key.clone(), None)]);
        let response = client.txn(txn).await?;
        if !response.succeeded() {
            let _ = client.lease_revoke(lease).await;
            let current = response.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            });
            return Ok(Err(current));
        }
        let Some(create_revision) = response.header().map(|h| h.revision()).filter(|r| *r > 0) else {
            // Without the revision there is no fence; better not to lead.
            let _ = client.lease_revoke(lease).await;
            return Ok(Err(None));
        };
        let lost = CancellationToken::new();
        tokio::spawn(keep_alive(client, lease, self.lease, lost.clone()));
        tracing::info!(url = %self.url, revision = create_revision, "elected leader");
        Ok(Ok(Leadership { fence: Fence { key: self.key.clone(), create_revision }, lost }))
    }
}

/// Keeps the leader's lease alive; cancels `lost` once no renewal has been confirmed for a
/// whole lease (etcd may have let the key go by then) or etcd says the lease is gone, and
/// then revokes it (best effort) so that a successor need not wait for it to expire.
async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, lost: CancellationToken) {
    let mut last_confirmed = tokio::time::Instant::now();
    let why = loop {
        if last_confirmed.elapsed() >= ttl {
            break "no renewal confirmed for a whole lease";
        }
        match tokio::time::timeout(ttl / 4, renew(&mut client, lease)).await {
            Ok(Ok(left)) if left > 0 => last_confirmed = tokio::time::Instant::now(),
            Ok(Ok(_)) => break "the lease expired",
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader's lease; trying again"),
            Err(_) => tracing::warn!("renewing the leader's lease timed out; trying again"),
        }
        tokio::time::sleep(ttl / 4).await;
    };
    tracing::error!(reason = why, "leadership lost");
    lost.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
}

/// One renewal; returns the seconds the lease has left (0: it is gone).
async fn renew(client: &mut Client, lease: i64) -> Result<i64, etcd_client::Error> {
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
    keeper.keep_alive().await?;
    Ok(responses.message().await?.map_or(0, |r| r.ttl()))
}
