#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Delivery through Segment's failure modes, against the fake sink over real HTTP: 500s,
//! 429 with Retry-After, slow answers, dropped connections, an outage, a 400 rejection and
//! oversize messages. Every event answered 2xx must arrive; duplicates only with equal ids.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{WRITE_KEY, booking, client, config, eventually, metric, post_signed};
use fakes::segment_sink::{Fault, SegmentSink};

/// Every duplicate delivery carries the same messageId and identical content.
fn assert_duplicates_are_identical(sink: &SegmentSink) {
    let mut by_id: HashMap<String, serde_json::Value> = HashMap::new();
    for message in sink.messages() {
        let id = message["messageId"].as_str().unwrap().to_owned();
        if let Some(first) = by_id.get(&id) {
            assert_eq!(first, &message, "duplicate {id} differs");
        } else {
            by_id.insert(id, message);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_through_faults() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    for fault in [
        Fault::Status(500),
        Fault::RateLimit {
            retry_after_secs: 1,
        },
        Fault::DropConnection,
        Fault::Status(503),
        // Longer than the client's 2 s timeout: stored by the sink but reported as a failure,
        // so the batch is resent (a duplicate with the same messageIds).
        Fault::Delay(Duration::from_millis(2500)),
        Fault::Status(502),
        Fault::Status(408),
        Fault::Delay(Duration::from_millis(300)),
    ] {
        sink.push_fault(fault);
    }
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(config(&sink.url(), dir.path())).await;
    let addr = running.addr();
    let http = client();
    let n = 200;
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            for i in (chunk..n).step_by(8) {
                assert_eq!(
                    post_signed(&http, addr, "booking.created", &booking(i))
                        .await
                        .unwrap(),
                    200
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        sink.wait_for_unique_messages(2 * n, Duration::from_secs(60))
            .await,
        "only {} of {} arrived",
        sink.unique_messages().len(),
        2 * n
    );
    assert_eq!(sink.pending_faults(), 0);
    assert_duplicates_are_identical(&sink);
    let stats = sink.stats();
    assert_eq!(stats.rejected_400, 0);
    assert_eq!(
        stats.invalid_messages, 0,
        "every message is valid for Segment"
    );
    // Requests carried Basic auth with the write key, and the body holds sentAt and writeKey.
    let request = sink
        .recorded_requests()
        .into_iter()
        .find(|r| r.status == Some(200))
        .unwrap();
    assert_eq!(request.path, "/v1/batch");
    assert!(request.authorization.unwrap().starts_with("Basic "));
    let body = request.body.unwrap();
    assert_eq!(body["writeKey"], WRITE_KEY);
    assert!(body["sentAt"].as_str().unwrap().ends_with('Z'));
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&http, addr, "seshn_forwarder_spool_depth").await == Some(0.0)
        })
        .await
    );
    let failed = metric(
        &http,
        addr,
        "seshn_forwarder_delivery_attempts_failed_total",
    )
    .await
    .unwrap();
    assert!(failed >= 7.0, "retries counted: {failed}");
    running.shutdown();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_recovery_keeps_order_and_ids() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    sink.set_outage(true);
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(config(&sink.url(), dir.path())).await;
    let addr = running.addr();
    let http = client();
    for i in 0..50 {
        assert_eq!(
            post_signed(&http, addr, "payment.succeeded", &booking(i))
                .await
                .unwrap(),
            200
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            sink.stats().outage_rejections >= 2
        })
        .await
    );
    assert!(sink.unique_messages().is_empty());
    sink.set_outage(false);
    assert!(
        sink.wait_for_unique_messages(100, Duration::from_secs(60))
            .await
    );
    // Delivered in arrival order.
    let order: Vec<String> = sink
        .unique_messages()
        .iter()
        .filter(|m| m["type"] == "track")
        .map(|m| m["properties"]["bookingId"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..50).map(|i| format!("bk_{i}")).collect();
    assert_eq!(order, expected);
    running.shutdown();
    running.wait().await.unwrap();
}

/// A booking whose track message Segment refuses (the fake refuses any batch holding
/// "bk_refused", as Segment answers 400 to a whole batch for one malformed message).
fn refused_booking() -> String {
    r#"{"id":"bk_refused","contact":{"id":"ct_refused","name":"R"}}"#.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_is_isolated_and_only_it_is_dead_lettered() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    sink.refuse_messages_containing("bk_refused");
    // Everything piles up in the spool first, so it leaves in one batch of 41 messages.
    sink.set_outage(true);
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(config(&sink.url(), dir.path())).await;
    let addr = running.addr();
    let http = client();
    for i in 0..20 {
        if i == 13 {
            assert_eq!(
                post_signed(&http, addr, "booking.created", &refused_booking())
                    .await
                    .unwrap(),
                200
            );
        }
        assert_eq!(
            post_signed(&http, addr, "booking.created", &booking(i))
                .await
                .unwrap(),
            200
        );
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            sink.stats().outage_rejections >= 1
        })
        .await
    );
    sink.set_outage(false);
    // 40 good messages + the refused booking's identify.
    assert!(
        sink.wait_for_unique_messages(41, Duration::from_secs(30))
            .await,
        "only {} arrived",
        sink.unique_messages().len()
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(
                &http,
                addr,
                r#"seshn_forwarder_dead_letters_total{reason="rejected"}"#,
            )
            .await
                == Some(1.0)
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&http, addr, "seshn_forwarder_spool_depth").await == Some(0.0)
        })
        .await
    );
    let messages = sink.unique_messages();
    assert_eq!(messages.len(), 41);
    assert!(
        messages
            .iter()
            .all(|m| !m.to_string().contains("bk_refused"))
    );
    // Accepted halves go out left to right: arrival order is kept.
    let order: Vec<String> = messages
        .iter()
        .filter(|m| m["type"] == "track")
        .map(|m| m["properties"]["bookingId"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("bk_{i}")).collect();
    assert_eq!(order, expected);
    assert!(
        sink.stats().rejected_400 >= 2,
        "the bisection resent halves"
    );
    let state = std::sync::Arc::clone(running.state());
    running.shutdown();
    running.wait().await.unwrap();
    if let forwarder::http::Sink::Spooled(spool) = &state.sink {
        assert_eq!(spool.dead_letter_count().unwrap(), 1);
    }
    // The last handle closes the store, so the dump may open it.
    drop(state);
    // The dead letter holds the exact refused message.
    let mut out = Vec::new();
    forwarder::spool::dump_dead_letters(dir.path(), &mut out).unwrap();
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8(out).unwrap().trim()).unwrap();
    assert_eq!(line["reason"], "rejected");
    assert_eq!(line["message"]["properties"]["bookingId"], "bk_refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_400_for_a_batch_loses_nothing_and_oversize_is_dead_lettered() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    // One 400 for the first batch: the halves are resent and accepted.
    sink.push_fault(Fault::Status(400));
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(config(&sink.url(), dir.path())).await;
    let addr = running.addr();
    let http = client();
    assert_eq!(
        post_signed(&http, addr, "booking.created", &booking(1))
            .await
            .unwrap(),
        200
    );
    assert!(
        sink.wait_for_unique_messages(2, Duration::from_secs(20))
            .await
    );
    // An event whose track message is over 32 KB: answered 200 (retrying cannot help),
    // its track is dead-lettered at once, its small identify is delivered.
    let huge = format!(
        r#"{{"id":"{}","contact":{{"id":"ct_big","name":"Big"}}}}"#,
        "x".repeat(40 * 1024)
    );
    assert_eq!(
        post_signed(&http, addr, "booking.created", &huge)
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        post_signed(&http, addr, "booking.created", &booking(2))
            .await
            .unwrap(),
        200
    );
    assert!(
        sink.wait_for_unique_messages(5, Duration::from_secs(20))
            .await
    );
    assert_eq!(
        metric(
            &http,
            addr,
            r#"seshn_forwarder_dead_letters_total{reason="oversize"}"#
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &http,
            addr,
            r#"seshn_forwarder_dead_letters_total{reason="rejected"}"#
        )
        .await,
        None
    );
    assert_eq!(
        metric(&http, addr, "seshn_forwarder_dead_letter_messages").await,
        Some(1.0)
    );
    let state = std::sync::Arc::clone(running.state());
    running.shutdown();
    running.wait().await.unwrap();
    let messages = sink.unique_messages();
    assert_eq!(
        messages.len(),
        5,
        "booking 1, the huge one's identify, booking 2"
    );
    assert!(messages.iter().all(|m| m.to_string().len() < 32 * 1024));
    assert_eq!(sink.stats().rejected_400, 0);
    if let forwarder::http::Sink::Spooled(spool) = &state.sink {
        assert_eq!(spool.dead_letter_count().unwrap(), 1);
    }
}

/// A wrong or rotated write key (401), a WAF (403), a wrong path (404) or a redirect must never
/// empty the spool into dead letters: the events stay, delivery is reported blocked, and it
/// resumes once the configuration is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_block_delivery_and_keep_every_event() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    sink.fail_all_with(Some(401));
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(config(&sink.url(), dir.path())).await;
    let addr = running.addr();
    let http = client();
    for i in 0..10 {
        assert_eq!(
            post_signed(&http, addr, "booking.created", &booking(i))
                .await
                .unwrap(),
            200
        );
    }
    let blocked_by = |status: f64| {
        let http = http.clone();
        async move {
            metric(&http, addr, "seshn_forwarder_delivery_blocked").await == Some(1.0)
                && metric(&http, addr, "seshn_forwarder_delivery_blocked_status").await
                    == Some(status)
        }
    };
    assert!(eventually(Duration::from_secs(10), || blocked_by(401.0)).await);
    for status in [403, 404, 302, 501] {
        sink.fail_all_with(Some(status));
        assert!(
            eventually(Duration::from_secs(10), || blocked_by(f64::from(status))).await,
            "{status}"
        );
    }
    assert!(
        metric(
            &http,
            addr,
            r#"seshn_forwarder_batches_total{result="blocked"}"#
        )
        .await
        .unwrap()
            >= 5.0
    );
    assert_eq!(
        metric(&http, addr, "seshn_forwarder_spool_depth").await,
        Some(20.0)
    );
    assert_eq!(
        metric(&http, addr, "seshn_forwarder_dead_letter_messages").await,
        Some(0.0)
    );
    assert!(sink.unique_messages().is_empty());
    // Fixed: everything arrives, the gauge goes back to 0.
    sink.fail_all_with(None);
    assert!(
        sink.wait_for_unique_messages(20, Duration::from_secs(30))
            .await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&http, addr, "seshn_forwarder_delivery_blocked").await == Some(0.0)
                && metric(&http, addr, "seshn_forwarder_delivery_blocked_status").await == Some(0.0)
        })
        .await
    );
    assert_duplicates_are_identical(&sink);
    running.shutdown();
    running.wait().await.unwrap();
}

/// A spooled record that does not read back as JSON (it should never happen: the store is
/// checksummed) is dead-lettered as `corrupt` with its exact bytes, never sent, and the good
/// messages around it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_spool_records_are_dead_lettered_as_corrupt_with_their_bytes() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&sink.url(), dir.path());
    // Write the spool directly, as an earlier run would have left it.
    {
        let spool =
            forwarder::spool::Spool::open(&forwarder::spool::SpoolOptions::small(dir.path()))
                .unwrap();
        let good =
            |id: &str| format!(r#"{{"type":"track","event":"E","userId":"u","messageId":"{id}"}}"#);
        let messages = [
            good("before"),
            "{\"type\":\"track\",".to_owned(),
            good("after"),
        ];
        spool
            .append(&messages, std::time::SystemTime::now())
            .await
            .unwrap();
        spool.close();
    }
    let running = common::start(cfg).await;
    let addr = running.addr();
    let http = client();
    assert!(
        sink.wait_for_unique_messages(2, Duration::from_secs(20))
            .await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(
                &http,
                addr,
                r#"seshn_forwarder_dead_letters_total{reason="corrupt"}"#,
            )
            .await
                == Some(1.0)
                && metric(&http, addr, "seshn_forwarder_dead_letter_messages").await == Some(1.0)
        })
        .await
    );
    let ids: Vec<String> = sink
        .unique_messages()
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["before", "after"]);
    let state = std::sync::Arc::clone(running.state());
    running.shutdown();
    running.wait().await.unwrap();
    drop(state);
    let mut out = Vec::new();
    forwarder::spool::dump_dead_letters(dir.path(), &mut out).unwrap();
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8(out).unwrap().trim()).unwrap();
    assert_eq!(line["reason"], "corrupt");
    assert_eq!(line["text"], "{\"type\":\"track\",");
}

/// Shutdown that begins while a batch is out does not cut the attempt short and send the batch
/// again: the sink got it once, and it is not counted as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_an_attempt_lets_it_finish_instead_of_sending_twice() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    // Under the client's 2 s timeout: a slow success.
    sink.push_fault(Fault::Delay(Duration::from_millis(1500)));
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(config(&sink.url(), dir.path())).await;
    let addr = running.addr();
    let http = client();
    assert_eq!(
        post_signed(&http, addr, "booking.created", &booking(1))
            .await
            .unwrap(),
        200
    );
    assert!(eventually(Duration::from_secs(10), || async { sink.requests() == 1 }).await);
    running.shutdown();
    running.wait().await.unwrap();
    assert_eq!(sink.requests(), 1, "the batch was sent again");
    let messages = sink.messages();
    assert!(!messages.is_empty());
    assert_eq!(messages.len(), sink.unique_messages().len());
    assert_eq!(sink.stats().faults_served, 1);
}
