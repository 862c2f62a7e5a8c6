//! Reliable provisional responses (RFC 3262, `100rel`) and PRACK, relayed per leg.
//!
//! Each leg has its own RSeq space: a reliable provisional from the callee (Require:
//! 100rel, RSeq) reaches a caller that offered `100rel` (Supported or Require in its
//! INVITE) as a reliable provisional with the caller leg's own RSeq (the first random in
//! 1..2^31-1, then one more per reliable provisional of that INVITE, RFC 3262 §3); the
//! caller's PRACK (RAck: rseq cseq method) is mapped onto the callee leg (the callee's
//! RSeq, the callee leg's INVITE CSeq) and relayed in the callee leg's early dialog; its
//! 2xx goes back through the ordinary transaction pair.
//!
//! When the caller did not offer `100rel` (or more than [`MAX_UNACKED_RELIABLE`] of its
//! reliable provisionals await PRACK, or the provisional answers a re-INVITE), the gateway
//! is the UAC on the callee leg: it PRACKs the provisional itself and relays it
//! unreliably, `100rel` removed (RFC 3262 lets a B2BUA do this: each leg is its own UA
//! pair). An SDP answer in such a provisional is anchored; an SDP offer in it is dropped,
//! since nobody could answer it.
//!
//! Owns: per call [`Reliable`] (the caller leg's RSeq space, the map of unacknowledged
//! reliable provisionals, the last RSeq heard per INVITE transaction, the PRACK the gateway
//! sent itself), and the B2BUA steps that use it. Must not: decide which other headers
//! cross (`topology.rs`), anchor SDP (`body_flow.rs`), or build transaction pairs.
//!
//! Not done: the reliable provisional is sent once toward the caller (RFC 3262 §3's
//! retransmission every T1 matters on UDP only; the caller's leg is TLS or TCP), and so is
//! the gateway's own PRACK (a retransmitted provisional triggers it again).

use std::collections::VecDeque;

use sbc_core::media::{CallRef, LegSide};
use tracing::debug;

use super::offer_answer::Carrier;
use super::responses::Refusal;
use super::topology::{has_100rel, strip_100rel};
use super::B2bua;
use crate::message::{parse_via, tag, Method, SipMessage};

/// Reliable provisionals relayed to the caller and not yet PRACKed, per call. A UAS sends
/// a second reliable provisional only once the first is acknowledged (RFC 3262 §3), so a
/// well-behaved callee keeps one or two outstanding; past this the gateway PRACKs the
/// callee itself and relays unreliably, so the map stays small whatever a peer sends.
pub const MAX_UNACKED_RELIABLE: usize = 8;

/// The largest first RSeq (RFC 3262 §3: between 1 and 2^31 - 1).
const MAX_FIRST_RSEQ: u32 = (1 << 31) - 1;

/// How a provisional to an INVITE goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Not reliable: relayed as it is (and anything that is not a provisional).
    Plain,
    /// Relayed reliably with this RSeq of the caller's leg.
    Reliable(u32),
    /// The gateway PRACKed it: relayed unreliably, `100rel` removed.
    AckedHere,
    /// Claimed to be reliable without a usable RSeq: relayed unreliably, not PRACKed.
    Stripped,
}

impl Delivery {
    /// The offer/answer carrier of the provisional with this delivery.
    pub fn carrier<'a>(self, method: &'a Method, code: u16) -> Carrier<'a> {
        match self {
            Delivery::Plain | Delivery::Stripped => Carrier::Response(method, code),
            Delivery::Reliable(_) => Carrier::ReliableProvisional { relayed: true },
            Delivery::AckedHere => Carrier::ReliableProvisional { relayed: false },
        }
    }

    /// Put the delivery on the response sent upstream: RSeq, or `100rel` removed.
    pub fn stamp(self, resp: &mut SipMessage) {
        match self {
            Delivery::Plain => {}
            Delivery::Reliable(rseq) => {
                resp.set_header("RSeq", rseq.to_string());
                if !has_100rel(resp, "require") {
                    resp.push_header("Require", "100rel");
                }
            }
            Delivery::AckedHere | Delivery::Stripped => strip_100rel(resp),
        }
    }

    fn outcome(self) -> &'static str {
        match self {
            Delivery::Plain => "plain",
            Delivery::Reliable(_) => "relayed",
            Delivery::AckedHere => "acked_by_gateway",
            Delivery::Stripped => "no_rseq",
        }
    }
}

/// One reliable provisional relayed to the caller and not yet PRACKed.
#[derive(Debug, Clone, Copy)]
struct Unacked {
    /// The RSeq the caller saw.
    caller_rseq: u32,
    /// The RSeq the callee sent.
    callee_rseq: u32,
}

/// The last reliable provisional heard on a leg: for one INVITE (its CSeq on that leg),
/// the highest RSeq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heard {
    side: LegSide,
    cseq: u32,
    rseq: u32,
}

/// Reliable provisional state of one call.
#[derive(Debug, Default)]
pub(crate) struct Reliable {
    /// The caller offered `100rel` in its INVITE (Supported or Require).
    caller_supports: bool,
    /// The next RSeq of the caller's leg; drawn at the first reliable provisional.
    next_caller_rseq: Option<u32>,
    /// Relayed to the caller, awaiting its PRACK (at most [`MAX_UNACKED_RELIABLE`]).
    unacked: Vec<Unacked>,
    /// The mapped RAck of the caller's PRACK being relayed now.
    mapped_rack: Option<String>,
    /// The last reliable provisional heard (duplicates absorbed).
    heard: Option<Heard>,
    /// The initial INVITE's server transaction has its final: PRACKs get 481.
    invite_over: bool,
    /// The PRACKs the gateway sent itself, newest last, at most [`MAX_UNACKED_RELIABLE`]:
    /// their 200s are absorbed, and one is sent again when the provisional it acknowledges
    /// comes again.
    own_pracks: VecDeque<OwnPrack>,
}

/// A PRACK the gateway sent itself.
#[derive(Debug)]
struct OwnPrack {
    /// The RSeq it acknowledges.
    rseq: u32,
    /// Its Via branch (its 200 carries it).
    branch: String,
    msg: SipMessage,
}

impl Reliable {
    /// The state of a call whose INVITE is `invite`.
    pub fn new(invite: &SipMessage) -> Reliable {
        Reliable {
            caller_supports: has_100rel(invite, "supported") || has_100rel(invite, "require"),
            ..Reliable::default()
        }
    }

    /// The initial INVITE's transaction is over: nothing more can be PRACKed.
    pub fn invite_ended(&mut self) {
        self.invite_over = true;
        self.unacked.clear();
        self.mapped_rack = None;
        self.own_pracks.clear();
    }

    /// The mapped RAck for the PRACK being relayed (taken once).
    pub fn take_mapped_rack(&mut self) -> Option<String> {
        self.mapped_rack.take()
    }

    /// Reliable provisionals awaiting the caller's PRACK.
    #[cfg(test)]
    fn unacked(&self) -> usize {
        self.unacked.len()
    }
}

/// The RSeq of a reliable provisional (RFC 3262 §7.1: 1 to 2^32-1).
fn rseq_of(msg: &SipMessage) -> Option<u32> {
    msg.header("rseq")?
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
}

/// A parsed RAck (RFC 3262 §7.2: `response-num CSeq-num Method`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RAck {
    pub rseq: u32,
    pub cseq: u32,
    pub method: Method,
}

/// The RAck of a PRACK; `None` if missing or malformed.
pub(crate) fn rack_of(msg: &SipMessage) -> Option<RAck> {
    let mut it = msg.header("rack")?.split_whitespace();
    let rseq = it.next()?.parse::<u32>().ok().filter(|n| *n > 0)?;
    let cseq = it.next()?.parse::<u32>().ok()?;
    let method = Method::parse(it.next()?)?;
    if it.next().is_some() {
        return None;
    }
    Some(RAck { rseq, cseq, method })
}

impl B2bua {
    /// What the provisional `msg` to an INVITE from side `from` becomes upstream; `None`:
    /// absorbed (a reliable provisional heard before). Call after the dialog was learnt
    /// from it (the gateway's own PRACK needs the peer's tag and Contact).
    pub(super) fn provisional_delivery(
        &mut self,
        call: CallRef,
        from: LegSide,
        initial: bool,
        msg: &SipMessage,
    ) -> Option<Delivery> {
        let code = msg.status().unwrap_or(0);
        if !(101..200).contains(&code) || !has_100rel(msg, "require") {
            return Some(Delivery::Plain);
        }
        let responder = from.other();
        let Some(rseq) = rseq_of(msg) else {
            count(Delivery::Stripped.outcome());
            return Some(Delivery::Stripped);
        };
        let cseq = msg.cseq().map(|(n, _)| n).unwrap_or(0);
        let c = self.calls.get_mut(call)?;
        let r = &mut c.reliable;
        if let Some(h) = r.heard.filter(|h| h.side == responder && h.cseq == cseq) {
            if rseq <= h.rseq {
                // RFC 3262 §4: a retransmission is discarded. If the gateway PRACKed it, the
                // PRACK may have been lost: send it again.
                count("duplicate");
                let again = r
                    .own_pracks
                    .iter()
                    .find(|p| p.rseq == rseq)
                    .map(|p| p.msg.clone());
                if let Some(prack) = again {
                    self.send_on(call, responder, prack);
                }
                debug!(call = %call, rseq, "reliable provisional heard before: absorbed");
                return None;
            }
        }
        r.heard = Some(Heard {
            side: responder,
            cseq,
            rseq,
        });
        let relay = initial
            && from == LegSide::Caller
            && r.caller_supports
            && !r.invite_over
            && r.unacked.len() < MAX_UNACKED_RELIABLE;
        if relay {
            let caller_rseq = match r.next_caller_rseq {
                Some(n) => n,
                None => rand::Rng::gen_range(&mut self.rng, 1..=MAX_FIRST_RSEQ),
            };
            r.next_caller_rseq = Some(caller_rseq.wrapping_add(1).max(1));
            r.unacked.push(Unacked {
                caller_rseq,
                callee_rseq: rseq,
            });
            count(Delivery::Reliable(caller_rseq).outcome());
            return Some(Delivery::Reliable(caller_rseq));
        }
        self.prack_here(call, responder, rseq, cseq);
        count(Delivery::AckedHere.outcome());
        Some(Delivery::AckedHere)
    }

    /// PRACK a reliable provisional on `side` ourselves (we are its UAC there).
    fn prack_here(&mut self, call: CallRef, side: LegSide, rseq: u32, invite_cseq: u32) {
        let Some(mut prack) = self.own_request(call, side, Method::Prack, None) else {
            return;
        };
        prack.push_header("RAck", format!("{rseq} {invite_cseq} INVITE"));
        let branch = prack
            .header("via")
            .and_then(parse_via)
            .and_then(|v| v.branch)
            .unwrap_or_default()
            .to_string();
        if let Some(c) = self.calls.get_mut(call) {
            let own = &mut c.reliable.own_pracks;
            if own.len() >= MAX_UNACKED_RELIABLE {
                own.pop_front();
            }
            own.push_back(OwnPrack {
                rseq,
                branch,
                msg: prack.clone(),
            });
        }
        debug!(call = %call, rseq, "reliable provisional acknowledged by the gateway");
        self.send_on(call, side, prack);
    }

    /// A PRACK from `side` of `call`: map its RAck onto the other leg (kept for
    /// [`Reliable::take_mapped_rack`] when the PRACK is relayed), or the refusal.
    pub(super) fn map_prack(
        &mut self,
        call: CallRef,
        side: LegSide,
        msg: &SipMessage,
    ) -> Result<(), Refusal> {
        let rack = rack_of(msg).ok_or(Refusal::BadRAck)?;
        let Some(c) = self.calls.get_mut(call) else {
            return Err(Refusal::NoTransaction);
        };
        let early = c.state == super::calls::CallState::Setup && !c.reliable.invite_over;
        if side != LegSide::Caller || !early {
            return Err(Refusal::PrackOutsideEarlyDialog);
        }
        if rack.method != Method::Invite || rack.cseq != c.caller.invite_cseq {
            return Err(Refusal::PrackUnknownRSeq);
        }
        let r = &mut c.reliable;
        let at = r
            .unacked
            .iter()
            .position(|u| u.caller_rseq == rack.rseq)
            .ok_or(Refusal::PrackUnknownRSeq)?;
        let u = r.unacked.remove(at);
        r.mapped_rack = Some(format!("{} {} INVITE", u.callee_rseq, c.callee.invite_cseq));
        Ok(())
    }

    /// True if `msg` answers a PRACK the gateway sent itself: absorbed (nobody upstream
    /// asked for it).
    pub(super) fn own_prack_answered(&self, msg: &SipMessage) -> bool {
        if msg.cseq().map(|c| c.1) != Some(Method::Prack) {
            return false;
        }
        let Some(from_tag) = msg.header("from").and_then(tag) else {
            return false;
        };
        let Some((call, _)) = self.calls.by_dialog(from_tag, msg.call_id()) else {
            return false;
        };
        let branch = msg.header("via").and_then(parse_via).and_then(|v| v.branch);
        self.calls.get(call).is_some_and(|c| {
            c.reliable
                .own_pracks
                .iter()
                .any(|p| Some(p.branch.as_str()) == branch)
        })
    }
}

/// Count a reliable provisional's outcome.
fn count(outcome: &'static str) {
    metrics::counter!("sbc_sip_reliable_provisionals_total", "outcome" => outcome).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> SipMessage {
        SipMessage::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn prack(rack: &str) -> SipMessage {
        msg(&format!(
            "PRACK sips:sbc@x SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bKp\r\n\
             From: <sips:a@x>;tag=1\r\nTo: <sips:b@x>;tag=2\r\nCall-ID: c\r\n\
             CSeq: 2 PRACK\r\nMax-Forwards: 70\r\n{rack}\r\n"
        ))
    }

    #[test]
    fn outcomes_are_the_catalogs() {
        let mut names: Vec<&str> = [
            Delivery::Reliable(1),
            Delivery::AckedHere,
            Delivery::Stripped,
        ]
        .iter()
        .map(|d| d.outcome())
        .collect();
        names.push("duplicate");
        assert_eq!(names, sbc_core::metrics_catalog::RELIABLE_OUTCOMES);
    }

    #[test]
    fn rack_parses_and_refuses_garbage() {
        assert_eq!(
            rack_of(&prack("RAck: 776656 1 INVITE\r\n")),
            Some(RAck {
                rseq: 776_656,
                cseq: 1,
                method: Method::Invite
            })
        );
        for bad in [
            "",
            "RAck: 0 1 INVITE\r\n",
            "RAck: x 1 INVITE\r\n",
            "RAck: 5 1\r\n",
            "RAck: 5 1 INVITE extra\r\n",
            "RAck: 99999999999 1 INVITE\r\n",
        ] {
            assert_eq!(rack_of(&prack(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn delivery_stamps_rseq_or_strips_the_tag() {
        let mut resp = SipMessage::new_response(183, "Session Progress");
        resp.push_header("Require", "100rel");
        resp.push_header("Supported", "timer, 100rel");
        let mut reliable = resp.clone();
        Delivery::Reliable(42).stamp(&mut reliable);
        assert_eq!(reliable.header("rseq"), Some("42"));
        assert!(has_100rel(&reliable, "require"));
        let mut plain = resp;
        Delivery::AckedHere.stamp(&mut plain);
        assert_eq!(plain.header("rseq"), None);
        assert_eq!(plain.header("require"), None);
        assert_eq!(
            plain.header_values("supported").collect::<Vec<_>>(),
            ["timer"]
        );
        let invite = msg(
            "INVITE sips:b@x SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bKi\r\n\
             From: <sips:a@x>;tag=1\r\nTo: <sips:b@x>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
             Max-Forwards: 70\r\nk: 100rel\r\n\r\n",
        );
        let r = Reliable::new(&invite);
        assert!(r.caller_supports && r.unacked() == 0);
    }
}
