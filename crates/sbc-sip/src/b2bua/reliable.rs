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
//! Over UDP (RFC 3262 §3): a reliable provisional relayed to a UDP caller is sent again at
//! T1, 2·T1, 4·T1 ... (doubling, no cap) until its PRACK arrives or the INVITE has its
//! final; with no PRACK after 64·T1 the caller's INVITE is answered 504 and the callee
//! leg is cancelled (the RFC's "SHOULD reject the original request with a 5xx": the same
//! steps as the maximum ringing time, so the call winds down by the paths every call
//! uses). The PRACK the gateway sends a UDP callee itself runs a non-INVITE client
//! transaction ([`ClientTransaction`]): timer E until its final, timer F gives up (the
//! callee's retransmitted provisional then triggers it again). Over TLS and TCP nothing
//! is sent again (the transport is reliable) and nothing times out.
//!
//! Owns: per call [`Reliable`] (the caller leg's RSeq space, the map of unacknowledged
//! reliable provisionals with their retransmission schedules, the last RSeq heard per
//! INVITE transaction, the PRACKs the gateway sent itself with their client transactions),
//! and the B2BUA steps that use it. Must not: decide which other headers cross
//! (`topology.rs`), anchor SDP (`body_flow.rs`), or build transaction pairs.

use std::collections::VecDeque;
use std::time::Instant;

use sbc_core::media::{CallRef, LegSide};
use tracing::{debug, info};

use super::calls::CallState;
use super::offer_answer::Carrier;
use super::pairs::Timer;
use super::responses::Refusal;
use super::topology::{has_100rel, strip_100rel};
use super::B2bua;
use crate::message::{parse_via, tag, Method, SipMessage};
use crate::transaction::{ClientTimeout, ClientTransaction, Retransmit, TxKind};
use crate::transport::Transport;

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
#[derive(Debug, Clone)]
struct Unacked {
    /// The RSeq the caller saw.
    caller_rseq: u32,
    /// The RSeq the callee sent.
    callee_rseq: u32,
    /// Over UDP: the provisional as sent, sent again until its PRACK.
    resend: Option<Resend>,
}

/// A reliable provisional sent again to a UDP caller (RFC 3262 §3).
#[derive(Debug, Clone)]
struct Resend {
    msg: SipMessage,
    schedule: Retransmit,
    /// 64·T1 after the first send: no PRACK by then, the INVITE is refused 504.
    give_up: Instant,
}

/// What came due in a call's reliable provisional timers.
#[derive(Debug, Default)]
struct Due {
    /// Messages to send again, and to which side.
    resend: Vec<(LegSide, SipMessage)>,
    /// A reliable provisional went 64·T1 without its PRACK.
    prack_timeout: bool,
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
    /// Over UDP: its client transaction (timer E sends it again until a final).
    tx: Option<ClientTransaction>,
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

    /// Earliest instant a reliable provisional or an own PRACK is to be sent again (or
    /// given up); `None` over TLS and TCP.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let resends = self
            .unacked
            .iter()
            .filter_map(|u| u.resend.as_ref())
            .map(|r| r.schedule.at().min(r.give_up));
        let pracks = self
            .own_pracks
            .iter()
            .filter_map(|p| p.tx.as_ref()?.poll_timeout());
        resends.chain(pracks).min()
    }

    /// Fire what is due at `now`.
    fn fire(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        for u in &mut self.unacked {
            let Some(r) = u.resend.as_mut() else {
                continue;
            };
            if now >= r.give_up {
                u.resend = None;
                due.prack_timeout = true;
            } else if r.schedule.due(now, None) {
                due.resend.push((LegSide::Caller, r.msg.clone()));
            }
        }
        for p in &mut self.own_pracks {
            let Some(tx) = p.tx.as_mut() else {
                continue;
            };
            if tx.handle_timeout(now) == Some(ClientTimeout::NoResponse) {
                // Timer F: the callee never answered our PRACK. Nothing to answer for it;
                // its retransmitted provisional triggers a new one.
                metrics::counter!("sbc_sip_transaction_timeouts_total", "timer" => "F")
                    .increment(1);
                debug!(rseq = p.rseq, "timer F: our PRACK was never answered");
            }
            if tx.retransmit_due(now) {
                due.resend.push((LegSide::Callee, p.msg.clone()));
            }
        }
        due
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
        now: Instant,
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
                resend: None,
            });
            count(Delivery::Reliable(caller_rseq).outcome());
            return Some(Delivery::Reliable(caller_rseq));
        }
        self.prack_here(now, call, responder, rseq, cseq);
        count(Delivery::AckedHere.outcome());
        Some(Delivery::AckedHere)
    }

    /// PRACK a reliable provisional on `side` ourselves (we are its UAC there).
    fn prack_here(
        &mut self,
        now: Instant,
        call: CallRef,
        side: LegSide,
        rseq: u32,
        invite_cseq: u32,
    ) {
        let Some(mut prack) = self.own_request(call, side, Method::Prack, None) else {
            return;
        };
        let udp = self.leg_transport(call, side) == Some(Transport::Udp);
        let tx = udp
            .then(|| ClientTransaction::new_over(TxKind::NonInvite, now, &self.cfg.timers, false));
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
                tx,
            });
        }
        self.arm_reliable(call);
        debug!(call = %call, rseq, "reliable provisional acknowledged by the gateway");
        self.send_on(call, side, prack);
    }

    /// The transport `side` of `call` speaks over.
    fn leg_transport(&self, call: CallRef, side: LegSide) -> Option<Transport> {
        let c = self.calls.get(call)?;
        Some(self.local_side(c, side).0)
    }

    /// The reliable provisional `resp` with the caller leg's `rseq` went to the caller at
    /// `now`: over UDP, keep it to send again until its PRACK (RFC 3262 §3).
    pub(super) fn reliable_sent(
        &mut self,
        now: Instant,
        call: CallRef,
        rseq: u32,
        resp: &SipMessage,
    ) {
        if self.leg_transport(call, LegSide::Caller) != Some(Transport::Udp) {
            return;
        }
        let (t1, t64) = (self.cfg.timers.t1, self.cfg.timers.t64());
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        if let Some(u) = c
            .reliable
            .unacked
            .iter_mut()
            .find(|u| u.caller_rseq == rseq)
        {
            u.resend = Some(Resend {
                msg: resp.clone(),
                schedule: Retransmit::starting(now, t1),
                give_up: now + t64,
            });
        }
        self.arm_reliable(call);
    }

    /// File the call's next reliable provisional timer (after any change to it).
    pub(super) fn arm_reliable(&mut self, call: CallRef) {
        if let Some(at) = self.calls.get(call).and_then(|c| c.reliable.poll_timeout()) {
            self.timers.push(at, Timer::Reliable(call));
        }
    }

    /// The call's reliable provisional timer: send again what is due; a provisional
    /// never PRACKed within 64·T1 refuses the INVITE 504 and cancels the callee leg.
    pub(super) fn reliable_timeout(&mut self, now: Instant, call: CallRef) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        // Several heap entries may name the same instant: only the first finds work.
        if c.reliable.poll_timeout().is_none_or(|at| at > now) {
            return;
        }
        let due = c.reliable.fire(now);
        self.arm_reliable(call);
        for (side, msg) in due.resend {
            let kind = if msg.is_request() {
                "request"
            } else {
                "response"
            };
            metrics::counter!("sbc_sip_retransmissions_total", "kind" => kind).increment(1);
            self.send_on(call, side, msg);
        }
        if due.prack_timeout {
            self.prack_timed_out(now, call);
        }
    }

    /// RFC 3262 §3: a reliable provisional went 64·T1 without its PRACK. The caller's
    /// INVITE gets 504 and the callee's is cancelled (its final then ends the call; a 2xx
    /// that crosses the CANCEL is acknowledged and hung up).
    fn prack_timed_out(&mut self, now: Instant, call: CallRef) {
        let setup = self
            .pairs
            .select(|p| p.call == call && p.initial && !p.retired && p.server.awaiting_final());
        let Some(id) = setup.into_iter().next() else {
            return;
        };
        metrics::counter!("sbc_sip_transaction_timeouts_total", "timer" => "prack").increment(1);
        info!(call = %call, "no PRACK for a reliable provisional within 64*T1: 504 and CANCEL");
        self.respond_upstream_local(now, id, 504, "Server Time-out (No PRACK)");
        if let Some(c) = self.calls.get_mut(call) {
            c.state = CallState::Abandoned;
        }
        self.cancel_downstream(now, id);
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
        // Its retransmission stops; the call's next reliable timer may have moved.
        self.arm_reliable(call);
        Ok(())
    }

    /// True if `msg` answers a PRACK the gateway sent itself: absorbed (nobody upstream
    /// asked for it). Over UDP it stops the PRACK's timer E (a provisional slows it to T2).
    pub(super) fn own_prack_answered(&mut self, now: Instant, msg: &SipMessage) -> bool {
        if msg.cseq().map(|c| c.1) != Some(Method::Prack) {
            return false;
        }
        let Some(from_tag) = msg.header("from").and_then(tag) else {
            return false;
        };
        let Some((call, _)) = self.calls.by_dialog(from_tag, msg.call_id()) else {
            return false;
        };
        let Some(branch) = msg.header("via").and_then(parse_via).and_then(|v| v.branch) else {
            return false;
        };
        let code = msg.status().unwrap_or(0);
        let timers = self.cfg.timers;
        let Some(p) = self.calls.get_mut(call).and_then(|c| {
            c.reliable
                .own_pracks
                .iter_mut()
                .find(|p| p.branch == branch)
        }) else {
            return false;
        };
        if let Some(tx) = p.tx.as_mut() {
            tx.handle_input(now, code, &timers);
            self.arm_reliable(call);
        }
        true
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
