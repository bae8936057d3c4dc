//! Throughput of the Segment client against a Segment-compatible sink (a benchmark, not a test).
//!
//! ```text
//! cargo run --release -p segment --example sink_throughput -- [URL] [BATCHES] [MESSAGES_PER_BATCH] [CONCURRENCY]
//! ```
//! Without a URL (or with `inproc`) it starts the in-repo fake sink in count-only mode inside the
//! same process; otherwise it sends to `URL` (e.g. a `fake-segment --quiet` on another core) with
//! the write key from `SEGMENT_WRITE_KEY` (default `wk_bench`). Messages are about 1 KB each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use segment::{Client, ClientConfig, RawMessage, RetryPolicy, send_with_retries};
use serde_json::value::RawValue;

fn arg<T: std::str::FromStr>(n: usize, default: T) -> T {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "inproc".to_owned());
    let batches: usize = arg(2, 2000);
    let per_batch: usize = arg(3, 100);
    let concurrency: usize = arg(4, 4).max(1);
    let key = std::env::var("SEGMENT_WRITE_KEY").unwrap_or_else(|_| "wk_bench".to_owned());

    let sink = if url == "inproc" {
        let mut opts = fakes::segment_sink::SinkOptions::new(&key);
        opts.store = false;
        Some(fakes::segment_sink::SegmentSink::start_with(opts).await?)
    } else {
        None
    };
    let target = sink
        .as_ref()
        .map_or(url, fakes::segment_sink::SegmentSink::url);
    let client = Client::new(ClientConfig::new(target.parse()?, key))?;

    let pad = "p".repeat(850);
    let batch: Arc<Vec<RawMessage>> = Arc::new(
        (0..per_batch)
            .map(|i| {
                let v = serde_json::json!({
                    "type": "track", "event": "Seshn booking.created", "userId": "contact_1",
                    "messageId": format!("bench-{i}"), "timestamp": "2026-01-01T10:00:00.000Z",
                    "properties": {"bookingId": "bk_1", "seats": 2, "pad": pad}
                });
                RawValue::from_string(v.to_string())
            })
            .collect::<Result<_, _>>()?,
    );
    let msg_bytes: usize = batch.iter().map(|m| m.get().len()).sum::<usize>() / per_batch.max(1);

    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let client = client.clone();
        let batch = Arc::clone(&batch);
        let share = batches / concurrency + usize::from(worker < batches % concurrency);
        tasks.push(tokio::spawn(async move {
            let policy = RetryPolicy::default();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
            for _ in 0..share {
                send_with_retries(&client, &batch, &policy, Some(deadline)).await?;
            }
            Ok::<_, segment::DeliveryError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let messages = batches * per_batch;
    println!(
        "{batches} batches x {per_batch} messages (~{msg_bytes} B each), concurrency {concurrency}: \
         {:.0} batches/s, {:.0} messages/s, {:.1} MB/s, {:.2} ms per batch",
        batches as f64 / secs,
        messages as f64 / secs,
        (messages * msg_bytes) as f64 / secs / 1e6,
        secs * 1000.0 * concurrency as f64 / batches as f64
    );
    if let Some(sink) = sink {
        let stats = sink.stats();
        assert_eq!(stats.accepted_messages, messages, "sink lost messages");
        println!("sink: {stats:?}");
    }
    Ok(())
}
