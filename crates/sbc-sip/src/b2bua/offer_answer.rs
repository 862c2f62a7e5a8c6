//! Per-call SDP offer/answer state (RFC 3264, RFC 6337) and the pure classifier that says
//! what an SDP body in a given message is.
//!
//! Owns: which side's offer awaits an answer, the last answer rewritten (so that an 18x
//! and the 2xx carrying the same answer go through media once), and [`classify`].
//! Must not: call media control or build messages (the B2BUA does, with what this says).

use sbc_core::media::LegSide;

use crate::message::Method;

/// Offer/answer state of one call.
#[derive(Debug, Default)]
pub(crate) struct OfferAnswer {
    /// The side whose SDP offer awaits an answer.
    pub pending: Option<LegSide>,
    /// The last answer through media: (SDP in, SDP out).
    pub last_answer: Option<(Vec<u8>, Vec<u8>)>,
    /// The session was agreed before the INVITE's 2xx (an answer in a reliable
    /// provisional, a PRACK or its 2xx, or an early UPDATE's 2xx; RFC 3262 §5, RFC 3311):
    /// SDP in that 2xx repeats it and is no new offer. Cleared by the INVITE's final.
    pub early_answer: bool,
}

impl OfferAnswer {
    /// `from` made an offer.
    pub fn offered(&mut self, from: LegSide) {
        self.pending = Some(from);
        self.last_answer = None;
    }

    /// The answer media gave for `input` before, if this is the same answer again.
    pub fn repeated_answer(&self, input: &[u8]) -> Option<&[u8]> {
        match &self.last_answer {
            Some((i, o)) if i == input => Some(o),
            _ => None,
        }
    }

    /// The exchange is complete.
    pub fn settle(&mut self) {
        self.pending = None;
    }

    /// What the SDP in `carrier` from `sender` is: [`classify`], except that SDP in the
    /// INVITE's 2xx after an early answer repeats that answer ([`SdpRole::Repeat`]).
    pub fn role(&self, sender: LegSide, carrier: Carrier<'_>) -> SdpRole {
        let invite_2xx =
            matches!(carrier, Carrier::Response(Method::Invite, c) if (200..300).contains(&c));
        if self.early_answer && self.pending.is_none() && invite_2xx {
            return SdpRole::Repeat;
        }
        classify(self.pending, sender, carrier)
    }
}

/// The message an SDP body arrived in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Carrier<'a> {
    /// A request other than ACK.
    Request(&'a Method),
    /// The ACK for a 2xx.
    Ack,
    /// A response with this status to a request with this method.
    Response(&'a Method, u16),
    /// A reliable provisional to an INVITE (RFC 3262 §5): it can answer the pending offer,
    /// and, when `relayed` reliably to the other side (who will PRACK it), also offer.
    /// One the gateway acknowledged itself can only answer: nobody could answer its offer.
    ReliableProvisional {
        /// Relayed as a reliable provisional (not acknowledged by the gateway itself).
        relayed: bool,
    },
}

/// What an SDP body is, given the call's offer/answer state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SdpRole {
    /// A new offer from the sender: through `MediaControl::offer`.
    Offer,
    /// The answer to the other side's pending offer: through `MediaControl::answer`.
    Answer,
    /// SDP where RFC 3264 allows none (no offer pending and this message cannot offer):
    /// refused in a request, fatal in an ACK, dropped from a response.
    Unexpected,
    /// A new offer while an offer is outstanding: refused 491 Request Pending.
    Glare,
    /// Not part of offer/answer: the body is dropped (a 100, or a response to a method
    /// that does not negotiate), never passed on raw.
    Ignore,
    /// The INVITE's 2xx after the session was agreed early: the answer media gave before
    /// if the SDP is that answer again, else dropped (it can be no new offer).
    Repeat,
}

/// What the SDP in `carrier`, sent by `sender`, is while `pending` is the side whose offer
/// awaits an answer.
///
/// Offers: INVITE and UPDATE requests (RFC 3311) while no offer is outstanding, a 2xx
/// to an INVITE that carried no offer (RFC 3261 §13.2.1, the late offer), a reliable
/// provisional relayed reliably to an INVITE without offer and a PRACK to a reliable
/// provisional that answered (RFC 3262 §5). Answers: what the other side sends while its
/// offer is pending, in an ACK, a PRACK, a reliable provisional, or an 18x or 2xx to
/// INVITE, UPDATE or PRACK.
pub(crate) fn classify(pending: Option<LegSide>, sender: LegSide, carrier: Carrier<'_>) -> SdpRole {
    let answers = pending == Some(sender.other());
    match carrier {
        // A new offer while one is outstanding is glare (RFC 3261 §14.1, RFC 3311 §5.2).
        Carrier::Request(Method::Invite | Method::Update) => match pending {
            Some(_) => SdpRole::Glare,
            None => SdpRole::Offer,
        },
        Carrier::Request(Method::Prack) => match pending {
            _ if answers => SdpRole::Answer,
            Some(_) => SdpRole::Glare,
            None => SdpRole::Offer,
        },
        Carrier::Request(_) => SdpRole::Unexpected,
        Carrier::ReliableProvisional { relayed } => match pending {
            _ if answers => SdpRole::Answer,
            None if relayed => SdpRole::Offer,
            _ => SdpRole::Unexpected,
        },
        Carrier::Ack => {
            if answers {
                SdpRole::Answer
            } else {
                SdpRole::Unexpected
            }
        }
        Carrier::Response(method, code) => {
            let negotiates = matches!(method, Method::Invite | Method::Update | Method::Prack);
            if !negotiates || !(180..300).contains(&code) {
                return SdpRole::Ignore;
            }
            if answers {
                SdpRole::Answer
            } else if *method == Method::Invite && (200..300).contains(&code) {
                SdpRole::Offer
            } else {
                SdpRole::Unexpected
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LegSide::{Callee, Caller};

    #[test]
    fn offers_and_answers() {
        // Initial INVITE with SDP: an offer; the callee's 183 and 200: answers.
        assert_eq!(
            classify(None, Caller, Carrier::Request(&Method::Invite)),
            SdpRole::Offer
        );
        assert_eq!(
            classify(
                Some(Caller),
                Callee,
                Carrier::Response(&Method::Invite, 183)
            ),
            SdpRole::Answer
        );
        assert_eq!(
            classify(
                Some(Caller),
                Callee,
                Carrier::Response(&Method::Invite, 200)
            ),
            SdpRole::Answer
        );
        // Late offer: INVITE without SDP, offer in the 200, answer in the ACK.
        assert_eq!(
            classify(None, Callee, Carrier::Response(&Method::Invite, 200)),
            SdpRole::Offer
        );
        assert_eq!(
            classify(Some(Callee), Caller, Carrier::Ack),
            SdpRole::Answer
        );
        // SDP in an ACK with nothing pending, in a 183 with nothing pending, in an INFO.
        assert_eq!(classify(None, Caller, Carrier::Ack), SdpRole::Unexpected);
        assert_eq!(
            classify(None, Callee, Carrier::Response(&Method::Invite, 183)),
            SdpRole::Unexpected
        );
        assert_eq!(
            classify(None, Caller, Carrier::Request(&Method::Info)),
            SdpRole::Unexpected
        );
        // Not negotiating: a 100, a 200 to BYE.
        assert_eq!(
            classify(
                Some(Caller),
                Callee,
                Carrier::Response(&Method::Invite, 100)
            ),
            SdpRole::Ignore
        );
        assert_eq!(
            classify(None, Callee, Carrier::Response(&Method::Bye, 200)),
            SdpRole::Ignore
        );
        // Glare: a re-INVITE from either side while an offer is outstanding.
        assert_eq!(
            classify(Some(Caller), Callee, Carrier::Request(&Method::Invite)),
            SdpRole::Glare
        );
        assert_eq!(
            classify(Some(Caller), Caller, Carrier::Request(&Method::Update)),
            SdpRole::Glare
        );
        // UPDATE from the callee while nothing is pending: a new offer.
        assert_eq!(
            classify(None, Callee, Carrier::Request(&Method::Update)),
            SdpRole::Offer
        );
    }

    #[test]
    fn reliable_provisionals_and_prack() {
        let reliable = Carrier::ReliableProvisional { relayed: true };
        let acked_here = Carrier::ReliableProvisional { relayed: false };
        // Offer in the INVITE, answer in a reliable 183 (relayed or acknowledged here).
        assert_eq!(classify(Some(Caller), Callee, reliable), SdpRole::Answer);
        assert_eq!(classify(Some(Caller), Callee, acked_here), SdpRole::Answer);
        // INVITE without offer: a reliable 183 offers (answer in the PRACK), unless the
        // gateway acknowledged it itself (nobody to answer).
        assert_eq!(classify(None, Callee, reliable), SdpRole::Offer);
        assert_eq!(classify(None, Callee, acked_here), SdpRole::Unexpected);
        let prack = Carrier::Request(&Method::Prack);
        assert_eq!(classify(Some(Callee), Caller, prack), SdpRole::Answer);
        // An offer in a PRACK (the 1xx answered); its answer in the PRACK's 2xx.
        assert_eq!(classify(None, Caller, prack), SdpRole::Offer);
        assert_eq!(
            classify(Some(Caller), Callee, Carrier::Response(&Method::Prack, 200)),
            SdpRole::Answer
        );
        assert_eq!(classify(Some(Caller), Caller, prack), SdpRole::Glare);
        // After an early answer the INVITE's 2xx repeats it; an UPDATE then offers anew.
        let mut oa = OfferAnswer {
            early_answer: true,
            ..OfferAnswer::default()
        };
        let ok = Carrier::Response(&Method::Invite, 200);
        assert_eq!(oa.role(Callee, ok), SdpRole::Repeat);
        assert_eq!(
            oa.role(Caller, Carrier::Request(&Method::Update)),
            SdpRole::Offer
        );
        oa.early_answer = false;
        assert_eq!(oa.role(Callee, ok), SdpRole::Offer);
    }
}
