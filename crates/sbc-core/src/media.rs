//! The interface between signaling and media: `sbc-sip` hands every SDP body to a
//! [`MediaControl`] and sends on what it returns; `sbc-media` implements it. SDP stays
//! opaque to `sbc-sip`. Calls are named by [`CallRef`], a number the signaling side
//! chooses; legs by [`LegSide`].
//!
//! Offer/answer (RFC 3264): `offer` takes the SDP one side sent and returns the SDP to
//! send to the other side (gateway addresses and ports, fresh keys); `answer` takes the
//! answering side's SDP and returns what to send back to the offerer. A re-INVITE or
//! UPDATE with SDP is a new offer on the same call.

use std::fmt;

use crate::tenant::TenantId;

/// A call, as the signaling side numbers it. The B2BUA draws the number at random, so it
/// reveals nothing about how many calls there were; its [`Display`](fmt::Display) form,
/// 16 hex digits, is the call's one id everywhere: every log line that names the call (SIP,
/// media, admin), the registry and so the admin API and the audit log
/// ([`crate::registry::CallId::from_call_ref`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallRef(pub u64);

impl fmt::Display for CallRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One side of a call: the caller's leg (the tenant's platform, outside) or the
/// callee's leg (the tenant's route target, inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegSide {
    Caller,
    Callee,
}

impl LegSide {
    pub fn other(self) -> LegSide {
        match self {
            LegSide::Caller => LegSide::Callee,
            LegSide::Callee => LegSide::Caller,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LegSide::Caller => "caller",
            LegSide::Callee => "callee",
        }
    }
}

/// Whether a leg's media is SRTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpMode {
    /// Only RTP/SAVP(F) with an acceptable `a=crypto`; anything else is refused (488).
    Required,
    /// SRTP when the peer offers it, plain RTP otherwise; our offers are SRTP.
    Optional,
    /// Plain RTP only (RTP/AVP); an inside PBX without SRTP.
    Plain,
}

/// Media policy for one leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegPolicy {
    pub srtp: SrtpMode,
    /// SDES suite names (`AES_256_CM_HMAC_SHA1_80`, ...) in preference order.
    pub suites: Vec<String>,
}

/// Media policy of a tenant: one per leg, and the tenant's media limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPolicy {
    pub caller: LegPolicy,
    pub callee: LegPolicy,
    /// Media streams (m-lines being relayed, both legs count once) the tenant may have
    /// at once; 0: no limit. Past it, an offer is refused 503.
    pub max_streams: u32,
    /// Media bandwidth of the tenant in kbit/s (packet bytes, both directions); 0: no
    /// limit. Past it, the tenant's packets are dropped and counted, never another's.
    pub bandwidth_kbps: u32,
    /// A recording tap started on every call of the tenant when its media is set up
    /// (`[tenants.media] record_to`): listed, counted and ended like any other tap.
    pub record: Option<crate::tap::TapSpec>,
}

impl MediaPolicy {
    pub fn leg(&self, side: LegSide) -> &LegPolicy {
        match side {
            LegSide::Caller => &self.caller,
            LegSide::Callee => &self.callee,
        }
    }
}

impl Default for MediaPolicy {
    fn default() -> Self {
        let suites = vec![
            "AES_256_CM_HMAC_SHA1_80".to_string(),
            "AES_CM_128_HMAC_SHA1_80".to_string(),
            "AEAD_AES_256_GCM".to_string(),
            "AEAD_AES_128_GCM".to_string(),
            "AES_256_CM_HMAC_SHA1_32".to_string(),
            "AES_CM_128_HMAC_SHA1_32".to_string(),
        ];
        MediaPolicy {
            caller: LegPolicy {
                srtp: SrtpMode::Required,
                suites: suites.clone(),
            },
            callee: LegPolicy {
                srtp: SrtpMode::Optional,
                suites,
            },
            max_streams: 0,
            bandwidth_kbps: 0,
            record: None,
        }
    }
}

/// Why media could not be set up; each maps to the SIP answer the signaling side gives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// No acceptable media (no allowed suite, SRTP required but not offered, ...): 488.
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// The SDP does not parse: 488 (400 would blame the whole request).
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// The port pool is exhausted: 503.
    #[error("no media ports available")]
    NoPorts,
    /// An answer or re-offer for a call the media side does not know: 500.
    #[error("unknown call {0}")]
    UnknownCall(CallRef),
    /// The tenant has its `max_media_streams` streams: 503.
    #[error("tenant media stream limit reached")]
    TenantStreams,
}

impl MediaError {
    /// The SIP status this error is answered with.
    pub fn sip_status(&self) -> u16 {
        match self {
            MediaError::NotAcceptable(_) | MediaError::Malformed(_) => 488,
            MediaError::NoPorts | MediaError::TenantStreams => 503,
            MediaError::UnknownCall(_) => 500,
        }
    }

    /// A stable name for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            MediaError::NotAcceptable(_) => "not_acceptable",
            MediaError::Malformed(_) => "malformed_sdp",
            MediaError::NoPorts => "no_ports",
            MediaError::UnknownCall(_) => "unknown_call",
            MediaError::TenantStreams => "media_streams",
        }
    }
}

/// Something the media side tells the signaling side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// No media in either direction for the configured time: end the call (BYE both legs).
    Timeout(CallRef),
}

/// Where media control pushes its events as they happen (the signaling driver turns them
/// into B2BUA inputs, so nothing polls for them).
pub type MediaEventSink = std::sync::Arc<dyn Fn(MediaEvent) + Send + Sync>;

/// What signaling needs from media. Implementations are called from the signaling core's
/// task: every method must return quickly and never block on I/O.
pub trait MediaControl: Send + Sync + fmt::Debug {
    /// `from` sent an SDP offer; returns the offer to send to the other leg.
    fn offer(
        &self,
        call: CallRef,
        tenant: &TenantId,
        from: LegSide,
        sdp: &[u8],
        policy: &MediaPolicy,
    ) -> Result<Vec<u8>, MediaError>;

    /// `from` answered the last offer; returns the answer to send to the offerer.
    fn answer(&self, call: CallRef, from: LegSide, sdp: &[u8]) -> Result<Vec<u8>, MediaError>;

    /// The call ended (or its setup failed): release its ports and state.
    fn delete(&self, call: CallRef);

    /// Events since the last call (media timeouts) that no sink took.
    fn poll_events(&self) -> Vec<MediaEvent>;

    /// Push every later event to `sink` as it happens instead of queueing it for
    /// [`MediaControl::poll_events`]. The default keeps queueing (implementations
    /// without events).
    fn set_event_sink(&self, sink: MediaEventSink) {
        let _ = sink;
    }

    /// The call's media counters per leg (`[caller, callee]`), summed over its streams;
    /// `None` when the call has no relayed media (or there is no relay).
    fn counters(&self, _call: CallRef) -> Option<[crate::registry::MediaCounters; 2]> {
        None
    }
}
