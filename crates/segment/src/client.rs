//! One delivery attempt of a batch to a [`Destination`].

use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};

use crate::batch::{
    BODY_CLOSE, BODY_OPEN, BODY_SENT_AT, BODY_WRITE_KEY, BatchBuilder, Limits, RawMessage,
};
use crate::destination::Destination;
use crate::time::rfc3339_millis;

/// Longest wait a `Retry-After` may impose; Segment's own SDK caps it at 300 s too, so a
/// misbehaving proxy cannot park delivery for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// `User-Agent` sent unless configured otherwise.
pub const DEFAULT_USER_AGENT: &str = concat!("seshn-segment/", env!("CARGO_PKG_VERSION"));

/// How much of an answer body is read (and discarded) so the connection can be reused.
const MAX_DRAINED_BODY: usize = 64 * 1024;

/// Installs ring as the process-wide rustls crypto provider, which reqwest's
/// `rustls-no-provider` feature requires before any `reqwest::Client` is built.
///
/// Idempotent: a provider installed earlier (by us or anyone else) is kept.
pub fn install_crypto_provider() {
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        // Already installed: the existing provider serves just as well.
    }
}

/// Configuration of a [`Client`]. `Debug` redacts the write key.
#[derive(Clone)]
pub struct ClientConfig {
    /// Where batches go.
    pub destination: Destination,
    /// The Segment source's write key (sent as Basic auth and as `writeKey` in the body).
    pub write_key: String,
    /// Whole-request timeout (connect, send, answer); a timeout counts as retryable.
    pub request_timeout: Duration,
    /// `User-Agent` header value.
    pub user_agent: String,
}

impl ClientConfig {
    /// A configuration with the default timeout (10 s, as Segment's SDKs) and user agent.
    pub fn new(destination: Destination, write_key: impl Into<String>) -> Self {
        Self {
            destination,
            write_key: write_key.into(),
            request_timeout: Duration::from_secs(10),
            user_agent: DEFAULT_USER_AGENT.to_owned(),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("destination", &self.destination)
            .field(
                "write_key",
                &if self.write_key.is_empty() {
                    "<empty>"
                } else {
                    "<redacted>"
                },
            )
            .field("request_timeout", &self.request_timeout)
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// Why a [`Client`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An HTTP destination needs a write key; Segment answers 400 to every batch without one.
    #[error("an http(s) Segment endpoint needs a write key")]
    MissingWriteKey,
    /// The write key contains whitespace or control characters (e.g. a trailing newline).
    #[error("the write key contains whitespace or control characters")]
    InvalidWriteKey,
    /// The user agent cannot be carried in an HTTP header.
    #[error("the user agent contains characters that cannot be sent in an HTTP header")]
    InvalidUserAgent,
    /// reqwest refused to build a client (TLS setup).
    #[error("building the HTTP client failed: {0}")]
    Build(String),
}

/// The outcome of one failed attempt. The text never holds the write key or message content.
///
/// Three classes, because they call for three different reactions:
/// - [`SendError::Retryable`]: the destination is having trouble; retry with backoff.
/// - [`SendError::Rejected`]: 400 or 413, the destination refuses *this content*; retrying the
///   same bytes cannot help, so the caller isolates the refused messages and dead-letters them.
/// - [`SendError::Blocked`]: every other non-2xx (401, 403, 404, 3xx, 501, 505, other 4xx) says
///   nothing about the content, only that *the configuration* (write key, endpoint, a proxy in
///   front) is wrong; the content is kept and retried with capped backoff until it is fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: 429, 408, 5xx other than 501/505, network errors and timeouts.
    #[error("temporary delivery failure: {reason}")]
    Retryable {
        /// The HTTP status, `None` for network errors and timeouts.
        status: Option<u16>,
        /// The server's `Retry-After`, capped at [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
        /// What happened, for logs.
        reason: String,
    },
    /// The destination refused this content (400, 413): resending it as is cannot succeed.
    #[error("batch rejected with HTTP {status}: {reason}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// What happened, for logs.
        reason: String,
    },
    /// A configuration problem (401, 403, 404, redirects, 501, 505, other 4xx): the content may
    /// be fine, the write key or endpoint is not. Keep the batch and retry with capped backoff.
    #[error("delivery blocked by HTTP {status} (check the write key and endpoint): {reason}")]
    Blocked {
        /// The HTTP status.
        status: u16,
        /// What happened, for logs.
        reason: String,
    },
}

impl SendError {
    /// The HTTP status, if an answer was received.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Retryable { status, .. } => *status,
            Self::Rejected { status, .. } | Self::Blocked { status, .. } => Some(*status),
        }
    }

    /// The server's requested wait, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retryable { retry_after, .. } => *retry_after,
            Self::Rejected { .. } | Self::Blocked { .. } => None,
        }
    }

    /// Whether sending the same content again may succeed (transient or configuration
    /// problems); false only for content the destination refused.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Rejected { .. })
    }

    /// Whether this is a configuration problem (see [`SendError::Blocked`]).
    pub fn is_blocked(&self) -> bool {
        matches!(self, Self::Blocked { .. })
    }
}

/// Sends batches to a [`Destination`], one attempt per [`Client::send`]. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    write_key: String,
    target: Target,
}

enum Target {
    Http {
        http: reqwest::Client,
        url: Url,
        auth: HeaderValue,
    },
    File {
        path: PathBuf,
        /// Serialises appends so concurrent batches never interleave within a line.
        lock: Arc<Mutex<()>>,
    },
    Stdout,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let destination = match &self.inner.target {
            Target::Http { url, .. } => url.to_string(),
            Target::File { path, .. } => format!("file:{}", path.display()),
            Target::Stdout => "-".to_owned(),
        };
        f.debug_struct("Client")
            .field("destination", &destination)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds a client. For an HTTP destination this builds the reqwest client (installing the
    /// rustls crypto provider first) and needs a non-empty write key.
    pub fn new(cfg: ClientConfig) -> Result<Self, ClientError> {
        let target = match cfg.destination {
            Destination::Http(url) => {
                if cfg.write_key.is_empty() {
                    return Err(ClientError::MissingWriteKey);
                }
                // Write keys are plain tokens; whitespace or control characters almost always
                // mean a key file read with its trailing newline, which Segment would not match.
                if cfg
                    .write_key
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(ClientError::InvalidWriteKey);
                }
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{}:", cfg.write_key));
                let mut auth = HeaderValue::from_str(&format!("Basic {token}"))
                    .map_err(|_| ClientError::InvalidWriteKey)?;
                // Keeps the header out of any debug output of the request.
                auth.set_sensitive(true);
                let user_agent = HeaderValue::from_str(&cfg.user_agent)
                    .map_err(|_| ClientError::InvalidUserAgent)?;
                install_crypto_provider();
                let http = reqwest::Client::builder()
                    .timeout(cfg.request_timeout)
                    .connect_timeout(cfg.request_timeout)
                    .user_agent(user_agent)
                    // A redirect would re-send the write key to another host; Segment never
                    // redirects /v1/batch, so a redirect means a misconfigured endpoint.
                    .redirect(reqwest::redirect::Policy::none())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .build()
                    .map_err(|e| ClientError::Build(error_chain(&e)))?;
                Target::Http { http, url, auth }
            }
            Destination::File(path) => Target::File {
                path,
                lock: Arc::new(Mutex::new(())),
            },
            Destination::Stdout => Target::Stdout,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                write_key: cfg.write_key,
                target,
            }),
        })
    }

    /// A [`BatchBuilder`] whose byte accounting matches this client's bodies exactly.
    pub fn batch_builder(&self, limits: Limits) -> BatchBuilder {
        BatchBuilder::for_write_key(limits, &self.inner.write_key)
    }

    /// Makes ONE attempt to deliver `messages`.
    ///
    /// HTTP: `POST` of `{"batch":[...],"sentAt":"<now>","writeKey":"..."}` with
    /// `Authorization: Basic base64(writeKey + ":")` and `Content-Type: application/json`.
    /// `sentAt` is taken fresh on every call, because Segment computes the event time as
    /// `receivedAt - (sentAt - timestamp)` and a stale `sentAt` would shift it by the retry delay.
    ///
    /// File and stdout: one line `{"batch":[...],"sentAt":"..."}` per call; the write key is
    /// left out there, since these outputs end up in logs and files.
    pub async fn send(&self, messages: &[RawMessage]) -> Result<(), SendError> {
        let sent_at = rfc3339_millis(SystemTime::now());
        match &self.inner.target {
            Target::Http { http, url, auth } => {
                let body = encode_body(messages, &sent_at, Some(&self.inner.write_key));
                let answer = http
                    .post(url.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .header(AUTHORIZATION, auth.clone())
                    .body(body)
                    .send()
                    .await;
                match answer {
                    Ok(resp) => {
                        let status = resp.status();
                        let retry_after = resp
                            .headers()
                            .get(RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| parse_retry_after(v, SystemTime::now()));
                        drain(resp).await;
                        classify(status, retry_after)
                    }
                    Err(e) => Err(SendError::Retryable {
                        status: None,
                        retry_after: None,
                        reason: error_chain(&e),
                    }),
                }
            }
            Target::File { path, lock } => {
                let mut line = encode_body(messages, &sent_at, None);
                line.push(b'\n');
                let path = path.clone();
                let lock = Arc::clone(lock);
                run_blocking(move || {
                    // A poisoned lock only means another append panicked; the file is still usable.
                    let _guard = lock
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)?;
                    f.write_all(&line)?;
                    f.flush()
                })
                .await
            }
            Target::Stdout => {
                let mut line = encode_body(messages, &sent_at, None);
                line.push(b'\n');
                run_blocking(move || {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&line)?;
                    out.flush()
                })
                .await
            }
        }
    }
}

/// Runs a blocking write off the async workers and maps its failure to a retryable error.
async fn run_blocking(
    f: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> Result<(), SendError> {
    let failed = |reason: String| SendError::Retryable {
        status: None,
        retry_after: None,
        reason,
    };
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(failed(format!("writing the batch failed: {}", e.kind()))),
        Err(_) => Err(failed("writing the batch was interrupted".to_owned())),
    }
}

/// Builds the request body. The layout must stay in step with [`crate::batch::envelope_len`].
pub(crate) fn encode_body(
    messages: &[RawMessage],
    sent_at: &str,
    write_key: Option<&str>,
) -> Vec<u8> {
    let payload: usize = messages.iter().map(|m| m.get().len() + 1).sum();
    let mut body = Vec::with_capacity(payload + 128 + write_key.map_or(0, str::len));
    body.extend_from_slice(BODY_OPEN.as_bytes());
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(m.get().as_bytes());
    }
    body.extend_from_slice(BODY_SENT_AT.as_bytes());
    body.extend_from_slice(sent_at.as_bytes());
    match write_key {
        Some(key) => {
            body.extend_from_slice(BODY_WRITE_KEY.as_bytes());
            // Writing a &str into a Vec cannot fail.
            if serde_json::to_writer(&mut body, key).is_err() {
                body.extend_from_slice(b"\"\"");
            }
        }
        None => body.push(b'"'),
    }
    body.extend_from_slice(BODY_CLOSE.as_bytes());
    body
}

/// Classifies an HTTP answer (Segment's retry rules, as in analytics-node 3.1 and the issue):
/// 2xx is success; 429, 408 and 5xx except 501/505 are transient; 400 and 413 refuse the
/// content; everything else is a configuration problem ([`SendError::Blocked`]).
pub fn classify(status: StatusCode, retry_after: Option<Duration>) -> Result<(), SendError> {
    let code = status.as_u16();
    let reason = || match status.canonical_reason() {
        Some(text) => format!("HTTP {code} {text}"),
        None => format!("HTTP {code}"),
    };
    if status.is_success() {
        return Ok(());
    }
    let retryable =
        code == 429 || code == 408 || (status.is_server_error() && code != 501 && code != 505);
    if retryable {
        Err(SendError::Retryable {
            status: Some(code),
            retry_after,
            reason: reason(),
        })
    } else if code == 400 || code == 413 {
        Err(SendError::Rejected {
            status: code,
            reason: reason(),
        })
    } else if status.is_redirection() {
        Err(SendError::Blocked {
            status: code,
            reason: format!(
                "{} (redirects are not followed; check the endpoint)",
                reason()
            ),
        })
    } else {
        let hint = match code {
            401 | 403 => " (check the write key, or a proxy in front of the endpoint)",
            404 | 405 => " (check the endpoint's path)",
            _ => "",
        };
        Err(SendError::Blocked {
            status: code,
            reason: format!("{}{hint}", reason()),
        })
    }
}

/// Parses a `Retry-After` value: delay seconds or an HTTP-date, relative to `now`.
///
/// Capped at [`MAX_RETRY_AFTER`]; a date in the past means "now" (zero). Unparseable → `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Very long digit strings overflow u64: they mean "a long time", so cap them.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or_default()
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Reads and discards a bounded part of the answer so the connection goes back to the pool.
async fn drain(mut resp: reqwest::Response) {
    let mut read = 0;
    while read < MAX_DRAINED_BODY {
        match resp.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) | Err(_) => break,
        }
    }
}

/// Describes a reqwest error without its URL: the kind plus the chain of causes
/// (e.g. "timed out" or "connection failed: ... Connection refused").
fn error_chain(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the answer failed"
    } else if e.is_builder() {
        "invalid request"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let part = cause.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_segments_rules() {
        let st = |c| StatusCode::from_u16(c).unwrap();
        for ok in [200, 201, 202, 204] {
            assert_eq!(classify(st(ok), None), Ok(()));
        }
        for retry in [429, 408, 500, 502, 503, 504, 507, 599] {
            assert!(
                classify(st(retry), None).unwrap_err().is_retryable(),
                "{retry}"
            );
        }
        for reject in [400, 413] {
            let e = classify(st(reject), None).unwrap_err();
            assert_eq!(e.status(), Some(reject));
            assert!(!e.is_retryable(), "{reject}");
            assert!(!e.is_blocked(), "{reject}");
        }
        // Configuration problems: the content is kept and retried, never dead-lettered.
        for blocked in [
            401, 403, 404, 405, 410, 422, 451, 501, 505, 301, 302, 307, 308, 100,
        ] {
            let e = classify(st(blocked), Some(Duration::from_secs(5))).unwrap_err();
            assert_eq!(e.status(), Some(blocked));
            assert!(e.is_blocked(), "{blocked}");
            assert!(e.is_retryable(), "{blocked}");
            assert_eq!(e.retry_after(), None, "{blocked}");
        }
        assert!(
            classify(st(401), None)
                .unwrap_err()
                .to_string()
                .contains("write key")
        );
        assert!(
            classify(st(302), None)
                .unwrap_err()
                .to_string()
                .contains("redirects are not followed")
        );
        let e = classify(st(429), Some(Duration::from_secs(7))).unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(
            e.to_string(),
            "temporary delivery failure: HTTP 429 Too Many Requests"
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_261_600); // 2026-01-01T10:00:00Z
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 5 ", now), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("300", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("301", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 10:00:42 GMT", now),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Fri, 02 Jan 2026 10:00:00 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        for bad in ["", "-1", "1.5", "soon", "Thu, 32 Jan 2026 10:00:00 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn debug_redacts_the_write_key() {
        let cfg = ClientConfig::new(
            "https://api.segment.io".parse().unwrap(),
            "wk_SUPERSECRET_value",
        );
        let text = format!("{cfg:?}");
        assert!(!text.contains("SUPERSECRET"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        let client = Client::new(cfg).unwrap();
        let text = format!("{client:?}");
        assert!(!text.contains("SUPERSECRET"), "{text}");
        assert!(text.contains("api.segment.io"), "{text}");
        let empty = ClientConfig::new(Destination::Stdout, "");
        assert!(format!("{empty:?}").contains("<empty>"));
    }

    #[test]
    fn http_needs_a_usable_write_key() {
        let url: Destination = "https://api.segment.io".parse().unwrap();
        assert!(matches!(
            Client::new(ClientConfig::new(url.clone(), "")),
            Err(ClientError::MissingWriteKey)
        ));
        let err = Client::new(ClientConfig::new(url, "bad\nkey_SECRET")).unwrap_err();
        assert!(matches!(err, ClientError::InvalidWriteKey));
        assert!(!err.to_string().contains("SECRET"));
        // Files and stdout need none.
        assert!(Client::new(ClientConfig::new(Destination::Stdout, "")).is_ok());
    }

    #[test]
    fn body_without_write_key_is_valid_json() {
        let m: RawMessage =
            serde_json::value::RawValue::from_string(r#"{"type":"track"}"#.into()).unwrap();
        let body = encode_body(&[m.clone(), m], "2026-01-01T10:00:05.123Z", None);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["batch"].as_array().unwrap().len(), 2);
        assert_eq!(v["sentAt"], "2026-01-01T10:00:05.123Z");
        assert!(v.get("writeKey").is_none());
        let empty = encode_body(&[], "2026-01-01T10:00:05.123Z", Some("k"));
        assert_eq!(
            std::str::from_utf8(&empty).unwrap(),
            r#"{"batch":[],"sentAt":"2026-01-01T10:00:05.123Z","writeKey":"k"}"#
        );
    }
}
