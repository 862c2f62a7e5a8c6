//! The back-to-back user agent, sans-IO.
//!
//! Owns: calls (one inbound leg A towards the tenant's platform, one outbound leg B towards
//! the tenant's route target), the pairing of server and client transactions, CSeq mapping
//! per leg, and topology hiding: nothing of one side's Via, Contact, Call-ID, Record-Route
//! or Route reaches the other side.
//! Must not: touch sockets, TLS or the clock. Drivers feed [`Input`]s with `now` and carry
//! out the [`Output`]s from [`B2bua::poll_output`].

pub mod topology;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sbc_core::admission::{Admission, Admitted};
use sbc_core::media::{CallRef, LegSide, MediaControl, MediaError, MediaEvent, MediaPolicy};
use sbc_core::redact::Redaction;
use sbc_core::registry::{
    CallId as RegistryId, CallRecord, CallRegistry, CallState as RegistryState, DrainState,
};
use sbc_core::tenant::TenantId;
use tracing::{debug, info, warn};

use crate::message::{
    default_reason, parse_name_addr, parse_uri, parse_via, response_to, tag, with_tag, Method,
    ParseError, Salvaged, SipMessage,
};
use crate::routing::{RouteTable, TargetId};
use crate::transaction::{
    ClientDisposition, ClientState, ClientTimeout, ClientTransaction, ServerDisposition,
    ServerState, ServerTransaction, TimerConfig, TxKind,
};

/// Identifies one transport connection.
pub type ConnId = u64;

/// The magic cookie that starts every RFC 3261 branch (§8.1.1.7).
const BRANCH_COOKIE: &str = "z9hG4bK";

/// Requests refused for an unrecognised peer before its connection is closed: enough for a
/// platform's OPTIONS ping and a retry to see the 403, few enough that a scanner is cut off.
pub const MAX_REFUSALS_PER_CONNECTION: u32 = 5;

/// Methods the gateway handles; sent in Allow on OPTIONS and 405 answers.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY";

/// Headers never copied from one leg to the other: the dialog and routing headers that
/// would reveal the other side's topology (Via, Contact, Call-ID, Record-Route, Route), the
/// ones the gateway rewrites per leg, and the reliable-provisional machinery (RFC 3262)
/// that the gateway does not relay.
const NOT_RELAYED: &[&str] = &[
    "via",
    "route",
    "record-route",
    "contact",
    "call-id",
    "from",
    "to",
    "cseq",
    "max-forwards",
    "content-length",
    "rseq",
    "rack",
    "path",
    "service-route",
];

/// Methods that exist only inside a dialog: outside one they get 481.
fn dialog_only(m: &Method) -> bool {
    matches!(
        m,
        Method::Bye | Method::Update | Method::Info | Method::Notify | Method::Prack
    )
}

/// The 400 answer to a request that did not parse, built from what could be salvaged;
/// `None` when there is nothing to address an answer to (no Via) or it was an ACK. The
/// reason phrase names the fault. Transport readers call this themselves so that garbage
/// never reaches the core.
pub fn malformed_response(error: &ParseError, salvaged: Option<&Salvaged>) -> Option<SipMessage> {
    let s = salvaged?;
    if s.vias.is_empty() || s.method == Method::Ack {
        return None;
    }
    let mut resp = SipMessage::new_response(error.status(), error.reason_phrase());
    for v in &s.vias {
        resp.push_header("Via", v.as_str());
    }
    for (name, v) in [
        ("From", &s.from),
        ("To", &s.to),
        ("Call-ID", &s.call_id),
        ("CSeq", &s.cseq),
    ] {
        if let Some(v) = v {
            resp.push_header(name, v.as_str());
        }
    }
    Some(resp)
}

/// The advertised `host:port` of a listener (empty if the index is unknown).
fn advertised_host(cfg: &B2buaConfig, listener: usize) -> &str {
    cfg.advertised
        .get(listener)
        .map(String::as_str)
        .unwrap_or("")
}

/// 503 Service Unavailable to `req` with Retry-After (whole seconds, at least 1) and a
/// Reason header naming the cause (RFC 3326): the answer to every limit or load refusal.
pub fn service_unavailable(req: &SipMessage, retry_after: Duration, cause: &str) -> SipMessage {
    let mut resp = response_to(req, 503, "Service Unavailable", Some(&random_token()));
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    resp.push_header("Retry-After", secs.to_string());
    resp.push_header("Reason", format!("SIP;cause=503;text=\"{cause}\""));
    resp
}

/// Lower-case long form of a header name given in lower case (RFC 3261 §7.3.3 compact
/// forms expanded).
fn long_name(lower: &str) -> &str {
    match lower {
        "v" => "via",
        "i" => "call-id",
        "f" => "from",
        "t" => "to",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        other => other,
    }
}

/// Which side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The caller: the tenant's platform that sent the INVITE to us.
    A,
    /// The callee: the tenant's route target we sent the INVITE to.
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// What a transport connection is.
#[derive(Debug, Clone)]
pub enum ConnKind {
    /// Accepted on a listener; `tenant` is the recognition result (None: unrecognised).
    Inbound {
        /// Recognised tenant.
        tenant: Option<TenantId>,
        /// Index of the listener in the config.
        listener: usize,
    },
    /// Opened by us to a route target.
    Outbound {
        /// The target.
        target: TargetId,
    },
}

/// Input events from the driver.
#[derive(Debug)]
pub enum Input {
    /// A connection is up (TLS handshake done).
    Connected {
        /// Connection.
        conn: ConnId,
        /// Its kind.
        kind: ConnKind,
    },
    /// A parsed message arrived.
    Message {
        /// Connection it arrived on.
        conn: ConnId,
        /// The message.
        msg: SipMessage,
    },
    /// A connection closed.
    Closed {
        /// Connection.
        conn: ConnId,
    },
    /// A message for a target could not be sent (connect, TLS handshake or write failed).
    SendFailed {
        /// Target.
        target: TargetId,
        /// The message that was not sent.
        msg: SipMessage,
    },
}

/// Actions for the driver.
#[derive(Debug)]
pub enum Output {
    /// Send on an existing connection (dropped by the driver if it is gone).
    Send {
        /// Connection.
        conn: ConnId,
        /// Message.
        msg: SipMessage,
    },
    /// Send to a route target over a reused (or new) outbound connection.
    SendToTarget {
        /// Target.
        target: TargetId,
        /// Message.
        msg: SipMessage,
    },
    /// Close a connection.
    Close {
        /// Connection.
        conn: ConnId,
    },
}

/// Static settings of the B2BUA core.
#[derive(Debug, Clone)]
pub struct B2buaConfig {
    /// Transaction timers.
    pub timers: TimerConfig,
    /// Max-Forwards for outbound requests that arrived without one.
    pub max_forwards: u32,
    /// Advertised `host:port` per listener index, used in Via, Contact and Call-IDs.
    pub advertised: Vec<String>,
    /// How called numbers appear in logs.
    pub redaction: Redaction,
}

/// Counters of the core's own life, for tests and the admin plane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct B2buaStats {
    /// Calls currently held (setup or established).
    pub active_calls: usize,
    /// Transaction pairs currently held.
    pub active_relays: usize,
}

#[derive(Debug)]
struct Leg {
    /// Call-ID on this leg.
    call_id: String,
    /// Our tag on this leg.
    local_tag: String,
    /// The peer's tag, once known.
    remote_tag: Option<String>,
    /// Our party (name-addr, no tag): the To of leg A, the From of leg B.
    local_party: String,
    /// The peer's party (name-addr, no tag).
    remote_party: String,
    /// Next CSeq for requests we send on this leg.
    next_cseq: u32,
    /// CSeq number of the last INVITE on this leg (ours on B, the peer's on A): ACK reuses it.
    invite_cseq: u32,
    /// Where requests on this leg go (the peer's Contact URI).
    remote_target: String,
    /// Route set of this leg (RFC 3261 §12.1).
    route_set: Vec<String>,
    /// Leg A: the connection the caller uses. Leg B: unused (pooled target connection).
    conn: Option<ConnId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// Initial INVITE in progress.
    Setup,
    /// 2xx relayed.
    Established,
    /// CANCEL, timeout or failure: waiting for the callee's final to clean up.
    Abandoned,
}

#[derive(Debug)]
struct Call {
    tenant: TenantId,
    /// Held for the call's life; dropping it releases the tenant's concurrent-call slot.
    /// The call's admission slot; released when the call is dropped.
    admitted: Admitted,
    a: Leg,
    b: Leg,
    target: TargetId,
    listener: usize,
    state: CallState,
    /// The side whose SDP offer awaits an answer.
    pending_offer: Option<Side>,
    /// The last answer through media: (SDP in, SDP out), so a 18x and the 200 carrying
    /// the same answer are rewritten once.
    last_answer: Option<(Vec<u8>, Vec<u8>)>,
    /// The call's id in the admin plane's registry.
    registry_id: Option<RegistryId>,
}

impl Call {
    fn leg(&self, side: Side) -> &Leg {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }
    fn leg_mut(&mut self, side: Side) -> &mut Leg {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }
}

/// A server transaction on one side paired with a client transaction on the other.
#[derive(Debug)]
struct Relay {
    call: u64,
    /// Side the request came from.
    from: Side,
    method: Method,
    server_req: SipMessage,
    server_conn: ConnId,
    server_branch: String,
    server: ServerTransaction,
    client: ClientTransaction,
    client_req: SipMessage,
    client_branch: String,
    /// True for the call's initial INVITE.
    initial: bool,
    /// CANCEL to send downstream once a provisional arrives (RFC 3261 §9.1).
    cancel_pending: bool,
    /// Last response sent upstream, for retransmitted requests.
    last_response: Option<SipMessage>,
}

/// The B2BUA state machine.
#[derive(Debug)]
pub struct B2bua {
    cfg: B2buaConfig,
    routes: Arc<RouteTable>,
    admission: Arc<Admission>,
    conns: HashMap<ConnId, ConnState>,
    calls: HashMap<u64, Call>,
    /// Our local tag → (call, side).
    by_tag: HashMap<String, (u64, Side)>,
    relays: HashMap<u64, Relay>,
    by_client_branch: HashMap<String, u64>,
    /// (connection, top Via branch) of requests we serve → relay. Keyed by connection too,
    /// so that one peer cannot reach another's transaction by reusing its branch.
    by_server_branch: HashMap<(ConnId, String), u64>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    outputs: VecDeque<Output>,
    next_id: u64,
    /// Media anchoring: every SDP body goes through it. `None`: SDP passes untouched.
    media: Option<Arc<dyn MediaControl>>,
    media_policies: HashMap<TenantId, MediaPolicy>,
    /// When media events are next polled.
    next_media_poll: Option<Instant>,
    /// Where calls are recorded for the admin plane.
    registry: Option<Arc<CallRegistry>>,
    /// Draining: new calls are refused 503, running ones go on.
    drain: Option<Arc<DrainState>>,
}

/// Retry-After for calls refused while draining: long enough for the platform to send its
/// retries to another gateway.
const DRAIN_RETRY_AFTER: Duration = Duration::from_secs(30);

/// How often media events (timeouts) are polled.
const MEDIA_POLL: Duration = Duration::from_millis(500);

fn leg_side(side: Side) -> LegSide {
    match side {
        Side::A => LegSide::Caller,
        Side::B => LegSide::Callee,
    }
}

/// True if `msg` carries an SDP body.
fn has_sdp(msg: &SipMessage) -> bool {
    !msg.body().is_empty()
        && msg
            .header("content-type")
            .is_some_and(|c| c.trim().to_ascii_lowercase().starts_with("application/sdp"))
}

#[derive(Debug)]
struct ConnState {
    kind: ConnKind,
    refusals: u32,
}

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "6xx",
    }
}

/// The value of a header with its `tag` parameter removed.
fn without_tag(value: &str) -> String {
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
fn from_user(from: &str) -> String {
    parse_name_addr(from)
        .and_then(|na| parse_uri(na.uri))
        .and_then(|u| u.user)
        .unwrap_or_default()
        .to_string()
}

/// The URI inside a Contact value (`<sip:x>` or bare).
fn contact_uri(value: &str) -> Option<String> {
    parse_name_addr(value).map(|na| na.uri.to_string())
}

impl B2bua {
    /// A B2BUA with the given settings, routes and admission control.
    pub fn new(cfg: B2buaConfig, routes: Arc<RouteTable>, admission: Arc<Admission>) -> Self {
        Self {
            cfg,
            routes,
            admission,
            conns: HashMap::new(),
            calls: HashMap::new(),
            by_tag: HashMap::new(),
            relays: HashMap::new(),
            by_client_branch: HashMap::new(),
            by_server_branch: HashMap::new(),
            timers: BinaryHeap::new(),
            outputs: VecDeque::new(),
            next_id: 1,
            media: None,
            media_policies: HashMap::new(),
            next_media_poll: None,
            registry: None,
            drain: None,
        }
    }

    /// Replace the tenants' media policies (config reload); running calls keep theirs
    /// until their next offer.
    pub fn set_media_policies(&mut self, policies: HashMap<TenantId, MediaPolicy>) {
        self.media_policies = policies;
    }

    /// Record calls in `registry` and honour `drain`.
    pub fn set_admin(&mut self, registry: Arc<CallRegistry>, drain: Arc<DrainState>) {
        self.registry = Some(registry);
        self.drain = Some(drain);
    }

    /// Anchor media: every SDP body goes through `media`, with each tenant's policy.
    pub fn set_media(
        &mut self,
        media: Arc<dyn MediaControl>,
        policies: HashMap<TenantId, MediaPolicy>,
    ) {
        self.media = Some(media);
        self.media_policies = policies;
    }

    /// Swap routes and admission (config reload). Running calls keep their slots.
    pub fn reconfigure(&mut self, routes: Arc<RouteTable>, admission: Arc<Admission>) {
        self.routes = routes;
        self.admission = admission;
    }

    /// The admission control in use.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The route table in use.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.clone()
    }

    /// Sizes of the core's tables.
    pub fn stats(&self) -> B2buaStats {
        B2buaStats {
            active_calls: self.calls.len(),
            active_relays: self.relays.len(),
        }
    }

    /// Next action for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Earliest instant at which [`B2bua::handle_timeout`] has something to do.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let relays = self.relay_timeout_at();
        match (relays, self.next_media_poll) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn relay_timeout_at(&mut self) -> Option<Instant> {
        // Drop heap entries of relays that are gone or whose deadline moved.
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            match self.relays.get(&id).and_then(Relay::deadline) {
                Some(d) if d == at => return Some(at),
                Some(d) if d < at => return Some(d),
                _ => {
                    self.timers.pop();
                }
            }
        }
        None
    }

    /// Feed one input.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Connected { conn, kind } => {
                self.conns.insert(conn, ConnState { kind, refusals: 0 });
            }
            Input::Closed { conn } => {
                self.conns.remove(&conn);
                self.abandon_setups_on(now, conn);
            }
            Input::Message { conn, msg } => {
                if msg.is_request() {
                    self.on_request(now, conn, msg);
                } else {
                    self.on_response(now, conn, msg);
                }
            }
            Input::SendFailed { target, msg } => self.on_send_failed(now, target, &msg),
        }
    }

    /// Fire expired timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.relay_timeout(now, id);
        }
        if let Some(media) = self.media.clone() {
            if self.next_media_poll.is_none_or(|t| t <= now) {
                self.next_media_poll = Some(now + MEDIA_POLL);
                for event in media.poll_events() {
                    match event {
                        MediaEvent::Timeout(call) => self.terminate(call.0, "media timeout"),
                    }
                }
            }
        }
    }

    /// End a call from our side: BYE on every leg with a dialog, then forget it.
    fn terminate(&mut self, cid: u64, why: &'static str) {
        let Some(call) = self.calls.get_mut(&cid) else {
            return;
        };
        let advertised = advertised_host(&self.cfg, call.listener);
        let mut byes = Vec::new();
        for side in [Side::A, Side::B] {
            let leg = call.leg_mut(side);
            if leg.remote_tag.is_none() {
                continue;
            }
            let cseq = leg.next_cseq;
            leg.next_cseq = cseq.wrapping_add(1);
            let mut bye = SipMessage::new_request(Method::Bye, leg.remote_target.clone());
            let branch = format!("{BRANCH_COOKIE}{}", random_token());
            build_dialog_headers(&mut bye, leg, advertised, &branch, self.cfg.max_forwards);
            bye.push_header("CSeq", format!("{cseq} BYE"));
            bye.push_header("Reason", format!("SIP;cause=200;text=\"{why}\""));
            byes.push((side, bye));
        }
        for (side, bye) in byes {
            if let Some(dest) = self.dest(cid, side) {
                self.send(dest, bye);
            }
        }
        warn!(
            call = cid,
            why, "call ended by the gateway: BYE sent on both legs"
        );
        self.end_call(cid, why);
    }

    /// Pass an SDP body through media control: an offer from `from`, or the answer to the
    /// other side's pending offer. `Ok(None)`: no media control, leave the body as it is.
    fn media_sdp(
        &mut self,
        cid: u64,
        from: Side,
        body: &[u8],
        may_offer: bool,
    ) -> Result<Option<Vec<u8>>, MediaError> {
        let Some(media) = self.media.clone() else {
            return Ok(None);
        };
        let Some(call) = self.calls.get_mut(&cid) else {
            return Err(MediaError::UnknownCall(CallRef(cid)));
        };
        if call.pending_offer == Some(from.other()) {
            if let Some((input, output)) = &call.last_answer {
                if input == body {
                    return Ok(Some(output.clone()));
                }
            }
            let out = media.answer(CallRef(cid), leg_side(from), body)?;
            call.last_answer = Some((body.to_vec(), out.clone()));
            return Ok(Some(out));
        }
        if !may_offer {
            return Err(MediaError::NotAcceptable(
                "SDP where no offer or answer is expected".to_string(),
            ));
        }
        let default_policy;
        let policy = match self.media_policies.get(&call.tenant) {
            Some(p) => p,
            None => {
                default_policy = MediaPolicy::default();
                &default_policy
            }
        };
        let out = media.offer(CallRef(cid), &call.tenant, leg_side(from), body, policy)?;
        call.pending_offer = Some(from);
        call.last_answer = None;
        Ok(Some(out))
    }

    /// The offer/answer exchange of the current transaction is complete.
    fn media_settled(&mut self, cid: u64) {
        if let Some(call) = self.calls.get_mut(&cid) {
            call.pending_offer = None;
        }
    }

    // ----- requests -----

    fn on_request(&mut self, now: Instant, conn: ConnId, msg: SipMessage) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        metrics::counter!("sbc_sip_requests_received_total", "method" => method_label(&method))
            .increment(1);
        let Some(kind) = self.conns.get(&conn).map(|c| c.kind.clone()) else {
            debug!(conn, "request on unknown connection dropped");
            return;
        };
        // Requests that belong to a transaction we already hold (retransmission, CANCEL,
        // ACK for a non-2xx final) are matched by the top Via branch.
        let branch = msg
            .header("via")
            .and_then(parse_via)
            .and_then(|v| v.branch)
            .map(str::to_string);
        if let Some(branch) = branch {
            if let Some(&rid) = self.by_server_branch.get(&(conn, branch)) {
                self.on_request_in_transaction(now, conn, rid, &method, msg);
                return;
            }
        }
        let to_tag = msg.header("to").and_then(tag).map(str::to_string);
        if let Some(to_tag) = to_tag {
            self.on_in_dialog(now, conn, &to_tag, method, msg);
            return;
        }
        match kind {
            ConnKind::Outbound { .. } => {
                // Targets answer calls; they do not place them through us.
                self.reply(conn, &msg, 403, "Forbidden (Not A Trunk Peer)");
            }
            ConnKind::Inbound { tenant, listener } => {
                let Some(tenant) = tenant else {
                    self.refuse_unrecognised(conn, &msg);
                    return;
                };
                match method {
                    Method::Invite => self.on_initial_invite(now, conn, listener, tenant, msg),
                    Method::Options => {
                        let mut resp = response_to(&msg, 200, "OK", Some(&random_token()));
                        resp.push_header("Allow", ALLOW);
                        resp.push_header("Accept", "application/sdp");
                        self.outputs.push_back(Output::Send { conn, msg: resp });
                    }
                    Method::Ack => debug!(conn, "stray ACK dropped"),
                    Method::Cancel => {
                        self.reply(conn, &msg, 481, "Call/Transaction Does Not Exist")
                    }
                    m if dialog_only(&m) => {
                        self.reply(conn, &msg, 481, "Call/Transaction Does Not Exist")
                    }
                    _ => {
                        let mut resp = response_to(&msg, 405, "Method Not Allowed", None);
                        resp.push_header("Allow", ALLOW);
                        self.outputs.push_back(Output::Send { conn, msg: resp });
                        metrics::counter!("sbc_sip_requests_refused_total", "reason" => "method_not_allowed").increment(1);
                    }
                }
            }
        }
    }

    fn refuse_unrecognised(&mut self, conn: ConnId, msg: &SipMessage) {
        metrics::counter!("sbc_sip_requests_refused_total", "reason" => "unrecognised_peer")
            .increment(1);
        if msg.method() != Some(&Method::Ack) {
            self.reply(conn, msg, 403, "Forbidden (Unrecognised Peer)");
        }
        let close = match self.conns.get_mut(&conn) {
            Some(c) => {
                c.refusals += 1;
                c.refusals >= MAX_REFUSALS_PER_CONNECTION
            }
            None => false,
        };
        warn!(
            event = "recognition_refused",
            conn, "request from unrecognised peer refused with 403"
        );
        if close {
            warn!(
                event = "connection_closed_refusals",
                conn, "closing connection after repeated refusals"
            );
            self.outputs.push_back(Output::Close { conn });
        }
    }

    fn reply(&mut self, conn: ConnId, req: &SipMessage, code: u16, reason: &str) {
        let resp = response_to(req, code, reason, Some(&random_token()));
        self.outputs.push_back(Output::Send { conn, msg: resp });
    }

    fn on_initial_invite(
        &mut self,
        now: Instant,
        conn: ConnId,
        listener: usize,
        tenant: TenantId,
        msg: SipMessage,
    ) {
        let t = tenant.to_string();
        metrics::counter!("sbc_sip_calls_attempted_total", "tenant" => t.clone()).increment(1);
        let fail = |code: u16| {
            metrics::counter!("sbc_sip_calls_failed_total", "tenant" => t.clone(), "class" => status_class(code)).increment(1);
        };
        let max_forwards = msg.max_forwards();
        if max_forwards == Some(0) {
            fail(483);
            self.reply(conn, &msg, 483, "Too Many Hops");
            return;
        }
        let user = msg
            .request_uri()
            .and_then(parse_uri)
            .and_then(|u| u.user.map(str::to_string));
        let Some(route) = self.routes.lookup(&tenant, user.as_deref()).cloned() else {
            fail(404);
            info!(tenant = %tenant, called = %self.cfg.redaction.number(user.as_deref().unwrap_or("")), "no route: 404");
            self.reply(conn, &msg, 404, "Not Found (No Route)");
            return;
        };
        if self.drain.as_ref().is_some_and(|d| d.is_draining()) {
            fail(503);
            metrics::counter!("sbc_admission_refused_total", "tenant" => t.clone(), "cause" => "draining").increment(1);
            info!(tenant = %tenant, "draining: new call refused 503");
            let resp = service_unavailable(&msg, DRAIN_RETRY_AFTER, "gateway draining");
            self.outputs.push_back(Output::Send { conn, msg: resp });
            return;
        }
        let admitted = match self.admission.admit_call(&tenant, now) {
            Ok(a) => {
                metrics::counter!("sbc_admission_admitted_total", "tenant" => t.clone())
                    .increment(1);
                a
            }
            Err(refusal) => {
                fail(503);
                metrics::counter!("sbc_admission_refused_total", "tenant" => t.clone(), "cause" => refusal.cause.as_str()).increment(1);
                info!(tenant = %tenant, cause = refusal.cause.as_str(), "call refused: 503");
                let resp = service_unavailable(&msg, refusal.retry_after, refusal.cause.text());
                self.outputs.push_back(Output::Send { conn, msg: resp });
                return;
            }
        };
        let (Some(from), Some(to), Some(call_id), Some((cseq, _))) = (
            msg.header("from"),
            msg.header("to"),
            msg.call_id(),
            msg.cseq(),
        ) else {
            // The parser guarantees these on requests; answer rather than panic.
            self.reply(conn, &msg, 400, "Bad Request (Missing Dialog Headers)");
            return;
        };
        let a = Leg {
            call_id: call_id.to_string(),
            local_tag: random_token(),
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
        let b = Leg {
            call_id: format!("{}{}", random_token(), random_token()),
            local_tag: random_token(),
            remote_tag: None,
            local_party: without_tag(from),
            remote_party: without_tag(to),
            next_cseq: 1,
            invite_cseq: 0,
            remote_target: format!("sips:{user_part}{}", route.host_port),
            route_set: Vec::new(),
            conn: None,
        };
        let call_id_num = self.alloc_id();
        let registry_id = self.registry.as_ref().and_then(|r| {
            let caller = from_user(from);
            let id = r
                .register(CallRecord {
                    tenant: tenant.clone(),
                    // Wall-clock time for display only; no decision depends on it.
                    start: std::time::SystemTime::now(),
                    caller,
                    callee: user.clone().unwrap_or_default(),
                    inbound_sip_call_id: a.call_id.clone(),
                })
                .map_err(|e| warn!(error = %e, "call not recorded for the admin plane"))
                .ok()?;
            r.add_outbound_leg(&id, b.call_id.clone());
            r.set_media_ref(&id, call_id_num);
            Some(id)
        });
        info!(tenant = %tenant, call = call_id_num, called = %self.cfg.redaction.number(user.as_deref().unwrap_or("")), "call admitted, relaying INVITE");
        self.by_tag
            .insert(a.local_tag.clone(), (call_id_num, Side::A));
        self.by_tag
            .insert(b.local_tag.clone(), (call_id_num, Side::B));
        self.calls.insert(
            call_id_num,
            Call {
                tenant: tenant.clone(),
                admitted,
                a,
                b,
                target: route.target,
                listener,
                state: CallState::Setup,
                pending_offer: None,
                last_answer: None,
                registry_id,
            },
        );
        metrics::gauge!("sbc_sip_active_dialogs").set(self.calls.len() as f64);
        self.report_usage(&tenant);
        // 100 Trying at once: the INVITE server transaction is ours now.
        let trying = response_to(&msg, 100, "Trying", None);
        self.outputs.push_back(Output::Send { conn, msg: trying });
        self.relay_request(now, call_id_num, Side::A, conn, msg, true);
    }

    fn on_request_in_transaction(
        &mut self,
        now: Instant,
        conn: ConnId,
        rid: u64,
        method: &Method,
        msg: SipMessage,
    ) {
        let Some(relay) = self.relays.get_mut(&rid) else {
            return;
        };
        if *method == Method::Cancel && relay.method == Method::Invite {
            // RFC 3261 §9.2: 200 to the CANCEL, 487 to the INVITE, CANCEL downstream.
            let ok = response_to(&msg, 200, "OK", None);
            self.outputs.push_back(Output::Send { conn, msg: ok });
            if !relay.server.awaiting_final() {
                return;
            }
            let call = relay.call;
            self.respond_upstream_local(now, rid, 487, "Request Terminated");
            if let Some(c) = self.calls.get_mut(&call) {
                c.state = CallState::Abandoned;
            }
            self.cancel_downstream(now, rid);
            info!(call, "caller cancelled");
            return;
        }
        if *method == Method::Cancel {
            self.reply(conn, &msg, 481, "Call/Transaction Does Not Exist");
            return;
        }
        if *method == Method::Ack && relay.method != Method::Invite {
            return;
        }
        if *method == Method::Ack && relay.server.state() == ServerState::Accepted {
            // An ACK for our 2xx that reused the INVITE's branch: it is end to end.
            let to_tag = msg.header("to").and_then(tag).map(str::to_string);
            if let Some(to_tag) = to_tag {
                self.on_in_dialog(now, conn, &to_tag, Method::Ack, msg);
            }
            return;
        }
        let is_ack = *method == Method::Ack;
        match relay.server.handle_input(is_ack) {
            ServerDisposition::Retransmit => {
                if let Some(resp) = relay.last_response.clone() {
                    self.outputs.push_back(Output::Send { conn, msg: resp });
                }
            }
            ServerDisposition::AckAbsorbed | ServerDisposition::Absorb => {}
        }
        self.maybe_remove_relay(rid);
    }

    fn on_in_dialog(
        &mut self,
        now: Instant,
        conn: ConnId,
        to_tag: &str,
        method: Method,
        msg: SipMessage,
    ) {
        let found = self.by_tag.get(to_tag).copied().filter(|(cid, side)| {
            self.calls.get(cid).is_some_and(|c| {
                Some(c.leg(*side).call_id.as_str()) == msg.call_id()
                    && self.conn_serves(conn, c, *side)
            })
        });
        let Some((cid, side)) = found else {
            if method != Method::Ack {
                self.reply(conn, &msg, 481, "Call/Transaction Does Not Exist");
            }
            return;
        };
        // A caller that reconnected keeps its dialog: follow it to the new connection.
        if side == Side::A {
            if let Some(c) = self.calls.get_mut(&cid) {
                c.a.conn = Some(conn);
            }
        }
        match method {
            Method::Ack => self.relay_ack(cid, side, &msg),
            Method::Cancel => self.reply(conn, &msg, 481, "Call/Transaction Does Not Exist"),
            _ => {
                if method == Method::Invite {
                    if let (Some(c), Some((n, _))) = (self.calls.get_mut(&cid), msg.cseq()) {
                        c.leg_mut(side).invite_cseq = n;
                    }
                }
                if msg.max_forwards() == Some(0) {
                    self.reply(conn, &msg, 483, "Too Many Hops");
                    return;
                }
                self.relay_request(now, cid, side, conn, msg, false);
            }
        }
    }

    /// Build the request for the other leg and start the transaction pair.
    fn relay_request(
        &mut self,
        now: Instant,
        cid: u64,
        from: Side,
        conn: ConnId,
        msg: SipMessage,
        initial: bool,
    ) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        let Some(server_branch) = msg
            .header("via")
            .and_then(parse_via)
            .and_then(|v| v.branch)
            .map(str::to_string)
        else {
            self.reply(conn, &msg, 400, "Bad Request (Via Without Branch)");
            return;
        };
        let max_forwards = msg
            .max_forwards()
            .map(|m| m.saturating_sub(1))
            .unwrap_or(self.cfg.max_forwards);
        let mut body = msg.body().to_vec();
        if has_sdp(&msg) && matches!(method, Method::Invite | Method::Update) {
            match self.media_sdp(cid, from, msg.body(), true) {
                Ok(Some(sdp)) => body = sdp,
                Ok(None) => {}
                Err(e) => {
                    let tenant = self
                        .calls
                        .get(&cid)
                        .map(|c| c.tenant.to_string())
                        .unwrap_or_default();
                    metrics::counter!("sbc_media_refused_total", "tenant" => tenant.clone(), "reason" => e.as_str()).increment(1);
                    warn!(call = cid, tenant = %tenant, error = %e, "media refused the offer");
                    let code = e.sip_status();
                    let mut resp =
                        response_to(&msg, code, default_reason(code), Some(&random_token()));
                    resp.push_header("Warning", format!("399 sbc-edge \"{e}\""));
                    self.outputs.push_back(Output::Send { conn, msg: resp });
                    if initial {
                        metrics::counter!("sbc_sip_calls_failed_total", "tenant" => tenant, "class" => status_class(code)).increment(1);
                        self.end_call(cid, "media refused");
                    }
                    return;
                }
            }
        }
        let client_branch = format!("{BRANCH_COOKIE}{}", random_token());
        let (out, dest) = {
            let Some(call) = self.calls.get_mut(&cid) else {
                return;
            };
            let advertised = advertised_host(&self.cfg, call.listener);
            let to_side = from.other();
            let leg = call.leg_mut(to_side);
            let cseq = if initial { 1 } else { leg.next_cseq };
            leg.next_cseq = cseq.wrapping_add(1);
            if method == Method::Invite {
                leg.invite_cseq = cseq;
            }
            let mut out = SipMessage::new_request(method.clone(), leg.remote_target.clone());
            build_dialog_headers(&mut out, leg, advertised, &client_branch, max_forwards);
            out.push_header("CSeq", format!("{cseq} {}", method.as_str()));
            copy_end_to_end(&msg, &mut out);
            if matches!(method, Method::Invite | Method::Update) {
                out.push_header("Contact", format!("<sips:sbc@{advertised}>"));
            }
            out.set_body(body);
            let dest = match to_side {
                Side::B => Dest::Target(call.target),
                Side::A => Dest::Conn(leg.conn),
            };
            (out, dest)
        };
        let kind = if method == Method::Invite {
            TxKind::Invite
        } else {
            TxKind::NonInvite
        };
        let rid = self.alloc_id();
        let relay = Relay {
            call: cid,
            from,
            method,
            server_req: msg,
            server_conn: conn,
            server_branch: server_branch.clone(),
            server: ServerTransaction::new(kind),
            client: ClientTransaction::new(kind, now, &self.cfg.timers),
            client_req: out.clone(),
            client_branch: client_branch.clone(),
            initial,
            cancel_pending: false,
            last_response: None,
        };
        if let Some(d) = relay.deadline() {
            self.timers.push(Reverse((d, rid)));
        }
        self.relays.insert(rid, relay);
        self.by_client_branch.insert(client_branch, rid);
        self.by_server_branch.insert((conn, server_branch), rid);
        self.send(dest, out);
    }

    fn relay_ack(&mut self, cid: u64, from: Side, msg: &SipMessage) {
        let mut body = msg.body().to_vec();
        if has_sdp(msg) {
            match self.media_sdp(cid, from, msg.body(), false) {
                Ok(Some(sdp)) => body = sdp,
                Ok(None) => {}
                Err(e) => {
                    // An ACK cannot be refused: the call goes on without that answer.
                    metrics::counter!("sbc_media_refused_total", "tenant" => "", "reason" => e.as_str()).increment(1);
                    warn!(call = cid, error = %e, "media refused the answer in an ACK: ending the call");
                    self.terminate(cid, "media answer refused");
                    return;
                }
            }
            self.media_settled(cid);
        }
        let Some(call) = self.calls.get(&cid) else {
            return;
        };
        let to_side = from.other();
        let leg = call.leg(to_side);
        let advertised = advertised_host(&self.cfg, call.listener);
        let branch = format!("{BRANCH_COOKIE}{}", random_token());
        let mf = msg
            .max_forwards()
            .map(|m| m.saturating_sub(1))
            .unwrap_or(self.cfg.max_forwards);
        let mut ack = SipMessage::new_request(Method::Ack, leg.remote_target.clone());
        build_dialog_headers(&mut ack, leg, advertised, &branch, mf);
        ack.push_header("CSeq", format!("{} ACK", leg.invite_cseq));
        copy_end_to_end(msg, &mut ack);
        ack.set_body(body);
        let dest = match to_side {
            Side::B => Dest::Target(call.target),
            Side::A => Dest::Conn(leg.conn),
        };
        self.send(dest, ack);
    }

    // ----- responses -----

    fn on_response(&mut self, now: Instant, conn: ConnId, msg: SipMessage) {
        let Some(code) = msg.status() else { return };
        let branch = msg
            .header("via")
            .and_then(parse_via)
            .and_then(|v| v.branch)
            .map(str::to_string);
        let Some(rid) = branch.and_then(|b| self.by_client_branch.get(&b).copied()) else {
            metrics::counter!("sbc_sip_messages_rejected_total", "reason" => "stray_response")
                .increment(1);
            debug!(code, "response matching no transaction dropped");
            return;
        };
        let Some(relay) = self.relays.get(&rid) else {
            return;
        };
        let right_conn = self
            .calls
            .get(&relay.call)
            .is_some_and(|c| self.conn_serves(conn, c, relay.from.other()));
        if msg.cseq().map(|c| c.1).as_ref() != Some(&relay.method) || !right_conn {
            // The 200 for our CANCEL carries the INVITE's branch; it is not the INVITE's
            // answer. Responses from the wrong peer are dropped too.
            debug!(
                code,
                "response not for this transaction's request: absorbed"
            );
            return;
        }
        let Some(relay) = self.relays.get_mut(&rid) else {
            return;
        };
        let disposition = relay.client.handle_input(now, code, &self.cfg.timers);
        if let Some(d) = relay.deadline() {
            self.timers.push(Reverse((d, rid)));
        }
        let (cid, from, method, initial, cancel_pending) = (
            relay.call,
            relay.from,
            relay.method.clone(),
            relay.initial,
            relay.cancel_pending,
        );
        if disposition == ClientDisposition::Absorb {
            self.maybe_remove_relay(rid);
            return;
        }
        if disposition == ClientDisposition::PassAndAck {
            self.ack_non_2xx(rid, &msg);
        }
        let to_side = from.other();
        // Learn the dialog on the downstream leg.
        if method == Method::Invite && code > 100 {
            if let Some(call) = self.calls.get_mut(&cid) {
                let leg = call.leg_mut(to_side);
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
        }
        if code < 200 && code > 100 && cancel_pending {
            self.cancel_downstream(now, rid);
        }
        let server_final_sent = self
            .relays
            .get(&rid)
            .is_some_and(|r| !r.server.awaiting_final());
        let call_state = self.calls.get(&cid).map(|c| c.state);
        if method == Method::Invite && server_final_sent {
            // Upstream already has its answer (cancelled or timed out): a late 2xx is
            // acknowledged and hung up (RFC 3261 §15), anything else is only absorbed.
            if (200..300).contains(&code) {
                self.ack_and_bye_late_answer(cid, to_side, &msg);
            }
            if code >= 200 {
                self.end_call(cid, "abandoned");
            }
            self.maybe_remove_relay(rid);
            return;
        }
        if code == 100 {
            // 100 Trying is hop-by-hop; we sent our own.
            self.maybe_remove_relay(rid);
            return;
        }
        let body = match self.media_response_body(rid, &msg) {
            Ok(body) => body,
            Err(e) if initial && method == Method::Invite && (200..300).contains(&code) => {
                // The callee's answer cannot be anchored: hang it up and refuse the call
                // upstream rather than pass on an answer without media.
                warn!(call = cid, error = %e, "media refused the callee's answer: BYE downstream, refused upstream");
                self.ack_and_bye_late_answer(cid, to_side, &msg);
                let status = e.sip_status();
                self.respond_upstream_local(now, rid, status, default_reason(status));
                self.end_call(cid, "media answer refused");
                self.maybe_remove_relay(rid);
                return;
            }
            // Elsewhere (18x, re-INVITE, UPDATE) the response goes on without the SDP it
            // carried: passing it on would leak the other side's addresses.
            Err(_) => None,
        };
        let Some(resp) = self.build_upstream_response(rid, &msg, body) else {
            self.maybe_remove_relay(rid);
            return;
        };
        self.respond_upstream(now, rid, resp);
        if let Some(call) = self.calls.get_mut(&cid) {
            let t = call.tenant.to_string();
            if initial && code >= 200 {
                call.admitted.answered();
                if (200..300).contains(&code) {
                    metrics::counter!("sbc_sip_calls_answered_total", "tenant" => t).increment(1);
                } else {
                    metrics::counter!("sbc_sip_calls_failed_total", "tenant" => t, "class" => status_class(code)).increment(1);
                }
            }
        }
        if initial && code >= 200 {
            if (200..300).contains(&code) && call_state == Some(CallState::Setup) {
                if let Some(c) = self.calls.get_mut(&cid) {
                    c.state = CallState::Established;
                    if let (Some(r), Some(id)) = (&self.registry, &c.registry_id) {
                        r.set_state(id, RegistryState::Established);
                    }
                    info!(call = cid, "call established");
                }
            } else if code >= 300 {
                self.end_call(cid, "rejected");
            }
        }
        if method == Method::Bye && code >= 200 {
            self.end_call(cid, "bye");
        }
        self.maybe_remove_relay(rid);
    }

    fn build_upstream_response(
        &mut self,
        rid: u64,
        down: &SipMessage,
        body: Option<Vec<u8>>,
    ) -> Option<SipMessage> {
        let relay = self.relays.get(&rid)?;
        let call = self.calls.get(&relay.call)?;
        let code = down.status()?;
        let up_leg = call.leg(relay.from);
        let mut resp = response_to(
            &relay.server_req,
            code,
            down.reason().unwrap_or(default_reason(code)),
            Some(&up_leg.local_tag),
        );
        copy_end_to_end(down, &mut resp);
        if (101..300).contains(&code) && matches!(relay.method, Method::Invite | Method::Update) {
            let advertised = advertised_host(&self.cfg, call.listener);
            resp.push_header("Contact", format!("<sips:sbc@{advertised}>"));
        }
        match body {
            Some(b) => resp.set_body(b),
            None => {
                // SDP that media could not take is never passed on: it would carry the
                // other side's addresses.
                resp.remove_header("content-type");
            }
        }
        Some(resp)
    }

    /// The body to relay upstream for response `down` of relay `rid`: SDP through media
    /// (the answer to the requester's offer, or a late offer in a 2xx); `Ok(None)` to drop
    /// it; `Err` when media refused it.
    fn media_response_body(
        &mut self,
        rid: u64,
        down: &SipMessage,
    ) -> Result<Option<Vec<u8>>, MediaError> {
        let Some((cid, from, method)) = self
            .relays
            .get(&rid)
            .map(|relay| (relay.call, relay.from, relay.method.clone()))
        else {
            return Ok(None);
        };
        let code = down.status().unwrap_or(0);
        if !has_sdp(down) || self.media.is_none() {
            return Ok(Some(down.body().to_vec()));
        }
        let reliable =
            matches!(method, Method::Invite | Method::Update) && (180..300).contains(&code);
        if !reliable {
            return Ok(None);
        }
        let responder = from.other();
        let may_offer = method == Method::Invite && (200..300).contains(&code);
        match self.media_sdp(cid, responder, down.body(), may_offer) {
            Ok(sdp) => {
                if (200..300).contains(&code)
                    && self.calls.get(&cid).and_then(|c| c.pending_offer) == Some(from)
                {
                    self.media_settled(cid);
                }
                Ok(sdp)
            }
            Err(e) => {
                let tenant = self
                    .calls
                    .get(&cid)
                    .map(|c| c.tenant.to_string())
                    .unwrap_or_default();
                metrics::counter!("sbc_media_refused_total", "tenant" => tenant, "reason" => e.as_str()).increment(1);
                warn!(call = cid, code, error = %e, "media refused SDP in a response");
                Err(e)
            }
        }
    }

    /// Send a response upstream through the relay's server transaction.
    fn respond_upstream(&mut self, now: Instant, rid: u64, resp: SipMessage) {
        let Some(relay) = self.relays.get_mut(&rid) else {
            return;
        };
        let code = resp.status().unwrap_or(500);
        if !relay.server.send_response(now, code, &self.cfg.timers) {
            return;
        }
        if let Some(d) = relay.deadline() {
            self.timers.push(Reverse((d, rid)));
        }
        relay.last_response = Some(resp.clone());
        let conn = relay.server_conn;
        self.outputs.push_back(Output::Send { conn, msg: resp });
    }

    /// Answer upstream with a locally generated final (487, 408, 503).
    fn respond_upstream_local(&mut self, now: Instant, rid: u64, code: u16, reason: &str) {
        let Some(relay) = self.relays.get(&rid) else {
            return;
        };
        let local_tag = self
            .calls
            .get(&relay.call)
            .map(|c| c.leg(relay.from).local_tag.clone());
        let resp = response_to(&relay.server_req, code, reason, local_tag.as_deref());
        if relay.initial {
            if let Some(call) = self.calls.get(&relay.call) {
                metrics::counter!("sbc_sip_calls_failed_total", "tenant" => call.tenant.to_string(), "class" => status_class(code)).increment(1);
            }
        }
        self.respond_upstream(now, rid, resp);
    }

    /// CANCEL the downstream INVITE now, or once it has heard a provisional.
    fn cancel_downstream(&mut self, now: Instant, rid: u64) {
        let Some(relay) = self.relays.get_mut(&rid) else {
            return;
        };
        if !relay.client.heard_provisional() {
            relay.cancel_pending = true;
            return;
        }
        relay.cancel_pending = false;
        // The INVITE must now end within 64·T1 (RFC 3261 §9.1).
        relay.client.cancel_sent(now);
        if let Some(d) = relay.deadline() {
            self.timers.push(Reverse((d, rid)));
        }
        let Some(relay) = self.relays.get(&rid) else {
            return;
        };
        let req = &relay.client_req;
        let mut cancel =
            SipMessage::new_request(Method::Cancel, req.request_uri().unwrap_or_default());
        for name in ["Via", "From", "To", "Call-ID"] {
            if let Some(v) = req.header(name) {
                cancel.push_header(name, v);
            }
        }
        cancel.push_header("Max-Forwards", self.cfg.max_forwards.to_string());
        if let Some((n, _)) = req.cseq() {
            cancel.push_header("CSeq", format!("{n} CANCEL"));
        }
        let (cid, to_side) = (relay.call, relay.from.other());
        // The CANCEL's own 200 comes back with the INVITE's branch and method CANCEL; it is
        // absorbed as a stray response (the INVITE's final is what matters).
        if let Some(dest) = self.dest(cid, to_side) {
            self.send(dest, cancel);
        }
    }

    /// Hop-by-hop ACK for a non-2xx final to our INVITE (RFC 3261 §17.1.1.3).
    fn ack_non_2xx(&mut self, rid: u64, resp: &SipMessage) {
        let Some(relay) = self.relays.get(&rid) else {
            return;
        };
        let req = &relay.client_req;
        let mut ack = SipMessage::new_request(Method::Ack, req.request_uri().unwrap_or_default());
        if let Some(v) = req.header("via") {
            ack.push_header("Via", v);
        }
        ack.push_header("Max-Forwards", self.cfg.max_forwards.to_string());
        for name in ["From", "Call-ID"] {
            if let Some(v) = req.header(name) {
                ack.push_header(name, v);
            }
        }
        if let Some(v) = resp.header("to") {
            ack.push_header("To", v);
        }
        if let Some((n, _)) = req.cseq() {
            ack.push_header("CSeq", format!("{n} ACK"));
        }
        for r in req.header_values("route") {
            ack.push_header("Route", r);
        }
        let (cid, to_side) = (relay.call, relay.from.other());
        if let Some(dest) = self.dest(cid, to_side) {
            self.send(dest, ack);
        }
    }

    /// A 2xx arrived after upstream was already answered: ACK it and hang up.
    fn ack_and_bye_late_answer(&mut self, cid: u64, side: Side, resp: &SipMessage) {
        let Some(call) = self.calls.get_mut(&cid) else {
            return;
        };
        let advertised = advertised_host(&self.cfg, call.listener);
        let leg = call.leg_mut(side);
        if let Some(t) = resp.header("to").and_then(tag) {
            leg.remote_tag = Some(t.to_string());
        }
        if let Some(uri) = resp.header("contact").and_then(contact_uri) {
            leg.remote_target = uri;
        }
        let mut ack = SipMessage::new_request(Method::Ack, leg.remote_target.clone());
        let branch = format!("{BRANCH_COOKIE}{}", random_token());
        build_dialog_headers(&mut ack, leg, advertised, &branch, self.cfg.max_forwards);
        ack.push_header("CSeq", format!("{} ACK", leg.invite_cseq));
        let cseq = leg.next_cseq;
        leg.next_cseq = cseq.wrapping_add(1);
        let mut bye = SipMessage::new_request(Method::Bye, leg.remote_target.clone());
        let branch = format!("{BRANCH_COOKIE}{}", random_token());
        build_dialog_headers(&mut bye, leg, advertised, &branch, self.cfg.max_forwards);
        bye.push_header("CSeq", format!("{cseq} BYE"));
        if let Some(dest) = self.dest(cid, side) {
            self.send(dest, ack);
            self.send(dest, bye);
        }
        info!(
            call = cid,
            "late answer after cancel or timeout: ACK and BYE sent"
        );
    }

    // ----- timers and failures -----

    fn relay_timeout(&mut self, now: Instant, rid: u64) {
        let Some(relay) = self.relays.get_mut(&rid) else {
            return;
        };
        let client_result = relay.client.handle_timeout(now);
        let missed_ack = relay.server.handle_timeout(now);
        if let Some(d) = relay.deadline() {
            self.timers.push(Reverse((d, rid)));
        }
        let (cid, method) = (relay.call, relay.method.clone());
        if missed_ack {
            warn!(call = cid, "timer H: ACK for a non-2xx final never arrived");
        }
        match client_result {
            Some(ClientTimeout::NoResponse) => {
                metrics::counter!("sbc_sip_transaction_timeouts_total", "timer" => if method == Method::Invite { "B" } else { "F" }).increment(1);
                warn!(call = cid, method = %method, "no response from the other side: 408");
                self.respond_upstream_local(now, rid, 408, "Request Timeout");
                if method == Method::Invite || method == Method::Bye {
                    let established = self
                        .calls
                        .get(&cid)
                        .is_some_and(|c| c.state == CallState::Established);
                    if method == Method::Bye || !established {
                        self.end_call(cid, "timeout");
                    }
                }
            }
            Some(ClientTimeout::RingingTooLong) => {
                metrics::counter!("sbc_sip_transaction_timeouts_total", "timer" => "ringing")
                    .increment(1);
                warn!(call = cid, "maximum ringing time reached: CANCEL and 408");
                self.respond_upstream_local(now, rid, 408, "Request Timeout (Ringing Too Long)");
                if let Some(c) = self.calls.get_mut(&cid) {
                    c.state = CallState::Abandoned;
                }
                self.cancel_downstream(now, rid);
            }
            None => {}
        }
        self.maybe_remove_relay(rid);
    }

    fn on_send_failed(&mut self, now: Instant, target: TargetId, msg: &SipMessage) {
        let branch = msg
            .header("via")
            .and_then(parse_via)
            .and_then(|v| v.branch)
            .map(str::to_string);
        let Some(rid) = branch.and_then(|b| self.by_client_branch.get(&b).copied()) else {
            return;
        };
        let is_request_of_relay = self
            .relays
            .get(&rid)
            .is_some_and(|r| msg.method() == Some(&r.method));
        if !is_request_of_relay {
            return;
        }
        warn!(target = target.0, "route target unreachable: 503");
        metrics::counter!("sbc_sip_target_unreachable_total").increment(1);
        let cid = self.relays.get(&rid).map(|r| r.call);
        self.respond_upstream_local(now, rid, 503, "Service Unavailable (Target Unreachable)");
        if let Some(r) = self.relays.get_mut(&rid) {
            r.client.abort();
        }
        if let Some(cid) = cid {
            let established = self
                .calls
                .get(&cid)
                .is_some_and(|c| c.state == CallState::Established);
            if !established || msg.method() == Some(&Method::Bye) {
                self.end_call(cid, "target_unreachable");
            }
        }
        self.maybe_remove_relay(rid);
    }

    /// A caller's connection closed: its calls still ringing can never be answered to it,
    /// so they are cancelled downstream (answered calls stay; the caller may reconnect).
    fn abandon_setups_on(&mut self, now: Instant, conn: ConnId) {
        let ringing: Vec<(u64, u64)> = self
            .relays
            .iter()
            .filter(|(_, r)| r.initial && r.server_conn == conn && r.server.awaiting_final())
            .map(|(rid, r)| (*rid, r.call))
            .collect();
        for (rid, cid) in ringing {
            info!(
                call = cid,
                "caller's connection closed during setup: cancelling"
            );
            if let Some(r) = self.relays.get_mut(&rid) {
                // Nobody to answer upstream: mark the server side final without sending.
                r.server.send_response(now, 487, &self.cfg.timers);
            }
            if let Some(c) = self.calls.get_mut(&cid) {
                c.state = CallState::Abandoned;
            }
            self.cancel_downstream(now, rid);
            self.maybe_remove_relay(rid);
        }
    }

    // ----- helpers -----

    /// Per-tenant usage gauges (calls and pending INVITEs against their limits).
    fn report_usage(&self, tenant: &TenantId) {
        if let Some(u) = self.admission.usage(tenant) {
            let t = tenant.to_string();
            metrics::gauge!("sbc_tenant_active_calls", "tenant" => t.clone())
                .set(f64::from(u.active_calls));
            metrics::gauge!("sbc_tenant_pending_invites", "tenant" => t)
                .set(f64::from(u.pending_invites));
        }
    }

    fn end_call(&mut self, cid: u64, why: &'static str) {
        if let Some(call) = self.calls.remove(&cid) {
            if let Some(media) = &self.media {
                media.delete(CallRef(cid));
            }
            if let (Some(r), Some(id)) = (&self.registry, &call.registry_id) {
                r.remove(id);
            }
            self.by_tag.remove(&call.a.local_tag);
            self.by_tag.remove(&call.b.local_tag);
            metrics::gauge!("sbc_sip_active_dialogs").set(self.calls.len() as f64);
            info!(call = cid, tenant = %call.tenant, why, "call ended");
            let tenant = call.tenant.clone();
            // Dropping the call releases its admission slot; report usage after that.
            drop(call);
            self.report_usage(&tenant);
        }
    }

    fn maybe_remove_relay(&mut self, rid: u64) {
        let done = self.relays.get(&rid).is_some_and(Relay::finished);
        if done {
            if let Some(r) = self.relays.remove(&rid) {
                self.by_client_branch.remove(&r.client_branch);
                let key = (r.server_conn, r.server_branch);
                if self.by_server_branch.get(&key) == Some(&rid) {
                    self.by_server_branch.remove(&key);
                }
            }
        }
    }

    /// True if `conn` may carry traffic of `side` of `call`: leg A only from a connection
    /// recognised as the call's tenant, leg B only from a connection to the call's target.
    /// Tenant isolation does not rest on tags and branches being unguessable.
    fn conn_serves(&self, conn: ConnId, call: &Call, side: Side) -> bool {
        match (self.conns.get(&conn).map(|c| &c.kind), side) {
            (
                Some(ConnKind::Inbound {
                    tenant: Some(t), ..
                }),
                Side::A,
            ) => *t == call.tenant,
            (Some(ConnKind::Outbound { target }), Side::B) => *target == call.target,
            _ => false,
        }
    }

    fn alloc_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn dest(&self, cid: u64, side: Side) -> Option<Dest> {
        let call = self.calls.get(&cid)?;
        Some(match side {
            Side::B => Dest::Target(call.target),
            Side::A => Dest::Conn(call.a.conn),
        })
    }

    fn send(&mut self, dest: Dest, msg: SipMessage) {
        match dest {
            Dest::Target(target) => self.outputs.push_back(Output::SendToTarget { target, msg }),
            Dest::Conn(Some(conn)) => self.outputs.push_back(Output::Send { conn, msg }),
            Dest::Conn(None) => debug!("no connection for leg; message dropped"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Dest {
    Target(TargetId),
    Conn(Option<ConnId>),
}

impl Relay {
    fn deadline(&self) -> Option<Instant> {
        match (self.client.poll_timeout(), self.server.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn finished(&self) -> bool {
        self.client.state() == ClientState::Terminated
            && self.server.state() == ServerState::Terminated
    }
}

/// Via, Max-Forwards, From, To, Call-ID and Route for a request on `leg`.
fn build_dialog_headers(
    out: &mut SipMessage,
    leg: &Leg,
    advertised: &str,
    branch: &str,
    max_forwards: u32,
) {
    out.push_header("Via", format!("SIP/2.0/TLS {advertised};branch={branch}"));
    out.push_header("Max-Forwards", max_forwards.to_string());
    for r in &leg.route_set {
        out.push_header("Route", r.as_str());
    }
    out.push_header("From", with_tag(&leg.local_party, &leg.local_tag));
    let to = match &leg.remote_tag {
        Some(t) => with_tag(&leg.remote_party, t),
        None => leg.remote_party.clone(),
    };
    out.push_header("To", to);
    out.push_header("Call-ID", leg.call_id.as_str());
}

/// Copy the end-to-end headers of `from` into `to`, leaving out everything in
/// [`NOT_RELAYED`] and the `100rel` option tag (reliable provisionals are not relayed).
fn copy_end_to_end(from: &SipMessage, to: &mut SipMessage) {
    for (name, value) in from.headers() {
        let lower = name.to_ascii_lowercase();
        let canonical = long_name(&lower);
        if NOT_RELAYED.contains(&canonical) {
            continue;
        }
        if canonical == "supported" || canonical == "require" {
            let kept: Vec<&str> = value
                .split(',')
                .map(str::trim)
                .filter(|t| !t.eq_ignore_ascii_case("100rel") && !t.is_empty())
                .collect();
            if !kept.is_empty() {
                to.push_header(name, kept.join(", "));
            }
            continue;
        }
        to.push_header(name, value);
    }
}

fn method_label(m: &Method) -> &'static str {
    match m {
        Method::Invite => "INVITE",
        Method::Ack => "ACK",
        Method::Bye => "BYE",
        Method::Cancel => "CANCEL",
        Method::Options => "OPTIONS",
        Method::Update => "UPDATE",
        Method::Info => "INFO",
        Method::Notify => "NOTIFY",
        Method::Prack => "PRACK",
        Method::Register => "REGISTER",
        Method::Subscribe => "SUBSCRIBE",
        Method::Refer => "REFER",
        Method::Message => "MESSAGE",
        Method::Publish => "PUBLISH",
        Method::Other(_) => "other",
    }
}
