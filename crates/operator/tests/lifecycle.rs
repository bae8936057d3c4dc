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

fn signing_annotations(s: &Secret) -> Option<String> {
    s.annotations()
        .get("integrations.seshn.net/replaces-webhook")
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_signing_secret_replaces_the_webhook_so_seshn_signs_with_the_new_secret() {
    let h = Harness::start().await;
    let ready = h.create_ready("acme").await;
    let old_id = ready.status.unwrap().webhook.unwrap().id.unwrap();
    let old_hook = h.seshn.webhooks(API_KEY)[0].clone();
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let old_secret = secrets
        .get("acme-webhook-signing")
        .await
        .unwrap()
        .data
        .unwrap()["secret"]
        .0
        .clone();
    assert_eq!(old_hook.secret.as_bytes(), old_secret.as_slice());
    let checksum = |d: k8s_openapi::api::apps::v1::Deployment| {
        d.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()["integrations.seshn.net/secrets-checksum"]
            .clone()
    };
    let before = checksum(h.deployments().get("acme-forwarder").await.unwrap());

    secrets
        .delete("acme-webhook-signing", &DeleteParams::default())
        .await
        .unwrap();
    let new_id = eventually("the webhook to be replaced", DEADLINE, || async {
        let id = h.get("acme").await?.status?.webhook?.id?;
        let hooks = h.seshn.webhooks(API_KEY);
        (id != old_id && hooks.len() == 1 && hooks[0].id == id).then_some(id)
    })
    .await;
    // Seshn now signs with exactly what the pods verify with.
    let signing = secrets.get("acme-webhook-signing").await.unwrap();
    let new_secret = signing.data.as_ref().unwrap()["secret"].0.clone();
    assert_ne!(new_secret, old_secret, "a new secret was generated");
    let hook = &h.seshn.webhooks(API_KEY)[0];
    assert_eq!(hook.secret.as_bytes(), new_secret.as_slice());
    assert_eq!(hook.url, old_hook.url);
    assert_eq!(hook.events, old_hook.events);
    assert!(h.seshn.webhooks(API_KEY).iter().all(|w| w.id != old_id));
    assert_eq!(h.seshn.call_count(Op::Create), 2);
    h.wait_event("acme", "WebhookRecreated").await;
    let b = h.wait_condition("acme", "Ready", "True", None).await;
    assert_eq!(b.status.unwrap().webhook.unwrap().id, Some(new_id.clone()));
    // The replacement is finished: the Secret no longer names the old webhook.
    eventually("the Secret's replacement note to go", DEADLINE, || async {
        let s = secrets.get("acme-webhook-signing").await.ok()?;
        signing_annotations(&s).is_none().then_some(())
    })
    .await;
    // The pods roll onto the new secret.
    assert_ne!(
        checksum(h.deployments().get("acme-forwarder").await.unwrap()),
        before
    );
    // And nothing more happens: one webhook, the new one.
    h.poke("acme").await;
    let gets = h.seshn.call_count(Op::Get);
    eventually("another pass", DEADLINE, || async {
        (h.seshn.call_count(Op::Get) > gets).then_some(())
    })
    .await;
    assert_eq!(h.seshn.call_count(Op::Create), 2);
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1);
    assert_eq!(h.seshn.webhooks(API_KEY)[0].id, new_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_resyncs_write_nothing_and_publish_no_events() {
    let h = Harness::start_with(|c| c.resync_interval = Duration::from_secs(2)).await;
    h.create_ready("acme").await;
    // Let the passes our own writes triggered go by: one resync observation first.
    let gets = h.seshn.call_count(Op::Get);
    eventually("a first resync", DEADLINE, || async {
        (h.seshn.call_count(Op::Get) > gets).then_some(())
    })
    .await;
    let events = h.event_records("acme").await;
    assert!(events.iter().any(|(_, r, _)| r == "Ready"), "{events:?}");
    let writes = h.metrics.total_writes();
    let event_writes = |h: &Harness| {
        h.metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("seshn_segment_operator_kube_writes_total{kind=\"event\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let published = event_writes(&h);
    let gets = h.seshn.call_count(Op::Get);
    eventually("three more resyncs", DEADLINE, || async {
        (h.seshn.call_count(Op::Get) >= gets + 3).then_some(())
    })
    .await;
    assert_eq!(
        h.event_records("acme").await,
        events,
        "no new or repeated Event"
    );
    assert_eq!(event_writes(&h), published);
    assert_eq!(h.metrics.total_writes(), writes, "no Kubernetes write");
    assert_eq!(h.seshn.call_count(Op::Create), 1);
    assert_eq!(h.seshn.call_count(Op::Update), 0);
    assert_eq!(h.seshn.call_count(Op::List), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_404_a_webhook_of_ours_is_adopted_rather_than_a_second_one_created() {
    let h = Harness::start().await;
    let ready = h.create_ready("acme").await;
    let old_id = ready.status.unwrap().webhook.unwrap().id.unwrap();
    let hook = h.seshn.webhooks(API_KEY)[0].clone();
    // The recorded webhook is gone, but one with our URL exists (the answer of an earlier
    // re-registration was lost, say).
    let other = h
        .seshn
        .insert_webhook_out_of_band(API_KEY, &hook.url, &hook.events);
    assert!(h.seshn.delete_webhook_out_of_band(&old_id));
    h.poke("acme").await;
    eventually("the webhook of ours to be adopted", DEADLINE, || async {
        let id = h.get("acme").await?.status?.webhook?.id?;
        (id == other.id).then_some(())
    })
    .await;
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1, "never two");
    assert_eq!(h.seshn.call_count(Op::Create), 1, "no create after the 404");
    assert!(h.seshn.call_count(Op::List) >= 1);
    h.wait_event("acme", "WebhookAdopted").await;
    h.wait_condition("acme", "Ready", "True", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_written_from_a_stale_copy_keeps_the_recorded_webhook() {
    use bridge_api::{SeshnSegmentBridgeStatus, WebhookStatus};
    let mut h = Harness::start().await;
    // Only this test writes the status.
    h.stop_operator();
    let stale = h.create(&h.manifest("acme")).await;
    let api = h.bridges();
    let recorded = SeshnSegmentBridgeStatus {
        webhook: Some(WebhookStatus {
            id: Some("wh_1".into()),
            url: Some("https://hooks.example.com/acme/hooks/x".into()),
            ..WebhookStatus::default()
        }),
        ..SeshnSegmentBridgeStatus::default()
    };
    assert!(
        operator::status::write(&api, &stale, &recorded)
            .await
            .unwrap()
    );
    // A pass that started from the copy before that write knows no webhook.
    let from_stale = SeshnSegmentBridgeStatus {
        observed_generation: Some(1),
        ..SeshnSegmentBridgeStatus::default()
    };
    assert!(
        operator::status::write(&api, &stale, &from_stale)
            .await
            .unwrap()
    );
    let st = h.get("acme").await.unwrap().status.unwrap();
    assert_eq!(st.observed_generation, Some(1), "the write happened");
    assert_eq!(
        st.webhook.and_then(|w| w.id).as_deref(),
        Some("wh_1"),
        "server-side apply must not drop the id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_disabled_at_seshn_is_reported_until_it_is_enabled_again() {
    let h = Harness::start().await;
    let ready = h.create_ready("acme").await;
    let id = ready.status.unwrap().webhook.unwrap().id.unwrap();
    assert!(h.seshn.set_webhook_enabled_out_of_band(&id, false));
    h.poke("acme").await;
    let b = h
        .wait_condition("acme", "WebhookSynced", "False", Some("WebhookDisabled"))
        .await;
    let ready = b.condition("Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "WebhookDisabled")
    );
    assert_eq!(
        b.status.unwrap().webhook.unwrap().id.as_deref(),
        Some(id.as_str())
    );
    h.wait_event("acme", "WebhookDisabled").await;

    assert!(h.seshn.set_webhook_enabled_out_of_band(&id, true));
    h.poke("acme").await;
    h.wait_condition("acme", "Ready", "True", None).await;
    assert_eq!(h.seshn.call_count(Op::Create), 1);
    assert_eq!(h.seshn.call_count(Op::Update), 0);
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1);
}
