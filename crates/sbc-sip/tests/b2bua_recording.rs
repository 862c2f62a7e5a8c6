//! SIPREC recording (RFC 7866) in the B2BUA on a virtual clock, with no sockets: the SRC's
//! INVITE and its bodies, the `required` and `continue` policies, failover between SRS
//! targets, re-INVITEs on hold / resume and pause, the SRS's BYE, and the BYE at the
//! call's end (carrying the final metadata with stop times, never waiting on the SRS).
//! Media (call and recording) is faked: only what signaling asks of it is recorded, and
//! the leak check asks that every prepared stream was released.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sbc_core::admission::Admission;
use sbc_core::config::{
    parse_target, Identities, Limits, OnFailure, RecordingMode, RecordingSettings,
};
use sbc_core::media::{CallRef, LegSide, MediaControl, MediaError, MediaEvent, MediaPolicy};
use sbc_core::recording::{
    PreparedStream, RecordingCommand, RecordingMedia, RecordingState, RtpFormat,
};
use sbc_core::redact::Redaction;
use sbc_core::registry::{CallRegistry, DrainState};
use sbc_core::tap::{TapError, TapId, TapKey, TapLegs, TapSuite, TapTransport};
use sbc_core::tenant::TenantId;
use sbc_sip::b2bua::recording::{Recorder, RecordingBoard};
use sbc_sip::b2bua::{B2bua, B2buaConfig, ConnId, ConnKind, Input, Output, WallClock};
use sbc_sip::message::{response_to, Method, SipMessage};
use sbc_sip::routing::{Candidate, RouteEntry, RouteTable, TargetId};
use sbc_sip::siprec;
use sbc_sip::transaction::TimerConfig;
use sbc_sip::transport::Transport;

const T1: Duration = Duration::from_millis(500);
const CALLER: ConnId = ConnId(1);
const CALLEE: ConnId = ConnId(2);
const SRS1: ConnId = ConnId(21);
const SRS2: ConnId = ConnId(22);
const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n";
const ANSWER_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Debug, Default)]
struct FakeMedia {
    live: Mutex<HashSet<CallRef>>,
}

impl MediaControl for FakeMedia {
    fn offer(
        &self,
        call: CallRef,
        _t: &TenantId,
        _from: LegSide,
        _sdp: &[u8],
        _p: &MediaPolicy,
    ) -> Result<Vec<u8>, MediaError> {
        self.live.lock().unwrap().insert(call);
        Ok(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 30000 RTP/SAVP 0\r\n".to_vec())
    }
    fn answer(&self, _c: CallRef, _f: LegSide, _sdp: &[u8]) -> Result<Vec<u8>, MediaError> {
        Ok(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 30002 RTP/SAVP 0\r\n".to_vec())
    }
    fn delete(&self, call: CallRef) {
        self.live.lock().unwrap().remove(&call);
    }
    fn poll_events(&self) -> Vec<MediaEvent> {
        Vec::new()
    }
}

/// A recorded stream as the fake media side holds it.
#[derive(Debug, Clone, PartialEq)]
struct FakeStream {
    call: CallRef,
    leg: LegSide,
    destination: Option<SocketAddr>,
    paused: bool,
}

/// Recording media that records what signaling asked of it (the real engine needs
/// sockets; the media helper's tests cover it).
#[derive(Debug, Default)]
struct FakeRecMedia {
    streams: Mutex<HashMap<TapId, FakeStream>>,
    next: Mutex<u64>,
    refuse: Mutex<bool>,
    /// What the legs send now (set by a test to model a codec change); `None`: unknown.
    now_formats: Mutex<Option<Vec<RtpFormat>>>,
}

impl RecordingMedia for FakeRecMedia {
    fn prepare_stream(
        &self,
        call: CallRef,
        leg: LegSide,
        transport: TapTransport,
    ) -> Result<PreparedStream, TapError> {
        if *self.refuse.lock().unwrap() {
            return Err(TapError::UnknownCall(call));
        }
        let mut n = self.next.lock().unwrap();
        *n += 1;
        let id = TapId(0xabc0 + *n);
        self.streams.lock().unwrap().insert(
            id,
            FakeStream {
                call,
                leg,
                destination: None,
                paused: false,
            },
        );
        Ok(PreparedStream {
            id,
            local: SocketAddr::from(([192, 0, 2, 1], 40_000 + 2 * *n as u16)),
            key: transport
                .suite()
                .map(|_| TapKey::new(format!("inline:KEY{n}KEY{n}KEY{n}KEY{n}KEY{n}KEY{n}KEY"))),
            formats: vec![RtpFormat {
                payload_type: 0,
                encoding: "PCMU".into(),
                clock_rate: 8000,
                channels: None,
                fmtp: None,
            }],
        })
    }
    fn start_stream(&self, stream: TapId, destination: SocketAddr) -> Result<(), TapError> {
        match self.streams.lock().unwrap().get_mut(&stream) {
            Some(s) => {
                s.destination = Some(destination);
                Ok(())
            }
            None => Err(TapError::Invalid("unknown stream")),
        }
    }
    fn pause_stream(&self, stream: TapId, paused: bool) -> bool {
        self.streams
            .lock()
            .unwrap()
            .get_mut(&stream)
            .map(|s| s.paused = paused)
            .is_some()
    }
    fn release_stream(&self, stream: TapId) -> bool {
        self.streams.lock().unwrap().remove(&stream).is_some()
    }
    fn stream_formats(&self, stream: TapId) -> Option<Vec<RtpFormat>> {
        if !self.streams.lock().unwrap().contains_key(&stream) {
            return None;
        }
        self.now_formats.lock().unwrap().clone()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum To {
    Caller,
    Callee,
    Srs(usize),
    Other,
}

struct Harness {
    core: B2bua,
    now: Instant,
    admission: Arc<Admission>,
    media: Arc<FakeMedia>,
    rec: Arc<FakeRecMedia>,
    board: Arc<RecordingBoard>,
    tenant: TenantId,
    sent: Vec<(To, SipMessage)>,
}

fn settings(on_failure: OnFailure, mode: RecordingMode) -> RecordingSettings {
    RecordingSettings {
        srs: vec![
            parse_target("sips:srs1.example.net:5061").unwrap(),
            parse_target("sips:srs2.example.net:5061").unwrap(),
        ],
        mode,
        legs: TapLegs::Both,
        transport: TapTransport::Srtp(TapSuite::AesCm128HmacSha1_80),
        on_failure,
        answer_timeout: ANSWER_TIMEOUT,
        identities: Identities::Redact,
        server_name: None,
        ca_pem: None,
        ca_path: None,
    }
}

impl Harness {
    fn new(on_failure: OnFailure, mode: RecordingMode) -> Harness {
        let tenant = TenantId::from("acme");
        let limits = Limits {
            calls_per_second: 1000.0,
            call_burst: 1000,
            ..Limits::default()
        };
        let admission = Arc::new(Admission::with_limits([(tenant.clone(), limits)]));
        let mut routes = RouteTable::new();
        routes.insert(
            tenant.clone(),
            RouteEntry::single("", TargetId(0), "pbx.inside:5061"),
        );
        let now = Instant::now();
        let cfg = B2buaConfig {
            timers: TimerConfig {
                t1: T1,
                max_ringing: Duration::from_secs(60),
            },
            max_forwards: 70,
            advertised: vec!["sbc.example.net:5061".into()],
            transports: vec![Transport::Tls],
            redaction: Redaction::default(),
            seed: 7,
            wall_clock: WallClock {
                at: now,
                wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_385_681),
            },
        };
        let mut core = B2bua::new(cfg, Arc::new(routes), admission.clone());
        core.set_admin(Arc::new(CallRegistry::new()), Arc::new(DrainState::new()));
        let media = Arc::new(FakeMedia::default());
        core.set_media(media.clone(), HashMap::new());
        let rec = Arc::new(FakeRecMedia::default());
        let board = Arc::new(RecordingBoard::default());
        let srs = (0..2)
            .map(|i| Candidate {
                target: TargetId(5 + i),
                host_port: format!("srs{}.example.net:5061", i + 1),
                transport: Transport::Tls,
            })
            .collect();
        let recorder = Recorder {
            settings: settings(on_failure, mode),
            srs,
        };
        core.set_recording(
            rec.clone(),
            HashMap::from([(tenant.clone(), recorder)]),
            board.clone(),
        );
        let mut h = Harness {
            core,
            now,
            admission,
            media,
            rec,
            board,
            tenant: tenant.clone(),
            sent: Vec::new(),
        };
        let conns = [
            (
                CALLER,
                ConnKind::Inbound {
                    tenant: Some(tenant),
                    listener: 0,
                },
            ),
            (
                CALLEE,
                ConnKind::Outbound {
                    target: TargetId(0),
                },
            ),
            (
                SRS1,
                ConnKind::Outbound {
                    target: TargetId(5),
                },
            ),
            (
                SRS2,
                ConnKind::Outbound {
                    target: TargetId(6),
                },
            ),
        ];
        for (conn, kind) in conns {
            h.input(Input::Connected { conn, kind });
        }
        h
    }

    fn input(&mut self, input: Input) {
        self.core.handle_input(self.now, input);
        self.core.handle_timeout(self.now);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Send { conn, msg } => {
                    let to = match conn {
                        CALLER => To::Caller,
                        CALLEE => To::Callee,
                        SRS1 => To::Srs(1),
                        SRS2 => To::Srs(2),
                        _ => To::Other,
                    };
                    self.sent.push((to, msg));
                }
                Output::SendToTarget { target, msg } => {
                    let to = match target.0 {
                        0 => To::Callee,
                        5 => To::Srs(1),
                        6 => To::Srs(2),
                        _ => To::Other,
                    };
                    self.sent.push((to, msg));
                }
                Output::Close { .. } => {}
            }
        }
    }

    fn send_from(&mut self, conn: ConnId, msg: SipMessage) {
        self.input(Input::Message { conn, msg });
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(t) = self.core.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.core.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
        self.core.handle_timeout(self.now);
        self.drain();
    }

    fn take_to(&mut self, to: To) -> Vec<SipMessage> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sent)
            .into_iter()
            .partition(|(t, _)| *t == to);
        self.sent = rest;
        mine.into_iter().map(|(_, m)| m).collect()
    }

    fn streams(&self) -> Vec<FakeStream> {
        let mut v: Vec<(TapId, FakeStream)> = self
            .rec
            .streams
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, s)| s).collect()
    }

    fn states(&self, call: CallRef) -> Vec<RecordingState> {
        self.board
            .get(call)
            .unwrap_or_default()
            .iter()
            .map(|s| s.state)
            .collect()
    }

    fn assert_nothing_held(&self) {
        let u = self.admission.usage(&self.tenant).unwrap();
        assert_eq!((u.active_calls, u.pending_invites), (0, 0), "admission");
        let s = self.core.stats();
        assert_eq!((s.active_calls, s.active_relays), (0, 0), "core tables");
        assert!(self.media.live.lock().unwrap().is_empty(), "media held");
        assert!(self.streams().is_empty(), "recording streams held");
    }
}

fn invite(call_id: &str) -> SipMessage {
    let text = format!(
        "INVITE sips:+15551234@sbc.example.net SIP/2.0\r\n\
Via: SIP/2.0/TLS 10.88.0.5:5061;branch=z9hG4bK-{call_id}\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sips:+14155550123@platform.example>;tag=from-{call_id}\r\n\
To: <sips:+15551234@sbc.example.net>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\n\
Session-ID: ab30317f1a784dc48ff824d0d3715d86;remote=00000000000000000000000000000000\r\n\
Contact: <sips:alice@10.88.0.5:5061>\r\n\
Content-Type: application/sdp\r\n\
\r\n{OFFER}"
    );
    SipMessage::parse(text.as_bytes()).unwrap()
}

fn respond(req: &SipMessage, code: u16, to_tag: &str, body: Option<(&str, &str)>) -> SipMessage {
    let mut r = response_to(req, code, "X", Some(to_tag));
    if (101..300).contains(&code) {
        r.push_header("Contact", "<sips:peer@10.9.9.9:5061>");
    }
    if let Some((ctype, b)) = body {
        r.push_header("Content-Type", ctype);
        r.set_body(b.as_bytes().to_vec());
    }
    r
}

/// The SRS's answer: one recvonly m-line per offered stream, ports 5000, 5002, ...
fn srs_answer(lines: usize) -> String {
    let mut s =
        "v=0\r\no=srs 1 1 IN IP4 10.7.7.7\r\ns=-\r\nc=IN IP4 10.7.7.7\r\nt=0 0\r\n".to_string();
    for i in 0..lines {
        s.push_str(&format!(
            "m=audio {} RTP/SAVP 0\r\na=recvonly\r\n",
            5000 + 2 * i
        ));
    }
    s
}

fn in_dialog(method: Method, resp: &SipMessage, cseq: u32, branch: &str) -> SipMessage {
    let mut m = SipMessage::new_request(method.clone(), "sips:sbc@sbc.example.net:5061");
    m.push_header("Via", format!("SIP/2.0/TLS 10.88.0.5:5061;branch={branch}"));
    m.push_header("Max-Forwards", "70");
    m.push_header("From", resp.header("from").unwrap());
    m.push_header("To", resp.header("to").unwrap());
    m.push_header("Call-ID", resp.call_id().unwrap());
    m.push_header("CSeq", format!("{cseq} {}", method.as_str()));
    m
}

/// The SRS's side of a request we sent it: (SDP, metadata) of its multipart body.
fn parts(m: &SipMessage) -> (String, String) {
    let ctype = m.header("content-type").unwrap();
    let body = String::from_utf8(m.body().to_vec()).unwrap();
    let parts = sbc_testkit::srs::split_multipart(ctype, &body).expect("multipart");
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].0, "application/sdp");
    assert_eq!(parts[1].0, siprec::METADATA_TYPE);
    (parts[0].1.to_string(), parts[1].1.to_string())
}

/// The final metadata snapshot a BYE to the SRS carries: RFC 7865-valid, with the
/// session's stop time no earlier than its start and both participants disassociated.
fn final_metadata(bye: &SipMessage) -> sbc_testkit::srs::Metadata {
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(bye.header("content-type"), Some(siprec::METADATA_TYPE));
    assert_eq!(bye.header("content-disposition"), Some("recording-session"));
    let xml = String::from_utf8(bye.body().to_vec()).unwrap();
    let meta = sbc_testkit::srs::validate_metadata(&xml).expect("valid final metadata");
    assert!(meta.stops_after_start(), "{xml}");
    assert_eq!(meta.disassociated, 2, "{xml}");
    meta
}

/// Pause `call` from the admin plane; its re-INVITE to SRS 1 is taken and left unanswered.
fn unanswered_pause(h: &mut Harness, call: CallRef) {
    h.input(Input::Recording {
        call,
        cmd: RecordingCommand::Pause,
    });
    assert_eq!(h.take_to(To::Srs(1))[0].method(), Some(&Method::Invite));
}

fn the_call(h: &Harness) -> CallRef {
    // The fake recording media saw the call's ref when streams were prepared.
    h.rec
        .streams
        .lock()
        .unwrap()
        .values()
        .map(|s| s.call)
        .next()
        .expect("a recorded call")
}

/// Caller INVITE, SRS 1 accepts, callee answers, ACK: a recorded established call.
/// Returns (the call, the SRS's INVITE, the SRS's 200, the caller's 200).
fn recorded_call(h: &mut Harness, id: &str) -> (CallRef, SipMessage, SipMessage, SipMessage) {
    let (call, srs_inv, ok, caller_ok, _) = recorded_call_both(h, id);
    (call, srs_inv, ok, caller_ok)
}

/// [`recorded_call`], also returning the callee's 200 (its dialog, for a callee's BYE).
fn recorded_call_both(
    h: &mut Harness,
    id: &str,
) -> (CallRef, SipMessage, SipMessage, SipMessage, SipMessage) {
    h.send_from(CALLER, invite(id));
    let srs_inv = h.take_to(To::Srs(1)).remove(0);
    let call = the_call(h);
    let ok = respond(
        &srs_inv,
        200,
        "srs-tag",
        Some(("application/sdp", &srs_answer(2))),
    );
    h.send_from(SRS1, ok.clone());
    let acks = h.take_to(To::Srs(1));
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].method(), Some(&Method::Ack));
    let down = h.take_to(To::Callee).remove(0);
    let ans = respond(&down, 200, "callee-tag", Some(("application/sdp", OFFER)));
    h.send_from(CALLEE, ans.clone());
    let up = h.take_to(To::Caller);
    let caller_ok = up.last().unwrap().clone();
    assert_eq!(caller_ok.status(), Some(200));
    h.send_from(
        CALLER,
        in_dialog(Method::Ack, &caller_ok, 1, &format!("z9hG4bK-ack-{id}")),
    );
    h.take_to(To::Callee);
    (call, srs_inv, ok, caller_ok, ans)
}

#[test]
fn the_src_invite_carries_sdp_and_metadata_and_streams_start_on_the_answer() {
    let mut h = Harness::new(OnFailure::Continue, RecordingMode::Always);
    h.send_from(CALLER, invite("r1"));
    // continue: the callee's INVITE leaves at once, in parallel with the SRS's.
    assert_eq!(h.take_to(To::Callee).len(), 1);
    let inv = h.take_to(To::Srs(1)).remove(0);
    assert_eq!(inv.method(), Some(&Method::Invite));
    assert_eq!(inv.request_uri(), Some("sips:srs1.example.net:5061"));
    assert!(inv.header("contact").unwrap().ends_with(";+sip.src"));
    assert_eq!(inv.header("require"), Some("siprec"));
    let (sdp, xml) = parts(&inv);
    // RFC 7865's rules, checked with a real XML parser (sbc-testkit's SRS peer).
    let meta = sbc_testkit::srs::validate_metadata(&xml).expect("valid metadata");
    assert_eq!(meta.labels, vec!["1", "2"]);
    assert_eq!(meta.senders[0].1, vec!["1"], "the caller sends stream 1");
    assert_eq!(sdp.matches("m=audio ").count(), 2, "{sdp}");
    assert_eq!(sdp.matches("a=sendonly").count(), 2);
    assert!(sdp.contains("a=label:1\r\n") && sdp.contains("a=label:2\r\n"));
    assert!(sdp.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY1"));
    assert!(sdp.contains("m=audio 40002 RTP/SAVP 0\r\nc=IN IP4 192.0.2.1\r\na=rtpmap:0 PCMU/8000"));
    assert!(xml.contains(siprec::RECORDING_NS));
    assert!(xml.contains("<sipSessionID>ab30317f1a784dc48ff824d0d3715d86;remote=00000000000000000000000000000000</sipSessionID>"));
    // identities = "redact": numbers masked, display names left out.
    assert!(
        xml.contains("aor=\"sips:+141******23@platform.example\""),
        "{xml}"
    );
    assert!(!xml.contains("4155550123") && !xml.contains("Alice"));
    assert_eq!(xml.matches("<participantstreamassoc").count(), 2);
    let call = the_call(&h);
    assert_eq!(h.states(call), vec![RecordingState::Offering]);
    h.send_from(
        SRS1,
        respond(&inv, 200, "srs", Some(("application/sdp", &srs_answer(2)))),
    );
    assert_eq!(h.take_to(To::Srs(1))[0].method(), Some(&Method::Ack));
    let dests: Vec<_> = h.streams().iter().map(|s| (s.leg, s.destination)).collect();
    assert_eq!(
        dests,
        vec![
            (LegSide::Caller, Some("10.7.7.7:5000".parse().unwrap())),
            (LegSide::Callee, Some("10.7.7.7:5002".parse().unwrap()))
        ]
    );
    assert_eq!(h.states(call), vec![RecordingState::Recording]);
}

#[test]
fn required_holds_the_callee_invite_until_the_srs_accepts() {
    let mut h = Harness::new(OnFailure::Required, RecordingMode::Always);
    h.send_from(CALLER, invite("r2"));
    assert!(
        h.take_to(To::Callee).is_empty(),
        "held until an SRS accepts"
    );
    let inv = h.take_to(To::Srs(1)).remove(0);
    h.advance(ANSWER_TIMEOUT / 2);
    assert!(h.take_to(To::Callee).is_empty());
    h.send_from(
        SRS1,
        respond(&inv, 200, "srs", Some(("application/sdp", &srs_answer(2)))),
    );
    let down = h.take_to(To::Callee);
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].method(), Some(&Method::Invite));
    // The held INVITE's transaction runs from its release: no 408 for a slow callee.
    h.advance(T1 * 63);
    assert!(!h
        .take_to(To::Caller)
        .iter()
        .any(|m| m.status() == Some(408)));
}

#[test]
fn required_refuses_503_when_no_srs_answers_and_releases_everything() {
    let mut h = Harness::new(OnFailure::Required, RecordingMode::Always);
    h.send_from(CALLER, invite("r3"));
    assert_eq!(h.take_to(To::Srs(1)).len(), 1);
    h.advance(ANSWER_TIMEOUT);
    // SRS 1 timed out: CANCEL to it, then SRS 2.
    assert_eq!(h.take_to(To::Srs(1))[0].method(), Some(&Method::Cancel));
    assert_eq!(h.take_to(To::Srs(2))[0].method(), Some(&Method::Invite));
    h.advance(ANSWER_TIMEOUT);
    let up = h.take_to(To::Caller);
    let codes: Vec<_> = up.iter().filter_map(|m| m.status()).collect();
    assert_eq!(codes, vec![100, 503], "{up:?}");
    assert!(up[1].header("retry-after").is_some());
    assert!(
        h.take_to(To::Callee).is_empty(),
        "the callee never saw the call"
    );
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn continue_lets_the_call_through_when_every_srs_fails() {
    let mut h = Harness::new(OnFailure::Continue, RecordingMode::Always);
    h.send_from(CALLER, invite("r4"));
    let call = the_call(&h);
    let inv1 = h.take_to(To::Srs(1)).remove(0);
    h.send_from(SRS1, respond(&inv1, 503, "s1", None));
    let inv2 = h.take_to(To::Srs(2)).remove(0);
    assert_eq!(inv2.method(), Some(&Method::Invite));
    assert_ne!(inv1.call_id(), inv2.call_id(), "a new recording session");
    h.send_from(SRS2, respond(&inv2, 500, "s2", None));
    assert_eq!(
        h.states(call),
        vec![RecordingState::Failed, RecordingState::Failed]
    );
    assert!(
        h.streams().is_empty(),
        "failed sessions release their streams"
    );
    let down = h.take_to(To::Callee).remove(0);
    h.send_from(
        CALLEE,
        respond(&down, 200, "callee", Some(("application/sdp", OFFER))),
    );
    let up = h.take_to(To::Caller);
    assert_eq!(up.last().unwrap().status(), Some(200), "the call goes on");
}

#[test]
fn a_refusal_other_than_408_or_5xx_does_not_fail_over() {
    let mut h = Harness::new(OnFailure::Continue, RecordingMode::Always);
    h.send_from(CALLER, invite("r5"));
    let inv1 = h.take_to(To::Srs(1)).remove(0);
    h.send_from(SRS1, respond(&inv1, 488, "s1", None));
    assert!(h.take_to(To::Srs(2)).is_empty());
}

#[test]
fn an_srs_bye_ends_the_recording_never_the_call() {
    let mut h = Harness::new(OnFailure::Continue, RecordingMode::Always);
    let (call, _inv, ok, _) = recorded_call(&mut h, "r6");
    let mut bye = in_dialog(Method::Bye, &ok, 1, "z9hG4bK-srsbye");
    // The SRS is the other side of that dialog: its From is our To.
    bye.set_header("From", ok.header("to").unwrap());
    bye.set_header("To", ok.header("from").unwrap());
    h.send_from(SRS1, bye);
    assert_eq!(h.take_to(To::Srs(1))[0].status(), Some(200));
    assert!(h.take_to(To::Caller).is_empty() && h.take_to(To::Callee).is_empty());
    assert!(h.streams().is_empty(), "streams released");
    assert_eq!(h.states(call), vec![RecordingState::Stopped]);
    assert_eq!(h.core.stats().active_calls, 1, "the call is still up");
}

#[test]
fn hold_resume_and_pause_re_invite_the_srs() {
    let mut h = Harness::new(OnFailure::Continue, RecordingMode::Always);
    let (call, _inv, _ok, caller_ok) = recorded_call(&mut h, "r7");
    // The caller holds: its re-offer is sendonly, so the callee's stream goes inactive.
    let mut hold = in_dialog(Method::Invite, &caller_ok, 2, "z9hG4bK-hold");
    hold.push_header("Content-Type", "application/sdp");
    hold.set_body(format!("{OFFER}a=sendonly\r\n").into_bytes());
    h.send_from(CALLER, hold);
    let re = h.take_to(To::Srs(1));
    assert_eq!(re.len(), 1);
    assert_eq!(re[0].method(), Some(&Method::Invite));
    assert!(
        re[0].header("to").unwrap().contains("tag=srs-tag"),
        "in the dialog"
    );
    let (sdp, _) = parts(&re[0]);
    assert!(sdp.contains("a=label:1\r\na=sendonly"), "{sdp}");
    assert!(sdp.contains("a=label:2\r\na=inactive"), "{sdp}");
    assert!(sdp.contains(" 2 IN IP4"), "SDP version bumped: {sdp}");
    h.send_from(
        SRS1,
        respond(
            &re[0],
            200,
            "srs-tag",
            Some(("application/sdp", &srs_answer(2))),
        ),
    );
    assert_eq!(h.take_to(To::Srs(1))[0].method(), Some(&Method::Ack));
    // Pause from the admin plane: both inactive, media paused.
    h.input(Input::Recording {
        call,
        cmd: RecordingCommand::Pause,
    });
    let re = h.take_to(To::Srs(1));
    let (sdp, _) = parts(&re[0]);
    assert_eq!(sdp.matches("a=inactive").count(), 2, "{sdp}");
    assert!(h.streams().iter().all(|s| s.paused));
    assert_eq!(h.states(call), vec![RecordingState::Paused]);
    // A resume while the pause's re-INVITE is in flight waits for it.
    h.input(Input::Recording {
        call,
        cmd: RecordingCommand::Resume,
    });
    assert!(h.take_to(To::Srs(1)).is_empty(), "one INVITE at a time");
    h.send_from(
        SRS1,
        respond(
            &re[0],
            200,
            "srs-tag",
            Some(("application/sdp", &srs_answer(2))),
        ),
    );
    let after = h.take_to(To::Srs(1));
    assert_eq!(after.len(), 2, "ACK, then the resume's re-INVITE");
    let (sdp, _) = parts(&after[1]);
    assert!(sdp.contains("a=label:1\r\na=sendonly"), "{sdp}");
    assert!(sdp.contains("a=label:2\r\na=inactive"), "still held: {sdp}");
}

#[test]
fn a_codec_change_re_offers_the_new_formats_to_the_srs() {
    let mut h = Harness::new(OnFailure::Continue, RecordingMode::Always);
    let (_call, inv, _ok, caller_ok) = recorded_call(&mut h, "r7c");
    let (sdp, _) = parts(&inv);
    assert!(sdp.contains("a=rtpmap:0 PCMU/8000"), "{sdp}");
    // The caller re-offers G.722; the relay now reports it for the streams.
    *h.rec.now_formats.lock().unwrap() = Some(vec![RtpFormat {
        payload_type: 9,
        encoding: "G722".into(),
        clock_rate: 8000,
        channels: None,
        fmtp: None,
    }]);
    let mut re_offer = in_dialog(Method::Invite, &caller_ok, 2, "z9hG4bK-codec");
    re_offer.push_header("Content-Type", "application/sdp");
    re_offer.set_body(OFFER.replace("RTP/SAVP 0", "RTP/SAVP 9").into_bytes());
    h.send_from(CALLER, re_offer);
    let re = h.take_to(To::Srs(1));
    assert_eq!(re.len(), 1);
    let (sdp, _) = parts(&re[0]);
    assert!(sdp.contains("a=rtpmap:9 G722/8000"), "{sdp}");
    assert!(
        !sdp.contains("PCMU"),
        "the prepare-time codec is gone: {sdp}"
    );
}

#[test]
fn the_call_end_sends_bye_to_the_srs_and_releases_the_streams() {
    let mut h = Harness::new(OnFailure::Continue, RecordingMode::Always);
    let (_call, _inv, _ok, caller_ok) = recorded_call(&mut h, "r8");
    h.advance(Duration::from_secs(7));
    h.send_from(CALLER, in_dialog(Method::Bye, &caller_ok, 2, "z9hG4bK-bye"));
    let bye = h.take_to(To::Callee).remove(0);
    h.send_from(CALLEE, respond(&bye, 200, "callee-tag", None));
    let to_srs = h.take_to(To::Srs(1));
    assert_eq!(to_srs.len(), 1);
    assert_eq!(to_srs[0].method(), Some(&Method::Bye));
    assert!(to_srs[0].header("to").unwrap().contains("tag=srs-tag"));
    let meta = final_metadata(&to_srs[0]);
    assert_eq!(meta.start_time.as_deref(), Some("2026-12-04T12:01:21Z"));
    assert_eq!(meta.stop_time.as_deref(), Some("2026-12-04T12:01:28Z"));
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn a_call_ended_by_the_callee_sends_the_final_metadata_to_the_srs() {
    let mut h = Harness::new(OnFailure::Continue, RecordingMode::Always);
    let (_call, _inv, _ok, _caller_ok, callee_ok) = recorded_call_both(&mut h, "r8b");
    h.advance(Duration::from_secs(3));
    // The callee's BYE: its side of the downstream dialog (its tag in From).
    let mut bye = in_dialog(Method::Bye, &callee_ok, 1, "z9hG4bK-callee-bye");
    bye.set_header("from", callee_ok.header("to").unwrap());
    bye.set_header("to", callee_ok.header("from").unwrap());
    h.send_from(CALLEE, bye);
    let up = h.take_to(To::Caller).remove(0);
    assert_eq!(up.method(), Some(&Method::Bye));
    h.send_from(CALLER, respond(&up, 200, "caller-tag", None));
    let to_srs = h.take_to(To::Srs(1));
    assert_eq!(to_srs.len(), 1, "{to_srs:?}");
    let meta = final_metadata(&to_srs[0]);
    assert_eq!(meta.stop_time.as_deref(), Some("2026-12-04T12:01:24Z"));
}

#[test]
fn teardown_does_not_wait_for_an_srs_that_leaves_an_update_unanswered() {
    let mut h = Harness::new(OnFailure::Continue, RecordingMode::Always);
    let (call, _inv, _ok, caller_ok) = recorded_call(&mut h, "r8c");
    unanswered_pause(&mut h, call);
    // The call ends at once: the SRS gets its BYE with the final metadata in the same
    // step as the caller gets its 200 (no clock advance, nothing waits on the SRS).
    h.send_from(
        CALLER,
        in_dialog(Method::Bye, &caller_ok, 2, "z9hG4bK-bye-c"),
    );
    let bye = h.take_to(To::Callee).remove(0);
    h.send_from(CALLEE, respond(&bye, 200, "callee-tag", None));
    assert_eq!(h.take_to(To::Caller).last().unwrap().status(), Some(200));
    let to_srs = h.take_to(To::Srs(1));
    assert_eq!(to_srs.len(), 1);
    final_metadata(&to_srs[0]);
    assert_eq!(h.core.stats().active_calls, 0);
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn an_srs_that_times_out_an_update_gets_its_final_metadata_before_the_next_starts() {
    let mut h = Harness::new(OnFailure::Continue, RecordingMode::Always);
    let (call, _inv, _ok, _) = recorded_call(&mut h, "r8d");
    unanswered_pause(&mut h, call);
    h.advance(ANSWER_TIMEOUT + Duration::from_millis(1));
    let to_old = h.take_to(To::Srs(1));
    assert_eq!(to_old.len(), 1, "{to_old:?}");
    let meta = final_metadata(&to_old[0]);
    // Stopped when the update timed out: 1.5 s after the start, whole seconds.
    assert_eq!(meta.stop_time.as_deref(), Some("2026-12-04T12:01:22Z"));
    let to_new = h.take_to(To::Srs(2));
    assert_eq!(to_new[0].method(), Some(&Method::Invite));
    let (_, xml) = parts(&to_new[0]);
    assert!(
        !sbc_testkit::srs::validate_metadata(&xml)
            .unwrap()
            .has_stop_time
    );
}

#[test]
fn an_srs_lost_mid_call_is_replaced_by_the_next_with_the_gap_in_metadata() {
    let mut h = Harness::new(OnFailure::Continue, RecordingMode::Always);
    let (call, inv1, _ok, _) = recorded_call(&mut h, "r9");
    h.input(Input::Closed { conn: SRS1 });
    let inv2 = h.take_to(To::Srs(2)).remove(0);
    assert_ne!(inv1.call_id(), inv2.call_id());
    let (_, xml) = parts(&inv2);
    assert!(
        xml.contains(&format!("<gap xmlns=\"{}\">", siprec::EXTENSION_NS)),
        "{xml}"
    );
    let meta = sbc_testkit::srs::validate_metadata(&xml).expect("valid metadata");
    assert_eq!(
        meta.extensions,
        vec!["gap", "previous-recording", "from", "until"]
    );
    h.send_from(
        SRS2,
        respond(
            &inv2,
            200,
            "srs2",
            Some(("application/sdp", &srs_answer(2))),
        ),
    );
    assert_eq!(
        h.states(call),
        vec![RecordingState::Failed, RecordingState::Recording]
    );
    let status = h.board.get(call).unwrap();
    assert_eq!(status[1].failovers, 1);
    assert_eq!(status[1].srs, "sips:srs2.example.net:5061");
    assert_eq!(h.streams().len(), 2, "the old streams went, new ones came");
}

#[test]
fn api_mode_records_only_on_command() {
    let mut h = Harness::new(OnFailure::Continue, RecordingMode::Api);
    h.send_from(CALLER, invite("r10"));
    assert!(
        h.take_to(To::Srs(1)).is_empty(),
        "api: nothing until started"
    );
    let down = h.take_to(To::Callee).remove(0);
    h.send_from(
        CALLEE,
        respond(&down, 200, "callee", Some(("application/sdp", OFFER))),
    );
    h.take_to(To::Caller);
    let calls = h.board.calls();
    assert_eq!(calls.len(), 1, "the board knows the recordable call");
    let call = calls[0];
    assert_eq!(h.states(call), vec![]);
    h.input(Input::Recording {
        call,
        cmd: RecordingCommand::Start,
    });
    let inv = h.take_to(To::Srs(1));
    assert_eq!(inv.len(), 1);
    assert_eq!(h.states(call), vec![RecordingState::Offering]);
    h.send_from(
        SRS1,
        respond(
            &inv[0],
            200,
            "srs",
            Some(("application/sdp", &srs_answer(2))),
        ),
    );
    h.take_to(To::Srs(1));
    h.input(Input::Recording {
        call,
        cmd: RecordingCommand::Stop,
    });
    let bye = h.take_to(To::Srs(1));
    assert_eq!(bye[0].method(), Some(&Method::Bye));
    final_metadata(&bye[0]);
    assert_eq!(h.states(call), vec![RecordingState::Stopped]);
    assert!(h.streams().is_empty());
    assert_eq!(h.core.stats().active_calls, 1, "the call goes on");
}

#[test]
fn no_stream_no_recording_and_nothing_held() {
    let mut h = Harness::new(OnFailure::Required, RecordingMode::Always);
    *h.rec.refuse.lock().unwrap() = true;
    h.send_from(CALLER, invite("r11"));
    let up = h.take_to(To::Caller);
    let codes: Vec<_> = up.iter().filter_map(|m| m.status()).collect();
    assert_eq!(codes, vec![100, 503]);
    h.advance(T1 * 64);
    h.assert_nothing_held();
}
