//! The adapter: every path, header, query parameter and JSON field name of Seshn's webhooks
//! management API lives in this module and nowhere else.
//!
//! Seshn publishes no reference for this API (DESIGN §4.2): only the base URL
//! `https://api.seshn.net/v1`, bearer keys and the seed's `POST /v1/webhooks {url, events}` are
//! known. Everything else here is an assumed conventional REST shape, kept in one file so that
//! learning the real shape is a one-file change.

use std::time::Duration;

use reqwest::Url;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

use super::{Secret, Webhook};

/// The API version path segment every call lives under.
pub(super) const API_VERSION: &str = "v1";
/// The collection path segment below the version.
const WEBHOOKS: &str = "webhooks";
/// Header carrying the caller's idempotency key on create.
pub(super) const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";
/// Page size asked for when listing (the assumed maximum).
pub(super) const PAGE_LIMIT: u32 = 100;
/// Longest `Retry-After` we honour; a larger value is clamped so one bad answer cannot park a
/// reconcile for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `{base}/webhooks`.
pub(super) fn collection_url(base: &Url) -> Url {
    let mut url = base.clone();
    // `base` is always an http(s) URL (checked in `normalize_base`), which can be a base.
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push(WEBHOOKS);
    }
    url
}

/// `{base}/webhooks/{id}`, with `id` percent-encoded as one path segment so an odd id from a
/// status field can never address another path.
pub(super) fn item_url(base: &Url, id: &str) -> Url {
    let mut url = collection_url(base);
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.push(id);
    }
    url
}

/// Query parameters for one list page.
pub(super) fn list_query(starting_after: Option<&str>) -> Vec<(&'static str, String)> {
    let mut query = vec![("limit", PAGE_LIMIT.to_string())];
    if let Some(id) = starting_after {
        query.push(("starting_after", id.to_owned()));
    }
    query
}

/// `Retry-After` in whole seconds (the form Seshn is assumed to send); an HTTP-date or garbage
/// gives `None`, and the caller falls back to its own backoff.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Create request body.
#[derive(Serialize)]
pub(super) struct CreateBody<'a> {
    pub url: &'a str,
    pub events: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<&'a str>,
}

/// Update (PATCH) request body: only the fields being changed.
#[derive(Serialize)]
pub(super) struct PatchBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<&'a [String]>,
}

/// A webhook as Seshn represents it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireWebhook {
    id: String,
    url: String,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    secret: Option<String>,
    // An answer without the flag is read as enabled: that is what a webhook is after create.
    #[serde(default = "default_enabled")]
    enabled: bool,
    #[serde(default)]
    description: Option<String>,
}

fn default_enabled() -> bool {
    true
}

impl From<WireWebhook> for Webhook {
    fn from(w: WireWebhook) -> Self {
        Webhook {
            id: w.id,
            url: w.url,
            events: w.events,
            enabled: w.enabled,
            secret: w.secret.filter(|s| !s.is_empty()).map(Secret::new),
            description: w.description,
        }
    }
}

/// One page of a list answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListPage {
    pub data: Vec<WireWebhook>,
    #[serde(default)]
    pub has_more: bool,
}

/// `{error: {type, message}}`.
#[derive(Deserialize)]
pub(super) struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inner error object.
#[derive(Deserialize)]
pub(super) struct ErrorDetail {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// The human-readable part of an error body: `message`, else `type`, else nothing.
pub(super) fn error_message(body: &[u8]) -> Option<String> {
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    parsed.error.message.or(parsed.error.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://api.seshn.net/v1").unwrap()
    }

    #[test]
    fn urls_are_built_under_the_version() {
        assert_eq!(
            collection_url(&base()).as_str(),
            "https://api.seshn.net/v1/webhooks"
        );
        assert_eq!(
            item_url(&base(), "wh_1").as_str(),
            "https://api.seshn.net/v1/webhooks/wh_1"
        );
    }

    #[test]
    fn odd_ids_stay_one_segment() {
        let url = item_url(&base(), "../bookings?x=1");
        assert_eq!(
            url.as_str(),
            "https://api.seshn.net/v1/webhooks/..%2Fbookings%3Fx=1"
        );
    }

    #[test]
    fn retry_after_seconds_only_and_clamped() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(reqwest::header::RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn error_message_prefers_message_then_type() {
        assert_eq!(
            error_message(br#"{"error":{"type":"invalid_request","message":"url is required"}}"#)
                .as_deref(),
            Some("url is required")
        );
        assert_eq!(
            error_message(br#"{"error":{"type":"conflict"}}"#).as_deref(),
            Some("conflict")
        );
        assert_eq!(error_message(b"<html>bad gateway</html>"), None);
    }

    #[test]
    fn webhook_decodes_with_defaults() {
        let w: WireWebhook =
            serde_json::from_str(r#"{"id":"wh_1","url":"https://x/y","createdAt":"t"}"#).unwrap();
        let w = Webhook::from(w);
        assert!(w.enabled);
        assert!(w.events.is_empty());
        assert!(w.secret.is_none());
    }
}
