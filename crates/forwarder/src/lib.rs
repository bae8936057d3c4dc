//! The Seshn → Segment forwarder: verify each webhook, map it to Segment calls, make it durable
//! (spool) or deliver it synchronously, and send it to Segment's `/v1/batch` until accepted.

pub mod mapping;
