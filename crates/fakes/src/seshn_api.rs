//! A stateful fake of the Seshn webhooks management API with fault injection.
//!
//! It implements DESIGN §4.2's table over real HTTP on 127.0.0.1:
//!
//! | call | request | answer |
//! |---|---|---|
//! | create | `POST /v1/webhooks` `{url, events, description?, secret?}` + `Idempotency-Key` | 201 `{id, url, events, secret, enabled, createdAt}` |
//! | get | `GET /v1/webhooks/{id}` | 200 webhook (no secret) / 404 |
//! | list | `GET /v1/webhooks?limit=&starting_after=ID` | `{data, hasMore}` (limit 1..=100, default 10) |
//! | update | `PATCH /v1/webhooks/{id}` `{url?, events?}` | 200 webhook |
//! | delete | `DELETE /v1/webhooks/{id}` | 204 / 404 |
//!
//! Errors are `{error: {type, message}}`: 400 `invalid_request` (bad JSON, missing or mistyped
//! field), 401 `unauthorized` (unknown or revoked key), 403 `forbidden`, 404 `not_found`,
//! 409 `idempotency_conflict` (a key reused with another body), 422 `validation_error`
//! (non-http URL, empty event name or secret). Each API key is its own tenant. A create with an
//! `Idempotency-Key` seen before (for that API key) replays the first answer, as Stripe does,
//! even if the webhook was deleted since.
//!
//! Faults ([`Fault`]) are queued and each consumed by one matching request: latency, 429 with
//! `Retry-After`, any status, and "the operation happened but the answer was lost" (the
//! connection is closed without a byte of answer).

mod store;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

pub use store::FakeWebhook;
use store::{Reply, Store};

/// The API operations, for fault targeting and call counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `POST /v1/webhooks`.
    Create,
    /// `GET /v1/webhooks/{id}`.
    Get,
    /// `GET /v1/webhooks`.
    List,
    /// `PATCH /v1/webhooks/{id}`.
    Update,
    /// `DELETE /v1/webhooks/{id}`.
    Delete,
    /// Any other path or method.
    Other,
}

impl Op {
    /// Lower-case name (`create`, `get`, `list`, `update`, `delete`, `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Get => "get",
            Op::List => "list",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Other => "other",
        }
    }
}

/// A fault applied to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally, after this delay.
    Latency(Duration),
    /// Answer 429 (with `Retry-After: <secs>` when given) without doing anything.
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after_secs: Option<u64>,
    },
    /// Answer this status (e.g. 500, 503) with an error body, without doing anything.
    Status(u16),
    /// Do the operation, then close the connection without answering.
    LoseAnswer,
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which operation.
    pub op: Op,
    /// The status answered; 0 when the answer was deliberately lost.
    pub status: u16,
    /// The bearer key sent, if any.
    pub api_key: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    store: Store,
    faults: VecDeque<(Option<Op>, Fault)>,
    latency: Duration,
    /// The most recent calls (at most [`MAX_CALL_LOG`]), with when each was answered.
    calls: VecDeque<(Instant, Call)>,
    /// Exact counts per (API key, operation), kept apart from the capped log.
    counts: HashMap<(Option<String>, Op), usize>,
}

/// How many calls the log keeps, so a long-running `fake-seshn` does not grow without bound.
pub const MAX_CALL_LOG: usize = 100_000;

impl Shared {
    fn record(&mut self, call: Call) {
        *self
            .counts
            .entry((call.api_key.clone(), call.op))
            .or_default() += 1;
        if self.calls.len() >= MAX_CALL_LOG {
            self.calls.pop_front();
        }
        self.calls.push_back((Instant::now(), call));
    }
}

type App = Arc<Mutex<Shared>>;

fn lock(app: &App) -> MutexGuard<'_, Shared> {
    // The state stays consistent between statements, so a panic elsewhere does not spoil it.
    app.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per-connection handle a handler uses to close its connection without answering.
#[derive(Clone)]
struct ConnKill(Arc<Notify>);

/// A running fake Seshn API. Dropping it stops the server and closes its connections.
#[derive(Debug)]
pub struct FakeSeshn {
    addr: SocketAddr,
    app: App,
    shutdown: watch::Sender<bool>,
}

impl Drop for FakeSeshn {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl FakeSeshn {
    /// Starts on 127.0.0.1 with an ephemeral port.
    ///
    /// # Panics
    /// If no loopback port can be bound (a broken test machine).
    pub async fn start() -> FakeSeshn {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("binding the fake Seshn API to 127.0.0.1:0")
    }

    /// Starts on `addr` (the `fake-seshn` binary's `--listen`).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<FakeSeshn> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app: App = Arc::default();
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(serve(listener, router(app.clone()), shutdown_rx));
        Ok(FakeSeshn {
            addr,
            app,
            shutdown,
        })
    }

    /// `http://127.0.0.1:<port>` (the client appends `/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts `key` (again, if it was revoked).
    pub fn add_api_key(&self, key: &str) {
        lock(&self.app).store.add_key(key);
    }

    /// Revokes (401) or restores a key; its webhooks are kept either way.
    pub fn set_key_valid(&self, key: &str, valid: bool) {
        lock(&self.app).store.set_key_valid(key, valid);
    }

    /// Makes a key answer 403 (valid but not permitted) or lifts that.
    pub fn set_key_forbidden(&self, key: &str, forbidden: bool) {
        lock(&self.app).store.set_key_forbidden(key, forbidden);
    }

    /// The key's webhooks in creation order (with their secrets).
    pub fn webhooks(&self, api_key: &str) -> Vec<FakeWebhook> {
        lock(&self.app).store.webhooks(api_key)
    }

    /// How many webhooks exist across all keys.
    pub fn webhook_count(&self) -> usize {
        lock(&self.app).store.total()
    }

    /// Deletes a webhook as someone at Seshn would; true if it existed.
    pub fn delete_webhook_out_of_band(&self, id: &str) -> bool {
        lock(&self.app).store.delete_out_of_band(id)
    }

    /// Disables or enables a webhook as someone in Seshn's dashboard would (the API cannot);
    /// true if it existed.
    pub fn set_webhook_enabled_out_of_band(&self, id: &str, enabled: bool) -> bool {
        lock(&self.app).store.set_enabled_out_of_band(id, enabled)
    }

    /// Creates a webhook for `api_key` as someone in Seshn's dashboard would.
    pub fn insert_webhook_out_of_band(
        &self,
        api_key: &str,
        url: &str,
        events: &[String],
    ) -> FakeWebhook {
        lock(&self.app)
            .store
            .insert_out_of_band(api_key, url, events)
    }

    /// Queues a fault for the next request of `op` (`None`: of any operation).
    pub fn inject(&self, op: Option<Op>, fault: Fault) {
        self.inject_n(op, fault, 1);
    }

    /// Queues the same fault for the next `n` matching requests.
    pub fn inject_n(&self, op: Option<Op>, fault: Fault, n: usize) {
        lock(&self.app)
            .faults
            .extend(std::iter::repeat_n((op, fault), n));
    }

    /// Faults not consumed yet.
    pub fn pending_faults(&self) -> usize {
        lock(&self.app).faults.len()
    }

    /// Drops all queued faults.
    pub fn clear_faults(&self) {
        lock(&self.app).faults.clear();
    }

    /// Delays every answer by `latency` (on top of any [`Fault::Latency`]).
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.app).latency = latency;
    }

    /// The requests so far (the last [`MAX_CALL_LOG`]), in the order they were answered.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.app)
            .calls
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }

    /// Like [`FakeSeshn::calls`], each with the instant its answer was decided (before any
    /// bytes of it were sent): a test can check how long a client waited between calls.
    pub fn timed_calls(&self) -> Vec<(Instant, Call)> {
        lock(&self.app).calls.iter().cloned().collect()
    }

    /// How many requests of `op` arrived.
    pub fn call_count(&self, op: Op) -> usize {
        lock(&self.app)
            .counts
            .iter()
            .filter(|((_, o), _)| *o == op)
            .map(|(_, n)| n)
            .sum()
    }

    /// How many requests of `op` arrived with `api_key`.
    pub fn call_count_for(&self, api_key: &str, op: Op) -> usize {
        lock(&self.app)
            .counts
            .get(&(Some(api_key.to_owned()), op))
            .copied()
            .unwrap_or(0)
    }

    /// Forgets the call log and counts.
    pub fn reset_calls(&self) {
        let mut shared = lock(&self.app);
        shared.calls.clear();
        shared.counts.clear();
    }
}

/// Accepts connections until shutdown; each is served by hyper directly so that a handler can
/// close its connection without an answer (axum's `serve` offers no such hook).
async fn serve(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                stream
            }
            () = stopped(&mut shutdown) => return,
        };
        let kill = Arc::new(Notify::new());
        let service =
            TowerToHyperService::new(router.clone().layer(Extension(ConnKill(kill.clone()))));
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // Dropping `conn` closes the socket: that is how an answer gets "lost".
            tokio::select! {
                _ = conn => {}
                () = kill.notified() => {}
                () = stopped(&mut conn_shutdown) => {}
            }
        });
    }
}

/// Resolves once shutdown was signalled (or the handle is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, before any await of the caller.
    let _ = rx.wait_for(|stop| *stop).await.map(|_| ());
}

fn router(app: App) -> Router {
    Router::new()
        .route("/v1/webhooks", get(list).post(create))
        .route(
            "/v1/webhooks/{id}",
            get(get_one).patch(update).delete(delete),
        )
        .fallback(other)
        .with_state(app)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim().to_owned())
        .filter(|k| !k.is_empty())
}

/// Runs one request through faults, the store and the call log.
async fn handle(
    app: &App,
    kill: &ConnKill,
    op: Op,
    headers: &HeaderMap,
    run: impl FnOnce(&mut Store, Option<&str>) -> Reply,
) -> Response {
    let key = bearer(headers);
    let (fault, latency) = {
        let mut shared = lock(app);
        let pos = shared
            .faults
            .iter()
            .position(|(target, _)| target.is_none_or(|t| t == op));
        let fault = pos.and_then(|p| shared.faults.remove(p)).map(|(_, f)| f);
        (fault, shared.latency)
    };
    let extra = match &fault {
        Some(Fault::Latency(d)) => *d,
        _ => Duration::ZERO,
    };
    if !(latency + extra).is_zero() {
        tokio::time::sleep(latency + extra).await;
    }
    let reply = match &fault {
        Some(Fault::RateLimited { .. }) => Reply::error(429, "rate_limited", "too many requests"),
        Some(Fault::Status(status)) => Reply::error(*status, "server_error", "injected failure"),
        _ => run(&mut lock(app).store, key.as_deref()),
    };
    let lost = matches!(fault, Some(Fault::LoseAnswer));
    lock(app).record(Call {
        op,
        status: if lost { 0 } else { reply.status },
        api_key: key,
    });
    if lost {
        kill.0.notify_one();
        // The connection task drops this request with the connection.
        std::future::pending::<()>().await;
    }
    let mut response = into_response(reply);
    if let Some(Fault::RateLimited {
        retry_after_secs: Some(secs),
    }) = fault
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn into_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match reply.body {
        Some(body) => (status, Json(body)).into_response(),
        None => status.into_response(),
    };
    if reply.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

async fn create(
    State(app): State<App>,
    Extension(kill): Extension<ConnKill>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let idem = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    handle(&app, &kill, Op::Create, &headers, |store, key| {
        store.create(key, idem.as_deref(), &body)
    })
    .await
}

async fn list(
    State(app): State<App>,
    Extension(kill): Extension<ConnKill>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    handle(&app, &kill, Op::List, &headers, |store, key| {
        store.list(key, &query)
    })
    .await
}

async fn get_one(
    State(app): State<App>,
    Extension(kill): Extension<ConnKill>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    handle(&app, &kill, Op::Get, &headers, |store, key| {
        store.get(key, &id)
    })
    .await
}

async fn update(
    State(app): State<App>,
    Extension(kill): Extension<ConnKill>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&app, &kill, Op::Update, &headers, |store, key| {
        store.update(key, &id, &body)
    })
    .await
}

async fn delete(
    State(app): State<App>,
    Extension(kill): Extension<ConnKill>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    handle(&app, &kill, Op::Delete, &headers, |store, key| {
        store.delete(key, &id)
    })
    .await
}

async fn other(
    State(app): State<App>,
    Extension(kill): Extension<ConnKill>,
    headers: HeaderMap,
) -> Response {
    handle(&app, &kill, Op::Other, &headers, |store, key| {
        match store.authorize(key) {
            Err(reply) => reply,
            Ok(()) => Reply::error(404, "not_found", "no such route"),
        }
    })
    .await
}
