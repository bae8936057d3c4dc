//! Webhook stage: observe / create / update at Seshn (DESIGN §8), Crossplane-style.
//!
//! Invariants:
//! - `status.webhook.pendingSince` is written before every create, keeping the id of the
//!   webhook the create replaces (if any): the recorded id is only ever replaced by another,
//!   never dropped;
//! - a create happens only after observing: whenever the status shows any trace of an earlier
//!   create (an id or the pending marker), we list and adopt the webhook carrying our uid in its
//!   URL instead of creating another one (also after a 404: the webhook may have been recreated
//!   by a pass whose answer was lost);
//! - the id (and Seshn's secret, if it chose one) is recorded right after create;
//! - with an id: get, compare url/events/enabled, update only on a difference; 404 → recreate;
//! - a webhook registered with a signing secret we no longer hold (the signing Secret was
//!   regenerated, see [`crate::build::REPLACES_WEBHOOK_ANNOTATION`]) is replaced: Seshn cannot
//!   change a webhook's secret, so a new one is created with ours, recorded, and the old one
//!   deleted;
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
    /// The webhook was registered with a signing secret that is gone (the signing Secret was
    /// regenerated): a new one was registered with the current secret and the old one deleted.
    Replaced,
}

/// Outcome of a successful sync.
#[derive(Debug, Clone)]
pub struct Synced {
    /// What to record in `status.webhook`.
    pub status: WebhookStatus,
    /// What happened.
    pub action: Action,
    /// Whether Seshn delivers to the webhook (`false`: disabled at Seshn, which the API cannot
    /// undo).
    pub enabled: bool,
    /// The webhook that was replaced, with [`Action::Replaced`] or [`Action::Recreated`].
    pub replaced: Option<String>,
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
    /// The webhook registered with an earlier signing secret, from the signing Secret's
    /// annotation: replaced while it is the recorded one, deleted once it no longer is.
    pub replaces: Option<&'a str>,
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
            .field("replaces", &self.replaces)
            .finish_non_exhaustive()
    }
}

fn seshn_err(op: &'static str) -> impl FnOnce(SeshnError) -> WebhookError {
    move |source| WebhookError::Seshn { op, source }
}

/// The patch that brings `wh` to the desired url/events, or `None` when it matches. (Whether
/// it is enabled is not part of it: the API cannot change that, see [`Synced::enabled`].)
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

/// The webhook of this bridge among `all`: the one whose URL path ends in `/hooks/<uid>`,
/// other than the ones in `except` (a webhook being replaced).
pub fn find_ours<'w>(all: &'w [Webhook], uid: &str, except: &[&str]) -> Option<&'w Webhook> {
    let suffix = format!("/hooks/{uid}");
    all.iter().find(|w| {
        w.url.trim_end_matches('/').ends_with(&suffix) && !except.contains(&w.id.as_str())
    })
}

/// Idempotency key of a create: the bridge uid plus a digest of everything the request
/// carries (URL, events, the signing secret) and of the webhook it replaces, so a retry of the
/// same create replays Seshn's first answer while a different create (new events, a recreate
/// after deletion, a new secret) is not mistaken for it. The digest is truncated SHA-256: the
/// secret cannot be recovered from it.
pub fn idempotency_key(
    uid: &str,
    url: &str,
    events: &[String],
    secret: &str,
    replaces: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    h.update(url.as_bytes());
    for e in events {
        h.update(b"\n");
        h.update(e.as_bytes());
    }
    h.update(b"\0");
    h.update(replaces.unwrap_or("").as_bytes());
    h.update(b"\0");
    h.update(Sha256::digest(secret.as_bytes()));
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
    enabled: bool,
) -> Result<(), WebhookError> {
    let api: Api<SeshnSegmentBridge> = Api::namespaced(input.kube.clone(), &input.v.namespace);
    let latest = written
        .last()
        .cloned()
        .or_else(|| input.bridge.status.clone());
    let st = match webhook.id.clone() {
        Some(id) if webhook.pending_since.is_none() => {
            // The outcome: record it with the pass's final conditions at once.
            let mut current = input.bridge.clone();
            current.status.clone_from(&latest);
            status::complete(
                &current,
                latest.unwrap_or_default(),
                Some(webhook),
                input.ready_replicas,
                input.forwarder,
                &webhook_condition(&id, &input.v.webhook_url, enabled),
            )
        }
        _ => {
            let mut st = latest.unwrap_or_default();
            st.webhook = Some(webhook);
            st
        }
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

/// The `WebhookSynced` condition for a webhook that matches the spec: `True`, unless it is
/// disabled at Seshn (the API has no field to enable it again: someone has to, in Seshn's
/// dashboard; the resync notices).
pub fn webhook_condition(id: &str, url: &str, enabled: bool) -> status::Cond {
    if enabled {
        status::synced(id, url)
    } else {
        status::Cond::not(
            "WebhookDisabled",
            format!(
                "webhook {id} is disabled at Seshn, so no events are delivered; enable it in Seshn's dashboard"
            ),
        )
    }
}

/// Registers the webhook, after observing: with `replaces` (the recorded id of a webhook that
/// is gone or must go) or any trace of an earlier create in `previous`, lists first and adopts
/// ours (other than `replaces`) if an interrupted pass already created it. Returns the recorded
/// status, whether it was adopted, and whether it is enabled.
async fn observe_then_create(
    input: &SyncInput<'_>,
    written: &mut Vec<SeshnSegmentBridgeStatus>,
    previous: &WebhookStatus,
    replaces: Option<&str>,
) -> Result<(WebhookStatus, bool, bool), WebhookError> {
    let v = input.v;
    // Keep an existing marker as it is: rewriting it on every retry would change the status
    // (and wake the controller) on every failed attempt. The marker keeps the replaced id, so
    // a crash after the create still knows what it replaced.
    let traced = previous.id.is_some() || previous.pending_since.is_some();
    if previous.pending_since.is_none() || previous.id.as_deref() != replaces {
        record(
            input,
            written,
            WebhookStatus {
                id: replaces.map(str::to_owned),
                url: Some(v.webhook_url.clone()),
                events: v.events.clone(),
                secret_ref: Some(secret_ref(v)),
                pending_since: Some(status::now()),
            },
            true,
        )
        .await?;
    }
    // A bridge whose status never held an id or a marker cannot have created anything (the
    // marker is written before every create, and status writes never drop it): no list then,
    // which keeps a first create from reading every webhook of a shared key.
    if traced {
        let all = input.seshn.list_all().await.map_err(seshn_err("list"))?;
        let except: Vec<&str> = replaces.into_iter().collect();
        if let Some(wh) = find_ours(&all, &v.uid, &except) {
            if let Some(patch) = diff(wh, &v.webhook_url, &v.events) {
                input
                    .seshn
                    .update(&wh.id, &patch)
                    .await
                    .map_err(seshn_err("update"))?;
            }
            let st = recorded(v, wh.id.clone());
            record(input, written, st.clone(), wh.enabled).await?;
            return Ok((st, true, wh.enabled));
        }
    }
    let request = NewWebhook {
        url: v.webhook_url.clone(),
        events: v.events.clone(),
        description: Some(format!("seshn-segment bridge {}/{}", v.namespace, v.name)),
        secret: Some(input.signing_secret.to_owned()),
    };
    let key = idempotency_key(
        &v.uid,
        &v.webhook_url,
        &v.events,
        input.signing_secret,
        replaces,
    );
    let wh = input
        .seshn
        .create(&request, &key)
        .await
        .map_err(seshn_err("create"))?;
    // Seshn may choose its own secret; the forwarder must verify with that one. The Secret
    // keeps naming the webhook still to be replaced, if any.
    if let Some(s) = &wh.secret
        && s.expose() != input.signing_secret
    {
        let secret = build::signing_secret(input.bridge, v, s.expose(), input.replaces);
        apply::apply_secret(input.kube, secret)
            .await
            .map_err(|e| WebhookError::Record(e.source))?;
    }
    let st = recorded(v, wh.id);
    record(input, written, st.clone(), wh.enabled).await?;
    Ok((st, false, wh.enabled))
}

/// Deletes `old` at Seshn (gone already is fine), then drops the signing Secret's annotation
/// naming it: the replacement is complete.
async fn finish_replacement(input: &SyncInput<'_>, old: &str) -> Result<(), WebhookError> {
    input.seshn.delete(old).await.map_err(seshn_err("delete"))?;
    let secret = build::signing_secret(input.bridge, input.v, input.signing_secret, None);
    apply::apply_secret(input.kube, secret)
        .await
        .map_err(|e| WebhookError::Record(e.source))
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

    let Some(id) = previous.id.clone() else {
        // Nothing recorded yet (or only the marker of an interrupted create).
        let (status, adopted, enabled) =
            observe_then_create(input, written, &previous, None).await?;
        return Ok(Synced {
            status,
            action: if adopted {
                Action::Adopted
            } else {
                Action::Created
            },
            enabled,
            replaced: None,
        });
    };

    // The recorded webhook was registered with a signing secret that is gone.
    if input.replaces == Some(id.as_str()) {
        let (status, _, enabled) =
            observe_then_create(input, written, &previous, Some(&id)).await?;
        finish_replacement(input, &id).await?;
        return Ok(Synced {
            status,
            action: Action::Replaced,
            enabled,
            replaced: Some(id),
        });
    }

    let synced = if let Some(wh) = input.seshn.get(&id).await.map_err(seshn_err("get"))? {
        let action = match diff(&wh, &v.webhook_url, &v.events) {
            Some(patch) => {
                input
                    .seshn
                    .update(&id, &patch)
                    .await
                    .map_err(seshn_err("update"))?;
                Action::Updated
            }
            None => Action::Unchanged,
        };
        Synced {
            status: recorded(v, id.clone()),
            action,
            enabled: wh.enabled,
            replaced: None,
        }
    } else {
        let (status, adopted, enabled) =
            observe_then_create(input, written, &previous, Some(&id)).await?;
        Synced {
            status,
            action: if adopted {
                Action::Adopted
            } else {
                Action::Recreated
            },
            enabled,
            replaced: Some(id.clone()),
        }
    };
    // A replacement whose last step (deleting the old webhook) did not happen yet.
    if let Some(old) = input.replaces
        && old != id
        && synced.status.id.as_deref() != Some(old)
    {
        finish_replacement(input, old).await?;
    }
    Ok(synced)
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
            find_ours(&all, "uid-1", &[]).unwrap().url,
            "https://h/hooks/uid-1/"
        );
        assert!(find_ours(&all, "uid", &[]).is_none());
        assert!(find_ours(&all, "uid-2", &[]).is_none());
        // The webhook being replaced is never adopted as its own replacement.
        let mut replaced = wh("https://h/hooks/uid-1", &[]);
        replaced.id = "wh_old".into();
        let mut replacement = wh("https://h/hooks/uid-1", &[]);
        replacement.id = "wh_new".into();
        let all = vec![replaced, replacement];
        assert_eq!(find_ours(&all, "uid-1", &["wh_old"]).unwrap().id, "wh_new");
        assert_eq!(find_ours(&all, "uid-1", &[]).unwrap().id, "wh_old");
    }

    #[test]
    fn idempotency_keys() {
        let e = vec!["a".to_string()];
        let k = idempotency_key("u", "https://h", &e, "s1", None);
        assert!(k.starts_with("u-"));
        assert_eq!(k, idempotency_key("u", "https://h", &e, "s1", None));
        assert_ne!(k, idempotency_key("u", "https://h", &[], "s1", None));
        assert_ne!(k, idempotency_key("u", "https://h", &e, "s1", Some("wh_1")));
        assert_ne!(k, idempotency_key("u", "https://h2", &e, "s1", None));
        // A new signing secret is a new request: Seshn must not replay the old webhook.
        assert_ne!(k, idempotency_key("u", "https://h", &e, "s2", None));
        assert!(!k.contains("s1"));
    }

    #[test]
    fn disabled_webhooks_are_not_synced() {
        assert_eq!(webhook_condition("wh_1", "https://h", true).status, "True");
        let c = webhook_condition("wh_1", "https://h", false);
        assert_eq!((c.status, c.reason.as_str()), ("False", "WebhookDisabled"));
        assert!(c.message.contains("wh_1"));
    }
}
