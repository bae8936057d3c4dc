//! Faithful in-repo fakes of the two external APIs we cannot run here, with fault injection.
//! They listen on 127.0.0.1 only.

pub mod segment_sink;
pub mod seshn_api;
