//! Create → Ready, spec change → one update, drift at Seshn → recreate, delete → cleanup.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{API_KEY, DEADLINE, Harness, eventually};
use fakes::seshn_api::Op;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_registers_once_and_becomes_ready() {
    let h = Harness::start().await;
    let created = h.create(&h.manifest("acme")).await;
    let uid = created.uid().unwrap();

    // Children exist, owned by the bridge (controller reference).
    let d = h.make_available("acme").await;
    let owner = &d.owner_references()[0];
    assert_eq!(owner.uid, uid);
    assert_eq!(owner.controller, Some(true));
    let services: Api<Service> = Api::namespaced(h.client.clone(), &h.ns);
    // Applied right after the Deployment, so possibly a moment later.
    let svc = eventually("the forwarder Service", DEADLINE, || async {
        services.get_opt("acme-forwarder").await.unwrap()
    })
    .await;
    assert_eq!(svc.owner_references()[0].uid, uid);
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let signing = secrets.get("acme-webhook-signing").await.unwrap();
    assert_eq!(signing.owner_references()[0].uid, uid);
    // Hardened pod, secrets only by reference.
    let pod = d.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert!(
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .all(|e| e.value.as_deref() != Some("wk_1"))
    );

    let ready = h
        .wait_condition("acme", "Ready", "True", Some("Ready"))
        .await;
    let st = ready.status.unwrap();
    let wh = st.webhook.unwrap();
    let url = format!("https://hooks.example.com/acme/hooks/{uid}");
    assert_eq!(wh.url.as_deref(), Some(url.as_str()));
    assert!(wh.pending_since.is_none());
    assert_eq!(st.observed_generation, ready.metadata.generation);

    // Exactly one webhook at Seshn, with our URL, events and the secret in the owned Secret.
    let hooks = h.seshn.webhooks(API_KEY);
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].url, url);
    assert_eq!(wh.id.as_deref(), Some(hooks[0].id.as_str()));
    assert_eq!(
        hooks[0].events,
        vec![
            "booking.cancelled".to_string(),
            "booking.created".to_string()
        ]
    );
    let signing = secrets.get("acme-webhook-signing").await.unwrap();
    assert_eq!(
        signing.data.unwrap()["secret"].0,
        hooks[0].secret.as_bytes()
    );
    assert_eq!(h.seshn.call_count(Op::Create), 1);
    h.wait_event("acme", "WebhookCreated").await;

    // Steady state: a few more passes (forced by a no-op label change) create nothing and
    // write no status.
    let writes_before = h.metrics.total_writes();
    for i in 0..3 {
        let gets = h.seshn.call_count(Op::Get);
        h.bridges()
            .patch(
                "acme",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"metadata": {"labels": {"poke": i.to_string()}}})),
            )
            .await
            .unwrap();
        eventually("another observe pass", DEADLINE, || async {
            (h.seshn.call_count(Op::Get) > gets).then_some(())
        })
        .await;
    }
    assert_eq!(h.seshn.call_count(Op::Create), 1);
    assert_eq!(h.seshn.call_count(Op::Update), 0);
    assert_eq!(
        h.metrics.total_writes(),
        writes_before,
        "steady state must not write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_change_updates_once_and_drift_is_repaired() {
    let h = Harness::start().await;
    h.create_ready("acme").await;
    assert_eq!(h.seshn.call_count(Op::Update), 0);

    // Spec change of the events: one update call, no new webhook.
    h.patch_spec("acme", json!({"seshn": {"events": ["payment.succeeded"]}}))
        .await;
    eventually("the events update at Seshn", DEADLINE, || async {
        let hooks = h.seshn.webhooks(API_KEY);
        (hooks.len() == 1 && hooks[0].events == vec!["payment.succeeded".to_string()]).then_some(())
    })
    .await;
    // The status follows once the pass completes.
    eventually("the status to record the new events", DEADLINE, || async {
        let b = h.get("acme").await?;
        let ready = b.condition("Ready")?.status == "True";
        let events = b.status?.webhook?.events;
        (ready && events == vec!["payment.succeeded".to_string()]).then_some(())
    })
    .await;
    h.wait_event("acme", "WebhookUpdated").await;
    assert_eq!(h.seshn.call_count(Op::Update), 1);
    assert_eq!(h.seshn.call_count(Op::Create), 1);

    // Someone deletes the webhook at Seshn: the next pass recreates it and says so.
    let old_id = h.seshn.webhooks(API_KEY)[0].id.clone();
    assert!(h.seshn.delete_webhook_out_of_band(&old_id));
    // Force a pass instead of waiting for the resync.
    h.patch_spec("acme", json!({"forwarder": {"replicas": 1}}))
        .await;
    h.bridges()
        .patch(
            "acme",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"poke": "1"}}})),
        )
        .await
        .unwrap();
    let new_id = eventually("the webhook to be recreated", DEADLINE, || async {
        let b = h.get("acme").await?;
        let id = b.status?.webhook?.id?;
        (id != old_id).then_some(id)
    })
    .await;
    let hooks = h.seshn.webhooks(API_KEY);
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].id, new_id);
    assert_eq!(hooks[0].events, vec!["payment.succeeded".to_string()]);
    h.wait_event("acme", "WebhookRecreated").await;
    h.wait_condition("acme", "Ready", "True", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_webhook_finalizer_and_children() {
    let h = Harness::start().await;
    let b = h.create_ready("acme").await;
    assert!(
        b.finalizers()
            .iter()
            .any(|f| f == "integrations.seshn.net/webhook-cleanup")
    );
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1);

    h.bridges()
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the bridge to be gone", DEADLINE, || async {
        h.get("acme").await.is_none().then_some(())
    })
    .await;
    assert!(h.seshn.webhooks(API_KEY).is_empty());
    assert_eq!(h.seshn.call_count(Op::Delete), 1);
    // The garbage collector removes the owned children.
    eventually(
        "the children to be collected",
        Duration::from_secs(90),
        || async {
            let d = h.deployments().get_opt("acme-forwarder").await.unwrap();
            let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
            let s = secrets.get_opt("acme-webhook-signing").await.unwrap();
            let services: Api<Service> = Api::namespaced(h.client.clone(), &h.ns);
            let svc = services.get_opt("acme-forwarder").await.unwrap();
            (d.is_none() && s.is_none() && svc.is_none()).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_policy_keeps_the_webhook() {
    let h = Harness::start().await;
    h.create_ready("acme").await;
    h.patch_spec("acme", json!({"deletionPolicy": "Orphan"}))
        .await;
    eventually("the spec change to be observed", DEADLINE, || async {
        let b = h.get("acme").await?;
        (b.status?.observed_generation == b.metadata.generation).then_some(())
    })
    .await;
    h.bridges()
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the bridge to be gone", DEADLINE, || async {
        h.get("acme").await.is_none().then_some(())
    })
    .await;
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1);
    assert_eq!(h.seshn.call_count(Op::Delete), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_right_after_a_verification_do_not_call_seshn_again() {
    let h = Harness::start_with(|c| c.observe_interval = Duration::from_secs(600)).await;
    h.create_ready("acme").await;
    let ok = |h: &Harness| {
        h.metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("seshn_segment_operator_reconciles_total{result=\"ok\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let calls = h.seshn.calls().len();
    let passes = ok(&h);
    h.bridges()
        .patch(
            "acme",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {"poke": "1"}}})),
        )
        .await
        .unwrap();
    eventually("another pass", DEADLINE, || async {
        (ok(&h) > passes).then_some(())
    })
    .await;
    assert_eq!(
        h.seshn.calls().len(),
        calls,
        "verified moments ago: no Seshn call"
    );
    // A spec change is never served from that memory.
    h.patch_spec("acme", json!({"seshn": {"events": ["booking.created"]}}))
        .await;
    eventually("the update at Seshn", DEADLINE, || async {
        (h.seshn.webhooks(API_KEY)[0].events == vec!["booking.created".to_string()]).then_some(())
    })
    .await;
}
