//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas exactly one acts (two acting replicas could both create a webhook at Seshn).
//!
//! The holder renews every `renew_interval`; a lease not renewed for `lease_duration` may be
//! taken over. Every write is an optimistic-concurrency `replace` (resourceVersion), so two
//! candidates can never both win the same round. The holder stops acting when it could not
//! renew for `lease_duration - renew_interval`, i.e. before anyone else may take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{debug, warn};

use crate::config::LeaderElectionConfig;

/// Leader election failures.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The lease was lost (not renewed in time, or taken over).
    #[error("lost the leader lease {0}")]
    Lost(String),
}

/// One candidate.
#[derive(Debug, Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    identity: String,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// A candidate named `identity` for the configured Lease.
    pub fn new(client: Client, config: LeaderElectionConfig, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            identity,
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(&self.identity);
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: if ours {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
            ..LeaseSpec::default()
        }
    }

    /// One round: take or renew the lease if it is ours, free or expired. Returns whether we
    /// hold it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(secs)) => {
                renewed.0 + SignedDuration::from_secs(i64::from(secs)) < now
            }
            _ => true,
        };
        if holder.is_some() && holder != Some(self.identity.as_str()) && !expired {
            return Ok(false);
        }
        let mut next = current.clone();
        next.spec = Some(self.spec(Some(&spec), now));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate holds the lease.
    pub async fn acquire(&self) -> Result<(), LeaderError> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return Ok(()),
                Ok(false) => debug!(lease = %self.config.name, "lease held by another instance"),
                Err(e) => warn!(error = %e, "leader election round failed"),
            }
            tokio::time::sleep(self.config.renew_interval).await;
        }
    }

    /// Keeps renewing; returns when the lease is lost.
    pub async fn hold(&self) -> LeaderError {
        let deadline = self
            .config
            .lease_duration
            .saturating_sub(self.config.renew_interval)
            .max(self.config.renew_interval);
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.renew_interval).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => return LeaderError::Lost(self.config.name.clone()),
                Err(e) => warn!(error = %e, "renewing the leader lease failed"),
            }
            if last_renewed.elapsed() >= deadline {
                return LeaderError::Lost(self.config.name.clone());
            }
        }
    }

    /// Gives the lease up (on clean shutdown), so a successor need not wait for expiry.
    pub async fn release(&self) {
        let Ok(Some(mut current)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = current.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &current)
            .await
        {
            debug!(error = %e, "releasing the lease failed; it will expire");
        }
    }
}

/// For tests: whether `identity` holds a non-expired lease at `now`.
pub fn holds(lease: &Lease, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    let fresh = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(secs)) => {
            renewed.0 + SignedDuration::from_secs(i64::from(secs)) >= now
        }
        _ => false,
    };
    fresh && spec.holder_identity.as_deref() == Some(identity)
}

/// Time left of a lease duration, for logs.
pub fn remaining(d: Duration, since: Instant) -> Duration {
    d.saturating_sub(since.elapsed())
}
