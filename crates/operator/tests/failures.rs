//! Lost answers, storms, wrong keys, missing credentials: no duplicates, no hot loops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{API_KEY, DEADLINE, Harness, eventually};
use fakes::seshn_api::{Fault, Op};
use k8s_openapi::api::core::v1::Secret;
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_create_answer_and_restart_adopts_instead_of_creating_again() {
    let mut h = Harness::start_with(|c| {
        c.backoff_min = Duration::from_secs(30);
        c.seshn_timeout = Duration::from_secs(30);
    })
    .await;
    // The create happens at Seshn but its answer is lost; the list that would find it answers
    // only after a long delay, so the first operator is "crashed" before it can adopt.
    h.seshn.inject(Some(Op::Create), Fault::LoseAnswer);
    h.seshn
        .inject(Some(Op::List), Fault::Latency(Duration::from_secs(10)));
    let created = h.create(&h.manifest("acme")).await;
    h.make_available("acme").await;
    eventually("the create whose answer is lost", DEADLINE, || async {
        (h.seshn.call_count(Op::Create) == 1 && h.seshn.webhooks(API_KEY).len() == 1).then_some(())
    })
    .await;
    h.stop_operator();
    // The pending marker was written before the call, and no id was recorded.
    let b = h.get("acme").await.unwrap();
    let wh = b.status.unwrap().webhook.unwrap();
    assert!(wh.pending_since.is_some(), "{wh:?}");
    assert!(wh.id.is_none(), "{wh:?}");

    // Crash and restart the operator.
    h.stop_operator();
    h.start_operator();
    let ready = h.wait_condition("acme", "Ready", "True", None).await;
    let hooks = h.seshn.webhooks(API_KEY);
    assert_eq!(hooks.len(), 1, "never a second webhook");
    assert_eq!(h.seshn.call_count(Op::Create), 1);
    let wh = ready.status.unwrap().webhook.unwrap();
    assert_eq!(wh.id.as_deref(), Some(hooks[0].id.as_str()));
    assert!(wh.pending_since.is_none());
    assert!(hooks[0].url.ends_with(&created.uid().unwrap()));
    h.wait_event("acme", "WebhookAdopted").await;
    // The forwarder verifies with the secret Seshn holds.
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    let signing = secrets.get("acme-webhook-signing").await.unwrap();
    assert_eq!(
        signing.data.unwrap()["secret"].0,
        hooks[0].secret.as_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_server_error_storms_back_off_without_duplicates() {
    let h = Harness::start().await;
    // Every call fails for a while: 429s (with Retry-After) then 5xx, then a lost answer.
    h.seshn.inject_n(
        None,
        Fault::RateLimited {
            retry_after_secs: Some(1),
        },
        3,
    );
    h.seshn.inject_n(None, Fault::Status(503), 3);
    h.seshn.inject_n(None, Fault::Status(500), 2);
    // Queued behind those (a create only takes it once the faults for any call are used up):
    // the create happens at Seshn but its answer never arrives.
    h.seshn.inject(Some(Op::Create), Fault::LoseAnswer);
    h.create(&h.manifest("acme")).await;
    h.make_available("acme").await;
    h.wait_condition("acme", "Ready", "True", None).await;
    assert_eq!(h.seshn.pending_faults(), 0);
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1, "no duplicate webhook");
    assert!(
        h.seshn
            .calls()
            .iter()
            .any(|c| c.op == Op::Create && c.status == 0),
        "the lost answer was injected"
    );
    // The retry found the webhook whose answer was lost instead of creating another.
    h.wait_event("acme", "WebhookAdopted").await;
    let text = h.metrics.encode();
    assert!(
        text.contains("reconcile_errors_total{kind=\"RateLimited\"}"),
        "{text}"
    );
    assert!(
        text.contains("reconcile_errors_total{kind=\"SeshnApiError\"}"),
        "{text}"
    );
    let answered_429: u64 = text
        .lines()
        .filter(|l| {
            l.starts_with("seshn_segment_operator_seshn_requests_total")
                && l.contains("code=\"429\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(answered_429, 3, "{text}");
    // Failed calls were retried with backoff, not hammered: 8 faults, a handful of calls.
    let failed = h.seshn.calls().iter().filter(|c| c.status >= 429).count();
    assert_eq!(failed, 8);
    assert!(h.seshn.calls().len() < 30, "{:?}", h.seshn.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_api_key_is_a_condition_without_hot_loop_and_recovers_on_rotation() {
    let h = Harness::start().await;
    h.put_secret("acme-seshn", "apiKey", "sk_test_wrong").await;
    h.create(&h.manifest("acme")).await;
    h.make_available("acme").await;
    let b = h
        .wait_condition("acme", "WebhookSynced", "False", Some("Unauthorized"))
        .await;
    let ready = b.condition("Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "Unauthorized");
    assert!(!ready.message.contains("sk_test_wrong"));
    // Let the passes our own status writes triggered finish (the count stops moving), then
    // count calls over a window: a terminal error waits for a change.
    let mut calls = h.seshn.calls().len();
    let settle = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = h.seshn.calls().len();
        if now == calls {
            break;
        }
        calls = now;
        assert!(
            settle.elapsed() < DEADLINE,
            "Seshn calls never stopped: {now}"
        );
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        h.seshn.calls().len(),
        calls,
        "no calls while nothing changes"
    );
    assert!(calls <= 6, "only a few attempts in total: {calls}");
    assert!(h.seshn.webhooks(API_KEY).is_empty());

    // Fixing the key in the Secret is enough (the Secret is watched).
    h.put_secret("acme-seshn", "apiKey", API_KEY).await;
    h.wait_condition("acme", "Ready", "True", None).await;
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_deleted_before_the_bridge_orphan_after_the_deadline() {
    let h = Harness::start_with(|c| c.cleanup_deadline = Duration::from_secs(4)).await;
    h.create_ready("acme").await;
    let secrets: Api<Secret> = Api::namespaced(h.client.clone(), &h.ns);
    secrets
        .delete("acme-seshn", &DeleteParams::default())
        .await
        .unwrap();
    let deleted_at = std::time::Instant::now();
    h.bridges()
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    h.wait_event("acme", "CleanupBlocked").await;
    eventually("the bridge to be released", DEADLINE, || async {
        h.get("acme").await.is_none().then_some(())
    })
    .await;
    // Held by the finalizer until the deadline (4 s; deletionTimestamp has whole seconds).
    assert!(
        deleted_at.elapsed() >= Duration::from_secs(3),
        "released after {:?}, before the deadline",
        deleted_at.elapsed()
    );
    h.wait_event("acme", "WebhookOrphaned").await;
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1, "left behind at Seshn");
    assert!(
        h.metrics
            .encode()
            .contains("seshn_segment_operator_webhooks_orphaned_total 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_seshn_call_happens_inside_a_retry_after_window() {
    let h = Harness::start().await;
    h.seshn.inject(
        Some(Op::Create),
        Fault::RateLimited {
            retry_after_secs: Some(5),
        },
    );
    h.create(&h.manifest("acme")).await;
    h.make_available("acme").await;
    // The 429 writes a RateLimited condition; that write wakes the controller at once, which
    // must not make it call Seshn before the 5 s are over.
    h.wait_condition("acme", "WebhookSynced", "False", Some("RateLimited"))
        .await;
    h.wait_condition("acme", "Ready", "True", None).await;
    let timed = h.seshn.timed_calls();
    let limited_at = timed
        .iter()
        .find(|(_, c)| c.status == 429)
        .map(|(at, _)| *at)
        .expect("the 429 was answered");
    let after: Vec<_> = timed.iter().filter(|(at, _)| *at > limited_at).collect();
    assert!(!after.is_empty(), "{timed:?}");
    for (at, call) in after {
        assert!(
            at.duration_since(limited_at) >= Duration::from_secs(5),
            "{call:?} {:?} after the 429 that asked for 5 s",
            at.duration_since(limited_at)
        );
    }
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_at_seshn_recovers_on_resync_once_accepted_again_without_a_hot_loop() {
    let h = Harness::start_with(|c| c.resync_interval = Duration::from_secs(3)).await;
    h.seshn.set_key_valid(API_KEY, false);
    h.create(&h.manifest("acme")).await;
    h.make_available("acme").await;
    h.wait_condition("acme", "WebhookSynced", "False", Some("Unauthorized"))
        .await;
    // Terminal, so no backoff loop: one attempt per resync interval (the first ones aside,
    // which our own status writes trigger).
    let rejected = |h: &Harness| {
        h.seshn
            .timed_calls()
            .into_iter()
            .filter(|(_, c)| c.status == 401)
            .map(|(at, _)| at)
            .collect::<Vec<_>>()
    };
    let settled = rejected(&h).len();
    let later = eventually("two attempts on resync", DEADLINE, || async {
        let all = rejected(&h);
        (all.len() >= settled + 3).then_some(all)
    })
    .await;
    for pair in later[settled..].windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(gap >= Duration::from_millis(2500), "attempts {gap:?} apart");
    }
    assert!(h.seshn.webhooks(API_KEY).is_empty());
    // Nothing changes in Kubernetes; Seshn accepts the key again: the resync recovers.
    h.seshn.set_key_valid(API_KEY, true);
    h.wait_condition("acme", "Ready", "True", None).await;
    assert_eq!(h.seshn.webhooks(API_KEY).len(), 1);
}
