//! Runtime configuration of the operator (filled from flags by the binary, directly by tests).

use std::time::Duration;

/// Field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "seshn-segment-operator";
/// Finalizer guarding the Seshn webhook (domain-qualified, like cert-manager's).
pub const FINALIZER: &str = "integrations.seshn.net/webhook-cleanup";
/// `app.kubernetes.io/managed-by` value on every child.
pub const MANAGED_BY: &str = "seshn-segment-operator";

/// Everything `run` needs besides a Kubernetes client.
#[derive(Clone, Debug)]
pub struct Config {
    /// Forwarder image used when a bridge does not set `spec.forwarder.image`.
    pub forwarder_image: String,
    /// Seshn API base URL used when a bridge does not set `spec.seshn.apiUrl`.
    pub default_seshn_api_url: String,
    /// Period of the drift check at Seshn for a healthy bridge (jittered by up to +10%).
    pub resync_interval: Duration,
    /// Reconciles running at once (per watched scope).
    pub concurrency: u16,
    /// How long a deleted bridge keeps retrying to delete its webhook when the credentials are
    /// gone, before it gives up with a `WebhookOrphaned` event.
    pub cleanup_deadline: Duration,
    /// Namespaces to watch; empty = all namespaces.
    pub watch_namespaces: Vec<String>,
    /// First delay of the per-object exponential backoff after a transient error.
    pub backoff_min: Duration,
    /// Largest delay of the per-object exponential backoff.
    pub backoff_max: Duration,
    /// A bridge whose webhook was verified at Seshn less than this long ago (with the same
    /// id, URL and events) is not fetched again: the passes our own writes trigger right after
    /// a change would otherwise each cost a Seshn call. Drift made at Seshn is still found by
    /// the next resync.
    pub observe_interval: Duration,
    /// Timeout of each Seshn API request.
    pub seshn_timeout: Duration,
    /// Global Seshn request rate (requests per second, shared by every bridge).
    pub seshn_rate_per_second: u32,
    /// Burst of the global Seshn rate limiter.
    pub seshn_rate_burst: u32,
    /// Leader election; `None` runs without it (single replica).
    pub leader_election: Option<LeaderElectionConfig>,
    /// Name of this instance in Events and the Lease (pod name in a cluster).
    pub instance: String,
}

/// Lease-based leader election settings.
#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (well below `lease_duration`).
    pub renew_interval: Duration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        Self {
            namespace: "default".to_owned(),
            name: "seshn-segment-operator".to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Defaults matching the binary's flags, with the given forwarder image.
    pub fn new(forwarder_image: impl Into<String>) -> Self {
        Self {
            forwarder_image: forwarder_image.into(),
            default_seshn_api_url: bridge_api::DEFAULT_SESHN_API_URL.to_owned(),
            resync_interval: Duration::from_secs(600),
            concurrency: 16,
            cleanup_deadline: Duration::from_secs(3600),
            watch_namespaces: Vec::new(),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            observe_interval: Duration::from_secs(30),
            seshn_timeout: Duration::from_secs(10),
            seshn_rate_per_second: 20,
            seshn_rate_burst: 40,
            leader_election: None,
            instance: "seshn-segment-operator".to_owned(),
        }
    }
}
