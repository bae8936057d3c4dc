//! Wiring: open the spool, start the sender, serve HTTP, and shut down in order.
//!
//! Shutdown (SIGTERM): readiness goes false at once, but webhooks are still taken for the
//! shutdown delay (Kubernetes needs a few seconds to take the pod out of the Service's endpoints,
//! and requests routed meanwhile must not fail); then new webhooks get 503, the HTTP server stops
//! accepting connections and finishes the requests in flight, and the sender drains the spool
//! until it is empty or the grace period ends; the rest stays on disk for the next start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use segment::{Client, ClientConfig, Destination, Limits, RetryPolicy};
use seshn::signature::Verifier;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::http::{AppState, BodyBudget, Sink, router};
use crate::mapping::{Mapper, MappingConfig};
use crate::metrics::Metrics;
use crate::sender::{self, Drained, SenderConfig};
use crate::spool::{Spool, SpoolError, SpoolOptions};
use crate::synchronous::SyncDelivery;

/// redb page cache: enough for the hot end of the spool, small enough for the RSS budget.
pub const SPOOL_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Delivery mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeliveryMode {
    /// 2xx once the event is durable in the on-disk spool.
    #[default]
    Spooled,
    /// 2xx once Segment accepted the batch holding the event.
    Synchronous,
}

/// Everything the forwarder needs, already validated. `Debug` redacts the secrets.
#[derive(Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Webhook secrets, current first.
    pub webhook_secrets: Vec<String>,
    /// Segment destination.
    pub destination: Destination,
    /// Segment write key (may be empty for file/stdout destinations).
    pub write_key: String,
    /// Delivery mode.
    pub mode: DeliveryMode,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Spool bound.
    pub spool_max_bytes: u64,
    /// Mapping.
    pub mapping: MappingConfig,
    /// Largest accepted webhook body.
    pub max_body_bytes: usize,
    /// Budget of body bytes buffered by all requests in flight together.
    pub max_inflight_body_bytes: usize,
    /// How long a request may take to send its body (408 after).
    pub body_read_timeout: Duration,
    /// Bound of the dead-letter table (the oldest go beyond it).
    pub dead_letter_max_bytes: u64,
    /// Time between SIGTERM (readiness false) and closing the listener.
    pub shutdown_delay: Duration,
    /// Time allowed for draining at shutdown.
    pub shutdown_grace: Duration,
    /// Synchronous mode: how long a request waits for Segment.
    pub sync_deadline: Duration,
    /// Per-request timeout towards Segment.
    pub segment_timeout: Duration,
    /// Segment limits.
    pub limits: Limits,
    /// Backoff between delivery attempts.
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Every field but the secrets, which show only whether (and how many) are set.
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field(
                "webhook_secrets",
                &format_args!("<{} redacted>", self.webhook_secrets.len()),
            )
            .field("destination", &self.destination)
            .field("write_key", &crate::config::Redacted(&self.write_key))
            .field("mode", &self.mode)
            .field("spool_dir", &self.spool_dir)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("mapping", &self.mapping)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_inflight_body_bytes", &self.max_inflight_body_bytes)
            .field("body_read_timeout", &self.body_read_timeout)
            .field("dead_letter_max_bytes", &self.dead_letter_max_bytes)
            .field("shutdown_delay", &self.shutdown_delay)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("sync_deadline", &self.sync_deadline)
            .field("segment_timeout", &self.segment_timeout)
            .field("limits", &self.limits)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Why the forwarder could not start or stop cleanly. Texts hold no secrets.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Invalid webhook secret configuration.
    #[error("webhook secret: {0}")]
    Secret(#[from] seshn::signature::SignatureError),
    /// Invalid mapping configuration.
    #[error("mapping: {0}")]
    Mapping(#[from] crate::mapping::ConfigError),
    /// The Segment client could not be built.
    #[error("segment client: {0}")]
    Client(#[from] segment::ClientError),
    /// The spool could not be opened.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    /// Binding or serving failed.
    #[error("listening on {addr}: {kind}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        kind: std::io::ErrorKind,
    },
}

/// A running forwarder.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: Arc<Notify>,
    task: JoinHandle<Result<Outcome, AppError>>,
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// For the spooled mode: whether the spool was emptied before the grace period ended.
    pub drained: Option<Drained>,
}

impl Running {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shared state (metrics, spool) for tests and diagnostics.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Starts the shutdown sequence (idempotent).
    pub fn shutdown(&self) {
        self.stop.notify_one();
    }

    /// Waits for the forwarder to stop.
    pub async fn wait(self) -> Result<Outcome, AppError> {
        match self.task.await {
            Ok(result) => result,
            Err(_) => Ok(Outcome { drained: None }),
        }
    }
}

/// Opens the spool, binds, and starts serving. Returns once the port is open.
pub async fn start(config: Config) -> Result<Running, AppError> {
    let verifier = Verifier::new(&config.webhook_secrets)?;
    let mapper = Mapper::new(config.mapping.clone())?;
    let mut client_config = ClientConfig::new(config.destination.clone(), config.write_key.clone());
    client_config.request_timeout = config.segment_timeout;
    let started = std::time::Instant::now();
    // The one client error a configuration can cause, checked before anything starts; the
    // client itself is built in the background (loading TLS roots takes milliseconds).
    if matches!(config.destination, Destination::Http(_)) && config.write_key.is_empty() {
        return Err(AppError::Client(segment::ClientError::MissingWriteKey));
    }
    // Building the HTTP client (TLS roots) and opening the spool (file, recovery scan, fsync)
    // are the slow parts of a start: run them side by side, off the async workers.
    let client_task = tokio::task::spawn_blocking(move || Client::new(client_config));
    let spool_task = (config.mode == DeliveryMode::Spooled).then(|| {
        let options = SpoolOptions {
            dir: config.spool_dir.clone(),
            max_bytes: config.spool_max_bytes,
            max_message_bytes: config.limits.max_message_bytes,
            cache_bytes: SPOOL_CACHE_BYTES,
            dead_letter_max_bytes: config.dead_letter_max_bytes,
        };
        tokio::task::spawn_blocking(move || Spool::open(&options))
    });
    let metrics = Arc::new(Metrics::new());
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| AppError::Listen {
            addr: config.listen,
            kind: e.kind(),
        })?;
    let addr = listener.local_addr().map_err(|e| AppError::Listen {
        addr: config.listen,
        kind: e.kind(),
    })?;
    let stop = Arc::new(Notify::new());
    let failed = Arc::new(AtomicBool::new(false));
    let (drain_tx, drain_rx) = watch::channel(None);
    let (sink, sender_task, spool) = match config.mode {
        DeliveryMode::Spooled => {
            let spool = match spool_task {
                Some(task) => task.await.unwrap_or(Err(SpoolError::Closed))?,
                None => return Err(AppError::Spool(SpoolError::Closed)),
            };
            let depth = spool.stats().depth.load(Ordering::Acquire);
            if depth > 0 {
                tracing::info!(depth, "resuming delivery of spooled messages");
            }
            // Serve at once; delivery starts when the client is ready. Should it fail to
            // build, accepted events stay on disk and the forwarder shuts down with an error.
            let task = {
                let spool = spool.clone();
                let metrics = Arc::clone(&metrics);
                let stop = Arc::clone(&stop);
                let failed = Arc::clone(&failed);
                let sender_config = SenderConfig {
                    limits: config.limits,
                    retry: config.retry,
                };
                tokio::spawn(async move {
                    match client_task.await {
                        Ok(Ok(client)) => {
                            sender::run(spool, client, sender_config, metrics, drain_rx).await
                        }
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "building the Segment client failed");
                            failed.store(true, Ordering::Release);
                            stop.notify_one();
                            Drained::DeadlineReached
                        }
                        Err(_) => {
                            failed.store(true, Ordering::Release);
                            stop.notify_one();
                            Drained::DeadlineReached
                        }
                    }
                })
            };
            (Sink::Spooled(spool.clone()), Some(task), Some(spool))
        }
        DeliveryMode::Synchronous => {
            let client = client_task.await.map_err(|_| {
                AppError::Client(segment::ClientError::Build("interrupted".into()))
            })??;
            let sync = SyncDelivery::start(
                client,
                config.limits,
                config.retry,
                config.sync_deadline,
                Arc::clone(&metrics),
            );
            (Sink::Synchronous(sync), None, None)
        }
    };
    let state = Arc::new(AppState {
        verifier,
        mapper,
        sink,
        metrics: Arc::clone(&metrics),
        max_body_bytes: config.max_body_bytes,
        body_budget: BodyBudget::new(config.max_inflight_body_bytes),
        body_read_timeout: config.body_read_timeout,
        ready: AtomicBool::new(true),
        accepting: AtomicBool::new(true),
    });
    metrics.set_ready(true);
    tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "ready");
    let app = router(Arc::clone(&state));
    let task = {
        let state = Arc::clone(&state);
        let stop = Arc::clone(&stop);
        let grace = config.shutdown_grace;
        let delay = config.shutdown_delay;
        tokio::spawn(async move {
            let stopping = Arc::new(Notify::new());
            let server = {
                let stopping = Arc::clone(&stopping);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stopping.notified().await })
            };
            let server = tokio::spawn(async move { server.await });
            stop.notified().await;
            state.ready.store(false, Ordering::Release);
            state.metrics.set_ready(false);
            if !delay.is_zero() {
                tracing::info!(
                    delay_secs = delay.as_secs_f64(),
                    "shutting down: not ready, still serving while the endpoints are updated"
                );
                tokio::time::sleep(delay).await;
            }
            let deadline = Instant::now() + grace;
            tracing::info!(grace_secs = grace.as_secs_f64(), "shutting down");
            state.accepting.store(false, Ordering::Release);
            stopping.notify_one();
            // In-flight requests finish first, so nothing is appended after the drain.
            if tokio::time::timeout_at(deadline, server).await.is_err() {
                tracing::warn!("open connections outlived the grace period");
            }
            let _ = drain_tx.send(Some(deadline));
            let drained = match sender_task {
                Some(task) => task.await.ok(),
                None => None,
            };
            if let Some(spool) = spool {
                let depth = spool.stats().depth.load(Ordering::Acquire);
                let _ = tokio::task::spawn_blocking(move || spool.close()).await;
                tracing::info!(left_in_spool = depth, "stopped");
            }
            if failed.load(Ordering::Acquire) {
                return Err(AppError::Client(segment::ClientError::Build(
                    "the Segment client could not be built".into(),
                )));
            }
            Ok(Outcome { drained })
        })
    };
    Ok(Running {
        addr,
        state,
        stop,
        task,
    })
}
