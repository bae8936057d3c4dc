#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Segment client against the in-repo fake Segment sink, over real HTTP on 127.0.0.1.

use std::time::Duration;

use base64::Engine as _;
use fakes::segment_sink::{Fault, SegmentSink};
use segment::{
    Client, ClientConfig, DeliveryError, Destination, RawMessage, RetryPolicy, SendError,
    send_with_retries,
};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;

const KEY: &str = "wk_test_0123456789abcdef";
/// Generous bound for "should have finished long ago" on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(20);

fn message(id: &str) -> RawMessage {
    let v = serde_json::json!({
        "type": "track",
        "event": "Seshn booking.created",
        "userId": "contact_1",
        "messageId": id,
        "timestamp": "2026-01-01T10:00:00.000Z",
        "properties": {"bookingId": "bk_1", "seats": 2, "note": "héllo ✓"}
    });
    RawValue::from_string(v.to_string()).unwrap()
}

fn client_for(sink: &SegmentSink, timeout: Duration) -> Client {
    let mut cfg = ClientConfig::new(sink.url().parse().unwrap(), KEY);
    cfg.request_timeout = timeout;
    Client::new(cfg).unwrap()
}

/// Short waits so retry tests stay quick.
fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(50),
        max: Duration::from_millis(200),
    }
}

fn is_rfc3339_millis(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[tokio::test]
async fn body_shape_headers_and_auth() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    let client = client_for(&sink, Duration::from_secs(10));
    let batch = vec![message("m-1"), message("m-2")];
    client.send(&batch).await.unwrap();

    let reqs = sink.recorded_requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/batch");
    assert_eq!(r.status, Some(200));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    let expected_auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{KEY}:"))
    );
    assert_eq!(r.authorization.as_deref(), Some(expected_auth.as_str()));
    assert!(
        r.user_agent
            .as_deref()
            .unwrap()
            .starts_with("seshn-segment/")
    );

    let body = r.body.as_ref().unwrap().as_object().unwrap();
    let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["batch", "sentAt", "writeKey"]);
    assert_eq!(body["writeKey"], KEY);
    let sent_at = body["sentAt"].as_str().unwrap();
    assert!(is_rfc3339_millis(sent_at), "{sent_at}");
    let sent: Vec<Value> = batch
        .iter()
        .map(|m| serde_json::from_str(m.get()).unwrap())
        .collect();
    assert_eq!(body["batch"].as_array().unwrap(), &sent);

    // The sink (Segment's rules) accepted and stored both, byte-for-byte equal.
    assert_eq!(sink.messages(), sent);
    let stats = sink.stats();
    assert_eq!(stats.accepted_messages, 2);
    assert_eq!(stats.bad_auth, 0);
    assert_eq!(stats.dropped_messages, 0);
}

#[tokio::test]
async fn server_errors_are_retried_with_a_fresh_sent_at() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    for status in [500, 502, 503, 504] {
        sink.push_fault(Fault::Status(status));
    }
    let client = client_for(&sink, Duration::from_secs(10));
    let attempts = send_with_retries(&client, &[message("m-1")], &fast_policy(), None)
        .await
        .unwrap();
    assert_eq!(attempts, 5);
    assert_eq!(sink.requests(), 5);
    assert_eq!(sink.stats().faults_served, 4);
    assert_eq!(sink.unique_messages().len(), 1);

    let sent_ats: Vec<String> = sink
        .recorded_requests()
        .iter()
        .map(|r| {
            r.body.as_ref().unwrap()["sentAt"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(sent_ats.len(), 5);
    // Each retry waits at least 25 ms, so every attempt carries a later sentAt.
    for pair in sent_ats.windows(2) {
        assert!(pair[0] < pair[1], "sentAt not fresh: {sent_ats:?}");
    }
}

#[tokio::test]
async fn rate_limit_honours_retry_after() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    sink.push_fault(Fault::RateLimit {
        retry_after_secs: 1,
    });
    let client = client_for(&sink, Duration::from_secs(10));

    // One attempt shows the classification and the parsed header.
    let err = client.send(&[message("m-1")]).await.unwrap_err();
    assert_eq!(
        err,
        SendError::Retryable {
            status: Some(429),
            retry_after: Some(Duration::from_secs(1)),
            reason: "HTTP 429 Too Many Requests".to_owned(),
        }
    );

    // The retry loop waits at least Retry-After, far longer than the 50 ms backoff base.
    sink.push_fault(Fault::RateLimit {
        retry_after_secs: 1,
    });
    let started = Instant::now();
    let attempts = send_with_retries(&client, &[message("m-2")], &fast_policy(), None)
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(attempts, 2);
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(1) + SLACK, "waited {waited:?}");
    assert_eq!(sink.unique_messages().len(), 1);
}

#[tokio::test]
async fn refused_content_is_rejected_after_one_attempt() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    let client = client_for(&sink, Duration::from_secs(10));
    for status in [400, 413] {
        let before = sink.requests();
        sink.push_fault(Fault::Status(status));
        let err = send_with_retries(&client, &[message("m-1")], &fast_policy(), None)
            .await
            .unwrap_err();
        match &err {
            DeliveryError::Rejected {
                status: got,
                attempts,
                ..
            } => {
                assert_eq!(*got, status);
                assert_eq!(*attempts, 1);
            }
            other @ DeliveryError::DeadlineExceeded { .. } => {
                panic!("{status}: expected Rejected, got {other:?}")
            }
        }
        assert_eq!(sink.requests(), before + 1, "{status} was retried");
        assert!(!err.to_string().contains(KEY));
    }
    assert!(sink.messages().is_empty());
}

/// A wrong or rotated write key, a wrong path, a WAF or a redirect says nothing about the
/// content: the batch must be kept and retried (never dead-lettered), and every such answer is
/// reported to the observer so the caller can raise its "delivery blocked" gauge.
#[tokio::test]
async fn configuration_statuses_are_retried_not_rejected() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    let client = client_for(&sink, Duration::from_secs(10));
    for status in [401, 403, 404, 405, 410, 422, 501, 505, 301, 302, 307] {
        let before = sink.requests();
        sink.push_fault(Fault::Status(status));
        sink.push_fault(Fault::Status(status));
        let mut seen = Vec::new();
        let attempts = segment::send_with_retries_observed(
            &client,
            &[message(&format!("m-{status}"))],
            &fast_policy(),
            None,
            |outcome| seen.push(outcome.map_err(|e| (e.is_blocked(), e.status(), e.to_string()))),
        )
        .await
        .unwrap();
        assert_eq!(attempts, 3, "{status}");
        assert_eq!(sink.requests(), before + 3, "{status}");
        assert_eq!(seen.len(), 3, "{status}");
        for failure in &seen[..2] {
            let (blocked, got, text) = failure.clone().unwrap_err();
            assert!(blocked, "{status}");
            assert_eq!(got, Some(status));
            assert!(!text.contains(KEY), "{text}");
        }
        assert_eq!(seen[2], Ok(()));
    }
    // With a deadline, a status that stays wrong ends in DeadlineExceeded (the caller keeps
    // the events), never in Rejected.
    for _ in 0..100 {
        sink.push_fault(Fault::Status(401));
    }
    let started = Instant::now();
    let err = send_with_retries(
        &client,
        &[message("m-deadline")],
        &fast_policy(),
        Some(started + Duration::from_millis(800)),
    )
    .await
    .unwrap_err();
    match err {
        DeliveryError::DeadlineExceeded { attempts, last } => {
            assert!(attempts >= 2, "{attempts}");
            assert!(last.is_blocked(), "{last:?}");
            assert_eq!(last.status(), Some(401));
        }
        other @ DeliveryError::Rejected { .. } => {
            panic!("expected DeadlineExceeded, got {other:?}")
        }
    }
    assert_eq!(sink.unique_messages().len(), 11);
}

#[tokio::test]
async fn a_real_400_for_an_oversize_message_is_rejected() {
    // Bypassing the batch builder, a message over 32 KB reaches the sink, which answers 400
    // like Segment: the whole batch is refused, nothing is stored, and it is not retried.
    let sink = SegmentSink::start(KEY).await.unwrap();
    let client = client_for(&sink, Duration::from_secs(10));
    let big = serde_json::json!({
        "type": "track", "event": "E", "userId": "u", "messageId": "big",
        "properties": {"blob": "x".repeat(33 * 1024)}
    });
    let batch = vec![
        message("m-1"),
        RawValue::from_string(big.to_string()).unwrap(),
    ];
    let err = send_with_retries(&client, &batch, &fast_policy(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DeliveryError::Rejected {
                status: 400,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(sink.stats().rejected_400, 1);
    assert!(sink.messages().is_empty());
    // The error text carries neither the key nor message content.
    let text = format!("{err} {err:?}");
    assert!(!text.contains(KEY) && !text.contains("xxxx") && !text.contains("contact_1"));
}

#[tokio::test]
async fn dropped_connection_is_retried() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    sink.push_fault(Fault::DropConnection);
    let client = client_for(&sink, Duration::from_secs(10));

    let err = client.send(&[message("m-1")]).await.unwrap_err();
    assert!(
        matches!(err, SendError::Retryable { status: None, .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains(KEY));

    sink.push_fault(Fault::DropConnection);
    let attempts = send_with_retries(&client, &[message("m-2")], &fast_policy(), None)
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(sink.stats().faults_served, 2);
    let ids: Vec<Value> = sink
        .messages()
        .iter()
        .map(|m| m["messageId"].clone())
        .collect();
    assert_eq!(ids, ["m-2"]);
}

#[tokio::test]
async fn slow_answer_beyond_the_timeout_is_retried() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    sink.push_fault(Fault::Delay(Duration::from_secs(4)));
    let client = client_for(&sink, Duration::from_millis(800));
    let started = Instant::now();
    let attempts = send_with_retries(&client, &[message("m-1")], &fast_policy(), None)
        .await
        .unwrap();
    assert!(attempts >= 2, "attempts {attempts}");
    assert!(started.elapsed() >= Duration::from_millis(800));
    // The slow attempt is processed later too: a duplicate with the same messageId, which
    // Segment's dedupe collapses.
    assert!(sink.wait_for_messages(2, SLACK).await);
    assert_eq!(sink.unique_messages().len(), 1);
    assert!(sink.messages().iter().all(|m| m["messageId"] == "m-1"));
}

#[tokio::test]
async fn deadline_stops_retrying_during_an_outage() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    sink.set_outage(true);
    let client = client_for(&sink, Duration::from_secs(10));
    let budget = Duration::from_secs(3);
    let started = Instant::now();
    let err = send_with_retries(
        &client,
        &[message("m-1")],
        &fast_policy(),
        Some(started + budget),
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    match &err {
        DeliveryError::DeadlineExceeded { attempts, last } => {
            assert!(*attempts >= 2, "{attempts}");
            assert_eq!(last.status(), Some(503));
        }
        other @ DeliveryError::Rejected { .. } => {
            panic!("expected DeadlineExceeded, got {other:?}")
        }
    }
    assert!(took <= budget + SLACK, "took {took:?}");
    assert!(sink.stats().outage_rejections >= 2);
    assert!(sink.messages().is_empty());

    // Released: delivery resumes.
    sink.set_outage(false);
    assert_eq!(
        send_with_retries(&client, &[message("m-1")], &fast_policy(), None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn deadline_cuts_a_hanging_attempt() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    sink.push_fault(Fault::Delay(Duration::from_secs(30)));
    let client = client_for(&sink, Duration::from_secs(60));
    let started = Instant::now();
    let err = send_with_retries(
        &client,
        &[message("m-1")],
        &fast_policy(),
        Some(started + Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, DeliveryError::DeadlineExceeded { attempts: 1, .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connection_refused_is_retryable_and_says_nothing_secret() {
    // A port that was just free: nothing listens there any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dest: Destination = format!("http://127.0.0.1:{port}").parse().unwrap();
    let client = Client::new(ClientConfig::new(dest, KEY)).unwrap();
    let err = client.send(&[message("m-1")]).await.unwrap_err();
    assert!(
        matches!(
            err,
            SendError::Retryable {
                status: None,
                retry_after: None,
                ..
            }
        ),
        "{err:?}"
    );
    let text = format!("{err} {err:?}");
    assert!(!text.contains(KEY) && !text.contains("contact_1"), "{text}");
}

#[tokio::test]
async fn file_destination_appends_one_json_line_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("batches.jsonl");
    let dest: Destination = format!("file:{}", path.display()).parse().unwrap();
    let client = Client::new(ClientConfig::new(dest, KEY)).unwrap();

    // Concurrent batches must never interleave inside a line.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let batch: Vec<RawMessage> = (0..3).map(|j| message(&format!("m-{i}-{j}"))).collect();
            client.send(&batch).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(KEY),
        "the write key must not be written to files"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 16);
    let mut ids = std::collections::BTreeSet::new();
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(is_rfc3339_millis(v["sentAt"].as_str().unwrap()));
        assert!(v.get("writeKey").is_none());
        for m in v["batch"].as_array().unwrap() {
            ids.insert(m["messageId"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), 48);
}

#[tokio::test]
async fn file_destination_in_a_missing_directory_is_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let dest: Destination = format!("file:{}/no/such/dir/x.jsonl", dir.path().display())
        .parse()
        .unwrap();
    let client = Client::new(ClientConfig::new(dest, KEY)).unwrap();
    let err = client.send(&[message("m-1")]).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

/// Marks the child process of `stdout_destination_writes_json_lines`.
const STDOUT_CHILD_ENV: &str = "SEGMENT_TEST_STDOUT_CHILD";

/// Sends two batches to stdout. Run on its own it checks that succeeds; run as a child process
/// by the test below, its stdout is inspected.
#[tokio::test]
async fn stdout_destination_sends() {
    let client = Client::new(ClientConfig::new(Destination::Stdout, KEY)).unwrap();
    let tag = std::env::var(STDOUT_CHILD_ENV).unwrap_or_else(|_| "standalone".to_owned());
    client.send(&[message(&format!("{tag}-1"))]).await.unwrap();
    client
        .send(&[message(&format!("{tag}-2")), message(&format!("{tag}-3"))])
        .await
        .unwrap();
}

#[test]
fn stdout_destination_writes_json_lines() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "stdout_destination_sends",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(STDOUT_CHILD_ENV, "child")
        .output()
        .unwrap();
    assert!(out.status.success(), "child failed: {out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains(KEY), "the write key must not be printed");
    let batches: Vec<Value> = stdout
        .lines()
        // libtest may print its "test ... " prefix on the same line as the first batch.
        .filter_map(|l| l.find(r#"{"batch":"#).map(|at| &l[at..]))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(batches.len(), 2, "{stdout}");
    let ids: Vec<&str> = batches
        .iter()
        .flat_map(|b| b["batch"].as_array().unwrap())
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["child-1", "child-2", "child-3"]);
    assert!(
        batches
            .iter()
            .all(|b| is_rfc3339_millis(b["sentAt"].as_str().unwrap()))
    );
}

#[tokio::test]
async fn builder_batches_are_accepted_by_the_sink_at_the_limits() {
    // Fill batches to the byte limit through the builder and deliver them: the sink, applying
    // Segment's 500 KB / 32 KB / 2,500 rules, must accept every one.
    let sink = SegmentSink::start(KEY).await.unwrap();
    let client = client_for(&sink, Duration::from_secs(30));
    let mut builder = client.batch_builder(segment::Limits::default());
    let mut sent = 0usize;
    let mut batches = 0usize;
    for i in 0..60 {
        let v = serde_json::json!({
            "type": "track", "event": "E", "userId": "u", "messageId": format!("big-{i}"),
            "properties": {"blob": "y".repeat(32 * 1024 - 120)}
        });
        let m = RawValue::from_string(v.to_string()).unwrap();
        assert!(m.get().len() <= 32 * 1024);
        if let Err(segment::PushError::Full(m)) = builder.try_push(m) {
            assert!(builder.body_bytes() <= 500_000);
            let batch = builder.take();
            sent += batch.len();
            batches += 1;
            client.send(&batch).await.unwrap();
            builder.try_push(m).unwrap();
        }
    }
    let rest = builder.take();
    sent += rest.len();
    client.send(&rest).await.unwrap();
    assert_eq!(sent, 60);
    assert!(batches >= 3);
    assert_eq!(sink.stats().rejected_400, 0);
    assert_eq!(sink.unique_messages().len(), 60);
}

#[tokio::test]
async fn validate_message_agrees_with_the_sink() {
    // Whatever validate_message accepts, Segment's rules (as the sink applies them) keep, and
    // whatever it refuses would be dropped silently behind a 200.
    let sink = SegmentSink::start(KEY).await.unwrap();
    let client = client_for(&sink, Duration::from_secs(10));
    let cases = [
        serde_json::json!({"type":"track","event":"E","messageId":"ok-1","userId":"u"}),
        serde_json::json!({"type":"identify","messageId":"ok-2","anonymousId":"a","traits":{}}),
        serde_json::json!({"type":"page","messageId":"ok-3","userId":5}),
        serde_json::json!({"type":"track","messageId":"bad-1","userId":"u"}),
        serde_json::json!({"type":"track","event":"E","messageId":"bad-2"}),
        serde_json::json!({"type":"nope","event":"E","messageId":"bad-3","userId":"u"}),
        serde_json::json!({"type":"track","event":"E","messageId":"x".repeat(100),"userId":"u"}),
        serde_json::json!({"type":"track","event":"E","userId":"u"}),
        serde_json::json!(["not", "an", "object"]),
    ];
    let mut expected = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let raw = RawValue::from_string(case.to_string()).unwrap();
        let valid = segment::validate_message(&raw).is_ok();
        assert_eq!(valid, i < 3, "case {i}");
        client.send(&[raw]).await.unwrap();
        if valid {
            expected.push(case.clone());
        }
    }
    assert_eq!(sink.messages(), expected);
    assert_eq!(sink.stats().invalid_messages, cases.len() - 3);
}
