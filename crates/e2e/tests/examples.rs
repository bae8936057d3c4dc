#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The example bridge variants (`examples/eu-endpoint.yaml`, `pvc-spool.yaml`, `ingress.yaml`)
//! pass the operator's validate stage and build into what their comments promise. (The
//! apiserver's view of them is checked in `install_cluster_mode.rs`.)

use bridge_api::SeshnSegmentBridge;
use e2e::repo_root;
use operator::build::{Children, Workload, build};
use operator::validate::validate;

fn load(file: &str) -> (SeshnSegmentBridge, Children, String) {
    let text = std::fs::read_to_string(repo_root().join("examples").join(file)).unwrap();
    let mut bridge: SeshnSegmentBridge =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("examples/{file}: {e}"));
    bridge.metadata.namespace = Some("acme".into());
    bridge.metadata.uid = Some("uid-1".into());
    let v = validate(&bridge, &operator::Config::new("img:1"))
        .unwrap_or_else(|e| panic!("examples/{file} fails validation: {e}"));
    let url = v.webhook_url.clone();
    let children = build(&bridge, &v, "checksum");
    (bridge, children, url)
}

fn forwarder_env(children: &Children) -> Vec<(String, String)> {
    let template = match &children.workload {
        Workload::Deployment(d) => d.spec.as_ref().unwrap().template.clone(),
        Workload::StatefulSet(s) => s.spec.as_ref().unwrap().template.clone(),
    };
    template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect()
}

#[test]
fn eu_endpoint_example_sends_to_segments_eu_endpoint() {
    let (bridge, children, url) = load("eu-endpoint.yaml");
    assert_eq!(url, "https://hooks.example.com/acme-eu/hooks/uid-1");
    let env = forwarder_env(&children);
    assert!(
        env.contains(&(
            "SEGMENT_ENDPOINT".into(),
            "https://events.eu1.segmentapis.com".into()
        )),
        "{env:?}"
    );
    assert!(
        env.contains(&("MAPPING_PROFILE".into(), "spec".into())),
        "{env:?}"
    );
    assert!(!bridge.spec.seshn.events.is_empty());
    assert!(matches!(children.workload, Workload::Deployment(_)));
    assert!(children.ingress.is_none());
}

#[test]
fn pvc_spool_example_runs_a_statefulset_with_claims() {
    let (_, children, _) = load("pvc-spool.yaml");
    let Workload::StatefulSet(sts) = &children.workload else {
        panic!("a PVC spool must run as a StatefulSet");
    };
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let claims = spec.volume_claim_templates.as_ref().unwrap();
    assert_eq!(claims.len(), 1);
    let storage = &claims[0]
        .spec
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap()["storage"];
    // 5Gi, whatever unit the operator writes it in.
    assert!(
        storage.0 == "5Gi" || storage.0 == (5u64 << 30).to_string(),
        "claim size {storage:?}"
    );
}

#[test]
fn ingress_example_creates_an_ingress_with_tls() {
    let (_, children, url) = load("ingress.yaml");
    assert_eq!(url, "https://hooks.example.com/acme/hooks/uid-1");
    let ingress = children.ingress.expect("an Ingress");
    let spec = ingress.spec.unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let rule = &spec.rules.unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("hooks.example.com"));
    let tls = spec.tls.unwrap();
    assert_eq!(tls[0].secret_name.as_deref(), Some("hooks-example-com-tls"));
    let annotations = ingress.metadata.annotations.unwrap();
    assert_eq!(
        annotations
            .get("cert-manager.io/cluster-issuer")
            .map(String::as_str),
        Some("letsencrypt")
    );
}
