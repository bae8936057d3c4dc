//! Webhook signature verification (HMAC-SHA256 over the raw body).
//!
//! Seshn signs every delivery with `X-Webhook-Signature`: the HMAC-SHA256 of the raw request
//! body under the endpoint's secret, as lowercase hex. Seshn's pages disagree on the form (bare
//! hex on the concept page, `sha256=<hex>` on the integration pages), so both are accepted, in any
//! hex case. The comparison runs in constant time over the decoded MAC bytes (never over text),
//! and several secrets may be configured so a rotation has an overlap window.
//!
//! ```
//! use seshn::signature::{sign, Verifier};
//! let verifier = Verifier::new(["current", "previous"]).unwrap();
//! let body = br#"{"id":"bk_1"}"#;
//! let header = sign(b"previous", body);
//! assert!(verifier.verify(body, Some(header.as_bytes())).is_ok());
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of an HMAC-SHA256 tag in bytes.
const TAG_LEN: usize = 32;

/// Why a signature was not accepted (or a verifier could not be built).
///
/// The variants carry no header or body content: error texts end up in logs and must not leak
/// what a caller sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The request carried no signature header.
    #[error("signature header missing")]
    Missing,
    /// The header is not `sha256=<64 hex>` or `<64 hex>`.
    #[error("signature header malformed")]
    Malformed,
    /// Well formed, but no configured secret produces it.
    #[error("signature does not match")]
    Mismatch,
    /// A verifier needs at least one secret.
    #[error("no webhook secret configured")]
    NoSecrets,
    /// An empty secret would let anyone who guesses it sign; refuse it.
    #[error("a configured webhook secret is empty")]
    EmptySecret,
}

/// Verifies webhook signatures against one or more secrets (current first, then previous ones).
///
/// The keyed HMAC state for each secret is computed once, so a verification costs one hash of
/// the body per secret tried. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<HmacSha256>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .finish()
    }
}

impl Verifier {
    /// Builds a verifier from secrets, the current one first.
    ///
    /// Surrounding whitespace of each secret is kept as is: secrets are compared byte for byte
    /// with what Seshn uses. Fails when the list is empty or a secret is empty.
    pub fn new<I, S>(secrets: I) -> Result<Self, SignatureError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut keys = Vec::new();
        for secret in secrets {
            let secret = secret.as_ref();
            if secret.is_empty() {
                return Err(SignatureError::EmptySecret);
            }
            // HMAC accepts keys of any length, so this cannot fail; map it anyway instead of
            // unwrapping.
            let key =
                HmacSha256::new_from_slice(secret).map_err(|_| SignatureError::EmptySecret)?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(SignatureError::NoSecrets);
        }
        Ok(Self { keys })
    }

    /// Number of configured secrets.
    pub fn secret_count(&self) -> usize {
        self.keys.len()
    }

    /// Checks `header` (the raw `X-Webhook-Signature` value, if any) against `body`.
    ///
    /// Accepts `sha256=<hex>` (prefix in any case) and bare `<hex>`, hex in any case, with
    /// surrounding spaces or tabs ignored. Returns `Ok(index)` of the secret that matched.
    pub fn verify(&self, body: &[u8], header: Option<&[u8]>) -> Result<usize, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let tag = parse_header(header)?;
        // Try every secret, even after a match, so the time taken does not tell which one
        // matched; `verify_slice` itself compares in constant time.
        let mut matched = None;
        for (index, key) in self.keys.iter().enumerate() {
            let mut mac = key.clone();
            mac.update(body);
            if mac.verify_slice(&tag).is_ok() && matched.is_none() {
                matched = Some(index);
            }
        }
        matched.ok_or(SignatureError::Mismatch)
    }
}

/// Decodes the header into the 32 tag bytes.
fn parse_header(header: &[u8]) -> Result<[u8; TAG_LEN], SignatureError> {
    let trimmed = header.trim_ascii();
    let hex_part = match trimmed.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case(b"sha256=") => &trimmed[7..],
        _ => trimmed,
    };
    if hex_part.len() != TAG_LEN * 2 {
        return Err(SignatureError::Malformed);
    }
    let mut tag = [0u8; TAG_LEN];
    hex::decode_to_slice(hex_part, &mut tag).map_err(|_| SignatureError::Malformed)?;
    Ok(tag)
}

/// Signs `body` with `secret` the way Seshn does: `sha256=<lowercase hex>`.
///
/// Used by tests, the benchmark and the fakes; the forwarder itself only verifies.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so the `else` branch is unreachable.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Computed independently with:
    //   printf '{"id":"bk_1","seats":2}' > b1.json
    //   openssl dgst -sha256 -hmac 'whsec_current' -hex b1.json
    //   openssl dgst -sha256 -hmac 'whsec_previous' -hex b1.json
    const BODY1: &[u8] = br#"{"id":"bk_1","seats":2}"#;
    const SIG1_CURRENT: &str = "090a0cdb7e40f88e2d597a4d7e62f6b264777eacfccaf99ea25185c24923844b";
    const SIG1_PREVIOUS: &str = "fc40b11e343fc29380b1245991477033d2956b34f10ad7d94cdc631f67fea31b";
    // printf '{"contact":{"name":"Zoë \\u00e9"},"n":12345678901234567890}' > b2.json
    // openssl dgst -sha256 -hmac 'whsec_current' -hex b2.json   (UTF-8 bytes of the body)
    const BODY2: &[u8] =
        "{\"contact\":{\"name\":\"Zoë \\u00e9\"},\"n\":12345678901234567890}".as_bytes();
    const SIG2_CURRENT: &str = "d2e35c9f467cb0361953a2f32e4114b0d3d889b329ace7fc304f02302580b1e7";
    // printf '' | openssl dgst -sha256 -hmac 'k' -hex
    const SIG_EMPTY_K: &str = "8bb990c40a7d61cb97597a942125025be50ac8beb74436e3735b98893a7f6620";
    // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    const RFC4231_2: &str = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";

    fn verifier() -> Verifier {
        Verifier::new(["whsec_current"]).unwrap()
    }

    #[test]
    fn accepts_both_forms_and_any_case() {
        let v = verifier();
        let forms = [
            SIG1_CURRENT.to_owned(),
            format!("sha256={SIG1_CURRENT}"),
            SIG1_CURRENT.to_uppercase(),
            format!("sha256={}", SIG1_CURRENT.to_uppercase()),
            format!("SHA256={SIG1_CURRENT}"),
            format!("  sha256={SIG1_CURRENT}\t"),
        ];
        for form in forms {
            assert_eq!(v.verify(BODY1, Some(form.as_bytes())), Ok(0), "{form}");
        }
    }

    #[test]
    fn independent_vectors() {
        assert_eq!(
            verifier().verify(BODY2, Some(SIG2_CURRENT.as_bytes())),
            Ok(0)
        );
        let k = Verifier::new(["k"]).unwrap();
        assert_eq!(k.verify(b"", Some(SIG_EMPTY_K.as_bytes())), Ok(0));
        let jefe = Verifier::new(["Jefe"]).unwrap();
        assert_eq!(
            jefe.verify(b"what do ya want for nothing?", Some(RFC4231_2.as_bytes())),
            Ok(0)
        );
        assert_eq!(
            sign(b"whsec_current", BODY1),
            format!("sha256={SIG1_CURRENT}")
        );
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            format!("sha256={RFC4231_2}")
        );
    }

    #[test]
    fn rotation_accepts_any_configured_secret() {
        let v = Verifier::new(["whsec_new", "whsec_current", "whsec_previous"]).unwrap();
        assert_eq!(v.secret_count(), 3);
        assert_eq!(v.verify(BODY1, Some(SIG1_CURRENT.as_bytes())), Ok(1));
        assert_eq!(v.verify(BODY1, Some(SIG1_PREVIOUS.as_bytes())), Ok(2));
        // Once the previous secret is dropped, its signatures fail.
        let v = Verifier::new(["whsec_current"]).unwrap();
        assert_eq!(
            v.verify(BODY1, Some(SIG1_PREVIOUS.as_bytes())),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn rejects_bad_headers_without_panicking() {
        let v = verifier();
        let too_short = &SIG1_CURRENT[..63];
        let too_long = format!("{SIG1_CURRENT}0");
        let non_hex = format!("{}zz", &SIG1_CURRENT[..62]);
        let cases: [(&[u8], SignatureError); 10] = [
            (b"", SignatureError::Malformed),
            (b"sha256=", SignatureError::Malformed),
            (too_short.as_bytes(), SignatureError::Malformed),
            (too_long.as_bytes(), SignatureError::Malformed),
            (non_hex.as_bytes(), SignatureError::Malformed),
            (b"sha1=abcdef", SignatureError::Malformed),
            ("sha256=ü".as_bytes(), SignatureError::Malformed),
            (&[0xff, 0xfe, 0x00], SignatureError::Malformed),
            (SIG1_PREVIOUS.as_bytes(), SignatureError::Mismatch),
            (SIG2_CURRENT.as_bytes(), SignatureError::Mismatch),
        ];
        for (header, expected) in cases {
            assert_eq!(v.verify(BODY1, Some(header)), Err(expected), "{header:?}");
        }
        assert_eq!(v.verify(BODY1, None), Err(SignatureError::Missing));
    }

    #[test]
    fn body_is_compared_byte_exact() {
        let v = verifier();
        // Same JSON meaning, different bytes: must not verify.
        let respaced = br#"{"id": "bk_1","seats":2}"#;
        assert_eq!(
            v.verify(respaced, Some(SIG1_CURRENT.as_bytes())),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn refuses_empty_configuration() {
        assert_eq!(
            Verifier::new(Vec::<&str>::new()).unwrap_err(),
            SignatureError::NoSecrets
        );
        assert_eq!(
            Verifier::new(["ok", ""]).unwrap_err(),
            SignatureError::EmptySecret
        );
        let debug = format!("{:?}", Verifier::new(["topsecret"]).unwrap());
        assert!(!debug.contains("topsecret"));
    }
}
