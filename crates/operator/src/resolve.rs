//! Resolve stage: reads the Secrets a bridge references. Values are wrapped in [`Sensitive`],
//! whose `Debug` never shows them.

use std::fmt;

use bridge_api::SecretKeyRef;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::build::REPLACES_WEBHOOK_ANNOTATION;
use crate::error::ResolveError;
use crate::validate::{SIGNING_SECRET_KEY, Validated};

/// A secret value. No `Display`; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(Vec<u8>);

impl Sensitive {
    /// The bytes, for the few places that really use them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The value as text (trimmed), if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok().map(str::trim)
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn key_of(secret: &Secret, key: &str) -> Option<Sensitive> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.as_bytes().to_vec())
        })?;
    let value = Sensitive(bytes);
    // An empty or non-UTF-8 key is as good as missing: neither Seshn nor Segment accept it.
    value
        .as_str()
        .filter(|s| !s.is_empty())
        .map(|s| Sensitive(s.as_bytes().to_vec()))
}

/// Reads one referenced key.
pub async fn secret_key(api: &Api<Secret>, r: &SecretKeyRef) -> Result<Sensitive, ResolveError> {
    let secret = api
        .get_opt(&r.name)
        .await
        .map_err(|source| ResolveError::Read {
            name: r.name.clone(),
            source,
        })?
        .ok_or_else(|| ResolveError::SecretNotFound {
            name: r.name.clone(),
        })?;
    key_of(&secret, &r.key).ok_or_else(|| ResolveError::SecretKeyMissing {
        name: r.name.clone(),
        key: r.key.clone(),
    })
}

/// The bridge's owned signing Secret.
#[derive(Debug, Clone)]
pub struct SigningSecret {
    /// The signing secret.
    pub value: Sensitive,
    /// The webhook registered with an earlier signing secret that this one replaced (the
    /// [`REPLACES_WEBHOOK_ANNOTATION`] annotation): Seshn signs that webhook's deliveries with a
    /// secret the forwarder no longer has, so it must be replaced by one registered with this
    /// secret, and then deleted.
    pub replaces: Option<String>,
}

/// Reads the bridge's owned signing Secret, if present with a usable key.
pub async fn signing_secret(
    api: &Api<Secret>,
    v: &Validated,
) -> Result<Option<SigningSecret>, ResolveError> {
    let secret = api
        .get_opt(&v.signing_secret_name)
        .await
        .map_err(|source| ResolveError::Read {
            name: v.signing_secret_name.clone(),
            source,
        })?;
    Ok(secret.and_then(|s| {
        let value = key_of(&s, SIGNING_SECRET_KEY)?;
        let replaces = s
            .annotations()
            .get(REPLACES_WEBHOOK_ANNOTATION)
            .filter(|id| !id.is_empty())
            .cloned();
        Some(SigningSecret { value, replaces })
    }))
}

/// A new signing secret: 32 random bytes, hex.
pub fn generate_signing_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    #[test]
    fn keys_are_trimmed_and_empty_is_missing() {
        let s = Secret {
            data: Some(BTreeMap::from([
                ("a".to_owned(), ByteString(b" sk_test_1\n".to_vec())),
                ("empty".to_owned(), ByteString(b"  ".to_vec())),
                ("bin".to_owned(), ByteString(vec![0xff, 0xfe])),
            ])),
            ..Secret::default()
        };
        assert_eq!(key_of(&s, "a").unwrap().expose(), b"sk_test_1");
        assert!(key_of(&s, "empty").is_none());
        assert!(key_of(&s, "bin").is_none());
        assert!(key_of(&s, "nope").is_none());
        assert_eq!(format!("{:?}", key_of(&s, "a").unwrap()), "<redacted>");
    }

    #[test]
    fn generated_secrets_are_random_hex() {
        let a = generate_signing_secret();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, generate_signing_secret());
    }
}
