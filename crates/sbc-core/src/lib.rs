//! sbc-core: configuration and its validation, tenants and their recognition, admission
//! (token buckets and quotas), and the interfaces the protocol crates meet through. Opens
//! no sockets, reads no clock for a decision (`now` is passed in; admission times its
//! own decision for a histogram), and depends on no other sbc crate.
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod cluster;
pub mod config;
pub mod flood;
pub mod log_agg;
pub mod media;
pub mod metrics_catalog;
pub mod recording;
pub mod redact;
pub mod registry;
pub mod reload;
pub mod standby;
pub mod tap;
pub mod tenant;
pub mod time;
pub mod trunks;
