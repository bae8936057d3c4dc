//! Segment message model, size-aware batcher and HTTP client with retries.
//!
//! - [`BatchBuilder`] packs already-serialised messages ([`RawMessage`]) into batches that stay
//!   within Segment's limits ([`Limits`]: 32 KB per message, 500 KB per request, 2,500 messages),
//!   counting the bytes of the final body exactly.
//! - [`Client`] makes one delivery attempt to a [`Destination`] (Segment-compatible `/v1/batch`,
//!   a JSON-lines file, or stdout) and classifies the answer ([`SendError`]).
//! - [`validate_message`] applies the per-message checks Segment makes after answering 200.
//! - [`send_with_retries`] retries with [`RetryPolicy`] backoff until accepted, rejected or a
//!   deadline; [`send_with_retries_observed`] also reports every attempt (e.g. for a
//!   "delivery blocked" gauge).

mod batch;
mod client;
mod destination;
mod message;
mod retry;
mod time;

pub use batch::{BatchBuilder, Limits, PushError, RawMessage};
pub use client::{
    Client, ClientConfig, ClientError, DEFAULT_USER_AGENT, MAX_RETRY_AFTER, SendError, classify,
    install_crypto_provider, parse_retry_after,
};
pub use destination::{Destination, DestinationError};
pub use message::{InvalidMessage, MAX_MESSAGE_ID_CHARS, validate_message};
pub use retry::{DeliveryError, RetryPolicy, send_with_retries, send_with_retries_observed};
pub use time::{RFC3339_MILLIS_LEN, rfc3339_millis};
