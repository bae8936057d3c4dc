//! The controller: wiring of the stages, per-object backoff, Events and `run`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bridge_api::{
    CONDITION_FORWARDER_AVAILABLE, CONDITION_WEBHOOK_SYNCED, SeshnSegmentBridge,
    SeshnSegmentBridgeStatus,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use seshn::webhooks::{RateLimiter, SeshnClient};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::apply;
use crate::build;
use crate::cleanup;
use crate::config::{Config, FINALIZER, MANAGED_BY};
use crate::error::{Class, Error, WebhookError};
use crate::leader::{LeaderElector, LeaderError};
use crate::metrics::{KindLabel, Metrics, ResultLabel, SeshnLabels};
use crate::resolve::{self, Sensitive};
use crate::status::{self, Cond};
use crate::validate::{self, WorkloadKind};
use crate::webhook::{self, SyncInput};

/// When and as what a bridge's webhook was last verified at Seshn.
#[derive(Debug, Clone)]
struct Verified {
    at: Instant,
    id: String,
    url: String,
    events: Vec<String>,
}

/// A bridge that failed transiently is not worked on again before `at`.
#[derive(Debug, Clone, Copy)]
struct NotBefore {
    at: Instant,
    /// The bridge's generation when it failed: a spec change is new input, worth trying at
    /// once (unless Seshn asked us to wait, `strict`).
    generation: Option<i64>,
    /// Whether it was being deleted then (a deletion is new input too).
    deleting: bool,
    /// Seshn asked for the wait (`Retry-After`): no change shortens it.
    strict: bool,
}

/// Whether a pass for `bridge` must wait, given its `NotBefore` entry: the time left.
fn wait_left(
    nb: &NotBefore,
    generation: Option<i64>,
    deleting: bool,
    now: Instant,
) -> Option<Duration> {
    let left = nb.at.checked_duration_since(now).filter(|d| !d.is_zero())?;
    let changed = nb.generation != generation || nb.deleting != deleting;
    (nb.strict || !changed).then_some(left)
}

/// State shared by every reconcile.
pub struct Shared {
    /// Kubernetes client.
    pub client: Client,
    /// Configuration.
    pub config: Config,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    http: reqwest::Client,
    limiter: Arc<RateLimiter>,
    recorder: Recorder,
    /// Consecutive transient failures per bridge uid (reset on success).
    failures: Mutex<HashMap<String, u32>>,
    /// Shape (workload kind, has Ingress) of each bridge's last successful apply: stale
    /// children can only exist after the shape changed (or before we know it).
    shapes: Mutex<HashMap<String, (WorkloadKind, bool)>>,
    /// Last verification of each bridge's webhook at Seshn: (when, id, url, events).
    observed: Mutex<HashMap<String, Verified>>,
    /// Bridges whose `CleanupBlocked` warning was already published.
    cleanup_warned: Mutex<HashSet<String>>,
    /// Per bridge uid: no pass before this (the backoff or `Retry-After` of its last transient
    /// failure). The status that failure wrote changes the object, and the watch would start
    /// the next pass at once, ahead of the backoff; such passes only requeue themselves.
    not_before: Mutex<HashMap<String, NotBefore>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Builds the shared state.
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>) -> Result<Self, Error> {
        let http = seshn::webhooks::try_http_client(config.seshn_timeout).map_err(|source| {
            WebhookError::Seshn {
                op: "client",
                source,
            }
        })?;
        let limiter = Arc::new(RateLimiter::new(
            config.seshn_rate_per_second,
            config.seshn_rate_burst,
        ));
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGED_BY.into(),
                instance: Some(config.instance.clone()),
            },
        );
        Ok(Self {
            client,
            config,
            metrics,
            http,
            limiter,
            recorder,
            failures: Mutex::default(),
            shapes: Mutex::default(),
            observed: Mutex::default(),
            cleanup_warned: Mutex::default(),
            not_before: Mutex::default(),
        })
    }

    /// A Seshn client for `key` at `base`, reporting every request to the metrics.
    pub fn seshn_client(&self, base: &str, key: &Sensitive) -> Result<SeshnClient, Error> {
        let key = key.as_str().unwrap_or_default();
        let metrics = self.metrics.clone();
        let client = SeshnClient::new(self.http.clone(), base, key, self.limiter.clone())
            .map_err(|source| WebhookError::Seshn {
                op: "client",
                source,
            })?
            .with_observer(Arc::new(move |op, code| {
                metrics
                    .seshn_requests
                    .get_or_create(&SeshnLabels { op, code })
                    .inc();
            }));
        Ok(client)
    }

    /// Publishes an Event about `bridge` (best effort: a failed Event never fails a pass).
    pub async fn event(
        &self,
        bridge: &SeshnSegmentBridge,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        match self.recorder.publish(&ev, &bridge.object_ref(&())).await {
            Ok(()) => self.metrics.wrote("event", 1),
            Err(e) => warn!(error = %e, reason, "publishing an Event failed"),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets per-object state of a bridge that is gone.
    pub fn forget(&self, bridge: &SeshnSegmentBridge) {
        let uid = bridge.uid().unwrap_or_default();
        self.failures().remove(&uid);
        lock(&self.shapes).remove(&uid);
        lock(&self.observed).remove(&uid);
        lock(&self.not_before).remove(&uid);
        self.cleanup_warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&uid);
    }

    /// True the first time it is called for a bridge (until `forget`).
    pub fn first_cleanup_warning(&self, bridge: &SeshnSegmentBridge) -> bool {
        self.cleanup_warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(bridge.uid().unwrap_or_default())
    }

    /// Next backoff delay for a bridge after a transient failure.
    fn next_backoff(&self, uid: &str) -> Duration {
        let n = {
            let mut failures = self.failures();
            let n = failures.entry(uid.to_owned()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        backoff_delay(
            self.config.backoff_min,
            self.config.backoff_max,
            n,
            rand::random::<f64>(),
        )
    }

    fn reset_backoff(&self, uid: &str) {
        self.failures().remove(uid);
        lock(&self.not_before).remove(uid);
    }

    /// Records that `bridge` must not be worked on for `delay`.
    fn defer(&self, bridge: &SeshnSegmentBridge, delay: Duration, strict: bool) {
        lock(&self.not_before).insert(
            bridge.uid().unwrap_or_default(),
            NotBefore {
                at: Instant::now() + delay,
                generation: bridge.metadata.generation,
                deleting: bridge.metadata.deletion_timestamp.is_some(),
                strict,
            },
        );
    }

    /// The time `bridge` still has to wait before a pass, if any.
    fn deferred(&self, bridge: &SeshnSegmentBridge) -> Option<Duration> {
        let uid = bridge.uid().unwrap_or_default();
        let mut not_before = lock(&self.not_before);
        let nb = not_before.get(&uid)?;
        let left = wait_left(
            nb,
            bridge.metadata.generation,
            bridge.metadata.deletion_timestamp.is_some(),
            Instant::now(),
        );
        if left.is_none() {
            not_before.remove(&uid);
        }
        left
    }

    /// Whether anything is kept about the bridge with `uid` (for tests).
    #[cfg(test)]
    fn remembers(&self, uid: &str) -> bool {
        self.failures().contains_key(uid)
            || lock(&self.shapes).contains_key(uid)
            || lock(&self.observed).contains_key(uid)
            || lock(&self.not_before).contains_key(uid)
            || lock(&self.cleanup_warned).contains(uid)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain maps, consistent between statements: a panic elsewhere does not spoil them.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Exponential backoff: `min * 2^(n-1)`, capped at `max`, with ±20% jitter from `r ∈ [0,1)`.
pub fn backoff_delay(min: Duration, max: Duration, n: u32, r: f64) -> Duration {
    let exp = min.saturating_mul(1u32 << n.saturating_sub(1).min(20));
    let capped = exp.min(max);
    capped.mul_f64(0.8 + 0.4 * r)
}

/// The resync delay: the interval plus up to 10% jitter, so bridges created together do not
/// resync together.
pub fn jittered(interval: Duration, r: f64) -> Duration {
    interval.mul_f64(1.0 + 0.1 * r)
}

/// Per-scope context.
pub struct Ctx {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").finish_non_exhaustive()
    }
}

fn error_conditions(
    bridge: &SeshnSegmentBridge,
    working: &SeshnSegmentBridge,
    forwarder: Option<Cond>,
    err: &Error,
) -> SeshnSegmentBridgeStatus {
    let previous = |type_: &str, fallback: Cond| {
        bridge.condition(type_).map_or(fallback, |c| Cond {
            status: match c.status.as_str() {
                "True" => "True",
                "False" => "False",
                _ => "Unknown",
            },
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
    };
    let failed = Cond::not(err.kind(), err.condition_message());
    let in_webhook_stage = matches!(err, Error::Webhook(_))
        || matches!(
            err,
            Error::Resolve(crate::error::ResolveError::SecretNotFound { name }
                | crate::error::ResolveError::SecretKeyMissing { name, .. })
                if *name == bridge.spec.seshn.api_key_secret_ref.name
        ) && forwarder.is_some();
    let (fwd, wh) = if in_webhook_stage {
        (
            forwarder.unwrap_or_else(|| {
                previous(
                    CONDITION_FORWARDER_AVAILABLE,
                    Cond::unknown("Reconciling", "not observed yet"),
                )
            }),
            failed,
        )
    } else {
        (
            failed,
            previous(
                CONDITION_WEBHOOK_SYNCED,
                Cond::unknown("Reconciling", "not synced yet"),
            ),
        )
    };
    let base = working.status.clone().unwrap_or_default();
    status::with_conditions(working, base, &fwd, &wh)
}

/// The Apply branch: resolve → validate → build → apply → (forwarder available) → webhook →
/// status.
async fn apply_bridge(bridge: Arc<SeshnSegmentBridge>, shared: &Shared) -> Result<Action, Error> {
    let ns = bridge.namespace().ok_or(Error::MissingField("namespace"))?;
    let api: Api<SeshnSegmentBridge> = Api::namespaced(shared.client.clone(), &ns);
    // The status as we last wrote it during this pass (a create records id/pending mid-pass).
    let mut working = (*bridge).clone();
    let mut forwarder_cond = None;
    let result = apply_stages(&bridge, shared, &api, &mut working, &mut forwarder_cond).await;
    match result {
        Ok(action) => Ok(action),
        Err(err) => {
            let st = error_conditions(&bridge, &working, forwarder_cond, &err);
            match status::write(&api, &working, &st).await {
                // The status changed, so this is a transition worth an Event (a repeat of the
                // same error changes nothing and stays silent).
                Ok(true) => {
                    shared.metrics.wrote("status", 1);
                    shared
                        .event(
                            &bridge,
                            EventType::Warning,
                            err.kind(),
                            "Reconcile",
                            err.condition_message(),
                        )
                        .await;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "writing the error status failed"),
            }
            Err(err)
        }
    }
}

async fn apply_stages(
    bridge: &SeshnSegmentBridge,
    shared: &Shared,
    api: &Api<SeshnSegmentBridge>,
    working: &mut SeshnSegmentBridge,
    forwarder_cond: &mut Option<Cond>,
) -> Result<Action, Error> {
    let resync = jittered(shared.config.resync_interval, rand::random::<f64>());
    if bridge.spec.suspend {
        let base = working.status.clone().unwrap_or_default();
        let previous_fwd = bridge
            .condition(CONDITION_FORWARDER_AVAILABLE)
            .filter(|c| c.status == "True")
            .map_or_else(
                || Cond::unknown("Suspended", "the bridge is suspended"),
                |c| Cond::ok(&c.reason, c.message.clone()),
            );
        let st = status::with_conditions(
            working,
            base,
            &previous_fwd,
            &Cond::not(
                "Suspended",
                "spec.suspend is true: Seshn is not called and the children are left as they are",
            ),
        );
        if status::write(api, working, &st).await? {
            shared.metrics.wrote("status", 1);
            shared
                .event(
                    bridge,
                    EventType::Normal,
                    "Suspended",
                    "Suspend",
                    "reconciliation suspended".into(),
                )
                .await;
        }
        return Ok(Action::await_change());
    }

    // Validate first: it needs no I/O.
    let v = validate::validate(bridge, &shared.config)?;
    let secrets: Api<Secret> = Api::namespaced(shared.client.clone(), &v.namespace);

    // Resolve what the pods use (write key, signing secret).
    let write_key =
        resolve::secret_key(&secrets, &bridge.spec.segment.write_key_secret_ref).await?;
    let signing = if let Some(s) = resolve::signing_secret(&secrets, &v).await? {
        s
    } else {
        // Generated once; never regenerated while the Secret exists (the forwarder and Seshn
        // share it). When it had to be (someone deleted the Secret or its key) and a webhook is
        // registered, Seshn keeps signing with the lost secret and every delivery would fail
        // verification: the new Secret names that webhook, so the webhook stage replaces it
        // (Seshn cannot change a webhook's secret). Decided on a fresh read: the cached copy
        // may predate the write that recorded the id.
        let fresh = api.get(&v.name).await?;
        let registered = fresh
            .status
            .as_ref()
            .and_then(|s| s.webhook.as_ref())
            .and_then(|w| w.id.clone());
        working.status = fresh.status;
        let generated = resolve::generate_signing_secret();
        apply::apply_secret(
            &shared.client,
            build::signing_secret(bridge, &v, &generated, registered.as_deref()),
        )
        .await?;
        shared.metrics.wrote("secret", 1);
        resolve::signing_secret(&secrets, &v)
            .await?
            .ok_or_else(|| crate::error::ResolveError::SecretKeyMissing {
                name: v.signing_secret_name.clone(),
                key: validate::SIGNING_SECRET_KEY.into(),
            })?
    };

    // Build and apply the children.
    let checksum = build::secrets_checksum(&[write_key.expose(), signing.value.expose()]);
    let children = build::build(bridge, &v, &checksum);
    let shape = (v.workload, bridge.spec.exposure.ingress.is_some());
    let check_stale = lock(&shared.shapes).get(&v.uid) != Some(&shape);
    let (writes, observed) =
        apply::apply_children(&shared.client, children, &v.uid, check_stale).await?;
    lock(&shared.shapes).insert(v.uid.clone(), shape);
    shared.metrics.wrote("child", writes);

    let fwd = if bridge.spec.forwarder.replicas == 0 {
        Cond::not("ScaledToZero", "spec.forwarder.replicas is 0")
    } else if observed.available {
        Cond::ok(
            "Available",
            match v.workload {
                WorkloadKind::Deployment => "the forwarder Deployment has available pods",
                WorkloadKind::StatefulSet => "the forwarder StatefulSet has ready pods",
            },
        )
    } else {
        Cond::not("WaitingForForwarder", "no forwarder pod is available yet")
    };
    *forwarder_cond = Some(fwd.clone());

    let previous_webhook = working.status.as_ref().and_then(|s| s.webhook.clone());
    let known = previous_webhook
        .as_ref()
        .is_some_and(|w| w.id.is_some() || w.pending_since.is_some());
    let (webhook_status, wh_cond) = if !observed.available && !known {
        // Registering a URL nothing answers would only make Seshn's deliveries fail.
        (
            previous_webhook,
            Cond::not(
                "WaitingForForwarder",
                "the webhook is registered once a forwarder pod is available",
            ),
        )
    } else if let Some(st) = recently_verified(shared, &v, previous_webhook.as_ref())
        .filter(|_| signing.replaces.is_none())
    {
        let id = st.id.clone().unwrap_or_default();
        (Some(st), status::synced(&id, &v.webhook_url))
    } else {
        if previous_webhook.as_ref().is_none_or(|w| w.id.is_none()) {
            // The cached object may predate our own last status write (the watch lags), and
            // "no id" is what leads to a create: decide on a fresh read instead.
            let fresh = api.get(&v.name).await?;
            working.status = fresh.status;
        }
        let api_key = resolve::secret_key(&secrets, &bridge.spec.seshn.api_key_secret_ref).await?;
        let seshn = shared.seshn_client(&v.seshn_api_url, &api_key)?;
        let signing_text = signing.value.as_str().unwrap_or_default().to_owned();
        let input = SyncInput {
            seshn: &seshn,
            kube: &shared.client,
            bridge: &*working,
            v: &v,
            signing_secret: &signing_text,
            replaces: signing.replaces.as_deref(),
            forwarder: &fwd,
            ready_replicas: observed.ready_replicas,
        };
        let mut written = Vec::new();
        let outcome = webhook::sync(&input, &mut written).await;
        shared.metrics.wrote("status", written.len());
        if let Some(st) = written.pop() {
            working.status = Some(st);
        }
        let synced = outcome?;
        let id = synced.status.id.clone().unwrap_or_default();
        if synced.enabled {
            lock(&shared.observed).insert(
                v.uid.clone(),
                Verified {
                    at: Instant::now(),
                    id: id.clone(),
                    url: v.webhook_url.clone(),
                    events: v.events.clone(),
                },
            );
        } else {
            // Not a state to remember as verified: every pass looks again.
            lock(&shared.observed).remove(&v.uid);
        }
        let replaced = synced.replaced.clone().unwrap_or_default();
        let (reason, note) = match synced.action {
            webhook::Action::Unchanged => ("", String::new()),
            webhook::Action::Created => (
                "WebhookCreated",
                format!("registered webhook {id} for {}", v.webhook_url),
            ),
            webhook::Action::Adopted => (
                "WebhookAdopted",
                format!(
                    "adopted webhook {id} left by an interrupted create (found by the bridge uid in its URL)"
                ),
            ),
            webhook::Action::Updated => (
                "WebhookUpdated",
                format!("updated webhook {id} to the spec's URL and events"),
            ),
            webhook::Action::Recreated => (
                "WebhookRecreated",
                format!(
                    "webhook {replaced} had been deleted at Seshn; registered it again as {id}"
                ),
            ),
            webhook::Action::Replaced => (
                "WebhookRecreated",
                format!(
                    "the signing Secret {} had been deleted and was regenerated, but Seshn \
                     signs webhook {replaced} with the lost secret and cannot change it: \
                     registered {id} with the new secret and deleted {replaced}",
                    v.signing_secret_name
                ),
            ),
        };
        if !reason.is_empty() {
            shared
                .event(bridge, EventType::Normal, reason, "SyncWebhook", note)
                .await;
        }
        let cond = webhook::webhook_condition(&id, &v.webhook_url, synced.enabled);
        let was_disabled = bridge
            .condition(CONDITION_WEBHOOK_SYNCED)
            .is_some_and(|c| c.reason == "WebhookDisabled");
        if !synced.enabled && !was_disabled {
            shared
                .event(
                    bridge,
                    EventType::Warning,
                    "WebhookDisabled",
                    "SyncWebhook",
                    cond.message.clone(),
                )
                .await;
        }
        (Some(synced.status), cond)
    };

    let st = status::complete(
        working,
        working.status.clone().unwrap_or_default(),
        webhook_status,
        observed.ready_replicas,
        &fwd,
        &wh_cond,
    );
    if status::write(api, working, &st).await? {
        shared.metrics.wrote("status", 1);
    }
    // Compared with the pass's input: the webhook stage may already have recorded Ready.
    let was_ready = bridge
        .condition(bridge_api::CONDITION_READY)
        .is_some_and(|c| c.status == "True");
    let ready_now = st
        .conditions
        .iter()
        .any(|c| c.type_ == bridge_api::CONDITION_READY && c.status == "True");
    if ready_now && !was_ready {
        shared
            .event(
                bridge,
                EventType::Normal,
                "Ready",
                "Reconcile",
                "the forwarder is available and the webhook is registered".into(),
            )
            .await;
    }
    Ok(Action::requeue(resync))
}

/// The recorded webhook status when this bridge's webhook was verified at Seshn within
/// `observe_interval` with exactly the wanted id, URL and events.
fn recently_verified(
    shared: &Shared,
    v: &validate::Validated,
    previous: Option<&bridge_api::WebhookStatus>,
) -> Option<bridge_api::WebhookStatus> {
    let previous = previous?;
    let id = previous.id.as_ref()?;
    let observed = lock(&shared.observed);
    let seen = observed.get(&v.uid)?;
    // Never long enough to swallow a periodic resync.
    let fresh_for = shared
        .config
        .observe_interval
        .min(shared.config.resync_interval / 2);
    (seen.at.elapsed() < fresh_for
        && seen.id == *id
        && seen.url == v.webhook_url
        && seen.events == v.events
        && previous.url.as_deref() == Some(v.webhook_url.as_str())
        && previous.events == v.events)
        .then(|| previous.clone())
}

fn unwrap_finalizer_error(e: finalizer::Error<Error>) -> Error {
    match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
        finalizer::Error::UnnamedObject => Error::MissingField("metadata.name"),
        finalizer::Error::InvalidFinalizer => Error::MissingField("a valid finalizer name"),
    }
}

async fn reconcile(bridge: Arc<SeshnSegmentBridge>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let shared = ctx.shared.clone();
    let span = info_span!(
        "reconcile",
        namespace = bridge.namespace().unwrap_or_default(),
        name = bridge.name_any()
    );
    async move {
        // Woken before its backoff ended (by the status its failure wrote, a child or Secret
        // event): come back when the wait is over instead of calling Seshn again.
        if let Some(left) = shared.deferred(&bridge) {
            debug!(
                wait_ms = left.as_millis() as u64,
                "backing off; pass deferred"
            );
            return Ok(Action::requeue(left));
        }
        let started = Instant::now();
        let ns = bridge.namespace().ok_or(Error::MissingField("namespace"))?;
        let uid = bridge.uid().unwrap_or_default();
        let api: Api<SeshnSegmentBridge> = Api::namespaced(shared.client.clone(), &ns);
        let had_finalizer = bridge.finalizers().iter().any(|f| f == FINALIZER);
        let result = finalizer(&api, FINALIZER, bridge, |event| async {
            match event {
                // Boxed: the pass's future is large and would bloat every task's stack.
                finalizer::Event::Apply(b) => Box::pin(apply_bridge(b, &shared)).await,
                finalizer::Event::Cleanup(b) => Box::pin(cleanup::cleanup(&b, &shared)).await,
            }
        })
        .await
        .map_err(unwrap_finalizer_error);
        shared
            .metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => {
                if !had_finalizer {
                    shared.metrics.wrote("finalizer", 1);
                }
                shared.reset_backoff(&uid);
                shared
                    .metrics
                    .reconciles
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
            }
            Err(e) => {
                shared
                    .metrics
                    .reconciles
                    .get_or_create(&ResultLabel { result: "error" })
                    .inc();
                shared
                    .metrics
                    .errors
                    .get_or_create(&KindLabel { kind: e.kind() })
                    .inc();
                debug!(error = %e, kind = e.kind(), "reconcile failed");
            }
        }
        result
    }
    .instrument(span)
    .await
}

#[allow(clippy::needless_pass_by_value)] // the signature kube-runtime requires
fn error_policy(bridge: Arc<SeshnSegmentBridge>, err: &Error, ctx: Arc<Ctx>) -> Action {
    let shared = &ctx.shared;
    match err.class() {
        // Retrying the same request cannot help: wait for a change of the bridge or a
        // referenced Secret (both watched). But not forever: what failed may be fixed outside
        // Kubernetes (a key re-enabled at Seshn), so look again after the resync interval,
        // like a healthy bridge; that is one attempt per interval, no loop.
        Class::Terminal => {
            info!(name = %bridge.name_any(), kind = err.kind(), error = %err.condition_message(), "terminal error; waiting for a change or the resync");
            Action::requeue(jittered(
                shared.config.resync_interval,
                rand::random::<f64>(),
            ))
        }
        Class::Transient => {
            let uid = bridge.uid().unwrap_or_default();
            let mut delay = shared.next_backoff(&uid);
            if let Some(after) = err.retry_after() {
                delay = delay.max(after);
            }
            if matches!(err, Error::CleanupBlocked(_)) {
                // Come back right after the deadline to give up on time.
                let left = cleanup::time_left(&bridge, shared.config.cleanup_deadline);
                delay = delay.min(left + Duration::from_millis(200));
            }
            info!(name = %bridge.name_any(), kind = err.kind(), error = %err.condition_message(), delay_ms = delay.as_millis() as u64, "transient error; retrying");
            shared.defer(&bridge, delay, err.retry_after().is_some());
            Action::requeue(delay)
        }
    }
}

/// Bridges of `secret`'s namespace that reference it (or own it as their signing Secret).
/// Only the Secret's name and namespace are needed: the watch carries metadata only.
fn bridges_using(
    store: &Store<SeshnSegmentBridge>,
    secret: &ObjectMeta,
) -> Vec<ObjectRef<SeshnSegmentBridge>> {
    let name = secret.name.clone().unwrap_or_default();
    let ns = secret.namespace.clone();
    store
        .state()
        .iter()
        .filter(|b| b.namespace() == ns)
        .filter(|b| {
            b.spec.seshn.api_key_secret_ref.name == name
                || b.spec.segment.write_key_secret_ref.name == name
                || format!("{}{}", b.name_any(), validate::SIGNING_SECRET_SUFFIX) == name
        })
        .map(|b| ObjectRef::from_obj(b.as_ref()))
        .collect()
}

fn api_for<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as Resource>::DynamicType: Default,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn run_scope(
    shared: Arc<Shared>,
    scope: Option<String>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = shared.client.clone();
    let scope = scope.as_deref();
    let children =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    // Service-account tokens are the bulk of a cluster's Secrets and never referenced.
    let secrets_wc = watcher::Config::default().fields("type!=kubernetes.io/service-account-token");
    // Metadata only (an `Api<PartialObjectMeta<_>>` lists and watches with metadata-only
    // requests): mapping a Secret to its bridges needs its name, and its values are read by a
    // targeted GET when a pass needs them. A full watch would keep every Secret of the watched
    // namespaces (the whole cluster by default) in the operator's memory.
    let secrets = api_for::<PartialObjectMeta<Secret>>(&client, scope);
    let controller = Controller::new(
        api_for::<SeshnSegmentBridge>(&client, scope),
        watcher::Config::default(),
    );
    let store = controller.store();
    let mut stop_rx = stop;
    controller
        .owns(api_for::<Deployment>(&client, scope), children.clone())
        .owns(api_for::<StatefulSet>(&client, scope), children.clone())
        .owns(api_for::<Service>(&client, scope), children.clone())
        .owns(api_for::<Ingress>(&client, scope), children)
        .watches(secrets, secrets_wc, move |s: PartialObjectMeta<Secret>| {
            bridges_using(&store, &s.metadata)
        })
        .with_config(controller::Config::default().concurrency(shared.config.concurrency))
        .graceful_shutdown_on(async move {
            let _ = stop_rx.wait_for(|stopped| *stopped).await;
        })
        .run(reconcile, error_policy, Arc::new(Ctx { shared }))
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// Errors that end [`run`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The CRD is not installed (or not readable).
    #[error(
        "cannot list SeshnSegmentBridges ({0}); is the CRD installed? `seshn-segment-operator crd | kubectl apply -f -`"
    )]
    CrdMissing(#[source] kube::Error),
    /// Building the shared state failed.
    #[error("starting: {0}")]
    Setup(#[from] Error),
    /// Leader election failed or the lease was lost.
    #[error(transparent)]
    Leader(#[from] LeaderError),
}

/// Runs the operator until `shutdown` resolves (or the leader lease is lost).
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let probe: Api<SeshnSegmentBridge> = match config.watch_namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    probe
        .list(&ListParams::default().limit(1))
        .await
        .map_err(RunError::CrdMissing)?;
    let shared = Arc::new(Shared::new(
        client.clone(),
        config.clone(),
        metrics.clone(),
    )?);
    // Ready means "up and able to reach the API", also while standing by for the lease: a
    // standby that is never ready would block every rolling update of the operator.
    metrics.set_ready(true);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);

    let elector = config
        .leader_election
        .as_ref()
        .map(|le| LeaderElector::new(client.clone(), le.clone(), config.instance.clone()));
    let mut acquired_at = tokio::time::Instant::now();
    if let Some(elector) = &elector {
        acquired_at = tokio::select! {
            res = elector.acquire() => res?,
            () = &mut shutdown => return Ok(()),
        };
        info!(instance = %config.instance, "acquired the leader lease");
    }
    metrics.leader.set(1);

    let scopes: Vec<Option<String>> = if config.watch_namespaces.is_empty() {
        vec![None]
    } else {
        // One controller per namespace: a repeated name would run two for the same objects.
        let mut seen = HashSet::new();
        config
            .watch_namespaces
            .iter()
            .filter(|n| seen.insert(n.as_str()))
            .cloned()
            .map(Some)
            .collect()
    };
    let controllers = futures::future::join_all(
        scopes
            .into_iter()
            .map(|scope| run_scope(shared.clone(), scope, stop_rx.clone())),
    );
    tokio::pin!(controllers);
    let hold = async {
        match &elector {
            Some(e) => e.hold(acquired_at).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = &mut controllers => Ok(()),
        () = &mut shutdown => {
            let _ = stop_tx.send(true);
            controllers.await;
            Ok(())
        }
        lost = hold => {
            // Stop acting at once: dropping the controllers cancels in-flight reconciles.
            warn!("lost the leader lease; stopping");
            Err(RunError::Leader(lost))
        }
    };
    metrics.leader.set(0);
    metrics.set_ready(false);
    if let Some(e) = &elector
        && outcome.is_ok()
    {
        e.release().await;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ResolveError;
    use crate::fixtures::bridge;
    use bridge_api::CONDITION_READY;
    use seshn::webhooks::SeshnError;

    #[test]
    fn backoff_doubles_from_min_to_max_with_bounded_jitter() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
        // r = 0.5 is the middle of the ±20% band: the plain exponential.
        assert_eq!(backoff_delay(min, max, 1, 0.5), Duration::from_secs(1));
        assert_eq!(backoff_delay(min, max, 2, 0.5), Duration::from_secs(2));
        assert_eq!(backoff_delay(min, max, 5, 0.5), Duration::from_secs(16));
        assert_eq!(backoff_delay(min, max, 9, 0.5), Duration::from_secs(256));
        assert_eq!(backoff_delay(min, max, 10, 0.5), max);
        // Huge counts neither overflow nor pass the cap.
        assert_eq!(backoff_delay(min, max, u32::MAX, 0.5), max);
        // n = 0 (never happens: counted from 1) behaves like the first failure.
        assert_eq!(backoff_delay(min, max, 0, 0.5), min);
        for n in 1..40 {
            for r in [0.0, 0.25, 0.999] {
                let d = backoff_delay(min, max, n, r);
                let plain = min.saturating_mul(1 << (n - 1).min(20)).min(max);
                assert!(
                    d >= plain.mul_f64(0.8) && d <= plain.mul_f64(1.2),
                    "{n} {r}: {d:?}"
                );
            }
        }
        assert!(backoff_delay(min, max, 3, 0.0) < backoff_delay(min, max, 3, 0.99));
    }

    #[test]
    fn resync_jitter_only_adds_up_to_ten_percent() {
        let i = Duration::from_secs(600);
        assert_eq!(jittered(i, 0.0), i);
        assert!(jittered(i, 0.999) < Duration::from_secs(660));
        assert!(jittered(i, 0.5) > i);
    }

    fn cond<'a>(st: &'a SeshnSegmentBridgeStatus, type_: &str) -> (&'a str, &'a str) {
        let c = st.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    fn with_status(
        mut b: SeshnSegmentBridge,
        fwd: &Cond,
        wh: &Cond,
        id: Option<&str>,
    ) -> SeshnSegmentBridge {
        let base = SeshnSegmentBridgeStatus {
            webhook: id.map(|id| bridge_api::WebhookStatus {
                id: Some(id.into()),
                ..bridge_api::WebhookStatus::default()
            }),
            ..SeshnSegmentBridgeStatus::default()
        };
        b.status = Some(status::with_conditions(&b, base, fwd, wh));
        b
    }

    #[test]
    fn error_conditions_blame_the_stage_that_failed_and_keep_the_rest() {
        let available = Cond::ok("Available", "up");
        let synced = Cond::ok("Synced", "ok");
        let b = with_status(bridge(), &available, &synced, Some("wh_1"));

        // A Seshn error after the forwarder stage: the webhook's condition.
        let unauthorized = Error::Webhook(WebhookError::Seshn {
            op: "get",
            source: SeshnError::Unauthorized { status: 401 },
        });
        let st = error_conditions(&b, &b, Some(available.clone()), &unauthorized);
        assert_eq!(
            cond(&st, CONDITION_FORWARDER_AVAILABLE),
            ("True", "Available")
        );
        assert_eq!(
            cond(&st, CONDITION_WEBHOOK_SYNCED),
            ("False", "Unauthorized")
        );
        assert_eq!(cond(&st, CONDITION_READY), ("False", "Unauthorized"));
        assert_eq!(
            st.webhook.as_ref().and_then(|w| w.id.as_deref()),
            Some("wh_1"),
            "the recorded webhook is kept"
        );

        // The API-key Secret is read in the webhook stage: its absence is the webhook's.
        let no_key: Error = ResolveError::SecretNotFound {
            name: "acme-seshn".into(),
        }
        .into();
        let st = error_conditions(&b, &b, Some(available.clone()), &no_key);
        assert_eq!(
            cond(&st, CONDITION_WEBHOOK_SYNCED),
            ("False", "SecretNotFound")
        );
        assert_eq!(
            cond(&st, CONDITION_FORWARDER_AVAILABLE),
            ("True", "Available")
        );

        // The write key is needed before the forwarder can run: its condition; the webhook's
        // condition stays as it was.
        let no_write_key: Error = ResolveError::SecretNotFound {
            name: "acme-segment".into(),
        }
        .into();
        let st = error_conditions(&b, &b, None, &no_write_key);
        assert_eq!(
            cond(&st, CONDITION_FORWARDER_AVAILABLE),
            ("False", "SecretNotFound")
        );
        assert_eq!(cond(&st, CONDITION_WEBHOOK_SYNCED), ("True", "Synced"));
        assert_eq!(cond(&st, CONDITION_READY), ("False", "SecretNotFound"));

        // A Seshn error without a forwarder observation keeps the previous forwarder state; a
        // fresh bridge reports it unknown.
        let fresh = bridge();
        let st = error_conditions(&fresh, &fresh, None, &unauthorized);
        assert_eq!(
            cond(&st, CONDITION_FORWARDER_AVAILABLE),
            ("Unknown", "Reconciling")
        );
        let invalid: Error = crate::error::ValidateError("bad".into()).into();
        let st = error_conditions(&fresh, &fresh, None, &invalid);
        assert_eq!(
            cond(&st, CONDITION_WEBHOOK_SYNCED),
            ("Unknown", "Reconciling")
        );
        assert_eq!(cond(&st, CONDITION_READY), ("False", "InvalidSpec"));

        // The status recorded mid-pass (`working`) is the base, the input's conditions decide
        // the transition times.
        let mut working = b.clone();
        working.status.as_mut().unwrap().webhook = Some(bridge_api::WebhookStatus {
            id: Some("wh_2".into()),
            ..bridge_api::WebhookStatus::default()
        });
        let st = error_conditions(&b, &working, Some(available), &unauthorized);
        assert_eq!(st.webhook.and_then(|w| w.id).as_deref(), Some("wh_2"));
    }

    #[test]
    fn secrets_map_to_the_bridges_of_their_namespace_that_use_them() {
        let (store, mut writer) = kube::runtime::reflector::store::<SeshnSegmentBridge>();
        let acme = bridge();
        let mut other_ns = bridge();
        other_ns.metadata.namespace = Some("tenant-b".into());
        other_ns.metadata.uid = Some("uid-b".into());
        let mut beta = bridge();
        beta.metadata.name = Some("beta".into());
        beta.metadata.uid = Some("uid-beta".into());
        beta.spec.segment.write_key_secret_ref.name = "beta-segment".into();
        for b in [acme, other_ns, beta] {
            writer.apply_watcher_event(&watcher::Event::Apply(b));
        }
        let names = |name: &str, ns: &str| {
            let meta = ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..ObjectMeta::default()
            };
            let mut found: Vec<String> = bridges_using(&store, &meta)
                .into_iter()
                .map(|r| r.name)
                .collect();
            found.sort();
            found
        };
        // Shared API key: both bridges of tenant-a, not the one in tenant-b.
        assert_eq!(names("acme-seshn", "tenant-a"), vec!["acme", "beta"]);
        assert_eq!(names("acme-seshn", "tenant-b"), vec!["acme"]);
        assert_eq!(names("acme-segment", "tenant-a"), vec!["acme"]);
        assert_eq!(names("beta-segment", "tenant-a"), vec!["beta"]);
        // The owned signing Secret.
        assert_eq!(names("beta-webhook-signing", "tenant-a"), vec!["beta"]);
        assert!(names("unrelated", "tenant-a").is_empty());
        assert!(names("acme-seshn", "tenant-c").is_empty());
    }

    #[test]
    fn a_backoff_window_holds_passes_until_it_ends_or_the_spec_changes() {
        let now = Instant::now();
        let nb = NotBefore {
            at: now + Duration::from_secs(5),
            generation: Some(3),
            deleting: false,
            strict: false,
        };
        assert_eq!(
            wait_left(&nb, Some(3), false, now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            wait_left(&nb, Some(3), false, now + Duration::from_secs(5)),
            None
        );
        // New input: a spec change or a deletion.
        assert_eq!(wait_left(&nb, Some(4), false, now), None);
        assert_eq!(wait_left(&nb, Some(3), true, now), None);
        // Seshn's Retry-After holds whatever changed.
        let strict = NotBefore { strict: true, ..nb };
        assert_eq!(
            wait_left(&strict, Some(4), true, now + Duration::from_secs(1)),
            Some(Duration::from_secs(4))
        );
    }

    fn offline_shared() -> Shared {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Nothing listens there; the tests below make no request.
        let client =
            Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        Shared::new(client, Config::new("img:1"), Arc::new(Metrics::new())).unwrap()
    }

    #[tokio::test]
    async fn deferred_passes_are_counted_from_the_failure() {
        let shared = offline_shared();
        let b = bridge();
        assert_eq!(shared.deferred(&b), None);
        shared.defer(&b, Duration::from_secs(30), false);
        let left = shared.deferred(&b).unwrap();
        assert!(left <= Duration::from_secs(30) && left > Duration::from_secs(20));
        let mut changed = b.clone();
        changed.metadata.generation = Some(2);
        assert_eq!(shared.deferred(&changed), None, "a spec change goes ahead");
        assert_eq!(shared.deferred(&b), None, "and ends the window");
        shared.defer(&b, Duration::from_secs(30), true);
        shared.reset_backoff("0000-uid");
        assert_eq!(shared.deferred(&b), None, "success ends it");
    }

    #[tokio::test]
    async fn orphaned_and_webhookless_deletions_forget_the_bridge() {
        let shared = offline_shared();
        let mut b = bridge();
        b.spec.deletion_policy = bridge_api::DeletionPolicy::Orphan;
        b.status = Some(SeshnSegmentBridgeStatus {
            webhook: Some(bridge_api::WebhookStatus {
                id: Some("wh_1".into()),
                ..bridge_api::WebhookStatus::default()
            }),
            ..SeshnSegmentBridgeStatus::default()
        });
        let _ = shared.next_backoff("0000-uid");
        shared.defer(&b, Duration::from_secs(30), false);
        assert!(shared.first_cleanup_warning(&b));
        assert!(shared.remembers("0000-uid"));
        cleanup::cleanup(&b, &shared).await.unwrap();
        assert!(!shared.remembers("0000-uid"));
    }
}
