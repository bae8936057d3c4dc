//! Secret rotation, suspend, invalid specs, leader election.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{API_KEY, DEADLINE, Harness, eventually};
use fakes::seshn_api::Op;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use operator::{LeaderElectionConfig, Metrics};
use serde_json::json;

fn checksum(d: &k8s_openapi::api::apps::v1::Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()["integrations.seshn.net/secrets-checksum"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_write_key_rolls_the_pods_and_leaves_the_webhook_alone() {
    let h = Harness::start().await;
    let ready = h.create_ready("acme").await;
    let id = ready.status.unwrap().webhook.unwrap().id.unwrap();
    let before = checksum(&h.deployments().get("acme-forwarder").await.unwrap());
    let (creates, updates) = (
        h.seshn.call_count(Op::Create),
        h.seshn.call_count(Op::Update),
    );

    h.put_secret("acme-segment", "writeKey", "wk_2").await;
    let after = eventually("the pod template to change", DEADLINE, || async {
        let d = h.deployments().get("acme-forwarder").await.ok()?;
        let c = checksum(&d);
        (c != before).then_some(c)
    })
    .await;
    assert_eq!(after.len(), 64);
    assert!(!after.contains("wk_2"));
    // The API key can rotate too (same account): nothing changes at Seshn.
    h.put_secret("acme-seshn", "apiKey", API_KEY).await;
    let b = h.wait_condition("acme", "Ready", "True", None).await;
    assert_eq!(b.status.unwrap().webhook.unwrap().id.unwrap(), id);
    assert_eq!(h.seshn.call_count(Op::Create), creates);
    assert_eq!(h.seshn.call_count(Op::Update), updates);
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_stops_calls_and_resume_catches_up() {
    let h = Harness::start().await;
    h.create_ready("acme").await;
    h.patch_spec("acme", json!({"suspend": true})).await;
    let b = h
        .wait_condition("acme", "WebhookSynced", "False", Some("Suspended"))
        .await;
    assert_eq!(b.condition("Ready").unwrap().reason, "Suspended");
    let calls = h.seshn.calls().len();
    // Changes while suspended are not acted on.
    h.patch_spec(
        "acme",
        json!({"seshn": {"events": ["waitlist.joined"]}, "forwarder": {"replicas": 2}}),
    )
    .await;
    eventually(
        "the suspended pass to record the generation",
        DEADLINE,
        || async {
            let b = h.get("acme").await?;
            (b.status?.observed_generation == b.metadata.generation).then_some(())
        },
    )
    .await;
    assert_eq!(h.seshn.calls().len(), calls);
    let d = h.deployments().get("acme-forwarder").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(1));

    h.patch_spec("acme", json!({"suspend": false})).await;
    eventually("the events to reach Seshn", DEADLINE, || async {
        let hooks = h.seshn.webhooks(API_KEY);
        (hooks[0].events == vec!["waitlist.joined".to_string()]).then_some(())
    })
    .await;
    h.wait_condition("acme", "Ready", "True", None).await;
    let d = h.deployments().get("acme-forwarder").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_rejected_or_surface_as_conditions() {
    let h = Harness::start().await;
    // Rejected by the apiserver's schema (422), so nothing ever reaches the operator.
    let mut both = h.manifest("both");
    both["spec"]["exposure"]["ingress"] = json!({"host": "hooks.example.com"});
    let mut http = h.manifest("http");
    http["spec"]["exposure"]["publicUrl"] = json!("http://hooks.example.com");
    let mut policy = h.manifest("policy");
    policy["spec"]["deletionPolicy"] = json!("Keep");
    let mut neither = h.manifest("neither");
    neither["spec"]["exposure"] = json!({});
    let mut event = h.manifest("event");
    event["spec"]["seshn"]["events"] = json!(["booking created"]);
    let mut replicas = h.manifest("replicas");
    replicas["spec"]["forwarder"] = json!({"replicas": 100});
    let mut no_segment = h.manifest("nosegment");
    no_segment["spec"]
        .as_object_mut()
        .unwrap()
        .remove("segment");
    let raw: Api<kube::core::DynamicObject> = Api::namespaced_with(
        h.client.clone(),
        &h.ns,
        &kube::core::ApiResource::erase::<bridge_api::SeshnSegmentBridge>(&()),
    );
    for (label, m) in [
        ("both exposures", both),
        ("http publicUrl", http),
        ("unknown deletionPolicy", policy),
        ("no exposure", neither),
        ("event with a space", event),
        ("too many replicas", replicas),
        ("no segment", no_segment),
    ] {
        let obj: kube::core::DynamicObject = serde_json::from_value(m).unwrap();
        let err = raw
            .create(&PostParams::default(), &obj)
            .await
            .expect_err(label);
        match err {
            kube::Error::Api(s) => assert_eq!(s.code, 422, "{label}: {s:?}"),
            other => panic!("{label}: {other}"),
        }
    }

    // Accepted by the schema, caught by the operator: a condition with a reason.
    let long = "a".repeat(60);
    h.create(&h.manifest(&long)).await;
    let b = h
        .wait_condition(&long, "Ready", "False", Some("InvalidSpec"))
        .await;
    assert!(
        b.condition("Ready")
            .unwrap()
            .message
            .contains("metadata.name")
    );

    let mut size = h.manifest("size");
    size["spec"]["delivery"] = json!({"spool": {"size": "1500m"}});
    h.create(&size).await;
    h.wait_condition("size", "Ready", "False", Some("InvalidSpec"))
        .await;

    let mut missing = h.manifest("missing");
    missing["spec"]["segment"]["writeKeySecretRef"]["name"] = json!("nope");
    h.create(&missing).await;
    let b = h
        .wait_condition("missing", "Ready", "False", Some("SecretNotFound"))
        .await;
    assert!(b.condition("Ready").unwrap().message.contains("nope"));
    // Creating the Secret heals it without touching the bridge.
    h.put_secret("nope", "writeKey", "wk").await;
    h.make_available("missing").await;
    h.wait_condition("missing", "Ready", "True", None).await;

    // A PVC spool runs as a StatefulSet.
    let mut pvc = h.manifest("pvc");
    pvc["spec"]["delivery"] = json!({"spool": {"storage": "PersistentVolumeClaim", "size": "2Gi"}});
    h.create(&pvc).await;
    let sts: Api<StatefulSet> = Api::namespaced(h.client.clone(), &h.ns);
    eventually("the StatefulSet", DEADLINE, || async {
        sts.get_opt("pvc-forwarder").await.unwrap()
    })
    .await;
    h.wait_condition(
        "pvc",
        "ForwarderAvailable",
        "False",
        Some("WaitingForForwarder"),
    )
    .await;
    assert!(
        h.deployments()
            .get_opt("pvc-forwarder")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_lets_one_replica_act_and_fails_over() {
    let mut h = Harness::start().await;
    // The harness's own operator runs without election; replace it by two electing ones.
    h.stop_operator();
    let lease_name = format!("ssb-{}", h.ns);
    let le = LeaderElectionConfig {
        namespace: h.ns.clone(),
        name: lease_name.clone(),
        // Generous: a loaded machine must not make the leader miss its renewals.
        lease_duration: Duration::from_secs(8),
        renew_interval: Duration::from_secs(1),
    };
    let spawn = |instance: &str| {
        let mut config = h.config.clone();
        config.instance = instance.to_owned();
        config.leader_election = Some(le.clone());
        let client = h.client.clone();
        let metrics = Arc::new(Metrics::new());
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            let _ = operator::run(client, config, m, std::future::pending()).await;
        });
        (task, metrics)
    };
    let (a, ma) = spawn("replica-a");
    let (b, mb) = spawn("replica-b");
    h.create_ready("acme").await;
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns);
    let holder = leases
        .get(&lease_name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    let leader_gauge = |m: &Metrics| {
        m.encode()
            .lines()
            .any(|l| l == "seshn_segment_operator_leader 1")
    };
    // Exactly one acts.
    assert_ne!(
        leader_gauge(&ma),
        leader_gauge(&mb),
        "{:?}",
        leases.get(&lease_name).await.unwrap()
    );
    let (leader, follower_metrics) = if holder == "replica-a" {
        (a, mb)
    } else {
        (b, ma)
    };
    assert_eq!(
        follower_metrics.total_writes(),
        0,
        "the follower never writes"
    );
    assert_eq!(h.seshn.call_count(Op::Create), 1);

    // The leader dies without releasing; the other takes over after the lease expires.
    leader.abort();
    h.patch_spec("acme", json!({"seshn": {"events": ["payment.failed"]}}))
        .await;
    eventually("the follower to take over and act", DEADLINE, || async {
        let hooks = h.seshn.webhooks(API_KEY);
        (hooks[0].events == vec!["payment.failed".to_string()]).then_some(())
    })
    .await;
    let new_holder = leases
        .get(&lease_name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_ne!(new_holder, holder);
    assert_eq!(h.seshn.call_count(Op::Create), 1);
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_from_ingress_to_public_url_moves_the_webhook_and_removes_the_ingress() {
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::ResourceExt;
    let h = Harness::start().await;
    let mut m = h.manifest("acme");
    m["spec"]["exposure"] = json!({"ingress": {
        "className": "nginx", "host": "hooks.example.com", "tlsSecretName": "tls",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}}});
    let created = h.create(&m).await;
    let uid = created.uid().unwrap();
    h.make_available("acme").await;
    h.wait_condition("acme", "Ready", "True", None).await;
    let ingresses: Api<Ingress> = Api::namespaced(h.client.clone(), &h.ns);
    let ing = ingresses.get("acme-forwarder").await.unwrap();
    assert_eq!(ing.owner_references()[0].uid, uid);
    let rule = &ing.spec.as_ref().unwrap().rules.as_ref().unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("hooks.example.com"));
    assert_eq!(
        rule.http.as_ref().unwrap().paths[0].path.as_deref(),
        Some(format!("/hooks/{uid}").as_str())
    );
    assert_eq!(
        h.seshn.webhooks(API_KEY)[0].url,
        format!("https://hooks.example.com/hooks/{uid}")
    );

    // A merge patch cannot drop one member of a oneOf and add the other in two steps, so
    // replace the whole exposure.
    h.patch_spec(
        "acme",
        json!({"exposure": {"ingress": null, "publicUrl": "https://gw.example.com/t"}}),
    )
    .await;
    eventually("the Ingress to be removed", DEADLINE, || async {
        ingresses
            .get_opt("acme-forwarder")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    eventually("the webhook URL to move", DEADLINE, || async {
        (h.seshn.webhooks(API_KEY)[0].url == format!("https://gw.example.com/t/hooks/{uid}"))
            .then_some(())
    })
    .await;
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1);
    assert_eq!(h.seshn.call_count(Op::Update), 1);
    assert_eq!(h.seshn.call_count(Op::Create), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_edits_of_the_forwarder_are_reverted() {
    let h = Harness::start().await;
    h.create_ready("acme").await;
    h.deployments()
        .patch(
            "acme-forwarder",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    eventually("the replicas to be restored", DEADLINE, || async {
        let d = h.deployments().get("acme-forwarder").await.ok()?;
        (d.spec?.replicas == Some(1)).then_some(())
    })
    .await;
    // `kubectl rollout restart` style annotations are not ours and are left alone.
    h.deployments()
        .patch(
            "acme-forwarder",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations":
                {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"}}}}})),
        )
        .await
        .unwrap();
    let writes = h.metrics.total_writes();
    let gets = h.seshn.call_count(Op::Get);
    h.bridges()
        .patch(
            "acme",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {"poke": "1"}}})),
        )
        .await
        .unwrap();
    eventually("another pass", DEADLINE, || async {
        (h.seshn.call_count(Op::Get) > gets).then_some(())
    })
    .await;
    assert_eq!(h.metrics.total_writes(), writes);
    let d = h.deployments().get("acme-forwarder").await.unwrap();
    let annotations = d
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert!(annotations.contains_key("kubectl.kubernetes.io/restartedAt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_looks_expired_by_a_skewed_clock_is_not_taken_while_it_changes() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use kube::api::{Patch, PatchParams};
    use std::time::Instant;

    let h = Harness::start().await;
    let leases: Api<Lease> = Api::namespaced(h.client.clone(), &h.ns);
    let name = "skewed";
    // Another replica holds the lease; its clock runs an hour behind ours, so every renewTime
    // it writes looks long expired to us.
    let behind = || MicroTime(Timestamp::now() - SignedDuration::from_secs(3600));
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 3}
    }))
    .unwrap();
    let mut lease = lease;
    lease.spec.as_mut().unwrap().renew_time = Some(behind());
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let elector = operator::leader::LeaderElector::new(
        h.client.clone(),
        LeaderElectionConfig {
            namespace: h.ns.clone(),
            name: name.into(),
            lease_duration: Duration::from_secs(3),
            renew_interval: Duration::from_secs(1),
        },
        "me".into(),
    );
    assert!(
        !elector.try_acquire_or_renew().await.unwrap(),
        "a renewTime from another clock is no reason to take over"
    );
    // The ghost keeps renewing (with its skewed clock): every change restarts our countdown.
    let mut last_change = Instant::now();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        last_change = Instant::now();
        let renew = json!({"spec": {"renewTime": behind()}});
        leases
            .patch(name, &PatchParams::default(), &Patch::Merge(renew))
            .await
            .unwrap();
        assert!(
            !elector.try_acquire_or_renew().await.unwrap(),
            "taken over while the holder renews"
        );
    }
    // The ghost stops: the lease is ours once it has not changed for 3 s on our clock.
    eventually("the takeover", DEADLINE, || async {
        elector.try_acquire_or_renew().await.unwrap().then_some(())
    })
    .await;
    assert!(
        last_change.elapsed() >= Duration::from_secs(3),
        "taken {:?} after the last renewal, before the lease expired",
        last_change.elapsed()
    );
    let spec = leases.get(name).await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("me"));
}
