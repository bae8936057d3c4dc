//! The seshn-segment operator: reconciles `SeshnSegmentBridge` objects into forwarder
//! workloads and registered Seshn webhooks.
//!
//! One module per stage (Stackable-style): [`resolve`] (referenced Secrets), [`validate`]
//! (pure), [`build`] (pure), [`apply`] (server-side apply), [`webhook`] (Seshn sync),
//! [`status`], [`cleanup`] (finalizer). [`controller`] wires them; [`run`] is the entry point
//! the binary and the tests use.

pub mod apply;
pub mod build;
pub mod cleanup;
pub mod config;
pub mod controller;
pub mod duration;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod resolve;
pub mod status;
pub mod validate;
pub mod webhook;

#[cfg(test)]
mod fixtures;

pub use config::{Config, LeaderElectionConfig};
pub use controller::{RunError, run};
pub use metrics::Metrics;

use bridge_api::SeshnSegmentBridge;
use kube::CustomResourceExt;

/// Path of the generated CRD, relative to the repository root.
pub const CRD_PATH: &str = "crds/seshnsegmentbridges.yaml";

/// The CRD as YAML, exactly as checked in under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    let crd = SeshnSegmentBridge::crd();
    let body = serde_yaml_ng::to_string(&crd)?;
    Ok(format!(
        "# Generated from crates/bridge-api by `seshn-segment-operator crd`; do not edit.\n{body}"
    ))
}

#[cfg(test)]
mod crd_tests {
    /// Fails when the checked-in CRD differs from the Rust types.
    #[test]
    fn checked_in_crd_matches_the_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(super::CRD_PATH);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        let generated = super::crd_yaml().expect("rendering the CRD");
        assert!(
            on_disk == generated,
            "{} is out of date with crates/bridge-api; regenerate it with\n  \
             cargo run -p operator --bin seshn-segment-operator -- crd > {}\n\
             (then scripts/sync-chart-crds.sh to update the chart's copy)",
            super::CRD_PATH,
            super::CRD_PATH
        );
    }
}

#[cfg(test)]
mod example_tests {
    use bridge_api::SeshnSegmentBridge;

    /// `examples/bridge.yaml` parses into the Rust type and passes the validate stage.
    #[test]
    fn example_bridge_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/bridge.yaml");
        let text = std::fs::read_to_string(&path).expect("examples/bridge.yaml");
        let mut bridge: SeshnSegmentBridge =
            serde_yaml_ng::from_str(&text).expect("parsing the example");
        bridge.metadata.namespace = Some("acme".into());
        bridge.metadata.uid = Some("uid-1".into());
        let v = crate::validate::validate(&bridge, &crate::Config::new("img:1")).expect("valid");
        assert_eq!(v.webhook_url, "https://hooks.example.com/hooks/uid-1");
        assert_eq!(bridge.spec.seshn.events.len(), 8);
    }
}
