//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several operator
//! replicas exactly one acts (two acting replicas could both create a webhook at Seshn).
//!
//! The holder renews every `renew_interval`; a lease not renewed for `lease_duration` may be
//! taken over. Every write is an optimistic-concurrency `replace` (resourceVersion), so two
//! candidates can never both win the same round.
//!
//! No decision uses another replica's clock. As client-go does, a candidate measures expiry on
//! its own monotonic clock from the moment *it* last saw the lease change ([`observe`],
//! [`may_acquire`]); the `renewTime` written into the Lease is informational. The holder stops
//! acting when it could not renew for `lease_duration - renew_interval` after the *start* of
//! its last successful renewal ([`LeaderElector::hold`]), and every renewal is bounded by that
//! deadline: a request hanging on a dead connection (the Kubernetes client sets no read timeout)
//! cannot keep it acting past the point where another replica may take over.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::LeaderElectionConfig;

/// Leader election failures.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The lease was lost (not renewed in time, or taken over).
    #[error("lost the leader lease {0}")]
    Lost(String),
}

/// What a candidate last saw of the lease, and when on its own clock it first saw it so.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The lease spec as read.
    pub spec: LeaseSpec,
    /// When this replica first read this exact spec.
    pub at: Instant,
}

/// The observation after reading `current` at `now`: unchanged keeps the earlier instant (the
/// lease has not been renewed since), any change of the spec restarts the clock.
pub fn observe(previous: Option<&Observed>, current: &LeaseSpec, now: Instant) -> Observed {
    match previous {
        Some(p) if p.spec == *current => p.clone(),
        _ => Observed {
            spec: current.clone(),
            at: now,
        },
    }
}

/// Whether `identity` may write the lease at `now`: it is free, ours, or another holder's that
/// has not changed for its `leaseDurationSeconds` (`fallback` when unset) on our own clock.
pub fn may_acquire(observed: &Observed, identity: &str, fallback: Duration, now: Instant) -> bool {
    let holder = observed
        .spec
        .holder_identity
        .as_deref()
        .filter(|h| !h.is_empty());
    match holder {
        None => true,
        Some(h) if h == identity => true,
        Some(_) => {
            let duration = observed
                .spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map_or(fallback, Duration::from_secs);
            now.saturating_duration_since(observed.at) >= duration
        }
    }
}

/// How long after the start of its last successful renewal the holder may keep acting: a
/// renewal interval less than the lease duration, so it stops before anyone may take over.
pub fn renew_budget(config: &LeaderElectionConfig) -> Duration {
    let budget = config.lease_duration.saturating_sub(config.renew_interval);
    if budget.is_zero() {
        config.lease_duration / 2
    } else {
        budget
    }
}

/// One candidate.
#[derive(Debug, Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    identity: String,
    observed: Arc<Mutex<Option<Observed>>>,
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
            observed: Arc::default(),
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

    fn remember(&self, spec: &LeaseSpec, now: Instant) -> Observed {
        let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        let next = observe(observed.as_ref(), spec, now);
        *observed = Some(next.clone());
        next
    }

    /// One round: take or renew the lease if it is ours, free or (on our clock) expired.
    /// Returns whether we hold it now.
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
        let observed = self.remember(&spec, Instant::now());
        if !may_acquire(
            &observed,
            &self.identity,
            self.config.lease_duration,
            Instant::now(),
        ) {
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

    /// Waits until this candidate holds the lease. Returns the instant the winning round
    /// started (the holder's deadline counts from there: the write may have landed any time
    /// after it).
    pub async fn acquire(&self) -> Result<Instant, LeaderError> {
        let budget = renew_budget(&self.config);
        loop {
            let started = Instant::now();
            // Bounded like a renewal: a round stuck on a dead connection is simply retried.
            match tokio::time::timeout(budget, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => return Ok(started),
                Ok(Ok(false)) => {
                    debug!(lease = %self.config.name, "lease held by another instance");
                }
                Ok(Err(e)) => warn!(error = %e, "leader election round failed"),
                Err(_) => warn!(lease = %self.config.name, "leader election round timed out"),
            }
            tokio::time::sleep(self.config.renew_interval).await;
        }
    }

    /// Keeps renewing; returns when the lease is lost or could not be renewed in time.
    /// `renewed_at` is when the round that last won the lease started.
    pub async fn hold(&self, mut renewed_at: Instant) -> LeaderError {
        let budget = renew_budget(&self.config);
        let lost = || LeaderError::Lost(self.config.name.clone());
        loop {
            let stop = renewed_at + budget;
            tokio::time::sleep_until((Instant::now() + self.config.renew_interval).min(stop)).await;
            let started = Instant::now();
            if started >= stop {
                return lost();
            }
            // The deadline bounds the call itself: the check after a call that returned late
            // would come after another replica could already have taken over.
            match tokio::time::timeout_at(stop, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => renewed_at = started,
                Ok(Ok(false)) => return lost(),
                Ok(Err(e)) => warn!(error = %e, "renewing the leader lease failed"),
                Err(_) => {
                    warn!(lease = %self.config.name, "renewing the leader lease did not finish before the renew deadline");
                    return lost();
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renewed: Timestamp, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(secs),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn observation_restarts_only_when_the_lease_changes() {
        let t0 = Instant::now();
        let spec = held_by("other", Timestamp::UNIX_EPOCH, 10);
        let first = observe(None, &spec, t0);
        assert_eq!(first.at, t0);
        let same = observe(Some(&first), &spec, t0 + Duration::from_secs(5));
        assert_eq!(same.at, t0, "an unchanged lease keeps its first sighting");
        let renewed = held_by(
            "other",
            Timestamp::UNIX_EPOCH + SignedDuration::from_secs(1),
            10,
        );
        let later = t0 + Duration::from_secs(7);
        assert_eq!(observe(Some(&same), &renewed, later).at, later);
    }

    #[test]
    fn expiry_is_measured_on_the_local_clock_not_the_remote_renew_time() {
        let t0 = Instant::now();
        // The holder's clock is an hour behind: by its renewTime the lease looks long expired.
        let skewed_behind = held_by(
            "other",
            Timestamp::now() - SignedDuration::from_secs(3600),
            10,
        );
        let seen = observe(None, &skewed_behind, t0);
        assert!(!may_acquire(&seen, "me", Duration::from_secs(15), t0));
        assert!(!may_acquire(
            &seen,
            "me",
            Duration::from_secs(15),
            t0 + Duration::from_secs(9)
        ));
        assert!(may_acquire(
            &seen,
            "me",
            Duration::from_secs(15),
            t0 + Duration::from_secs(10)
        ));
        // An hour ahead: by its renewTime the lease looks fresh for an hour; locally it expires
        // 10 s after it stopped changing.
        let skewed_ahead = held_by(
            "other",
            Timestamp::now() + SignedDuration::from_secs(3600),
            10,
        );
        let seen = observe(None, &skewed_ahead, t0);
        assert!(may_acquire(
            &seen,
            "me",
            Duration::from_secs(15),
            t0 + Duration::from_secs(11)
        ));
    }

    #[test]
    fn free_or_own_leases_may_be_taken_at_once() {
        let t0 = Instant::now();
        let free = LeaseSpec::default();
        assert!(may_acquire(
            &observe(None, &free, t0),
            "me",
            Duration::from_secs(15),
            t0
        ));
        let released = LeaseSpec {
            holder_identity: Some(String::new()),
            ..LeaseSpec::default()
        };
        assert!(may_acquire(
            &observe(None, &released, t0),
            "me",
            Duration::from_secs(15),
            t0
        ));
        let ours = held_by("me", Timestamp::now(), 10);
        assert!(may_acquire(
            &observe(None, &ours, t0),
            "me",
            Duration::from_secs(15),
            t0
        ));
        // No duration in the lease: our own configured one applies.
        let mut no_duration = held_by("other", Timestamp::now(), 10);
        no_duration.lease_duration_seconds = None;
        let seen = observe(None, &no_duration, t0);
        assert!(!may_acquire(
            &seen,
            "me",
            Duration::from_secs(15),
            t0 + Duration::from_secs(14)
        ));
        assert!(may_acquire(
            &seen,
            "me",
            Duration::from_secs(15),
            t0 + Duration::from_secs(15)
        ));
    }

    #[test]
    fn the_holder_stops_a_renew_interval_before_expiry() {
        let config = LeaderElectionConfig {
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            ..LeaderElectionConfig::default()
        };
        assert_eq!(renew_budget(&config), Duration::from_secs(10));
        let odd = LeaderElectionConfig {
            lease_duration: Duration::from_secs(4),
            renew_interval: Duration::from_secs(4),
            ..LeaderElectionConfig::default()
        };
        assert!(renew_budget(&odd) < odd.lease_duration);
    }

    /// An "API server" that accepts connections and never answers.
    async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_hanging_renewal_ends_leadership_at_the_deadline() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (addr, server) = black_hole().await;
        let client =
            Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap())).unwrap();
        let config = LeaderElectionConfig {
            namespace: "default".into(),
            name: "lease".into(),
            lease_duration: Duration::from_secs(3),
            renew_interval: Duration::from_secs(1),
        };
        let elector = LeaderElector::new(client, config, "me".into());
        let renewed_at = Instant::now();
        // The client has no read timeout: without a bound on the call itself, hold() would
        // wait for the answer forever while the lease expires under it.
        let lost = tokio::time::timeout(Duration::from_secs(30), elector.hold(renewed_at))
            .await
            .expect("hold() must give up at the renew deadline, not wait for the answer");
        assert!(matches!(lost, LeaderError::Lost(_)));
        assert!(
            renewed_at.elapsed() >= Duration::from_secs(2),
            "not before the deadline"
        );
        server.abort();
    }
}
