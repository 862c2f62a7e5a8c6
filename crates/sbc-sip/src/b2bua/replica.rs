//! Hot standby (issue #16): the dialog part of a call, as the B2BUA replicates it and as
//! a standby rebuilds the call from it (`takeover_flow.rs`).
//!
//! Owns: the format of [`ReplicaPart::Dialog`] ([`DialogPart`], serde_json, `v: 1`): the
//! tenant, the listener by its advertised `host:port` (not its index: the standby's
//! config may list listeners in another order), transports, the route target by its
//! `host:port`, the request user, the call state, the registry's start time and numbers,
//! per leg the dialog (Call-ID, tags, parties, next CSeq, INVITE CSeq, remote target,
//! route set), while the call is in setup the two INVITE transactions' headers
//! (so a CANCEL from the caller can be served by the standby), and while a 2xx waits
//! for its ACK which side's ACK and whether it carries an answer; and [`Replica`], which
//! puts a call's part whenever any of that changed and removes it when the call ends.
//!
//! When: every mutation of a call goes through the call table (`Calls::get_mut`,
//! `insert`, `replace_leg`, `remove`), which records the calls touched; after each input
//! and timer step ([`B2bua::replicate`]) each touched call's part is built and put if
//! its bytes changed (a hash of the last part put is kept per call). A call is first put
//! once the callee's dialog is known (its first provisional with a To tag: early dialogs
//! included); a call that ends (every end path goes through `Calls::remove`) or is
//! abandoned (CANCEL, ringing timeout: the caller has its final) is removed. The step runs before the driver takes the step's outputs, so a part that
//! carries a CSeq is handed to the sink before the request that uses it is written.
//!
//! Must not: block (the sink queues), serialize media state (sbc-media's parts), or put a
//! part for a fenced call (another node owns its record).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sbc_core::media::{CallRef, LegSide};
use sbc_core::standby::{ReplicaPart, ReplicaUpdate, SharedReplicaSink};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::calls::{Call, CallState, Leg};
use super::B2bua;
use crate::message::{Method, SipMessage};
use crate::transport::Transport;

/// The version of the dialog part this build writes and reads.
pub(crate) const VERSION: u32 = 1;

/// A call's state in the part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PartState {
    Setup,
    Established,
    Abandoned,
}

impl From<CallState> for PartState {
    fn from(s: CallState) -> PartState {
        match s {
            CallState::Setup => PartState::Setup,
            CallState::Established => PartState::Established,
            CallState::Abandoned => PartState::Abandoned,
        }
    }
}

impl From<PartState> for CallState {
    fn from(s: PartState) -> CallState {
        match s {
            PartState::Setup => CallState::Setup,
            PartState::Established => CallState::Established,
            PartState::Abandoned => CallState::Abandoned,
        }
    }
}

/// One leg's dialog (RFC 3261 §12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LegPart {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    pub local_party: String,
    pub remote_party: String,
    /// Next CSeq of a request we send on the leg.
    pub next_cseq: u32,
    pub invite_cseq: u32,
    pub remote_target: String,
    pub route_set: Vec<String>,
}

impl LegPart {
    fn of(leg: &Leg) -> LegPart {
        LegPart {
            call_id: leg.call_id.clone(),
            local_tag: leg.local_tag.clone(),
            remote_tag: leg.remote_tag.clone(),
            local_party: leg.local_party.clone(),
            remote_party: leg.remote_party.clone(),
            next_cseq: leg.next_cseq,
            invite_cseq: leg.invite_cseq,
            remote_target: leg.remote_target.clone(),
            route_set: leg.route_set.clone(),
        }
    }

    /// The leg rebuilt, its next CSeq `cseq_margin` above the stored one (no connection:
    /// the caller's is adopted later, the callee's is the target pool's).
    pub fn leg(&self, cseq_margin: u32) -> Leg {
        Leg {
            call_id: self.call_id.clone(),
            local_tag: self.local_tag.clone(),
            remote_tag: self.remote_tag.clone(),
            local_party: self.local_party.clone(),
            remote_party: self.remote_party.clone(),
            next_cseq: self.next_cseq.saturating_add(cseq_margin),
            invite_cseq: self.invite_cseq,
            remote_target: self.remote_target.clone(),
            route_set: self.route_set.clone(),
            conn: None,
        }
    }
}

/// A request's Request-URI and the headers a transaction needs of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RequestPart {
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

/// Headers kept of the caller's INVITE: what a response to it copies.
const UPSTREAM_HEADERS: &[&str] = &["Via", "From", "To", "Call-ID", "CSeq", "Record-Route"];
/// Headers kept of our INVITE to the callee: what its CANCEL and ACK copy.
const DOWNSTREAM_HEADERS: &[&str] = &["Via", "From", "To", "Call-ID", "CSeq", "Route"];

/// Headers that may carry several comma-separated values (the others are single).
fn multi_valued(name: &str) -> bool {
    matches!(name, "Via" | "Route" | "Record-Route")
}

impl RequestPart {
    fn of(msg: &SipMessage, names: &[&str]) -> RequestPart {
        let mut headers = Vec::new();
        for name in names {
            if multi_valued(name) {
                for v in msg.header_values(name) {
                    headers.push((name.to_string(), v.to_string()));
                }
            } else if let Some(v) = msg.header(name) {
                headers.push((name.to_string(), v.to_string()));
            }
        }
        RequestPart {
            uri: msg.request_uri().unwrap_or_default().to_string(),
            headers,
        }
    }

    /// The INVITE rebuilt from the kept headers.
    pub fn invite(&self) -> SipMessage {
        let mut m = SipMessage::new_request(Method::Invite, self.uri.clone());
        for (name, value) in &self.headers {
            m.push_header(name, value.as_str());
        }
        m
    }
}

/// The initial INVITE's transaction pair while the call is in setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EarlyPart {
    /// The caller's INVITE (our server transaction).
    pub upstream: RequestPart,
    /// Our INVITE to the callee (our client transaction).
    pub downstream: RequestPart,
    /// The side whose SDP offer awaits an answer (`caller` / `callee`).
    pub offer_pending: Option<String>,
}

/// A 2xx to an INVITE sent to `side`, its ACK not yet arrived (RFC 3261 §13.3.1.4). The
/// 2xx itself is not kept: its SDP carries the leg's SRTP keys and the dialog part is
/// stored in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AckWaitPart {
    /// The side the 2xx went to, whose ACK is awaited (`caller` / `callee`).
    pub side: String,
    /// The INVITE's CSeq on that side.
    pub cseq: u32,
    /// The 2xx carried an offer: the awaited ACK carries the answer.
    pub answer_in_ack: bool,
}

/// The dialog part of one call (`v: 1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DialogPart {
    pub v: u32,
    pub tenant: String,
    /// The advertised `host:port` of the listener the call came in on.
    pub listener: String,
    pub listener_transport: String,
    /// The route target's `host:port`, as the route names it.
    pub target: String,
    pub target_transport: String,
    /// The called user part with its `@` (empty without one).
    pub request_user: String,
    pub state: PartState,
    /// The registry's start time (milliseconds since the Unix epoch).
    pub start_unix_ms: u64,
    /// The registry's caller and callee numbers.
    pub caller_number: String,
    pub callee_number: String,
    pub caller: LegPart,
    pub callee: LegPart,
    /// Present while the call is in setup with its initial INVITE in flight.
    pub early: Option<EarlyPart>,
    /// Present while a 2xx waits for its ACK (absent in parts written before it was).
    #[serde(default)]
    pub ack_wait: Option<AckWaitPart>,
}

impl DialogPart {
    /// Parse a stored part; `None` if it does not parse or is of another version.
    pub fn parse(bytes: &[u8]) -> Option<DialogPart> {
        let part: DialogPart = serde_json::from_slice(bytes).ok()?;
        (part.v == VERSION).then_some(part)
    }

    pub fn transport(name: &str) -> Option<Transport> {
        Transport::from_via_token(name)
    }

    pub fn start(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.start_unix_ms)
    }
}

/// The side named in a part.
pub(crate) fn side_name(s: LegSide) -> String {
    s.as_str().to_string()
}

/// The side a part names.
pub(crate) fn side_of(name: &str) -> Option<LegSide> {
    [LegSide::Caller, LegSide::Callee]
        .into_iter()
        .find(|s| s.as_str() == name)
}

/// Where dialog parts go, and what was last put per call.
#[derive(Debug)]
pub(crate) struct Replica {
    sink: SharedReplicaSink,
    /// A hash of the part last put, per call replicated.
    put: HashMap<CallRef, u64>,
}

impl Replica {
    pub fn new(sink: SharedReplicaSink) -> Replica {
        Replica {
            sink,
            put: HashMap::new(),
        }
    }

    /// Forget `call` without removing its record (fenced: another node owns it now).
    pub fn forget(&mut self, call: CallRef) {
        self.put.remove(&call);
    }
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl B2bua {
    /// Replicate what the last step changed: put the dialog part of each call touched
    /// (when it differs from the last put), remove the calls that ended.
    pub(super) fn replicate(&mut self) {
        let Some(mut replica) = self.replica.take() else {
            return;
        };
        let changes = self.calls.take_changes();
        for id in changes.touched {
            let Some(c) = self.calls.get(id) else {
                continue;
            };
            if c.state == CallState::Abandoned {
                // Cancelled or timed out: the caller has its final and the call only
                // waits for the callee's; a standby has nothing to serve (a callee 2xx
                // racing the CANCEL is hung up by the callee itself, RFC 3261 §13.3.1.4).
                if replica.put.remove(&id).is_some() {
                    metrics::counter!("sbc_sip_replica_updates_total", "kind" => "remove")
                        .increment(1);
                    replica.sink.remove(id);
                }
                continue;
            }
            if c.callee.remote_tag.is_none() && !replica.put.contains_key(&id) {
                // Not yet an early dialog: nothing a standby could serve.
                continue;
            }
            let part = self.dialog_part(id, c);
            let bytes = match serde_json::to_vec(&part) {
                Ok(b) => b,
                Err(e) => {
                    debug!(call = %id, error = %e, "dialog part not serialized");
                    continue;
                }
            };
            let h = hash_of(&bytes);
            if replica.put.insert(id, h) == Some(h) {
                continue;
            }
            metrics::counter!("sbc_sip_replica_updates_total", "kind" => "put").increment(1);
            replica.sink.put(ReplicaUpdate {
                call: id,
                tenant: c.tenant.clone(),
                part: ReplicaPart::Dialog,
                public: bytes,
                secret: None,
            });
        }
        for id in changes.removed {
            if replica.put.remove(&id).is_some() {
                metrics::counter!("sbc_sip_replica_updates_total", "kind" => "remove").increment(1);
                replica.sink.remove(id);
            }
        }
        self.replica = Some(replica);
    }

    /// The dialog part of call `id`.
    fn dialog_part(&self, id: CallRef, c: &Call) -> DialogPart {
        let start = self.cfg.wall_clock.wall(c.invite_at);
        DialogPart {
            v: VERSION,
            tenant: c.tenant.to_string(),
            listener: self.advertised(c.listener).to_string(),
            listener_transport: self.listener_transport(c.listener).via_token().to_string(),
            target: c.target_addr.clone(),
            target_transport: c.target_transport.via_token().to_string(),
            request_user: c.request_user.clone(),
            state: c.state.into(),
            start_unix_ms: start
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
            caller_number: super::calls::from_user(&c.caller.remote_party),
            callee_number: c.request_user.trim_end_matches('@').to_string(),
            caller: LegPart::of(&c.caller),
            callee: LegPart::of(&c.callee),
            early: self.early_part(id, c),
            ack_wait: c.ack_wait.as_ref().map(|w| AckWaitPart {
                side: side_name(w.side),
                cseq: w.cseq,
                answer_in_ack: c.media.pending.is_some(),
            }),
        }
    }

    /// The initial INVITE's transactions of a call in setup (none once it is answered).
    fn early_part(&self, id: CallRef, c: &Call) -> Option<EarlyPart> {
        if c.state != CallState::Setup {
            return None;
        }
        let pair = self
            .pairs
            .select(|p| p.call == id && p.initial && !p.retired && p.server.awaiting_final())
            .into_iter()
            .next()
            .and_then(|p| self.pairs.get(p))?;
        Some(EarlyPart {
            upstream: RequestPart::of(&pair.server_req, UPSTREAM_HEADERS),
            downstream: RequestPart::of(&pair.client_req, DOWNSTREAM_HEADERS),
            offer_pending: c.media.pending.map(side_name),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_part_round_trips_and_other_versions_or_garbage_do_not_parse() {
        let leg = LegPart {
            call_id: "c".into(),
            local_tag: "l".into(),
            remote_tag: Some("r".into()),
            local_party: "<sips:a@x>".into(),
            remote_party: "<sips:b@y>".into(),
            next_cseq: 7,
            invite_cseq: 1,
            remote_target: "sips:b@y".into(),
            route_set: vec![],
        };
        let part = DialogPart {
            v: VERSION,
            tenant: "acme".into(),
            listener: "sbc.example.net:5061".into(),
            listener_transport: "TLS".into(),
            target: "pbx:5061".into(),
            target_transport: "TLS".into(),
            request_user: "123@".into(),
            state: PartState::Established,
            start_unix_ms: 1,
            caller_number: "alice".into(),
            callee_number: "123".into(),
            caller: leg.clone(),
            callee: leg,
            early: None,
            ack_wait: Some(AckWaitPart {
                side: "caller".into(),
                cseq: 1,
                answer_in_ack: false,
            }),
        };
        let bytes = serde_json::to_vec(&part).unwrap();
        assert_eq!(DialogPart::parse(&bytes), Some(part.clone()));
        let mut v2 = part;
        v2.v = 2;
        assert_eq!(DialogPart::parse(&serde_json::to_vec(&v2).unwrap()), None);
        assert_eq!(DialogPart::parse(b"{\"v\":1}"), None);
        let mut without: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        without.as_object_mut().unwrap().remove("ack_wait");
        let older = DialogPart::parse(&serde_json::to_vec(&without).unwrap()).unwrap();
        assert_eq!(
            older.ack_wait, None,
            "a part without the ACK wait still parses"
        );
        assert_eq!(DialogPart::parse(&[0xff, 0, 1]), None);
        assert_eq!(side_of("caller"), Some(LegSide::Caller));
        assert_eq!(side_of("x"), None);
    }
}
