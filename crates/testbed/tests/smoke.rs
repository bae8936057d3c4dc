#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Proves the test bed is a real Kubernetes control plane: CRDs via server-side apply, watches,
//! the status subresource, finalizers and ownerReference garbage collection all behave as on a
//! real cluster.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, CustomResource, CustomResourceExt as _, Resource as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use testbed::{INSTALL_HINT, Testbed, TestbedError, testbed};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "smoke.testbed.seshn.net",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
struct WidgetSpec {
    size: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
struct WidgetStatus {
    seen: bool,
}

const FINALIZER: &str = "smoke.testbed.seshn.net/cleanup";
const PATIENCE: Duration = Duration::from_secs(60);

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_real_apiserver_runs_crds_watches_status_finalizers_and_gc() {
    let tb = testbed();
    let client = tb.client().await;
    let ns = tb.namespace().await;

    // CRD by server-side apply, then Established.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = Widget::crd();
    let crd_name = crd.metadata.name.clone().unwrap();
    crds.patch(
        &crd_name,
        &PatchParams::apply("testbed-smoke").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    eventually("the CRD to be Established", || async {
        let crd = crds.get(&crd_name).await.unwrap();
        crd.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    })
    .await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns);
    eventually("the new type to be served", || async {
        widgets.list(&ListParams::default()).await.is_ok()
    })
    .await;

    // A watcher sees the create.
    let mut events = watcher(widgets.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut w = Widget::new("w1", WidgetSpec { size: 3 });
    w.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let created = widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let seen = tokio::time::timeout(PATIENCE, async {
        while let Some(obj) = events.try_next().await.unwrap() {
            if obj.metadata.name.as_deref() == Some("w1") {
                return obj;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("the watcher saw the new widget");
    assert_eq!(seen.spec.size, 3);

    // The status subresource: written separately, spec generation unchanged.
    let status = serde_json::json!({"status": {"seen": true}});
    let patched = widgets
        .patch_status("w1", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert!(patched.status.as_ref().unwrap().seen);
    assert_eq!(patched.metadata.generation, Some(1));

    // An owned child is garbage-collected once its owner is gone.
    let owner_ref = created.controller_owner_ref(&()).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("w1-child".into()),
            owner_references: Some(vec![owner_ref]),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    cms.create(&PostParams::default(), &cm).await.unwrap();

    // Delete: the finalizer holds the object until removed.
    widgets
        .delete("w1", &DeleteParams::default())
        .await
        .unwrap();
    let held = widgets.get("w1").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "finalizer must hold the object"
    );
    let no_finalizers = serde_json::json!({"metadata": {"finalizers": null}});
    widgets
        .patch("w1", &PatchParams::default(), &Patch::Merge(&no_finalizers))
        .await
        .unwrap();
    eventually("the widget to be gone", || async {
        widgets.get_opt("w1").await.unwrap().is_none()
    })
    .await;
    eventually("the owned ConfigMap to be garbage-collected", || async {
        cms.get_opt("w1-child").await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn rbac_is_enforced_for_unknown_tokens() {
    let tb = testbed();
    let stranger = tb.client_with_token("not-a-valid-token").await;
    let err = Api::<ConfigMap>::namespaced(stranger, "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 401),
        "expected 401, got {err}"
    );
}

#[test]
fn missing_binaries_fail_loudly_with_the_install_command() {
    let err = Testbed::start_with(std::path::Path::new("/nonexistent/k8s-bin")).unwrap_err();
    assert!(matches!(err, TestbedError::Missing { .. }), "{err}");
    assert!(err.to_string().contains(INSTALL_HINT), "{err}");
}
