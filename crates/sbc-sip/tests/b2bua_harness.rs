//! The B2BUA on a virtual clock, with no sockets: call flows and timers run in
//! milliseconds (like quinn-proto's `tests/util.rs` `Pair`), and a property test drives
//! random sequences of valid, malformed and refused requests and responses and checks that
//! once every transaction has ended nothing is held for those calls: not an admission
//! slot, not a pending INVITE, not a registry entry, not media, and (for calls of a tenant
//! that records them, SIPREC) not a recording stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;
use sbc_core::admission::{Admission, Usage};
use sbc_core::config::Limits;
use sbc_core::config::{OnFailure, RecordingMode, RecordingSettings};
use sbc_core::media::{CallRef, LegSide, MediaControl, MediaError, MediaEvent, MediaPolicy};
use sbc_core::recording::{PreparedStream, RecordingMedia};
use sbc_core::redact::Redaction;
use sbc_core::registry::{CallRegistry, DrainState};
use sbc_core::tap::{TapError, TapId, TapKey, TapLegs, TapSuite, TapTransport};
use sbc_core::tenant::TenantId;
use sbc_sip::b2bua::{B2bua, B2buaConfig, ConnId, ConnKind, Input, Output, WallClock};
use sbc_sip::message::{tag, Method, SipMessage};
use sbc_sip::routing::{Candidate, RouteEntry, RouteTable, TargetId};
use sbc_sip::transaction::TimerConfig;
use sbc_sip::transport::Transport;
use sbc_testkit::logs::Capture;

const T1: Duration = Duration::from_millis(500);
const MAX_RINGING: Duration = Duration::from_secs(60);
const CALLER: ConnId = ConnId(1);
const CALLEE: ConnId = ConnId(2);
const OTHER_TENANT: ConnId = ConnId(3);
const TARGET: TargetId = TargetId(0);
/// Connections to further route targets (`TargetId(1)`, `TargetId(2)`), for failover.
const TRUNK1: ConnId = ConnId(11);
const TRUNK2: ConnId = ConnId(12);
const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n";

/// Media control that records what signaling asked of it. The real engine needs sockets;
/// here only the bookkeeping matters: which calls media holds.
#[derive(Debug, Default)]
struct FakeMedia {
    live: Mutex<HashSet<CallRef>>,
}

impl MediaControl for FakeMedia {
    fn offer(
        &self,
        call: CallRef,
        _tenant: &TenantId,
        from: LegSide,
        sdp: &[u8],
        _policy: &MediaPolicy,
    ) -> Result<Vec<u8>, MediaError> {
        if String::from_utf8_lossy(sdp).contains("refuse") {
            return Err(MediaError::NotAcceptable("no suite".into()));
        }
        self.live.lock().unwrap().insert(call);
        Ok(format!(
            "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 30000 RTP/SAVP 0\r\na=offer-from-{}\r\n",
            from.as_str()
        )
        .into_bytes())
    }

    fn answer(&self, call: CallRef, from: LegSide, _sdp: &[u8]) -> Result<Vec<u8>, MediaError> {
        if !self.live.lock().unwrap().contains(&call) {
            return Err(MediaError::UnknownCall(call));
        }
        Ok(format!(
            "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 30002 RTP/SAVP 0\r\na=answer-from-{}\r\n",
            from.as_str()
        )
        .into_bytes())
    }

    fn delete(&self, call: CallRef) {
        self.live.lock().unwrap().remove(&call);
    }

    fn poll_events(&self) -> Vec<MediaEvent> {
        Vec::new()
    }
}

/// Recording media that only keeps the books (which streams are prepared), so the leak
/// check can ask that every recording path released what it prepared.
#[derive(Debug, Default)]
struct FakeRecMedia {
    streams: Mutex<HashSet<TapId>>,
    next: Mutex<u64>,
}

impl RecordingMedia for FakeRecMedia {
    fn prepare_stream(
        &self,
        _call: CallRef,
        _leg: LegSide,
        transport: TapTransport,
    ) -> Result<PreparedStream, TapError> {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        self.streams.lock().unwrap().insert(TapId(*n));
        Ok(PreparedStream {
            id: TapId(*n),
            local: "192.0.2.1:40000".parse().unwrap(),
            key: transport.suite().map(|_| TapKey::new("inline:KEY".into())),
            formats: Vec::new(),
        })
    }
    fn start_stream(&self, stream: TapId, _d: std::net::SocketAddr) -> Result<(), TapError> {
        if self.streams.lock().unwrap().contains(&stream) {
            Ok(())
        } else {
            Err(TapError::Invalid("unknown stream"))
        }
    }
    fn pause_stream(&self, stream: TapId, _paused: bool) -> bool {
        self.streams.lock().unwrap().contains(&stream)
    }
    fn release_stream(&self, stream: TapId) -> bool {
        self.streams.lock().unwrap().remove(&stream)
    }
    fn stream_formats(&self, _stream: TapId) -> Option<Vec<sbc_core::recording::RtpFormat>> {
        // The leak property does not change codecs: the prepare-time formats stand.
        None
    }
}

/// SRS targets of a recording tenant, and their connections.
const SRS_TARGETS: [TargetId; 2] = [TargetId(5), TargetId(6)];
const SRS_CONNS: [ConnId; 2] = [ConnId(21), ConnId(22)];

/// Record every call of both tenants to SRS targets 5 and 6 with `on_failure`.
fn record_all(h: &mut Harness, on_failure: OnFailure) {
    let rec = Arc::new(FakeRecMedia::default());
    let srs = SRS_TARGETS
        .iter()
        .map(|t| Candidate {
            target: *t,
            host_port: format!("srs{}.example:5061", t.0),
            transport: Transport::Tls,
        })
        .collect::<Vec<_>>();
    let settings = RecordingSettings {
        srs: ["sips:srs5.example:5061", "sips:srs6.example:5061"]
            .iter()
            .map(|u| sbc_core::config::parse_target(u).unwrap())
            .collect(),
        mode: RecordingMode::Always,
        legs: TapLegs::Both,
        transport: TapTransport::Srtp(TapSuite::AesCm128HmacSha1_80),
        on_failure,
        answer_timeout: Duration::from_millis(1500),
        identities: sbc_core::config::Identities::Clear,
        server_name: None,
        ca_pem: None,
        ca_path: None,
    };
    let recorders = [h.tenant.clone(), TenantId::from("globex")]
        .into_iter()
        .map(|t| {
            let r = sbc_sip::b2bua::recording::Recorder {
                settings: settings.clone(),
                srs: srs.clone(),
            };
            (t, r)
        })
        .collect();
    h.core.set_recording(rec.clone(), recorders, Arc::default());
    for (conn, target) in SRS_CONNS.iter().zip(SRS_TARGETS) {
        h.input(Input::Connected {
            conn: *conn,
            kind: ConnKind::Outbound { target },
        });
    }
    h.rec = Some(rec);
}

/// Where a message the core sent went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum To {
    Caller,
    /// The first route target (`TARGET`, connection `CALLEE`).
    Callee,
    /// Route target `n` ≥ 1 (connection `TRUNK1`, `TRUNK2`).
    Trunk(usize),
    Other,
}

/// The connection a target's messages come from.
fn conn_of(to: To) -> ConnId {
    match to {
        To::Trunk(1) => TRUNK1,
        To::Trunk(_) => TRUNK2,
        To::Caller => CALLER,
        _ => CALLEE,
    }
}

struct Harness {
    core: B2bua,
    now: Instant,
    admission: Arc<Admission>,
    registry: Arc<CallRegistry>,
    media: Arc<FakeMedia>,
    tenant: TenantId,
    sent: Vec<(To, SipMessage)>,
    closed: Vec<ConnId>,
    /// Recording media, when the tenants record calls ([`record_all`]).
    rec: Option<Arc<FakeRecMedia>>,
}

fn tenant_limits() -> Limits {
    Limits {
        calls_per_second: 1000.0,
        call_burst: 1000,
        ..Limits::default()
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::with_route(RouteEntry::single("", TARGET, "pbx.inside:5061"))
    }

    /// A harness whose caller comes in on a `listener` listener and whose route target is
    /// reached over `target`.
    fn with_transports(listener: Transport, target: Transport) -> Harness {
        let mut route = RouteEntry::single("", TARGET, "pbx.inside:5061");
        route.targets[0].transport = target;
        Harness::build(listener, route)
    }

    /// A harness whose tenants both route everything by `route`.
    fn with_route(route: RouteEntry) -> Harness {
        Harness::build(Transport::Tls, route)
    }

    /// A harness whose caller comes in on a `listener` listener, routing by `route`.
    fn build(listener: Transport, route: RouteEntry) -> Harness {
        let tenant = TenantId::from("acme");
        let other = TenantId::from("globex");
        let admission = Arc::new(Admission::with_limits([
            (tenant.clone(), tenant_limits()),
            (other.clone(), tenant_limits()),
        ]));
        let mut routes = RouteTable::new();
        for t in [&tenant, &other] {
            routes.insert(t.clone(), route.clone());
        }
        let now = Instant::now();
        let cfg = B2buaConfig {
            timers: TimerConfig {
                t1: T1,
                max_ringing: MAX_RINGING,
            },
            max_forwards: 70,
            advertised: vec!["sbc.example.net:5061".into()],
            transports: vec![listener],
            redaction: Redaction::default(),
            seed: 7,
            wall_clock: WallClock {
                at: now,
                wall: SystemTime::UNIX_EPOCH,
            },
        };
        let mut core = B2bua::new(cfg, Arc::new(routes), admission.clone());
        let registry = Arc::new(CallRegistry::new());
        core.set_admin(registry.clone(), Arc::new(DrainState::new()));
        let media = Arc::new(FakeMedia::default());
        core.set_media(media.clone(), HashMap::new());
        let mut h = Harness {
            core,
            now,
            admission,
            registry,
            media,
            tenant: tenant.clone(),
            sent: Vec::new(),
            closed: Vec::new(),
            rec: None,
        };
        h.input(Input::Connected {
            conn: CALLER,
            kind: ConnKind::Inbound {
                tenant: Some(tenant),
                listener: 0,
            },
        });
        h.input(Input::Connected {
            conn: CALLEE,
            kind: ConnKind::Outbound { target: TARGET },
        });
        for (conn, n) in [(TRUNK1, 1), (TRUNK2, 2)] {
            h.input(Input::Connected {
                conn,
                kind: ConnKind::Outbound {
                    target: TargetId(n),
                },
            });
        }
        h.input(Input::Connected {
            conn: OTHER_TENANT,
            kind: ConnKind::Inbound {
                tenant: Some(other),
                listener: 0,
            },
        });
        h
    }

    fn input(&mut self, input: Input) {
        self.core.handle_input(self.now, input);
        self.core.handle_timeout(self.now);
        self.drain_outputs();
    }

    fn drain_outputs(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Send { conn, msg } => {
                    let to = match conn {
                        CALLER => To::Caller,
                        CALLEE => To::Callee,
                        TRUNK1 => To::Trunk(1),
                        TRUNK2 => To::Trunk(2),
                        _ => To::Other,
                    };
                    self.sent.push((to, msg));
                }
                Output::SendToTarget { target, msg } => {
                    let to = match target.0 {
                        0 => To::Callee,
                        n => To::Trunk(n),
                    };
                    self.sent.push((to, msg));
                }
                Output::Close { conn } => self.closed.push(conn),
            }
        }
    }

    fn caller_sends(&mut self, msg: SipMessage) {
        self.input(Input::Message { conn: CALLER, msg });
    }

    fn callee_sends(&mut self, msg: SipMessage) {
        self.input(Input::Message { conn: CALLEE, msg });
    }

    /// Target `to` (`To::Callee` or `To::Trunk(n)`) sends `msg` on its connection.
    fn target_sends(&mut self, to: To, msg: SipMessage) {
        self.input(Input::Message {
            conn: conn_of(to),
            msg,
        });
    }

    /// Move the virtual clock, firing every timer on the way.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(t) = self.core.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.core.handle_timeout(self.now);
            self.drain_outputs();
        }
        self.now = end;
        self.core.handle_timeout(self.now);
        self.drain_outputs();
    }

    fn take(&mut self) -> Vec<(To, SipMessage)> {
        std::mem::take(&mut self.sent)
    }

    /// The messages sent to `to` since the last take, removed from the log.
    fn take_to(&mut self, to: To) -> Vec<SipMessage> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sent)
            .into_iter()
            .partition(|(t, _)| *t == to);
        self.sent = rest;
        mine.into_iter().map(|(_, m)| m).collect()
    }

    fn usage(&self) -> Usage {
        self.admission.usage(&self.tenant).unwrap()
    }

    /// Nothing held for any call: the leak check.
    fn assert_nothing_held(&self) {
        let u = self.usage();
        assert_eq!(
            (u.active_calls, u.pending_invites),
            (0, 0),
            "admission slots held"
        );
        let s = self.core.stats();
        assert_eq!((s.active_calls, s.active_relays), (0, 0), "core tables");
        assert_eq!(self.registry.len(), 0, "registry entries");
        assert!(self.media.live.lock().unwrap().is_empty(), "media held");
        if let Some(rec) = &self.rec {
            assert!(
                rec.streams.lock().unwrap().is_empty(),
                "recording streams held"
            );
        }
    }
}

fn status(m: &SipMessage) -> u16 {
    m.status().unwrap_or(0)
}

fn statuses(ms: &[SipMessage]) -> Vec<u16> {
    ms.iter().map(status).collect()
}

/// A request from the caller's platform.
fn invite(call_id: &str, branch: &str) -> SipMessage {
    let text = format!(
        "INVITE sips:+15551234@sbc.example.net SIP/2.0\r\n\
Via: SIP/2.0/TLS 10.88.0.5:5061;branch={branch}\r\n\
Max-Forwards: 70\r\n\
From: <sips:alice@platform.example>;tag=from-{call_id}\r\n\
To: <sips:+15551234@sbc.example.net>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sips:alice@10.88.0.5:5061>\r\n\
Content-Type: application/sdp\r\n\
\r\n{OFFER}"
    );
    SipMessage::parse(text.as_bytes()).unwrap()
}

/// The callee's (or caller's) response to `req` with our To tag.
fn respond(req: &SipMessage, code: u16, to_tag: &str, sdp: bool) -> SipMessage {
    let mut r = sbc_sip::message::response_to(req, code, "X", Some(to_tag));
    if (101..300).contains(&code) {
        r.push_header("Contact", "<sips:pbx@10.9.9.9:5061>");
    }
    if sdp {
        r.push_header("Content-Type", "application/sdp");
        r.set_body(OFFER.as_bytes().to_vec());
    }
    r
}

/// An in-dialog request built from a response the sender got (its tags and Call-ID).
fn in_dialog(
    method: Method,
    resp: &SipMessage,
    cseq: u32,
    branch: &str,
    caller_side: bool,
) -> SipMessage {
    let (from, to) = if caller_side {
        (resp.header("from").unwrap(), resp.header("to").unwrap())
    } else {
        (resp.header("to").unwrap(), resp.header("from").unwrap())
    };
    let mut m = SipMessage::new_request(method.clone(), "sips:sbc@sbc.example.net:5061");
    m.push_header("Via", format!("SIP/2.0/TLS 10.88.0.5:5061;branch={branch}"));
    m.push_header("Max-Forwards", "70");
    m.push_header("From", from);
    m.push_header("To", to);
    m.push_header("Call-ID", resp.call_id().unwrap());
    m.push_header("CSeq", format!("{cseq} {}", method.as_str()));
    m
}

/// INVITE through, 180 and 200 back, ACK: an established call. Returns (the INVITE the
/// callee got, the 200 the caller got).
fn establish(h: &mut Harness, call_id: &str) -> (SipMessage, SipMessage) {
    h.caller_sends(invite(call_id, &format!("z9hG4bK-{call_id}")));
    let down = h.take_to(To::Callee);
    assert_eq!(down.len(), 1);
    let down = down[0].clone();
    h.callee_sends(respond(&down, 180, "callee-tag", false));
    h.callee_sends(respond(&down, 200, "callee-tag", true));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![100, 180, 200]);
    let ok = up[2].clone();
    let ack = in_dialog(Method::Ack, &ok, 1, &format!("z9hG4bK-ack-{call_id}"), true);
    h.caller_sends(ack);
    let acks = h.take_to(To::Callee);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].method(), Some(&Method::Ack));
    (down, ok)
}

#[test]
fn basic_call_invite_180_200_ack_bye_releases_everything() {
    let started = std::time::Instant::now();
    let mut h = Harness::new();
    let (down, ok) = establish(&mut h, "c1");
    // Topology hidden: the callee sees none of the caller's addresses or ids.
    let text = String::from_utf8_lossy(&down.to_bytes()).to_string();
    for leak in ["10.88.0.5", "10.1.1.1", "c1", "from-c1"] {
        assert!(!text.contains(leak), "{leak} leaked: {text}");
    }
    assert!(text.contains("192.0.2.1"), "SDP anchored");
    // Answered: no longer a pending INVITE (finding 10).
    assert_eq!((h.usage().active_calls, h.usage().pending_invites), (1, 0));
    h.caller_sends(in_dialog(Method::Bye, &ok, 2, "z9hG4bK-bye1", true));
    let bye = h.take_to(To::Callee);
    assert_eq!(bye[0].method(), Some(&Method::Bye));
    h.callee_sends(respond(&bye[0], 200, "callee-tag", false));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![200]);
    h.advance(T1 * 64);
    h.assert_nothing_held();
    assert!(started.elapsed() < Duration::from_secs(2), "virtual clock");
}

#[test]
fn cancel_racing_a_200_gets_487_and_the_late_answer_is_acked_and_hung_up() {
    let mut h = Harness::new();
    h.caller_sends(invite("c2", "z9hG4bK-c2"));
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(respond(&down, 180, "t", false));
    let cancel = cancel_of(&invite("c2", "z9hG4bK-c2"));
    h.caller_sends(cancel);
    let up = h.take_to(To::Caller);
    assert!(statuses(&up).contains(&487), "{:?}", statuses(&up));
    let sent_down = h.take_to(To::Callee);
    assert_eq!(sent_down[0].method(), Some(&Method::Cancel));
    // The 200 crossed our CANCEL.
    h.callee_sends(respond(&down, 200, "t", true));
    let after = h.take_to(To::Callee);
    let methods: Vec<_> = after.iter().filter_map(|m| m.method().cloned()).collect();
    assert_eq!(methods, vec![Method::Ack, Method::Bye]);
    assert!(
        h.take_to(To::Caller).is_empty(),
        "the caller got its 487 only"
    );
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn timer_b_no_answer_at_all_gives_408_and_releases() {
    let mut h = Harness::new();
    h.caller_sends(invite("c3", "z9hG4bK-c3"));
    h.take();
    h.advance(T1 * 64 - Duration::from_millis(1));
    assert!(h.take_to(To::Caller).is_empty());
    h.advance(Duration::from_millis(2));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![408]);
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn timer_f_unanswered_bye_ends_the_call_with_408() {
    let mut h = Harness::new();
    let (_, ok) = establish(&mut h, "c4");
    h.caller_sends(in_dialog(Method::Bye, &ok, 2, "z9hG4bK-bye4", true));
    h.take();
    h.advance(T1 * 64 + Duration::from_millis(1));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![408]);
    h.assert_nothing_held();
}

#[test]
fn timer_h_non_2xx_without_ack_ends_the_server_transaction() {
    let mut h = Harness::new();
    h.caller_sends(invite("c5", "z9hG4bK-c5"));
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(respond(&down, 486, "t", false));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![100, 486]);
    // Our hop-by-hop ACK went down; the caller never ACKs our 486.
    assert_eq!(h.take_to(To::Callee)[0].method(), Some(&Method::Ack));
    assert_eq!(h.core.stats().active_relays, 1, "waiting for the ACK");
    h.advance(T1 * 64 + Duration::from_millis(1));
    h.assert_nothing_held();
}

#[test]
fn ringing_limit_cancels_and_a_late_2xx_is_acked_and_hung_up() {
    let mut h = Harness::new();
    h.caller_sends(invite("c6", "z9hG4bK-c6"));
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(respond(&down, 180, "t", false));
    h.take();
    h.advance(MAX_RINGING);
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![408]);
    assert_eq!(h.take_to(To::Callee)[0].method(), Some(&Method::Cancel));
    // A 2xx after the limit (late answer): ACK and BYE, the caller hears nothing more.
    h.callee_sends(respond(&down, 200, "t", true));
    let methods: Vec<_> = h
        .take_to(To::Callee)
        .iter()
        .filter_map(|m| m.method().cloned())
        .collect();
    assert_eq!(methods, vec![Method::Ack, Method::Bye]);
    assert!(h.take_to(To::Caller).is_empty());
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn in_dialog_request_from_another_tenant_gets_481() {
    let mut h = Harness::new();
    let (_, ok) = establish(&mut h, "c7");
    let bye = in_dialog(Method::Bye, &ok, 2, "z9hG4bK-x", true);
    h.input(Input::Message {
        conn: OTHER_TENANT,
        msg: bye,
    });
    let answers = h.take_to(To::Other);
    assert_eq!(statuses(&answers), vec![481]);
    assert!(h.take_to(To::Callee).is_empty(), "nothing crossed");
    assert_eq!(h.usage().active_calls, 1, "the call is untouched");
}

#[test]
fn reinvite_glare_gets_491_and_the_call_goes_on() {
    let mut h = Harness::new();
    let (down, ok) = establish(&mut h, "c8");
    // The caller re-offers; before the callee answers, the callee re-offers too.
    let mut reinvite = in_dialog(Method::Invite, &ok, 2, "z9hG4bK-re1", true);
    reinvite.push_header("Content-Type", "application/sdp");
    reinvite.set_body(OFFER.as_bytes().to_vec());
    h.caller_sends(reinvite);
    let relayed = h.take_to(To::Callee);
    assert_eq!(relayed[0].method(), Some(&Method::Invite));
    // The callee's dialog view: its tag is in To of what it got.
    let callee_view = respond(&down, 200, "callee-tag", false);
    let mut glare = in_dialog(Method::Invite, &callee_view, 1, "z9hG4bK-re2", false);
    glare.push_header("Content-Type", "application/sdp");
    glare.set_body(OFFER.as_bytes().to_vec());
    h.callee_sends(glare);
    assert_eq!(statuses(&h.take_to(To::Callee)), vec![491]);
    assert!(
        h.take_to(To::Caller).is_empty(),
        "the glaring offer did not cross"
    );
    // The first re-INVITE completes normally.
    h.callee_sends(respond(&relayed[0], 200, "callee-tag", true));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![200]);
    assert_eq!(h.usage().active_calls, 1);
}

#[test]
fn a_2xx_never_acked_is_retransmitted_then_both_legs_get_bye() {
    let mut h = Harness::new();
    h.caller_sends(invite("c9", "z9hG4bK-c9"));
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(respond(&down, 200, "t", true));
    h.take();
    // Retransmissions at T1, 2·T1, 4·T1 (RFC 3261 §13.3.1.4).
    h.advance(T1 * 7 + Duration::from_millis(1));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![200, 200, 200]);
    h.advance(T1 * 64);
    let to_caller = h.take_to(To::Caller);
    assert!(
        to_caller.iter().any(|m| m.method() == Some(&Method::Bye)),
        "BYE to the caller"
    );
    let to_callee = h.take_to(To::Callee);
    assert!(to_callee.iter().any(|m| m.method() == Some(&Method::Bye)));
    h.assert_nothing_held();
}

#[test]
fn rfc2543_invite_without_branch_is_served_and_cancellable() {
    let mut h = Harness::new();
    let text = String::from_utf8_lossy(&invite("c10", "x").to_bytes())
        .replace(";branch=x", "")
        .to_string();
    let inv = SipMessage::parse(text.as_bytes()).unwrap();
    h.caller_sends(inv.clone());
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![100]);
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(respond(&down, 180, "t", false));
    // The retransmitted INVITE matches the same transaction (no second call).
    h.caller_sends(inv.clone());
    assert_eq!(h.core.stats().active_calls, 1);
    let cancel_text = text
        .replace("INVITE sips", "CANCEL sips")
        .replace("1 INVITE", "1 CANCEL");
    let mut cancel = SipMessage::parse(cancel_text.as_bytes()).unwrap();
    cancel.set_body(Vec::new());
    h.caller_sends(cancel);
    assert!(statuses(&h.take_to(To::Caller)).contains(&487));
    h.callee_sends(respond(&down, 487, "t", false));
    h.advance(T1 * 64 + Duration::from_millis(1));
    h.assert_nothing_held();
}

// ----- the property: no refusal path leaks -----

#[derive(Debug, Clone)]
enum Op {
    /// The caller starts call `n` with a variant of the INVITE.
    Invite(u8, Variant),
    /// The callee answers the last request it got on call `n` with a status.
    CalleeAnswers(u8, u16),
    /// The caller ACKs the last 2xx it got on call `n`.
    CallerAcks(u8),
    /// The caller cancels call `n`.
    CallerCancels(u8),
    /// The caller hangs up call `n` (if it has a dialog).
    CallerByes(u8),
    /// A response matching nothing.
    StrayResponse(u16),
    /// The caller's connection closes and comes back.
    CallerReconnects,
    /// The callee sends a reliable provisional (code, RSeq) to call `n`'s INVITE.
    CalleeReliable(u8, u16, u32),
    /// The caller PRACKs the last reliable provisional it got on call `n`.
    CallerPracks(u8, PrackKind),
    /// The caller sends an UPDATE with an offer in call `n`'s (early) dialog.
    CallerUpdates(u8),
    /// The SRS answers the last recording INVITE it got (recorded runs only).
    SrsAnswers(u16),
    /// The SRS hangs up the last recording dialog it answered.
    SrsByes,
    /// An SRS connection closes (and comes back).
    SrsLost(usize),
    Advance(u32),
}

#[derive(Debug, Clone, Copy)]
enum PrackKind {
    Right,
    UnknownRSeq,
    BadRAck,
}

#[derive(Debug, Clone, Copy)]
enum Variant {
    Plain,
    NoBranch,
    RefusedSdp,
    UnknownScheme,
    UnknownRequire,
    MaxForwardsZero,
    NoRouteUser,
    /// Supported: 100rel.
    Reliable,
}

fn variant() -> impl Strategy<Value = Variant> {
    prop_oneof![
        3 => Just(Variant::Plain),
        1 => Just(Variant::NoBranch),
        1 => Just(Variant::RefusedSdp),
        1 => Just(Variant::UnknownScheme),
        1 => Just(Variant::UnknownRequire),
        1 => Just(Variant::MaxForwardsZero),
        1 => Just(Variant::NoRouteUser),
        3 => Just(Variant::Reliable),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let n = 0u8..4;
    prop_oneof![
        3 => (n.clone(), variant()).prop_map(|(n, v)| Op::Invite(n, v)),
        4 => (n.clone(), prop::sample::select(vec![100u16, 180, 183, 200, 486, 503, 408])).prop_map(|(n, c)| Op::CalleeAnswers(n, c)),
        2 => n.clone().prop_map(Op::CallerAcks),
        1 => n.clone().prop_map(Op::CallerCancels),
        1 => n.clone().prop_map(Op::CallerByes),
        1 => prop::sample::select(vec![180u16, 200, 481]).prop_map(Op::StrayResponse),
        1 => Just(Op::CallerReconnects),
        2 => (n.clone(), prop::sample::select(vec![180u16, 183]), 1u32..4).prop_map(|(n, c, r)| Op::CalleeReliable(n, c, r)),
        2 => (n.clone(), prop::sample::select(vec![PrackKind::Right, PrackKind::Right, PrackKind::UnknownRSeq, PrackKind::BadRAck])).prop_map(|(n, k)| Op::CallerPracks(n, k)),
        1 => n.clone().prop_map(Op::CallerUpdates),
        2 => (0u32..40_000).prop_map(Op::Advance),
    ]
}

/// The ops of a recorded run: the call ops and the SRS's.
fn recorded_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => op(),
        2 => prop::sample::select(vec![200u16, 200, 408, 486, 503]).prop_map(Op::SrsAnswers),
        1 => Just(Op::SrsByes),
        1 => (0usize..2).prop_map(Op::SrsLost),
    ]
}

fn variant_invite(n: u8, v: Variant, seq: u32) -> SipMessage {
    let call_id = format!("p{n}-{seq}");
    let text = String::from_utf8_lossy(&invite(&call_id, &format!("z9hG4bK-{call_id}")).to_bytes())
        .to_string();
    let text = match v {
        Variant::Plain => text,
        Variant::NoBranch => text.replace(&format!(";branch=z9hG4bK-{call_id}"), ""),
        Variant::RefusedSdp => text.replace("s=-", "s=refuse"),
        Variant::UnknownScheme => text.replace(
            "INVITE sips:+15551234@sbc.example.net",
            "INVITE tel:+15551234",
        ),
        Variant::UnknownRequire => {
            text.replace("Max-Forwards: 70", "Max-Forwards: 70\r\nRequire: foo")
        }
        Variant::MaxForwardsZero => text.replace("Max-Forwards: 70", "Max-Forwards: 0"),
        // Routes match every user here; a malformed user part is refused before routing.
        Variant::NoRouteUser => text.replace("sips:+15551234@sbc", "sips:+1@5551234@sbc"),
        Variant::Reliable => {
            text.replace("Max-Forwards: 70", "Max-Forwards: 70\r\nSupported: 100rel")
        }
    };
    SipMessage::parse(text.as_bytes()).unwrap_or_else(|_| invite(&call_id, "z9hG4bK-fallback"))
}

#[derive(Default)]
struct CallView {
    n: u8,
    invite: Option<SipMessage>,
    /// Last request the callee got for this call.
    down: Option<SipMessage>,
    /// Last INVITE the callee got for this call.
    down_invite: Option<SipMessage>,
    /// Last reliable provisional the caller got.
    prov: Option<SipMessage>,
    /// Last 2xx to INVITE the caller got.
    ok: Option<SipMessage>,
}

/// Every call started, in order; an op on `n` acts on the latest call numbered `n`.
#[derive(Default)]
struct Views {
    calls: Vec<CallView>,
    /// Callee-side Call-ID → index (the callee sees our Call-IDs, not the caller's).
    down_ids: HashMap<String, usize>,
}

impl Views {
    fn latest(&mut self, n: u8) -> Option<&mut CallView> {
        self.calls.iter_mut().rev().find(|v| v.n == n)
    }

    /// Learn what each side saw; `fresh` is the call whose INVITE was just sent.
    fn learn(&mut self, sent: Vec<(To, SipMessage)>, fresh: Option<usize>) {
        for (to, m) in sent {
            match to {
                To::Callee if m.is_request() => {
                    let id = m.call_id().unwrap_or_default().to_string();
                    let index = match self.down_ids.get(&id) {
                        Some(i) => Some(*i),
                        None if m.method() == Some(&Method::Invite) => {
                            if let Some(i) = fresh {
                                self.down_ids.insert(id, i);
                            }
                            fresh
                        }
                        None => None,
                    };
                    if let Some(v) = index.and_then(|i| self.calls.get_mut(i)) {
                        if m.method() == Some(&Method::Invite) {
                            v.down_invite = Some(m.clone());
                        }
                        v.down = Some(m);
                    }
                }
                To::Caller if !m.is_request() && m.header("rseq").is_some() => {
                    let id = m.call_id().unwrap_or_default();
                    let found = self
                        .calls
                        .iter_mut()
                        .rev()
                        .find(|v| v.invite.as_ref().and_then(|i| i.call_id()) == Some(id));
                    if let Some(v) = found {
                        v.prov = Some(m);
                    }
                }
                To::Caller if !m.is_request() => {
                    let is_2xx_invite = (200..300).contains(&status(&m))
                        && m.cseq().map(|c| c.1) == Some(Method::Invite);
                    if is_2xx_invite {
                        let id = m.call_id().unwrap_or_default();
                        let found = self
                            .calls
                            .iter_mut()
                            .rev()
                            .find(|v| v.invite.as_ref().and_then(|i| i.call_id()) == Some(id));
                        if let Some(v) = found {
                            v.ok = Some(m);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

fn run(ops: &[Op]) -> Harness {
    run_with(ops, None)
}

/// The SRS side of a recorded run: the last recording INVITE (and from which SRS), the
/// last 2xx it sent.
#[derive(Default)]
struct SrsView {
    invite: Option<(usize, SipMessage)>,
    ok: Option<(usize, SipMessage)>,
}

impl SrsView {
    fn learn(&mut self, sent: &[(To, SipMessage)]) {
        for (to, m) in sent {
            if let To::Trunk(n @ 5..=6) = to {
                if m.method() == Some(&Method::Invite) {
                    self.invite = Some((n - 5, m.clone()));
                }
            }
        }
    }

    fn op(&mut self, h: &mut Harness, op: &Op) {
        match op {
            Op::SrsAnswers(code) => {
                if let Some((i, inv)) = self.invite.take() {
                    let mut r = sbc_sip::message::response_to(&inv, *code, "X", Some("srs"));
                    if *code == 200 {
                        r.push_header("Contact", "<sips:srs@10.7.7.7>");
                        r.push_header("Content-Type", "application/sdp");
                        let m = "m=audio 5000 RTP/SAVP 0\r\n";
                        let lines = String::from_utf8_lossy(inv.body())
                            .matches("m=audio")
                            .count();
                        r.set_body(
                            format!("v=0\r\nc=IN IP4 10.7.7.7\r\n{}", m.repeat(lines)).into_bytes(),
                        );
                        self.ok = Some((i, r.clone()));
                    }
                    h.input(Input::Message {
                        conn: SRS_CONNS[i],
                        msg: r,
                    });
                }
            }
            Op::SrsByes => {
                if let Some((i, ok)) = self.ok.take() {
                    let mut bye = in_dialog(Method::Bye, &ok, 9, "z9hG4bK-srsbye", false);
                    bye.set_header("From", ok.header("to").unwrap());
                    bye.set_header("To", ok.header("from").unwrap());
                    h.input(Input::Message {
                        conn: SRS_CONNS[i],
                        msg: bye,
                    });
                }
            }
            Op::SrsLost(i) => {
                h.input(Input::Closed {
                    conn: SRS_CONNS[*i],
                });
                let kind = ConnKind::Outbound {
                    target: SRS_TARGETS[*i],
                };
                h.input(Input::Connected {
                    conn: SRS_CONNS[*i],
                    kind,
                });
            }
            _ => {}
        }
    }
}

fn run_with(ops: &[Op], recording: Option<OnFailure>) -> Harness {
    let mut h = Harness::new();
    if let Some(on_failure) = recording {
        record_all(&mut h, on_failure);
    }
    let mut srs = SrsView::default();
    let mut views = Views::default();
    let mut seq = 0u32;
    for op in ops {
        let mut fresh = None;
        match op.clone() {
            Op::Invite(n, v) => {
                seq += 1;
                let inv = variant_invite(n, v, seq);
                views.calls.push(CallView {
                    n,
                    invite: Some(inv.clone()),
                    ..CallView::default()
                });
                fresh = Some(views.calls.len() - 1);
                h.caller_sends(inv);
            }
            Op::CalleeAnswers(n, code) => {
                if let Some(down) = views.latest(n).and_then(|v| v.down.clone()) {
                    if down.method() != Some(&Method::Ack) {
                        let sdp = code == 200 || code == 183;
                        h.callee_sends(respond(&down, code, &format!("callee-{n}"), sdp));
                    }
                }
            }
            Op::CallerAcks(n) => {
                if let Some(ok) = views.latest(n).and_then(|v| v.ok.clone()) {
                    let cseq = ok.cseq().map(|c| c.0).unwrap_or(1);
                    let branch = format!("z9hG4bK-a{seq}");
                    h.caller_sends(in_dialog(Method::Ack, &ok, cseq, &branch, true));
                }
            }
            Op::CallerCancels(n) => {
                if let Some(inv) = views.latest(n).and_then(|v| v.invite.clone()) {
                    let text = String::from_utf8_lossy(&inv.to_bytes())
                        .replacen("INVITE ", "CANCEL ", 1)
                        .replace(" INVITE\r\n", " CANCEL\r\n");
                    if let Ok(mut c) = SipMessage::parse(text.as_bytes()) {
                        c.set_body(Vec::new());
                        h.caller_sends(c);
                    }
                }
            }
            Op::CallerByes(n) => {
                if let Some(ok) = views.latest(n).and_then(|v| v.ok.clone()) {
                    seq += 1;
                    let branch = format!("z9hG4bK-b{seq}");
                    h.caller_sends(in_dialog(Method::Bye, &ok, 100 + seq, &branch, true));
                }
            }
            Op::StrayResponse(code) => {
                let inv = invite("stray", "z9hG4bK-nothing");
                h.callee_sends(respond(&inv, code, "s", false));
            }
            Op::CallerReconnects => {
                h.input(Input::Closed { conn: CALLER });
                let kind = ConnKind::Inbound {
                    tenant: Some(h.tenant.clone()),
                    listener: 0,
                };
                h.input(Input::Connected { conn: CALLER, kind });
            }
            Op::CalleeReliable(n, code, r) => {
                if let Some(down) = views.latest(n).and_then(|v| v.down_invite.clone()) {
                    let mut resp = respond(&down, code, &format!("callee-{n}"), code == 183);
                    resp.push_header("Require", "100rel");
                    resp.push_header("RSeq", r.to_string());
                    h.callee_sends(resp);
                }
            }
            Op::CallerPracks(n, kind) => {
                if let Some(prov) = views.latest(n).and_then(|v| v.prov.clone()) {
                    seq += 1;
                    let n = prov
                        .header("rseq")
                        .and_then(|v| v.parse::<u32>().ok())
                        .unwrap_or(1);
                    let rack = match kind {
                        PrackKind::Right => format!("{n} 1 INVITE"),
                        PrackKind::UnknownRSeq => format!("{} 1 INVITE", n.wrapping_add(100)),
                        PrackKind::BadRAck => "x y".to_string(),
                    };
                    let branch = format!("z9hG4bK-p{seq}");
                    let mut m = in_dialog(Method::Prack, &prov, 100 + seq, &branch, true);
                    m.push_header("RAck", rack);
                    h.caller_sends(m);
                }
            }
            Op::CallerUpdates(n) => {
                let view = views.latest(n);
                if let Some(base) = view.and_then(|v| v.ok.clone().or_else(|| v.prov.clone())) {
                    seq += 1;
                    let branch = format!("z9hG4bK-u{seq}");
                    let mut m = in_dialog(Method::Update, &base, 100 + seq, &branch, true);
                    m.push_header("Content-Type", "application/sdp");
                    m.set_body(OFFER.as_bytes().to_vec());
                    h.caller_sends(m);
                }
            }
            Op::Advance(ms) => h.advance(Duration::from_millis(u64::from(ms))),
            Op::SrsAnswers(_) | Op::SrsByes | Op::SrsLost(_) => srs.op(&mut h, op),
        }
        let sent = h.take();
        srs.learn(&sent);
        views.learn(sent, fresh);
    }
    // Wind down: the caller ACKs and hangs up whatever it saw answered, then every timer
    // runs out.
    let oks: Vec<SipMessage> = views.calls.iter().filter_map(|v| v.ok.clone()).collect();
    for (i, ok) in oks.iter().enumerate() {
        let cseq = ok.cseq().map(|c| c.0).unwrap_or(1);
        let i = i as u32;
        h.caller_sends(in_dialog(
            Method::Ack,
            ok,
            cseq,
            &format!("z9hG4bK-fa{i}"),
            true,
        ));
        h.caller_sends(in_dialog(
            Method::Bye,
            ok,
            1000 + i,
            &format!("z9hG4bK-fb{i}"),
            true,
        ));
    }
    for _ in 0..4 {
        h.advance(MAX_RINGING + T1 * 64 * 2);
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// For any sequence of valid, malformed and refused requests and responses, once every
    /// transaction has ended the tenant's pending and active counts, the registry and the
    /// media engine hold nothing for those calls.
    #[test]
    fn no_refusal_path_leaks(ops in prop::collection::vec(op(), 0..40)) {
        let h = run(&ops);
        h.assert_nothing_held();
    }

    /// The same for calls recorded (SIPREC) under either failure policy, with the SRS
    /// accepting, refusing, hanging up or going away at any point: every refusal path
    /// releases what admission granted and every recording path its prepared streams.
    #[test]
    fn no_recorded_call_leaks(
        ops in prop::collection::vec(recorded_op(), 0..40),
        required in any::<bool>(),
    ) {
        let policy = if required { OnFailure::Required } else { OnFailure::Continue };
        let h = run_with(&ops, Some(policy));
        h.assert_nothing_held();
    }
}

#[test]
fn refusals_before_admission_answer_and_hold_nothing() {
    let mut h = Harness::new();
    let cases = [
        (Variant::UnknownScheme, 416),
        (Variant::UnknownRequire, 420),
        (Variant::MaxForwardsZero, 483),
        (Variant::NoRouteUser, 400),
        (Variant::RefusedSdp, 488),
    ];
    for (i, (v, want)) in cases.into_iter().enumerate() {
        h.caller_sends(variant_invite(9, v, i as u32));
        let up = h.take_to(To::Caller);
        assert_eq!(
            statuses(&up).last(),
            Some(&want),
            "{v:?}: {:?}",
            statuses(&up)
        );
        if want == 420 {
            assert_eq!(up.last().and_then(|m| m.header("unsupported")), Some("foo"));
        }
        assert!(h.take_to(To::Callee).is_empty(), "{v:?}: nothing forwarded");
    }
    h.assert_nothing_held();
}

#[test]
fn fifty_branchless_invites_do_not_lock_the_tenant_out() {
    // Finding 1: each used to keep its pending-INVITE slot forever.
    let mut h = Harness::new();
    for i in 0..60 {
        let text = String::from_utf8_lossy(&invite(&format!("nb{i}"), "x").to_bytes())
            .replace(";branch=x", "");
        h.caller_sends(SipMessage::parse(text.as_bytes()).unwrap());
        let down = h.take_to(To::Callee);
        assert_eq!(down.len(), 1, "call {i} was relayed");
        h.callee_sends(respond(&down[0], 486, "t", false));
        h.take();
    }
    h.advance(T1 * 64 + Duration::from_millis(1));
    h.assert_nothing_held();
}

#[test]
fn never_acked_invites_log_one_line_and_one_summary_not_one_each() {
    // Finding 11: each never-ACKed INVITE used to write a WARN and three INFO lines.
    let capture = Capture::default();
    let _logs = capture.install(tracing::Level::WARN);
    let mut h = Harness::new();
    for i in 0..50 {
        h.caller_sends(invite(&format!("na{i}"), &format!("z9hG4bK-na{i}")));
        let down = h.take_to(To::Callee).remove(0);
        h.callee_sends(respond(&down, 200, "t", true));
        h.take();
    }
    // Another test thread may have registered the summary's callsite while this thread's
    // subscriber was being installed, caching "never" for it (tracing's per-callsite
    // interest is global): recompute it now that the subscriber is in place.
    tracing::callsite::rebuild_interest_cache();
    h.advance(T1 * 64 + Duration::from_secs(11));
    h.assert_nothing_held();
    let text = capture.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("no_ack_for_2xx"))
        .collect();
    assert_eq!(lines.len(), 2, "one line at once, one summary: {lines:#?}");
    assert!(
        lines[1].contains("count=49") && lines[1].contains("total=50"),
        "{}",
        lines[1]
    );
}

/// A request from the caller built from text (`{CID}` is replaced by `call_id`).
fn caller_request(text: &str) -> SipMessage {
    SipMessage::parse(text.replace('\n', "\r\n").as_bytes()).unwrap()
}

fn options(uri: &str, method: &str) -> SipMessage {
    caller_request(&format!(
        "{method} {uri} SIP/2.0\nVia: SIP/2.0/TLS 10.88.0.5:5061;branch=z9hG4bK-o{method}\nMax-Forwards: 70\nFrom: <sips:alice@platform.example>;tag=o1\nTo: <sips:sbc@sbc.example.net>\nCall-ID: opt-{method}\nCSeq: 1 {method}\n\n"
    ))
}

#[test]
fn method_and_scheme_refusals_name_the_fault() {
    // Findings 4 and 7: OPTIONS to tel: is 416 (it was 200), an unknown method 501 (it
    // was 405), a known one we do not serve 405 with Allow.
    let mut h = Harness::new();
    h.caller_sends(options("tel:+15551234", "OPTIONS"));
    h.caller_sends(options("sips:sbc@sbc.example.net", "FOO"));
    h.caller_sends(options("sips:sbc@sbc.example.net", "REGISTER"));
    h.caller_sends(options("sips:sbc@sbc.example.net", "OPTIONS"));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![416, 501, 405, 200]);
    assert!(up[2].header("allow").is_some_and(|a| a.contains("INVITE")));
    h.assert_nothing_held();
}

fn with_body(mut m: SipMessage, content_type: &str, body: &str) -> SipMessage {
    m.remove_header("content-type");
    m.push_header("Content-Type", content_type);
    m.set_body(body.as_bytes().to_vec());
    m
}

const PIDF: &str = "<?xml version=\"1.0\"?><presence entity=\"pres:alice@platform.example\"><tuple id=\"geo\"/></presence>";

#[test]
fn multipart_sdp_is_anchored_and_other_bodies_refused_before_forwarding() {
    // Finding 2: only a body labelled exactly application/sdp was anchored; multipart or
    // unknown types crossed raw with the caller's media address.
    let mut h = Harness::new();
    let policy = sbc_sip::b2bua::topology::TenantPolicy {
        bodies: sbc_sip::b2bua::topology::BodyPolicy::new(&sbc_core::config::BodySettings {
            allow: vec!["application/pidf+xml".into()],
        }),
        ..Default::default()
    };
    h.core
        .set_sip_policies(HashMap::from([(h.tenant.clone(), policy)]));
    let multipart = format!(
        "--xyz\r\nContent-Type: Application/SDP\r\n\r\n{OFFER}\r\n--xyz\r\nContent-Type: application/pidf+xml\r\nContent-ID: <geo@platform>\r\n\r\n{PIDF}\r\n--xyz--\r\n"
    );
    let inv = with_body(
        invite("mp1", "z9hG4bK-mp1"),
        "multipart/mixed;boundary=xyz",
        &multipart,
    );
    h.caller_sends(inv);
    let down = h.take_to(To::Callee);
    assert_eq!(down.len(), 1);
    let text = String::from_utf8_lossy(&down[0].to_bytes()).to_string();
    assert!(
        !text.contains("10.1.1.1"),
        "the caller's media address crossed: {text}"
    );
    assert!(text.contains("192.0.2.1"), "the SDP part was anchored");
    assert!(text.contains(PIDF), "the allowed part crossed");
    assert!(!text.contains("boundary=xyz"), "a fresh boundary");
    assert!(down[0]
        .header("content-type")
        .is_some_and(|c| c.starts_with("multipart/mixed")));
    assert!(h.media.live.lock().unwrap().len() == 1);

    // An unknown type and a multipart with a part the tenant does not allow: 415 with
    // Accept, nothing forwarded, nothing held for them.
    let unknown = with_body(
        invite("mp2", "z9hG4bK-mp2"),
        "application/x-secret",
        "10.1.1.1",
    );
    let isup = multipart.replace("application/pidf+xml", "application/isup");
    let disallowed = with_body(
        invite("mp3", "z9hG4bK-mp3"),
        "multipart/mixed;boundary=xyz",
        &isup,
    );
    h.caller_sends(unknown);
    h.caller_sends(disallowed);
    let up: Vec<SipMessage> = h
        .take_to(To::Caller)
        .into_iter()
        .filter(|m| m.call_id() != Some("mp1"))
        .collect();
    assert_eq!(statuses(&up), vec![415, 415]);
    assert_eq!(
        up[0].header_values("accept").collect::<Vec<_>>(),
        vec!["application/sdp", "multipart/mixed", "application/pidf+xml"]
    );
    assert!(h.take_to(To::Callee).is_empty(), "nothing forwarded");
    assert_eq!(
        h.usage().active_calls,
        1,
        "only the first call holds a slot"
    );
}

#[test]
fn only_allowed_headers_cross_in_either_direction() {
    // Finding 3: every header outside a short deny-list crossed verbatim both ways.
    let mut h = Harness::new();
    let leaky = "P-Asserted-Identity: <sip:+15550001@core.platform.internal>\r\n\
Diversion: <sip:+1555000@10.20.0.9>;reason=unconditional\r\n\
Warning: 399 sbc-b.platform.internal \"retry\"\r\n\
User-Agent: PlatformSBC/4.2.1\r\n\
X-Internal-Route: 10.20.0.9:5060\r\n\
Supported: timer, 100rel\r\n\
Session-Expires: 1800\r\n\
Subject: hello\r\n";
    let text = String::from_utf8_lossy(&invite("hd1", "z9hG4bK-hd1").to_bytes()).replace(
        "Max-Forwards: 70\r\n",
        &format!("Max-Forwards: 70\r\n{leaky}"),
    );
    h.caller_sends(SipMessage::parse(text.as_bytes()).unwrap());
    let down = h.take_to(To::Callee).remove(0);
    for name in [
        "p-asserted-identity",
        "diversion",
        "warning",
        "user-agent",
        "x-internal-route",
    ] {
        assert_eq!(down.header(name), None, "{name} crossed toward the callee");
    }
    assert_eq!(down.header("supported"), Some("timer"));
    assert_eq!(down.header("session-expires"), Some("1800"));
    assert_eq!(down.header("subject"), Some("hello"));
    let mut ok = respond(&down, 200, "t", true);
    ok.push_header("Server", "Asterisk PBX 18.2.1");
    ok.push_header("Warning", "399 pbx7.corp.internal \"codec\"");
    ok.push_header("X-Asterisk-HangupCause", "Normal");
    ok.push_header("P-Asserted-Identity", "<sip:+15551234@pbx7.corp.internal>");
    ok.push_header("Allow", "INVITE, ACK, BYE");
    h.callee_sends(ok);
    let up = h.take_to(To::Caller);
    let ok = up.iter().find(|m| status(m) == 200).unwrap();
    for name in [
        "server",
        "warning",
        "x-asterisk-hangupcause",
        "p-asserted-identity",
    ] {
        assert_eq!(ok.header(name), None, "{name} crossed toward the caller");
    }
    assert_eq!(
        ok.header_values("allow").collect::<Vec<_>>(),
        vec!["INVITE", "ACK", "BYE"]
    );
}

#[test]
fn pending_invite_gauge_follows_the_answer() {
    // Finding 10: the gauge stayed at 1 after the call was answered.
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let gauge = |name: &str| -> Option<f64> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .find(|(k, _, _, _)| k.key().name() == name)
            .and_then(|(_, _, _, v)| match v {
                DebugValue::Gauge(g) => Some(g.into_inner()),
                _ => None,
            })
    };
    metrics::with_local_recorder(&recorder, || {
        let mut h = Harness::new();
        h.caller_sends(invite("g1", "z9hG4bK-g1"));
        assert_eq!(gauge("sbc_tenant_pending_invites"), Some(1.0));
        let down = h.take_to(To::Callee).remove(0);
        h.callee_sends(respond(&down, 200, "t", true));
        assert_eq!(gauge("sbc_tenant_pending_invites"), Some(0.0));
        assert_eq!(gauge("sbc_tenant_active_calls"), Some(1.0));
    });
}

/// `sbc_sip_call_setup_seconds`: the virtual time from the INVITE to the final sent up,
/// once per call (a retransmitted 2xx is not a second observation), per tenant.
#[test]
fn call_setup_time_is_observed_from_the_invite_to_the_final() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let mut h = Harness::new();
        h.caller_sends(invite("st1", "z9hG4bK-st1"));
        let down = h.take_to(To::Callee).remove(0);
        h.advance(Duration::from_millis(1500));
        let ok = respond(&down, 200, "t", true);
        h.callee_sends(ok.clone());
        h.callee_sends(ok);
        // A refused call: answered at once (404 from the callee after 250 ms).
        h.caller_sends(invite("st2", "z9hG4bK-st2"));
        let down = h.take_to(To::Callee).remove(0);
        h.advance(Duration::from_millis(250));
        h.callee_sends(respond(&down, 404, "u", false));
    });
    let samples: Vec<(String, Vec<f64>)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, _, _, _)| k.key().name() == "sbc_sip_call_setup_seconds")
        .map(|(k, _, _, v)| {
            let tenant = k
                .key()
                .labels()
                .find(|l| l.key() == "tenant")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let DebugValue::Histogram(v) = v else {
                panic!("not a histogram")
            };
            (tenant, v.into_iter().map(|x| x.into_inner()).collect())
        })
        .collect();
    assert_eq!(samples.len(), 1, "{samples:?}");
    let (tenant, mut values) = samples.into_iter().next().unwrap();
    assert_eq!(tenant, "acme");
    values.sort_by(f64::total_cmp);
    assert_eq!(values, vec![0.25, 1.5]);
}

#[test]
fn a_retransmitted_2xx_is_absorbed_and_a_forked_2xx_is_hung_up_alone() {
    let mut h = Harness::new();
    h.caller_sends(invite("rt1", "z9hG4bK-rt1"));
    let down = h.take_to(To::Callee).remove(0);
    let ok = respond(&down, 200, "t", true);
    h.callee_sends(ok.clone());
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![100, 200]);
    // The callee retransmits its 2xx before the caller's ACK came through: absorbed.
    h.callee_sends(ok);
    assert!(h.take_to(To::Caller).is_empty());
    assert!(h.take_to(To::Callee).is_empty());
    // Another fork answers too: that dialog gets ACK and BYE, the call is untouched.
    h.callee_sends(respond(&down, 200, "fork2", true));
    let to_callee = h.take_to(To::Callee);
    let methods: Vec<_> = to_callee
        .iter()
        .filter_map(|m| m.method().cloned())
        .collect();
    assert_eq!(methods, vec![Method::Ack, Method::Bye]);
    assert!(to_callee
        .iter()
        .all(|m| m.header("to").and_then(tag) == Some("fork2")));
    assert_eq!(h.usage().active_calls, 1);
    // The caller's ACK reaches the callee on the call's own dialog.
    h.caller_sends(in_dialog(Method::Ack, &up[1], 1, "z9hG4bK-rt1-ack", true));
    let ack = h.take_to(To::Callee);
    assert_eq!(ack[0].method(), Some(&Method::Ack));
    assert_eq!(ack[0].header("to").and_then(tag), Some("t"));
    h.advance(T1 * 64 * 2);
    assert_eq!(h.core.stats().active_calls, 1, "the call goes on");
}

#[test]
fn an_unrecognised_peer_gets_403_whatever_it_sends_and_is_cut_off() {
    let mut h = Harness::new();
    const STRANGER: ConnId = ConnId(9);
    h.input(Input::Connected {
        conn: STRANGER,
        kind: ConnKind::Inbound {
            tenant: None,
            listener: 0,
        },
    });
    for (uri, method) in [
        ("tel:+1555", "OPTIONS"),
        ("sips:sbc@sbc.example.net", "FOO"),
        ("sips:sbc@sbc.example.net", "REGISTER"),
        ("sips:sbc@sbc.example.net", "OPTIONS"),
        ("sips:sbc@sbc.example.net", "INFO"),
    ] {
        h.input(Input::Message {
            conn: STRANGER,
            msg: options(uri, method),
        });
    }
    assert_eq!(statuses(&h.take_to(To::Other)), vec![403; 5]);
    assert_eq!(h.closed, vec![STRANGER], "closed after repeated refusals");
}

// ----- failover across route targets -----

/// A route over targets 0, 1, 2 as (priority, weight); the first `n` of them.
fn failover_route(targets: &[(u16, u16)], try_timeout: Duration) -> RouteEntry {
    let mut r = RouteEntry::single("", TARGET, "pbx.inside:5061");
    r.targets = targets
        .iter()
        .enumerate()
        .map(|(i, &(priority, weight))| sbc_sip::routing::RouteTarget {
            target: TargetId(i),
            host_port: format!("pbx{i}.inside:5061"),
            uri: format!("sips:pbx{i}.inside:5061"),
            transport: Transport::Tls,
            priority,
            weight,
        })
        .collect();
    r.failover.try_timeout = try_timeout;
    r
}

const TRY: Duration = Duration::from_secs(1);

/// Where the latest INVITE went, and the INVITE.
fn invite_sent(h: &mut Harness) -> (To, SipMessage) {
    let sent = h.take();
    let mut invites: Vec<(To, SipMessage)> = sent
        .iter()
        .filter(|(_, m)| m.method() == Some(&Method::Invite))
        .cloned()
        .collect();
    h.sent = sent
        .into_iter()
        .filter(|(_, m)| m.method() != Some(&Method::Invite))
        .collect();
    assert_eq!(invites.len(), 1, "one INVITE sent");
    invites.remove(0)
}

fn to_tag(m: &SipMessage) -> String {
    m.header("to").and_then(tag).unwrap_or_default().to_string()
}

#[test]
fn first_target_refuses_503_and_the_call_lands_on_the_second() {
    let mut h = Harness::with_route(failover_route(&[(0, 1), (1, 1)], TRY));
    h.caller_sends(invite("fo1", "z9hG4bK-fo1"));
    let (to, first) = invite_sent(&mut h);
    assert_eq!(to, To::Callee);
    h.target_sends(to, respond(&first, 100, "x", false));
    h.target_sends(to, respond(&first, 180, "first-tag", false));
    h.target_sends(to, respond(&first, 503, "first-tag", false));
    // The 503 is ACKed on its own transaction, and the INVITE goes to the second target
    // with a fresh dialog.
    let acks = h.take_to(To::Callee);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].method(), Some(&Method::Ack));
    let (to2, second) = invite_sent(&mut h);
    assert_eq!(to2, To::Trunk(1));
    assert_ne!(second.call_id(), first.call_id(), "fresh Call-ID");
    assert_ne!(
        second.header("from").and_then(tag),
        first.header("from").and_then(tag),
        "fresh From tag"
    );
    assert!(second.request_uri().unwrap().ends_with("@pbx1.inside:5061"));
    assert_eq!(second.body(), first.body(), "the same (anchored) offer");
    h.target_sends(to2, respond(&second, 180, "second-tag", false));
    h.target_sends(to2, respond(&second, 200, "second-tag", true));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![100, 180, 180, 200], "no 503 upstream");
    let tags: HashSet<String> = up[1..].iter().map(to_tag).collect();
    assert_eq!(tags.len(), 1, "one To tag towards the caller: {tags:?}");
    // ACK and BYE go to the second target, in its dialog.
    let ok = up[3].clone();
    h.caller_sends(in_dialog(Method::Ack, &ok, 1, "z9hG4bK-fo1a", true));
    let ack = h.take_to(To::Trunk(1));
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0].call_id(), second.call_id());
    assert_eq!(to_tag(&ack[0]), "second-tag");
    // The first target's early dialog is gone: its BYE gets 481.
    let early = respond(&first, 180, "first-tag", false);
    let bye = in_dialog(Method::Bye, &early, 5, "z9hG4bK-fo1e", false);
    h.callee_sends(bye);
    assert_eq!(statuses(&h.take_to(To::Callee)), vec![481]);
    h.caller_sends(in_dialog(Method::Bye, &ok, 2, "z9hG4bK-fo1b", true));
    let bye = h.take_to(To::Trunk(1));
    assert_eq!(bye[0].method(), Some(&Method::Bye));
    h.target_sends(To::Trunk(1), respond(&bye[0], 200, "second-tag", false));
    h.advance(T1 * 64 + Duration::from_millis(1));
    h.assert_nothing_held();
}

#[test]
fn first_target_never_answers_and_the_call_lands_on_the_second_within_the_try_timeout() {
    let mut h = Harness::with_route(failover_route(&[(0, 1), (1, 1)], TRY));
    let start = h.now;
    h.caller_sends(invite("fo2", "z9hG4bK-fo2"));
    let (to, first) = invite_sent(&mut h);
    assert_eq!(to, To::Callee);
    h.advance(TRY - Duration::from_millis(1));
    assert!(
        h.take_to(To::Trunk(1)).is_empty(),
        "not before the try timeout"
    );
    h.advance(Duration::from_millis(1));
    let (to2, second) = invite_sent(&mut h);
    assert_eq!(to2, To::Trunk(1));
    assert_eq!(h.now - start, TRY, "failover exactly at the try timeout");
    assert!(
        h.take_to(To::Callee).is_empty(),
        "no CANCEL before a provisional"
    );
    // The first wakes up late: its 180 gets the CANCEL, its 487 the ACK; nothing upstream.
    h.callee_sends(respond(&first, 180, "late", false));
    let cancel = h.take_to(To::Callee);
    assert_eq!(cancel.len(), 1);
    assert_eq!(cancel[0].method(), Some(&Method::Cancel));
    assert_eq!(cancel[0].call_id(), first.call_id());
    h.callee_sends(respond(&first, 487, "late", false));
    let ack = h.take_to(To::Callee);
    assert_eq!(ack[0].method(), Some(&Method::Ack));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![100]);
    h.target_sends(to2, respond(&second, 200, "second", true));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![200]);
    h.caller_sends(in_dialog(Method::Ack, &up[0], 1, "z9hG4bK-fo2a", true));
    h.caller_sends(in_dialog(Method::Bye, &up[0], 2, "z9hG4bK-fo2b", true));
    let bye = h.take_to(To::Trunk(1));
    let bye = bye
        .iter()
        .find(|m| m.method() == Some(&Method::Bye))
        .unwrap();
    h.target_sends(to2, respond(bye, 200, "second", false));
    h.advance(T1 * 64 + Duration::from_millis(1));
    h.assert_nothing_held();
}

#[test]
fn a_late_2xx_from_a_left_target_is_acked_and_hung_up_and_never_reaches_the_caller() {
    let mut h = Harness::with_route(failover_route(&[(0, 1), (1, 1)], TRY));
    h.caller_sends(invite("fo3", "z9hG4bK-fo3"));
    let (_, first) = invite_sent(&mut h);
    h.advance(TRY);
    let (to2, second) = invite_sent(&mut h);
    h.callee_sends(respond(&first, 200, "late", true));
    let down = h.take_to(To::Callee);
    let methods: Vec<_> = down.iter().filter_map(|m| m.method().cloned()).collect();
    assert_eq!(methods, vec![Method::Ack, Method::Bye]);
    assert!(down.iter().all(|m| m.call_id() == first.call_id()));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![100]);
    h.target_sends(to2, respond(&second, 486, "busy", false));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![486]);
    h.advance(T1 * 64 * 2);
    h.assert_nothing_held();
}

#[test]
fn retry_after_quarantines_the_target_for_new_calls_then_it_comes_back() {
    let mut h = Harness::with_route(failover_route(&[(0, 1), (1, 1)], TRY));
    h.caller_sends(invite("q1", "z9hG4bK-q1"));
    let (to, first) = invite_sent(&mut h);
    assert_eq!(to, To::Callee);
    let mut busy = respond(&first, 503, "q", false);
    busy.push_header("Retry-After", "10");
    h.callee_sends(busy);
    let (to2, second) = invite_sent(&mut h);
    assert_eq!(to2, To::Trunk(1));
    h.target_sends(to2, respond(&second, 486, "busy", false));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![100, 486]);
    // Within the 10 s the next call goes straight to the second target.
    h.advance(Duration::from_secs(9));
    h.caller_sends(invite("q2", "z9hG4bK-q2"));
    let (to, inv) = invite_sent(&mut h);
    assert_eq!(to, To::Trunk(1), "quarantined target skipped");
    h.target_sends(to, respond(&inv, 486, "busy", false));
    // After it, the first is back.
    h.advance(Duration::from_secs(1));
    h.caller_sends(invite("q3", "z9hG4bK-q3"));
    let (to, inv) = invite_sent(&mut h);
    assert_eq!(to, To::Callee, "quarantine over");
    h.target_sends(to, respond(&inv, 486, "busy", false));
    h.advance(T1 * 64 * 2);
    h.assert_nothing_held();
}

#[test]
fn weights_among_equal_priority_share_the_first_try() {
    // 75/25 over 1000 calls on the seeded RNG: the first tries split about 750/250.
    let mut h = Harness::with_route(failover_route(&[(5, 75), (5, 25)], TRY));
    let mut first = [0u32; 2];
    for i in 0..1000 {
        h.caller_sends(invite(&format!("w{i}"), &format!("z9hG4bK-w{i}")));
        let (to, inv) = invite_sent(&mut h);
        first[match to {
            To::Callee => 0,
            _ => 1,
        }] += 1;
        h.target_sends(to, respond(&inv, 486, "busy", false));
        h.take();
    }
    assert!((690..=810).contains(&first[0]), "{first:?}");
    assert_eq!(first[0] + first[1], 1000);
    h.advance(T1 * 64 * 2);
    h.assert_nothing_held();
}

#[test]
fn when_every_target_fails_the_caller_gets_one_final() {
    // Refusals: the last target's final goes up, once.
    let mut h = Harness::with_route(failover_route(&[(0, 1), (1, 1), (2, 1)], TRY));
    h.caller_sends(invite("all1", "z9hG4bK-all1"));
    for expected in [To::Callee, To::Trunk(1), To::Trunk(2)] {
        let (to, inv) = invite_sent(&mut h);
        assert_eq!(to, expected);
        h.target_sends(to, respond(&inv, 503, "n", false));
    }
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![100, 503]);
    h.advance(T1 * 64 * 2);
    h.assert_nothing_held();

    // Transport failures: one 503.
    h.caller_sends(invite("all2", "z9hG4bK-all2"));
    for _ in 0..3 {
        let (to, inv) = invite_sent(&mut h);
        let target = match to {
            To::Callee => TARGET,
            To::Trunk(n) => TargetId(n),
            _ => unreachable!(),
        };
        h.input(Input::SendFailed { target, msg: inv });
    }
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![100, 503]);
    h.advance(T1 * 64 * 2);
    h.assert_nothing_held();

    // Silence everywhere: two try timeouts, then Timer B of the last: one 408.
    h.caller_sends(invite("all3", "z9hG4bK-all3"));
    h.advance(TRY * 2);
    h.advance(T1 * 64);
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![100, 408]);
    h.advance(T1 * 64 * 2);
    h.assert_nothing_held();
}

#[test]
fn a_lost_connection_before_the_answer_moves_the_call_on() {
    let mut h = Harness::with_route(failover_route(&[(0, 1), (1, 1)], TRY));
    h.caller_sends(invite("lost", "z9hG4bK-lost"));
    let (_, first) = invite_sent(&mut h);
    h.callee_sends(respond(&first, 180, "a", false));
    h.input(Input::Closed { conn: CALLEE });
    let (to2, second) = invite_sent(&mut h);
    assert_eq!(to2, To::Trunk(1));
    h.target_sends(to2, respond(&second, 480, "gone", false));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![100, 180, 480]);
    h.advance(T1 * 64 * 2);
    h.assert_nothing_held();
}

#[test]
fn targets_down_by_options_pings_are_skipped_and_come_back() {
    let mut route = failover_route(&[(0, 1), (1, 1)], TRY);
    route.health = Some(sbc_core::config::HealthSettings {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        down_after: 2,
        up_after: 1,
    });
    let mut h = Harness::with_route(route);
    let board = Arc::new(sbc_core::trunks::TrunkBoard::new());
    h.core.set_trunk_board(board.clone());
    let acme = TenantId::from("acme");
    let up_of = |b: &sbc_core::trunks::TrunkBoard, target: &str| {
        b.snapshot(Some(&acme))
            .iter()
            .find(|r| r.target == target)
            .map(|r| (r.up, r.consecutive_failures))
    };
    // Pings at once, to both targets; only the second answers, twice in a row.
    for round in 0..2 {
        h.advance(Duration::ZERO);
        let pings = h.take();
        let options: Vec<&(To, SipMessage)> = pings
            .iter()
            .filter(|(_, m)| m.method() == Some(&Method::Options))
            .collect();
        assert_eq!(options.len(), 2, "round {round}: {pings:?}");
        for (to, m) in options {
            if *to == To::Trunk(1) {
                h.target_sends(*to, respond(m, 200, "p", false));
            }
        }
        h.advance(Duration::from_secs(5));
    }
    assert_eq!(up_of(&board, "sips:pbx0.inside:5061"), Some((false, 2)));
    assert_eq!(up_of(&board, "sips:pbx1.inside:5061"), Some((true, 0)));
    // The pings of the third round, sent at 10 s.
    let pings = h.take();
    h.caller_sends(invite("down1", "z9hG4bK-down1"));
    let (to, inv) = invite_sent(&mut h);
    assert_eq!(to, To::Trunk(1), "the down target is skipped");
    h.target_sends(to, respond(&inv, 486, "busy", false));
    // The first answers its next ping: up again (up_after = 1).
    let ping = pings
        .iter()
        .find(|(to, m)| *to == To::Callee && m.method() == Some(&Method::Options))
        .map(|(_, m)| m.clone())
        .expect("a ping to the first target");
    h.callee_sends(respond(&ping, 200, "p", false));
    assert_eq!(up_of(&board, "sips:pbx0.inside:5061"), Some((true, 0)));
    h.caller_sends(invite("down2", "z9hG4bK-down2"));
    let (to, inv) = invite_sent(&mut h);
    assert_eq!(to, To::Callee);
    h.target_sends(to, respond(&inv, 486, "busy", false));
    // Every target down: the call is refused 503 before admission.
    for _ in 0..3 {
        h.advance(Duration::from_secs(5));
        h.advance(Duration::from_secs(1));
    }
    assert_eq!(
        up_of(&board, "sips:pbx1.inside:5061").map(|x| x.0),
        Some(false)
    );
    h.take();
    h.caller_sends(invite("down3", "z9hG4bK-down3"));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![503]);
    assert!(up[0].header("retry-after").is_some());
    h.advance(T1 * 64 * 2);
    h.assert_nothing_held();
}

// ----- the property: no failover path leaks -----

#[derive(Debug, Clone)]
enum FoOp {
    Invite(u8),
    /// The target holding call `n`'s latest request answers it (503 + Retry-After: 5031).
    TargetAnswers(u8, u16),
    /// Call `n`'s latest request towards a target could not be sent.
    SendFails(u8),
    /// The connection to target `k` closes and comes back.
    TrunkCloses(u8),
    CallerCancels(u8),
    CallerAcks(u8),
    CallerByes(u8),
    Advance(u32),
}

fn fo_op() -> impl Strategy<Value = FoOp> {
    let n = 0u8..3;
    prop_oneof![
        3 => n.clone().prop_map(FoOp::Invite),
        6 => (n.clone(), prop::sample::select(vec![100u16, 180, 183, 200, 486, 503, 5031, 408, 500])).prop_map(|(n, c)| FoOp::TargetAnswers(n, c)),
        1 => n.clone().prop_map(FoOp::SendFails),
        1 => (0u8..3).prop_map(FoOp::TrunkCloses),
        1 => n.clone().prop_map(FoOp::CallerCancels),
        2 => n.clone().prop_map(FoOp::CallerAcks),
        1 => n.clone().prop_map(FoOp::CallerByes),
        3 => (0u32..3_000).prop_map(FoOp::Advance),
    ]
}

#[derive(Default, Clone)]
struct FoView {
    invite: Option<SipMessage>,
    down: Option<(To, SipMessage)>,
    ok: Option<SipMessage>,
}

/// The caller's INVITE of call `n` number `seq`: its From user names the call, so the
/// INVITE of every try (fresh Call-ID) can be traced back to it.
fn fo_invite(n: u8, seq: u32) -> SipMessage {
    let call_id = format!("f{n}-{seq}");
    let text = String::from_utf8_lossy(&invite(&call_id, &format!("z9hG4bK-{call_id}")).to_bytes())
        .replace("sips:alice@", &format!("sips:caller{n}@"));
    SipMessage::parse(text.as_bytes()).unwrap()
}

fn fo_learn(views: &mut [FoView; 3], sent: Vec<(To, SipMessage)>) {
    for (to, m) in sent {
        if to == To::Caller {
            if !m.is_request()
                && (200..300).contains(&status(&m))
                && m.cseq().map(|c| c.1) == Some(Method::Invite)
            {
                // By Call-ID: a retransmitted 2xx of an earlier call of the same number
                // must not replace this call's.
                let id = m.call_id().map(str::to_string);
                let found = views.iter_mut().find(|v| {
                    v.invite
                        .as_ref()
                        .and_then(|i| i.call_id())
                        .map(str::to_string)
                        == id
                });
                if let Some(v) = found {
                    v.ok = Some(m);
                }
            }
            continue;
        }
        if !m.is_request() || m.method() == Some(&Method::Options) {
            continue;
        }
        let from = m.header("from").unwrap_or_default().to_string();
        if let Some(v) = (0..3).find(|n| from.contains(&format!("caller{n}@"))) {
            views[v].down = Some((to, m));
        }
    }
}

/// Per caller Call-ID, the final statuses to its initial INVITE the caller got.
type Finals = HashMap<String, HashSet<u16>>;

fn run_failover(ops: &[FoOp]) -> (Harness, Finals) {
    let mut finals = Finals::new();
    let mut answered: Vec<SipMessage> = Vec::new();
    let mut h = Harness::with_route(failover_route(&[(0, 1), (0, 1), (1, 1)], TRY));
    let mut views: [FoView; 3] = Default::default();
    let mut seq = 0u32;
    for op in ops {
        match op.clone() {
            FoOp::Invite(n) => {
                seq += 1;
                let inv = fo_invite(n, seq);
                // The call this one replaces in the view is hung up at the end.
                answered.extend(views[n as usize].ok.take());
                views[n as usize] = FoView {
                    invite: Some(inv.clone()),
                    ..FoView::default()
                };
                h.caller_sends(inv);
            }
            FoOp::TargetAnswers(n, code) => {
                if let Some((to, down)) = views[n as usize].down.clone() {
                    if down.method() != Some(&Method::Ack) {
                        let real = if code == 5031 { 503 } else { code };
                        let sdp = real == 200 || real == 183;
                        let mut r = respond(&down, real, &format!("t{n}"), sdp);
                        if code == 5031 {
                            r.push_header("Retry-After", "5");
                        }
                        h.target_sends(to, r);
                    }
                }
            }
            FoOp::SendFails(n) => {
                if let Some((to, down)) = views[n as usize].down.clone() {
                    let target = match to {
                        To::Trunk(k) => TargetId(k),
                        _ => TARGET,
                    };
                    h.input(Input::SendFailed { target, msg: down });
                }
            }
            FoOp::TrunkCloses(k) => {
                let conn = conn_of(if k == 0 {
                    To::Callee
                } else {
                    To::Trunk(k as usize)
                });
                h.input(Input::Closed { conn });
                h.input(Input::Connected {
                    conn,
                    kind: ConnKind::Outbound {
                        target: TargetId(k as usize),
                    },
                });
            }
            FoOp::CallerCancels(n) => {
                if let Some(inv) = views[n as usize].invite.clone() {
                    let text = String::from_utf8_lossy(&inv.to_bytes())
                        .replacen("INVITE ", "CANCEL ", 1)
                        .replace(" INVITE\r\n", " CANCEL\r\n");
                    if let Ok(mut c) = SipMessage::parse(text.as_bytes()) {
                        c.set_body(Vec::new());
                        h.caller_sends(c);
                    }
                }
            }
            FoOp::CallerAcks(n) => {
                if let Some(ok) = views[n as usize].ok.clone() {
                    let cseq = ok.cseq().map(|c| c.0).unwrap_or(1);
                    h.caller_sends(in_dialog(
                        Method::Ack,
                        &ok,
                        cseq,
                        &format!("z9hG4bK-fa{seq}"),
                        true,
                    ));
                }
            }
            FoOp::CallerByes(n) => {
                if let Some(ok) = views[n as usize].ok.clone() {
                    seq += 1;
                    h.caller_sends(in_dialog(
                        Method::Bye,
                        &ok,
                        100 + seq,
                        &format!("z9hG4bK-fb{seq}"),
                        true,
                    ));
                }
            }
            FoOp::Advance(ms) => h.advance(Duration::from_millis(u64::from(ms))),
        }
        let sent = h.take();
        for (to, m) in &sent {
            let invite_final =
                *to == To::Caller && status(m) >= 200 && m.cseq() == Some((1, Method::Invite));
            if invite_final {
                finals
                    .entry(m.call_id().unwrap_or_default().to_string())
                    .or_default()
                    .insert(status(m));
            }
        }
        fo_learn(&mut views, sent);
    }
    answered.extend(views.iter().filter_map(|v| v.ok.clone()));
    for (i, ok) in answered.iter().enumerate() {
        {
            let cseq = ok.cseq().map(|c| c.0).unwrap_or(1);
            h.caller_sends(in_dialog(
                Method::Ack,
                ok,
                cseq,
                &format!("z9hG4bK-wa{i}"),
                true,
            ));
            h.caller_sends(in_dialog(
                Method::Bye,
                ok,
                1000,
                &format!("z9hG4bK-wb{i}"),
                true,
            ));
        }
    }
    for _ in 0..4 {
        h.advance(MAX_RINGING + T1 * 64 * 2);
    }
    (h, finals)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random refusals, silences, failed sends and lost connections across three targets:
    /// once every transaction has ended nothing is held (slots, pairs, timers, registry,
    /// media), and the caller never got more than one final per INVITE.
    #[test]
    fn no_failover_path_leaks(ops in prop::collection::vec(fo_op(), 0..40)) {
        let (mut h, finals) = run_failover(&ops);
        h.assert_nothing_held();
        for (call_id, codes) in finals {
            prop_assert!(codes.len() <= 1, "{call_id}: finals {codes:?}");
        }
        prop_assert!(h.core.poll_timeout().is_none(), "a timer is left");
    }
}

// ----- cluster admission: INVITEs parked until the cluster answers -----

/// A cluster that records requests; the test answers them.
#[derive(Debug, Default)]
struct FakeCluster {
    asked: Mutex<Vec<sbc_core::cluster::ClusterRequest>>,
}

impl sbc_core::cluster::ClusterAdmission for FakeCluster {
    fn request(&self, req: sbc_core::cluster::ClusterRequest) {
        self.asked.lock().unwrap().push(req);
    }
    fn set_answer_sink(&self, _: sbc_core::cluster::AnswerSink) {}
}

/// A lease that counts its own release.
struct CountedLease(Arc<std::sync::atomic::AtomicUsize>);

impl sbc_core::cluster::CallLease for CountedLease {}

impl Drop for CountedLease {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn cancel_of(inv: &SipMessage) -> SipMessage {
    let text = String::from_utf8_lossy(&inv.to_bytes())
        .replace("INVITE sips", "CANCEL sips")
        .replace("1 INVITE", "1 CANCEL");
    let mut m = SipMessage::parse(text.as_bytes()).unwrap();
    m.set_body(Vec::new());
    m.remove_header("content-type");
    m
}

#[test]
fn cluster_admission_parks_the_invite_until_the_answer() {
    use sbc_core::cluster::{ClusterAnswer, ClusterVerdict, DecisionMode, LeaseGuard};
    let mut h = Harness::new();
    let cluster = Arc::new(FakeCluster::default());
    h.core.set_cluster(cluster.clone());
    let released = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lease = || LeaseGuard(Box::new(CountedLease(released.clone())));

    // 1. Parked: 100 Trying at once, nothing downstream; a retransmission is absorbed.
    h.caller_sends(invite("k1", "z9hG4bK-k1"));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![100]);
    assert!(
        h.take_to(To::Callee).is_empty(),
        "nothing relayed before the answer"
    );
    h.caller_sends(invite("k1", "z9hG4bK-k1"));
    assert!(h.take().is_empty(), "retransmission absorbed");
    let asked: Vec<_> = cluster.asked.lock().unwrap().drain(..).collect();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].tenant, h.tenant);
    assert_eq!(h.core.parked_calls(), 1);
    // Admitted: the INVITE goes on; no second 100.
    h.input(Input::Cluster(ClusterAnswer {
        ticket: asked[0].ticket,
        mode: DecisionMode::Exact,
        verdict: ClusterVerdict::Admit(lease()),
    }));
    assert!(h.take_to(To::Caller).is_empty());
    let down = h.take_to(To::Callee);
    assert_eq!(down[0].method(), Some(&Method::Invite));
    assert_eq!(h.usage().active_calls, 1);
    // The call ends: the lease goes with it.
    h.callee_sends(respond(&down[0], 486, "t", false));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![486]);
    assert_eq!(released.load(std::sync::atomic::Ordering::SeqCst), 1);

    // 2. Refused: 503 with Retry-After, the local slot released.
    h.caller_sends(invite("k2", "z9hG4bK-k2"));
    h.take();
    let t = cluster.asked.lock().unwrap().pop().unwrap().ticket;
    h.input(Input::Cluster(ClusterAnswer {
        ticket: t,
        mode: DecisionMode::LocalShare,
        verdict: ClusterVerdict::Refuse(sbc_core::admission::Refusal {
            cause: sbc_core::admission::RefusalCause::CallRate,
            retry_after: Duration::from_secs(2),
        }),
    }));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![503]);
    assert_eq!(up[0].header("retry-after"), Some("2"));
    assert!(h.take_to(To::Callee).is_empty());

    // 3. CANCEL while parked: 200 and 487 at once; the late admission's lease is dropped.
    h.caller_sends(invite("k3", "z9hG4bK-k3"));
    h.take();
    let t = cluster.asked.lock().unwrap().pop().unwrap().ticket;
    h.caller_sends(cancel_of(&invite("k3", "z9hG4bK-k3")));
    let mut up = statuses(&h.take_to(To::Caller));
    up.sort();
    assert_eq!(up, vec![200, 487]);
    h.input(Input::Cluster(ClusterAnswer {
        ticket: t,
        mode: DecisionMode::Exact,
        verdict: ClusterVerdict::Admit(lease()),
    }));
    assert!(h.take().is_empty(), "nothing sent for a cancelled call");
    assert_eq!(released.load(std::sync::atomic::Ordering::SeqCst), 2);

    // 4. The caller's connection closes while parked: the answer opens nothing.
    h.caller_sends(invite("k4", "z9hG4bK-k4"));
    h.take();
    let t = cluster.asked.lock().unwrap().pop().unwrap().ticket;
    h.input(Input::Closed { conn: CALLER });
    h.input(Input::Cluster(ClusterAnswer {
        ticket: t,
        mode: DecisionMode::Exact,
        verdict: ClusterVerdict::Admit(lease()),
    }));
    assert!(h.take_to(To::Callee).is_empty());
    assert_eq!(released.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(h.core.parked_calls(), 0);
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

// ----- reliable provisionals, PRACK and early UPDATE (RFC 3262, RFC 3311) -----

/// The caller's INVITE offering `100rel` (Supported), with SDP or without (late offer).
fn invite_100rel(call_id: &str, sdp: bool) -> SipMessage {
    let mut m = invite(call_id, &format!("z9hG4bK-{call_id}"));
    m.push_header("Supported", "100rel, timer");
    if !sdp {
        m.remove_header("content-type");
        m.set_body(Vec::new());
    }
    m
}

/// The callee's reliable provisional to `req`: Require: 100rel and RSeq.
fn reliable(req: &SipMessage, code: u16, rseq: u32, sdp: bool) -> SipMessage {
    let mut r = respond(req, code, "callee-tag", sdp);
    r.push_header("Require", "100rel");
    r.push_header("RSeq", rseq.to_string());
    r
}

/// The caller's PRACK to the reliable provisional `prov` it got, with `rack`.
fn prack(prov: &SipMessage, cseq: u32, branch: &str, rack: &str) -> SipMessage {
    let mut m = in_dialog(Method::Prack, prov, cseq, branch, true);
    m.push_header("RAck", rack);
    m
}

fn rseq(m: &SipMessage) -> u32 {
    m.header("rseq").and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn body(m: &SipMessage) -> String {
    String::from_utf8_lossy(m.body()).to_string()
}

#[test]
fn reliable_183_is_relayed_with_the_callers_rseq_and_prack_is_mapped_back() {
    let mut h = Harness::new();
    h.caller_sends(invite_100rel("r1", true));
    let down = h.take_to(To::Callee).remove(0);
    assert!(
        down.header_values("supported").any(|t| t == "100rel"),
        "100rel is no longer stripped"
    );
    // A reliable 183 with the answer: relayed reliably, RSeq from the caller leg's space.
    h.callee_sends(reliable(&down, 183, 5000, true));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![100, 183]);
    let p183 = up[1].clone();
    let n = rseq(&p183);
    assert!((1..1 << 31).contains(&n), "RSeq {n} in 1..2^31-1");
    assert_ne!(n, 5000, "the callee's RSeq does not cross");
    assert!(p183.header_values("require").any(|t| t == "100rel"));
    assert!(
        body(&p183).contains("a=answer-from-callee"),
        "answer anchored"
    );
    // The caller's PRACK reaches the callee with the callee's RSeq and INVITE CSeq.
    h.caller_sends(prack(&p183, 2, "z9hG4bK-pr1", &format!("{n} 1 INVITE")));
    let pracks = h.take_to(To::Callee);
    assert_eq!(pracks.len(), 1);
    let pr = &pracks[0];
    assert_eq!(pr.method(), Some(&Method::Prack));
    assert_eq!(pr.header("rack"), Some("5000 1 INVITE"));
    assert_eq!(pr.call_id(), down.call_id(), "the callee leg's dialog");
    assert_eq!(pr.header("to").and_then(tag), Some("callee-tag"));
    assert_eq!(pr.cseq(), Some((2, Method::Prack)));
    // Its 200 goes back to the caller.
    h.callee_sends(respond(pr, 200, "callee-tag", false));
    let ok = h.take_to(To::Caller);
    assert_eq!(statuses(&ok), vec![200]);
    assert_eq!(ok[0].cseq(), Some((2, Method::Prack)));
    // A second reliable provisional takes the next RSeq; its retransmission is absorbed.
    h.callee_sends(reliable(&down, 180, 5001, false));
    h.callee_sends(reliable(&down, 180, 5001, false));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![180], "duplicate absorbed");
    assert_eq!(rseq(&up[0]), n + 1);
    // A PRACK for an RSeq never sent: 481; a malformed RAck: 400; neither crosses.
    h.caller_sends(prack(
        &up[0],
        3,
        "z9hG4bK-pr2",
        &format!("{} 1 INVITE", n + 7),
    ));
    h.caller_sends(prack(&up[0], 4, "z9hG4bK-pr3", "one 1 INVITE"));
    h.caller_sends(prack(
        &up[0],
        5,
        "z9hG4bK-pr4",
        &format!("{} 9 INVITE", n + 1),
    ));
    let refused = h.take_to(To::Caller);
    assert_eq!(statuses(&refused), vec![481, 400, 481]);
    assert_eq!(refused[1].reason(), Some("Bad Request (Malformed RAck)"));
    assert!(h.take_to(To::Callee).is_empty());
    // The right PRACK for the 180, then the 200 to the INVITE repeats the early answer.
    h.caller_sends(prack(
        &up[0],
        6,
        "z9hG4bK-pr5",
        &format!("{} 1 INVITE", n + 1),
    ));
    let pr = h.take_to(To::Callee).remove(0);
    assert_eq!(pr.header("rack"), Some("5001 1 INVITE"));
    assert_eq!(pr.cseq(), Some((3, Method::Prack)));
    h.callee_sends(respond(&pr, 200, "callee-tag", false));
    h.callee_sends(respond(&down, 200, "callee-tag", true));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![200, 200]);
    assert_eq!(
        body(&up[1]),
        body(&p183),
        "the 2xx repeats the anchored answer"
    );
    let ok = up[1].clone();
    h.caller_sends(in_dialog(Method::Ack, &ok, 1, "z9hG4bK-ack-r1", true));
    assert_eq!(h.take_to(To::Callee)[0].method(), Some(&Method::Ack));
    // A PRACK now is outside the early dialog: 481.
    h.caller_sends(prack(&ok, 7, "z9hG4bK-pr6", &format!("{} 1 INVITE", n + 1)));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![481]);
    h.caller_sends(in_dialog(Method::Bye, &ok, 8, "z9hG4bK-bye-r1", true));
    let bye = h.take_to(To::Callee).remove(0);
    h.callee_sends(respond(&bye, 200, "callee-tag", false));
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn the_gateway_pracks_itself_when_the_caller_did_not_offer_100rel() {
    let mut h = Harness::new();
    h.caller_sends(invite("r2", "z9hG4bK-r2"));
    let down = h.take_to(To::Callee).remove(0);
    assert!(down.header("supported").is_none());
    // The callee sends a reliable 183 anyway.
    h.callee_sends(reliable(&down, 183, 77, true));
    let pr = h.take_to(To::Callee);
    assert_eq!(pr.len(), 1, "the gateway PRACKs on the callee leg");
    assert_eq!(pr[0].method(), Some(&Method::Prack));
    assert_eq!(pr[0].header("rack"), Some("77 1 INVITE"));
    assert_eq!(pr[0].header("to").and_then(tag), Some("callee-tag"));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![100, 183]);
    assert_eq!(up[1].header("rseq"), None, "relayed unreliably");
    assert_eq!(up[1].header("require"), None, "100rel removed");
    assert!(body(&up[1]).contains("a=answer-from-callee"));
    // The 200 to our own PRACK goes nowhere.
    h.callee_sends(respond(&pr[0], 200, "callee-tag", false));
    assert!(h.take().is_empty(), "absorbed");
    // The provisional again (our PRACK lost): PRACKed again, not relayed twice.
    h.callee_sends(reliable(&down, 183, 77, true));
    let again = h.take_to(To::Callee);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].header("rack"), Some("77 1 INVITE"));
    assert!(h.take_to(To::Caller).is_empty());
    h.callee_sends(respond(&down, 200, "callee-tag", true));
    let ok = h.take_to(To::Caller).remove(0);
    assert_eq!(status(&ok), 200);
    assert!(body(&ok).contains("a=answer-from-callee"));
    h.caller_sends(in_dialog(Method::Ack, &ok, 1, "z9hG4bK-ack-r2", true));
    h.caller_sends(in_dialog(Method::Bye, &ok, 2, "z9hG4bK-bye-r2", true));
    let to_callee = h.take_to(To::Callee);
    let bye = to_callee.iter().find(|m| m.method() == Some(&Method::Bye));
    h.callee_sends(respond(bye.unwrap(), 200, "callee-tag", false));
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn offer_in_a_reliable_183_is_answered_in_the_prack() {
    let mut h = Harness::new();
    h.caller_sends(invite_100rel("r3", false));
    let down = h.take_to(To::Callee).remove(0);
    assert!(down.body().is_empty());
    h.callee_sends(reliable(&down, 183, 1, true));
    let p183 = h.take_to(To::Caller).pop().unwrap();
    assert!(
        body(&p183).contains("a=offer-from-callee"),
        "offer anchored"
    );
    let mut pr = prack(
        &p183,
        2,
        "z9hG4bK-pr-r3",
        &format!("{} 1 INVITE", rseq(&p183)),
    );
    pr.push_header("Content-Type", "application/sdp");
    pr.set_body(OFFER.as_bytes().to_vec());
    h.caller_sends(pr);
    let pr = h.take_to(To::Callee).remove(0);
    assert_eq!(pr.header("rack"), Some("1 1 INVITE"));
    assert!(
        body(&pr).contains("a=answer-from-caller"),
        "answer anchored"
    );
    h.callee_sends(respond(&pr, 200, "callee-tag", false));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![200]);
}

#[test]
fn update_in_the_early_dialog_is_anchored_and_glare_gets_491() {
    let mut h = Harness::new();
    h.caller_sends(invite_100rel("r4", true));
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(reliable(&down, 183, 10, true));
    let p183 = h.take_to(To::Caller).pop().unwrap();
    h.caller_sends(prack(
        &p183,
        2,
        "z9hG4bK-pr-r4",
        &format!("{} 1 INVITE", rseq(&p183)),
    ));
    let pr = h.take_to(To::Callee).remove(0);
    h.callee_sends(respond(&pr, 200, "callee-tag", false));
    h.take();
    // The offer/answer completed in the 183: the caller may UPDATE before the 200.
    let mut update = in_dialog(Method::Update, &p183, 3, "z9hG4bK-up-r4", true);
    update.push_header("Contact", "<sips:alice@10.88.0.5:5061>");
    update.push_header("Content-Type", "application/sdp");
    update.set_body(OFFER.as_bytes().to_vec());
    h.caller_sends(update);
    let up = h.take_to(To::Callee).remove(0);
    assert_eq!(up.method(), Some(&Method::Update));
    assert_eq!(up.call_id(), down.call_id());
    assert_eq!(up.header("to").and_then(tag), Some("callee-tag"));
    assert!(body(&up).contains("a=offer-from-caller"), "offer anchored");
    assert!(!body(&up).contains("10.1.1.1"), "no caller address crosses");
    // The callee offers at the same time: glare, 491.
    let callee_view = respond(&down, 183, "callee-tag", false);
    let mut glare = in_dialog(Method::Update, &callee_view, 1, "z9hG4bK-up-g", false);
    glare.push_header("Content-Type", "application/sdp");
    glare.set_body(OFFER.as_bytes().to_vec());
    h.callee_sends(glare);
    assert_eq!(statuses(&h.take_to(To::Callee)), vec![491]);
    // The answer in the UPDATE's 200 is anchored toward the caller.
    h.callee_sends(respond(&up, 200, "callee-tag", true));
    let ok = h.take_to(To::Caller);
    assert_eq!(statuses(&ok), vec![200]);
    assert_eq!(ok[0].cseq(), Some((3, Method::Update)));
    assert!(body(&ok[0]).contains("a=answer-from-callee"));
    // Then the call is answered.
    h.callee_sends(respond(&down, 200, "callee-tag", true));
    let ok = h.take_to(To::Caller).remove(0);
    assert_eq!(status(&ok), 200);
    assert_eq!(h.usage().active_calls, 1);
}

#[test]
fn a_caller_requiring_100rel_meets_the_callees_420() {
    let mut h = Harness::new();
    let mut inv = invite("r5", "z9hG4bK-r5");
    inv.push_header("Require", "100rel");
    h.caller_sends(inv);
    let down = h.take_to(To::Callee).remove(0);
    assert!(down.header_values("require").any(|t| t == "100rel"));
    let mut refuse = respond(&down, 420, "callee-tag", false);
    refuse.push_header("Unsupported", "100rel");
    h.callee_sends(refuse);
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![100, 420]);
    assert_eq!(up[1].header("unsupported"), Some("100rel"));
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn past_the_cap_of_unacknowledged_reliable_provisionals_the_gateway_pracks_itself() {
    let mut h = Harness::new();
    h.caller_sends(invite_100rel("r6", true));
    let down = h.take_to(To::Callee).remove(0);
    // A callee sending reliable 180s without waiting for PRACKs (RFC 3262 §3 says wait).
    for r in 1..=10u32 {
        h.callee_sends(reliable(&down, 180, r, false));
    }
    let up: Vec<SipMessage> = h
        .take_to(To::Caller)
        .into_iter()
        .filter(|m| status(m) == 180)
        .collect();
    assert_eq!(up.len(), 10, "every new one relayed once");
    let reliably = up.iter().filter(|m| m.header("rseq").is_some()).count();
    assert_eq!(reliably, sbc_sip::b2bua::MAX_UNACKED_RELIABLE);
    let first = rseq(&up[0]);
    let seq: Vec<u32> = up[..reliably].iter().map(rseq).collect();
    assert_eq!(seq, (first..first + 8).collect::<Vec<_>>(), "RSeq +1 each");
    let pracks = h.take_to(To::Callee);
    let own: Vec<&str> = pracks.iter().filter_map(|m| m.header("rack")).collect();
    assert_eq!(
        own,
        ["9 1 INVITE", "10 1 INVITE"],
        "the rest PRACKed by the gateway"
    );
    // The 200s to both of the gateway's PRACKs are absorbed; a retransmitted 9 gets its
    // own PRACK again.
    for p in &pracks {
        h.callee_sends(respond(p, 200, "callee-tag", false));
    }
    assert!(h.take().is_empty(), "absorbed");
    h.callee_sends(reliable(&down, 180, 9, false));
    let again = h.take_to(To::Callee);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].header("rack"), Some("9 1 INVITE"));
    assert!(h.take_to(To::Caller).is_empty());
    // The INVITE's final ends it all: a late PRACK is outside the early dialog.
    h.callee_sends(respond(&down, 486, "callee-tag", false));
    h.caller_sends(prack(
        &up[0],
        2,
        "z9hG4bK-pr-r6",
        &format!("{first} 1 INVITE"),
    ));
    let to_caller = h.take_to(To::Caller);
    assert_eq!(statuses(&to_caller), vec![486, 481]);
    assert_eq!(
        to_caller[1].reason(),
        Some("Call/Transaction Does Not Exist")
    );
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

// ----- UDP transaction timers -----

/// The callee-bound INVITEs sent within `window`, stepping the virtual clock by 10 ms:
/// the offsets (from the start of the window) at which each went out.
fn invites_to_callee_over(h: &mut Harness, window: Duration) -> Vec<Duration> {
    let mut at = Vec::new();
    let step = Duration::from_millis(10);
    let mut t = Duration::ZERO;
    while t < window {
        h.advance(step);
        t += step;
        for m in h.take_to(To::Callee) {
            if m.method() == Some(&Method::Invite) {
                at.push(t);
            }
        }
    }
    at
}

#[test]
fn udp_target_invite_retransmitted_by_timer_a_until_provisional_and_final_reacked() {
    let mut h = Harness::with_transports(Transport::Tls, Transport::Udp);
    h.caller_sends(invite("u1", "z9hG4bK-u1"));
    let down = h.take_to(To::Callee).remove(0);
    let via = down.header("via").unwrap().to_string();
    assert!(via.starts_with("SIP/2.0/UDP "), "{via}");
    // Timer A: T1, 2·T1, 4·T1 ... after the first send (0.5, 1.5, 3.5 s).
    let resent = invites_to_callee_over(&mut h, Duration::from_millis(3600));
    let ms: Vec<u128> = resent.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, vec![500, 1500, 3500]);
    // A provisional stops it.
    h.callee_sends(respond(&down, 180, "t", false));
    assert!(invites_to_callee_over(&mut h, Duration::from_secs(10)).is_empty());
    // A non-2xx final is ACKed; its retransmission is ACKed again and not relayed twice.
    h.callee_sends(respond(&down, 486, "t", false));
    let acks = h.take_to(To::Callee);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].method(), Some(&Method::Ack));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![100, 180, 486]);
    h.callee_sends(respond(&down, 486, "t", false));
    let again = h.take_to(To::Callee);
    assert_eq!(again.len(), 1, "the ACK again");
    assert_eq!(again[0].method(), Some(&Method::Ack));
    assert!(h.take_to(To::Caller).is_empty(), "one 486 upstream");
    h.advance(T1 * 64 + Duration::from_secs(33));
    h.assert_nothing_held();
}

#[test]
fn udp_caller_final_retransmitted_by_timer_g_until_ack_and_request_copies_absorbed() {
    let mut h = Harness::with_transports(Transport::Udp, Transport::Tls);
    let inv = invite("u2", "z9hG4bK-u2");
    h.caller_sends(inv.clone());
    h.caller_sends(inv.clone());
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![100, 100]);
    let down = h.take_to(To::Callee);
    assert_eq!(down.len(), 1, "one INVITE downstream for two copies");
    let down = down[0].clone();
    // Over TLS downstream: no timer A.
    assert!(invites_to_callee_over(&mut h, Duration::from_secs(5)).is_empty());
    h.callee_sends(respond(&down, 503, "t", false));
    h.take_to(To::Callee);
    let busy = h.take_to(To::Caller);
    assert_eq!(statuses(&busy), vec![503]);
    // Timer G: T1, then doubling up to T2 (0.5, 1.5, 3.5, 7.5, 11.5 s after the final).
    let mut resent = Vec::new();
    let step = Duration::from_millis(10);
    let mut t = Duration::ZERO;
    while t < Duration::from_millis(11_600) {
        h.advance(step);
        t += step;
        for m in h.take_to(To::Caller) {
            assert_eq!(status(&m), 503);
            resent.push(t.as_millis());
        }
    }
    assert_eq!(resent, vec![500, 1500, 3500, 7500, 11_500]);
    // The ACK (same branch) stops it.
    let mut ack = in_dialog(Method::Ack, &busy[0], 1, "z9hG4bK-u2", true);
    ack.set_request_uri("sips:+15551234@sbc.example.net");
    h.caller_sends(ack);
    h.advance(Duration::from_secs(20));
    assert!(h.take_to(To::Caller).is_empty(), "no 503 after the ACK");
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn udp_caller_without_ack_is_bounded_by_timer_h() {
    let mut h = Harness::with_transports(Transport::Udp, Transport::Tls);
    h.caller_sends(invite("u3", "z9hG4bK-u3"));
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(respond(&down, 486, "t", false));
    h.take();
    h.advance(T1 * 64 + Duration::from_millis(1));
    let resent = h.take_to(To::Caller).len();
    // 0.5, 1.5, 3.5, 7.5, then every 4 s up to 32 s: 11.5 ... 31.5.
    assert_eq!(resent, 10);
    h.advance(Duration::from_secs(60));
    assert!(h.take_to(To::Caller).is_empty(), "timer H ended timer G");
    h.assert_nothing_held();
}

// ----- UDP: reliable provisionals, own PRACKs and trunk pings sent again -----

/// The messages to `to` that `pick` selects, sent within `window` while the virtual clock
/// steps by 10 ms: each with its offset in ms from the start of the window. Other messages
/// stay in the log.
fn picked_over(
    h: &mut Harness,
    to: To,
    window: Duration,
    pick: impl Fn(&SipMessage) -> bool,
) -> Vec<(u128, SipMessage)> {
    let mut out = Vec::new();
    let step = Duration::from_millis(10);
    let mut t = Duration::ZERO;
    while t < window {
        h.advance(step);
        t += step;
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut h.sent)
            .into_iter()
            .partition(|(dest, m)| *dest == to && pick(m));
        h.sent = rest;
        out.extend(mine.into_iter().map(|(_, m)| (t.as_millis(), m)));
    }
    out
}

fn offsets(picked: &[(u128, SipMessage)]) -> Vec<u128> {
    picked.iter().map(|(t, _)| *t).collect()
}

fn is_status(code: u16) -> impl Fn(&SipMessage) -> bool {
    move |m| m.status() == Some(code)
}

fn is_method(method: Method) -> impl Fn(&SipMessage) -> bool {
    move |m| m.method() == Some(&method)
}

#[test]
fn udp_caller_reliable_183_is_sent_again_doubling_until_its_prack() {
    let mut h = Harness::with_transports(Transport::Udp, Transport::Tls);
    h.caller_sends(invite_100rel("ur1", true));
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(reliable(&down, 183, 9, true));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![100, 183]);
    let p183 = up[1].clone();
    let n = rseq(&p183);
    // RFC 3262 §3: T1, doubling: 0.5, 1.5, 3.5, 7.5 s after the first send, the same 183.
    let copies = picked_over(
        &mut h,
        To::Caller,
        Duration::from_millis(7600),
        is_status(183),
    );
    assert_eq!(offsets(&copies), vec![500, 1500, 3500, 7500]);
    for (_, m) in &copies {
        assert_eq!(m.to_bytes(), p183.to_bytes(), "the same provisional");
    }
    // Its PRACK stops it, and crosses as usual.
    h.caller_sends(prack(&p183, 2, "z9hG4bK-upr1", &format!("{n} 1 INVITE")));
    let pr = h.take_to(To::Callee);
    assert_eq!(pr.len(), 1);
    assert_eq!(pr[0].header("rack"), Some("9 1 INVITE"));
    let after = picked_over(&mut h, To::Caller, Duration::from_secs(30), is_status(183));
    assert!(after.is_empty(), "sent again after its PRACK: {after:?}");
    assert!(h.take_to(To::Caller).is_empty(), "no 504: it was PRACKed");
    h.callee_sends(respond(&pr[0], 200, "callee-tag", false));
    h.callee_sends(respond(&down, 200, "callee-tag", true));
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![200, 200]);
    let ok = up[1].clone();
    h.caller_sends(in_dialog(Method::Ack, &ok, 1, "z9hG4bK-ack-ur1", true));
    h.caller_sends(in_dialog(Method::Bye, &ok, 3, "z9hG4bK-bye-ur1", true));
    let bye = h
        .take_to(To::Callee)
        .into_iter()
        .find(|m| m.method() == Some(&Method::Bye))
        .unwrap();
    h.callee_sends(respond(&bye, 200, "callee-tag", false));
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn udp_caller_that_never_pracks_gets_504_after_64_t1_and_the_callee_is_cancelled() {
    let mut h = Harness::with_transports(Transport::Udp, Transport::Tls);
    h.caller_sends(invite_100rel("ur2", true));
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(reliable(&down, 183, 9, true));
    h.take();
    let copies = picked_over(
        &mut h,
        To::Caller,
        T1 * 64 + Duration::from_millis(10),
        is_status(183),
    );
    assert_eq!(
        offsets(&copies),
        vec![500, 1500, 3500, 7500, 15_500, 31_500],
        "doubling without a cap"
    );
    // 64·T1 without a PRACK: 504 upstream, CANCEL downstream.
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![504]);
    let to_callee = h.take_to(To::Callee);
    assert_eq!(to_callee.len(), 1);
    assert_eq!(to_callee[0].method(), Some(&Method::Cancel));
    // The callee's 487 ends the call; nothing more reaches the caller but the 504's copies.
    h.callee_sends(respond(&down, 487, "callee-tag", false));
    assert_eq!(h.take_to(To::Callee)[0].method(), Some(&Method::Ack));
    assert!(h.take_to(To::Caller).is_empty());
    h.advance(T1 * 64 + Duration::from_millis(1));
    assert!(statuses(&h.take_to(To::Caller)).iter().all(|c| *c == 504));
    h.assert_nothing_held();
}

#[test]
fn over_tls_reliable_183_and_own_prack_are_sent_once_and_never_time_out() {
    // The caller offered 100rel: the 183 is relayed reliably, once.
    let mut h = Harness::new();
    h.caller_sends(invite_100rel("ur3", true));
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(reliable(&down, 183, 9, true));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![100, 183]);
    h.advance(T1 * 64 + Duration::from_secs(1));
    assert!(h.take().is_empty(), "nothing sent again, no 504 over TLS");
    h.callee_sends(respond(&down, 486, "callee-tag", false));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![486]);
    h.take();
    // The caller did not: the gateway's own PRACK goes once.
    h.caller_sends(invite("ur4", "z9hG4bK-ur4"));
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(reliable(&down, 183, 77, true));
    assert_eq!(h.take_to(To::Callee).len(), 1, "one PRACK");
    h.advance(Duration::from_secs(20));
    assert!(
        h.take_to(To::Callee).is_empty(),
        "no PRACK sent again over TLS"
    );
    h.callee_sends(respond(&down, 486, "callee-tag", false));
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn own_prack_to_a_udp_callee_is_sent_again_by_timer_e_until_its_200() {
    let mut h = Harness::with_transports(Transport::Tls, Transport::Udp);
    h.caller_sends(invite("ur5", "z9hG4bK-ur5"));
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(reliable(&down, 183, 77, true));
    let pr = h.take_to(To::Callee);
    assert_eq!(pr.len(), 1);
    let pr = pr[0].clone();
    assert_eq!(pr.method(), Some(&Method::Prack));
    assert!(pr.header("via").unwrap().starts_with("SIP/2.0/UDP "));
    h.take();
    // Timer E: 0.5, 1.5, 3.5, 7.5, then capped at T2: 11.5 s.
    let copies = picked_over(
        &mut h,
        To::Callee,
        Duration::from_millis(11_600),
        is_method(Method::Prack),
    );
    assert_eq!(offsets(&copies), vec![500, 1500, 3500, 7500, 11_500]);
    for (_, m) in &copies {
        assert_eq!(m.to_bytes(), pr.to_bytes(), "the same PRACK (same branch)");
    }
    // Its 200 stops it and goes nowhere.
    h.callee_sends(respond(&pr, 200, "callee-tag", false));
    assert!(h.take().is_empty(), "absorbed");
    let after = picked_over(
        &mut h,
        To::Callee,
        Duration::from_secs(20),
        is_method(Method::Prack),
    );
    assert!(after.is_empty(), "sent again after its 200: {after:?}");
    // A copy of the 200 is still absorbed.
    h.callee_sends(respond(&pr, 200, "callee-tag", false));
    assert!(h.take().is_empty());
    h.callee_sends(respond(&down, 486, "callee-tag", false));
    assert_eq!(statuses(&h.take_to(To::Caller)), vec![486]);
    h.advance(T1 * 64 + Duration::from_secs(33));
    h.assert_nothing_held();
}

#[test]
fn options_ping_to_a_udp_target_is_sent_again_and_a_late_answer_counts() {
    let health = sbc_core::config::HealthSettings {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(2),
        down_after: 1,
        up_after: 1,
    };
    let mut route = RouteEntry::single("", TARGET, "pbx.inside:5061");
    route.targets[0].transport = Transport::Udp;
    route.health = Some(health);
    let mut h = Harness::build(Transport::Tls, route);
    let board = Arc::new(sbc_core::trunks::TrunkBoard::new());
    h.core.set_trunk_board(board.clone());
    let acme = TenantId::from("acme");
    let state = |b: &sbc_core::trunks::TrunkBoard| {
        let rows = b.snapshot(Some(&acme));
        (rows[0].up, rows[0].consecutive_failures)
    };
    h.advance(Duration::ZERO);
    let ping = h.take_to(To::Callee);
    assert_eq!(ping.len(), 1);
    let ping = ping[0].clone();
    assert_eq!(ping.method(), Some(&Method::Options));
    assert!(ping.header("via").unwrap().starts_with("SIP/2.0/UDP "));
    // Timer E within the 2 s timeout: 0.5 and 1.5 s, the same request.
    let copies = picked_over(
        &mut h,
        To::Callee,
        Duration::from_millis(1600),
        is_method(Method::Options),
    );
    assert_eq!(offsets(&copies), vec![500, 1500]);
    for (_, m) in &copies {
        assert_eq!(m.to_bytes(), ping.to_bytes());
    }
    // The first copy was lost; the answer to a later one, 1.6 s in, still counts.
    h.callee_sends(respond(&ping, 200, "p", false));
    assert_eq!(state(&board), (true, 0));
    assert!(
        picked_over(
            &mut h,
            To::Callee,
            Duration::from_millis(8300),
            is_method(Method::Options)
        )
        .is_empty(),
        "answered: no more copies before the next ping"
    );
    // The next ping (10 s) is never answered: copies until its timeout, then down.
    let next = picked_over(
        &mut h,
        To::Callee,
        Duration::from_secs(4),
        is_method(Method::Options),
    );
    assert_eq!(
        offsets(&next),
        vec![100, 600, 1600],
        "sent, then 0.5 and 1.5 s"
    );
    assert_eq!(state(&board), (false, 1));

    // Over TLS a ping goes once.
    let mut route = RouteEntry::single("", TARGET, "pbx.inside:5061");
    route.health = Some(health);
    let mut h = Harness::build(Transport::Tls, route);
    h.advance(Duration::ZERO);
    assert_eq!(h.take_to(To::Callee).len(), 1);
    let copies = picked_over(
        &mut h,
        To::Callee,
        Duration::from_millis(1900),
        is_method(Method::Options),
    );
    assert!(copies.is_empty(), "no copies over TLS: {copies:?}");
}

// ----- cluster admission: media-stream leases -----

/// A lease that records the stream counts it is asked to grow to and refuses past 2.
struct CappedLease(Arc<Mutex<Vec<u32>>>);

impl sbc_core::cluster::CallLease for CappedLease {
    fn grow_streams(
        &mut self,
        streams: u32,
        _limit: u32,
    ) -> Result<(), sbc_core::admission::Refusal> {
        self.0.lock().unwrap().push(streams);
        if streams > 2 {
            return Err(sbc_core::admission::Refusal {
                cause: sbc_core::admission::RefusalCause::MediaStreams,
                retry_after: Duration::from_secs(5),
            });
        }
        Ok(())
    }
}

#[test]
fn cluster_leases_the_offered_streams_and_a_reinvite_adding_past_them_gets_503() {
    use sbc_core::cluster::{ClusterAnswer, ClusterVerdict, DecisionMode, LeaseGuard};
    let mut h = Harness::new();
    let cluster = Arc::new(FakeCluster::default());
    h.core.set_cluster(cluster.clone());
    let grown = Arc::new(Mutex::new(Vec::new()));
    h.caller_sends(invite("s1", "z9hG4bK-s1"));
    let asked: Vec<_> = cluster.asked.lock().unwrap().drain(..).collect();
    assert_eq!(asked[0].streams, 1, "the offer's one m-line is leased");
    h.input(Input::Cluster(ClusterAnswer {
        ticket: asked[0].ticket,
        mode: DecisionMode::Exact,
        verdict: ClusterVerdict::Admit(LeaseGuard(Box::new(CappedLease(grown.clone())))),
    }));
    let down = h.take_to(To::Callee).remove(0);
    h.callee_sends(respond(&down, 200, "callee-tag", true));
    let up = h.take_to(To::Caller);
    let ok = up.iter().find(|m| m.status() == Some(200)).unwrap().clone();
    h.caller_sends(in_dialog(Method::Ack, &ok, 1, "z9hG4bK-s1ack", true));
    h.take();
    // A re-INVITE opening 3 streams: refused 503 without reaching the callee.
    let three = format!(
        "{OFFER}m=video 4002 RTP/SAVP 96\r\nm=audio 4004 RTP/SAVP 0\r\nm=audio 0 RTP/SAVP 0\r\n"
    );
    let mut reinvite = in_dialog(Method::Invite, &ok, 2, "z9hG4bK-s1re", true);
    reinvite.push_header("Content-Type", "application/sdp");
    reinvite.set_body(three.into_bytes());
    h.caller_sends(reinvite);
    let up = h.take_to(To::Caller);
    assert_eq!(statuses(&up), vec![503]);
    assert!(h.take_to(To::Callee).is_empty(), "nothing crossed");
    // One stream again: crosses (the initial offer asked to grow to 1 as well).
    let mut reinvite = in_dialog(Method::Invite, &ok, 3, "z9hG4bK-s1re2", true);
    reinvite.push_header("Content-Type", "application/sdp");
    reinvite.set_body(OFFER.as_bytes().to_vec());
    h.caller_sends(reinvite);
    let relayed = h.take_to(To::Callee);
    assert_eq!(relayed[0].method(), Some(&Method::Invite));
    assert_eq!(*grown.lock().unwrap(), vec![1, 3, 1]);
    assert_eq!(h.usage().active_calls, 1, "the call goes on");
}

// Hot standby (issue #16) on this harness: its own file.
#[path = "b2bua_harness/standby.rs"]
mod standby;
