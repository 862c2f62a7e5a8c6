//! Recording taps: the interface between the admin plane and the media relay.
//!
//! A tap forks a call's clear RTP (after SRTP unprotect, before re-protect) to a recording
//! engine's UDP address, as plain RTP or as SRTP under a fresh key made for that tap alone.
//! `sbc-admin` asks for taps through [`TapControl`]; `sbc-media` implements it.
//!
//! Owns: the tap vocabulary ([`TapSpec`], [`TapInfo`], [`TapStatus`], [`TapError`]).
//! Must not: open sockets or hold key material longer than needed: a tap's key is handed
//! out once, in [`TapInfo`], as a zeroized [`TapKey`] whose `Debug` is redacted.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::media::{CallRef, LegSide};
use crate::tenant::TenantId;

/// A tap, as the media side numbers it: unpredictable, shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TapId(pub u64);

impl fmt::Display for TapId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for TapId {
    type Err = TapError;

    /// Exactly 16 hex digits, as [`TapId`]'s `Display` writes them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TapError::Invalid("tap id must be 16 hex digits"));
        }
        u64::from_str_radix(s, 16)
            .map(TapId)
            .map_err(|_| TapError::Invalid("tap id must be 16 hex digits"))
    }
}

/// Which legs' media a tap copies. The caller leg is what the caller sends (received from
/// the caller), the callee leg what the callee sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TapLegs {
    Both,
    Caller,
    Callee,
}

impl TapLegs {
    /// Whether packets received from `side` are copied.
    pub fn includes(self, side: LegSide) -> bool {
        match self {
            TapLegs::Both => true,
            TapLegs::Caller => side == LegSide::Caller,
            TapLegs::Callee => side == LegSide::Callee,
        }
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            TapLegs::Both => "both",
            TapLegs::Caller => "caller",
            TapLegs::Callee => "callee",
        }
    }
}

impl FromStr for TapLegs {
    type Err = TapError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "both" => Ok(TapLegs::Both),
            "caller" => Ok(TapLegs::Caller),
            "callee" => Ok(TapLegs::Callee),
            _ => Err(TapError::Invalid(
                "legs must be \"both\", \"caller\" or \"callee\"",
            )),
        }
    }
}

/// The SRTP suites a tap can use (SDES names, RFC 4568 / RFC 6188).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TapSuite {
    /// `AES_CM_128_HMAC_SHA1_80`: 16-byte key, 14-byte salt.
    AesCm128HmacSha1_80,
    /// `AES_256_CM_HMAC_SHA1_80`: 32-byte key, 14-byte salt.
    Aes256CmHmacSha1_80,
}

impl TapSuite {
    /// The SDES suite name.
    pub fn as_str(self) -> &'static str {
        match self {
            TapSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            TapSuite::Aes256CmHmacSha1_80 => "AES_256_CM_HMAC_SHA1_80",
        }
    }
}

impl FromStr for TapSuite {
    type Err = TapError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "AES_CM_128_HMAC_SHA1_80" => Ok(TapSuite::AesCm128HmacSha1_80),
            "AES_256_CM_HMAC_SHA1_80" => Ok(TapSuite::Aes256CmHmacSha1_80),
            _ => Err(TapError::Invalid(
                "suite must be \"AES_CM_128_HMAC_SHA1_80\" or \"AES_256_CM_HMAC_SHA1_80\"",
            )),
        }
    }
}

/// How a tap's copies travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TapTransport {
    /// Plain RTP.
    Rtp,
    /// SRTP under a key made for this tap.
    Srtp(TapSuite),
}

impl TapTransport {
    /// The API name: `rtp` or `srtp`.
    pub fn as_str(self) -> &'static str {
        match self {
            TapTransport::Rtp => "rtp",
            TapTransport::Srtp(_) => "srtp",
        }
    }

    /// The suite, for SRTP.
    pub fn suite(self) -> Option<TapSuite> {
        match self {
            TapTransport::Rtp => None,
            TapTransport::Srtp(s) => Some(s),
        }
    }
}

/// What to tap and where to send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapSpec {
    pub legs: TapLegs,
    pub transport: TapTransport,
    /// The recording engine's UDP address.
    pub destination: SocketAddr,
}

/// A tap's SRTP master key and salt in SDES inline form (`inline:` + base64 of
/// key || salt, RFC 4568 §6.1). Zeroized on drop; `Debug` shows nothing of it.
pub struct TapKey(Zeroizing<String>);

impl TapKey {
    /// Wraps the inline form (the string is moved, not copied).
    pub fn new(inline: String) -> Self {
        TapKey(Zeroizing::new(inline))
    }

    /// The inline form, for the one answer that hands it out. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TapKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TapKey(<redacted>)")
    }
}

/// A started tap: its id and, for SRTP, the key (returned once, never again).
#[derive(Debug)]
pub struct TapInfo {
    pub id: TapId,
    pub key: Option<TapKey>,
}

/// A running tap and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapStatus {
    pub id: TapId,
    pub legs: TapLegs,
    pub transport: TapTransport,
    pub destination: SocketAddr,
    /// Copies handed to the kernel.
    pub packets_sent: u64,
    /// Copies not sent: the tap socket's send buffer was full, the send failed, or the
    /// tap's SRTP transform refused. Call media is never held back for a tap.
    pub packets_dropped: u64,
    /// A recorded stream of a SIPREC session (`crate::recording`), started and stopped by
    /// the recording client, not by `start_tap` / `stop_tap`.
    pub recording: bool,
    /// A paused recorded stream: no copies leave (`a=inactive` toward the SRS).
    pub paused: bool,
}

/// Whose a tap is: for authorization of stop requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapOwner {
    pub call: CallRef,
    pub tenant: TenantId,
}

/// Why a tap could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TapError {
    /// The media side has no such call (never had media, or it ended).
    #[error("unknown call {0}")]
    UnknownCall(CallRef),
    /// The call has no media flowing yet (its offer is not answered).
    #[error("call {0} has no media yet")]
    NoMedia(CallRef),
    /// The call, or the gateway, has as many taps as allowed.
    #[error("too many taps (at most {max})")]
    TooMany { max: usize },
    /// A request value is not acceptable.
    #[error("{0}")]
    Invalid(&'static str),
    /// No socket or no randomness for the tap.
    #[error("tap unavailable: {0}")]
    Unavailable(String),
}

/// What the admin plane needs from media. Every method returns quickly and never blocks
/// on I/O (the control side only updates state and tells a worker).
pub trait TapControl: Send + Sync + fmt::Debug {
    /// Starts copying `call`'s media per `spec`.
    fn start_tap(&self, call: CallRef, spec: TapSpec) -> Result<TapInfo, TapError>;

    /// Stops a tap; false if there was none.
    fn stop_tap(&self, tap: TapId) -> bool;

    /// The call's taps and their counters (empty for an unknown call).
    fn list_taps(&self, call: CallRef) -> Vec<TapStatus>;

    /// The call and tenant a tap belongs to.
    fn tap_owner(&self, tap: TapId) -> Option<TapOwner>;

    /// Starts a node-local tap: its destination is a socket of this node's own (the
    /// WebSocket tap's loopback readers), meaningful only while this node serves the call.
    /// It is never replicated to a hot standby (issue #16): on the standby that loopback
    /// address is whatever listens there, and clear media must not go to it. The client
    /// reconnects to the new owner instead. Default: an ordinary tap (an implementation
    /// that replicates nothing has nothing to leave out).
    fn start_local_tap(&self, call: CallRef, spec: TapSpec) -> Result<TapInfo, TapError> {
        self.start_tap(call, spec)
    }

    /// The call's first audio codec as the first offer named it: encoding name and RTP
    /// clock rate (`("PCMU", 8000)`); `None` when unknown (no such call, no rtpmap).
    fn media_format(&self, call: CallRef) -> Option<(String, u32)> {
        let _ = call;
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for l in [TapLegs::Both, TapLegs::Caller, TapLegs::Callee] {
            assert_eq!(l.as_str().parse::<TapLegs>().unwrap(), l);
        }
        for s in [TapSuite::AesCm128HmacSha1_80, TapSuite::Aes256CmHmacSha1_80] {
            assert_eq!(s.as_str().parse::<TapSuite>().unwrap(), s);
        }
        assert!("AEAD_AES_128_GCM".parse::<TapSuite>().is_err());
        assert!("all".parse::<TapLegs>().is_err());
        assert!(TapLegs::Caller.includes(LegSide::Caller));
        assert!(!TapLegs::Caller.includes(LegSide::Callee));
        assert!(TapLegs::Both.includes(LegSide::Callee));
    }

    #[test]
    fn ids_and_redaction() {
        let id = TapId(0x00ab_cdef_0123_4567);
        assert_eq!(id.to_string(), "00abcdef01234567");
        assert_eq!("00abcdef01234567".parse::<TapId>().unwrap(), id);
        assert!("abc".parse::<TapId>().is_err());
        assert!("+0abcdef01234567".parse::<TapId>().is_err());
        let k = TapKey::new("inline:c2VjcmV0c2VjcmV0".to_string());
        assert_eq!(format!("{k:?}"), "TapKey(<redacted>)");
        let info = TapInfo { id, key: Some(k) };
        assert!(!format!("{info:?}").contains("c2Vj"));
    }
}
