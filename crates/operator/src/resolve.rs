//! Resolve stage: reads the Secrets a bridge references. Values are wrapped in [`Sensitive`],
//! whose `Debug` never shows them.

use std::fmt;

use bridge_api::{SecretKeyRef, SeshnSegmentBridge};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

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

/// Everything the later stages need from Secrets.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The Seshn API key.
    pub api_key: Sensitive,
    /// The Segment write key.
    pub write_key: Sensitive,
    /// The webhook signing secret from the owned Secret, if it exists yet.
    pub signing_secret: Option<Sensitive>,
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

/// Reads the bridge's owned signing Secret, if present.
pub async fn signing_secret(
    api: &Api<Secret>,
    v: &Validated,
) -> Result<Option<Sensitive>, ResolveError> {
    let secret = api
        .get_opt(&v.signing_secret_name)
        .await
        .map_err(|source| ResolveError::Read {
            name: v.signing_secret_name.clone(),
            source,
        })?;
    Ok(secret.and_then(|s| key_of(&s, SIGNING_SECRET_KEY)))
}

/// Reads every Secret the bridge needs.
pub async fn resolve(
    api: &Api<Secret>,
    bridge: &SeshnSegmentBridge,
    v: &Validated,
) -> Result<Resolved, ResolveError> {
    let api_key = secret_key(api, &bridge.spec.seshn.api_key_secret_ref).await?;
    let write_key = secret_key(api, &bridge.spec.segment.write_key_secret_ref).await?;
    let signing_secret = signing_secret(api, v).await?;
    Ok(Resolved {
        api_key,
        write_key,
        signing_secret,
    })
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
