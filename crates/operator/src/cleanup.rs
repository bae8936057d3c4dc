//! Cleanup stage (finalizer): deletes the Seshn webhook of a deleted bridge, unless the
//! deletion policy is `Orphan`. Never validates the spec: a broken spec must not block
//! deletion. When Seshn cannot be reached with the bridge's credentials, the deletion keeps
//! retrying until `cleanup_deadline` after the deletion request, then gives up with a
//! `WebhookOrphaned` Event and metric so a namespace never hangs in `Terminating` forever.

use std::time::Duration;

use bridge_api::{DeletionPolicy, SeshnSegmentBridge};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use seshn::webhooks::Deleted;

use crate::build::REPLACES_WEBHOOK_ANNOTATION;
use crate::controller::Shared;
use crate::error::{Error, WebhookError};
use crate::resolve;
use crate::validate::SIGNING_SECRET_SUFFIX;
use crate::webhook::find_ours;

/// Time left before the cleanup deadline of a deleted bridge (zero when passed).
pub fn time_left(bridge: &SeshnSegmentBridge, deadline: Duration) -> Duration {
    let Some(deleted) = bridge.metadata.deletion_timestamp.as_ref() else {
        return deadline;
    };
    let elapsed = Timestamp::now().duration_since(deleted.0);
    let elapsed = Duration::try_from(elapsed).unwrap_or(Duration::ZERO);
    deadline.saturating_sub(elapsed)
}

/// Deletes every webhook of the bridge at Seshn: the recorded one, the one a create in flight
/// (the pending marker) may have registered, found by our uid in its URL, and one a replacement
/// still had to delete (named by the signing Secret). Returns the ids deleted (or gone).
async fn delete_webhooks(
    shared: &Shared,
    bridge: &SeshnSegmentBridge,
) -> Result<Vec<String>, Error> {
    let ns = bridge.namespace().ok_or(Error::MissingField("namespace"))?;
    let uid = bridge.uid().ok_or(Error::MissingField("uid"))?;
    let wh = bridge
        .status
        .as_ref()
        .and_then(|s| s.webhook.clone())
        .unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(shared.client.clone(), &ns);
    let key = resolve::secret_key(&secrets, &bridge.spec.seshn.api_key_secret_ref).await?;
    let base = bridge
        .spec
        .seshn
        .api_url
        .clone()
        .unwrap_or_else(|| shared.config.default_seshn_api_url.clone());
    let seshn = shared.seshn_client(&base, &key)?;
    let seshn_err = |op| move |source| Error::from(WebhookError::Seshn { op, source });
    let mut ids: Vec<String> = wh.id.into_iter().collect();
    if wh.pending_since.is_some() {
        // A create may have happened without its answer: find it by our uid.
        let all = seshn.list_all().await.map_err(seshn_err("list"))?;
        let known: Vec<&str> = ids.iter().map(String::as_str).collect();
        if let Some(found) = find_ours(&all, &uid, &known) {
            ids.push(found.id.clone());
        }
    }
    let signing = format!("{}{}", bridge.name_any(), SIGNING_SECRET_SUFFIX);
    if let Some(s) = secrets.get_opt(&signing).await?
        && let Some(old) = s.annotations().get(REPLACES_WEBHOOK_ANNOTATION)
        && !old.is_empty()
        && !ids.contains(old)
    {
        ids.push(old.clone());
    }
    for id in &ids {
        match seshn.delete(id).await.map_err(seshn_err("delete"))? {
            Deleted::Deleted | Deleted::AlreadyGone => {}
        }
    }
    Ok(ids)
}

/// The finalizer's cleanup.
pub async fn cleanup(bridge: &SeshnSegmentBridge, shared: &Shared) -> Result<Action, Error> {
    let fresh;
    let mut bridge = bridge;
    if bridge
        .status
        .as_ref()
        .and_then(|s| s.webhook.as_ref())
        .is_none_or(|w| w.id.is_none())
    {
        // The cached object may predate the status write that recorded the id: never drop
        // the finalizer on a stale "nothing registered".
        let ns = bridge.namespace().ok_or(Error::MissingField("namespace"))?;
        let api: Api<SeshnSegmentBridge> = Api::namespaced(shared.client.clone(), &ns);
        if let Some(b) = api.get_opt(&bridge.name_any()).await? {
            fresh = b;
            bridge = &fresh;
        }
    }
    let wh = bridge.status.as_ref().and_then(|s| s.webhook.as_ref());
    let has_webhook = wh.is_some_and(|w| w.id.is_some() || w.pending_since.is_some());
    if bridge.spec.deletion_policy == DeletionPolicy::Orphan || !has_webhook {
        // Nothing to do at Seshn; the bridge is going away, and so must what we keep about it.
        shared.forget(bridge);
        return Ok(Action::await_change());
    }
    match delete_webhooks(shared, bridge).await {
        Ok(ids) => {
            if !ids.is_empty() {
                shared
                    .event(
                        bridge,
                        EventType::Normal,
                        "WebhookDeleted",
                        "DeleteWebhook",
                        format!("deleted webhook {} at Seshn", ids.join(", ")),
                    )
                    .await;
            }
            shared.forget(bridge);
            Ok(Action::await_change())
        }
        Err(e) => {
            let left = time_left(bridge, shared.config.cleanup_deadline);
            let id = wh
                .and_then(|w| w.id.clone())
                .unwrap_or_else(|| "(unknown id)".into());
            if left.is_zero() {
                shared.metrics.webhooks_orphaned.inc();
                shared
                    .event(
                        bridge,
                        EventType::Warning,
                        "WebhookOrphaned",
                        "DeleteWebhook",
                        format!(
                            "gave up deleting webhook {id} at Seshn after the cleanup deadline \
                             ({}): {}; delete it in Seshn's dashboard",
                            crate::duration::format(shared.config.cleanup_deadline),
                            e.condition_message()
                        ),
                    )
                    .await;
                shared.forget(bridge);
                return Ok(Action::await_change());
            }
            if shared.first_cleanup_warning(bridge) {
                shared
                    .event(
                        bridge,
                        EventType::Warning,
                        "CleanupBlocked",
                        "DeleteWebhook",
                        format!(
                            "cannot delete webhook {id} at Seshn: {}; retrying until the \
                             cleanup deadline, then the webhook is left behind",
                            e.condition_message()
                        ),
                    )
                    .await;
            }
            Err(Error::CleanupBlocked(Box::new(e)))
        }
    }
}
