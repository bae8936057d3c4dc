#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The fake Segment sink's contract, checked with a raw HTTP/1.1 client over 127.0.0.1 so every
//! byte on the wire (including "no answer at all") is visible.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use fakes::segment_sink::{Fault, SegmentSink, SinkOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const KEY: &str = "wk_sink_test_key";
const SLACK: Duration = Duration::from_secs(20);

/// A parsed answer; `None` from [`post`] means the connection closed without one.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Option<Answer> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(auth) = auth {
        head = head + "Authorization: " + auth + "\r\n";
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(SLACK, stream.read_to_end(&mut raw))
        .await
        .expect("answer timed out");
    if read.is_err() || raw.is_empty() {
        return None;
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Some(Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

async fn post(sink: &SegmentSink, auth: Option<&str>, body: &[u8]) -> Option<Answer> {
    request(sink.addr(), "POST", "/v1/batch", auth, body).await
}

fn track(id: &str) -> Value {
    json!({"type": "track", "event": "Seshn booking.created", "userId": "u1", "messageId": id,
           "properties": {"n": 12_345_678_901_234_567_890_u64}})
}

fn batch(messages: &[Value], key: Option<&str>) -> Vec<u8> {
    let mut body = json!({"batch": messages, "sentAt": "2026-01-01T10:00:00.000Z"});
    if let Some(key) = key {
        body["writeKey"] = json!(key);
    }
    serde_json::to_vec(&body).unwrap()
}

#[tokio::test]
async fn accepts_valid_batches_and_dedupes_by_message_id() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    assert!(sink.url().starts_with("http://127.0.0.1:"));
    let a = post(
        &sink,
        Some(&basic(KEY)),
        &batch(&[track("a"), track("b")], Some(KEY)),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&a.body).unwrap(),
        json!({"success": true})
    );
    // Body key alone is enough, and so is Basic alone (with or without the colon).
    let b = post(&sink, None, &batch(&[track("a")], Some(KEY)))
        .await
        .unwrap();
    assert_eq!(b.status, 200);
    let no_colon = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(KEY)
    );
    let c = post(&sink, Some(&no_colon), &batch(&[track("c")], None))
        .await
        .unwrap();
    assert_eq!(c.status, 200);

    assert!(sink.wait_for_messages(4, SLACK).await);
    let ids = |v: Vec<Value>| {
        v.iter()
            .map(|m| m["messageId"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(sink.messages()), ["a", "b", "a", "c"]);
    assert_eq!(ids(sink.unique_messages()), ["a", "b", "c"]);
    // Numbers survive exactly as sent.
    assert_eq!(
        sink.messages()[0]["properties"]["n"],
        json!(12_345_678_901_234_567_890_u64)
    );
    let s = sink.stats();
    assert_eq!(
        (s.requests, s.accepted_requests, s.accepted_messages),
        (3, 3, 4)
    );
    assert_eq!((s.rejected_400, s.dropped_messages, s.bad_auth), (0, 0, 0));
    assert!(sink.wait_for_unique_messages(3, SLACK).await);
    assert!(
        !sink
            .wait_for_unique_messages(4, Duration::from_millis(100))
            .await
    );
}

#[tokio::test]
async fn write_keys_are_checked_like_segment() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    // A wrong key: 200 (Segment cannot tell), but the events go nowhere and it is counted.
    let wrong = post(&sink, Some(&basic("wk_other")), &batch(&[track("a")], None))
        .await
        .unwrap();
    assert_eq!(wrong.status, 200);
    // Basic right, body wrong: still a bad key.
    let mixed = post(
        &sink,
        Some(&basic(KEY)),
        &batch(&[track("b")], Some("wk_other")),
    )
    .await
    .unwrap();
    assert_eq!(mixed.status, 200);
    // No key at all, or an empty one: 400.
    assert_eq!(
        post(&sink, None, &batch(&[track("c")], None))
            .await
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        post(&sink, None, &batch(&[track("d")], Some("")))
            .await
            .unwrap()
            .status,
        400
    );
    let s = sink.stats();
    assert_eq!(s.bad_auth, 4);
    assert_eq!(s.rejected_400, 2);
    assert_eq!(s.dropped_messages, 2);
    assert_eq!(s.accepted_messages, 0);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn size_and_json_errors_are_400() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    let auth = basic(KEY);
    assert_eq!(
        post(&sink, Some(&auth), b"{not json").await.unwrap().status,
        400
    );
    assert_eq!(
        post(&sink, Some(&auth), b"{\"nobatch\":1}")
            .await
            .unwrap()
            .status,
        400
    );
    assert_eq!(post(&sink, Some(&auth), b"").await.unwrap().status, 400);

    // A message of exactly 32 KiB is fine, one byte more fails the whole batch.
    let sized = |size: usize, id: &str| {
        let mut m = track(id);
        m["properties"] = json!({"pad": ""});
        let base = serde_json::to_string(&m).unwrap().len();
        m["properties"]["pad"] = json!("p".repeat(size - base));
        assert_eq!(serde_json::to_string(&m).unwrap().len(), size);
        m
    };
    let ok = post(
        &sink,
        Some(&auth),
        &batch(&[sized(32 * 1024, "edge")], None),
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200);
    let over = post(
        &sink,
        Some(&auth),
        &batch(&[track("x"), sized(32 * 1024 + 1, "over")], None),
    )
    .await
    .unwrap();
    assert_eq!(over.status, 400);
    assert!(over.body.contains("Exceed payload limit"));

    // Bodies: exactly 500,000 bytes pass, 500,001 fail.
    let body_of = |total: usize| {
        let messages: Vec<Value> = (0..16).map(|i| sized(30_000, &format!("b{i}"))).collect();
        let mut body = batch(&messages, None);
        let len = body.len();
        assert!(len < total);
        // Pad with insignificant whitespace inside the object to reach the exact size.
        body.truncate(len - 1);
        body.extend(std::iter::repeat_n(b' ', total - len));
        body.push(b'}');
        assert_eq!(body.len(), total);
        body
    };
    assert_eq!(
        post(&sink, Some(&auth), &body_of(500_000))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        post(&sink, Some(&auth), &body_of(500_001))
            .await
            .unwrap()
            .status,
        400
    );
    // A much larger body still gets its 400 (read and discarded), not a reset.
    assert_eq!(
        post(&sink, Some(&auth), &vec![b' '; 2_000_000])
            .await
            .unwrap()
            .status,
        400
    );

    let s = sink.stats();
    assert_eq!(s.rejected_400, 6);
    assert_eq!(s.accepted_messages, 1 + 16);
    assert_eq!(sink.messages().len(), 17);
}

#[tokio::test]
async fn over_2500_messages_or_invalid_ones_are_dropped_with_200() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    let auth = basic(KEY);
    let many: Vec<Value> = (0..2501)
        .map(|i| json!({"type":"identify","anonymousId":"a","messageId":format!("m{i}")}))
        .collect();
    assert_eq!(
        post(&sink, Some(&auth), &batch(&many, None))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(sink.stats().dropped_messages, 2501);
    assert!(sink.messages().is_empty());
    assert_eq!(
        post(&sink, Some(&auth), &batch(&many[..2500], None))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(sink.stats().accepted_messages, 2500);

    let invalid = [
        json!({"type":"track","userId":"u","messageId":"no-event"}),
        json!({"type":"track","event":"E","messageId":"no-user"}),
        json!({"type":"track","event":"E","userId":"u"}),
        json!({"type":"track","event":"E","userId":"u","messageId":"x".repeat(100)}),
        json!({"event":"E","userId":"u","messageId":"no-type"}),
        json!("not an object"),
        track("valid"),
    ];
    assert_eq!(
        post(&sink, Some(&auth), &batch(&invalid, None))
            .await
            .unwrap()
            .status,
        200
    );
    let s = sink.stats();
    assert_eq!(s.invalid_messages, 6);
    assert_eq!(s.dropped_messages, 2501 + 6);
    assert_eq!(s.accepted_messages, 2501);
    assert_eq!(sink.messages().last().unwrap()["messageId"], "valid");
}

#[tokio::test]
async fn scripted_faults_are_served_in_order_one_per_request() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    let auth = basic(KEY);
    sink.push_fault(Fault::Status(503));
    sink.push_fault(Fault::RateLimit {
        retry_after_secs: 7,
    });
    sink.push_fault(Fault::DropConnection);
    sink.push_fault(Fault::Delay(Duration::from_millis(300)));
    assert_eq!(sink.pending_faults(), 4);
    let body = batch(&[track("f")], None);

    assert_eq!(post(&sink, Some(&auth), &body).await.unwrap().status, 503);
    let limited = post(&sink, Some(&auth), &body).await.unwrap();
    assert_eq!(limited.status, 429);
    assert!(
        limited.head.to_ascii_lowercase().contains("retry-after: 7"),
        "{}",
        limited.head
    );
    assert!(
        post(&sink, Some(&auth), &body).await.is_none(),
        "DropConnection must not answer"
    );
    assert!(sink.messages().is_empty(), "faulted requests store nothing");
    let started = tokio::time::Instant::now();
    assert_eq!(post(&sink, Some(&auth), &body).await.unwrap().status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 1);
    // Queue exhausted: normal service.
    assert_eq!(post(&sink, Some(&auth), &body).await.unwrap().status, 200);
    let s = sink.stats();
    assert_eq!(s.faults_served, 4);
    assert_eq!(s.accepted_requests, 2);
    assert_eq!(sink.pending_faults(), 0);
    let statuses: Vec<Option<u16>> = sink.recorded_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(503), Some(429), None, Some(200), Some(200)]);
}

#[tokio::test]
async fn outage_fails_everything_until_released() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    let auth = basic(KEY);
    let body = batch(&[track("o")], None);
    sink.set_outage(true);
    for _ in 0..3 {
        assert_eq!(post(&sink, Some(&auth), &body).await.unwrap().status, 503);
    }
    sink.set_outage(false);
    assert_eq!(post(&sink, Some(&auth), &body).await.unwrap().status, 200);
    let s = sink.stats();
    assert_eq!((s.outage_rejections, s.accepted_messages), (3, 1));
}

#[tokio::test]
async fn a_refused_message_fails_its_whole_batch_with_400() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    let auth = basic(KEY);
    sink.refuse_messages_containing("\"messageId\":\"bad\"");
    let mixed = batch(&[track("good-1"), track("bad"), track("good-2")], None);
    let answer = post(&sink, Some(&auth), &mixed).await.unwrap();
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        sink.messages().is_empty(),
        "nothing of a refused batch is kept"
    );
    let good = batch(&[track("good-1"), track("good-2")], None);
    assert_eq!(post(&sink, Some(&auth), &good).await.unwrap().status, 200);
    let s = sink.stats();
    assert_eq!((s.rejected_400, s.accepted_messages), (1, 2));
}

#[tokio::test]
async fn fail_all_with_answers_every_batch_until_cleared() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    let auth = basic(KEY);
    let body = batch(&[track("f")], None);
    sink.fail_all_with(Some(401));
    assert_eq!(post(&sink, Some(&auth), &body).await.unwrap().status, 401);
    sink.fail_all_with(Some(302));
    let answer = post(&sink, Some(&auth), &body).await.unwrap();
    assert_eq!(answer.status, 302);
    assert!(
        answer.head.to_ascii_lowercase().contains("location:"),
        "{}",
        answer.head
    );
    assert!(sink.messages().is_empty());
    sink.fail_all_with(None);
    assert_eq!(post(&sink, Some(&auth), &body).await.unwrap().status, 200);
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn other_paths_and_methods() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    let auth = basic(KEY);
    assert_eq!(
        request(sink.addr(), "POST", "/v1/track", Some(&auth), b"")
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        request(sink.addr(), "GET", "/v1/batch", Some(&auth), b"")
            .await
            .unwrap()
            .status,
        405
    );
    // Neither consumed a fault nor stored anything.
    assert_eq!(sink.stats().requests, 2);
    assert_eq!(sink.stats().accepted_requests, 0);
}

#[tokio::test]
async fn count_only_mode_counts_without_storing() {
    let mut opts = SinkOptions::new(KEY);
    opts.store = false;
    let sink = SegmentSink::start_with(opts).await.unwrap();
    let body = batch(&[track("a"), track("b"), track("a")], None);
    // Several keep-alive-less connections in parallel, bounded.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let addr = sink.addr();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            request(addr, "POST", "/v1/batch", Some(&basic(KEY)), &body)
                .await
                .unwrap()
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(sink.wait_for_messages(24, SLACK).await);
    assert_eq!(sink.stats().accepted_messages, 24);
    assert!(sink.messages().is_empty());
    assert!(sink.recorded_requests().is_empty());
    assert!(!sink.wait_for_messages(25, Duration::from_millis(100)).await);
}

#[tokio::test]
async fn dropping_the_sink_stops_it() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    let addr = sink.addr();
    assert_eq!(
        post(&sink, Some(&basic(KEY)), &batch(&[track("a")], None))
            .await
            .unwrap()
            .status,
        200
    );
    drop(sink);
    // The listener closes shortly after; poll instead of sleeping a fixed time.
    let deadline = tokio::time::Instant::now() + SLACK;
    loop {
        if TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sink still listening"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn accept_then_drop_stores_but_never_answers() {
    let sink = SegmentSink::start(KEY).await.unwrap();
    sink.push_fault(Fault::AcceptThenDrop);
    let body = batch(&[track("lost-answer")], None);
    assert!(post(&sink, Some(&basic(KEY)), &body).await.is_none());
    assert!(sink.wait_for_messages(1, SLACK).await);
    // The client's resend is a duplicate that dedupe collapses.
    assert_eq!(
        post(&sink, Some(&basic(KEY)), &body).await.unwrap().status,
        200
    );
    assert_eq!(sink.messages().len(), 2);
    assert_eq!(sink.unique_messages().len(), 1);
    let s = sink.stats();
    assert_eq!((s.faults_served, s.accepted_requests), (1, 2));
    let statuses: Vec<Option<u16>> = sink.recorded_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [None, Some(200)]);
}
