//! Failover during setup, and trunk pings.
//!
//! A call tries its route's candidates in order (see [`crate::routing`]). The try in
//! progress fails when its INVITE cannot be sent or its connection is lost (transport),
//! when nothing at all (not even 100) is heard within the route's `try_timeout` while
//! another candidate is left (timeout), or when its final is in the route's `failover_on`
//! (response). Then [`B2bua::fail_over`] retires the try and sends the INVITE to the next
//! candidate: a new client transaction with a fresh callee dialog (Call-ID, tag) and the
//! same body (the offer media already rewrote), while the caller's server transaction
//! moves to the new try. The caller sees provisionals of any try with the same To tag (the
//! caller's leg is ours), and only the last try's final, or 503 / 408 when the last one
//! fails by transport or timeout.
//!
//! A retired try only winds down, with no way to reach the caller: CANCEL once it has
//! heard a provisional (RFC 3261 §9.1), the transaction's ACK for its non-2xx, ACK and BYE
//! for a 2xx that raced the failover. Its early dialog (an 18x with a To tag) died with it:
//! the call's callee leg is new.
//!
//! A 503 with Retry-After to an initial INVITE quarantines its target for new calls
//! (`crate::health`); OPTIONS pings leave from here through the same outbound path as
//! calls, and their answers and failed sends are handed to `crate::health`.
//!
//! Owns: no state of its own (a call's candidates are in `calls.rs`, a try's in
//! `pairs.rs`, targets' health in `crate::health`). Must not: relay anything of a retired
//! try upstream, or leave a try without a way to end (every one ends by its timers).

use std::time::{Duration, Instant};

use sbc_core::media::LegSide;
use tracing::{debug, info};

use super::calls::{CallState, Hop, Leg};
use super::pairs::{hang_up_2xx, Pair, PairId};
use super::{B2bua, ConnId, ConnKind, Dest};
use crate::message::{parse_via, Method, SipMessage};
use crate::routing::TargetId;
use crate::transaction::{ClientState, ClientTransaction, ServerTransaction, TxKind};

/// Why a try failed: the `reason` label of `sbc_sip_failovers_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryFailure {
    /// A final in the route's `failover_on`.
    Response,
    /// Nothing heard within the try timeout.
    Timeout,
    /// The INVITE could not be sent, or the connection went before an answer.
    Transport,
}

impl TryFailure {
    /// Every label value, for the metrics catalog.
    #[cfg(test)]
    pub const ALL: [TryFailure; 3] = [
        TryFailure::Response,
        TryFailure::Timeout,
        TryFailure::Transport,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TryFailure::Response => "response",
            TryFailure::Timeout => "timeout",
            TryFailure::Transport => "transport",
        }
    }
}

/// What moves from a retired try to the next: the caller's INVITE transaction and what
/// the next INVITE is built from.
#[derive(Debug)]
struct MovingServer {
    server: ServerTransaction,
    server_req: SipMessage,
    server_conn: ConnId,
    server_key: super::pairs::ServerKey,
    last_response: Option<SipMessage>,
    /// The anchored offer the first try carried, if any.
    content_type: Option<String>,
    body: Vec<u8>,
    max_forwards: u32,
}

/// The seconds of a Retry-After value (`120`, `120;duration=60`, `120 (comment)`).
fn retry_after(msg: &SipMessage) -> Option<Duration> {
    let v = msg.header("retry-after")?.trim();
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

impl B2bua {
    /// Where a pair's client request (and its CANCEL and ACK) goes: the target it was sent
    /// to, or the leg's peer for requests towards the caller.
    pub(super) fn client_dest(&self, id: PairId) -> Option<Dest> {
        self.pairs.get(id).map(|p| p.client_dest)
    }

    /// A final to the initial INVITE of pair `id`: quarantine its target on a 503 with
    /// Retry-After, and fail over if the route says so. True if the call moved on (the
    /// final goes no further).
    pub(super) fn final_fails_over(&mut self, now: Instant, id: PairId, msg: &SipMessage) -> bool {
        let Some(code) = msg.status() else {
            return false;
        };
        let Some(pair) = self.pairs.get(id) else {
            return false;
        };
        if code == 503 {
            if let (Some(t), Some(d)) = (pair.target(), retry_after(msg)) {
                self.health.quarantine(t, d, now);
            }
        }
        let listed = self
            .calls
            .get(pair.call)
            .is_some_and(|c| c.failover.on.contains(&code));
        listed && self.fail_over(now, id, TryFailure::Response)
    }

    /// Leave the try of pair `id` for the call's next candidate. False (nothing done) when
    /// it is not a setup try that can move: not the initial INVITE, already answered
    /// upstream, cancelled, or no candidate left.
    pub(super) fn fail_over(&mut self, now: Instant, id: PairId, why: TryFailure) -> bool {
        let Some(pair) = self.pairs.get(id) else {
            return false;
        };
        let call = pair.call;
        let movable = !pair.retired
            && pair.initial
            && pair.method == Method::Invite
            && !pair.cancel_pending
            && pair.server.awaiting_final();
        let Some(c) = self.calls.get_mut(call) else {
            return false;
        };
        if !movable || c.state != CallState::Setup {
            return false;
        }
        let Some(next) = c.candidates.pop_front() else {
            return false;
        };
        let (old_target, tenant, tries) = (c.target_addr.clone(), c.tenant.to_string(), c.tries);
        let try_deadline = (!c.candidates.is_empty()).then(|| now + c.failover.try_timeout);
        let Some(moving) = self.retire(now, id, why) else {
            return false;
        };
        metrics::counter!("sbc_sip_failovers_total", "tenant" => tenant.clone(), "reason" => why.as_str()).increment(1);
        info!(
            event = "call_failover",
            call = %call,
            tenant,
            reason = why.as_str(),
            next_try = tries + 1,
            from_target = %old_target,
            to_target = %next.host_port,
            "route target failed during setup: trying the next"
        );
        self.start_try(now, call, &next, try_deadline, moving);
        true
    }

    /// Retire the try of pair `id`: its caller-side transaction (and what the next try
    /// needs of it) is handed back; its client side winds down (aborted on a transport
    /// failure, where nothing more can come).
    fn retire(&mut self, now: Instant, id: PairId, why: TryFailure) -> Option<MovingServer> {
        let old = self.pairs.get_mut(id)?;
        old.retired = true;
        old.try_deadline = None;
        let moving = MovingServer {
            server: std::mem::replace(&mut old.server, ServerTransaction::none(TxKind::Invite)),
            server_req: old.server_req.clone(),
            server_conn: old.server_conn,
            server_key: old.server_key.clone(),
            last_response: old.last_response.take(),
            content_type: old.client_req.header("content-type").map(str::to_string),
            body: old.client_req.body().to_vec(),
            max_forwards: old
                .client_req
                .max_forwards()
                .unwrap_or(self.cfg.max_forwards),
        };
        if why == TryFailure::Transport {
            old.client.abort();
        }
        self.wind_down(now, id);
        Some(moving)
    }

    /// The next try of `call`: a fresh callee dialog towards `next`, the INVITE built
    /// from the caller's (headers through the tenant's policy, the offer media already
    /// rewrote), its client transaction paired with the caller's transaction.
    fn start_try(
        &mut self,
        now: Instant,
        call: super::CallRef,
        next: &crate::routing::Candidate,
        try_deadline: Option<Instant>,
        moving: MovingServer,
    ) {
        let Some(leg) = self.fresh_callee_leg(call, next) else {
            return;
        };
        let new_call_id = leg.call_id.clone();
        self.calls.replace_leg(call, LegSide::Callee, leg);
        let branch = self.branch();
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        c.target = next.target;
        c.target_transport = next.transport;
        c.target_addr = next.host_port.clone();
        c.tries += 1;
        // An answer of the failed try (in an 18x) is not the new try's.
        c.media.last_answer = None;
        if let (Some(r), Some(rid)) = (&self.registry, &c.registry_id) {
            r.add_outbound_leg(rid, new_call_id);
        }
        let tenant = c.tenant.clone();
        let policy = self.tenant_policy(&tenant);
        let Some(c) = self.calls.get(call) else {
            return;
        };
        // The leg speaks the next target's transport, from a listener of it.
        let (transport, advertised) = self.via_of(c, LegSide::Callee);
        let contact = self.contact_on(c, LegSide::Callee);
        let hop = Hop {
            transport,
            advertised: &advertised,
            branch: &branch,
            max_forwards: moving.max_forwards,
        };
        let mut out = c.callee.request(Method::Invite, 1, hop);
        policy
            .headers
            .copy_across(&moving.server_req, &mut out, LegSide::Callee);
        out.push_header("Contact", contact);
        if let (Some(ct), false) = (moving.content_type, moving.body.is_empty()) {
            out.push_header("Content-Type", ct);
            out.set_body(moving.body);
        }
        // RFC 3261 §18.1.1: too large for a UDP target goes over TCP, unretransmitted.
        let reliable = crate::transport::apply_size_rule(&mut out)
            .is_none_or(crate::transport::Transport::is_reliable);
        let pair = Pair {
            call,
            from: LegSide::Caller,
            method: Method::Invite,
            server_req: moving.server_req,
            server_conn: moving.server_conn,
            server_key: moving.server_key,
            server: moving.server,
            client: ClientTransaction::new_over(TxKind::Invite, now, &self.cfg.timers, reliable),
            client_req: out.clone(),
            client_branch: branch,
            client_dest: Dest::Target(next.target),
            initial: true,
            cancel_pending: false,
            last_response: moving.last_response,
            try_deadline,
            retired: false,
        };
        let id = self.pairs.insert(pair);
        self.arm_pair(id);
        self.send(Dest::Target(next.target), out);
    }

    /// A fresh callee leg of `call` towards `next` (new Call-ID and tag, no remote tag, no
    /// route set), the parties of the old one.
    fn fresh_callee_leg(
        &mut self,
        call: super::CallRef,
        next: &crate::routing::Candidate,
    ) -> Option<Leg> {
        let call_id = format!("{}{}", self.token(), self.token());
        let local_tag = self.token();
        let c = self.calls.get(call)?;
        Some(Leg {
            call_id,
            local_tag,
            remote_tag: None,
            local_party: c.callee.local_party.clone(),
            remote_party: c.callee.remote_party.clone(),
            next_cseq: 2,
            invite_cseq: 1,
            remote_target: next.request_uri(&c.request_user),
            route_set: Vec::new(),
            conn: None,
        })
    }

    /// Let a retired try end: CANCEL it now if it heard a provisional and has no final,
    /// else once a provisional comes; its timers end it if nothing does.
    fn wind_down(&mut self, now: Instant, id: PairId) {
        let Some(pair) = self.pairs.get_mut(id) else {
            return;
        };
        if pair.client.state() == ClientState::Proceeding {
            self.cancel_downstream(now, id);
        } else if pair.client.state() == ClientState::Calling {
            pair.cancel_pending = true;
        }
        self.arm_pair(id);
        self.pairs.remove_if_finished(id);
    }

    /// A response (other than a non-2xx final, which its transaction ACKs) to a retired
    /// try: the pending CANCEL once a provisional came, ACK and BYE for a 2xx.
    pub(super) fn on_retired_response(&mut self, now: Instant, id: PairId, msg: &SipMessage) {
        let Some(code) = msg.status() else {
            return;
        };
        let Some(pair) = self.pairs.get(id) else {
            return;
        };
        if (101..200).contains(&code) && pair.cancel_pending {
            self.cancel_downstream(now, id);
        } else if (200..300).contains(&code) {
            let (ack_branch, bye_branch) = (self.branch(), self.branch());
            let Some(pair) = self.pairs.get(id) else {
                return;
            };
            let msgs = hang_up_2xx(
                &pair.client_req,
                msg,
                (&ack_branch, &bye_branch),
                self.cfg.max_forwards,
            );
            let call = pair.call;
            debug!(call = %call, "2xx to a try the call left: ACK and BYE sent");
            if let Some(dest) = self.client_dest(id) {
                for m in msgs {
                    self.send(dest, m);
                }
            }
        }
    }

    /// The connection to `target` closed: setup tries on it that have no final yet move
    /// to their next candidate (nothing can come back on it); retired tries on it end.
    pub(super) fn target_lost(&mut self, now: Instant, target: TargetId) {
        let tries = self.pairs.select(|p| {
            p.target() == Some(target)
                && p.initial
                && matches!(
                    p.client.state(),
                    ClientState::Calling | ClientState::Proceeding
                )
        });
        for id in tries {
            let retired = self.pairs.get(id).is_some_and(|p| p.retired);
            if retired {
                if let Some(p) = self.pairs.get_mut(id) {
                    p.client.abort();
                }
                self.pairs.remove_if_finished(id);
            } else {
                self.fail_over(now, id, TryFailure::Transport);
            }
        }
    }

    /// Send the OPTIONS pings that are due, through the pooled connection of each target,
    /// and over UDP the copies of those in flight that timer E asks for.
    pub(super) fn ping_targets(&mut self, now: Instant) {
        let due = self.health.due(now);
        for (target, m) in self.health.retransmissions(now) {
            metrics::counter!("sbc_sip_retransmissions_total", "kind" => "request").increment(1);
            self.send(Dest::Target(target), m);
        }
        for target in due {
            let candidate = self
                .routes
                .iter()
                .flat_map(|(_, r)| r.targets.iter())
                .find(|t| t.target == target)
                .map(|t| crate::routing::Candidate {
                    target,
                    host_port: t.host_port.clone(),
                    transport: t.transport,
                });
            let Some(candidate) = candidate else {
                continue;
            };
            let (branch, m) = self.options_to(&candidate);
            let reliable = candidate.transport.is_reliable();
            let tx =
                ClientTransaction::new_over(TxKind::NonInvite, now, &self.cfg.timers, reliable);
            self.health.sent(target, branch, m.clone(), tx, now);
            self.send(Dest::Target(target), m);
        }
    }

    /// An OPTIONS to `candidate` (a health ping, or the re-dial of a restored call's
    /// target): its branch and the request.
    pub(super) fn options_to(
        &mut self,
        candidate: &crate::routing::Candidate,
    ) -> (String, SipMessage) {
        let (branch, tag) = (self.branch(), self.token());
        let call_id = format!("{}{}", self.token(), self.token());
        // Sent from a listener of the target's transport (a UDP target answers there).
        let listener = self.listener_for(candidate.transport, 0);
        let advertised = self.advertised(listener).to_string();
        let uri = candidate.request_uri("");
        let mut m = SipMessage::new_request(Method::Options, uri.clone());
        m.push_header(
            "Via",
            format!(
                "SIP/2.0/{} {advertised};branch={branch}",
                candidate.transport.via_token()
            ),
        );
        m.push_header("Max-Forwards", "70");
        m.push_header("From", format!("{};tag={tag}", self.contact_of(listener)));
        m.push_header("To", format!("<{uri}>"));
        m.push_header("Call-ID", call_id);
        m.push_header("CSeq", "1 OPTIONS");
        (branch, m)
    }

    /// The answer to one of our pings: true if it was one (handed to health). Only the
    /// pinged target's connection may answer it.
    pub(super) fn ping_answered(&mut self, now: Instant, conn: ConnId, msg: &SipMessage) -> bool {
        let Some(branch) = msg.header("via").and_then(parse_via).and_then(|v| v.branch) else {
            return false;
        };
        let Some(target) = self.health.target_of(branch) else {
            return false;
        };
        let from_target = matches!(
            self.conns.get(&conn).map(|c| &c.kind),
            Some(ConnKind::Outbound { target: t }) if *t == target
        );
        if from_target && msg.cseq().map(|c| c.1) == Some(Method::Options) {
            let branch = branch.to_string();
            let timers = self.cfg.timers;
            self.health
                .on_response(&branch, msg.status().unwrap_or(0), now, &timers);
        }
        true
    }

    /// A ping that could not be sent: true if `msg` was one (handed to health).
    pub(super) fn ping_failed(&mut self, now: Instant, msg: &SipMessage) -> bool {
        if msg.method() != Some(&Method::Options) {
            return false;
        }
        let Some(branch) = msg.header("via").and_then(parse_via).and_then(|v| v.branch) else {
            return false;
        };
        if self.health.target_of(branch).is_none() {
            return false;
        }
        let branch = branch.to_string();
        self.health.on_send_failed(&branch, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_reasons_match_the_metrics_catalog() {
        let names: Vec<&str> = TryFailure::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, sbc_core::metrics_catalog::FAILOVER_REASONS);
    }

    #[test]
    fn retry_after_takes_the_leading_seconds() {
        let mut m = SipMessage::new_response(503, "Service Unavailable");
        assert_eq!(retry_after(&m), None);
        m.push_header("Retry-After", "120;duration=60");
        assert_eq!(retry_after(&m), Some(Duration::from_secs(120)));
        let mut m = SipMessage::new_response(503, "Service Unavailable");
        m.push_header("Retry-After", "junk");
        assert_eq!(retry_after(&m), None);
    }
}
