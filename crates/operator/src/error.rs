//! The reconciler's error type: one variant family per stage, each with a class and a kind.
//!
//! `class()` decides the retry policy (transient: per-object exponential backoff; terminal:
//! wait for a change of the bridge or a referenced Secret). `kind()` is a stable CamelCase
//! name used as condition reason, Event reason and metric label. Messages never contain secret
//! values: only Secret names and keys.

use std::time::Duration;

use seshn::webhooks::SeshnError;

/// How an error is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Retry with per-object exponential backoff (network, 5xx, 429, conflicts).
    Transient,
    /// Do not retry until the bridge or a referenced Secret changes.
    Terminal,
}

/// Errors of the `resolve` stage (referenced Secrets).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The Secret does not exist.
    #[error("Secret {name:?} not found")]
    SecretNotFound {
        /// Secret name.
        name: String,
    },
    /// The Secret exists but lacks the key (or it is empty / not UTF-8).
    #[error("Secret {name:?} has no usable key {key:?}")]
    SecretKeyMissing {
        /// Secret name.
        name: String,
        /// Key.
        key: String,
    },
    /// Reading the Secret failed.
    #[error("reading Secret {name:?}: {source}")]
    Read {
        /// Secret name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
}

/// Errors of the `validate` stage.
#[derive(Debug, thiserror::Error)]
#[error("invalid spec: {0}")]
pub struct ValidateError(pub String);

/// Errors of the `apply` stage.
#[derive(Debug, thiserror::Error)]
#[error("applying {kind} {name:?}: {source}")]
pub struct ApplyError {
    /// Child kind.
    pub kind: &'static str,
    /// Child name.
    pub name: String,
    /// Cause.
    #[source]
    pub source: kube::Error,
}

/// Errors of the `webhook` stage.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A Seshn API call failed.
    #[error("Seshn {op}: {source}")]
    Seshn {
        /// Operation (`create`, `get`, `list`, `update`, `delete`).
        op: &'static str,
        /// Cause (never contains the key or a secret).
        #[source]
        source: SeshnError,
    },
    /// Recording the outcome of a Seshn call in Kubernetes failed.
    #[error("recording the webhook: {0}")]
    Record(#[source] kube::Error),
}

/// Top-level reconcile error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Resolve stage.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// Validate stage.
    #[error(transparent)]
    Validate(#[from] ValidateError),
    /// Apply stage.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Webhook stage.
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    /// Any other Kubernetes API call (status, finalizer, reads).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Cleanup cannot reach Seshn because the credentials are gone; retried until the deadline.
    #[error("cannot delete the webhook: {0}")]
    CleanupBlocked(Box<Error>),
    /// The object lacks a field the API server always sets (uid, namespace).
    #[error("object is missing {0}")]
    MissingField(&'static str),
}

/// Whether a Kubernetes API error is worth retrying as-is.
fn kube_class(e: &kube::Error) -> Class {
    match e {
        // 4xx other than conflicts/throttling/timeouts mean the request itself is wrong
        // (an invalid child built from the spec): retrying the same request cannot help.
        kube::Error::Api(s) if matches!(s.code, 400 | 422) => Class::Terminal,
        _ => Class::Transient,
    }
}

impl Error {
    /// Retry policy.
    pub fn class(&self) -> Class {
        match self {
            Error::Resolve(ResolveError::Read { source, .. })
            | Error::Apply(ApplyError { source, .. }) => kube_class(source),
            // A webhook that vanished between two calls is recreated by the next pass.
            Error::Webhook(WebhookError::Seshn { source, .. })
                if source.is_transient() || matches!(source, SeshnError::NotFound) =>
            {
                Class::Transient
            }
            Error::Webhook(WebhookError::Record(e)) | Error::Kube(e) => kube_class(e),
            Error::Resolve(_)
            | Error::Validate(_)
            | Error::MissingField(_)
            | Error::Webhook(WebhookError::Seshn { .. }) => Class::Terminal,
            Error::CleanupBlocked(_) => Class::Transient,
        }
    }

    /// Stable CamelCase name (condition reason, Event reason, metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Resolve(ResolveError::SecretNotFound { .. }) => "SecretNotFound",
            Error::Resolve(ResolveError::SecretKeyMissing { .. }) => "SecretKeyMissing",
            Error::Resolve(ResolveError::Read { .. }) => "SecretReadFailed",
            Error::Validate(_) => "InvalidSpec",
            Error::Apply(_) => "ApplyFailed",
            Error::Webhook(WebhookError::Seshn { source, .. }) => match source {
                SeshnError::Unauthorized { .. } => "Unauthorized",
                SeshnError::RateLimited { .. } => "RateLimited",
                SeshnError::Invalid { .. } => "SeshnRejected",
                SeshnError::NotFound => "WebhookNotFound",
                _ => "SeshnApiError",
            },
            Error::Webhook(WebhookError::Record(_)) => "RecordFailed",
            Error::Kube(_) => "KubernetesApiError",
            Error::CleanupBlocked(_) => "CleanupBlocked",
            Error::MissingField(_) => "InvalidObject",
        }
    }

    /// A deterministic message for conditions and Events: no timestamps, no retry counts, no
    /// text echoed from Seshn (which may vary between calls), never a secret value.
    pub fn condition_message(&self) -> String {
        let text = match self {
            Error::Webhook(WebhookError::Seshn { op, source }) => match source {
                SeshnError::Unauthorized { status } => format!(
                    "Seshn rejected the API key (HTTP {status}); check spec.seshn.apiKeySecretRef"
                ),
                SeshnError::RateLimited { .. } => format!("Seshn rate-limited the {op} call"),
                other => format!("Seshn {op} failed: {}", other.kind()),
            },
            Error::CleanupBlocked(inner) => inner.condition_message(),
            other => other.to_string(),
        };
        text.chars().take(1000).collect()
    }

    /// The delay Seshn asked for (429 `Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Webhook(WebhookError::Seshn { source, .. }) => source.retry_after(),
            Error::CleanupBlocked(inner) => inner.retry_after(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure("x", "y").with_code(code),
        ))
    }

    fn seshn(source: SeshnError) -> Error {
        Error::Webhook(WebhookError::Seshn { op: "get", source })
    }

    #[test]
    fn classes() {
        assert_eq!(
            seshn(SeshnError::Unauthorized { status: 401 }).class(),
            Class::Terminal
        );
        assert_eq!(
            seshn(SeshnError::Unauthorized { status: 401 }).kind(),
            "Unauthorized"
        );
        let limited = seshn(SeshnError::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        });
        assert_eq!(limited.class(), Class::Transient);
        assert_eq!(limited.kind(), "RateLimited");
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(7)));
        let server = seshn(SeshnError::Server { status: 503 });
        assert_eq!(server.class(), Class::Transient);
        assert_eq!(server.kind(), "SeshnApiError");
        assert_eq!(server.retry_after(), None);
        assert_eq!(seshn(SeshnError::NotFound).class(), Class::Transient);
        let missing: Error = ResolveError::SecretNotFound { name: "s".into() }.into();
        assert_eq!(missing.class(), Class::Terminal);
        assert_eq!(missing.kind(), "SecretNotFound");
        let invalid: Error = ValidateError("x".into()).into();
        assert_eq!(invalid.class(), Class::Terminal);
        assert_eq!(Error::Kube(api_error(409)).class(), Class::Transient);
        assert_eq!(Error::Kube(api_error(500)).class(), Class::Transient);
        let bad_child: Error = ApplyError {
            kind: "Deployment",
            name: "d".into(),
            source: api_error(422),
        }
        .into();
        assert_eq!(bad_child.class(), Class::Terminal);
        let blocked = Error::CleanupBlocked(Box::new(seshn(SeshnError::RateLimited {
            retry_after: Some(Duration::from_secs(3)),
        })));
        assert_eq!(blocked.class(), Class::Transient);
        assert_eq!(blocked.retry_after(), Some(Duration::from_secs(3)));
    }
}
