//! A Segment-compatible `/v1/batch` sink with fault injection.
//!
//! It answers like Segment's HTTP Tracking API (notes/segment.md §1): 200 for almost everything,
//! 400 for malformed JSON, a body over 500 KB, a message over 32 KB or an empty write key; 200 but
//! silently dropped messages for a wrong write key, more than 2,500 messages, or a message that
//! lacks `type`, a short `messageId`, `userId`/`anonymousId`, or `event` on a track. Everything is
//! counted so tests can assert on what Segment would have done.
//!
//! Faults are scripted: each request to `/v1/batch` consumes the next [`Fault`] in the queue, and
//! [`SegmentSink::set_outage`] fails every request with 503 until released.
//! [`SegmentSink::refuse_messages_containing`] makes it answer 400 to every batch holding a
//! matching message, as Segment does for a malformed one: the whole batch is refused, so a client
//! must find the bad message itself. The server is a plain
//! hyper HTTP/1.1 loop (not axum) because [`Fault::DropConnection`] must close the socket without
//! any answer, which needs control over the connection task.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// Largest accepted request body (Segment: 500 KB per batch request).
pub const MAX_BODY_BYTES: usize = 500_000;
/// Largest accepted message, in bytes of its JSON (Segment: 32 KB per event).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Most messages Segment keeps from one batch; above this it answers 200 and drops them all.
pub const MAX_BATCH_MESSAGES: usize = 2500;
/// `messageId` must be shorter than this many characters.
pub const MAX_MESSAGE_ID_CHARS: usize = 100;

/// A scripted misbehaviour, consumed by exactly one `/v1/batch` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status (and a JSON error body) without processing the batch.
    Status(u16),
    /// Answer 429 with `Retry-After: <secs>` without processing the batch.
    RateLimit {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_secs: u64,
    },
    /// Wait this long, then process and answer normally (the messages are stored even if the
    /// client gave up meanwhile, as a real server would).
    Delay(Duration),
    /// Read the request, then close the connection without answering and without storing.
    DropConnection,
    /// Process the batch normally (messages stored), then close the connection without
    /// answering: the "accepted but the answer was lost" case, which makes the client resend.
    /// Counted both as a fault served and as an accepted request.
    AcceptThenDrop,
}

/// Counters of everything the sink saw. Requests are counted once, in the first class that
/// applies (fault, outage, 400, accepted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Every HTTP request, whatever its path.
    pub requests: usize,
    /// `/v1/batch` requests answered 200 after processing.
    pub accepted_requests: usize,
    /// Messages accepted (stored, or counted in count-only mode), duplicates included.
    pub accepted_messages: usize,
    /// Requests answered 400 (malformed JSON, body over 500 KB, message over 32 KB, empty key).
    pub rejected_400: usize,
    /// Messages answered 200 but dropped, as Segment does: wrong write key, batch over 2,500,
    /// or an invalid message.
    pub dropped_messages: usize,
    /// Of the dropped messages, those that failed validation (type, messageId, ids, event).
    pub invalid_messages: usize,
    /// Requests that consumed a scripted fault.
    pub faults_served: usize,
    /// Requests answered 503 because of [`SegmentSink::set_outage`].
    pub outage_rejections: usize,
    /// Requests with a missing, empty or wrong write key.
    pub bad_auth: usize,
}

/// One request as the sink saw it (kept only when storing).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Raw `Authorization` header.
    pub authorization: Option<String>,
    /// Raw `Content-Type` header.
    pub content_type: Option<String>,
    /// Raw `User-Agent` header.
    pub user_agent: Option<String>,
    /// Parsed body, when it was valid JSON.
    pub body: Option<serde_json::Value>,
    /// Status answered; `None` when the connection was dropped.
    pub status: Option<u16>,
}

/// How to run a sink.
#[derive(Clone)]
pub struct SinkOptions {
    /// Address to bind; tests use `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// The only write key Segment would accept.
    pub write_key: String,
    /// Keep messages and requests in memory. Off for load benchmarks (counters still work).
    pub store: bool,
    /// Print every accepted message as one JSON line on stdout.
    pub echo: bool,
}

impl SinkOptions {
    /// Storing, not echoing, on an ephemeral loopback port.
    pub fn new(write_key: &str) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            write_key: write_key.to_owned(),
            store: true,
            echo: false,
        }
    }
}

impl fmt::Debug for SinkOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkOptions")
            .field("listen", &self.listen)
            .field("write_key", &"<redacted>")
            .field("store", &self.store)
            .field("echo", &self.echo)
            .finish()
    }
}

/// A running fake Segment API. Stops serving when dropped.
pub struct SegmentSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping it tells the accept loop and every connection to stop.
    _shutdown: watch::Sender<()>,
}

impl fmt::Debug for SegmentSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentSink")
            .field("addr", &self.addr)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Shared {
    write_key: String,
    store: bool,
    echo: bool,
    outage: AtomicBool,
    /// Batches holding a message with one of these substrings are answered 400.
    refuse: Mutex<Vec<String>>,
    /// When non-zero, every batch is answered with this status (see `fail_all_with`).
    fail_status: std::sync::atomic::AtomicU16,
    counters: Counters,
    state: Mutex<State>,
    /// Woken after every accepted batch, for `wait_for_*`.
    arrived: Notify,
}

#[derive(Default)]
struct Counters {
    requests: AtomicUsize,
    accepted_requests: AtomicUsize,
    accepted_messages: AtomicUsize,
    rejected_400: AtomicUsize,
    dropped_messages: AtomicUsize,
    invalid_messages: AtomicUsize,
    faults_served: AtomicUsize,
    outage_rejections: AtomicUsize,
    bad_auth: AtomicUsize,
}

#[derive(Default)]
struct State {
    faults: VecDeque<Fault>,
    messages: Vec<serde_json::Value>,
    seen_ids: HashSet<String>,
    /// Indexes into `messages` of the first message with each id.
    unique: Vec<usize>,
    requests: Vec<RecordedRequest>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State inconsistent in a way tests care
        // about, so keep serving rather than cascade the panic.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn bump(counter: &AtomicUsize, by: usize) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl SegmentSink {
    /// Starts a storing sink on `127.0.0.1:0` that accepts `write_key`.
    pub async fn start(write_key: &str) -> std::io::Result<Self> {
        Self::start_with(SinkOptions::new(write_key)).await
    }

    /// Starts a sink with explicit options.
    pub async fn start_with(opts: SinkOptions) -> std::io::Result<Self> {
        let listener = TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            write_key: opts.write_key,
            store: opts.store,
            echo: opts.echo,
            outage: AtomicBool::new(false),
            refuse: Mutex::new(Vec::new()),
            fail_status: std::sync::atomic::AtomicU16::new(0),
            counters: Counters::default(),
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
        });
        let (tx, rx) = watch::channel(());
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), rx));
        Ok(Self {
            addr,
            shared,
            _shutdown: tx,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:1234` (clients append `/v1/batch`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues a fault for a future `/v1/batch` request (first in, first served).
    pub fn push_fault(&self, fault: Fault) {
        self.shared.lock().faults.push_back(fault);
    }

    /// Faults still queued.
    pub fn pending_faults(&self) -> usize {
        self.shared.lock().faults.len()
    }

    /// While on, every `/v1/batch` request is answered 503 (after queued faults are served).
    pub fn set_outage(&self, on: bool) {
        self.shared.outage.store(on, Ordering::SeqCst);
    }

    /// While `Some(status)`, every `/v1/batch` request (after queued faults are served) is
    /// answered with that status and nothing is stored: a wrong key behind a proxy (401), a WAF
    /// (403), a wrong path (404), a redirect (302), ... A 3xx answer carries a `Location`.
    pub fn fail_all_with(&self, status: Option<u16>) {
        self.shared
            .fail_status
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// From now on, answers 400 (without storing anything) to every batch holding a message
    /// whose JSON text contains `needle`, as Segment refuses a whole batch for one bad message.
    pub fn refuse_messages_containing(&self, needle: &str) {
        self.shared
            .refuse
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(needle.to_owned());
    }

    /// Every accepted message, duplicates included, in arrival order (empty in count-only mode).
    pub fn messages(&self) -> Vec<serde_json::Value> {
        self.shared.lock().messages.clone()
    }

    /// The first message of each `messageId`, in arrival order (Segment's dedupe view).
    pub fn unique_messages(&self) -> Vec<serde_json::Value> {
        let state = self.shared.lock();
        state
            .unique
            .iter()
            .map(|&i| state.messages[i].clone())
            .collect()
    }

    /// Every request received (empty in count-only mode).
    pub fn recorded_requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Number of HTTP requests received.
    pub fn requests(&self) -> usize {
        self.shared.counters.requests.load(Ordering::SeqCst)
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> SinkStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicUsize| a.load(Ordering::SeqCst);
        SinkStats {
            requests: get(&c.requests),
            accepted_requests: get(&c.accepted_requests),
            accepted_messages: get(&c.accepted_messages),
            rejected_400: get(&c.rejected_400),
            dropped_messages: get(&c.dropped_messages),
            invalid_messages: get(&c.invalid_messages),
            faults_served: get(&c.faults_served),
            outage_rejections: get(&c.outage_rejections),
            bad_auth: get(&c.bad_auth),
        }
    }

    /// Waits until at least `n` messages were accepted (duplicates count); false on timeout.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || {
            self.shared
                .counters
                .accepted_messages
                .load(Ordering::SeqCst)
                >= n
        })
        .await
    }

    /// Waits until at least `n` distinct `messageId`s were accepted; false on timeout.
    /// Needs a storing sink.
    pub async fn wait_for_unique_messages(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.shared.lock().unique.len() >= n)
            .await
    }

    async fn wait_until(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.arrived.notified();
            tokio::pin!(notified);
            // Register before checking, so an arrival between check and await is not missed.
            notified.as_mut().enable();
            if done() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done();
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, Arc::clone(&shared), shutdown.clone()));
                }
                // Usually EMFILE under load: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<()>,
) {
    // Small JSON answers: don't let Nagle delay them.
    if stream.set_nodelay(true).is_err() {
        return;
    }
    let kill = Arc::new(Notify::new());
    let service = {
        let kill = Arc::clone(&kill);
        hyper::service::service_fn(move |req| {
            let shared = Arc::clone(&shared);
            let kill = Arc::clone(&kill);
            async move { Ok::<_, Infallible>(handle(shared, &kill, req).await) }
        })
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    // Dropping the connection future closes the socket with no answer written: that is how
    // DropConnection works, and how the sink shuts down.
    tokio::select! {
        _ = conn => {}
        () = kill.notified() => {}
        _ = shutdown.changed() => {}
    }
}

type Answer = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: &'static str) -> Answer {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

const OK_BODY: &str = r#"{"success":true}"#;

fn header(req: &Request<Incoming>, name: hyper::header::HeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn handle(shared_arc: Arc<Shared>, kill: &Notify, req: Request<Incoming>) -> Answer {
    let shared: &Shared = &shared_arc;
    let c = &shared.counters;
    bump(&c.requests, 1);
    if req.uri().path() != "/v1/batch" {
        return answer(
            StatusCode::NOT_FOUND,
            r#"{"code":"not_found","message":"Not Found"}"#,
        );
    }
    if req.method() != Method::POST {
        return answer(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"code":"method_not_allowed","message":"Method Not Allowed"}"#,
        );
    }
    let mut record = shared.store.then(|| RecordedRequest {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        authorization: header(&req, AUTHORIZATION),
        content_type: header(&req, CONTENT_TYPE),
        user_agent: header(&req, USER_AGENT),
        body: None,
        status: None,
    });
    let basic_key = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| basic_username(v.as_bytes()));
    // Read the whole body first, as a server does before answering; over the limit is a 400.
    let body = match read_body(req.into_body()).await {
        Body::Complete(body) => body,
        Body::TooLarge => {
            return finish(
                shared,
                record,
                reject(
                    shared,
                    r#"{"code":"invalid_request","message":"Exceed payload limit"}"#,
                ),
            );
        }
        Body::Broken => {
            // The client went away mid-body; nobody will read an answer.
            return finish(
                shared,
                record,
                answer(
                    StatusCode::BAD_REQUEST,
                    r#"{"code":"invalid_request","message":"Incomplete body"}"#,
                ),
            );
        }
    };

    if let Some(record) = record.as_mut() {
        record.body = serde_json::from_slice(&body).ok();
    }
    let fault = shared.lock().faults.pop_front();
    if let Some(fault) = fault {
        bump(&c.faults_served, 1);
        match fault {
            Fault::Status(code) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return finish(
                    shared,
                    record,
                    answer(status, r#"{"code":"fault","message":"injected fault"}"#),
                );
            }
            Fault::RateLimit { retry_after_secs } => {
                let mut resp = answer(
                    StatusCode::TOO_MANY_REQUESTS,
                    r#"{"code":"rate_limited","message":"Too Many Requests"}"#,
                );
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
                return finish(shared, record, resp);
            }
            Fault::Delay(wait) => {
                // Finish in a task of its own: a client that gives up closes the connection,
                // which drops this handler, yet the batch must still land, as on a real server
                // that was merely slow (this is what produces duplicates worth deduping).
                let shared = Arc::clone(&shared_arc);
                let job = tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    respond(&shared, basic_key.as_deref(), &body, record)
                });
                return job.await.unwrap_or_else(|_| {
                    answer(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        r#"{"code":"internal","message":"sink task failed"}"#,
                    )
                });
            }
            Fault::AcceptThenDrop => {
                // The answer is discarded; the record keeps `status: None` (no answer seen).
                drop(respond(shared, basic_key.as_deref(), &body, None));
                if let Some(record) = record {
                    shared.lock().requests.push(record);
                }
                kill.notify_one();
                // Same as DropConnection: the answer is never written.
                return std::future::pending().await;
            }
            Fault::DropConnection => {
                if let Some(record) = record {
                    shared.lock().requests.push(record);
                }
                kill.notify_one();
                // The connection task drops this future together with the socket.
                return std::future::pending().await;
            }
        }
    }
    respond(shared, basic_key.as_deref(), &body, record)
}

/// Answers a batch request that consumed no fault: 503 during an outage, else Segment's rules.
fn respond(
    shared: &Shared,
    basic_key: Option<&str>,
    body: &[u8],
    record: Option<RecordedRequest>,
) -> Answer {
    if shared.outage.load(Ordering::SeqCst) {
        bump(&shared.counters.outage_rejections, 1);
        return finish(
            shared,
            record,
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"code":"unavailable","message":"Service Unavailable"}"#,
            ),
        );
    }
    let forced = shared.fail_status.load(Ordering::SeqCst);
    if forced != 0 {
        let status = StatusCode::from_u16(forced).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = answer(status, r#"{"code":"forced","message":"forced status"}"#);
        if status.is_redirection() {
            resp.headers_mut().insert(
                hyper::header::LOCATION,
                HeaderValue::from_static("http://127.0.0.1:9/v1/batch"),
            );
        }
        return finish(shared, record, resp);
    }
    let resp = process(shared, basic_key, body);
    finish(shared, record, resp)
}

/// Outcome of reading a request body.
enum Body {
    Complete(Vec<u8>),
    TooLarge,
    Broken,
}

/// How much of an oversized body is still read (and discarded) before answering 400: reading
/// it lets the client receive the answer instead of a reset connection.
const MAX_DRAINED_BYTES: usize = 16 * 1024 * 1024;

async fn read_body(mut body: Incoming) -> Body {
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Body::Broken;
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen += data.len();
        if seen <= MAX_BODY_BYTES {
            buf.extend_from_slice(&data);
        } else if seen > MAX_DRAINED_BYTES {
            break;
        }
    }
    if seen > MAX_BODY_BYTES {
        Body::TooLarge
    } else {
        Body::Complete(buf)
    }
}

/// Records the request (when storing) and returns the answer.
fn finish(shared: &Shared, record: Option<RecordedRequest>, resp: Answer) -> Answer {
    if let Some(mut record) = record {
        record.status = Some(resp.status().as_u16());
        shared.lock().requests.push(record);
    }
    resp
}

fn reject(shared: &Shared, body: &'static str) -> Answer {
    bump(&shared.counters.rejected_400, 1);
    answer(StatusCode::BAD_REQUEST, body)
}

/// The username of a Basic `Authorization` header (`base64(key:)`; the colon is optional).
fn basic_username(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(user, _)| user);
    Some(user.to_owned())
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Vec<&'a RawValue>,
    #[serde(rename = "writeKey")]
    write_key: Option<String>,
}

/// The fields Segment checks, borrowed so validation costs one parse and no allocation.
#[derive(Deserialize)]
struct Check<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "messageId", borrow, default)]
    message_id: Option<Cow<'a, str>>,
    #[serde(rename = "userId", borrow, default)]
    user_id: Option<&'a RawValue>,
    #[serde(rename = "anonymousId", borrow, default)]
    anonymous_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
}

/// Whether Segment would keep the message; returns its id when it would.
fn validate(raw: &RawValue) -> Option<String> {
    let m: Check<'_> = serde_json::from_str(raw.get()).ok()?;
    let kind = m.kind?;
    if !matches!(
        &*kind,
        "identify" | "track" | "page" | "screen" | "group" | "alias"
    ) {
        return None;
    }
    let id = m.message_id?;
    if id.is_empty() || id.chars().count() >= MAX_MESSAGE_ID_CHARS {
        return None;
    }
    let present = |v: Option<&RawValue>| v.is_some_and(|v| !matches!(v.get(), "null" | "\"\""));
    if !present(m.user_id) && !present(m.anonymous_id) {
        return None;
    }
    if kind == "track" && m.event.as_deref().is_none_or(str::is_empty) {
        return None;
    }
    Some(id.into_owned())
}

fn process(shared: &Shared, basic_key: Option<&str>, body: &[u8]) -> Answer {
    let c = &shared.counters;
    let Ok(parsed) = serde_json::from_slice::<BatchBody<'_>>(body) else {
        return reject(
            shared,
            r#"{"code":"invalid_request","message":"Invalid JSON"}"#,
        );
    };
    // Segment accepts the key as Basic auth or in the body; every key given must match.
    let keys: Vec<&str> = [basic_key, parsed.write_key.as_deref()]
        .into_iter()
        .flatten()
        .filter(|k| !k.is_empty())
        .collect();
    if keys.is_empty() {
        bump(&c.bad_auth, 1);
        return reject(
            shared,
            r#"{"code":"invalid_request","message":"Missing write key"}"#,
        );
    }
    if keys.iter().any(|k| *k != shared.write_key) {
        // Segment answers 200 to an unknown key and the events go nowhere.
        bump(&c.bad_auth, 1);
        bump(&c.dropped_messages, parsed.batch.len());
        return answer(StatusCode::OK, OK_BODY);
    }
    if parsed
        .batch
        .iter()
        .any(|m| m.get().len() > MAX_MESSAGE_BYTES)
    {
        return reject(
            shared,
            r#"{"code":"invalid_request","message":"Exceed payload limit"}"#,
        );
    }
    let refused = {
        let needles = shared
            .refuse
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        !needles.is_empty()
            && parsed
                .batch
                .iter()
                .any(|m| needles.iter().any(|n| m.get().contains(n.as_str())))
    };
    if refused {
        return reject(
            shared,
            r#"{"code":"invalid_request","message":"Invalid message"}"#,
        );
    }
    if parsed.batch.len() > MAX_BATCH_MESSAGES {
        bump(&c.dropped_messages, parsed.batch.len());
        return answer(StatusCode::OK, OK_BODY);
    }
    let mut accepted = 0;
    let mut invalid = 0;
    let mut echo = shared.echo.then(|| std::io::stdout().lock());
    let mut state = shared.store.then(|| shared.lock());
    for raw in &parsed.batch {
        let Some(id) = validate(raw) else {
            invalid += 1;
            continue;
        };
        accepted += 1;
        if let Some(out) = echo.as_mut() {
            // A closed stdout must not fail the request; the demo output is best effort.
            if writeln!(out, "{}", raw.get()).is_err() {
                echo = None;
            }
        }
        if let Some(state) = state.as_mut() {
            let Ok(value) = serde_json::from_str(raw.get()) else {
                continue;
            };
            let index = state.messages.len();
            state.messages.push(value);
            if state.seen_ids.insert(id) {
                state.unique.push(index);
            }
        }
    }
    drop(state);
    if let Some(mut out) = echo {
        // Best effort, as above.
        if out.flush().is_err() {}
    }
    bump(&c.invalid_messages, invalid);
    bump(&c.dropped_messages, invalid);
    bump(&c.accepted_messages, accepted);
    bump(&c.accepted_requests, 1);
    shared.arrived.notify_waiters();
    answer(StatusCode::OK, OK_BODY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn validation_matches_segments_rules() {
        let ok = [
            r#"{"type":"track","event":"E","messageId":"m1","userId":"u"}"#,
            r#"{"type":"identify","messageId":"m2","anonymousId":"a"}"#,
            r#"{"type":"track","event":"E","messageId":"m\u0031","userId":42}"#,
        ];
        for s in ok {
            assert!(validate(&raw(s)).is_some(), "{s}");
        }
        assert_eq!(validate(&raw(ok[2])).as_deref(), Some("m1"));
        let long_id = format!(
            r#"{{"type":"identify","messageId":"{}","userId":"u"}}"#,
            "x".repeat(100)
        );
        let max_id = format!(
            r#"{{"type":"identify","messageId":"{}","userId":"u"}}"#,
            "x".repeat(99)
        );
        assert!(validate(&raw(&max_id)).is_some());
        let bad = [
            r#"{"event":"E","messageId":"m","userId":"u"}"#,
            r#"{"type":"bogus","messageId":"m","userId":"u"}"#,
            r#"{"type":"track","messageId":"m","userId":"u"}"#,
            r#"{"type":"track","event":"","messageId":"m","userId":"u"}"#,
            r#"{"type":"track","event":"E","userId":"u"}"#,
            r#"{"type":"track","event":"E","messageId":"","userId":"u"}"#,
            r#"{"type":"track","event":"E","messageId":"m"}"#,
            r#"{"type":"track","event":"E","messageId":"m","userId":null,"anonymousId":""}"#,
            r#"{"type":7,"event":"E","messageId":"m","userId":"u"}"#,
            r"[1,2]",
            long_id.as_str(),
        ];
        for s in bad {
            assert!(validate(&raw(s)).is_none(), "{s}");
        }
    }

    #[test]
    fn basic_auth_forms() {
        let enc = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(
            basic_username(enc("key:").as_bytes()).as_deref(),
            Some("key")
        );
        assert_eq!(
            basic_username(enc("key").as_bytes()).as_deref(),
            Some("key")
        );
        assert_eq!(
            basic_username(enc("key:pw").as_bytes()).as_deref(),
            Some("key")
        );
        assert_eq!(
            basic_username(format!("basic {}", &enc("k:")[6..]).as_bytes()).as_deref(),
            Some("k")
        );
        assert_eq!(basic_username(b"Bearer abc"), None);
        assert_eq!(basic_username(b"Basic !!!"), None);
        assert_eq!(basic_username(b"Basic"), None);
    }
}
