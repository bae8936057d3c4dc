//! Status stage: conditions from the pass's outcome, written by server-side apply on
//! `/status` only when something changed.
//!
//! No per-pass timestamps: `lastTransitionTime` moves only when a condition's status flips
//! and messages are deterministic, so an unchanged bridge produces an identical status and no
//! write (a write would wake the controller again: the classic self-triggered hot loop).

use bridge_api::{
    CONDITION_FORWARDER_AVAILABLE, CONDITION_READY, CONDITION_WEBHOOK_SYNCED, ForwarderStatus,
    SeshnSegmentBridge, SeshnSegmentBridgeStatus, WebhookStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::config::FIELD_MANAGER;

/// One condition's wanted state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable, deterministic message (no secrets, no timestamps).
    pub message: String,
}

impl Cond {
    /// A `True` condition.
    pub fn ok(reason: &str, message: impl Into<String>) -> Self {
        Self {
            status: "True",
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A `False` condition.
    pub fn not(reason: &str, message: impl Into<String>) -> Self {
        Self {
            status: "False",
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// An `Unknown` condition.
    pub fn unknown(reason: &str, message: impl Into<String>) -> Self {
        Self {
            status: "Unknown",
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Now, truncated to whole seconds (what the API server stores), so a value read back
/// compares equal to the one written.
pub fn now() -> Time {
    let secs = Timestamp::now().as_second();
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Builds a condition, keeping `lastTransitionTime` from `old` when the status did not flip.
pub fn condition(old: &[Condition], type_: &str, c: &Cond, generation: Option<i64>) -> Condition {
    let previous = old.iter().find(|o| o.type_ == type_);
    let last_transition_time = match previous {
        Some(p) if p.status == c.status => p.last_transition_time.clone(),
        _ => now(),
    };
    Condition {
        type_: type_.into(),
        status: c.status.into(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The Ready summary from the two detailed conditions: a `False` condition explains more than
/// an `Unknown` one; between equals, the webhook's problem wins (it is what stops events).
pub fn ready(forwarder: &Cond, webhook: &Cond) -> Cond {
    if forwarder.status == "True" && webhook.status == "True" {
        return Cond::ok(
            "Ready",
            "the forwarder is available and the webhook is registered",
        );
    }
    let cause = if webhook.status == "False" || forwarder.status == "True" {
        webhook
    } else if forwarder.status == "False" {
        forwarder
    } else {
        webhook
    };
    Cond::not(&cause.reason, cause.message.clone())
}

/// A full status with the three conditions set.
pub fn with_conditions(
    bridge: &SeshnSegmentBridge,
    mut status: SeshnSegmentBridgeStatus,
    forwarder: &Cond,
    webhook: &Cond,
) -> SeshnSegmentBridgeStatus {
    let old = bridge
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = bridge.metadata.generation;
    let ready = ready(forwarder, webhook);
    status.conditions = vec![
        condition(&old, CONDITION_READY, &ready, generation),
        condition(&old, CONDITION_FORWARDER_AVAILABLE, forwarder, generation),
        condition(&old, CONDITION_WEBHOOK_SYNCED, webhook, generation),
    ];
    status.observed_generation = generation;
    status
}

/// The `WebhookSynced=True` condition.
pub fn synced(id: &str, url: &str) -> Cond {
    Cond::ok("Synced", format!("webhook {id} delivers to {url}"))
}

/// The full status at the end of a pass: `base` (the latest recorded status) with the webhook,
/// the forwarder's ready count and the conditions. Transition times come from `working`.
pub fn complete(
    working: &SeshnSegmentBridge,
    mut base: SeshnSegmentBridgeStatus,
    webhook: Option<WebhookStatus>,
    ready_replicas: i32,
    forwarder: &Cond,
    webhook_cond: &Cond,
) -> SeshnSegmentBridgeStatus {
    base.webhook = webhook;
    base.forwarder = Some(ForwarderStatus { ready_replicas });
    with_conditions(working, base, forwarder, webhook_cond)
}

/// Takes each condition's `lastTransitionTime` from `current` when its status there is the
/// same: transitions are relative to what the API server holds, not to a possibly stale copy.
pub fn keep_transition_times(
    status: &mut SeshnSegmentBridgeStatus,
    current: &SeshnSegmentBridgeStatus,
) {
    for c in &mut status.conditions {
        if let Some(old) = current
            .conditions
            .iter()
            .find(|o| o.type_ == c.type_ && o.status == c.status)
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
}

/// Keeps the webhook `current` (the API server's status) records when `status` would drop it.
///
/// Server-side apply removes every field this manager applied before and now omits, so a status
/// built from a copy that predates the write recording the id (the watch cache lags behind our
/// own writes) would erase `status.webhook.id`, and a later pass would register a second
/// webhook. The operator never means to forget an id (it only ever replaces one with another),
/// nor the pending marker of a create that may have happened.
pub fn keep_known_webhook(
    status: &mut SeshnSegmentBridgeStatus,
    current: &SeshnSegmentBridgeStatus,
) {
    let Some(known) = current.webhook.as_ref() else {
        return;
    };
    let ours = status.webhook.as_ref();
    let drops_id = known.id.is_some() && ours.is_none_or(|w| w.id.is_none());
    let drops_marker = known.pending_since.is_some() && ours.is_none();
    if drops_id || drops_marker {
        status.webhook = Some(known.clone());
    }
}

/// Writes `status` with server-side apply unless it equals the current one. Returns whether a
/// write happened.
///
/// `bridge` may be a stale copy (the watch cache lags behind our own writes): before writing,
/// the status is compared with a fresh read, so a pass that started from an old copy neither
/// writes an identical status, nor moves transition times, nor drops a recorded webhook
/// ([`keep_known_webhook`]).
pub async fn write(
    api: &Api<SeshnSegmentBridge>,
    bridge: &SeshnSegmentBridge,
    status: &SeshnSegmentBridgeStatus,
) -> Result<bool, kube::Error> {
    if bridge.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let mut status = status.clone();
    if let Some(fresh) = api.get_opt(&bridge.name_any()).await? {
        let current = fresh.status.unwrap_or_default();
        keep_known_webhook(&mut status, &current);
        keep_transition_times(&mut status, &current);
        if current == status {
            return Ok(false);
        }
    }
    let patch = json!({
        "apiVersion": format!("{}/{}", bridge_api::GROUP, bridge_api::VERSION),
        "kind": bridge_api::KIND,
        "status": status,
    });
    api.patch_status(
        &bridge.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::bridge;

    #[test]
    fn transition_times_follow_the_server_copy() {
        let b = bridge();
        let fwd = Cond::ok("Available", "up");
        let wh = Cond::ok("Synced", "ok");
        let mut mine = with_conditions(&b, SeshnSegmentBridgeStatus::default(), &fwd, &wh);
        let mut server = mine.clone();
        let past = Time(Timestamp::from_second(1_000_000).unwrap());
        for c in &mut server.conditions {
            c.last_transition_time = past.clone();
        }
        // The server's WebhookSynced is False: that one keeps our (new) time.
        server.conditions[2].status = "False".into();
        keep_transition_times(&mut mine, &server);
        assert_eq!(mine.conditions[0].last_transition_time, past);
        assert_eq!(mine.conditions[1].last_transition_time, past);
        assert_ne!(mine.conditions[2].last_transition_time, past);
    }

    #[test]
    fn a_stale_status_never_drops_the_recorded_webhook() {
        let id = |id: Option<&str>, pending: bool| WebhookStatus {
            id: id.map(str::to_owned),
            url: Some("https://h/hooks/u".into()),
            pending_since: pending.then(now),
            ..WebhookStatus::default()
        };
        let server = |w: Option<WebhookStatus>| SeshnSegmentBridgeStatus {
            webhook: w,
            ..SeshnSegmentBridgeStatus::default()
        };
        // Built from a copy without the webhook: the server's id stays.
        let mut stale = server(None);
        keep_known_webhook(&mut stale, &server(Some(id(Some("wh_1"), false))));
        assert_eq!(stale.webhook.unwrap().id.as_deref(), Some("wh_1"));
        // A status with an id but no marker where the server has a pending first create.
        let mut stale = server(Some(id(None, false)));
        keep_known_webhook(&mut stale, &server(Some(id(Some("wh_1"), true))));
        assert_eq!(stale.webhook.unwrap().id.as_deref(), Some("wh_1"));
        // The pending marker of a first create is kept too.
        let mut stale = server(None);
        keep_known_webhook(&mut stale, &server(Some(id(None, true))));
        assert!(stale.webhook.unwrap().pending_since.is_some());
        // Replacing an id by another, or recording an outcome after a marker, is a change.
        let mut newer = server(Some(id(Some("wh_2"), false)));
        keep_known_webhook(&mut newer, &server(Some(id(Some("wh_1"), true))));
        assert_eq!(newer.webhook.unwrap().id.as_deref(), Some("wh_2"));
        let mut outcome = server(Some(id(Some("wh_1"), false)));
        keep_known_webhook(&mut outcome, &server(Some(id(None, true))));
        assert!(outcome.webhook.unwrap().pending_since.is_none());
        // Nothing known: nothing kept.
        let mut first = server(Some(id(None, true)));
        keep_known_webhook(&mut first, &server(None));
        assert!(first.webhook.unwrap().id.is_none());
    }

    #[test]
    fn ready_summarises() {
        let fwd = Cond::ok("Available", "up");
        let wh = Cond::ok("Synced", "ok");
        assert_eq!(ready(&fwd, &wh).status, "True");
        let down = Cond::not("WaitingForForwarder", "no pods");
        assert_eq!(ready(&down, &wh).reason, "WaitingForForwarder");
        let unauth = Cond::not("Unauthorized", "key rejected");
        assert_eq!(ready(&down, &unauth).reason, "Unauthorized");
        assert_eq!(ready(&fwd, &unauth).status, "False");
        let invalid = Cond::not("InvalidSpec", "bad");
        let unknown = Cond::unknown("Reconciling", "not yet");
        assert_eq!(ready(&invalid, &unknown).reason, "InvalidSpec");
        assert_eq!(ready(&unknown, &unknown).reason, "Reconciling");
        assert_eq!(ready(&fwd, &unknown).reason, "Reconciling");
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let mut b = bridge();
        let fwd = Cond::ok("Available", "up");
        let wh = Cond::not("WaitingForForwarder", "waiting");
        let first = with_conditions(&b, SeshnSegmentBridgeStatus::default(), &fwd, &wh);
        let mut old = first.clone();
        let past = Time(Timestamp::from_second(1_000_000).unwrap());
        for c in &mut old.conditions {
            c.last_transition_time = past.clone();
        }
        b.status = Some(old.clone());
        // Same statuses, different reason/message: times kept, so only the text changes.
        let wh2 = Cond::not("RateLimited", "slow down");
        let second = with_conditions(&b, SeshnSegmentBridgeStatus::default(), &fwd, &wh2);
        assert!(
            second
                .conditions
                .iter()
                .all(|c| c.last_transition_time == past)
        );
        // An identical pass produces an identical status (no write).
        let third = with_conditions(&b, SeshnSegmentBridgeStatus::default(), &fwd, &wh);
        assert_eq!(third, old);
        // A flip moves that condition's time only.
        let wh3 = Cond::ok("Synced", "ok");
        let fourth = with_conditions(&b, SeshnSegmentBridgeStatus::default(), &fwd, &wh3);
        let synced = fourth
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_WEBHOOK_SYNCED)
            .unwrap();
        assert_ne!(synced.last_transition_time, past);
        let fa = fourth
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_FORWARDER_AVAILABLE)
            .unwrap();
        assert_eq!(fa.last_transition_time, past);
        assert_eq!(fourth.observed_generation, Some(1));
    }
}
