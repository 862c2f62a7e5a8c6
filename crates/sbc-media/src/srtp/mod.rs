//! SRTP and SRTCP (RFC 3711) with the AES-CM/HMAC-SHA1 suites of RFC 4568 and RFC 6188
//! and the AES-GCM suites of RFC 7714.
//!
//! Owns: profiles, key derivation, per-SSRC rollover counters and replay windows, and
//! the in-place protect/unprotect transforms. Must not: touch sockets or the clock,
//! allocate per packet, or panic on any input bytes. Keys are zeroized and never
//! printed.

mod context;
mod crypto;
mod error;
mod key;
mod profile;
mod replay;

pub use context::{
    Mki, SrtpConfig, SrtpContext, SsrcProgress, DEFAULT_MAX_SSRCS, MAX_MKI_LEN, MAX_SSRCS_LIMIT,
};
pub use error::SrtpError;
pub use key::MasterKey;
pub use profile::SrtpProfile;
pub use replay::{DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW};
