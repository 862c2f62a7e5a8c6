//! Shared helpers for sbc-edge's integration tests and benches: test-only.
//!
//! This crate owns every helper more than one test binary (or a bench) needs: a throwaway
//! PKI ([`pki`]), temp files ([`files`]), SIP-over-TLS peers and the in-process gateway
//! ([`sip`]), RTP/SDP builders and SRTP helpers ([`media`]), one HTTP/1.1 client
//! ([`http`]), free media port ranges ([`ports`]), log capture ([`logs`]), a spawned `sbc-edge` process ([`process`]), a DNS server on loopback ([`dns`]), network namespaces with keepalived for failover tests ([`netns`]), the admin-plane fixture ([`admin`]) and the recording-tap call rig
//! ([`tap_call`]). It must never be a normal dependency of a shipped crate: it is
//! `publish = false` and taken only under `[dev-dependencies]`. Helpers local to one test
//! binary stay in that binary. A unit test inside a crate's `src/` cannot use it (it would
//! see a second copy of that crate's types).
//!
//! The root re-exports what the gateway's end-to-end tests use most (`use
//! sbc_testkit::*`): [`pki`], [`files`], [`sip`] and [`http::http`].
// Test code: a panic is the failure report, and fixtures hold sockets and TLS streams.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

pub mod admin;
pub mod dns;
pub mod files;
pub mod http;
pub mod logs;
pub mod media;
pub mod netns;
pub mod pki;
pub mod ports;
pub mod process;
pub mod redis;
pub mod sip;
pub mod srs;
pub mod tap_call;

pub use crate::http::http;
pub use files::*;
pub use pki::*;
pub use sip::*;
