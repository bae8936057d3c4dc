//! Client for the Seshn webhooks management API.
//!
//! The API shape is assumed (DESIGN §4.2); every path and field name lives in the [`wire`]
//! adapter module. This module holds the typed model, error classification, the shared rate
//! limiter and the HTTP plumbing (bearer auth, `Idempotency-Key`, timeouts, pagination).
//!
//! Nothing here logs or formats the API key or a webhook secret: [`Secret`], [`NewWebhook`] and
//! [`SeshnClient`] redact them in `Debug`, and error messages taken from Seshn's answers have
//! both blanked out.

mod error;
mod limiter;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;

pub use error::SeshnError;
pub use limiter::RateLimiter;

/// Largest answer body we read; a page of 100 webhooks is a few tens of KB, so anything near
/// this is not a Seshn answer and must not grow our memory.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Upper bound on pages followed by [`SeshnClient::list_all`], so a server that keeps saying
/// `hasMore` cannot keep a reconcile busy forever (100,000 webhooks per key).
const MAX_PAGES: usize = 1000;
/// Longest Seshn error message copied into our errors.
const MAX_MESSAGE_CHARS: usize = 300;

/// A secret string (a webhook signing secret). `Debug` never shows it and there is no
/// `Display`; read it with [`Secret::expose`] only where it is really used.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// A webhook registered at Seshn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Seshn's id, e.g. `wh_123`.
    pub id: String,
    /// Where Seshn delivers events.
    pub url: String,
    /// Subscribed event names; empty means every event.
    pub events: Vec<String>,
    /// Whether Seshn delivers to it.
    pub enabled: bool,
    /// The signing secret: only in the answer to create (get and list never return it).
    pub secret: Option<Secret>,
    /// Free text shown in Seshn's dashboard.
    pub description: Option<String>,
}

/// What to create.
#[derive(Clone, PartialEq, Eq)]
pub struct NewWebhook {
    /// Where Seshn should deliver events.
    pub url: String,
    /// Event names to subscribe to; empty means every event.
    pub events: Vec<String>,
    /// Free text shown in Seshn's dashboard.
    pub description: Option<String>,
    /// A signing secret we generated; Seshn is assumed to use it (or to return its own).
    pub secret: Option<String>,
}

impl fmt::Debug for NewWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewWebhook")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("description", &self.description)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A partial update: `None` fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookPatch {
    /// New delivery URL.
    pub url: Option<String>,
    /// New event subscription.
    pub events: Option<Vec<String>>,
}

/// Outcome of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    /// We deleted it.
    Deleted,
    /// It was not there (404): nothing left to do.
    AlreadyGone,
}

/// Called once per HTTP attempt with the operation (`create`, `get`, `list`, `update`,
/// `delete`) and the HTTP status, or 0 when no answer arrived. For metrics.
pub type Observer = Arc<dyn Fn(&'static str, u16) + Send + Sync>;

/// Builds the HTTP client to share between [`SeshnClient`]s: rustls with the ring provider,
/// `timeout` for each whole request, no redirects (a redirect must not carry our bearer key or
/// turn a POST into a GET).
///
/// # Panics
/// Only if the TLS backend cannot be initialised at all; see [`try_http_client`] to handle that.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    try_http_client(timeout).expect("building the HTTP client (TLS backend unavailable)")
}

/// [`http_client`] returning the build error instead of panicking.
pub fn try_http_client(timeout: Duration) -> Result<reqwest::Client, SeshnError> {
    // reqwest is built without a default provider; install ring once per process. Another part
    // of the binary may have installed one already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("seshn-segment/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SeshnError::Network {
            reason: format!("cannot build HTTP client: {}", error_chain(&e)),
        })
}

/// A client for one Seshn API key. Cheap to clone; share one per (base URL, key).
#[derive(Clone)]
pub struct SeshnClient {
    http: reqwest::Client,
    /// `<scheme>://<host>[:port][/prefix]/v1`, no trailing slash.
    base: Url,
    /// `Bearer <key>`, marked sensitive so reqwest/hyper never print it.
    auth: HeaderValue,
    /// The key itself, kept only to blank it out of Seshn's error messages.
    api_key: Arc<str>,
    limiter: Arc<RateLimiter>,
    observer: Option<Observer>,
    timeout: Option<Duration>,
}

impl fmt::Debug for SeshnClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeshnClient")
            .field("base_url", &self.base.as_str())
            .field("api_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Turns a user-given base URL into `.../v1`: accepts `https://api.seshn.net`, with or without
/// a trailing `/` or `/v1`.
fn normalize_base(base_url: &str) -> Result<Url, SeshnError> {
    let invalid = |message: String| SeshnError::Invalid { status: 0, message };
    let mut url = Url::parse(base_url.trim())
        .map_err(|e| invalid(format!("Seshn base URL is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid("Seshn base URL must be http(s)://host".to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Credentials in the URL would end up in logs; the key goes in the Secret instead.
        return Err(invalid(
            "Seshn base URL must not carry credentials".to_owned(),
        ));
    }
    url.set_query(None);
    url.set_fragment(None);
    let path = url.path().trim_end_matches('/').to_owned();
    let version_suffix = format!("/{}", wire::API_VERSION);
    let path = if path.ends_with(&version_suffix) {
        path
    } else {
        format!("{path}{version_suffix}")
    };
    url.set_path(&path);
    Ok(url)
}

/// An error's message with its sources, without the URL (ids are harmless, but a URL is noise
/// in a condition message).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Describes a transport error without the URL.
fn network_reason(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let prefix = if e.is_connect() {
        "connect failed"
    } else if e.is_body() || e.is_decode() {
        "answer interrupted"
    } else {
        "request failed"
    };
    let e = e.without_url();
    format!("{prefix}: {}", error_chain(&e))
}

/// 404, or 410 should Seshn ever say a deleted webhook is gone for good.
fn is_gone(status: StatusCode) -> bool {
    status == StatusCode::NOT_FOUND || status == StatusCode::GONE
}

fn elapsed_ms(started: std::time::Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, SeshnError> {
    serde_json::from_slice(body).map_err(|e| SeshnError::Decode {
        reason: redact_quoted(&e.to_string()),
    })
}

/// serde_json quotes the offending value in some messages (`invalid type: string "..."`); that
/// value could be a secret in a misshapen answer, so everything between double quotes goes.
/// Field names (in backticks) and positions stay: they are what one needs to debug.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for (i, part) in message.split('"').enumerate() {
        if i % 2 == 0 {
            out.push_str(part);
        } else {
            out.push_str("\"…\"");
        }
    }
    out
}

/// A complete answer.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl SeshnClient {
    /// A client for `api_key` at `base_url` (e.g. `https://api.seshn.net`; a trailing `/` or
    /// `/v1` is fine), sharing `http` and the global `limiter`.
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        api_key: &str,
        limiter: Arc<RateLimiter>,
    ) -> Result<Self, SeshnError> {
        let base = normalize_base(base_url)?;
        let api_key = api_key.trim();
        if api_key.is_empty() {
            return Err(SeshnError::Invalid {
                status: 0,
                message: "Seshn API key is empty".to_owned(),
            });
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {api_key}")).map_err(|_| {
            // Deliberately not echoing the value.
            SeshnError::Invalid {
                status: 0,
                message: "Seshn API key contains characters not allowed in a header".to_owned(),
            }
        })?;
        auth.set_sensitive(true);
        Ok(SeshnClient {
            http,
            base,
            auth,
            api_key: Arc::from(api_key),
            limiter,
            observer: None,
            timeout: None,
        })
    }

    /// Reports every HTTP attempt to `observer` (operation, status or 0).
    #[must_use]
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Overrides the HTTP client's timeout for each request of this client.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The normalised base URL (ending in `/v1`).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// Registers a webhook. `idempotency_key` makes a retry after a lost answer return the
    /// same webhook instead of creating a second one (send the same request body again).
    pub async fn create(
        &self,
        req: &NewWebhook,
        idempotency_key: &str,
    ) -> Result<Webhook, SeshnError> {
        let key = HeaderValue::from_str(idempotency_key)
            .ok()
            .filter(|_| !idempotency_key.is_empty())
            .ok_or_else(|| SeshnError::Invalid {
                status: 0,
                message: "idempotency key must be a non-empty header value".to_owned(),
            })?;
        let body = wire::CreateBody {
            url: &req.url,
            events: &req.events,
            description: req.description.as_deref(),
            secret: req.secret.as_deref(),
        };
        let answer = self
            .call(
                "create",
                Method::POST,
                wire::collection_url(&self.base),
                &[],
                Some(&body),
                Some(key),
            )
            .await?;
        if answer.status.is_success() {
            return decode::<wire::WireWebhook>(&answer.body).map(Into::into);
        }
        Err(self.classify(&answer, req.secret.as_deref()))
    }

    /// Reads one webhook; `Ok(None)` when Seshn does not know it (404 or 410).
    pub async fn get(&self, id: &str) -> Result<Option<Webhook>, SeshnError> {
        let answer = self
            .call(
                "get",
                Method::GET,
                wire::item_url(&self.base, id),
                &[],
                None::<&()>,
                None,
            )
            .await?;
        if is_gone(answer.status) {
            return Ok(None);
        }
        if answer.status.is_success() {
            return decode::<wire::WireWebhook>(&answer.body).map(|w| Some(w.into()));
        }
        Err(self.classify(&answer, None))
    }

    /// Every webhook of this key, following pagination.
    pub async fn list_all(&self) -> Result<Vec<Webhook>, SeshnError> {
        let mut all: Vec<Webhook> = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let query = wire::list_query(after.as_deref());
            let answer = self
                .call(
                    "list",
                    Method::GET,
                    wire::collection_url(&self.base),
                    &query,
                    None::<&()>,
                    None,
                )
                .await?;
            if !answer.status.is_success() {
                return Err(self.classify(&answer, None));
            }
            let page: wire::ListPage = decode(&answer.body)?;
            let more = page.has_more;
            let before = all.len();
            all.extend(page.data.into_iter().map(Webhook::from));
            if !more {
                return Ok(all);
            }
            let last = all.last().map(|w| w.id.clone());
            // A page that adds nothing (or repeats the cursor) would loop forever.
            if all.len() == before || last == after {
                return Err(SeshnError::Decode {
                    reason: "list pagination made no progress".to_owned(),
                });
            }
            after = last;
        }
        Err(SeshnError::Decode {
            reason: format!("list pagination exceeded {MAX_PAGES} pages"),
        })
    }

    /// Changes a webhook; `NotFound` when it is gone (404 or 410).
    pub async fn update(&self, id: &str, patch: &WebhookPatch) -> Result<Webhook, SeshnError> {
        let body = wire::PatchBody {
            url: patch.url.as_deref(),
            events: patch.events.as_deref(),
        };
        let answer = self
            .call(
                "update",
                Method::PATCH,
                wire::item_url(&self.base, id),
                &[],
                Some(&body),
                None,
            )
            .await?;
        if answer.status.is_success() {
            return decode::<wire::WireWebhook>(&answer.body).map(Into::into);
        }
        Err(self.classify(&answer, None))
    }

    /// Deletes a webhook; a 404 (or 410) counts as done.
    pub async fn delete(&self, id: &str) -> Result<Deleted, SeshnError> {
        let answer = self
            .call(
                "delete",
                Method::DELETE,
                wire::item_url(&self.base, id),
                &[],
                None::<&()>,
                None,
            )
            .await?;
        if is_gone(answer.status) {
            return Ok(Deleted::AlreadyGone);
        }
        if answer.status.is_success() {
            return Ok(Deleted::Deleted);
        }
        Err(self.classify(&answer, None))
    }

    /// Sends one request (after the rate limiter) and reads the whole answer.
    async fn call<B: Serialize + ?Sized>(
        &self,
        op: &'static str,
        method: Method,
        url: Url,
        query: &[(&'static str, String)],
        body: Option<&B>,
        idempotency_key: Option<HeaderValue>,
    ) -> Result<Answer, SeshnError> {
        self.limiter.acquire().await;
        let mut request = self
            .http
            .request(method, url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header(wire::IDEMPOTENCY_KEY_HEADER, key);
        }
        if let Some(timeout) = self.timeout {
            request = request.timeout(timeout);
        }
        let started = std::time::Instant::now();
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                self.observe(op, 0);
                let reason = network_reason(e);
                tracing::debug!(op, elapsed_ms = elapsed_ms(started), %reason, "Seshn call failed");
                return Err(SeshnError::Network { reason });
            }
        };
        let status = response.status();
        self.observe(op, status.as_u16());
        tracing::debug!(
            op,
            status = status.as_u16(),
            elapsed_ms = elapsed_ms(started),
            "Seshn call"
        );
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return Err(SeshnError::Decode {
                            reason: format!("answer larger than {MAX_BODY_BYTES} bytes"),
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(SeshnError::Network {
                        reason: network_reason(e),
                    });
                }
            }
        }
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn observe(&self, op: &'static str, status: u16) {
        if let Some(observer) = &self.observer {
            observer(op, status);
        }
    }

    /// Maps a non-success answer to an error.
    fn classify(&self, answer: &Answer, request_secret: Option<&str>) -> SeshnError {
        let status = answer.status.as_u16();
        let message = || self.sanitize(wire::error_message(&answer.body), status, request_secret);
        match status {
            401 | 403 => SeshnError::Unauthorized { status },
            404 | 410 => SeshnError::NotFound,
            409 => SeshnError::Conflict { message: message() },
            429 => SeshnError::RateLimited {
                retry_after: wire::retry_after(&answer.headers),
            },
            408 | 500..=599 => SeshnError::Server { status },
            _ => SeshnError::Invalid {
                status,
                message: message(),
            },
        }
    }

    /// Seshn's message with our key and the request's secret blanked out (a server may echo
    /// what it rejected), shortened; a generic text when there is none.
    fn sanitize(&self, message: Option<String>, status: u16, secret: Option<&str>) -> String {
        let Some(mut message) = message else {
            return StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("no message")
                .to_owned();
        };
        message = message.replace(&*self.api_key, "<redacted>");
        if let Some(secret) = secret.filter(|s| !s.is_empty()) {
            message = message.replace(secret, "<redacted>");
        }
        if message.chars().count() > MAX_MESSAGE_CHARS {
            message = message.chars().take(MAX_MESSAGE_CHARS).collect();
            message.push('…');
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_keep_field_names_but_not_values() {
        let err = decode::<wire::ListPage>(
            br#"{"data":[{"id":"wh_1","url":"u","secret":7}],"hasMore":"hunter2"}"#,
        )
        .err()
        .unwrap();
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("line 1"), "{text}");
        let err = decode::<wire::ListPage>(br#"{"hasMore":false}"#)
            .err()
            .unwrap();
        assert!(err.to_string().contains("`data`"), "{err}");
        // An unterminated quote is redacted to the end.
        assert_eq!(redact_quoted(r#"a "b" c "d"#), r#"a "…" c "…""#);
    }

    #[test]
    fn base_urls_are_normalised() {
        for input in [
            "https://api.seshn.net",
            "https://api.seshn.net/",
            "https://api.seshn.net/v1",
            "https://api.seshn.net/v1/",
            " https://api.seshn.net/v1?x=1 ",
        ] {
            assert_eq!(
                normalize_base(input).unwrap().as_str(),
                "https://api.seshn.net/v1",
                "{input}"
            );
        }
        assert_eq!(
            normalize_base("http://127.0.0.1:8080/prefix/")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/prefix/v1"
        );
    }

    #[test]
    fn bad_base_urls_are_invalid() {
        for input in [
            "",
            "api.seshn.net",
            "ftp://api.seshn.net",
            "https://u:p@api.seshn.net",
        ] {
            let err = normalize_base(input).unwrap_err();
            assert_eq!(err.kind(), "InvalidRequest", "{input}");
            assert!(!err.to_string().contains("u:p"));
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let new = NewWebhook {
            url: "https://h/x".into(),
            events: vec![],
            description: None,
            secret: Some("s3cr3t-value".into()),
        };
        let text = format!("{new:?}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
        assert!(text.contains("redacted"));
        let secret = Secret::new("s3cr3t-value");
        assert!(!format!("{secret:?}").contains("s3cr3t"));
        assert_eq!(secret.expose(), "s3cr3t-value");
    }

    #[test]
    fn sanitize_blanks_key_and_secret_and_shortens() {
        let client = SeshnClient::new(
            http_client(Duration::from_secs(5)),
            "https://api.seshn.net",
            "sk_test_abc123",
            Arc::new(RateLimiter::unlimited()),
        )
        .unwrap();
        let msg = client.sanitize(
            Some("bad key sk_test_abc123 and secret hunter2".into()),
            400,
            Some("hunter2"),
        );
        assert_eq!(msg, "bad key <redacted> and secret <redacted>");
        let long = client.sanitize(Some("x".repeat(1000)), 400, None);
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(client.sanitize(None, 422, None), "Unprocessable Entity");
        let dbg = format!("{client:?}");
        assert!(!dbg.contains("abc123"), "{dbg}");
    }

    #[test]
    fn bad_keys_are_refused_without_echo() {
        let limiter = Arc::new(RateLimiter::unlimited());
        let err = SeshnClient::new(
            http_client(Duration::from_secs(5)),
            "https://api.seshn.net",
            "sk_te\nst_x",
            limiter.clone(),
        )
        .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("sk_te"));
        assert!(
            SeshnClient::new(
                http_client(Duration::from_secs(5)),
                "https://a.b",
                "  ",
                limiter
            )
            .is_err()
        );
    }
}
