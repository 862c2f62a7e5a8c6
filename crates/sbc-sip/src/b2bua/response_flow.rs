//! What a response does: find its transaction pair, learn the downstream dialog, relay
//! it upstream (headers through `topology.rs`, SDP through media), start the wait for the
//! ACK of a 2xx, and end calls that failed; plus what the pairs' timers, failed sends and
//! closed connections do.
//!
//! Owns: no state of its own. Must not: accept a response from a connection that does not
//! serve the leg it claims (tenant isolation), or pass on SDP that media did not take.

use std::time::Instant;

use sbc_core::media::{CallRef, LegSide};
use sbc_core::registry::CallState as RegistryState;
use tracing::{debug, info, warn};

use super::calls::{contact_uri, CallState, Hop, Leg};
use super::failover::TryFailure;
use super::pairs::PairId;
use super::reliable::Delivery;
use super::request_flow::set_body;
use super::responses::status_class;
use super::{B2bua, ConnId};
use crate::message::{default_reason, response_to, tag, Method, SipMessage};
use crate::routing::TargetId;
use crate::transaction::{ClientDisposition, ClientTimeout, ServerState};

/// A response the client transaction of pair `id` took, with what the flow needs of the
/// pair (copied out, so the flow can borrow the core mutably).
#[derive(Debug)]
struct Received {
    id: PairId,
    code: u16,
    call: CallRef,
    /// The leg the request came from (the response goes there).
    from: LegSide,
    method: Method,
    initial: bool,
    cancel_pending: bool,
}

impl Received {
    fn is_2xx(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

impl B2bua {
    pub(super) fn on_response(&mut self, now: Instant, conn: ConnId, msg: SipMessage) {
        let Some(code) = msg.status() else { return };
        if self.ping_answered(now, conn, &msg)
            || self.redial_answered(&msg)
            || self.own_prack_answered(now, &msg)
            || self.on_srs_response(now, conn, &msg)
        {
            return;
        }
        let Some(id) = self.match_response(conn, &msg, code) else {
            return;
        };
        let Some(pair) = self.pairs.get_mut(id) else {
            return;
        };
        // Something was heard: the try's own timers apply from now on.
        pair.try_deadline = None;
        let retired = pair.retired;
        let disposition = pair.client.handle_input(now, code, &self.cfg.timers);
        let r = Received {
            id,
            code,
            call: pair.call,
            from: pair.from,
            method: pair.method.clone(),
            initial: pair.initial,
            cancel_pending: pair.cancel_pending,
        };
        self.arm_pair(id);
        match disposition {
            ClientDisposition::Absorb => {}
            ClientDisposition::AckAgain => {
                // A retransmitted non-2xx final over UDP: our ACK was lost; send it again.
                let max_forwards = self.cfg.max_forwards;
                if let Some((dest, ack)) = self
                    .pairs
                    .get(id)
                    .map(|p| (p.client_dest, p.ack_non_2xx(&msg, max_forwards)))
                {
                    self.send(dest, ack);
                }
            }
            ClientDisposition::PassAndAck => {
                let max_forwards = self.cfg.max_forwards;
                let ack = self
                    .pairs
                    .get(id)
                    .map(|p| p.ack_non_2xx(&msg, max_forwards));
                if let (Some(ack), Some(dest)) = (ack, self.client_dest(id)) {
                    self.send(dest, ack);
                }
                if !retired {
                    self.on_passed_response(now, &r, &msg);
                }
            }
            ClientDisposition::Pass if retired => self.on_retired_response(now, id, &msg),
            ClientDisposition::Pass => self.on_passed_response(now, &r, &msg),
        }
        self.pairs.remove_if_finished(id);
    }

    /// The pair a response belongs to: by our Via branch, for the method it answers, from
    /// a connection that serves the leg it claims. `None`: dropped (counted when stray).
    fn match_response(&self, conn: ConnId, msg: &SipMessage, code: u16) -> Option<PairId> {
        let Some(id) = self.pairs.by_client_via(msg) else {
            metrics::counter!("sbc_sip_messages_rejected_total", "reason" => "stray_response")
                .increment(1);
            debug!(code, "response matching no transaction dropped");
            return None;
        };
        let pair = self.pairs.get(id)?;
        // A request sent to a route target is answered from there (a retired try's target
        // may no longer be the call's), and so is one whose call has ended (over UDP its
        // client transaction still absorbs retransmitted finals); towards the caller, by
        // a connection serving the caller's leg.
        let right_conn = match (pair.target(), self.calls.get(pair.call)) {
            (None, Some(c)) => self.conn_serves(conn, c, pair.from.other()),
            _ => self.conn_reaches(conn, pair.client_dest),
        };
        if msg.cseq().map(|c| c.1).as_ref() != Some(&pair.method) || !right_conn {
            // The 200 for our CANCEL carries the INVITE's branch; it is not the INVITE's
            // answer. Responses from the wrong peer are dropped too.
            debug!(
                code,
                "response not for this transaction's request: absorbed"
            );
            return None;
        }
        Some(id)
    }

    /// A response the client transaction passed up.
    fn on_passed_response(&mut self, now: Instant, r: &Received, msg: &SipMessage) {
        if r.initial && r.method == Method::Invite && r.code >= 300 {
            // A final in the route's `failover_on` sends the call to its next target
            // instead of the caller (already ACKed by the transaction).
            if self.final_fails_over(now, r.id, msg) {
                return;
            }
        }
        let to_side = r.from.other();
        let relayed_2xx = self
            .pairs
            .get(r.id)
            .is_some_and(|p| p.server.state() == ServerState::Accepted);
        if r.method == Method::Invite && relayed_2xx {
            // A 2xx after we relayed one (RFC 6026 §8.4 passes them up): the callee
            // retransmitting while the ACK is on its way is absorbed (our own 2xx
            // retransmission and ACK wait cover the caller's side); a 2xx of another
            // dialog (a fork) is acknowledged and hung up, the call goes on.
            let known = self
                .calls
                .get(r.call)
                .and_then(|c| c.leg(to_side).remote_tag.clone());
            if msg.header("to").and_then(tag) != known.as_deref() {
                self.ack_and_bye_other_dialog(r.call, to_side, msg);
            }
            return;
        }
        if r.method == Method::Invite && r.code > 100 {
            self.learn_dialog(r.call, to_side, msg, r.initial);
        }
        if r.code < 200 && r.code > 100 && r.cancel_pending {
            self.cancel_downstream(now, r.id);
        }
        let upstream_answered = self
            .pairs
            .get(r.id)
            .is_some_and(|p| !p.server.awaiting_final());
        if r.method == Method::Invite && upstream_answered {
            // Upstream already has its answer (cancelled or timed out): a late 2xx is
            // acknowledged and hung up (RFC 3261 §15), anything else is only absorbed.
            if r.is_2xx() {
                self.ack_and_bye_late_answer(r.call, to_side);
            }
            if r.code >= 200 {
                self.end_call(r.call, "abandoned");
            }
            return;
        }
        if r.code == 100 {
            // 100 Trying is hop-by-hop; we sent our own.
            return;
        }
        let Some(delivery) = self.provisional_delivery(now, r.call, r.from, r.initial, msg) else {
            return;
        };
        let call_state = self.calls.get(r.call).map(|c| c.state);
        if self.relay_upstream(now, r, msg, delivery) {
            self.conclude(r, call_state);
        }
    }

    /// Relay the response upstream: its body through the body policy and media, its
    /// headers through the header policy; a 2xx to INVITE starts the wait for its ACK.
    /// False when the call ended instead (an answer media refused).
    fn relay_upstream(
        &mut self,
        now: Instant,
        r: &Received,
        msg: &SipMessage,
        delivery: Delivery,
    ) -> bool {
        let to_side = r.from.other();
        let carrier = delivery.carrier(&r.method, r.code);
        let body = match self.crossing_body(r.call, to_side, carrier, msg) {
            Ok(body) => body,
            Err(e) => {
                let tenant = self
                    .calls
                    .get(r.call)
                    .map(|c| c.tenant.to_string())
                    .unwrap_or_default();
                metrics::counter!("sbc_media_refused_total", "tenant" => tenant, "reason" => e.as_str()).increment(1);
                warn!(call = %r.call, code = r.code, error = %e, "media refused SDP in a response");
                if r.initial && r.method == Method::Invite && r.is_2xx() {
                    // The callee's answer cannot be anchored: hang it up and refuse the
                    // call upstream rather than pass on an answer without media.
                    self.ack_and_bye_late_answer(r.call, to_side);
                    // A body the policy refuses in an answer is the callee's fault, not
                    // the caller's: 488, not 415.
                    let status = match e {
                        super::body_flow::BodyError::Refused(_) => 488,
                        _ => e.status(),
                    };
                    self.respond_upstream_local(now, r.id, status, default_reason(status));
                    self.end_call(r.call, "media answer refused");
                    return false;
                }
                // Elsewhere (18x, re-INVITE, UPDATE) the response goes on without the SDP
                // it carried: passing it on would leak the other side's addresses.
                None
            }
        };
        // A final ends the requester's offer: answered by a 2xx, failed otherwise (RFC 3261
        // §14.1: a failed re-INVITE leaves the session as it was).
        if r.code >= 200 && matches!(r.method, Method::Invite | Method::Update | Method::Prack) {
            if let Some(c) = self.calls.get_mut(r.call) {
                if c.media.pending == Some(r.from) {
                    c.media.settle();
                }
                if r.method == Method::Invite {
                    c.media.early_answer = false;
                }
            }
        }
        let Some(mut resp) = self.build_upstream_response(r.id, msg, body) else {
            return false;
        };
        delivery.stamp(&mut resp);
        let sent = self.respond_upstream(now, r.id, resp.clone());
        if sent && r.method == Method::Invite && r.is_2xx() {
            self.await_ack(now, r.call, r.from, &resp);
        }
        if let (true, Delivery::Reliable(rseq)) = (sent, delivery) {
            // Over UDP it is sent again until its PRACK (RFC 3262 §3).
            self.reliable_sent(now, r.call, rseq, &resp);
        }
        true
    }

    /// What a relayed final means for the call: an answered or failed setup (counted, the
    /// call established or ended), a finished BYE.
    fn conclude(&mut self, r: &Received, call_state: Option<CallState>) {
        if r.initial && r.code >= 200 {
            let tenant = self.calls.get(r.call).map(|c| c.tenant.to_string());
            if let Some(t) = tenant {
                if r.is_2xx() {
                    metrics::counter!("sbc_sip_calls_answered_total", "tenant" => t).increment(1);
                } else {
                    metrics::counter!("sbc_sip_calls_failed_total", "tenant" => t, "class" => status_class(r.code)).increment(1);
                }
            }
            if r.is_2xx() && call_state == Some(CallState::Setup) {
                if let Some(c) = self.calls.get_mut(r.call) {
                    c.state = CallState::Established;
                    if let (Some(reg), Some(rid)) = (&self.registry, &c.registry_id) {
                        reg.set_state(rid, RegistryState::Established);
                    }
                    debug!(call = %r.call, "call established");
                }
            } else if r.code >= 300 {
                self.end_call(r.call, "rejected");
            }
        }
        if r.method == Method::Bye && r.code >= 200 {
            self.end_call(r.call, "bye");
        }
    }

    /// Learn the downstream dialog from a response to our INVITE: the peer's tag, its
    /// Contact (remote target) and, on the initial INVITE, the route set (RFC 3261 §12.1.2).
    fn learn_dialog(&mut self, call: CallRef, side: LegSide, msg: &SipMessage, initial: bool) {
        let Some(code) = msg.status() else { return };
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let leg = c.leg_mut(side);
        if let Some(t) = msg.header("to").and_then(tag) {
            if leg.remote_tag.is_none() || (200..300).contains(&code) {
                leg.remote_tag = Some(t.to_string());
            }
        }
        if (101..300).contains(&code) {
            if let Some(uri) = msg.header("contact").and_then(contact_uri) {
                leg.remote_target = uri;
            }
            if initial {
                let mut rr: Vec<String> = msg
                    .header_values("record-route")
                    .map(str::to_string)
                    .collect();
                rr.reverse();
                leg.route_set = rr;
            }
        }
    }

    fn build_upstream_response(
        &mut self,
        id: PairId,
        down: &SipMessage,
        body: super::body_flow::Crossing,
    ) -> Option<SipMessage> {
        let pair = self.pairs.get(id)?;
        let c = self.calls.get(pair.call)?;
        let code = down.status()?;
        let up_leg = c.leg(pair.from);
        let mut resp = response_to(
            &pair.server_req,
            code,
            down.reason().unwrap_or(default_reason(code)),
            Some(&up_leg.local_tag),
        );
        self.tenant_policy(&c.tenant)
            .headers
            .copy_across(down, &mut resp, pair.from);
        if (101..300).contains(&code) && matches!(pair.method, Method::Invite | Method::Update) {
            resp.push_header("Contact", self.contact_on(c, pair.from));
        }
        set_body(&mut resp, body);
        Some(resp)
    }

    /// Send a response upstream through the pair's server transaction; false if the
    /// transaction had already sent its final.
    pub(super) fn respond_upstream(&mut self, now: Instant, id: PairId, resp: SipMessage) -> bool {
        let Some(pair) = self.pairs.get_mut(id) else {
            return false;
        };
        let code = resp.status().unwrap_or(500);
        if !pair.server.send_response(now, code, &self.cfg.timers) {
            return false;
        }
        pair.last_response = Some(resp.clone());
        let (conn, call, initial) = (pair.server_conn, pair.call, pair.initial);
        self.arm_pair(id);
        if conn == super::takeover_flow::NOT_ADOPTED {
            // A restored early dialog whose caller has not reconnected yet.
            self.hold_for_caller(resp);
        } else {
            self.outputs
                .push_back(super::Output::Send { conn, msg: resp });
        }
        if initial && code >= 200 {
            // The INVITE has its answer: it no longer counts as pending.
            let tenant = self.calls.get_mut(call).map(|c| {
                c.admitted.answered();
                c.reliable.invite_ended();
                (c.tenant.clone(), now.saturating_duration_since(c.invite_at))
            });
            if let Some((t, setup)) = tenant {
                metrics::histogram!("sbc_sip_call_setup_seconds", "tenant" => t.to_string())
                    .record(setup.as_secs_f64());
                self.report_usage(&t);
            }
        }
        true
    }

    /// Answer upstream with a locally generated final (487, 408, 503).
    pub(super) fn respond_upstream_local(
        &mut self,
        now: Instant,
        id: PairId,
        code: u16,
        reason: &str,
    ) {
        let Some(pair) = self.pairs.get(id) else {
            return;
        };
        let c = self.calls.get(pair.call);
        let local_tag = c.map(|c| c.leg(pair.from).local_tag.clone());
        let resp = response_to(&pair.server_req, code, reason, local_tag.as_deref());
        if pair.initial {
            if let Some(c) = c {
                metrics::counter!("sbc_sip_calls_failed_total", "tenant" => c.tenant.to_string(), "class" => status_class(code)).increment(1);
            }
        }
        self.respond_upstream(now, id, resp);
    }

    /// CANCEL the downstream INVITE now, or once it has heard a provisional.
    pub(super) fn cancel_downstream(&mut self, now: Instant, id: PairId) {
        let Some(pair) = self.pairs.get_mut(id) else {
            return;
        };
        if !pair.client.heard_provisional() {
            pair.cancel_pending = true;
            return;
        }
        pair.cancel_pending = false;
        // The INVITE must now end within 64·T1 (RFC 3261 §9.1).
        pair.client.cancel_sent(now);
        let cancel = pair.cancel(self.cfg.max_forwards);
        self.arm_pair(id);
        // The CANCEL's own 200 comes back with the INVITE's branch and method CANCEL; it is
        // absorbed as a stray response (the INVITE's final is what matters).
        if let Some(dest) = self.client_dest(id) {
            self.send(dest, cancel);
        }
    }

    /// A 2xx arrived after upstream was already answered: ACK it and hang up.
    fn ack_and_bye_late_answer(&mut self, call: CallRef, side: LegSide) {
        let invite_cseq = self.calls.get(call).map(|c| c.leg(side).invite_cseq);
        let ack = self.own_request(call, side, Method::Ack, invite_cseq);
        let bye = self.own_request(call, side, Method::Bye, None);
        for m in [ack, bye].into_iter().flatten() {
            self.send_on(call, side, m);
        }
        debug!(
            call = %call,
            "late answer after cancel or timeout: ACK and BYE sent"
        );
    }

    /// A 2xx that opened a dialog other than the call's (a forked INVITE answered twice):
    /// ACK it and end it with BYE (RFC 3261 §13.2.2.4), leaving the call's dialog alone.
    fn ack_and_bye_other_dialog(&mut self, call: CallRef, side: LegSide, resp: &SipMessage) {
        let (ack_branch, bye_branch) = (self.branch(), self.branch());
        let max_forwards = self.cfg.max_forwards;
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let (transport, advertised) = self.via_of(c, side);
        let leg = c.leg(side);
        let mut route_set: Vec<String> = resp
            .header_values("record-route")
            .map(str::to_string)
            .collect();
        route_set.reverse();
        let other = Leg {
            call_id: leg.call_id.clone(),
            local_tag: leg.local_tag.clone(),
            remote_tag: resp.header("to").and_then(tag).map(str::to_string),
            local_party: leg.local_party.clone(),
            remote_party: leg.remote_party.clone(),
            next_cseq: leg.invite_cseq.wrapping_add(1),
            invite_cseq: leg.invite_cseq,
            remote_target: resp
                .header("contact")
                .and_then(contact_uri)
                .unwrap_or_else(|| leg.remote_target.clone()),
            route_set,
            conn: leg.conn,
        };
        let hop = |branch| Hop {
            transport,
            advertised: &advertised,
            branch,
            max_forwards,
        };
        let ack = other.request(Method::Ack, other.invite_cseq, hop(&ack_branch));
        let bye = other.request(Method::Bye, other.next_cseq, hop(&bye_branch));
        debug!(call = %call, "2xx of another dialog: ACK and BYE sent");
        self.send_on(call, side, ack);
        self.send_on(call, side, bye);
    }

    // ----- timers and failures -----

    pub(super) fn pair_timeout(&mut self, now: Instant, id: PairId) {
        let Some(pair) = self.pairs.get_mut(id) else {
            return;
        };
        if pair.try_pending().is_some_and(|d| now >= d) {
            pair.try_deadline = None;
            if self.fail_over(now, id, TryFailure::Timeout) {
                return;
            }
            self.arm_pair(id);
            return;
        }
        if pair.retired {
            // A try the call left: its timers only end it (no 408 upstream, no call end).
            if pair.client.handle_timeout(now) == Some(ClientTimeout::RingingTooLong) {
                self.cancel_downstream(now, id);
            }
            self.arm_pair(id);
            self.pairs.remove_if_finished(id);
            return;
        }
        let client_result = pair.client.handle_timeout(now);
        let missed_ack = pair.server.handle_timeout(now);
        let (call, method) = (pair.call, pair.method.clone());
        // Over UDP: timer A/E sends our request again, timer G our non-2xx final.
        let request_again = pair
            .client
            .retransmit_due(now)
            .then(|| pair.client_req.clone());
        let final_again = if pair.server.retransmit_due(now) {
            pair.last_response.clone().map(|r| (pair.server_conn, r))
        } else {
            None
        };
        let dest = pair.client_dest;
        self.arm_pair(id);
        if let Some(req) = request_again {
            metrics::counter!("sbc_sip_retransmissions_total", "kind" => "request").increment(1);
            self.send(dest, req);
        }
        if let Some((conn, resp)) = final_again {
            metrics::counter!("sbc_sip_retransmissions_total", "kind" => "response").increment(1);
            self.outputs
                .push_back(super::Output::Send { conn, msg: resp });
        }
        if missed_ack {
            metrics::counter!("sbc_sip_transaction_timeouts_total", "timer" => "H").increment(1);
            debug!(
                call = %call,
                "timer H: ACK for a non-2xx final never arrived"
            );
        }
        match client_result {
            Some(ClientTimeout::NoResponse) => {
                metrics::counter!("sbc_sip_transaction_timeouts_total", "timer" => if method == Method::Invite { "B" } else { "F" }).increment(1);
                let tenant = self
                    .calls
                    .get(call)
                    .map(|c| c.tenant.to_string())
                    .unwrap_or_default();
                if self.log_now(now, super::CoreLog::NoResponse, &tenant) {
                    warn!(event = "no_response", call = %call, tenant, method = %method, "no response from the other side: 408");
                }
                self.respond_upstream_local(now, id, 408, "Request Timeout");
                if method == Method::Bye || (method == Method::Invite && !self.established(call)) {
                    self.end_call(call, "timeout");
                }
            }
            Some(ClientTimeout::RingingTooLong) => {
                metrics::counter!("sbc_sip_transaction_timeouts_total", "timer" => "ringing")
                    .increment(1);
                info!(
                    call = %call,
                    "maximum ringing time reached: CANCEL and 408"
                );
                self.respond_upstream_local(now, id, 408, "Request Timeout (Ringing Too Long)");
                if let Some(c) = self.calls.get_mut(call) {
                    c.state = CallState::Abandoned;
                }
                self.cancel_downstream(now, id);
            }
            None => {}
        }
        self.pairs.remove_if_finished(id);
    }

    pub(super) fn on_send_failed(&mut self, now: Instant, _target: TargetId, msg: &SipMessage) {
        if self.ping_failed(now, msg) || self.srs_send_failed(now, msg) {
            return;
        }
        let Some(id) = self.pairs.by_client_via(msg) else {
            return;
        };
        let Some(pair) = self.pairs.get(id) else {
            return;
        };
        if msg.method() != Some(&pair.method) {
            return;
        }
        if pair.retired {
            // A retired try's CANCEL or ACK that could not go: nothing more can come.
            if let Some(p) = self.pairs.get_mut(id) {
                p.client.abort();
            }
            self.pairs.remove_if_finished(id);
            return;
        }
        if self.fail_over(now, id, TryFailure::Transport) {
            return;
        }
        let Some(call) = self.pairs.get(id).map(|p| p.call) else {
            return;
        };
        let (tenant, target_addr) = self
            .calls
            .get(call)
            .map(|c| (c.tenant.to_string(), c.target_addr.clone()))
            .unwrap_or_default();
        if self.log_now(now, super::CoreLog::TargetUnreachable, &tenant) {
            warn!(
                event = "target_unreachable",
                call = %call,
                target_addr = %target_addr,
                tenant,
                "route target unreachable: 503"
            );
        }
        metrics::counter!("sbc_sip_target_unreachable_total").increment(1);
        self.respond_upstream_local(now, id, 503, "Service Unavailable (Target Unreachable)");
        if let Some(p) = self.pairs.get_mut(id) {
            p.client.abort();
        }
        // The pair's deadline moved (timer B gone, timer H left): file it again.
        self.arm_pair(id);
        if !self.established(call) || msg.method() == Some(&Method::Bye) {
            self.end_call(call, "target_unreachable");
        }
        self.pairs.remove_if_finished(id);
    }

    /// A caller's connection closed: its calls still ringing can never be answered to it,
    /// so they are cancelled downstream (answered calls stay; the caller may reconnect).
    pub(super) fn abandon_setups_on(&mut self, now: Instant, conn: ConnId) {
        let ringing = self
            .pairs
            .select(|p| p.initial && p.server_conn == conn && p.server.awaiting_final());
        for id in ringing {
            let Some(pair) = self.pairs.get_mut(id) else {
                continue;
            };
            let call = pair.call;
            debug!(
                call = %call,
                "caller's connection closed during setup: cancelling"
            );
            // Nobody to answer upstream: mark the server side final without sending.
            pair.server.send_response(now, 487, &self.cfg.timers);
            let tenant = self.calls.get_mut(call).map(|c| {
                c.state = CallState::Abandoned;
                c.admitted.answered();
                c.tenant.clone()
            });
            if let Some(t) = tenant {
                self.report_usage(&t);
            }
            self.arm_pair(id);
            self.cancel_downstream(now, id);
            self.pairs.remove_if_finished(id);
        }
    }
}
