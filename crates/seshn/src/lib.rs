//! Seshn: webhook signature verification and the webhooks management API client.

pub mod signature;
pub mod webhooks;
