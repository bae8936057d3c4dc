//! Validate stage (pure): checks what the CRD schema cannot (or what a 1.20 apiserver does not
//! enforce) and derives the values the later stages need. No client, no I/O.

use bridge_api::{SeshnSegmentBridge, SpoolStorage};
use kube::ResourceExt;

use crate::config::Config;
use crate::error::ValidateError;

/// Suffix of the forwarder workload, Service and Ingress names.
pub const FORWARDER_SUFFIX: &str = "-forwarder";
/// Suffix of the signing Secret name.
pub const SIGNING_SECRET_SUFFIX: &str = "-webhook-signing";
/// Key of the signing secret inside the signing Secret.
pub const SIGNING_SECRET_KEY: &str = "secret";
/// Default spool volume size (1 GiB).
pub const DEFAULT_SPOOL_BYTES: u64 = 1 << 30;

/// The forwarder workload kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Stateless or emptyDir spool.
    Deployment,
    /// PVC-backed spool.
    StatefulSet,
}

/// What the spec asks for, checked and normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// Bridge name.
    pub name: String,
    /// Bridge namespace.
    pub namespace: String,
    /// Bridge uid (the token in the webhook URL and the forwarder's `BRIDGE_ID`).
    pub uid: String,
    /// URL to register at Seshn.
    pub webhook_url: String,
    /// Events to subscribe to: sorted, without duplicates (empty = all).
    pub events: Vec<String>,
    /// Forwarder image.
    pub image: String,
    /// Seshn API base URL.
    pub seshn_api_url: String,
    /// Workload kind.
    pub workload: WorkloadKind,
    /// Spool volume size in bytes.
    pub spool_bytes: u64,
    /// Name of the forwarder workload, Service and Ingress.
    pub forwarder_name: String,
    /// Name of the signing Secret.
    pub signing_secret_name: String,
}

/// Parses a Kubernetes quantity into bytes (integers with an optional binary or decimal
/// suffix; enough for volume sizes).
pub fn parse_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn is_dns_label_start(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
}

/// The webhook URL for a base URL (`https://host[/prefix]`) and a bridge uid.
pub fn webhook_url(base: &str, uid: &str) -> String {
    format!("{}/hooks/{uid}", base.trim_end_matches('/'))
}

/// Checks the bridge and derives the normalised values.
pub fn validate(bridge: &SeshnSegmentBridge, config: &Config) -> Result<Validated, ValidateError> {
    let invalid = |m: String| ValidateError(m);
    let spec = &bridge.spec;
    let name = bridge.name_any();
    let namespace = bridge
        .namespace()
        .ok_or_else(|| invalid("the bridge has no namespace".into()))?;
    let uid = bridge
        .uid()
        .ok_or_else(|| invalid("the bridge has no uid yet".into()))?;

    let workload = match spec.delivery.spool.storage {
        SpoolStorage::PersistentVolumeClaim
            if spec.delivery.mode == bridge_api::DeliveryMode::Spooled =>
        {
            WorkloadKind::StatefulSet
        }
        _ => WorkloadKind::Deployment,
    };
    // Children are named `<name>-forwarder`; a Service name is a DNS-1035 label (<= 63, starts
    // with a letter) and StatefulSet pods need room for the ordinal and revision hash label.
    let max_name = match workload {
        WorkloadKind::Deployment => 63 - FORWARDER_SUFFIX.len(),
        WorkloadKind::StatefulSet => 52 - FORWARDER_SUFFIX.len(),
    };
    if name.len() > max_name || !is_dns_label_start(&name) {
        return Err(invalid(format!(
            "metadata.name must start with a letter and have at most {max_name} characters \
             (the forwarder's Service is named <name>{FORWARDER_SUFFIX})"
        )));
    }

    let base = match (&spec.exposure.public_url, &spec.exposure.ingress) {
        (Some(url), None) => {
            let rest = url
                .strip_prefix("https://")
                .ok_or_else(|| invalid("exposure.publicUrl must start with https://".into()))?;
            if rest.is_empty()
                || rest.starts_with('/')
                || rest.contains(|c: char| c.is_whitespace() || c == '?' || c == '#')
            {
                return Err(invalid(
                    "exposure.publicUrl must be https://host[/path] without query or fragment"
                        .into(),
                ));
            }
            url.clone()
        }
        (None, Some(ingress)) => {
            if ingress.host.is_empty() || ingress.host.contains(['/', ':', ' ']) {
                return Err(invalid("exposure.ingress.host must be a host name".into()));
            }
            if !ingress.path.starts_with('/') {
                return Err(invalid("exposure.ingress.path must start with /".into()));
            }
            format!("https://{}{}", ingress.host, ingress.path)
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "exposure: set either publicUrl or ingress, not both".into(),
            ));
        }
        (None, None) => {
            return Err(invalid("exposure: set publicUrl or ingress".into()));
        }
    };

    let mut events = spec.seshn.events.clone();
    if let Some(bad) = events
        .iter()
        .find(|e| e.is_empty() || e.contains(|c: char| c.is_whitespace() || c == ','))
    {
        return Err(invalid(format!(
            "seshn.events: {bad:?} is not an event name"
        )));
    }
    events.sort();
    events.dedup();

    let image = spec
        .forwarder
        .image
        .clone()
        .unwrap_or_else(|| config.forwarder_image.clone());
    if image.trim().is_empty() {
        return Err(invalid(
            "no forwarder image: set spec.forwarder.image or the operator's --forwarder-image"
                .into(),
        ));
    }
    if !(0..=50).contains(&spec.forwarder.replicas) {
        return Err(invalid(
            "forwarder.replicas must be between 0 and 50".into(),
        ));
    }

    let spool_bytes = match &spec.delivery.spool.size {
        Some(q) => parse_bytes(&q.0).filter(|b| *b >= 1 << 20).ok_or_else(|| {
            invalid(format!(
                "delivery.spool.size {:?} must be a whole quantity of at least 1Mi (e.g. 2Gi)",
                q.0
            ))
        })?,
        None => DEFAULT_SPOOL_BYTES,
    };

    let seshn_api_url = spec
        .seshn
        .api_url
        .clone()
        .unwrap_or_else(|| config.default_seshn_api_url.clone());
    if !(seshn_api_url.starts_with("https://") || seshn_api_url.starts_with("http://")) {
        return Err(invalid("seshn.apiUrl must be an http(s) URL".into()));
    }
    if !spec.segment.endpoint.starts_with("https://")
        && !spec.segment.endpoint.starts_with("http://")
    {
        return Err(invalid("segment.endpoint must be an http(s) URL".into()));
    }

    Ok(Validated {
        forwarder_name: format!("{name}{FORWARDER_SUFFIX}"),
        signing_secret_name: format!("{name}{SIGNING_SECRET_SUFFIX}"),
        webhook_url: webhook_url(&base, &uid),
        name,
        namespace,
        uid,
        events,
        image,
        seshn_api_url,
        workload,
        spool_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::bridge;
    use bridge_api::IngressSpec;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn config() -> Config {
        Config::new("ghcr.io/x/forwarder:1")
    }

    #[test]
    fn derives_url_events_image() {
        let mut b = bridge();
        b.spec.seshn.events = vec!["b.x".into(), "a.y".into(), "b.x".into()];
        let v = validate(&b, &config()).unwrap();
        assert_eq!(
            v.webhook_url,
            "https://hooks.example.com/acme/hooks/0000-uid"
        );
        assert_eq!(v.events, vec!["a.y".to_string(), "b.x".to_string()]);
        assert_eq!(v.image, "ghcr.io/x/forwarder:1");
        assert_eq!(v.workload, WorkloadKind::Deployment);
        assert_eq!(v.forwarder_name, "acme-forwarder");
        assert_eq!(v.signing_secret_name, "acme-webhook-signing");
        assert_eq!(v.seshn_api_url, "https://api.seshn.net");
        assert_eq!(v.spool_bytes, DEFAULT_SPOOL_BYTES);
    }

    #[test]
    fn ingress_url_and_pvc_workload() {
        let mut b = bridge();
        b.spec.exposure.public_url = None;
        b.spec.exposure.ingress = Some(IngressSpec {
            class_name: None,
            host: "hooks.example.com".into(),
            path: "/".into(),
            tls_secret_name: None,
            annotations: std::collections::BTreeMap::default(),
        });
        b.spec.delivery.spool.storage = SpoolStorage::PersistentVolumeClaim;
        b.spec.delivery.spool.size = Some(Quantity("2Gi".into()));
        b.spec.forwarder.image = Some("own:2".into());
        let v = validate(&b, &config()).unwrap();
        assert_eq!(v.webhook_url, "https://hooks.example.com/hooks/0000-uid");
        assert_eq!(v.workload, WorkloadKind::StatefulSet);
        assert_eq!(v.spool_bytes, 2 << 30);
        assert_eq!(v.image, "own:2");
    }

    #[test]
    fn rejects_bad_specs() {
        type Mutation = Box<dyn Fn(&mut SeshnSegmentBridge)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "both",
                Box::new(|b| {
                    b.spec.exposure.ingress = Some(IngressSpec {
                        class_name: None,
                        host: "h".into(),
                        path: "/".into(),
                        tls_secret_name: None,
                        annotations: std::collections::BTreeMap::default(),
                    });
                }),
            ),
            ("neither", Box::new(|b| b.spec.exposure.public_url = None)),
            (
                "http",
                Box::new(|b| b.spec.exposure.public_url = Some("http://x.example".into())),
            ),
            (
                "query",
                Box::new(|b| b.spec.exposure.public_url = Some("https://x.example/?a".into())),
            ),
            (
                "event",
                Box::new(|b| b.spec.seshn.events = vec!["a b".into()]),
            ),
            (
                "size",
                Box::new(|b| b.spec.delivery.spool.size = Some(Quantity("1.5Gi".into()))),
            ),
            ("replicas", Box::new(|b| b.spec.forwarder.replicas = 51)),
            ("name", Box::new(|b| b.metadata.name = Some("a".repeat(60)))),
            (
                "image",
                Box::new(|b| b.spec.forwarder.image = Some(" ".into())),
            ),
        ];
        for (label, mutate) in cases {
            let mut b = bridge();
            mutate(&mut b);
            assert!(
                validate(&b, &config()).is_err(),
                "{label} should be rejected"
            );
        }
    }

    #[test]
    fn parses_quantities() {
        assert_eq!(parse_bytes("1Gi"), Some(1 << 30));
        assert_eq!(parse_bytes("500M"), Some(500_000_000));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("1.5Gi"), None);
        assert_eq!(parse_bytes("Gi"), None);
        assert_eq!(parse_bytes("1Xi"), None);
    }
}
