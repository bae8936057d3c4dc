//! Webhook stage: observe / create / update at Seshn (DESIGN §8), Crossplane-style.
//!
//! Invariants:
//! - `status.webhook.pendingSince` is written before every create; with it set and no id, a
//!   create may have happened without its answer reaching us, so we list and adopt the webhook
//!   carrying our uid in its URL instead of creating another one;
//! - the id (and Seshn's secret, if it chose one) is recorded right after create;
//! - with an id: get, compare, update only on a difference; 404 → recreate;
//! - we only ever touch webhooks whose id we recorded or whose URL carries our uid.

use bridge_api::{SecretKeyRef, SeshnSegmentBridge, SeshnSegmentBridgeStatus, WebhookStatus};
use kube::{Api, Client};
use seshn::webhooks::{NewWebhook, SeshnClient, SeshnError, Webhook, WebhookPatch};
use sha2::{Digest, Sha256};

use crate::apply;
use crate::build;
use crate::error::WebhookError;
use crate::status;
use crate::validate::{SIGNING_SECRET_KEY, Validated};

/// What the pass did at Seshn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    Unchanged,
    /// Registered a new webhook.
    Created,
    /// Found the webhook of an interrupted create and adopted it.
    Adopted,
    /// Changed url/events of the existing webhook.
    Updated,
    /// The webhook had vanished at Seshn and was registered again.
    Recreated,
}

/// Outcome of a successful sync.
#[derive(Debug, Clone)]
pub struct Synced {
    /// What to record in `status.webhook`.
    pub status: WebhookStatus,
    /// What happened.
    pub action: Action,
}

/// Everything the sync needs.
pub struct SyncInput<'a> {
    /// Seshn client for the bridge's key.
    pub seshn: &'a SeshnClient,
    /// Kubernetes client.
    pub kube: &'a Client,
    /// The bridge (as read at the start of the pass).
    pub bridge: &'a SeshnSegmentBridge,
    /// Validated spec.
    pub v: &'a Validated,
    /// The signing secret we hold (sent on create).
    pub signing_secret: &'a str,
    /// The forwarder's condition in this pass (the final record carries full conditions, so
    /// the end of the pass has nothing left to write).
    pub forwarder: &'a status::Cond,
    /// The forwarder's ready pods in this pass.
    pub ready_replicas: i32,
}

impl std::fmt::Debug for SyncInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncInput")
            .field("v", &self.v)
            .finish_non_exhaustive()
    }
}

fn seshn_err(op: &'static str) -> impl FnOnce(SeshnError) -> WebhookError {
    move |source| WebhookError::Seshn { op, source }
}

/// The patch that brings `wh` to the desired url/events, or `None` when it matches.
pub fn diff(wh: &Webhook, url: &str, events: &[String]) -> Option<WebhookPatch> {
    let mut current = wh.events.clone();
    current.sort();
    current.dedup();
    let url_differs = wh.url != url;
    let events_differ = current != events;
    (url_differs || events_differ).then(|| WebhookPatch {
        url: url_differs.then(|| url.to_owned()),
        events: events_differ.then(|| events.to_vec()),
    })
}

/// The webhook of this bridge among `all`: the one whose URL path ends in `/hooks/<uid>`.
pub fn find_ours<'w>(all: &'w [Webhook], uid: &str) -> Option<&'w Webhook> {
    let suffix = format!("/hooks/{uid}");
    all.iter()
        .find(|w| w.url.trim_end_matches('/').ends_with(&suffix))
}

/// Idempotency key of a create: the bridge uid plus a digest of what is created (and of the
/// webhook it replaces), so a retry of the same create replays Seshn's first answer while a
/// different create (new events, a recreate after deletion) is not mistaken for it.
pub fn idempotency_key(uid: &str, url: &str, events: &[String], replaces: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(url.as_bytes());
    for e in events {
        h.update(b"\n");
        h.update(e.as_bytes());
    }
    h.update(b"\0");
    h.update(replaces.unwrap_or("").as_bytes());
    format!("{uid}-{}", hex::encode(&h.finalize()[..8]))
}

fn secret_ref(v: &Validated) -> SecretKeyRef {
    SecretKeyRef {
        name: v.signing_secret_name.clone(),
        key: SIGNING_SECRET_KEY.to_owned(),
    }
}

fn recorded(v: &Validated, id: String) -> WebhookStatus {
    WebhookStatus {
        id: Some(id),
        url: Some(v.webhook_url.clone()),
        events: v.events.clone(),
        secret_ref: Some(secret_ref(v)),
        pending_since: None,
    }
}

/// Writes `webhook` into the bridge's status, keeping the rest as it is, and remembers what
/// was written in `written`. Retried a few times: losing this write after a create is what
/// adoption exists for, but it should be rare.
async fn record(
    input: &SyncInput<'_>,
    written: &mut Vec<SeshnSegmentBridgeStatus>,
    webhook: WebhookStatus,
) -> Result<(), WebhookError> {
    let api: Api<SeshnSegmentBridge> = Api::namespaced(input.kube.clone(), &input.v.namespace);
    let latest = written
        .last()
        .cloned()
        .or_else(|| input.bridge.status.clone());
    let st = if let Some(id) = webhook.id.clone() {
        // The outcome: record it with the pass's final conditions at once.
        let mut current = input.bridge.clone();
        current.status.clone_from(&latest);
        status::complete(
            &current,
            latest.unwrap_or_default(),
            Some(webhook),
            input.ready_replicas,
            input.forwarder,
            &status::synced(&id, &input.v.webhook_url),
        )
    } else {
        let mut st = latest.unwrap_or_default();
        st.webhook = Some(webhook);
        st
    };
    // Force the write: the in-memory status may be stale after an earlier record().
    let mut blank = input.bridge.clone();
    blank.status = None;
    let mut last = None;
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
        }
        match status::write(&api, &blank, &st).await {
            Ok(_) => {
                written.push(st);
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(WebhookError::Record(last.unwrap_or_else(|| {
        kube::Error::Api(Box::new(kube::core::Status::failure(
            "status write failed",
            "Unknown",
        )))
    })))
}

/// Registers a new webhook, with the pending marker around the call.
async fn create(
    input: &SyncInput<'_>,
    written: &mut Vec<SeshnSegmentBridgeStatus>,
    previous: &WebhookStatus,
    replaces: Option<&str>,
) -> Result<WebhookStatus, WebhookError> {
    let v = input.v;
    // Keep an existing marker as it is: rewriting it on every retry would change the status
    // (and wake the controller) on every failed attempt.
    if previous.pending_since.is_none() || previous.id.is_some() {
        record(
            input,
            written,
            WebhookStatus {
                id: None,
                url: Some(v.webhook_url.clone()),
                events: v.events.clone(),
                secret_ref: Some(secret_ref(v)),
                pending_since: Some(status::now()),
            },
        )
        .await?;
    }
    let request = NewWebhook {
        url: v.webhook_url.clone(),
        events: v.events.clone(),
        description: Some(format!("seshn-segment bridge {}/{}", v.namespace, v.name)),
        secret: Some(input.signing_secret.to_owned()),
    };
    let key = idempotency_key(&v.uid, &v.webhook_url, &v.events, replaces);
    let wh = input
        .seshn
        .create(&request, &key)
        .await
        .map_err(seshn_err("create"))?;
    // Seshn may choose its own secret; the forwarder must verify with that one.
    if let Some(s) = &wh.secret
        && s.expose() != input.signing_secret
    {
        let secret = build::signing_secret(input.bridge, v, s.expose());
        apply::apply_secret(input.kube, secret)
            .await
            .map_err(|e| WebhookError::Record(e.source))?;
    }
    let st = recorded(v, wh.id);
    record(input, written, st.clone()).await?;
    Ok(st)
}

/// Brings the webhook at Seshn in line with the spec.
///
/// Every status written on the way is appended to `written` (also on error), so the caller
/// knows the latest recorded state.
pub async fn sync(
    input: &SyncInput<'_>,
    written: &mut Vec<SeshnSegmentBridgeStatus>,
) -> Result<Synced, WebhookError> {
    let v = input.v;
    let previous = input
        .bridge
        .status
        .as_ref()
        .and_then(|s| s.webhook.clone())
        .unwrap_or_default();

    // 1. Known id: observe, then update or recreate.
    if let Some(id) = &previous.id {
        return match input.seshn.get(id).await.map_err(seshn_err("get"))? {
            Some(wh) => {
                let action = match diff(&wh, &v.webhook_url, &v.events) {
                    Some(patch) => {
                        input
                            .seshn
                            .update(id, &patch)
                            .await
                            .map_err(seshn_err("update"))?;
                        Action::Updated
                    }
                    None => Action::Unchanged,
                };
                Ok(Synced {
                    status: recorded(v, id.clone()),
                    action,
                })
            }
            None => Ok(Synced {
                status: create(input, written, &previous, Some(id)).await?,
                action: Action::Recreated,
            }),
        };
    }

    // 2. An interrupted create: look for it before creating anything.
    if previous.pending_since.is_some() {
        let all = input.seshn.list_all().await.map_err(seshn_err("list"))?;
        if let Some(wh) = find_ours(&all, &v.uid) {
            if let Some(patch) = diff(wh, &v.webhook_url, &v.events) {
                input
                    .seshn
                    .update(&wh.id, &patch)
                    .await
                    .map_err(seshn_err("update"))?;
            }
            let st = recorded(v, wh.id.clone());
            record(input, written, st.clone()).await?;
            return Ok(Synced {
                status: st,
                action: Action::Adopted,
            });
        }
    }

    // 3. Nothing registered yet.
    Ok(Synced {
        status: create(input, written, &previous, None).await?,
        action: Action::Created,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wh(url: &str, events: &[&str]) -> Webhook {
        Webhook {
            id: "wh_1".into(),
            url: url.into(),
            events: events.iter().map(|s| (*s).to_owned()).collect(),
            enabled: true,
            secret: None,
            description: None,
        }
    }

    #[test]
    fn diff_only_on_difference() {
        let events = vec!["a".to_string(), "b".to_string()];
        assert!(
            diff(
                &wh("https://h/hooks/u", &["b", "a"]),
                "https://h/hooks/u",
                &events
            )
            .is_none()
        );
        let p = diff(
            &wh("https://h/hooks/u", &["a"]),
            "https://h/hooks/u",
            &events,
        )
        .unwrap();
        assert_eq!(p.url, None);
        assert_eq!(p.events, Some(events.clone()));
        let p = diff(
            &wh("https://old/hooks/u", &["a", "b"]),
            "https://h/hooks/u",
            &events,
        )
        .unwrap();
        assert_eq!(p.url.as_deref(), Some("https://h/hooks/u"));
        assert_eq!(p.events, None);
    }

    #[test]
    fn finds_only_our_uid() {
        let all = vec![
            wh("https://h/hooks/other-uid", &[]),
            wh("https://h/hooks/uid-1/", &[]),
        ];
        assert_eq!(
            find_ours(&all, "uid-1").unwrap().url,
            "https://h/hooks/uid-1/"
        );
        assert!(find_ours(&all, "uid").is_none());
        assert!(find_ours(&all, "uid-2").is_none());
    }

    #[test]
    fn idempotency_keys() {
        let e = vec!["a".to_string()];
        let k = idempotency_key("u", "https://h", &e, None);
        assert!(k.starts_with("u-"));
        assert_eq!(k, idempotency_key("u", "https://h", &e, None));
        assert_ne!(k, idempotency_key("u", "https://h", &[], None));
        assert_ne!(k, idempotency_key("u", "https://h", &e, Some("wh_1")));
        assert_ne!(k, idempotency_key("u", "https://h2", &e, None));
    }
}
