//! Bodies crossing the B2BUA: the body policy of `topology.rs` says what a body is, the
//! offer/answer classifier of `offer_answer.rs` says what its SDP means, and this drives
//! media control with it and builds the body for the other leg.
//!
//! Owns: no state of its own (the call's offer/answer state is in `calls.rs`).
//! Must not: build messages or decide what to answer (the request and response flows do,
//! from the [`BodyError`] returned).

use sbc_core::media::{CallRef, LegSide, MediaError};

use super::offer_answer::{classify, Carrier, SdpRole};
use super::B2bua;
use crate::message::SipMessage;

/// Why a body cannot cross.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Media control refused the SDP.
    Media(MediaError),
    /// SDP where offer/answer allows none.
    Unexpected,
    /// A new offer while another is outstanding.
    Glare,
}

impl BodyError {
    /// The SIP status a request carrying this body is refused with.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::Media(e) => e.sip_status(),
            BodyError::Unexpected => 488,
            BodyError::Glare => 491,
        }
    }

    /// A stable name for the `reason` label of `sbc_media_refused_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BodyError::Media(e) => e.as_str(),
            BodyError::Unexpected => "unexpected_sdp",
            BodyError::Glare => "glare",
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Media(e) => write!(f, "{e}"),
            BodyError::Unexpected => f.write_str("SDP where no offer or answer is expected"),
            BodyError::Glare => f.write_str("an offer is already outstanding"),
        }
    }
}

/// A body for the other leg: its Content-Type and bytes.
pub(crate) type Crossing = Option<(String, Vec<u8>)>;

/// True if `msg` carries an SDP body (legacy rule, replaced by the topology body policy).
fn has_sdp(msg: &SipMessage) -> bool {
    !msg.body().is_empty()
        && msg
            .header("content-type")
            .is_some_and(|c| c.trim().to_ascii_lowercase().starts_with("application/sdp"))
}

impl B2bua {
    /// The body `msg` (sent by `sender` of `call`, in `carrier`) has on the other leg.
    pub(crate) fn crossing_body(
        &mut self,
        call: CallRef,
        sender: LegSide,
        carrier: Carrier<'_>,
        msg: &SipMessage,
    ) -> Result<Crossing, BodyError> {
        if msg.body().is_empty() {
            return Ok(None);
        }
        if !has_sdp(msg) {
            let ct = msg.header("content-type").unwrap_or_default().to_string();
            return Ok(Some((ct, msg.body().to_vec())));
        }
        match self.anchor_sdp(call, sender, carrier, msg.body())? {
            Some(sdp) => Ok(Some(("application/sdp".to_string(), sdp))),
            None => Ok(None),
        }
    }

    /// Pass an SDP body through media control per its offer/answer role. `Ok(None)`: drop
    /// the SDP (not part of offer/answer).
    fn anchor_sdp(
        &mut self,
        call: CallRef,
        sender: LegSide,
        carrier: Carrier<'_>,
        sdp: &[u8],
    ) -> Result<Option<Vec<u8>>, BodyError> {
        let Some(media) = self.media.clone() else {
            return Ok(Some(sdp.to_vec()));
        };
        let Some(c) = self.calls.get(call) else {
            return Err(BodyError::Media(MediaError::UnknownCall(call)));
        };
        match classify(c.media.pending, sender, carrier) {
            SdpRole::Ignore => Ok(None),
            SdpRole::Unexpected => Err(BodyError::Unexpected),
            SdpRole::Glare => Err(BodyError::Glare),
            SdpRole::Answer => {
                if let Some(out) = c.media.repeated_answer(sdp) {
                    return Ok(Some(out.to_vec()));
                }
                let out = media.answer(call, sender, sdp).map_err(BodyError::Media)?;
                if let Some(c) = self.calls.get_mut(call) {
                    c.media.last_answer = Some((sdp.to_vec(), out.clone()));
                }
                Ok(Some(out))
            }
            SdpRole::Offer => {
                let default_policy;
                let policy = match self.media_policies.get(&c.tenant) {
                    Some(p) => p,
                    None => {
                        default_policy = sbc_core::media::MediaPolicy::default();
                        &default_policy
                    }
                };
                let out = media
                    .offer(call, &c.tenant, sender, sdp, policy)
                    .map_err(BodyError::Media)?;
                if let Some(c) = self.calls.get_mut(call) {
                    c.media.offered(sender);
                }
                Ok(Some(out))
            }
        }
    }
}
