//! Size-aware batch building with exact byte accounting of the `/v1/batch` body.
//!
//! The body the [`crate::Client`] sends is exactly
//! `{"batch":[m1,m2,...],"sentAt":"<24 bytes>","writeKey":"<key>"}`, so the builder can know its
//! final size without serialising anything: the messages are already serialised
//! ([`RawMessage`]), the separators are one comma each, and the envelope has a fixed length for a
//! given write key.

use serde_json::value::RawValue;

use crate::time::RFC3339_MILLIS_LEN;

/// One Segment message (an object with `type`, `messageId`, `timestamp`, ...), already serialised.
pub type RawMessage = Box<RawValue>;

/// Segment's documented request limits (HTTP Tracking API, "Max request size" and "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message, in UTF-8 bytes of its JSON. Segment rejects the whole batch with 400
    /// when one message exceeds 32 KB, so such a message must never be sent.
    pub max_message_bytes: usize,
    /// Largest request body, envelope (`batch`, `sentAt`, `writeKey`) included.
    pub max_batch_bytes: usize,
    /// Most messages in one batch; Segment answers 200 but drops the events above 2,500.
    pub max_batch_messages: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 32 * 1024,
            max_batch_bytes: 500_000,
            max_batch_messages: 2500,
        }
    }
}

/// Why [`BatchBuilder::try_push`] refused a message. Both variants hand the message back.
///
/// `Debug` shows only the message size, never its content (it may hold personal data).
#[derive(thiserror::Error)]
pub enum PushError {
    /// The message alone breaks the per-message limit (or cannot fit even in an empty batch):
    /// it can never be sent, so the caller dead-letters it.
    /// Its size is `message.get().len()`.
    #[error("message exceeds the per-message size limit")]
    Oversize(RawMessage),
    /// Adding the message would break the batch byte or count limit: send the current batch,
    /// then push the message into the emptied builder.
    #[error("batch is full")]
    Full(RawMessage),
}

impl std::fmt::Debug for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, m) = match self {
            Self::Oversize(m) => ("Oversize", m),
            Self::Full(m) => ("Full", m),
        };
        write!(f, "{name}({} bytes)", m.get().len())
    }
}

impl PushError {
    /// Takes the refused message back.
    pub fn into_message(self) -> RawMessage {
        match self {
            Self::Oversize(message) | Self::Full(message) => message,
        }
    }
}

/// The fixed parts of the body; [`crate::Client`] writes exactly these.
pub(crate) const BODY_OPEN: &str = r#"{"batch":["#;
pub(crate) const BODY_SENT_AT: &str = r#"],"sentAt":""#;
pub(crate) const BODY_WRITE_KEY: &str = r#"","writeKey":"#;
pub(crate) const BODY_CLOSE: &str = "}";

/// Bytes of the body that are not messages or commas, for a write key whose JSON string
/// encoding (quotes included) has `encoded_key_len` bytes.
pub(crate) const fn envelope_len(encoded_key_len: usize) -> usize {
    BODY_OPEN.len()
        + BODY_SENT_AT.len()
        + RFC3339_MILLIS_LEN
        + BODY_WRITE_KEY.len()
        + encoded_key_len
        + BODY_CLOSE.len()
}

/// Length of `key` encoded as a JSON string, quotes included.
pub(crate) fn encoded_key_len(key: &str) -> usize {
    // Serialising a &str cannot fail; the fallback keeps this total without an unwrap.
    serde_json::to_string(key).map_or(key.len() * 6 + 2, |s| s.len())
}

/// Accumulates messages while the final request body stays within [`Limits`].
#[derive(Debug)]
pub struct BatchBuilder {
    limits: Limits,
    envelope: usize,
    messages: Vec<RawMessage>,
    /// Size of the body if it were sent now.
    body_bytes: usize,
}

impl BatchBuilder {
    /// A builder for a write key of `write_key_len` bytes. Segment write keys are plain
    /// alphanumeric strings, so their JSON encoding is the key plus two quotes; for a key that
    /// may need escaping use [`BatchBuilder::for_write_key`].
    pub fn new(limits: Limits, write_key_len: usize) -> Self {
        Self::with_envelope(limits, envelope_len(write_key_len + 2))
    }

    /// A builder whose accounting uses the exact JSON encoding of `write_key`.
    pub fn for_write_key(limits: Limits, write_key: &str) -> Self {
        Self::with_envelope(limits, envelope_len(encoded_key_len(write_key)))
    }

    fn with_envelope(limits: Limits, envelope: usize) -> Self {
        Self {
            limits,
            envelope,
            messages: Vec::new(),
            body_bytes: envelope,
        }
    }

    /// Adds `message` if the batch stays within the limits, else hands it back (see [`PushError`]).
    pub fn try_push(&mut self, message: RawMessage) -> Result<(), PushError> {
        let size = message.get().len();
        let alone = self.envelope + size;
        if size > self.limits.max_message_bytes
            || alone > self.limits.max_batch_bytes
            || self.limits.max_batch_messages == 0
        {
            // It would not fit even in an empty batch, so "send and retry" could never help.
            return Err(PushError::Oversize(message));
        }
        let comma = usize::from(!self.messages.is_empty());
        let after = self.body_bytes + comma + size;
        if self.messages.len() >= self.limits.max_batch_messages
            || after > self.limits.max_batch_bytes
        {
            return Err(PushError::Full(message));
        }
        self.body_bytes = after;
        self.messages.push(message);
        Ok(())
    }

    /// Number of messages in the batch.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the batch has no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Exact size in bytes of the request body this batch would produce.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The messages collected so far.
    pub fn messages(&self) -> &[RawMessage] {
        &self.messages
    }

    /// Takes the messages out, leaving an empty builder with the same limits.
    pub fn take(&mut self) -> Vec<RawMessage> {
        self.body_bytes = self.envelope;
        std::mem::take(&mut self.messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::encode_body;

    const KEY: &str = "wk_0123456789abcdefABCDEF";

    /// A message of exactly `size` bytes: `{"type":"track","p":"xxx..."}`.
    fn msg(size: usize) -> RawMessage {
        let head = r#"{"type":"track","p":""#;
        let tail = r#""}"#;
        let pad = size - head.len() - tail.len();
        let s = format!("{head}{}{tail}", "x".repeat(pad));
        assert_eq!(s.len(), size);
        RawValue::from_string(s).unwrap()
    }

    fn body_len(messages: &[RawMessage], key: &str) -> usize {
        let body = encode_body(messages, "2026-01-01T10:00:05.123Z", Some(key));
        // It must also be valid JSON of the documented shape.
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["batch"].as_array().unwrap().len(), messages.len());
        assert_eq!(v["writeKey"], key);
        body.len()
    }

    #[test]
    fn default_limits_are_segments() {
        let l = Limits::default();
        assert_eq!(l.max_message_bytes, 32_768);
        assert_eq!(l.max_batch_bytes, 500_000);
        assert_eq!(l.max_batch_messages, 2500);
    }

    #[test]
    fn message_limit_is_exact_at_32_kib() {
        let mut b = BatchBuilder::new(Limits::default(), KEY.len());
        b.try_push(msg(32 * 1024)).unwrap();
        match b.try_push(msg(32 * 1024 + 1)) {
            Err(PushError::Oversize(message)) => assert_eq!(message.get().len(), 32 * 1024 + 1),
            other => panic!("expected Oversize, got {other:?}"),
        }
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn empty_builder_accounts_for_the_envelope() {
        let b = BatchBuilder::new(Limits::default(), KEY.len());
        assert_eq!(b.body_bytes(), body_len(&[], KEY));
        assert!(b.is_empty());
    }

    #[test]
    fn byte_accounting_matches_the_encoded_body() {
        let mut b = BatchBuilder::new(Limits::default(), KEY.len());
        for size in [30, 31, 100, 1000, 32 * 1024] {
            b.try_push(msg(size)).unwrap();
            assert_eq!(b.body_bytes(), body_len(b.messages(), KEY));
        }
    }

    #[test]
    fn fills_to_exactly_500_000_bytes_and_no_more() {
        let limits = Limits::default();
        let mut b = BatchBuilder::new(limits, KEY.len());
        // Fill with 10,000-byte messages, then top up with one message that lands exactly on
        // the limit.
        while b.body_bytes() + 1 + 10_000 <= limits.max_batch_bytes - 100 {
            b.try_push(msg(10_000)).unwrap();
        }
        let remaining = limits.max_batch_bytes - b.body_bytes() - 1; // minus the comma
        // One byte too many is refused as Full (not Oversize: it fits an empty batch)...
        match b.try_push(msg(remaining + 1)) {
            Err(PushError::Full(m)) => assert_eq!(m.get().len(), remaining + 1),
            other => panic!("expected Full, got {other:?}"),
        }
        // ...and the exact size is accepted.
        b.try_push(msg(remaining)).unwrap();
        assert_eq!(b.body_bytes(), limits.max_batch_bytes);
        assert_eq!(body_len(b.messages(), KEY), 500_000);
        // Even the smallest message is now refused.
        assert!(matches!(b.try_push(msg(30)), Err(PushError::Full(_))));
        // take() empties it and the refused message fits again.
        let n = b.len();
        assert_eq!(b.take().len(), n);
        assert!(b.is_empty());
        assert_eq!(b.body_bytes(), body_len(&[], KEY));
        b.try_push(msg(remaining + 1)).unwrap();
    }

    #[test]
    fn count_limit_is_2500() {
        let mut b = BatchBuilder::new(Limits::default(), KEY.len());
        for _ in 0..2500 {
            b.try_push(msg(40)).unwrap();
        }
        assert!(matches!(b.try_push(msg(40)), Err(PushError::Full(_))));
        assert_eq!(b.len(), 2500);
        assert!(body_len(b.messages(), KEY) <= 500_000);
    }

    #[test]
    fn escaped_write_key_is_accounted_exactly() {
        let key = "we\"ird\\key\u{1}é";
        let mut b = BatchBuilder::for_write_key(Limits::default(), key);
        assert_eq!(b.body_bytes(), body_len(&[], key));
        b.try_push(msg(50)).unwrap();
        b.try_push(msg(60)).unwrap();
        assert_eq!(b.body_bytes(), body_len(b.messages(), key));
    }

    #[test]
    fn random_streams_keep_every_invariant() {
        use rand::Rng as _;
        let mut rng = rand::rng();
        // Small limits so the byte and count limits are both hit often.
        let limits = Limits {
            max_message_bytes: 2000,
            max_batch_bytes: 9000,
            max_batch_messages: 12,
        };
        let mut b = BatchBuilder::new(limits, KEY.len());
        let (mut pushed, mut sent, mut oversize) = (0usize, 0usize, 0usize);
        for _ in 0..3000 {
            let size = rng.random_range(23..=2100);
            pushed += 1;
            match b.try_push(msg(size)) {
                Ok(()) => {}
                Err(PushError::Oversize(m)) => {
                    assert!(m.get().len() > limits.max_message_bytes);
                    oversize += 1;
                }
                Err(PushError::Full(m)) => {
                    assert!(!b.is_empty());
                    let comma_and_size = 1 + m.get().len();
                    assert!(
                        b.len() == limits.max_batch_messages
                            || b.body_bytes() + comma_and_size > limits.max_batch_bytes
                    );
                    sent += b.take().len();
                    b.try_push(m).unwrap();
                }
            }
            assert_eq!(b.body_bytes(), body_len(b.messages(), KEY));
            assert!(b.body_bytes() <= limits.max_batch_bytes);
            assert!(b.len() <= limits.max_batch_messages);
        }
        assert_eq!(sent + b.len() + oversize, pushed);
        assert!(oversize > 0 && sent > 0);
    }

    #[test]
    fn message_that_cannot_fit_an_empty_batch_is_oversize() {
        let limits = Limits {
            max_message_bytes: 1000,
            max_batch_bytes: 200,
            max_batch_messages: 10,
        };
        let mut b = BatchBuilder::new(limits, KEY.len());
        assert!(matches!(b.try_push(msg(500)), Err(PushError::Oversize(_))));
        let zero = Limits {
            max_batch_messages: 0,
            ..Limits::default()
        };
        let mut b = BatchBuilder::new(zero, KEY.len());
        assert!(matches!(b.try_push(msg(40)), Err(PushError::Oversize(_))));
    }
}
