//! Runtime configuration of the operator (filled from flags by the binary, directly by tests).

use std::time::Duration;

/// Field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "seshn-segment-operator";
/// Finalizer guarding the Seshn webhook (domain-qualified, like cert-manager's).
pub const FINALIZER: &str = "integrations.seshn.net/webhook-cleanup";
/// `app.kubernetes.io/managed-by` value on every child.
pub const MANAGED_BY: &str = "seshn-segment-operator";

/// Default of `--concurrency` (and of the chart's `operator.concurrency`): bridges reconciled at
/// once per watched scope. Each pass spends most of its time waiting on the API server or Seshn,
/// and the global Seshn rate limiter, not this, bounds the calls to Seshn.
pub const DEFAULT_CONCURRENCY: u16 = 8;

/// Errors in the configuration given on the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--watch-namespaces` has an empty entry (e.g. `a,,b` or a trailing comma).
    #[error(
        "--watch-namespaces has an empty entry in {0:?}; list namespaces separated by single commas, or leave it empty to watch all namespaces"
    )]
    EmptyNamespace(String),
}

/// The namespaces of `--watch-namespaces` (already split at commas): trimmed and deduplicated
/// in their order (a repeated name would start a second controller for the same namespace).
/// A single empty value (the default) means every namespace (`[]`); an empty entry among
/// names is an error rather than silently dropped, since it usually is a typo.
pub fn watch_namespaces(raw: &[String]) -> Result<Vec<String>, ConfigError> {
    if raw.iter().all(|n| n.trim().is_empty()) && raw.len() <= 1 {
        return Ok(Vec::new());
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for name in raw {
        let name = name.trim();
        if name.is_empty() {
            return Err(ConfigError::EmptyNamespace(raw.join(",")));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

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
            concurrency: DEFAULT_CONCURRENCY,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn watch_namespaces_are_trimmed_and_deduplicated() {
        assert_eq!(watch_namespaces(&raw(&[""])), Ok(vec![]));
        assert_eq!(watch_namespaces(&raw(&[])), Ok(vec![]));
        assert_eq!(watch_namespaces(&raw(&["  "])), Ok(vec![]));
        assert_eq!(
            watch_namespaces(&raw(&["b", " a", "b ", "a", "c"])),
            Ok(raw(&["b", "a", "c"]))
        );
    }

    #[test]
    fn empty_namespace_entries_are_rejected() {
        for bad in [&["a", "", "b"][..], &["a", " "], &["", ""], &["", "a"]] {
            let err = watch_namespaces(&raw(bad)).unwrap_err();
            assert!(err.to_string().contains("empty entry"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn defaults_match_the_binary() {
        assert_eq!(Config::new("img").concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(DEFAULT_CONCURRENCY, 8);
    }
}
