#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `examples/values-production.yaml` installs for real on the 1.20 apiserver: two replicas with
//! leader election, a PodDisruptionBudget (policy/v1beta1 there), the NetworkPolicy, the
//! dashboard ConfigMap, a ServiceMonitor and a PodMonitor.
//!
//! The prometheus-operator CRDs are not part of this repository, so the test registers
//! stand-ins for `ServiceMonitor` and `PodMonitor` (same group, version and names, schema left
//! open): the install proves the chart renders and applies, not that prometheus-operator would
//! accept every field of those two objects.

use std::time::Duration;

use e2e::{Helm, chart_dir, eventually, repo_root};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::json;

const RELEASE: &str = "seshn-segment";

fn stand_in_crd(kind: &str, plural: &str) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.monitoring.coreos.com")},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": kind, "plural": plural, "listKind": format!("{kind}List"),
                      "singular": kind.to_lowercase()},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true
                }}
            }]
        }
    }))
    .unwrap()
}

async fn install_stand_in_monitoring_crds(admin: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for (kind, plural) in [
        ("ServiceMonitor", "servicemonitors"),
        ("PodMonitor", "podmonitors"),
    ] {
        let crd = stand_in_crd(kind, plural);
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("e2e"), &Patch::Apply(&crd))
            .await
            .unwrap();
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind),
            plural,
        );
        let api: Api<DynamicObject> = Api::all_with(admin.clone(), &ar);
        eventually(
            &format!("{kind} to be served"),
            Duration::from_secs(120),
            || {
                let api = api.clone();
                async move { api.list(&ListParams::default()).await.ok().map(|_| ()) }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_values_install_on_a_real_apiserver() {
    let tb = testbed::testbed();
    let admin = tb.client().await;
    let ns = tb.namespace().await;
    install_stand_in_monitoring_crds(&admin).await;

    let helm = Helm::with_kubeconfig(tb.kubeconfig_path());
    let chart = chart_dir().display().to_string();
    let values = repo_root()
        .join("examples/values-production.yaml")
        .display()
        .to_string();
    let _ = helm
        .run([
            "install",
            RELEASE,
            &chart,
            "--namespace",
            &ns,
            "--timeout",
            "2m",
            "-f",
            &values,
        ])
        .expect_ok("helm install -f examples/values-production.yaml");

    let deploy = Api::<Deployment>::namespaced(admin.clone(), &ns)
        .get(RELEASE)
        .await
        .unwrap();
    let spec = deploy.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.strategy.unwrap().type_.as_deref(),
        Some("RollingUpdate")
    );
    let pdb_v1beta1 = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget"),
        "poddisruptionbudgets",
    );
    Api::<DynamicObject>::namespaced_with(admin.clone(), &ns, &pdb_v1beta1)
        .get(RELEASE)
        .await
        .expect("PDB served as policy/v1beta1 on 1.20");
    Api::<NetworkPolicy>::namespaced(admin.clone(), &ns)
        .get(RELEASE)
        .await
        .expect("NetworkPolicy");
    let cm = Api::<ConfigMap>::namespaced(admin.clone(), &ns)
        .get(&format!("{RELEASE}-dashboard"))
        .await
        .expect("dashboard ConfigMap");
    assert_eq!(
        cm.metadata
            .labels
            .unwrap()
            .get("grafana_dashboard")
            .map(String::as_str),
        Some("1")
    );
    for (kind, plural, name) in [
        ("ServiceMonitor", "servicemonitors", RELEASE.to_owned()),
        ("PodMonitor", "podmonitors", format!("{RELEASE}-forwarders")),
    ] {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind),
            plural,
        );
        Api::<DynamicObject>::namespaced_with(admin.clone(), &ns, &ar)
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
    }
    let _ = helm
        .run(["uninstall", RELEASE, "--namespace", &ns, "--timeout", "2m"])
        .expect_ok("helm uninstall");
}
