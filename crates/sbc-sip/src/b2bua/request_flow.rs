//! What a request does: start a call, belong to a transaction we hold (retransmission,
//! CANCEL, ACK for a non-2xx), or belong to a dialog; and the relay of a request to the
//! other leg with its transaction pair.
//!
//! Who may send what: a tenant's connection places calls and speaks for the caller's leg
//! of its own calls; a connection to a route target and a trunk's own connection to us
//! ([`ConnKind::Trunk`]) speak only for the callee's leg of calls on that target; an
//! unrecognised peer gets 403 for everything. A trunk's connection gets the same 403 (and
//! cut-off) for anything outside its calls, logged as `trunk_request_refused`.
//!
//! Owns: no state of its own; the order of checks a request passes. Every refusal of a
//! new call is decided before admission (nothing to release), and every failure after
//! admission ends the call (its slot, media and registry entry released).
//! Must not: build responses other than through `responses.rs` or decide what crosses
//! (`topology.rs`).

use std::time::Instant;

use sbc_core::admission::Admitted;
use sbc_core::media::{CallRef, LegSide};
use sbc_core::registry::{CallId as RegistryId, CallRecord};
use sbc_core::tenant::TenantId;
use tracing::{debug, info, warn};

use super::body_flow::BodyError;
use super::calls::{contact_uri, from_user, without_tag, Call, CallState, Hop, Leg};
use super::offer_answer::{Carrier, OfferAnswer};
use super::pairs::{Pair, ServerKey};
use super::responses::{self, status_class, Refusal, ALLOW};
use super::topology::Classified;
use super::{B2bua, ConnId, ConnKind, Dest, Output, DRAIN_RETRY_AFTER};

/// Retry-After when every target of the route is down or quarantined: about one health
/// check interval (30 s by default), after which a target may be back.
const NO_TARGET_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(30);
use crate::message::{check_request_uri, response_to, tag, Method, SipMessage};
use crate::transaction::{ClientTransaction, ServerDisposition, ServerState, TxKind};
use crate::transport::Transport;

/// Option tags of Require the gateway honours (RFC 3261 §8.2.2.3): `timer` (RFC 4028)
/// because Session-Expires crosses end to end, `100rel` because reliable provisionals are
/// relayed per leg (`reliable.rs`; a callee that does not support it answers 420 itself,
/// as behind a proxy).
const SUPPORTED_REQUIRE: &[&str] = &["timer", "100rel"];

/// A new INVITE that passed local admission, with where it goes: opened at once, or
/// parked first while the cluster decides (cluster_flow.rs).
#[derive(Debug)]
pub(super) struct AdmittedInvite {
    pub conn: ConnId,
    pub listener: usize,
    pub tenant: TenantId,
    pub route: crate::routing::RouteEntry,
    /// The target this call tries first, and the ones after it in order.
    pub first: crate::routing::Candidate,
    pub candidates: std::collections::VecDeque<crate::routing::Candidate>,
    /// The called user part (checked Request-URI).
    pub user: Option<String>,
    /// The INVITE, its body classified (once, before admission).
    pub request: Classified,
    pub admitted: Admitted,
}

/// What a new call is opened from: the request and what admission and routing decided.
#[derive(Debug)]
struct Opening<'a> {
    conn: ConnId,
    listener: usize,
    tenant: &'a TenantId,
    route: &'a crate::routing::RouteEntry,
    /// The target this call tries first, and the ones after it in order.
    first: crate::routing::Candidate,
    candidates: std::collections::VecDeque<crate::routing::Candidate>,
    /// The called user part (checked Request-URI).
    user: Option<&'a str>,
    msg: &'a SipMessage,
    /// The INVITE's dialog headers (the parser guarantees them; checked once).
    from: &'a str,
    to: &'a str,
    call_id: &'a str,
    cseq: u32,
}

/// Methods that exist only inside a dialog: outside one they get 481.
fn dialog_only(m: &Method) -> bool {
    matches!(
        m,
        Method::Bye | Method::Update | Method::Info | Method::Notify | Method::Prack
    )
}

/// Checks every request passes before anything else happens to it (RFC 3261 §8.2.1 -
/// §8.2.2.3, §16.3): method, Request-URI, Max-Forwards, Require. ACK and CANCEL are never
/// refused this way (§8.2.2.3: Require is not checked for them).
fn precheck(msg: &SipMessage, method: &Method) -> Result<(), Refusal> {
    if matches!(method, Method::Ack | Method::Cancel) {
        return Ok(());
    }
    if let Method::Other(_) = method {
        return Err(Refusal::NotImplemented);
    }
    if !responses::allowed(method) {
        return Err(Refusal::MethodNotAllowed);
    }
    if let Err(fault) = check_request_uri(msg.request_uri().unwrap_or_default()) {
        return Err(Refusal::from(fault));
    }
    if msg.max_forwards() == Some(0) && *method != Method::Options {
        return Err(Refusal::TooManyHops);
    }
    let unsupported: Vec<&str> = msg
        .header_values("require")
        .filter(|t| !SUPPORTED_REQUIRE.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect();
    if !unsupported.is_empty() {
        return Err(Refusal::BadExtension(unsupported.join(", ")));
    }
    Ok(())
}

impl B2bua {
    pub(super) fn on_request(&mut self, now: Instant, conn: ConnId, msg: SipMessage) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        metrics::counter!("sbc_sip_requests_received_total", "method" => responses::method_label(&method))
            .increment(1);
        let Some(kind) = self.conns.get(&conn).map(|c| c.kind.clone()) else {
            debug!(conn = %conn, "request on unknown connection dropped");
            return;
        };
        // Requests that belong to a transaction we already hold (retransmission, CANCEL,
        // ACK for a non-2xx final) are matched by RFC 3261 §17.2.3.
        if let Some(key) = ServerKey::of(conn, &msg) {
            if let Some(id) = self.pairs.by_server(&key) {
                self.on_request_in_transaction(now, conn, id, &method, msg);
                return;
            }
        }
        // An unrecognised peer learns nothing but 403, whatever it sends (and is cut off
        // after repeated refusals).
        if matches!(kind, ConnKind::Inbound { tenant: None, .. }) {
            self.refuse_unrecognised(now, conn, &msg);
            return;
        }
        if let ConnKind::Trunk { .. } = kind {
            self.on_trunk_request(now, conn, method, msg);
            return;
        }
        if matches!(kind, ConnKind::Outbound { .. }) && self.on_srs_request(now, conn, &msg) {
            return;
        }
        if let Err(refusal) = precheck(&msg, &method) {
            self.refuse(conn, &msg, &refusal, None);
            return;
        }
        let to_tag = msg.header("to").and_then(tag).map(str::to_string);
        if let Some(to_tag) = to_tag {
            self.on_in_dialog(now, conn, &to_tag, method, msg);
            return;
        }
        match kind {
            ConnKind::Trunk { .. } => self.refuse_from_trunk(now, conn, &msg),
            ConnKind::Outbound { .. } => {
                // Targets answer calls; they do not place them through us.
                self.refuse(conn, &msg, &Refusal::NotATrunkPeer, None);
            }
            ConnKind::Inbound { tenant, listener } => {
                let Some(tenant) = tenant else {
                    // Refused above; kept so that this match cannot forget it.
                    self.refuse_unrecognised(now, conn, &msg);
                    return;
                };
                match method {
                    Method::Invite => self.on_initial_invite(now, conn, listener, tenant, msg),
                    Method::Options => {
                        let tag = self.token();
                        let mut resp = response_to(&msg, 200, "OK", Some(&tag));
                        resp.push_header("Allow", ALLOW);
                        let policy = self.tenant_policy(&tenant);
                        resp.push_header("Accept", policy.bodies.accept_header());
                        self.outputs.push_back(Output::Send { conn, msg: resp });
                    }
                    Method::Ack => debug!(conn = %conn, "stray ACK dropped"),
                    Method::Cancel => {
                        if !self.cancel_parked(conn, &msg) {
                            self.refuse(conn, &msg, &Refusal::NoTransaction, None);
                        }
                    }
                    m if dialog_only(&m) => self.refuse(conn, &msg, &Refusal::NoTransaction, None),
                    _ => self.refuse(conn, &msg, &Refusal::MethodNotAllowed, None),
                }
            }
        }
    }

    /// Answer `req` on `conn` with `refusal` (counted by reason; `tenant` labels it when
    /// known). ACKs are never answered.
    pub(super) fn refuse(
        &mut self,
        conn: ConnId,
        req: &SipMessage,
        refusal: &Refusal,
        tenant: Option<&TenantId>,
    ) {
        metrics::counter!("sbc_sip_requests_refused_total", "reason" => refusal.as_str())
            .increment(1);
        if let Some(t) = tenant {
            metrics::counter!("sbc_sip_calls_failed_total", "tenant" => t.to_string(), "class" => status_class(refusal.status())).increment(1);
        }
        if req.method() == Some(&Method::Ack) {
            return;
        }
        let tag = self.token();
        let resp = refusal.response(req, &tag);
        self.outputs.push_back(Output::Send { conn, msg: resp });
    }

    /// A request on a trunk's own connection ([`ConnKind::Trunk`]): served only in a
    /// dialog whose callee leg is on one of the trunk's targets (tags and Call-ID, as on
    /// every connection, and `conn_serves`); anything else is refused as from an
    /// unrecognised peer.
    fn on_trunk_request(&mut self, now: Instant, conn: ConnId, method: Method, msg: SipMessage) {
        let to_tag = msg.header("to").and_then(tag).map(str::to_string);
        let in_dialog = to_tag.as_deref().and_then(|t| {
            self.calls
                .by_dialog(t, msg.call_id())
                .filter(|(call, side)| {
                    *side == LegSide::Callee
                        && self
                            .calls
                            .get(*call)
                            .is_some_and(|c| self.conn_serves(conn, c, *side))
                })
        });
        let Some((to_tag, _)) = to_tag.zip(in_dialog) else {
            self.refuse_from_trunk(now, conn, &msg);
            return;
        };
        // Checked only in its calls: outside them it learns nothing but 403.
        if let Err(refusal) = precheck(&msg, &method) {
            self.refuse(conn, &msg, &refusal, None);
            return;
        }
        self.on_in_dialog(now, conn, &to_tag, method, msg);
    }

    /// Refuse what a trunk's own connection may not carry: a new call, a dialog of
    /// another target, a request outside any dialog. The same answer, count and cut-off
    /// as for an unrecognised peer; the log line says it was a trunk.
    fn refuse_from_trunk(&mut self, now: Instant, conn: ConnId, msg: &SipMessage) {
        if self.log_now(now, super::CoreLog::TrunkRefused, "") {
            warn!(
                event = "trunk_request_refused",
                conn = %conn,
                method = msg.method().map_or("", |m| m.as_str()),
                "request on a trunk's own connection outside its calls refused with 403"
            );
        }
        self.refuse_counted(conn, msg);
    }

    fn refuse_unrecognised(&mut self, now: Instant, conn: ConnId, msg: &SipMessage) {
        if self.log_now(now, super::CoreLog::UnrecognisedPeer, "") {
            warn!(
                event = "recognition_refused",
                conn = %conn, "request from unrecognised peer refused with 403"
            );
        }
        self.refuse_counted(conn, msg);
    }

    /// 403 (reason `unrecognised_peer`), and the connection closed after
    /// [`super::MAX_REFUSALS_PER_CONNECTION`] of them.
    fn refuse_counted(&mut self, conn: ConnId, msg: &SipMessage) {
        self.refuse(conn, msg, &Refusal::UnrecognisedPeer, None);
        let close = match self.conns.get_mut(&conn) {
            Some(c) => {
                c.refusals += 1;
                c.refusals >= super::MAX_REFUSALS_PER_CONNECTION
            }
            None => false,
        };
        if close {
            warn!(
                event = "connection_closed_refusals",
                conn = %conn, "closing connection after repeated refusals"
            );
            self.outputs.push_back(Output::Close { conn });
        }
    }

    fn on_initial_invite(
        &mut self,
        now: Instant,
        conn: ConnId,
        listener: usize,
        tenant: TenantId,
        msg: SipMessage,
    ) {
        if self.parked_retransmission(conn, &msg) {
            debug!(conn = %conn, "retransmitted INVITE of a call awaiting admission absorbed");
            return;
        }
        let t = tenant.to_string();
        metrics::counter!("sbc_sip_calls_attempted_total", "tenant" => t.clone()).increment(1);
        // Everything that can refuse the call without a slot comes first.
        let Some(request) = self.accept_body(conn, &tenant, msg, true) else {
            return;
        };
        let msg = request.msg();
        let user = msg
            .request_uri()
            .and_then(check_request_uri_ok)
            .and_then(|u| u.user.map(str::to_string));
        let Some(route) = self.routes.lookup(&tenant, user.as_deref()).cloned() else {
            info!(tenant = %tenant, called = %self.cfg.redaction.number(user.as_deref().unwrap_or("")), "no route: 404");
            self.refuse(conn, msg, &Refusal::NoRoute, Some(&tenant));
            return;
        };
        let health = &self.health;
        let mut candidates: std::collections::VecDeque<_> = route
            .candidates(&mut self.rng, |t| health.usable(t, now))
            .into();
        let Some(first) = candidates.pop_front() else {
            // Every target is down or quarantined: refused before admission, like
            // Kamailio's dispatcher when no destination is left.
            metrics::counter!("sbc_sip_no_target_available_total", "tenant" => t.clone())
                .increment(1);
            info!(tenant = %tenant, "every route target is down or quarantined: 503");
            let refusal = Refusal::Unavailable(NO_TARGET_RETRY_AFTER, "no route target available");
            self.refuse(conn, msg, &refusal, Some(&tenant));
            return;
        };
        if self.drain.as_ref().is_some_and(|d| d.is_draining()) {
            metrics::counter!("sbc_admission_refused_total", "tenant" => t.clone(), "cause" => "draining").increment(1);
            info!(tenant = %tenant, "draining: new call refused 503");
            let refusal = Refusal::Unavailable(DRAIN_RETRY_AFTER, "gateway draining");
            self.refuse(conn, msg, &refusal, Some(&tenant));
            return;
        }
        let admitted = match self.admission.admit_call(&tenant, now) {
            Ok(a) => {
                if self.cluster.is_none() {
                    metrics::counter!("sbc_admission_admitted_total", "tenant" => t.clone())
                        .increment(1);
                }
                a
            }
            Err(refusal) => {
                metrics::counter!("sbc_admission_refused_total", "tenant" => t.clone(), "cause" => refusal.cause.as_str()).increment(1);
                info!(tenant = %tenant, cause = refusal.cause.as_str(), "call refused: 503");
                let r = Refusal::Unavailable(refusal.retry_after, refusal.cause.text());
                self.refuse(conn, msg, &r, Some(&tenant));
                return;
            }
        };
        // With a cluster, the call waits (parked, 100 Trying sent) for its cluster-wide
        // decision; the core goes on meanwhile (cluster_flow.rs).
        let invite = AdmittedInvite {
            conn,
            listener,
            tenant,
            route,
            first,
            candidates,
            user,
            request,
            admitted,
        };
        if let Err(invite) = self.park_for_cluster(invite) {
            self.open_admitted(now, *invite, false);
        }
    }

    /// Open a call that admission let in: both legs, 100 Trying (unless sent while it
    /// was parked), the INVITE relayed.
    pub(super) fn open_admitted(
        &mut self,
        now: Instant,
        invite: AdmittedInvite,
        trying_sent: bool,
    ) {
        let AdmittedInvite {
            conn,
            listener,
            tenant,
            route,
            first,
            candidates,
            user,
            request,
            admitted,
        } = invite;
        let msg = request.msg();
        let (Some(from), Some(to), Some(call_id), Some((cseq, _))) = (
            msg.header("from"),
            msg.header("to"),
            msg.call_id(),
            msg.cseq(),
        ) else {
            // The parser guarantees these on requests; answer rather than panic.
            self.refuse(conn, msg, &Refusal::MissingDialogHeaders, Some(&tenant));
            return;
        };
        let id = self.open_call(
            now,
            Opening {
                conn,
                listener,
                tenant: &tenant,
                route: &route,
                first,
                candidates,
                user: user.as_deref(),
                msg,
                from,
                to,
                call_id,
                cseq,
            },
            admitted,
        );
        // 100 Trying at once: the INVITE server transaction is ours now.
        if !trying_sent {
            let trying = response_to(msg, 100, "Trying", None);
            self.outputs.push_back(Output::Send { conn, msg: trying });
        }
        if !self.relay_request(now, id, LegSide::Caller, conn, request, true) {
            self.end_call(id, "refused");
        }
    }

    /// Hold a new admitted call: both legs' dialogs (the caller's from its INVITE, a fresh
    /// one towards the route target), its registry entry, its tags.
    fn open_call(&mut self, now: Instant, o: Opening<'_>, admitted: Admitted) -> CallRef {
        let Opening {
            conn,
            listener,
            tenant,
            route,
            first,
            candidates,
            user,
            msg,
            from,
            to,
            call_id,
            cseq,
        } = o;
        let caller = Leg {
            call_id: call_id.to_string(),
            local_tag: self.token(),
            remote_tag: tag(from).map(str::to_string),
            local_party: without_tag(to),
            remote_party: without_tag(from),
            next_cseq: 1,
            invite_cseq: cseq,
            remote_target: msg
                .header("contact")
                .and_then(contact_uri)
                .unwrap_or_default(),
            route_set: msg
                .header_values("record-route")
                .map(str::to_string)
                .collect(),
            conn: Some(conn),
        };
        let user_part = user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
        let callee = Leg {
            call_id: format!("{}{}", self.token(), self.token()),
            local_tag: self.token(),
            remote_tag: None,
            local_party: without_tag(from),
            remote_party: without_tag(to),
            next_cseq: 1,
            invite_cseq: 0,
            remote_target: first.request_uri(&user_part),
            route_set: Vec::new(),
            conn: None,
        };
        let rng = &mut self.rng;
        let id = self.calls.next_ref(|| rand::Rng::gen::<u64>(rng));
        let registry_id = self.registry.as_ref().and_then(|r| {
            let rid = r
                .register_as(
                    RegistryId::from_call_ref(id),
                    CallRecord {
                        tenant: tenant.clone(),
                        // Display only; no decision depends on it.
                        start: self.cfg.wall_clock.wall(now),
                        caller: from_user(from),
                        callee: user.unwrap_or_default().to_string(),
                        inbound_sip_call_id: caller.call_id.clone(),
                    },
                )
                .map_err(|e| warn!(error = %e, "call not recorded for the admin plane"))
                .ok()?;
            r.add_outbound_leg(&rid, callee.call_id.clone());
            r.set_media_ref(&rid, id.0);
            Some(rid)
        });
        let redaction = self.cfg.redaction;
        info!(
            tenant = %tenant,
            call = %id,
            sip_call_id_in = %redaction.call_id(&caller.call_id),
            sip_call_id_out = %redaction.call_id(&callee.call_id),
            target_addr = %first.host_port,
            called = %redaction.number(user.unwrap_or("")),
            "call admitted, relaying INVITE"
        );
        self.calls.insert(
            id,
            Call {
                tenant: tenant.clone(),
                admitted,
                caller,
                callee,
                target: first.target,
                target_addr: first.host_port.clone(),
                candidates,
                failover: route.failover.clone(),
                request_user: user_part,
                tries: 1,
                target_transport: first.transport,
                listener,
                state: CallState::Setup,
                media: OfferAnswer::default(),
                reliable: super::reliable::Reliable::new(msg),
                registry_id,
                ack_wait: None,
                invite_at: now,
            },
        );
        metrics::gauge!("sbc_sip_active_dialogs").set(self.calls.len() as f64);
        self.report_usage(tenant);
        id
    }

    /// The body policy's verdict on a request's body, before anything is forwarded: the
    /// request with its body classified (relayed from that, never classified again), or
    /// `None` when it was refused 415 (counted; `initial`: a failed call of `tenant`).
    fn accept_body(
        &mut self,
        conn: ConnId,
        tenant: &TenantId,
        msg: SipMessage,
        initial: bool,
    ) -> Option<Classified> {
        let policy = self.tenant_policy(tenant);
        match Classified::new(msg, &policy.bodies) {
            Ok(request) => Some(request),
            Err(refused) => {
                let r = refused.refusal;
                metrics::counter!("sbc_sip_bodies_refused_total", "tenant" => tenant.to_string(), "reason" => r.as_str()).increment(1);
                debug!(tenant = %tenant, reason = r.as_str(), "body refused: 415");
                let refusal =
                    Refusal::UnsupportedMediaType(r, policy.bodies.accept_header().to_string());
                let failed = initial.then_some(tenant);
                self.refuse(conn, &refused.msg, &refusal, failed);
                None
            }
        }
    }

    fn on_request_in_transaction(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: super::pairs::PairId,
        method: &Method,
        msg: SipMessage,
    ) {
        let Some(pair) = self.pairs.get_mut(id) else {
            return;
        };
        if *method == Method::Cancel && pair.method == Method::Invite {
            // RFC 3261 §9.2: 200 to the CANCEL, 487 to the INVITE, CANCEL downstream.
            let ok = response_to(&msg, 200, "OK", None);
            self.outputs.push_back(Output::Send { conn, msg: ok });
            if !pair.server.awaiting_final() {
                return;
            }
            let call = pair.call;
            self.respond_upstream_local(now, id, 487, "Request Terminated");
            if let Some(c) = self.calls.get_mut(call) {
                c.state = CallState::Abandoned;
            }
            self.cancel_downstream(now, id);
            info!(call = %call, "caller cancelled");
            return;
        }
        if *method == Method::Cancel {
            self.refuse(conn, &msg, &Refusal::NoTransaction, None);
            return;
        }
        if *method == Method::Ack && pair.method != Method::Invite {
            return;
        }
        if *method == Method::Ack && pair.server.state() == ServerState::Accepted {
            // An ACK for our 2xx that reused the INVITE's branch: it is end to end.
            let to_tag = msg.header("to").and_then(tag).map(str::to_string);
            if let Some(to_tag) = to_tag {
                self.on_in_dialog(now, conn, &to_tag, Method::Ack, msg);
            }
            return;
        }
        let is_ack = *method == Method::Ack;
        match pair.server.handle_input(is_ack) {
            ServerDisposition::Retransmit => {
                // The last response again; an INVITE not answered beyond our own 100
                // Trying gets another (RFC 3261 §17.2.1).
                let resp = match (&pair.last_response, pair.method == Method::Invite) {
                    (Some(r), _) => Some(r.clone()),
                    (None, true) => Some(response_to(&msg, 100, "Trying", None)),
                    (None, false) => None,
                };
                metrics::counter!("sbc_sip_retransmissions_absorbed_total").increment(1);
                if let Some(resp) = resp {
                    self.outputs.push_back(Output::Send { conn, msg: resp });
                }
            }
            ServerDisposition::AckAbsorbed | ServerDisposition::Absorb => {}
        }
        self.pairs.remove_if_finished(id);
    }

    fn on_in_dialog(
        &mut self,
        now: Instant,
        conn: ConnId,
        to_tag: &str,
        method: Method,
        msg: SipMessage,
    ) {
        let found = self
            .calls
            .by_dialog(to_tag, msg.call_id())
            .filter(|(call, side)| {
                self.calls
                    .get(*call)
                    .is_some_and(|c| self.conn_serves(conn, c, *side))
            });
        let Some((call, side)) = found else {
            if method != Method::Ack {
                self.refuse(conn, &msg, &Refusal::NoTransaction, None);
            }
            return;
        };
        // A caller that reconnected keeps its dialog: follow it to the new connection.
        if side == LegSide::Caller {
            if let Some(c) = self.calls.get_mut(call) {
                c.caller.conn = Some(conn);
            }
            // A restored call's caller leg: adopted by this connection.
            self.caller_adopted(call, conn);
        }
        match method {
            Method::Ack => self.relay_ack(now, call, side, &msg),
            Method::Cancel => self.refuse(conn, &msg, &Refusal::NoTransaction, None),
            _ => {
                // The call was found above: it has a tenant.
                let Some(tenant) = self.calls.get(call).map(|c| c.tenant.clone()) else {
                    return;
                };
                let Some(req) = self.accept_body(conn, &tenant, msg, false) else {
                    return;
                };
                let msg = req.msg();
                if method == Method::Invite {
                    if let (Some(c), Some((n, _))) = (self.calls.get_mut(call), msg.cseq()) {
                        c.leg_mut(side).invite_cseq = n;
                    }
                }
                if method == Method::Prack {
                    if let Err(refusal) = self.map_prack(call, side, msg) {
                        self.refuse(conn, msg, &refusal, None);
                        return;
                    }
                }
                self.relay_request(now, call, side, conn, req, false);
            }
        }
    }

    /// Build the request for the other leg and start the transaction pair. False if the
    /// request was refused instead (answered upstream; the caller ends an initial call).
    pub(super) fn relay_request(
        &mut self,
        now: Instant,
        call: CallRef,
        from: LegSide,
        conn: ConnId,
        req: Classified,
        initial: bool,
    ) -> bool {
        let msg = req.msg();
        let Some(method) = msg.method().cloned() else {
            return false;
        };
        let Some(server_key) = ServerKey::of(conn, msg) else {
            self.refuse(conn, msg, &Refusal::MissingDialogHeaders, None);
            return false;
        };
        let max_forwards = msg
            .max_forwards()
            .map(|m| m.saturating_sub(1))
            .unwrap_or(self.cfg.max_forwards);
        let body = match self.crossing(call, from, Carrier::Request(&method), &req.body()) {
            Ok(b) => b,
            Err(e) => {
                self.media_refused_request(call, conn, msg, &e, initial);
                return false;
            }
        };
        let client_branch = self.branch();
        let Some(c) = self.calls.get(call) else {
            return false;
        };
        let tenant = c.tenant.clone();
        let to_side = from.other();
        let (transport, advertised) = self.via_of(c, to_side);
        let contact = self.contact_on(c, to_side);
        let policy = self.tenant_policy(&tenant);
        let Some(c) = self.calls.get_mut(call) else {
            return false;
        };
        // A PRACK carries the RAck `reliable.rs` mapped onto this leg.
        let rack = (method == Method::Prack)
            .then(|| c.reliable.take_mapped_rack())
            .flatten();
        let leg = c.leg_mut(to_side);
        let cseq = if initial { 1 } else { leg.take_cseq() };
        if initial {
            leg.next_cseq = 2;
        }
        if method == Method::Invite {
            leg.invite_cseq = cseq;
        }
        let hop = Hop {
            transport,
            advertised: &advertised,
            branch: &client_branch,
            max_forwards,
        };
        let mut out = leg.request(method.clone(), cseq, hop);
        policy.headers.copy_across(msg, &mut out, to_side);
        if matches!(method, Method::Invite | Method::Update) {
            out.push_header("Contact", contact);
        }
        set_body(&mut out, body);
        if let Some(rack) = rack {
            out.push_header("RAck", rack);
        }
        let dest = match to_side {
            LegSide::Callee => Dest::Target(c.target),
            LegSide::Caller => Dest::Conn(leg.conn),
        };
        let try_deadline =
            (initial && !c.candidates.is_empty()).then(|| now + c.failover.try_timeout);
        let kind = if method == Method::Invite {
            TxKind::Invite
        } else {
            TxKind::NonInvite
        };
        // The transport each transaction runs over decides its retransmissions: the
        // request's own connection upstream; downstream the target's or the caller's,
        // after the size rule (a large request for UDP goes over TCP, unretransmitted).
        let server_reliable = self.conn_transport(conn).is_reliable();
        let client_transport = match dest {
            Dest::Target(_) => crate::transport::apply_size_rule(&mut out),
            Dest::Conn(Some(c)) => Some(self.conn_transport(c)),
            Dest::Conn(None) => None,
        };
        let client_reliable = client_transport.is_none_or(Transport::is_reliable);
        let pair = Pair {
            call,
            from,
            method,
            server_req: req.into_msg(),
            server_conn: conn,
            server_key,
            server: crate::transaction::ServerTransaction::new_over(kind, server_reliable),
            client: ClientTransaction::new_over(kind, now, &self.cfg.timers, client_reliable),
            client_req: out.clone(),
            client_branch,
            client_dest: dest,
            initial,
            cancel_pending: false,
            last_response: None,
            try_deadline,
            retired: false,
        };
        let id = self.pairs.insert(pair);
        self.arm_pair(id);
        if self.recording_after_relay(now, id, initial) {
            // `on_failure = "required"`: the callee's INVITE waits for the SRS.
            let held = super::recording::Held {
                pair: id,
                dest,
                msg: out,
            };
            self.recording_hold(call, held);
            return true;
        }
        self.send(dest, out);
        true
    }

    /// Recording's part once a request of the call went through media: the initial INVITE
    /// starts it (true: hold the callee's INVITE), a re-INVITE re-offers to the SRS.
    fn recording_after_relay(
        &mut self,
        now: Instant,
        id: super::pairs::PairId,
        initial: bool,
    ) -> bool {
        let Some(p) = self.pairs.get(id) else {
            return false;
        };
        let (call, from, method) = (p.call, p.from, p.method.clone());
        if method != Method::Invite {
            return false;
        }
        let req = p.server_req.clone();
        if initial && from == LegSide::Caller {
            return self.recording_begin(now, call, &req);
        }
        if !initial && !req.body().is_empty() {
            self.recording_media_changed(now, call, from, req.body());
        }
        false
    }

    /// Answer a request whose SDP media control refused (or that carried SDP where none
    /// may be), with a Warning naming why.
    fn media_refused_request(
        &mut self,
        call: CallRef,
        conn: ConnId,
        msg: &SipMessage,
        e: &BodyError,
        initial: bool,
    ) {
        let tenant = self.calls.get(call).map(|c| c.tenant.clone());
        let label = tenant.as_ref().map(ToString::to_string).unwrap_or_default();
        metrics::counter!("sbc_media_refused_total", "tenant" => label.clone(), "reason" => e.as_str()).increment(1);
        warn!(call = %call, tenant = %label, error = %e, "media refused the offer");
        let refusal = Refusal::Media(e.status(), e.to_string());
        let failed_tenant = if initial { tenant.as_ref() } else { None };
        self.refuse(conn, msg, &refusal, failed_tenant);
    }

    fn relay_ack(&mut self, now: Instant, call: CallRef, from: LegSide, msg: &SipMessage) {
        self.ack_arrived(call, from, msg.cseq().map(|(n, _)| n));
        let body = match self.crossing_body(call, from, Carrier::Ack, msg) {
            Ok(b) => b,
            Err(e) => {
                // An ACK cannot be refused: the call cannot go on without that answer.
                metrics::counter!("sbc_media_refused_total", "tenant" => "", "reason" => e.as_str()).increment(1);
                warn!(call = %call, error = %e, "media refused the answer in an ACK: ending the call");
                self.terminate(now, call, "media answer refused");
                return;
            }
        };
        // The ACK ends the INVITE's offer/answer, with an answer in it or not.
        if let Some(c) = self.calls.get_mut(call) {
            c.media.settle();
        }
        let max_forwards = msg
            .max_forwards()
            .map(|m| m.saturating_sub(1))
            .unwrap_or(self.cfg.max_forwards);
        self.send_ack(call, from.other(), max_forwards, Some(msg), body);
    }

    /// The ACK for the last INVITE on `to_side`'s leg (its INVITE CSeq), sent there with
    /// `body`; the headers the tenant's policy lets cross copied from `from_msg`.
    pub(super) fn send_ack(
        &mut self,
        call: CallRef,
        to_side: LegSide,
        max_forwards: u32,
        from_msg: Option<&SipMessage>,
        body: super::body_flow::Crossing,
    ) {
        let branch = self.branch();
        let Some(c) = self.calls.get(call) else {
            return;
        };
        let (transport, advertised) = self.via_of(c, to_side);
        let policy = self.tenant_policy(&c.tenant);
        let leg = c.leg(to_side);
        let hop = Hop {
            transport,
            advertised: &advertised,
            branch: &branch,
            max_forwards,
        };
        let mut ack = leg.request(Method::Ack, leg.invite_cseq, hop);
        if let Some(msg) = from_msg {
            policy.headers.copy_across(msg, &mut ack, to_side);
        }
        set_body(&mut ack, body);
        self.send_on(call, to_side, ack);
    }

    /// True if `conn` may carry traffic of `side` of `call`: the caller's leg only from a
    /// connection recognised as the call's tenant, the callee's leg only from a connection
    /// to the call's target or one the target opened to us from its address. Tenant
    /// isolation does not rest on tags and branches being unguessable.
    pub(super) fn conn_serves(&self, conn: ConnId, call: &Call, side: LegSide) -> bool {
        match (self.conns.get(&conn).map(|c| &c.kind), side) {
            (
                Some(ConnKind::Inbound {
                    tenant: Some(t), ..
                }),
                LegSide::Caller,
            ) => *t == call.tenant,
            (Some(ConnKind::Outbound { target }), LegSide::Callee) => *target == call.target,
            (Some(ConnKind::Trunk { targets, .. }), LegSide::Callee) => {
                targets.contains(&call.target)
            }
            _ => false,
        }
    }
}

/// The parsed Request-URI when it passed [`check_request_uri`] (precheck already refused
/// it otherwise).
fn check_request_uri_ok(uri: &str) -> Option<crate::message::SipUri<'_>> {
    check_request_uri(uri).ok()
}

/// Put `body` (Content-Type and bytes) on `out`, or no body.
pub(super) fn set_body(out: &mut SipMessage, body: super::body_flow::Crossing) {
    match body {
        Some((content_type, bytes)) => {
            out.push_header("Content-Type", content_type);
            out.set_body(bytes);
        }
        None => {
            out.remove_header("content-type");
            out.set_body(Vec::new());
        }
    }
}
