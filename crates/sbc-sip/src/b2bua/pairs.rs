//! Transaction pairs: a server transaction on one leg paired with the client transaction
//! the B2BUA started on the other, and the timer heap of the whole core.
//!
//! Owns: [`Pairs`] (pairs by [`PairId`], the indexes from our client branches and from
//! the peer's server transaction keys), [`ServerKey`] (RFC 3261 §17.2.3 matching, branch
//! or the RFC 2543 rules), the CANCEL and non-2xx ACK built from a client request
//! (RFC 3261 §9.1, §17.1.1.3), and [`Timers`].
//! Must not: touch call or dialog state (`calls.rs`) or decide what crosses (`topology.rs`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use sbc_core::media::{CallRef, LegSide};

use super::{ConnId, Dest};
use crate::message::{parse_via, tag, Method, SipMessage};
use crate::routing::TargetId;
use crate::transaction::{ClientState, ClientTransaction, ServerState, ServerTransaction};

/// The magic cookie that starts every RFC 3261 branch (§8.1.1.7).
pub(crate) const BRANCH_COOKIE: &str = "z9hG4bK";

/// Names one transaction pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairId(u64);

/// How a request is matched to the server transaction it belongs to (RFC 3261 §17.2.3).
/// Keyed by connection too, so that one peer cannot reach another's transaction by
/// reusing its branch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ServerKey {
    /// The top Via's branch starts with the magic cookie: it alone names the transaction.
    Branch(ConnId, String),
    /// An RFC 2543 peer (no branch, or one without the cookie): Request-URI, From tag,
    /// Call-ID, CSeq number and the whole top Via. The To tag is left out: the ACK for a
    /// non-2xx carries the tag of our response, which the INVITE did not.
    Rfc2543 {
        conn: ConnId,
        request_uri: String,
        from_tag: String,
        call_id: String,
        cseq: u32,
        top_via: String,
    },
}

impl ServerKey {
    /// The key of request `msg` on `conn`; `None` only if the message has no Via (the
    /// parser refuses those).
    pub fn of(conn: ConnId, msg: &SipMessage) -> Option<ServerKey> {
        let top = msg.header("via")?;
        let via = parse_via(top)?;
        match via.branch {
            Some(b) if b.starts_with(BRANCH_COOKIE) => Some(ServerKey::Branch(conn, b.into())),
            _ => Some(ServerKey::Rfc2543 {
                conn,
                request_uri: msg.request_uri().unwrap_or_default().to_string(),
                from_tag: msg.header("from").and_then(tag).unwrap_or("").to_string(),
                call_id: msg.call_id().unwrap_or_default().to_string(),
                cseq: msg.cseq().map(|(n, _)| n).unwrap_or(0),
                top_via: crate::message::split_values(top)
                    .next()
                    .unwrap_or("")
                    .to_string(),
            }),
        }
    }
}

/// A server transaction on one leg paired with a client transaction on the other.
#[derive(Debug)]
pub(crate) struct Pair {
    pub call: CallRef,
    /// Leg the request came from.
    pub from: LegSide,
    pub method: Method,
    pub server_req: SipMessage,
    pub server_conn: ConnId,
    pub server_key: ServerKey,
    pub server: ServerTransaction,
    pub client: ClientTransaction,
    pub client_req: SipMessage,
    pub client_branch: String,
    /// Where the client request went: retransmissions, and the ACK for a retransmitted
    /// non-2xx final after the call has gone (UDP, RFC 3261 §17.1.1.2), go there too.
    pub client_dest: Dest,
    /// True for the call's initial INVITE.
    pub initial: bool,
    /// CANCEL to send downstream once a provisional arrives (RFC 3261 §9.1).
    pub cancel_pending: bool,
    /// Last response sent upstream, for retransmitted requests.
    pub last_response: Option<SipMessage>,
    /// The initial INVITE's per-try timeout: with nothing heard by then (not even 100),
    /// the call tries its next target. `None` for the last candidate and other requests.
    pub try_deadline: Option<Instant>,
    /// A try the call has left for another target: it only winds down (CANCEL once a
    /// provisional came, ACK for its non-2xx, ACK and BYE for a 2xx); nothing of it
    /// reaches the caller. Its server side is [`ServerTransaction::none`].
    pub retired: bool,
}

impl Pair {
    /// The route target the client request went to (requests towards the callee): its
    /// CANCEL and ACK go there too, even after the call moved to another target.
    pub fn target(&self) -> Option<TargetId> {
        match self.client_dest {
            super::Dest::Target(t) => Some(t),
            super::Dest::Conn(_) => None,
        }
    }

    /// Earliest timer of either transaction (and of the per-try timeout).
    pub fn deadline(&self) -> Option<Instant> {
        [
            self.client.poll_timeout(),
            self.server.poll_timeout(),
            self.try_pending(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The per-try deadline while it still applies (nothing heard yet).
    pub fn try_pending(&self) -> Option<Instant> {
        self.try_deadline
            .filter(|_| self.client.state() == ClientState::Calling && !self.retired)
    }

    /// Both transactions are over.
    pub fn finished(&self) -> bool {
        self.client.state() == ClientState::Terminated
            && self.server.state() == ServerState::Terminated
    }

    /// The CANCEL for our client INVITE (RFC 3261 §9.1): same Request-URI, Via, From, To,
    /// Call-ID and CSeq number, plus Route.
    pub fn cancel(&self, max_forwards: u32) -> SipMessage {
        let req = &self.client_req;
        let mut cancel =
            SipMessage::new_request(Method::Cancel, req.request_uri().unwrap_or_default());
        for name in ["Via", "From", "To", "Call-ID"] {
            if let Some(v) = req.header(name) {
                cancel.push_header(name, v);
            }
        }
        cancel.push_header("Max-Forwards", max_forwards.to_string());
        if let Some((n, _)) = req.cseq() {
            cancel.push_header("CSeq", format!("{n} CANCEL"));
        }
        for r in req.header_values("route") {
            cancel.push_header("Route", r);
        }
        cancel
    }

    /// The hop-by-hop ACK for a non-2xx final `resp` to our client INVITE (RFC 3261
    /// §17.1.1.3).
    pub fn ack_non_2xx(&self, resp: &SipMessage, max_forwards: u32) -> SipMessage {
        let req = &self.client_req;
        let mut ack = SipMessage::new_request(Method::Ack, req.request_uri().unwrap_or_default());
        if let Some(v) = req.header("via") {
            ack.push_header("Via", v);
        }
        ack.push_header("Max-Forwards", max_forwards.to_string());
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
        ack
    }
}

/// The ACK and BYE that end the dialog a 2xx to a retired try's INVITE opened (RFC 3261
/// §13.2.2.4, §15): built from the try's own request (its Via with a fresh branch, From,
/// Call-ID), the 2xx's To, Contact and Record-Route; the call's legs are not involved.
pub(crate) fn hang_up_2xx(
    req: &SipMessage,
    resp: &SipMessage,
    branches: (&str, &str),
    max_forwards: u32,
) -> [SipMessage; 2] {
    let uri = resp
        .header("contact")
        .and_then(super::calls::contact_uri)
        .unwrap_or_else(|| req.request_uri().unwrap_or_default().to_string());
    let mut routes: Vec<&str> = resp.header_values("record-route").collect();
    routes.reverse();
    let invite_cseq = req.cseq().map(|(n, _)| n).unwrap_or(1);
    let via = req.header("via").unwrap_or_default();
    let via_base = via.split(";branch=").next().unwrap_or(via);
    let build = |method: Method, cseq: u32, branch: &str| {
        let mut m = SipMessage::new_request(method.clone(), uri.clone());
        m.push_header("Via", format!("{via_base};branch={branch}"));
        m.push_header("Max-Forwards", max_forwards.to_string());
        for r in &routes {
            m.push_header("Route", *r);
        }
        for name in ["From", "Call-ID"] {
            if let Some(v) = req.header(name) {
                m.push_header(name, v);
            }
        }
        if let Some(v) = resp.header("to") {
            m.push_header("To", v);
        }
        m.push_header("CSeq", format!("{cseq} {}", method.as_str()));
        m
    };
    [
        build(Method::Ack, invite_cseq, branches.0),
        build(Method::Bye, invite_cseq.wrapping_add(1), branches.1),
    ]
}

/// Every transaction pair and how requests and responses find theirs.
#[derive(Debug, Default)]
pub(crate) struct Pairs {
    pairs: HashMap<PairId, Pair>,
    by_client_branch: HashMap<String, PairId>,
    by_server_key: HashMap<ServerKey, PairId>,
    last: u64,
}

impl Pairs {
    /// Hold `pair`; returns its id.
    pub fn insert(&mut self, pair: Pair) -> PairId {
        self.last += 1;
        let id = PairId(self.last);
        self.by_client_branch.insert(pair.client_branch.clone(), id);
        self.by_server_key.insert(pair.server_key.clone(), id);
        self.pairs.insert(id, pair);
        id
    }

    pub fn get(&self, id: PairId) -> Option<&Pair> {
        self.pairs.get(&id)
    }

    pub fn get_mut(&mut self, id: PairId) -> Option<&mut Pair> {
        self.pairs.get_mut(&id)
    }

    /// The pair whose server transaction `key` names.
    pub fn by_server(&self, key: &ServerKey) -> Option<PairId> {
        self.by_server_key.get(key).copied()
    }

    /// The pair whose client request `msg` belongs to by its top Via branch: a response
    /// to that request, or the request itself (handed back when it could not be sent).
    pub fn by_client_via(&self, msg: &SipMessage) -> Option<PairId> {
        let via = msg.header("via").and_then(parse_via)?;
        self.by_client_branch.get(via.branch?).copied()
    }

    /// Forget the pair if both its transactions are over; true if it was removed.
    pub fn remove_if_finished(&mut self, id: PairId) -> bool {
        if !self.pairs.get(&id).is_some_and(Pair::finished) {
            return false;
        }
        if let Some(p) = self.pairs.remove(&id) {
            self.by_client_branch.remove(&p.client_branch);
            if self.by_server_key.get(&p.server_key) == Some(&id) {
                self.by_server_key.remove(&p.server_key);
            }
        }
        true
    }

    /// Forget every pair of `call` at once, whatever their state (a fenced call: nothing
    /// of it may send again).
    pub fn remove_call(&mut self, call: CallRef) {
        for id in self.select(|p| p.call == call) {
            if let Some(p) = self.pairs.remove(&id) {
                self.by_client_branch.remove(&p.client_branch);
                if self.by_server_key.get(&p.server_key) == Some(&id) {
                    self.by_server_key.remove(&p.server_key);
                }
            }
        }
    }

    /// The server transaction of pair `id` runs over `conn` from now on (a restored
    /// call's caller leg adopted by a new connection): its key and responses follow.
    pub fn rekey_server(&mut self, id: PairId, conn: ConnId) {
        let Some(p) = self.pairs.get_mut(&id) else {
            return;
        };
        let new_key = match &p.server_key {
            ServerKey::Branch(_, b) => ServerKey::Branch(conn, b.clone()),
            ServerKey::Rfc2543 {
                request_uri,
                from_tag,
                call_id,
                cseq,
                top_via,
                ..
            } => ServerKey::Rfc2543 {
                conn,
                request_uri: request_uri.clone(),
                from_tag: from_tag.clone(),
                call_id: call_id.clone(),
                cseq: *cseq,
                top_via: top_via.clone(),
            },
        };
        let old = std::mem::replace(&mut p.server_key, new_key.clone());
        p.server_conn = conn;
        if self.by_server_key.get(&old) == Some(&id) {
            self.by_server_key.remove(&old);
        }
        self.by_server_key.insert(new_key, id);
    }

    /// Pairs matching `pred` (ids only, so the caller can then mutate).
    pub fn select(&self, pred: impl Fn(&Pair) -> bool) -> Vec<PairId> {
        self.pairs
            .iter()
            .filter(|(_, p)| pred(p))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// The route targets client requests went to, of every pair held.
    pub fn targets(&self) -> impl Iterator<Item = TargetId> + '_ {
        self.pairs.values().filter_map(Pair::target)
    }
}

/// What a timer entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// A transaction pair's timers (B, F, H, L, ringing limit).
    Pair(PairId),
    /// A call's 2xx awaiting its ACK (retransmission and give-up).
    Ack(CallRef),
    /// A call's reliable provisionals and own PRACKs sent again over UDP (RFC 3262 §3).
    Reliable(CallRef),
    /// A call's transaction with its recording server (SIPREC answer deadline).
    Recording(CallRef),
}

/// The core's timer heap. Entries are not removed when a deadline moves or its owner
/// goes: whoever changes a deadline files the new one, the owner is asked for its real
/// deadline when an entry comes up, and stale entries are skipped.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    pub fn push(&mut self, at: Instant, timer: Timer) {
        self.heap.push(Reverse((at, timer)));
    }

    /// The earliest entry whose owner still wants it, per `current` (the owner's real
    /// deadline, `None` if gone); stale entries are dropped on the way.
    pub fn next(&mut self, current: impl Fn(Timer) -> Option<Instant>) -> Option<Instant> {
        while let Some(Reverse((at, timer))) = self.heap.peek().copied() {
            match current(timer) {
                Some(d) if d <= at => return Some(d),
                // Gone, or moved later (whoever moves a deadline files the new one).
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// Pop one entry due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((at, t))) if *at <= now => {
                let t = *t;
                self.heap.pop();
                Some(t)
            }
            _ => None,
        }
    }
}
