//! Bodies crossing the B2BUA: the body policy of `topology.rs` says what a body is, the
//! offer/answer classifier of `offer_answer.rs` says what its SDP means, and this drives
//! media control with it and builds the body for the other leg. A request's body was
//! classified once already, before anything was forwarded
//! ([`super::topology::Classified`]); a response's or an ACK's is classified here.
//!
//! Owns: no state of its own (the call's offer/answer state is in `calls.rs`).
//! Must not: build messages or decide what to answer (the request and response flows do,
//! from the [`BodyError`] returned).

use sbc_core::media::{CallRef, LegSide, MediaError};

use super::calls::CallState;
use super::offer_answer::{Carrier, SdpRole};
use super::topology::{classify_body, Body, BodyRefusal};
use super::B2bua;
use crate::message::{Method, SipMessage};

/// Why a body cannot cross.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Media control refused the SDP.
    Media(MediaError),
    /// SDP where offer/answer allows none.
    Unexpected,
    /// A new offer while another is outstanding.
    Glare,
    /// The tenant's body policy does not take the body.
    Refused(BodyRefusal),
}

impl BodyError {
    /// The SIP status a request carrying this body is refused with.
    pub fn status(&self) -> u16 {
        match self {
            BodyError::Media(e) => e.sip_status(),
            BodyError::Unexpected => 488,
            BodyError::Glare => 491,
            BodyError::Refused(_) => BodyRefusal::STATUS,
        }
    }

    /// A stable name for the `reason` label of `sbc_media_refused_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            BodyError::Media(e) => e.as_str(),
            BodyError::Unexpected => "unexpected_sdp",
            BodyError::Glare => "glare",
            BodyError::Refused(r) => r.as_str(),
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Media(e) => write!(f, "{e}"),
            BodyError::Unexpected => f.write_str("SDP where no offer or answer is expected"),
            BodyError::Glare => f.write_str("an offer is already outstanding"),
            BodyError::Refused(r) => f.write_str(r.reason_phrase()),
        }
    }
}

/// Fresh boundaries tried when rebuilding a multipart: a random 16-hex-digit token
/// occurring in a part is already unlikely; three in a row means a hostile body.
const MAX_BOUNDARY_TRIES: usize = 3;

/// A body for the other leg: its Content-Type and bytes.
pub(crate) type Crossing = Option<(String, Vec<u8>)>;

impl B2bua {
    /// The body `msg` (sent by `sender` of `call`, in `carrier`) has on the other leg:
    /// classified by the tenant's body policy, then as [`B2bua::crossing`]. For a message
    /// no check classified before (a response, an ACK); a request is relayed from its
    /// [`super::topology::Classified`] body.
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
        let Some(tenant) = self.calls.get(call).map(|c| c.tenant.clone()) else {
            return Err(BodyError::Media(MediaError::UnknownCall(call)));
        };
        let policy = self.tenant_policy(&tenant);
        let body = classify_body(msg, &policy.bodies).map_err(|r| {
            metrics::counter!("sbc_sip_bodies_refused_total", "tenant" => tenant.to_string(), "reason" => r.as_str()).increment(1);
            BodyError::Refused(r)
        })?;
        self.crossing(call, sender, carrier, &body)
    }

    /// The body a classified `body` (sent by `sender` of `call`, in `carrier`) has on
    /// the other leg: its SDP (plain or a multipart part) anchored per its offer/answer
    /// role, rebuilt with a fresh boundary.
    pub(crate) fn crossing(
        &mut self,
        call: CallRef,
        sender: LegSide,
        carrier: Carrier<'_>,
        body: &Body<'_>,
    ) -> Result<Crossing, BodyError> {
        if matches!(body, Body::Empty) {
            return Ok(None);
        }
        if self.calls.get(call).is_none() {
            return Err(BodyError::Media(MediaError::UnknownCall(call)));
        }
        let new_sdp = match body.sdp() {
            Some(sdp) => match self.anchor_sdp(call, sender, carrier, sdp)? {
                Some(out) => Some(out),
                // Not part of offer/answer: the SDP is dropped, never passed on raw.
                None => return Ok(None),
            },
            None => None,
        };
        // A boundary that happens to occur in a part is retried with another token.
        for _ in 0..MAX_BOUNDARY_TRIES {
            let boundary = format!("sbc-{}", self.token());
            if let Ok(rebuilt) = body.rebuild(new_sdp.as_deref(), &boundary) {
                return Ok(rebuilt.map(|r| (r.content_type, r.body)));
            }
        }
        Err(BodyError::Refused(BodyRefusal::MalformedMultipart))
    }

    /// An offer opening more media streams than the call's cluster lease holds (a
    /// re-INVITE or UPDATE adding m-lines) grows the lease first, never waiting on
    /// Redis; past the tenant's `max_media_streams` cluster-wide it is refused as the
    /// engine's quota is (503). Without a cluster lease nothing happens here.
    fn lease_offered_streams(&mut self, call: CallRef, sdp: &[u8]) -> Result<(), BodyError> {
        let Some(c) = self.calls.get_mut(call) else {
            return Err(BodyError::Media(MediaError::UnknownCall(call)));
        };
        let limit = self
            .media_policies
            .get(&c.tenant)
            .map_or(0, |p| p.max_streams);
        let streams = sbc_core::cluster::offer_streams(sdp);
        c.admitted.grow_streams(streams, limit).map_err(|_| {
            tracing::info!(tenant = %c.tenant, streams, limit, "tenant media stream limit (cluster): offer refused");
            BodyError::Media(MediaError::TenantStreams)
        })
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
        match c.media.role(sender, carrier) {
            SdpRole::Ignore => Ok(None),
            SdpRole::Unexpected => Err(BodyError::Unexpected),
            SdpRole::Glare => Err(BodyError::Glare),
            SdpRole::Repeat => Ok(c.media.repeated_answer(sdp).map(<[u8]>::to_vec)),
            SdpRole::Answer => {
                // An answer in a reliable provisional or a PRACK exchange completes the
                // offer/answer before the 2xx (RFC 3262 §5), as does an early UPDATE's
                // 2xx (RFC 3311 §5.1, settled by the response flow).
                let completes = matches!(
                    carrier,
                    Carrier::ReliableProvisional { .. }
                        | Carrier::Request(Method::Prack)
                        | Carrier::Response(Method::Prack, _)
                );
                let early = c.state == CallState::Setup
                    && (completes || matches!(carrier, Carrier::Response(Method::Update, _)));
                let out = match c.media.repeated_answer(sdp) {
                    Some(out) => out.to_vec(),
                    None => media.answer(call, sender, sdp).map_err(BodyError::Media)?,
                };
                if let Some(c) = self.calls.get_mut(call) {
                    c.media.last_answer = Some((sdp.to_vec(), out.clone()));
                    if completes {
                        c.media.settle();
                    }
                    c.media.early_answer |= early;
                }
                Ok(Some(out))
            }
            SdpRole::Offer => {
                self.lease_offered_streams(call, sdp)?;
                let Some(c) = self.calls.get(call) else {
                    return Err(BodyError::Media(MediaError::UnknownCall(call)));
                };
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
