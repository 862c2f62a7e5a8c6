//! The call table: every call the B2BUA holds, its two legs and their dialogs.
//!
//! Owns: [`Calls`] (calls by [`CallRef`] and the index from our local tags), [`Call`]
//! (tenant, admission proof, state, offer/answer and reliable provisional state, the wait
//! for an ACK) and [`Leg`]
//! (one dialog: Call-ID, tags, parties, CSeq, remote target, route set), and the one
//! builder of in-dialog requests, [`Leg::request`].
//! Must not: decide what crosses between legs (`topology.rs`) or drive transactions
//! (`pairs.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use sbc_core::admission::Admitted;
use sbc_core::media::{CallRef, LegSide};
use sbc_core::registry::CallId as RegistryId;
use sbc_core::tenant::TenantId;

use super::offer_answer::OfferAnswer;
use super::reliable::Reliable;
use super::ConnId;
use crate::message::{parse_name_addr, parse_uri, with_tag, Method, SipMessage};
use crate::routing::{Candidate, TargetId};
use crate::transport::Transport;

/// One dialog: the caller's leg (with the tenant's platform) or the callee's leg (with
/// the tenant's route target).
#[derive(Debug)]
pub(crate) struct Leg {
    /// Call-ID on this leg.
    pub call_id: String,
    /// Our tag on this leg.
    pub local_tag: String,
    /// The peer's tag, once known.
    pub remote_tag: Option<String>,
    /// Our party (name-addr, no tag): the To of the caller's leg, the From of the callee's.
    pub local_party: String,
    /// The peer's party (name-addr, no tag).
    pub remote_party: String,
    /// Next CSeq for requests we send on this leg.
    pub next_cseq: u32,
    /// CSeq number of the last INVITE on this leg (ours towards the callee, the peer's
    /// from the caller): ACK reuses it.
    pub invite_cseq: u32,
    /// Where requests on this leg go (the peer's Contact URI).
    pub remote_target: String,
    /// Route set of this leg (RFC 3261 §12.1).
    pub route_set: Vec<String>,
    /// The caller's leg: the connection the caller uses. The callee's leg: unused (the
    /// pooled target connection).
    pub conn: Option<ConnId>,
}

/// How a request built by [`Leg::request`] leaves: our Via and hop count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop<'a> {
    /// The transport the request goes over (the Via's protocol).
    pub transport: Transport,
    /// Advertised `host:port` of the listener the leg speaks from (the Via's sent-by).
    pub advertised: &'a str,
    /// Branch of our Via (RFC 3261 §8.1.1.7).
    pub branch: &'a str,
    pub max_forwards: u32,
}

impl Leg {
    /// Take the next CSeq number for a request we send on this leg.
    pub fn take_cseq(&mut self) -> u32 {
        let n = self.next_cseq;
        self.next_cseq = n.wrapping_add(1);
        n
    }

    /// An in-dialog request on this leg (RFC 3261 §12.2.1.1): Request-URI = remote
    /// target, our Via, Max-Forwards, the route set, From/To with tags, Call-ID and
    /// `CSeq: cseq method`. The one builder for relayed requests, ACKs and the BYEs the
    /// gateway sends itself.
    pub fn request(&self, method: Method, cseq: u32, hop: Hop<'_>) -> SipMessage {
        let mut out = SipMessage::new_request(method.clone(), self.remote_target.clone());
        out.push_header(
            "Via",
            format!(
                "SIP/2.0/{} {};branch={}",
                hop.transport.via_token(),
                hop.advertised,
                hop.branch
            ),
        );
        out.push_header("Max-Forwards", hop.max_forwards.to_string());
        for r in &self.route_set {
            out.push_header("Route", r.as_str());
        }
        out.push_header("From", with_tag(&self.local_party, &self.local_tag));
        let to = match &self.remote_tag {
            Some(t) => with_tag(&self.remote_party, t),
            None => self.remote_party.clone(),
        };
        out.push_header("To", to);
        out.push_header("Call-ID", self.call_id.as_str());
        out.push_header("CSeq", format!("{cseq} {}", method.as_str()));
        out
    }
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallState {
    /// Initial INVITE in progress.
    Setup,
    /// 2xx relayed.
    Established,
    /// CANCEL, timeout or failure: waiting for the callee's final to clean up.
    Abandoned,
}

/// A 2xx we sent to an INVITE whose ACK has not come yet (RFC 3261 §13.3.1.4): it is
/// retransmitted at T1, 2·T1, ... capped at T2, and the call is ended with BYE if no ACK
/// arrives within 64·T1.
#[derive(Debug)]
pub(crate) struct AckWait {
    /// The leg the 2xx went to (the side whose ACK we wait for).
    pub side: LegSide,
    /// The 2xx, for retransmission.
    pub response: SipMessage,
    /// CSeq number of the INVITE it answers: the ACK carries it.
    pub cseq: u32,
    /// Next retransmission.
    pub next_retransmit: Instant,
    /// Current retransmission interval.
    pub interval: Duration,
    /// Give up: BYE both legs.
    pub give_up: Instant,
}

/// One call: two legs, their tenant and admission slot.
#[derive(Debug)]
pub(crate) struct Call {
    pub tenant: TenantId,
    /// The call's admission slot; released when the call is dropped.
    pub admitted: Admitted,
    pub caller: Leg,
    pub callee: Leg,
    /// The route target the callee's leg is on (the current try's, during setup).
    pub target: TargetId,
    /// How the route target is reached.
    pub target_transport: Transport,
    /// The route target's `host:port` (as the route names it), for log lines.
    pub target_addr: String,
    /// Targets still to try if the current one fails during setup, in order.
    pub candidates: VecDeque<Candidate>,
    /// When setup leaves a target for the next (the route's settings).
    pub failover: sbc_core::config::Failover,
    /// The called user part with its `@` (empty without one): the Request-URI of each try
    /// is `sips:{user}{host_port}`.
    pub request_user: String,
    /// Tries made so far (1 for the first target).
    pub tries: u32,
    pub listener: usize,
    pub state: CallState,
    /// Offer/answer state of the call's media.
    pub media: OfferAnswer,
    /// Reliable provisionals and PRACK (RFC 3262) of the initial INVITE.
    pub reliable: Reliable,
    /// The call's id in the admin plane's registry.
    pub registry_id: Option<RegistryId>,
    /// A 2xx awaiting its ACK, if any.
    pub ack_wait: Option<AckWait>,
    /// When the initial INVITE arrived (the `now` it came with), for
    /// `sbc_sip_call_setup_seconds`.
    pub invite_at: Instant,
}

impl Call {
    pub fn leg(&self, side: LegSide) -> &Leg {
        match side {
            LegSide::Caller => &self.caller,
            LegSide::Callee => &self.callee,
        }
    }

    pub fn leg_mut(&mut self, side: LegSide) -> &mut Leg {
        match side {
            LegSide::Caller => &mut self.caller,
            LegSide::Callee => &mut self.callee,
        }
    }
}

/// Every call, and the index from our local tags to (call, leg).
#[derive(Debug, Default)]
pub(crate) struct Calls {
    calls: HashMap<CallRef, Call>,
    by_tag: HashMap<String, (CallRef, LegSide)>,
    /// With replication on (hot standby): the calls touched since the last
    /// [`Calls::take_changes`] (every mutation goes through `get_mut`, `insert` or
    /// `replace_leg`, so none is missed) and the calls removed.
    changes: Option<Changes>,
}

/// Calls touched and removed since the replica last looked (`replica.rs`).
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub touched: HashSet<CallRef>,
    pub removed: Vec<CallRef>,
}

impl Calls {
    /// A fresh call number: the first of `draw`'s numbers (the core's seeded RNG) that is
    /// not 0 and not held, so call ids reveal nothing about how many calls there were.
    pub fn next_ref(&mut self, mut draw: impl FnMut() -> u64) -> CallRef {
        loop {
            let id = CallRef(draw());
            if id.0 != 0 && !self.calls.contains_key(&id) {
                return id;
            }
        }
    }

    /// Track changes from now on (replication is on).
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(Changes::default);
    }

    /// The calls touched and removed since the last call (empty when not tracking).
    pub fn take_changes(&mut self) -> Changes {
        self.changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn touch(&mut self, id: CallRef) {
        if let Some(c) = &mut self.changes {
            c.touched.insert(id);
        }
    }

    /// Hold `call` as `id` (from [`Calls::next_ref`]).
    pub fn insert(&mut self, id: CallRef, call: Call) {
        self.touch(id);
        self.by_tag
            .insert(call.caller.local_tag.clone(), (id, LegSide::Caller));
        self.by_tag
            .insert(call.callee.local_tag.clone(), (id, LegSide::Callee));
        self.calls.insert(id, call);
    }

    /// Forget a call (and its tags).
    pub fn remove(&mut self, id: CallRef) -> Option<Call> {
        let call = self.calls.remove(&id)?;
        if let Some(c) = &mut self.changes {
            c.removed.push(id);
        }
        self.by_tag.remove(&call.caller.local_tag);
        self.by_tag.remove(&call.callee.local_tag);
        Some(call)
    }

    /// Put `leg` in place of `side`'s leg of call `id` (a new try gets a fresh callee
    /// dialog), re-indexing its tag; returns the old leg.
    pub fn replace_leg(&mut self, id: CallRef, side: LegSide, leg: Leg) -> Option<Leg> {
        self.touch(id);
        let call = self.calls.get_mut(&id)?;
        let new_tag = leg.local_tag.clone();
        let old = std::mem::replace(call.leg_mut(side), leg);
        self.by_tag.remove(&old.local_tag);
        self.by_tag.insert(new_tag, (id, side));
        Some(old)
    }

    pub fn get(&self, id: CallRef) -> Option<&Call> {
        self.calls.get(&id)
    }

    pub fn get_mut(&mut self, id: CallRef) -> Option<&mut Call> {
        self.touch(id);
        self.calls.get_mut(&id)
    }

    /// The call and leg whose local tag is `to_tag` and whose Call-ID on that leg is
    /// `call_id`.
    pub fn by_dialog(&self, to_tag: &str, call_id: Option<&str>) -> Option<(CallRef, LegSide)> {
        let (id, side) = self.by_tag.get(to_tag).copied()?;
        let call = self.calls.get(&id)?;
        (Some(call.leg(side).call_id.as_str()) == call_id).then_some((id, side))
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// True if `id` is held.
    pub fn contains(&self, id: CallRef) -> bool {
        self.calls.contains_key(&id)
    }

    /// Every call held.
    pub fn iter(&self) -> impl Iterator<Item = &Call> {
        self.calls.values()
    }
}

/// The value of a From or To header with its `tag` parameter removed.
pub(crate) fn without_tag(value: &str) -> String {
    match parse_name_addr(value) {
        Some(na) => {
            let mut params = String::new();
            for p in na.params.split(';').filter(|p| !p.trim().is_empty()) {
                let name = p.split('=').next().unwrap_or("").trim();
                if !name.eq_ignore_ascii_case("tag") {
                    params.push(';');
                    params.push_str(p.trim());
                }
            }
            match na.display {
                Some(d) if !d.is_empty() => format!("{d} <{}>{params}", na.uri),
                _ => format!("<{}>{params}", na.uri),
            }
        }
        None => value.to_string(),
    }
}

/// The user part of a From value's URI (the caller's number), or empty.
pub(crate) fn from_user(from: &str) -> String {
    parse_name_addr(from)
        .and_then(|na| parse_uri(na.uri))
        .and_then(|u| u.user)
        .unwrap_or_default()
        .to_string()
}

/// The URI inside a Contact value (`<sip:x>` or bare).
pub(crate) fn contact_uri(value: &str) -> Option<String> {
    parse_name_addr(value).map(|na| na.uri.to_string())
}
