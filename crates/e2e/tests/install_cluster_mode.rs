#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `helm install` of the chart (cluster mode, leader election, PodDisruptionBudget) into the real
//! kube-apiserver, then the operator's ServiceAccount token is used as a client: it can do the
//! operator's job and nothing more. `helm uninstall` keeps the CRD (crds.keep).
//!
//! The CRD is cluster-scoped, so installs must not share a control plane: nextest runs every test
//! in its own process, and the test bed starts one control plane per process, so each test gets
//! its own apiserver (one test per file keeps that true under plain `cargo test` as well).

use std::time::Duration;

use e2e::{
    CRD_NAME, DEFAULT_LEASE_NAME, Helm, bridge, bridge_resource, chart_dir, eventually,
    is_forbidden, service_account_token, stand_in_deployment,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Pod, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use serde_json::json;

const RELEASE: &str = "seshn-segment";

fn secret(name: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"secret": "s3cr3t"}
    }))
    .unwrap()
}

async fn wait_for_crd(admin: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    eventually(
        "the CRD to be Established",
        Duration::from_secs(120),
        || {
            let crds = crds.clone();
            async move {
                let crd = crds.get_opt(CRD_NAME).await.ok()??;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        },
    )
    .await;
    // Discovery can lag the Established condition.
    let bridges: Api<DynamicObject> = Api::all_with(admin.clone(), &bridge_resource());
    eventually("bridges to be listable", Duration::from_secs(120), || {
        let bridges = bridges.clone();
        async move { bridges.list(&ListParams::default()).await.ok().map(|_| ()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_install_grants_exactly_the_operators_job_and_keeps_the_crd() {
    let tb = testbed::testbed();
    let admin = tb.client().await;
    let release_ns = tb.namespace().await;
    let tenant_ns = tb.namespace().await;
    let helm = Helm::with_kubeconfig(tb.kubeconfig_path());
    let chart = chart_dir().display().to_string();

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
            "leaderElection.enabled=true,replicaCount=2,podDisruptionBudget.enabled=true",
        ])
        .expect_ok("helm install (cluster mode)");
    assert!(
        out.stdout.contains("examples/bridge.yaml"),
        "NOTES: {}",
        out.stdout
    );
    wait_for_crd(&admin).await;

    examples_pass_server_side_validation(&admin, &tenant_ns).await;

    // The objects exist as rendered; on 1.20 the PDB had to be policy/v1beta1.
    let deploys: Api<Deployment> = Api::namespaced(admin.clone(), &release_ns);
    let deploy = deploys.get(RELEASE).await.unwrap();
    assert_eq!(deploy.spec.as_ref().unwrap().replicas, Some(2));
    let pdb_v1beta1 = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget"),
        "poddisruptionbudgets",
    );
    let pdbs: Api<DynamicObject> = Api::namespaced_with(admin.clone(), &release_ns, &pdb_v1beta1);
    pdbs.get(RELEASE)
        .await
        .expect("PDB served as policy/v1beta1");

    // The chart's ServiceAccount, not the admin.
    let token = service_account_token(&admin, &release_ns, RELEASE).await;
    let op = tb.client_with_token(&token).await;
    e2e::wait_until_authorized(&op, None, Some((&release_ns, DEFAULT_LEASE_NAME))).await;

    // Tenant state the operator works with, made by the admin (as a tenant would).
    let admin_bridges: Api<DynamicObject> =
        Api::namespaced_with(admin.clone(), &tenant_ns, &bridge_resource());
    admin_bridges
        .create(&PostParams::default(), &bridge("acme"))
        .await
        .unwrap();
    let admin_secrets: Api<Secret> = Api::namespaced(admin.clone(), &tenant_ns);
    admin_secrets
        .create(&PostParams::default(), &secret("acme-seshn"))
        .await
        .unwrap();

    // --- what the operator must be able to do ---
    let all_bridges: Api<DynamicObject> = Api::all_with(op.clone(), &bridge_resource());
    let listed = all_bridges.list(&ListParams::default()).await.unwrap();
    assert!(
        listed
            .items
            .iter()
            .any(|b| b.metadata.name.as_deref() == Some("acme"))
    );
    let bridges: Api<DynamicObject> =
        Api::namespaced_with(op.clone(), &tenant_ns, &bridge_resource());
    bridges
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["integrations.seshn.net/webhook-cleanup"]}}),
            ),
        )
        .await
        .expect("operator adds its finalizer");
    let patched = bridges
        .patch_status(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 1}})),
        )
        .await
        .expect("operator writes status");
    assert_eq!(patched.data["status"]["observedGeneration"], 1);

    let secrets: Api<Secret> = Api::namespaced(op.clone(), &tenant_ns);
    secrets
        .get("acme-seshn")
        .await
        .expect("operator reads a referenced Secret");
    secrets
        .create(&PostParams::default(), &secret("acme-webhook-signing"))
        .await
        .expect("operator writes the signing Secret");
    let deployments: Api<Deployment> = Api::namespaced(op.clone(), &tenant_ns);
    deployments
        .create(
            &PostParams::default(),
            &stand_in_deployment("acme-forwarder"),
        )
        .await
        .expect("operator creates the forwarder Deployment");
    deployments
        .delete("acme-forwarder", &DeleteParams::background())
        .await
        .expect("operator deletes a workload of the wrong kind (Deployment <-> StatefulSet)");
    let services: Api<Service> = Api::namespaced(op.clone(), &tenant_ns);
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "acme-forwarder"},
                "spec": {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "x"}}
            }))
            .unwrap(),
        )
        .await
        .expect("operator creates the Service");
    let err = services
        .delete("acme-forwarder", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(
        is_forbidden(&err),
        "Services are garbage-collected, never deleted by the operator: {err}"
    );
    let err = secrets
        .delete("acme-webhook-signing", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(
        is_forbidden(&err),
        "Secrets are garbage-collected, never deleted by the operator: {err}"
    );
    let ingresses: Api<Ingress> = Api::namespaced(op.clone(), &tenant_ns);
    ingresses
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "acme-forwarder"},
                "spec": {"rules": [{"host": "hooks.example.com", "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "acme-forwarder", "port": {"number": 80}}}
                }]}}]}
            }))
            .unwrap(),
        )
        .await
        .expect("operator creates the Ingress");
    // Events: kube-runtime's Recorder writes events.k8s.io/v1 only.
    let events: Api<Event> = Api::namespaced(op.clone(), &tenant_ns);
    events
        .create(&PostParams::default(), &bridge_event(&tenant_ns))
        .await
        .expect("operator records an events.k8s.io/v1 Event");
    let core_events: Api<CoreEvent> = Api::namespaced(op.clone(), &tenant_ns);
    let err = core_events
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "acme.core"},
                "involvedObject": {"kind": "SeshnSegmentBridge", "name": "acme", "namespace": tenant_ns},
                "reason": "Probe"
            }))
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(is_forbidden(&err), "no core v1 Events: {err}");

    // Leader election: its own Lease by name (create, get, update), no other Lease.
    let leases: Api<Lease> = Api::namespaced(op.clone(), &release_ns);
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": DEFAULT_LEASE_NAME}})).unwrap();
    leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("operator creates its Lease (leader election on)");
    let mut ours = leases
        .get(DEFAULT_LEASE_NAME)
        .await
        .expect("operator reads its Lease");
    ours.spec = Some(serde_json::from_value(json!({"holderIdentity": "e2e"})).unwrap());
    leases
        .replace(DEFAULT_LEASE_NAME, &PostParams::default(), &ours)
        .await
        .expect("operator renews its Lease");
    // Someone else's Lease in the same namespace (created by the admin): out of reach.
    let admin_leases: Api<Lease> = Api::namespaced(admin.clone(), &release_ns);
    let mut other: Lease =
        serde_json::from_value(json!({"metadata": {"name": "another-controller"}})).unwrap();
    other = admin_leases
        .create(&PostParams::default(), &other)
        .await
        .unwrap();
    let err = leases.get("another-controller").await.unwrap_err();
    assert!(is_forbidden(&err), "reading another Lease: {err}");
    other.spec = Some(serde_json::from_value(json!({"holderIdentity": "e2e"})).unwrap());
    let err = leases
        .replace("another-controller", &PostParams::default(), &other)
        .await
        .unwrap_err();
    assert!(is_forbidden(&err), "taking over another Lease: {err}");
    let err = leases.list(&ListParams::default()).await.unwrap_err();
    assert!(is_forbidden(&err), "listing Leases: {err}");
    let err = leases
        .delete(DEFAULT_LEASE_NAME, &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(is_forbidden(&err), "deleting its Lease: {err}");

    // --- and nothing more ---
    let err = bridges
        .create(&PostParams::default(), &bridge("intruder"))
        .await
        .unwrap_err();
    assert!(is_forbidden(&err), "creating bridges is for tenants: {err}");
    let err = bridges
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(is_forbidden(&err), "deleting bridges is for tenants: {err}");
    let namespaces: Api<Namespace> = Api::all(op.clone());
    let err = namespaces
        .delete(&tenant_ns, &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(is_forbidden(&err), "deleting namespaces: {err}");
    let cluster_roles: Api<ClusterRole> = Api::all(op.clone());
    let err = cluster_roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "escalate"}, "rules": []}))
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(is_forbidden(&err), "creating ClusterRoles: {err}");
    let pods: Api<Pod> = Api::namespaced(op.clone(), &tenant_ns);
    let err = pods.list(&ListParams::default()).await.unwrap_err();
    assert!(
        is_forbidden(&err),
        "pods are none of the operator's business: {err}"
    );
    let tenant_leases: Api<Lease> = Api::namespaced(op.clone(), &tenant_ns);
    let err = tenant_leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        is_forbidden(&err),
        "Leases only in the release namespace: {err}"
    );

    // --- helm uninstall keeps the CRD (crds.keep=true by default) and so the bridges ---
    // Drop the finalizer we added so nothing waits on an operator that is not running.
    admin_bridges
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
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
    let crd = crds.get(CRD_NAME).await.expect("CRD kept after uninstall");
    assert!(
        crd.metadata.deletion_timestamp.is_none(),
        "CRD must not be deleting"
    );
    admin_bridges
        .get("acme")
        .await
        .expect("bridges survive uninstall");
    eventually(
        "the operator Deployment to be gone",
        Duration::from_secs(120),
        || {
            let deploys = deploys.clone();
            async move { deploys.get_opt(RELEASE).await.ok()?.is_none().then_some(()) }
        },
    )
    .await;
}

/// An events.k8s.io/v1 Event about bridge `acme`, as kube-runtime's Recorder writes it.
fn bridge_event(ns: &str) -> Event {
    serde_json::from_value(json!({
        "metadata": {"name": "acme.probe"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "seshn-segment-operator",
        "reportingInstance": "e2e",
        "action": "Reconcile",
        "reason": "Probe",
        "type": "Normal",
        "regarding": {
            "apiVersion": "integrations.seshn.net/v1alpha1",
            "kind": "SeshnSegmentBridge",
            "name": "acme",
            "namespace": ns
        }
    }))
    .unwrap()
}

/// Every manifest in `examples/` is accepted by the real apiserver (server-side dry run), so a
/// field the CRD does not know or a wrong type fails here.
async fn examples_pass_server_side_validation(admin: &Client, ns: &str) {
    let files = e2e::example_manifest_files();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for required in ["eu-endpoint.yaml", "pvc-spool.yaml", "ingress.yaml"] {
        assert!(
            names.iter().any(|n| n == required),
            "examples/{required} missing"
        );
    }
    // Server-side apply (unlike create) rejects fields the schema does not declare.
    let dry_run = PatchParams::apply("e2e-examples").dry_run();
    let mut bridges_seen = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in e2e::parse_manifests(&text) {
            let mut obj: DynamicObject = serde_json::from_value(doc).unwrap();
            obj.metadata.namespace = None;
            let kind = obj
                .types
                .as_ref()
                .map(|t| t.kind.clone())
                .unwrap_or_default();
            let name = obj.metadata.name.clone().unwrap_or_default();
            let returned = match kind.as_str() {
                "SeshnSegmentBridge" => {
                    bridges_seen += 1;
                    Api::<DynamicObject>::namespaced_with(admin.clone(), ns, &bridge_resource())
                        .patch(&name, &dry_run, &Patch::Apply(&obj))
                        .await
                        .map(|o| serde_json::to_value(o).unwrap())
                }
                "Secret" => {
                    let secret: Secret =
                        serde_json::from_value(serde_json::to_value(&obj).unwrap()).unwrap();
                    Api::<Secret>::namespaced(admin.clone(), ns)
                        .patch(&name, &dry_run, &Patch::Apply(&secret))
                        .await
                        .map(|o| serde_json::to_value(o).unwrap())
                }
                other => panic!("{}: unexpected kind {other}", file.display()),
            };
            let returned = returned.unwrap_or_else(|e| {
                panic!(
                    "{} ({kind} {name}) rejected by the apiserver: {e}",
                    file.display()
                )
            });
            // A 1.20 apiserver silently prunes fields its schema does not declare: everything
            // the example says must survive, or the example documents a field that does nothing.
            if kind == "SeshnSegmentBridge" {
                let sent = serde_json::to_value(&obj).unwrap();
                assert_survives(&sent["spec"], &returned["spec"], &format!("{name}: spec"));
            }
        }
    }
    assert!(bridges_seen >= 3, "only {bridges_seen} example bridges");
}

/// Every leaf of `sent` is present, unchanged, in `got` (which may hold more, e.g. defaults).
fn assert_survives(sent: &serde_json::Value, got: &serde_json::Value, path: &str) {
    match sent {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                assert_survives(v, &got[k], &format!("{path}.{k}"));
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                assert_survives(v, &got[i], &format!("{path}[{i}]"));
            }
        }
        leaf => assert_eq!(leaf, got, "{path} was dropped or changed by the apiserver"),
    }
}
