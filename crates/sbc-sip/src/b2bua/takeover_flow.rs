//! Hot standby (issue #16): calls this node takes over from a dead peer, and calls it
//! gives up to another node (fencing).
//!
//! Owns: [`B2bua::install`] (each claimed call rebuilt from its dialog part: media
//! restored first through [`MediaTakeover`], a fresh [`Admitted`] from
//! `Admission::admit_restored` holding the call's moved lease, CSeq continuing
//! [`CSEQ_RESTORE_MARGIN`] above the stored next CSeq, registry entry re-created, the
//! initial INVITE's transaction pair rebuilt for an early dialog), [`B2bua::fence`],
//! and the caller legs of restored calls until a connection adopts them ([`Restored`]).
//!
//! Adoption (RFC 5626-style flow reuse by tenant): a restored call's caller leg has no
//! connection (the old one ended with the dead node). The tenant's next inbound
//! connection on the call's listener (by advertised address) adopts every restored call
//! of that tenant and listener still waiting; so does an in-dialog request for the call
//! arriving on any connection of the tenant (matched by tags and Call-ID as for every
//! call). Requests and retransmitted 2xx for a caller leg not yet adopted wait in a
//! bounded queue ([`MAX_HELD`] messages, [`CALLER_WAIT`] from the first); when the wait
//! ends the call ends (BYE to the callee, a log line, counted).
//!
//! Callee legs: the trunk connection is the target pool's; install re-dials it at once
//! (one OPTIONS per target, its answer absorbed) so a trunk that sends its requests on
//! the connection it was reached on (TLS connection reuse) can reach the call before we
//! send it anything. A trunk that instead opens its own connection to our Via or Contact
//! address (the listener's, the same on this node) is served on it as that trunk's
//! connection ([`super::ConnKind::Trunk`], recognised by the driver from the source
//! address): its in-dialog requests and its responses (RFC 3261 §18.2.2) for calls on
//! that target, nothing else.
//!
//! Early dialogs (callee's provisional with a tag received, no final yet): the initial
//! INVITE's pair is rebuilt (server transaction waiting for its final, client
//! transaction proceeding), keyed to the caller's connection once adopted. Served: a
//! CANCEL from the caller (200, 487 upstream, CANCEL downstream, the callee's 487
//! ACKed), the callee's final over the target's pooled connection (a 2xx relayed
//! upstream, held until the caller leg is adopted, like the responses before it),
//! ringing timeout; the callee's final may also come on the callee's own new connection
//! to our Via (§18.2.2, a [`super::ConnKind::Trunk`] connection). Not served: reliable
//! provisionals in flight (their RSeq state is not replicated: a PRACK for one is refused
//! 481), and failover to the route's next target: the next try re-sends the offer as
//! media rewrote it, whose SDP holds the callee leg's SRTP key, and the dialog part is
//! stored in clear, so neither it nor the targets left are replicated; a failure final
//! is relayed to the caller.
//!
//! A 2xx the dead node sent whose ACK had not arrived: the ACK went to the dead node and
//! the 2xx is not replicated (its SDP holds keys), so this node sends the ACK on the
//! other leg in its place at install; when that ACK would carry an SDP answer (late
//! offer) it cannot be made up and the call is ended (BYE on both legs, logged) once the
//! caller's leg is adopted, or when its wait ends.
//!
//! Not replicated: transactions in flight other than the initial INVITE (a re-INVITE or
//! BYE in progress when the peer died is retried by its sender and served here), SIPREC
//! sessions.
//!
//! Must not: send any SIP message for a fenced call, or leave a refused call half
//! installed (each refusal drops its `Admitted` and lease, so the slot is released).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sbc_core::admission::Admitted;
use sbc_core::media::{CallRef, LegSide, MediaError};
use sbc_core::registry::{CallId as RegistryId, CallRecord, CallState as RegistryState};
use sbc_core::standby::{
    InstallRefusal, InstallReport, SharedMediaTakeover, SharedReplicaSink, TakenCall,
};
use sbc_core::tenant::TenantId;
use tracing::{info, warn};

use super::calls::{Call, CallState};
use super::offer_answer::OfferAnswer;
use super::pairs::{Pair, ServerKey};
use super::replica::{side_of, AckWaitPart, DialogPart, PartState, Replica};
use super::{B2bua, ConnId, Dest};
use crate::message::{tag, Method, SipMessage};
use crate::routing::Candidate;
use crate::transaction::{ClientTransaction, ServerTransaction, TxKind};

/// How far above the stored next CSeq a restored leg continues. The part is handed to
/// the sink before the request that used the CSeq is written (`replica.rs`), but the sink
/// writes asynchronously: requests the old node sent in its last replication lag
/// (milliseconds) may be missing from the store. 128 requests on one leg within that lag
/// is far beyond any call flow (a BYE, a re-INVITE, a few INFO); RFC 3261 §12.2.1.1 only
/// asks that CSeq grows, so the jump is harmless.
pub const CSEQ_RESTORE_MARGIN: u32 = 128;

/// How long requests for a restored caller leg wait for the tenant to reconnect: 32 s,
/// 64·T1 at the default T1 (the time a client transaction gives its request, RFC 3261
/// timer F), after which the request has failed anyway.
pub const CALLER_WAIT: Duration = Duration::from_secs(32);

/// Messages held per restored caller leg waiting for adoption: a BYE, a re-INVITE and
/// the retransmissions of a 2xx over 32 s (T1 doubling to T2: about 10) fit.
pub const MAX_HELD: usize = 32;

/// The connection of a rebuilt server transaction before its caller leg is adopted
/// (drivers number connections from 1).
pub(super) const NOT_ADOPTED: ConnId = ConnId(0);

/// A restored call's caller leg waiting for a connection.
#[derive(Debug)]
struct Waiting {
    tenant: TenantId,
    listener: usize,
    held: Vec<SipMessage>,
    /// When the held messages give up (set by the first one).
    deadline: Option<Instant>,
    /// The call is to be ended (BYE on both legs) once the caller's leg has a connection
    /// to say so on; why.
    end_when_adopted: Option<&'static str>,
}

/// Hot standby state of the core: media takeover, caller legs waiting.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    pub media: Option<SharedMediaTakeover>,
    waiting: HashMap<CallRef, Waiting>,
    /// Branches of the OPTIONS that re-dialled restored calls' targets (one per target
    /// of the last install), so their answers are absorbed.
    redials: std::collections::HashSet<String>,
}

impl Restored {
    /// The earliest wait that ends.
    pub fn deadline(&self) -> Option<Instant> {
        self.waiting.values().filter_map(|w| w.deadline).min()
    }

    /// The call ended: nothing waits for it.
    pub fn forget(&mut self, call: CallRef) {
        self.waiting.remove(&call);
    }
}

fn refusal_of(e: &MediaError) -> InstallRefusal {
    match e {
        MediaError::NoPorts => InstallRefusal::MediaPorts,
        _ => InstallRefusal::Media,
    }
}

impl B2bua {
    /// Replicate dialog parts to `replica` (each call's part after each change) and
    /// restore taken-over calls' media through `media`.
    pub fn set_standby(
        &mut self,
        replica: Option<SharedReplicaSink>,
        media: Option<SharedMediaTakeover>,
    ) {
        if let Some(sink) = replica {
            self.calls.track_changes();
            self.replica = Some(Replica::new(sink));
        }
        self.restored.media = media;
    }

    /// Install calls claimed from a dead peer: each is served here from now on, or
    /// refused (logged, counted, its admission slot and lease released).
    pub fn install(&mut self, now: Instant, calls: Vec<TakenCall>) -> InstallReport {
        self.clock = self.clock.max(now);
        let mut report = InstallReport::default();
        let mut installed = Vec::new();
        let mut ack_waits = Vec::new();
        for taken in calls {
            let peer_ref = taken.call;
            match self.install_one(now, taken, &mut ack_waits) {
                Ok(local) => {
                    report.installed += 1;
                    installed.push(local);
                    metrics::counter!("sbc_sip_takeover_calls_total", "result" => "installed")
                        .increment(1);
                    info!(event = "call_taken_over", call = %local, peer_call = %peer_ref, "call installed from the peer's replica");
                }
                Err(why) => {
                    metrics::counter!("sbc_sip_takeover_calls_total", "result" => why.as_str())
                        .increment(1);
                    warn!(event = "takeover_refused", peer_call = %peer_ref, reason = why.as_str(), "claimed call not installed");
                    report.refused.push((peer_ref, why));
                }
            }
        }
        metrics::gauge!("sbc_sip_active_dialogs").set(self.calls.len() as f64);
        self.redial_targets(&installed);
        for (call, wait) in ack_waits {
            self.stand_in_ack(now, call, &wait);
        }
        self.replicate();
        report
    }

    /// A 2xx the dead node sent was waiting for its ACK. That ACK went to the dead node
    /// (a UAC sends it once per 2xx it receives) and the 2xx is not replicated (its SDP
    /// holds keys), so nobody would ever ACK the other side's 2xx: it would retransmit it
    /// and hang up after 64*T1 (RFC 3261 §13.3.1.4). Without an answer in the ACK, this
    /// node sends the ACK on the other leg in its place; an ACK that carries an answer (a
    /// late offer) cannot be made up, and the call is ended.
    fn stand_in_ack(&mut self, now: Instant, call: CallRef, wait: &AckWaitPart) {
        let Some(side) = side_of(&wait.side) else {
            return;
        };
        if wait.answer_in_ack {
            // Ended once the caller is back (so its BYE has a connection), or when its
            // wait ends.
            warn!(event = "takeover_ack_lost", call = %call, side = side.as_str(), cseq = wait.cseq, "the ACK the dead node awaited carries an SDP answer this node does not have: the call ends");
            if let Some(w) = self.restored.waiting.get_mut(&call) {
                w.end_when_adopted = Some("ACK with an answer lost in the takeover");
                w.deadline.get_or_insert(now + CALLER_WAIT);
            }
            return;
        }
        info!(event = "takeover_ack_stood_in", call = %call, side = side.as_str(), cseq = wait.cseq, "ACK the dead node awaited sent on the other leg in its place");
        let max_forwards = self.cfg.max_forwards;
        self.send_ack(call, side.other(), max_forwards, None, None);
    }

    /// Open the pooled connection to each target of the calls just installed (an
    /// OPTIONS through the pool), so a trunk that sends its in-dialog requests on the
    /// connection it was reached on (TLS connection reuse) has one before we send it
    /// anything.
    fn redial_targets(&mut self, installed: &[CallRef]) {
        let mut seen = std::collections::HashSet::new();
        let candidates: Vec<Candidate> = installed
            .iter()
            .filter_map(|id| self.calls.get(*id))
            .filter(|c| seen.insert(c.target))
            .map(|c| Candidate {
                target: c.target,
                host_port: c.target_addr.clone(),
                transport: c.target_transport,
            })
            .collect();
        self.restored.redials.clear();
        for candidate in candidates {
            let (branch, m) = self.options_to(&candidate);
            self.restored.redials.insert(branch);
            self.send(Dest::Target(candidate.target), m);
        }
    }

    /// The answer to a re-dial OPTIONS: true if it was one (absorbed).
    pub(super) fn redial_answered(&mut self, msg: &SipMessage) -> bool {
        let branch = msg
            .header("via")
            .and_then(crate::message::parse_via)
            .and_then(|v| v.branch.map(str::to_string));
        branch.is_some_and(|b| self.restored.redials.remove(&b))
    }

    /// Install one claimed call; a 2xx of it waiting for its ACK goes into `ack_waits`.
    fn install_one(
        &mut self,
        now: Instant,
        mut t: TakenCall,
        ack_waits: &mut Vec<(CallRef, AckWaitPart)>,
    ) -> Result<CallRef, InstallRefusal> {
        let (part, place) = self.placement(&t)?;
        let tenant = t.tenant.clone();
        let mut admitted: Admitted = self
            .admission
            .admit_restored(&tenant, place.state == CallState::Setup)
            .map_err(|_| InstallRefusal::UnknownTenant)?;
        if let Some(lease) = t.lease.take() {
            admitted.hold(lease);
        }
        let id = if t.call.0 != 0 && !self.calls.contains(t.call) {
            t.call
        } else {
            let rng = &mut self.rng;
            self.calls.next_ref(|| rand::Rng::gen::<u64>(rng))
        };
        // Media first: a call whose media cannot be restored is refused, not half
        // installed (its `Admitted` and lease drop here).
        match (&t.media, &self.restored.media) {
            (Some((media, secret)), Some(mt)) => mt
                .restore(id, &tenant, media, secret, t.indexes.as_deref())
                .map_err(|e| refusal_of(&e))?,
            (Some(_), None) => return Err(InstallRefusal::Media),
            (None, _) => {}
        }
        let listener = place.listener;
        let call = self.restored_call(now, &part, place, tenant.clone(), admitted);
        self.calls.insert(id, call);
        self.restored_registry(id, &part);
        self.restore_early(now, id, &part);
        if let Some(w) = part.ack_wait.clone() {
            ack_waits.push((id, w));
        }
        self.restored.waiting.insert(
            id,
            Waiting {
                tenant: tenant.clone(),
                listener,
                held: Vec::new(),
                deadline: None,
                end_when_adopted: None,
            },
        );
        self.report_usage(&tenant);
        Ok(id)
    }

    /// The claimed call's part, and where it goes here: its listener (by advertised
    /// address) and route target (by address), or why it cannot be installed. Takes
    /// nothing (no slot, no media), so a refusal here has nothing to release.
    fn placement(&self, t: &TakenCall) -> Result<(DialogPart, Placement), InstallRefusal> {
        let part = t
            .dialog
            .as_deref()
            .and_then(DialogPart::parse)
            .filter(|p| p.tenant == t.tenant.as_str())
            .ok_or(InstallRefusal::BadRecord)?;
        // A call in setup is served through its initial INVITE's transactions; without
        // them (or abandoned, which this build never puts) it could never end here.
        let servable = match part.state {
            PartState::Established => true,
            PartState::Setup => part.early.is_some(),
            PartState::Abandoned => false,
        };
        // A call already held here (installed twice) would corrupt the tag index.
        let held = self
            .calls
            .by_dialog(&part.caller.local_tag, Some(&part.caller.call_id))
            .is_some();
        if !servable || held {
            return Err(InstallRefusal::BadRecord);
        }
        if self.admission.usage(&t.tenant).is_none() {
            return Err(InstallRefusal::UnknownTenant);
        }
        let listener = self
            .cfg
            .advertised
            .iter()
            .position(|a| *a == part.listener)
            .ok_or(InstallRefusal::NoListener)?;
        let target_transport =
            DialogPart::transport(&part.target_transport).ok_or(InstallRefusal::BadRecord)?;
        let target = self
            .routes
            .target_by_addr(&t.tenant, &part.target, target_transport)
            .map(|r| r.target)
            .ok_or(InstallRefusal::NoListener)?;
        let state = part.state.into();
        Ok((
            part,
            Placement {
                listener,
                target,
                target_transport,
                state,
            },
        ))
    }

    /// The call rebuilt from its part.
    fn restored_call(
        &self,
        now: Instant,
        part: &DialogPart,
        r: Placement,
        tenant: TenantId,
        admitted: Admitted,
    ) -> Call {
        let invite = part
            .early
            .as_ref()
            .map(|e| e.upstream.invite())
            .unwrap_or_else(|| {
                SipMessage::new_request(Method::Invite, part.caller.remote_target.clone())
            });
        let mut reliable = super::reliable::Reliable::new(&invite);
        if r.state != CallState::Setup {
            reliable.invite_ended();
        }
        let mut media = OfferAnswer::default();
        if let Some(side) = part
            .early
            .as_ref()
            .and_then(|e| e.offer_pending.as_deref())
            .and_then(side_of)
        {
            media.offered(side);
        }
        Call {
            tenant,
            admitted,
            caller: part.caller.leg(CSEQ_RESTORE_MARGIN),
            callee: part.callee.leg(CSEQ_RESTORE_MARGIN),
            target: r.target,
            target_transport: r.target_transport,
            target_addr: part.target.clone(),
            candidates: Default::default(),
            failover: Default::default(),
            request_user: part.request_user.clone(),
            tries: 1,
            listener: r.listener,
            state: r.state,
            media,
            reliable,
            registry_id: None,
            ack_wait: None,
            invite_at: now,
        }
    }

    /// The call's entry in the admin plane's registry, as its node had it.
    fn restored_registry(&mut self, id: CallRef, part: &DialogPart) {
        let Some(r) = &self.registry else {
            return;
        };
        let rid = r
            .register_as(
                RegistryId::from_call_ref(id),
                CallRecord {
                    tenant: part_tenant(part),
                    start: part.start(),
                    caller: part.caller_number.clone(),
                    callee: part.callee_number.clone(),
                    inbound_sip_call_id: part.caller.call_id.clone(),
                },
            )
            .map_err(|e| warn!(error = %e, "restored call not recorded for the admin plane"))
            .ok();
        if let Some(rid) = &rid {
            r.add_outbound_leg(rid, part.callee.call_id.clone());
            r.set_media_ref(rid, id.0);
            if part.state == PartState::Established {
                r.set_state(rid, RegistryState::Established);
            }
        }
        if let Some(c) = self.calls.get_mut(id) {
            c.registry_id = rid;
        }
    }

    /// An early dialog's initial INVITE pair: the caller's transaction waiting for its
    /// final (keyed to no connection until adoption), ours to the callee proceeding.
    fn restore_early(&mut self, now: Instant, id: CallRef, part: &DialogPart) {
        let Some(early) = part
            .early
            .as_ref()
            .filter(|_| part.state == PartState::Setup)
        else {
            return;
        };
        let server_req = early.upstream.invite();
        let client_req = early.downstream.invite();
        let (Some(server_key), Some(client_branch)) = (
            ServerKey::of(NOT_ADOPTED, &server_req),
            client_req
                .header("via")
                .and_then(crate::message::parse_via)
                .and_then(|v| v.branch.map(str::to_string)),
        ) else {
            return;
        };
        let Some(target) = self.calls.get(id).map(|c| c.target) else {
            return;
        };
        let reliable = self.target_transport(target).is_reliable();
        let mut client =
            ClientTransaction::new_over(TxKind::Invite, now, &self.cfg.timers, reliable);
        // It had heard the callee's provisional (the part exists from then on).
        client.handle_input(now, 180, &self.cfg.timers);
        let pair = Pair {
            call: id,
            from: LegSide::Caller,
            method: Method::Invite,
            server_req,
            server_conn: NOT_ADOPTED,
            server_key,
            server: ServerTransaction::new_over(TxKind::Invite, true),
            client,
            client_req,
            client_branch,
            client_dest: Dest::Target(target),
            initial: true,
            cancel_pending: false,
            last_response: None,
            try_deadline: None,
            retired: false,
        };
        let pid = self.pairs.insert(pair);
        self.arm_pair(pid);
    }

    /// Another node owns these calls now (fencing): drop them without any SIP message,
    /// their media deleted, registry entries removed, their records left to the new
    /// owner. Returns how many were held here.
    pub fn fence(&mut self, calls: &[CallRef]) -> usize {
        let mut dropped = 0;
        for &call in calls {
            if let Some(r) = &mut self.replica {
                r.forget(call);
            }
            self.pairs.remove_call(call);
            self.recordings.remove(call);
            self.restored.forget(call);
            let Some(c) = self.calls.remove(call) else {
                continue;
            };
            dropped += 1;
            if let Some(media) = &self.media {
                media.delete(call);
            }
            if let (Some(r), Some(id)) = (&self.registry, &c.registry_id) {
                r.remove(id);
            }
            metrics::counter!("sbc_sip_fenced_calls_total").increment(1);
            warn!(event = "call_fenced", call = %call, tenant = %c.tenant, "call dropped: another node owns it now (no SIP sent)");
            let tenant = c.tenant.clone();
            drop(c);
            self.report_usage(&tenant);
        }
        metrics::gauge!("sbc_sip_active_dialogs").set(self.calls.len() as f64);
        self.replicate();
        dropped
    }

    /// A connection of `tenant` came up on `listener`: it adopts the caller legs of the
    /// restored calls of that tenant and listener still waiting.
    pub(super) fn adopt_caller_legs(&mut self, conn: ConnId, tenant: &TenantId, listener: usize) {
        let calls: Vec<CallRef> = self
            .restored
            .waiting
            .iter()
            .filter(|(_, w)| w.tenant == *tenant && w.listener == listener)
            .map(|(c, _)| *c)
            .collect();
        for call in calls {
            self.caller_adopted(call, conn);
        }
    }

    /// `conn` serves the caller leg of `call` now: held messages go out on it, and the
    /// rebuilt initial INVITE's server transaction is keyed to it.
    pub(super) fn caller_adopted(&mut self, call: CallRef, conn: ConnId) {
        let Some(w) = self.restored.waiting.remove(&call) else {
            return;
        };
        if let Some(c) = self.calls.get_mut(call) {
            c.caller.conn = Some(conn);
        } else {
            return;
        }
        for id in self
            .pairs
            .select(|p| p.call == call && p.server_conn == NOT_ADOPTED)
        {
            self.pairs.rekey_server(id, conn);
        }
        metrics::counter!("sbc_sip_restored_caller_total", "event" => "adopted").increment(1);
        info!(event = "caller_leg_adopted", call = %call, conn = %conn, held = w.held.len(), "restored call's caller leg adopted by the tenant's connection");
        for msg in w.held {
            self.outputs.push_back(super::Output::Send { conn, msg });
        }
        if let Some(why) = w.end_when_adopted {
            self.terminate(self.clock, call, why);
        }
    }

    /// A message for a caller leg without a connection: held if its call is restored and
    /// waiting for adoption, else dropped.
    pub(super) fn hold_for_caller(&mut self, msg: SipMessage) {
        let local_tag = if msg.is_request() {
            msg.header("from").and_then(tag)
        } else {
            msg.header("to").and_then(tag)
        };
        let call = local_tag
            .and_then(|t| self.calls.by_dialog(t, msg.call_id()))
            .filter(|(_, side)| *side == LegSide::Caller)
            .map(|(c, _)| c);
        let now = self.clock;
        let Some(w) = call.and_then(|c| self.restored.waiting.get_mut(&c)) else {
            tracing::debug!("no connection for leg; message dropped");
            return;
        };
        if w.held.len() >= MAX_HELD {
            metrics::counter!("sbc_sip_restored_caller_total", "event" => "dropped").increment(1);
            return;
        }
        w.deadline.get_or_insert(now + CALLER_WAIT);
        w.held.push(msg);
    }

    /// End the restored calls whose caller never came back in time.
    pub(super) fn restored_timeout(&mut self, now: Instant) {
        let expired: Vec<CallRef> = self
            .restored
            .waiting
            .iter()
            .filter(|(_, w)| w.deadline.is_some_and(|d| d <= now))
            .map(|(c, _)| *c)
            .collect();
        for call in expired {
            let held = self
                .restored
                .waiting
                .remove(&call)
                .map_or(0, |w| w.held.len());
            metrics::counter!("sbc_sip_restored_caller_total", "event" => "timed_out").increment(1);
            warn!(event = "restored_caller_absent", call = %call, held, wait_secs = CALLER_WAIT.as_secs(), "the caller of a restored call did not reconnect: call ended");
            let has_dialog = self
                .calls
                .get(call)
                .is_some_and(|c| c.callee.remote_tag.is_some());
            if has_dialog {
                if let Some(mut bye) = self.own_request(call, LegSide::Callee, Method::Bye, None) {
                    bye.push_header("Reason", "SIP;cause=200;text=\"caller did not reconnect\"");
                    self.send_on(call, LegSide::Callee, bye);
                }
            }
            self.end_call(call, "caller did not reconnect");
        }
    }
}

/// Where a claimed call goes on this node.
struct Placement {
    listener: usize,
    target: crate::routing::TargetId,
    target_transport: crate::transport::Transport,
    state: CallState,
}

fn part_tenant(part: &DialogPart) -> TenantId {
    TenantId::from(part.tenant.as_str())
}
