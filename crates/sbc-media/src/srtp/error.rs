//! The one error type of the SRTP engine.

use thiserror::Error;

/// Why an SRTP operation failed.
///
/// Every packet-path variant maps to a dropped packet. The relay counts it in
/// `sbc_media_packets_dropped_total{reason}` through `relay::DropReason::from_srtp`:
/// `auth_failed`, `replayed`, `invalid_packet` (too short or malformed), and `srtp_other`
/// for every other variant. [`SrtpError::reason`] is a finer bounded label (one per
/// variant) for logs and tests; no metric carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SrtpError {
    /// The SDES crypto-suite name is not one we implement.
    #[error("unknown SRTP crypto suite")]
    UnknownProfile,
    /// Master key length does not match the profile.
    #[error("master key is {got} bytes, the profile needs {expected}")]
    BadKeyLength {
        /// Bytes the profile needs.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// Master salt length does not match the profile.
    #[error("master salt is {got} bytes, the profile needs {expected}")]
    BadSaltLength {
        /// Bytes the profile needs.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// A configuration value is out of its allowed range.
    #[error("invalid SRTP configuration: {0}")]
    InvalidConfig(&'static str),
    /// The packet is shorter than its headers, MKI and tag.
    #[error("packet too short")]
    TooShort,
    /// The packet is not RTP/RTCP version 2 or its header is inconsistent.
    #[error("invalid packet: {0}")]
    InvalidPacket(&'static str),
    /// The caller's buffer has no room for the tag, MKI or SRTCP index.
    #[error("buffer too small: need {needed} bytes, have {available}")]
    BufferTooSmall {
        /// Bytes the protected packet needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The MKI in the packet is not the one configured.
    #[error("unknown MKI")]
    BadMki,
    /// The authentication tag did not verify.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// The packet index was seen before or is older than the replay window.
    #[error("replayed or too old packet")]
    Replayed,
    /// A new SSRC would exceed the context's bound on streams.
    #[error("too many SSRCs in this SRTP context")]
    TooManySsrcs,
    /// The packet index space of the master key is used up (RFC 3711 §9.2): re-key.
    #[error("SRTP key exhausted")]
    KeyExhausted,
}

impl SrtpError {
    /// Bounded label, one per variant (the drop counter uses the coarser
    /// `relay::DropReason`, see the type's docs).
    pub fn reason(&self) -> &'static str {
        match self {
            SrtpError::UnknownProfile => "unknown_profile",
            SrtpError::BadKeyLength { .. } => "bad_key_length",
            SrtpError::BadSaltLength { .. } => "bad_salt_length",
            SrtpError::InvalidConfig(_) => "invalid_config",
            SrtpError::TooShort => "too_short",
            SrtpError::InvalidPacket(_) => "invalid_packet",
            SrtpError::BufferTooSmall { .. } => "buffer_too_small",
            SrtpError::BadMki => "bad_mki",
            SrtpError::AuthenticationFailed => "auth_failed",
            SrtpError::Replayed => "replayed",
            SrtpError::TooManySsrcs => "too_many_ssrcs",
            SrtpError::KeyExhausted => "key_exhausted",
        }
    }
}
