#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The HTTP front over real loopback HTTP: the bad-input matrix, signature forms and rotation,
//! health/readiness/metrics, the `/hooks/{token}` path, a full spool, and the synchronous mode.

mod common;

use std::time::Duration;

use common::{OLD_SECRET, SECRET, WRITE_KEY, booking, client, config, eventually, metric, sign};
use fakes::segment_sink::{Fault, SegmentSink};
use forwarder::app::DeliveryMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = client.post(url).body(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.unwrap()
}

/// Writes `head` on a fresh connection and reads the answer (until the server closes, or 10 s).
async fn raw_exchange(addr: std::net::SocketAddr, head: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded: stop at the end of the head, at close, or after 10 s.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..1000 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// (name, headers, body, expected status).
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_matrix_and_signature_forms() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(config(&sink.url(), dir.path())).await;
    let addr = running.addr();
    let http = client();
    let url = format!("http://{addr}/api/webhooks/seshn");

    let good = booking(1);
    let good_sig = sign(SECRET, good.as_bytes());
    let bare_upper = good_sig.trim_start_matches("sha256=").to_uppercase();
    let old_sig = sign(OLD_SECRET, good.as_bytes());
    let unsigned = r#"{"id":"UNSIGNED","contact":{"id":"UNSIGNED"}}"#;
    let other_sig = sign("whsec_somebody_else", unsigned.as_bytes());
    let not_object = "[1,2,3]";
    let not_json = "{not json";
    let big = format!(r#"{{"id":"{}"}}"#, "x".repeat((1 << 20) + 10));
    let big_sig = sign(SECRET, big.as_bytes());
    let ev = ("x-webhook-event", "booking.created");
    let sig_not_object = sign(SECRET, not_object.as_bytes());
    let sig_not_json = sign(SECRET, not_json.as_bytes());
    let sig_empty = sign(SECRET, b"");

    let cases: Vec<Case> = vec![
        ("no signature", vec![ev], unsigned.into(), 401),
        (
            "garbage signature",
            vec![ev, ("x-webhook-signature", "sha256=zzzz")],
            unsigned.into(),
            401,
        ),
        (
            "wrong secret",
            vec![ev, ("x-webhook-signature", &other_sig)],
            unsigned.into(),
            401,
        ),
        (
            "signature of another body",
            vec![ev, ("x-webhook-signature", &good_sig)],
            unsigned.into(),
            401,
        ),
        (
            "missing event header",
            vec![("x-webhook-signature", &good_sig)],
            good.clone().into(),
            400,
        ),
        (
            "empty event header",
            vec![("x-webhook-event", ""), ("x-webhook-signature", &good_sig)],
            good.clone().into(),
            400,
        ),
        (
            "body is an array",
            vec![ev, ("x-webhook-signature", &sig_not_object)],
            not_object.into(),
            400,
        ),
        (
            "body is not JSON",
            vec![ev, ("x-webhook-signature", &sig_not_json)],
            not_json.into(),
            400,
        ),
        (
            "empty body",
            vec![ev, ("x-webhook-signature", &sig_empty)],
            Vec::new(),
            400,
        ),
        (
            "prefixed lowercase",
            vec![ev, ("x-webhook-signature", &good_sig)],
            good.clone().into(),
            200,
        ),
        (
            "bare uppercase hex",
            vec![ev, ("x-webhook-signature", &bare_upper)],
            good.clone().into(),
            200,
        ),
        (
            "previous secret (rotation)",
            vec![ev, ("x-webhook-signature", &old_sig)],
            good.clone().into(),
            200,
        ),
    ];
    for (name, headers, body, expected) in cases {
        let resp = post(&http, &url, &headers, body).await;
        assert_eq!(resp.status().as_u16(), expected, "{name}");
    }

    // The operator's per-bridge path.
    let resp = post(
        &http,
        &format!("http://{addr}/hooks/0b9e7c1a-uid"),
        &[ev, ("x-webhook-signature", &good_sig)],
        good.clone().into(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    // ... also behind a public URL whose path prefix the gateway does not strip.
    let prefixed = format!("http://{addr}/acme-eu/hooks/0b9e7c1a-uid");
    let resp = post(
        &http,
        &prefixed,
        &[ev, ("x-webhook-signature", &good_sig)],
        good.clone().into(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let resp = post(&http, &prefixed, &[ev], good.clone().into()).await;
    assert_eq!(
        resp.status().as_u16(),
        401,
        "prefixed paths are verified too"
    );
    assert_eq!(
        http.get(&prefixed).send().await.unwrap().status().as_u16(),
        405
    );
    let status = http
        .post(format!("http://{addr}/acme-eu/hooks/"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 404);

    // Wrong methods and paths; a 405 names the allowed method, on every webhook path.
    for target in [
        url.clone(),
        prefixed.clone(),
        format!("http://{addr}/hooks/x"),
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::PUT] {
            let resp = http.request(method.clone(), &target).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 405, "{method} {target}");
            assert_eq!(
                resp.headers().get("allow").map(|v| v.to_str().unwrap()),
                Some("POST"),
                "{method} {target}"
            );
        }
    }

    // A declared body over the limit is refused before a byte of it is read: headers only.
    let answer = raw_exchange(
        addr,
        &format!(
            "POST /api/webhooks/seshn HTTP/1.1\r\nhost: x\r\nx-webhook-event: booking.created\r\n\
             x-webhook-signature: {big_sig}\r\ncontent-length: {}\r\n\r\n",
            big.len()
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let status = http
        .post(format!("http://{addr}/nope"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 404);
    for path in ["healthz", "readyz", "metrics"] {
        let status = http
            .get(format!("http://{addr}/{path}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 200, "{path}");
    }

    // A chunked body over the limit (no Content-Length) is cut off while reading.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/webhooks/seshn HTTP/1.1\r\nhost: x\r\nx-webhook-event: booking.created\r\n\
         x-webhook-signature: {big_sig}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..20 {
        let header = format!("{:x}\r\n", chunk.len());
        if stream.write_all(header.as_bytes()).await.is_err()
            || stream.write_all(&chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Five accepted requests (same body: same message ids) → 2 unique messages; nothing unsigned.
    assert!(
        sink.wait_for_unique_messages(2, Duration::from_secs(30))
            .await
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            sink.stats().accepted_messages >= 10
        })
        .await
    );
    let all = sink.messages();
    assert!(all.iter().all(|m| !m.to_string().contains("UNSIGNED")));
    assert_eq!(sink.unique_messages().len(), 2);
    let m = |sample: &str| {
        let http = http.clone();
        let sample = sample.to_owned();
        async move { metric(&http, addr, &sample).await }
    };
    assert_eq!(
        m(r#"seshn_forwarder_webhooks_received_total{event="booking.created",outcome="accepted"}"#)
            .await,
        Some(5.0)
    );
    assert_eq!(
        m(r#"seshn_forwarder_webhooks_received_total{event="unverified",outcome="unauthorized"}"#)
            .await,
        Some(5.0)
    );
    assert_eq!(
        m(r#"seshn_forwarder_signature_failures_total{reason="missing"}"#).await,
        Some(2.0)
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            m("seshn_forwarder_spool_depth").await == Some(0.0)
        })
        .await
    );

    running.shutdown();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_answers_503_then_recovers() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    sink.set_outage(true);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sink.url(), dir.path());
    cfg.spool_max_bytes = 8 * 1024;
    let running = common::start(cfg).await;
    let addr = running.addr();
    let http = client();

    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..60 {
        let body = booking(i);
        let resp = http
            .post(format!("http://{addr}/api/webhooks/seshn"))
            .header("x-webhook-event", "booking.created")
            .header("x-webhook-signature", sign(SECRET, body.as_bytes()))
            .body(body)
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => accepted.push(i),
            503 => {
                assert_eq!(resp.headers()["retry-after"], "30");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "the 8 KiB spool must fill up");
    assert!(!accepted.is_empty());
    let bytes = metric(&http, addr, "seshn_forwarder_spool_bytes")
        .await
        .unwrap();
    assert!(bytes <= 8.0 * 1024.0, "bounded: {bytes}");

    // Outage over: everything answered 200 arrives, and the spool takes events again.
    sink.set_outage(false);
    assert!(
        sink.wait_for_unique_messages(accepted.len() * 2, Duration::from_secs(60))
            .await
    );
    let ids: std::collections::HashSet<String> = sink
        .unique_messages()
        .iter()
        .filter(|m| m["type"] == "track")
        .map(|m| m["properties"]["bookingId"].as_str().unwrap().to_owned())
        .collect();
    for i in &accepted {
        assert!(ids.contains(&format!("bk_{i}")), "bk_{i} lost");
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            common::post_signed(&http, addr, "booking.created", &booking(1000))
                .await
                .unwrap()
                == 200
        })
        .await
    );
    running.shutdown();
    running.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_drops_and_webhooks_get_503_on_shutdown() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    // Slow answers keep a batch in flight while we shut down.
    sink.push_fault(Fault::Delay(Duration::from_millis(500)));
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(config(&sink.url(), dir.path())).await;
    let addr = running.addr();
    let http = client();
    for i in 0..20 {
        assert_eq!(
            common::post_signed(&http, addr, "booking.created", &booking(i))
                .await
                .unwrap(),
            200
        );
    }
    let state = std::sync::Arc::clone(running.state());
    running.shutdown();
    // Readiness flips at once, before the drain finishes.
    assert!(
        eventually(Duration::from_secs(5), || async {
            !state.accepting.load(std::sync::atomic::Ordering::Acquire)
        })
        .await
    );
    let outcome = running.wait().await.unwrap();
    assert_eq!(outcome.drained, Some(forwarder::sender::Drained::Empty));
    assert!(
        sink.wait_for_unique_messages(40, Duration::from_secs(5))
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_mode_answers_after_segment_accepted() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sink.url(), dir.path());
    cfg.mode = DeliveryMode::Synchronous;
    cfg.sync_deadline = Duration::from_secs(4);
    let running = common::start(cfg).await;
    let addr = running.addr();
    let http = client();

    // A 200 means Segment already has it.
    assert_eq!(
        common::post_signed(&http, addr, "booking.created", &booking(1))
            .await
            .unwrap(),
        200
    );
    assert_eq!(sink.unique_messages().len(), 2);

    // Transient failures are retried within the deadline.
    sink.push_fault(Fault::Status(500));
    sink.push_fault(Fault::DropConnection);
    assert_eq!(
        common::post_signed(&http, addr, "booking.created", &booking(2))
            .await
            .unwrap(),
        200
    );
    assert_eq!(sink.unique_messages().len(), 4);

    // Concurrent requests share batches: while the first batches are slow to answer, the
    // requests arriving meanwhile pile up and leave together.
    for _ in 0..forwarder::synchronous::MAX_IN_FLIGHT {
        sink.push_fault(Fault::Delay(Duration::from_millis(800)));
    }
    let before = sink.stats().accepted_requests;
    let mut tasks = Vec::new();
    for i in 100..140 {
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            common::post_signed(&http, addr, "booking.created", &booking(i))
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(sink.unique_messages().len(), 4 + 80);
    let batches = sink.stats().accepted_requests - before;
    assert!(
        batches < 40,
        "micro-batching: {batches} batches for 40 requests"
    );

    // An outage longer than the deadline: 503, so Seshn retries.
    sink.set_outage(true);
    let resp = http
        .post(format!("http://{addr}/api/webhooks/seshn"))
        .header("x-webhook-event", "booking.created")
        .header("x-webhook-signature", sign(SECRET, booking(3).as_bytes()))
        .body(booking(3))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    sink.set_outage(false);

    // An event over Segment's 32 KB message limit can never be accepted: 422, nothing sent.
    let huge = format!(r#"{{"id":"{}"}}"#, "x".repeat(40 * 1024));
    let sent_before = sink.stats().requests;
    assert_eq!(
        common::post_signed(&http, addr, "booking.created", &huge)
            .await
            .unwrap(),
        422
    );
    assert_eq!(sink.stats().requests, sent_before);

    // Segment refusing the batch (400) is not retried: 422.
    sink.push_fault(Fault::Status(400));
    assert_eq!(
        common::post_signed(&http, addr, "booking.created", &booking(4))
            .await
            .unwrap(),
        422
    );
    running.shutdown();
    running.wait().await.unwrap();
}

/// Memory stays bounded with many connections: each request reserves its Content-Length in
/// the in-flight budget before its body is read; beyond the budget, 503 + Retry-After (Seshn
/// retries); a body that does not arrive in time gets 408 and frees its reservation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_body_budget_and_body_read_timeout() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sink.url(), dir.path());
    cfg.max_body_bytes = 64 * 1024;
    cfg.max_inflight_body_bytes = 3 * 64 * 1024;
    cfg.body_read_timeout = Duration::from_secs(2);
    let running = common::start(cfg).await;
    let addr = running.addr();
    let http = client();

    // Three slow senders announce 64 KiB bodies and send only part of them: the budget is full.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/webhooks/seshn HTTP/1.1\r\nhost: x\r\nx-webhook-event: booking.created\r\n\
             x-webhook-signature: sha256={}\r\ncontent-length: {}\r\n\r\n{{\"id\":",
            "0".repeat(64),
            64 * 1024
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&http, addr, "seshn_forwarder_inflight_body_bytes").await
                == Some(3.0 * 64.0 * 1024.0)
        })
        .await,
        "the slow requests hold their reservations"
    );
    // No room: a well-formed webhook is told to come back later, before anything is read.
    let body = booking(1);
    let resp = http
        .post(format!("http://{addr}/api/webhooks/seshn"))
        .header("x-webhook-event", "booking.created")
        .header("x-webhook-signature", sign(SECRET, body.as_bytes()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "30");
    // The slow bodies time out with 408, which frees the budget.
    for mut stream in slow {
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert_eq!(
        metric(&http, addr, "seshn_forwarder_inflight_body_bytes").await,
        Some(0.0)
    );
    assert_eq!(
        common::post_signed(&http, addr, "booking.created", &body)
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        metric(
            &http,
            addr,
            r#"seshn_forwarder_webhooks_received_total{event="unverified",outcome="overloaded"}"#
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            &http,
            addr,
            r#"seshn_forwarder_webhooks_received_total{event="unverified",outcome="body_timeout"}"#
        )
        .await,
        Some(3.0)
    );
    running.shutdown();
    running.wait().await.unwrap();
}

/// SIGTERM with a shutdown delay: /readyz says 503 at once (Kubernetes removes the pod from the
/// endpoints) while webhooks routed meanwhile are still accepted; after the delay the port
/// closes and the spool drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_keeps_serving_with_readiness_false() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sink.url(), dir.path());
    cfg.shutdown_delay = Duration::from_secs(5);
    let running = common::start(cfg).await;
    let addr = running.addr();
    let http = client();
    let readyz = |http: reqwest::Client| async move {
        http.get(format!("http://{addr}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    };
    assert_eq!(readyz(http.clone()).await.unwrap(), 200);
    let started = std::time::Instant::now();
    running.shutdown();
    assert!(
        eventually(Duration::from_secs(4), || async {
            readyz(http.clone()).await.ok() == Some(503)
        })
        .await
    );
    assert_eq!(
        metric(&http, addr, "seshn_forwarder_ready").await,
        Some(0.0)
    );
    // Still within the delay: webhooks are taken, health is fine.
    assert_eq!(
        common::post_signed(&http, addr, "booking.created", &booking(7))
            .await
            .unwrap(),
        200
    );
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the checks ran within the delay"
    );
    let outcome = running.wait().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "the delay was kept"
    );
    assert_eq!(outcome.drained, Some(forwarder::sender::Drained::Empty));
    assert!(
        sink.wait_for_unique_messages(2, Duration::from_secs(5))
            .await
    );
    // The port is closed now.
    assert!(readyz(client()).await.is_err());
}

/// Synchronous mode: a configuration error (401, 404, redirect, ...) is not "Segment refused
/// this event" (422, lost for good) but 503, so Seshn retries; a refused event among
/// concurrent ones fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_mode_blocked_is_503_and_refusals_are_isolated() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sink.url(), dir.path());
    cfg.mode = DeliveryMode::Synchronous;
    cfg.sync_deadline = Duration::from_secs(2);
    let running = common::start(cfg).await;
    let addr = running.addr();
    let http = client();

    for status in [401, 404, 307] {
        sink.fail_all_with(Some(status));
        let resp = http
            .post(format!("http://{addr}/api/webhooks/seshn"))
            .header("x-webhook-event", "booking.created")
            .header("x-webhook-signature", sign(SECRET, booking(1).as_bytes()))
            .body(booking(1))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 503, "{status}");
        assert_eq!(resp.headers()["retry-after"], "30");
        assert_eq!(
            metric(&http, addr, "seshn_forwarder_delivery_blocked_status").await,
            Some(f64::from(status))
        );
    }
    sink.fail_all_with(None);
    assert_eq!(
        common::post_signed(&http, addr, "booking.created", &booking(1))
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        metric(&http, addr, "seshn_forwarder_delivery_blocked").await,
        Some(0.0)
    );

    // Concurrent requests share batches (slow answers let them pile up); the one Segment
    // refuses gets 422, its neighbours 200.
    sink.refuse_messages_containing("bk_refused");
    for _ in 0..forwarder::synchronous::MAX_IN_FLIGHT {
        sink.push_fault(Fault::Delay(Duration::from_millis(300)));
    }
    let mut tasks = Vec::new();
    for i in 0..12 {
        let http = http.clone();
        let body = if i == 5 {
            r#"{"id":"bk_refused"}"#.to_owned()
        } else {
            booking(100 + i)
        };
        tasks.push(tokio::spawn(async move {
            (
                i,
                common::post_signed(&http, addr, "booking.created", &body)
                    .await
                    .unwrap(),
            )
        }));
    }
    for task in tasks {
        let (i, status) = task.await.unwrap();
        assert_eq!(status, if i == 5 { 422 } else { 200 }, "request {i}");
    }
    running.shutdown();
    running.wait().await.unwrap();
}
