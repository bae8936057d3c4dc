//! The Seshn → Segment forwarder: verify each webhook, map it to Segment calls, make it durable
//! (spool) or deliver it synchronously, and send it to Segment's `/v1/batch` until accepted.
//!
//! - [`http`]: the axum front (`/api/webhooks/seshn`, `/hooks/{token}`, health, metrics).
//! - [`mapping`]: the pure, table-driven Seshn → Segment mapping (profiles `seed`, `spec`).
//! - [`spool`]: the durable redb spool with group commit.
//! - [`sender`]: drains the spool to Segment.
//! - [`split`]: isolates the messages Segment refuses (shared by both modes).
//! - [`synchronous`]: the stateless mode.
//! - [`app`] / [`config`]: wiring and the command line.

pub mod app;
pub mod config;
pub mod http;
pub mod mapping;
pub mod metrics;
pub mod sender;
pub mod split;
pub mod spool;
pub mod synchronous;
