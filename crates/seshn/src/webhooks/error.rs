//! Typed errors of the webhooks client, classified for the operator's retry policy.

use std::time::Duration;

/// Why a call to Seshn's webhooks API failed.
///
/// Messages are copied from Seshn's answers after the API key and any secret of the request are
/// blanked out and the text is shortened, so errors are safe to log, to put in Kubernetes
/// Events and conditions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeshnError {
    /// 401 (key unknown or revoked) or 403 (key lacks the permission).
    #[error("Seshn rejected the API key (HTTP {status})")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
    },
    /// 404 where a webhook had to exist (update).
    #[error("webhook not found at Seshn")]
    NotFound,
    /// 429.
    #[error("rate limited by Seshn{}", fmt_retry_after(*.retry_after))]
    RateLimited {
        /// From `Retry-After` (seconds), when Seshn sent one.
        retry_after: Option<Duration>,
    },
    /// 409: a conflicting concurrent change, or an idempotency key reused with another body.
    #[error("conflict at Seshn: {message}")]
    Conflict {
        /// Seshn's explanation.
        message: String,
    },
    /// 400, 422 and other client errors: the request itself is wrong. `status` is 0 when the
    /// request was refused before sending (bad base URL, key or idempotency key).
    #[error("Seshn rejected the request (HTTP {status}): {message}")]
    Invalid {
        /// The HTTP status, or 0 for a request refused locally.
        status: u16,
        /// Seshn's explanation.
        message: String,
    },
    /// 5xx (and 408).
    #[error("Seshn server error (HTTP {status})")]
    Server {
        /// The HTTP status.
        status: u16,
    },
    /// No complete answer: connect failure, timeout, connection dropped mid-answer.
    #[error("network error talking to Seshn: {reason}")]
    Network {
        /// What went wrong (never contains the key or the URL's credentials).
        reason: String,
    },
    /// An answer that does not have the expected shape.
    #[error("could not decode Seshn's answer: {reason}")]
    Decode {
        /// What did not fit.
        reason: String,
    },
}

fn fmt_retry_after(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (retry after {}s)", d.as_secs()),
        None => String::new(),
    }
}

impl SeshnError {
    /// Whether retrying the same call later can succeed without anything else changing.
    ///
    /// Transient: rate limits, conflicts, server and network errors, and undecodable answers
    /// (most often a proxy's error page). Terminal: a rejected key, a missing webhook, an
    /// invalid request: these wait for a change of spec or credentials.
    pub fn is_transient(&self) -> bool {
        match self {
            SeshnError::RateLimited { .. }
            | SeshnError::Conflict { .. }
            | SeshnError::Server { .. }
            | SeshnError::Network { .. }
            | SeshnError::Decode { .. } => true,
            SeshnError::Unauthorized { .. } | SeshnError::NotFound | SeshnError::Invalid { .. } => {
                false
            }
        }
    }

    /// How long Seshn asked us to wait, for a 429 that carried `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SeshnError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// A stable CamelCase name, for condition reasons and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            SeshnError::Unauthorized { .. } => "Unauthorized",
            SeshnError::NotFound => "NotFound",
            SeshnError::RateLimited { .. } => "RateLimited",
            SeshnError::Conflict { .. } => "Conflict",
            SeshnError::Invalid { .. } => "InvalidRequest",
            SeshnError::Server { .. } => "ServerError",
            SeshnError::Network { .. } => "NetworkError",
            SeshnError::Decode { .. } => "DecodeError",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_kinds() {
        let cases = [
            (
                SeshnError::Unauthorized { status: 401 },
                false,
                "Unauthorized",
            ),
            (SeshnError::NotFound, false, "NotFound"),
            (
                SeshnError::RateLimited { retry_after: None },
                true,
                "RateLimited",
            ),
            (
                SeshnError::Conflict {
                    message: String::new(),
                },
                true,
                "Conflict",
            ),
            (
                SeshnError::Invalid {
                    status: 422,
                    message: String::new(),
                },
                false,
                "InvalidRequest",
            ),
            (SeshnError::Server { status: 503 }, true, "ServerError"),
            (
                SeshnError::Network {
                    reason: String::new(),
                },
                true,
                "NetworkError",
            ),
            (
                SeshnError::Decode {
                    reason: String::new(),
                },
                true,
                "DecodeError",
            ),
        ];
        for (err, transient, kind) in cases {
            assert_eq!(err.is_transient(), transient, "{err:?}");
            assert_eq!(err.kind(), kind);
        }
    }

    #[test]
    fn retry_after_only_from_rate_limits() {
        let d = Duration::from_secs(3);
        let e = SeshnError::RateLimited {
            retry_after: Some(d),
        };
        assert_eq!(e.retry_after(), Some(d));
        assert_eq!(e.to_string(), "rate limited by Seshn (retry after 3s)");
        assert_eq!(SeshnError::Server { status: 500 }.retry_after(), None);
    }
}
