#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The real binary under kill -9 and SIGTERM: every event answered 2xx reaches the sink,
//! duplicates only with an equal messageId; SIGTERM drains within the grace period and keeps
//! the rest on disk for the next start.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{SECRET, WRITE_KEY, booking, client, post_signed};
use fakes::segment_sink::{Fault, SegmentSink};

/// A forwarder process and the address it reported.
struct Proc {
    child: Child,
    addr: SocketAddr,
}

/// Every log line of every forwarder a test started (JSON logs on stderr).
type Logs = Arc<Mutex<Vec<String>>>;

/// The logs hold no payload personal data (the test bodies' names, emails and phones), no
/// webhook secret and no write key, whatever happened (outages, kills, retries).
fn assert_logs_are_clean(logs: &Logs) {
    let logs = logs.lock().unwrap();
    assert!(
        logs.iter().any(|l| l.contains("listening")),
        "no logs captured"
    );
    for line in logs.iter() {
        for needle in [
            "Test Person",
            "@example.com",
            "+1555010",
            "ct_1",
            SECRET,
            WRITE_KEY,
        ] {
            assert!(!line.contains(needle), "{needle:?} logged: {line}");
        }
    }
}

impl Proc {
    /// Starts the binary on 127.0.0.1:0 and waits for its "listening" log line; every log line
    /// is kept in `logs`.
    fn start(sink_url: &str, spool: &Path, grace: &str, logs: &Logs) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_seshn-segment-forwarder"))
            .env_clear()
            .env("FORWARDER_LISTEN", "127.0.0.1:0")
            .env("SESHN_WEBHOOK_SECRET", SECRET)
            .env("SEGMENT_WRITE_KEY", WRITE_KEY)
            .env("SEGMENT_ENDPOINT", sink_url)
            .env("SPOOL_DIR", spool)
            .env("BRIDGE_ID", "crash-test")
            .env("SHUTDOWN_GRACE", grace)
            .env("RETRY_BASE", "20ms")
            .env("RETRY_MAX", "200ms")
            .env("SEGMENT_TIMEOUT", "2s")
            .env("LOG_FORMAT", "json")
            // Our own crates at debug, so the log scan covers every line they may write.
            .env(
                "LOG_FILTER",
                "info,forwarder=debug,seshn_segment_forwarder=debug,segment=debug",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let logs = Arc::clone(logs);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                logs.lock().unwrap().push(line.clone());
                if sent {
                    continue;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["fields"]["message"] == "listening" {
                    let addr: SocketAddr = v["fields"]["addr"].as_str().unwrap().parse().unwrap();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the forwarder reports its address");
        Self { child, addr }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit; returns whether it exited successfully within `timeout`.
    fn wait_exit(mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts events with fresh ids from `next` on 4 connections until stopped or the server dies;
/// returns the ids answered 200.
async fn load(
    addr: SocketAddr,
    start: usize,
    stop: Arc<tokio::sync::Notify>,
    acked: Arc<Mutex<Vec<usize>>>,
) -> Vec<usize> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(start));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let acked = Arc::clone(&acked);
        let next = Arc::clone(&next);
        let stop = Arc::clone(&stop);
        let http = client();
        tasks.push(tokio::spawn(async move {
            // Bounded: at most 100,000 requests per connection.
            for _ in 0..100_000 {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = booking(i);
                let post = post_signed(&http, addr, "booking.created", &body);
                tokio::select! {
                    result = post => match result {
                        Ok(200) => acked.lock().unwrap().push(i),
                        Ok(_) => {}
                        Err(_) => return,
                    },
                    () = stop.notified() => return,
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    acked.lock().unwrap().clone()
}

/// Asserts every acked booking arrived, duplicates are identical, and every copy of an event
/// carries the same messageId (so Segment keeps exactly one).
fn assert_all_arrived(sink: &SegmentSink, acked: &[usize]) {
    let mut by_id: HashMap<String, serde_json::Value> = HashMap::new();
    let mut ids_of: HashMap<String, HashSet<String>> = HashMap::new();
    for message in sink.messages() {
        let id = message["messageId"].as_str().unwrap().to_owned();
        if let Some(first) = by_id.get(&id) {
            assert_eq!(first, &message, "duplicate {id} differs");
        }
        if message["type"] == "track" {
            ids_of
                .entry(
                    message["properties"]["bookingId"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
                .or_default()
                .insert(id.clone());
        }
        by_id.insert(id, message);
    }
    for (booking, ids) in &ids_of {
        assert_eq!(
            ids.len(),
            1,
            "{booking} arrived under several messageIds: {ids:?}"
        );
    }
    let bookings: HashSet<&String> = ids_of.keys().collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|i| !bookings.contains(&format!("bk_{i}")))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acked events lost: {lost:?}",
        lost.len()
    );
}

async fn wait_for_bookings(sink: &SegmentSink, acked: &[usize]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let want: HashSet<String> = acked.iter().map(|i| format!("bk_{i}")).collect();
    loop {
        let have: HashSet<String> = sink
            .unique_messages()
            .iter()
            .filter(|m| m["type"] == "track")
            .map(|m| m["properties"]["bookingId"].as_str().unwrap().to_owned())
            .collect();
        if want.is_subset(&have) || tokio::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn load_for(
    addr: SocketAddr,
    start: usize,
    duration: Duration,
    kill: impl FnOnce(),
) -> Vec<usize> {
    let stop = Arc::new(tokio::sync::Notify::new());
    let acked = Arc::new(Mutex::new(Vec::new()));
    let handle = tokio::spawn(load(addr, start, Arc::clone(&stop), Arc::clone(&acked)));
    tokio::time::sleep(duration).await;
    // On a very slow machine, keep the load going until some events were acknowledged
    // (bounded), so the kill always hits a spool with acknowledged events in it.
    for _ in 0..300 {
        if acked.lock().unwrap().len() >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Kill while the load is still running: some requests are mid-flight.
    kill();
    stop.notify_waiters();
    handle.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_event() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::default();
    let mut acked = Vec::new();

    // Round 1: Segment is down, so every acked event exists only in the spool; kill -9.
    sink.set_outage(true);
    let proc = Proc::start(&sink.url(), dir.path(), "5s", &logs);
    let addr = proc.addr;
    acked.extend(
        load_for(addr, 0, Duration::from_millis(1500), move || {
            proc.kill9();
        })
        .await,
    );
    assert!(!acked.is_empty());
    assert!(sink.unique_messages().is_empty());

    // Round 2: Segment is back but slow; kill -9 again while batches are in flight.
    sink.set_outage(false);
    for _ in 0..3 {
        sink.push_fault(Fault::Delay(Duration::from_millis(300)));
    }
    let proc = Proc::start(&sink.url(), dir.path(), "5s", &logs);
    let addr = proc.addr;
    acked.extend(
        load_for(addr, 1_000_000, Duration::from_millis(1500), move || {
            proc.kill9();
        })
        .await,
    );

    eprintln!("{} events acknowledged across two kill -9", acked.len());
    // Round 3: a clean start delivers what is left.
    let proc = Proc::start(&sink.url(), dir.path(), "5s", &logs);
    wait_for_bookings(&sink, &acked).await;
    assert_all_arrived(&sink, &acked);
    proc.sigterm();
    assert!(proc.wait_exit(Duration::from_secs(30)));
    assert_logs_are_clean(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_within_grace_and_keeps_the_rest() {
    let sink = SegmentSink::start(WRITE_KEY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs::default();
    let http = client();

    // Segment slow but up: SIGTERM waits for the spool to drain, then exits 0.
    for _ in 0..2 {
        sink.push_fault(Fault::Delay(Duration::from_millis(400)));
    }
    let proc = Proc::start(&sink.url(), dir.path(), "20s", &logs);
    for i in 0..30 {
        assert_eq!(
            post_signed(&http, proc.addr, "booking.created", &booking(i))
                .await
                .unwrap(),
            200
        );
    }
    proc.sigterm();
    let exited = tokio::task::spawn_blocking(move || proc.wait_exit(Duration::from_secs(30)));
    assert!(exited.await.unwrap(), "clean exit");
    assert_eq!(sink.unique_messages().len(), 60, "drained before exit");

    // Segment down: SIGTERM gives up after the 1 s grace, keeps the events on disk.
    sink.set_outage(true);
    let proc = Proc::start(&sink.url(), dir.path(), "1s", &logs);
    let addr = proc.addr;
    for i in 100..130 {
        assert_eq!(
            post_signed(&http, addr, "booking.created", &booking(i))
                .await
                .unwrap(),
            200
        );
    }
    let started = std::time::Instant::now();
    proc.sigterm();
    let exited = tokio::task::spawn_blocking(move || proc.wait_exit(Duration::from_secs(30)));
    assert!(exited.await.unwrap(), "clean exit");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "grace respected"
    );
    // Stopped accepting: the port is closed.
    assert!(
        post_signed(&http, addr, "booking.created", &booking(999))
            .await
            .is_err()
    );

    // The next start delivers them.
    sink.set_outage(false);
    let proc = Proc::start(&sink.url(), dir.path(), "5s", &logs);
    let acked: Vec<usize> = (100..130).collect();
    wait_for_bookings(&sink, &acked).await;
    assert_all_arrived(&sink, &acked);
    proc.sigterm();
    assert!(
        tokio::task::spawn_blocking(move || proc.wait_exit(Duration::from_secs(30)))
            .await
            .unwrap()
    );
    assert_logs_are_clean(&logs);
}
