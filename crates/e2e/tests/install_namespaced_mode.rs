#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `helm install` in namespace-scoped mode (`watchNamespaces`) into the real kube-apiserver: the
//! operator's ServiceAccount can work in the watched namespaces and nowhere else (in particular it
//! cannot read a Secret outside them). With `crds.keep=false`, `helm uninstall` removes the CRD.
//!
//! The CRD is cluster-scoped, so installs must not share a control plane: nextest runs every test
//! in its own process, and the test bed starts one control plane per process, so each test gets
//! its own apiserver (one test per file keeps that true under plain `cargo test` as well).

use std::time::Duration;

use e2e::{
    CRD_NAME, Helm, bridge, bridge_resource, chart_dir, eventually, is_forbidden,
    service_account_token, stand_in_deployment,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const RELEASE: &str = "ssb";

fn secret(name: &str) -> Secret {
    serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"k": "v"}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_mode_confines_the_operator_to_its_namespaces() {
    let tb = testbed::testbed();
    let admin = tb.client().await;
    let release_ns = tb.namespace().await;
    let tenant_a = tb.namespace().await;
    let tenant_b = tb.namespace().await;
    let outside = tb.namespace().await;
    let helm = Helm::with_kubeconfig(tb.kubeconfig_path());
    let chart = chart_dir().display().to_string();
    let watch = format!("watchNamespaces={{{tenant_a},{tenant_b}}}");

    let out = helm
        .run([
            "install",
            RELEASE,
            &chart,
            "--namespace",
            &release_ns,
            "--timeout",
            "2m",
            "--set",
            &watch,
            "--set",
            "crds.keep=false",
        ])
        .expect_ok("helm install (namespaced mode)");
    assert!(
        out.stdout.contains("namespace-scoped"),
        "NOTES: {}",
        out.stdout
    );

    let bridges_admin: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), &tenant_a, &bridge_resource());
    eventually("bridges to be creatable", Duration::from_secs(120), || {
        let api = bridges_admin.clone();
        async move {
            api.create(&PostParams::default(), &bridge("acme"))
                .await
                .ok()
        }
    })
    .await;
    for ns in [&tenant_a, &outside] {
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
        secrets
            .create(&PostParams::default(), &secret("credentials"))
            .await
            .unwrap();
    }

    let sa_name = format!("{RELEASE}-seshn-segment");
    let token = service_account_token(&admin, &release_ns, &sa_name).await;
    let op = tb.client_with_token(&token).await;
    e2e::wait_until_authorized(&op, Some(&tenant_a), None).await;

    // Inside the watched namespaces: the operator's job.
    let bridges_a: Api<DynamicObject> =
        Api::namespaced_with(op.clone(), &tenant_a, &bridge_resource());
    let listed = bridges_a.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    bridges_a
        .patch_status(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 1}})),
        )
        .await
        .expect("status in a watched namespace");
    let bridges_b: Api<DynamicObject> =
        Api::namespaced_with(op.clone(), &tenant_b, &bridge_resource());
    bridges_b.list(&ListParams::default()).await.unwrap();
    let secrets_a: Api<Secret> = Api::namespaced(op.clone(), &tenant_a);
    secrets_a
        .get("credentials")
        .await
        .expect("Secret in a watched namespace");
    secrets_a
        .create(&PostParams::default(), &secret("signing"))
        .await
        .unwrap();
    let deploys_b: Api<Deployment> = Api::namespaced(op.clone(), &tenant_b);
    deploys_b
        .create(&PostParams::default(), &stand_in_deployment("fwd"))
        .await
        .expect("Deployment in a watched namespace");

    // Outside them: nothing.
    let secrets_out: Api<Secret> = Api::namespaced(op.clone(), &outside);
    let err = secrets_out.get("credentials").await.unwrap_err();
    assert!(
        is_forbidden(&err),
        "Secret outside the watched namespaces: {err}"
    );
    let err = secrets_out.list(&ListParams::default()).await.unwrap_err();
    assert!(is_forbidden(&err), "listing Secrets outside: {err}");
    let secrets_all: Api<Secret> = Api::all(op.clone());
    let err = secrets_all.list(&ListParams::default()).await.unwrap_err();
    assert!(is_forbidden(&err), "cluster-wide Secret list: {err}");
    let bridges_all: Api<DynamicObject> = Api::all_with(op.clone(), &bridge_resource());
    let err = bridges_all.list(&ListParams::default()).await.unwrap_err();
    assert!(is_forbidden(&err), "cluster-wide bridge list: {err}");
    let bridges_out: Api<DynamicObject> =
        Api::namespaced_with(op.clone(), &outside, &bridge_resource());
    let err = bridges_out.list(&ListParams::default()).await.unwrap_err();
    assert!(is_forbidden(&err), "bridges outside: {err}");
    let deploys_out: Api<Deployment> = Api::namespaced(op.clone(), &outside);
    let err = deploys_out
        .create(&PostParams::default(), &stand_in_deployment("fwd"))
        .await
        .unwrap_err();
    assert!(is_forbidden(&err), "Deployment outside: {err}");
    // Leader election is off: no Lease rights anywhere.
    let leases: Api<Lease> = Api::namespaced(op.clone(), &release_ns);
    let err = leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(is_forbidden(&err), "Lease without leader election: {err}");

    // helm upgrade changes the operator in place (and re-applies the CRD from templates/).
    let _ = helm
        .run([
            "upgrade",
            RELEASE,
            &chart,
            "--namespace",
            &release_ns,
            "--timeout",
            "2m",
            "--reuse-values",
            "--set",
            "operator.concurrency=3",
        ])
        .expect_ok("helm upgrade");
    let deploy = Api::<Deployment>::namespaced(admin.clone(), &release_ns)
        .get(&sa_name)
        .await
        .unwrap();
    let env = deploy.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let concurrency = env.iter().find(|e| e.name == "CONCURRENCY").unwrap();
    assert_eq!(concurrency.value.as_deref(), Some("3"));
    let watched = env.iter().find(|e| e.name == "WATCH_NAMESPACES").unwrap();
    assert_eq!(
        watched.value.as_deref(),
        Some(format!("{tenant_a},{tenant_b}").as_str()),
        "--reuse-values keeps the watched namespaces"
    );

    // crds.keep=false: uninstall removes the CRD (and with it the bridges).
    let _ = helm
        .run([
            "uninstall",
            RELEASE,
            "--namespace",
            &release_ns,
            "--timeout",
            "2m",
        ])
        .expect_ok("helm uninstall");
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    eventually("the CRD to be deleted", Duration::from_secs(120), || {
        let crds = crds.clone();
        async move {
            let crd = crds.get_opt(CRD_NAME).await.ok()?;
            crd.is_none_or(|c| c.metadata.deletion_timestamp.is_some())
                .then_some(())
        }
    })
    .await;
}
