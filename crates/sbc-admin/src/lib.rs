//! sbc-admin: the admin HTTP plane (health, readiness, metrics, calls, usage, recording
//! taps, audit log).
//!
//! **Not built yet.** This crate is a placeholder in the workspace layout of DESIGN.md; the
//! admin plane is the subject of its own issue. It exports nothing, and nothing in the
//! gateway claims to serve an admin API.
#![forbid(unsafe_code)]
