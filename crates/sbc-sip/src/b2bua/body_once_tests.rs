//! A request's body is classified once: by the check before admission (or, in a dialog,
//! where the request is handled), and relayed from that. `classify_body` counts its runs
//! on the test's thread ([`super::topology::CLASSIFIED`]); each test sends one message and
//! checks the count went up by exactly one, through parking for the cluster too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sbc_core::admission::Admission;
use sbc_core::cluster::{
    AnswerSink, ClusterAdmission, ClusterAnswer, ClusterRequest, ClusterVerdict, DecisionMode,
};
use sbc_core::config::{BodySettings, Limits};
use sbc_core::media::{CallRef, LegSide, MediaControl, MediaError, MediaEvent, MediaPolicy};
use sbc_core::tenant::TenantId;

use super::topology::{BodyPolicy, TenantPolicy, CLASSIFIED};
use super::{B2bua, B2buaConfig, ConnId, ConnKind, Input, Output, WallClock};
use crate::message::{response_to, tag, Method, SipMessage};
use crate::routing::{RouteEntry, RouteTable, TargetId};
use crate::transaction::TimerConfig;
use crate::transport::Transport;

const CALLER: ConnId = ConnId(1);
const CALLEE: ConnId = ConnId(2);
const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n";
const PIDF: &str = "<presence entity=\"pres:alice@platform.example\"/>";

#[derive(Debug)]
struct Media;

impl MediaControl for Media {
    fn offer(
        &self,
        _: CallRef,
        _: &TenantId,
        _: LegSide,
        _: &[u8],
        _: &MediaPolicy,
    ) -> Result<Vec<u8>, MediaError> {
        Ok(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 30000 RTP/SAVP 0\r\n".to_vec())
    }
    fn answer(&self, _: CallRef, _: LegSide, _: &[u8]) -> Result<Vec<u8>, MediaError> {
        Ok(b"v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 30002 RTP/SAVP 0\r\n".to_vec())
    }
    fn delete(&self, _: CallRef) {}
    fn poll_events(&self) -> Vec<MediaEvent> {
        Vec::new()
    }
}

#[derive(Debug, Default)]
struct Cluster(Mutex<Vec<ClusterRequest>>);

impl ClusterAdmission for Cluster {
    fn request(&self, req: ClusterRequest) {
        self.0.lock().unwrap().push(req);
    }
    fn set_answer_sink(&self, _: AnswerSink) {}
}

struct Core {
    core: B2bua,
    now: Instant,
    sent: Vec<(ConnId, SipMessage)>,
}

impl Core {
    fn new() -> Core {
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
                t1: Duration::from_millis(500),
                max_ringing: Duration::from_secs(60),
            },
            max_forwards: 70,
            advertised: vec!["sbc.example.net:5061".into()],
            transports: vec![Transport::Tls],
            redaction: sbc_core::redact::Redaction::default(),
            seed: 7,
            wall_clock: WallClock {
                at: now,
                wall: SystemTime::UNIX_EPOCH,
            },
        };
        let mut core = B2bua::new(cfg, Arc::new(routes), admission);
        core.set_media(Arc::new(Media), HashMap::new());
        let bodies = BodyPolicy::new(&BodySettings {
            allow: vec!["application/pidf+xml".into()],
        });
        let policy = TenantPolicy {
            bodies,
            ..Default::default()
        };
        core.set_sip_policies(HashMap::from([(tenant.clone(), policy)]));
        let mut c = Core {
            core,
            now,
            sent: Vec::new(),
        };
        let caller = ConnKind::Inbound {
            tenant: Some(tenant),
            listener: 0,
        };
        c.input(Input::Connected {
            conn: CALLER,
            kind: caller,
        });
        let callee = ConnKind::Outbound {
            target: TargetId(0),
        };
        c.input(Input::Connected {
            conn: CALLEE,
            kind: callee,
        });
        c
    }

    fn input(&mut self, input: Input) {
        self.core.handle_input(self.now, input);
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Send { conn, msg } => self.sent.push((conn, msg)),
                Output::SendToTarget { msg, .. } => self.sent.push((CALLEE, msg)),
                Output::Close { .. } => {}
            }
        }
    }

    /// Classifications while `conn` sends `msg`.
    fn classified_by(&mut self, conn: ConnId, msg: SipMessage) -> usize {
        let before = CLASSIFIED.with(std::cell::Cell::get);
        self.input(Input::Message { conn, msg });
        CLASSIFIED.with(std::cell::Cell::get) - before
    }

    fn take_to(&mut self, conn: ConnId) -> Vec<SipMessage> {
        let (mine, rest) = std::mem::take(&mut self.sent)
            .into_iter()
            .partition::<Vec<_>, _>(|(c, _)| *c == conn);
        self.sent = rest;
        mine.into_iter().map(|(_, m)| m).collect()
    }
}

/// A multipart body: an SDP part (when `sdp`) and a PIDF part.
fn multipart(sdp: bool) -> String {
    let sdp_part = format!("--xyz\r\nContent-Type: application/sdp\r\n\r\n{OFFER}\r\n");
    format!(
        "{}--xyz\r\nContent-Type: application/pidf+xml\r\nContent-ID: <geo@platform>\r\n\r\n{PIDF}\r\n--xyz--\r\n",
        if sdp { sdp_part.as_str() } else { "" }
    )
}

fn request(method: &str, cseq: u32, to_tag: &str, body: &str) -> SipMessage {
    let text = format!(
        "{method} sips:+15551234@sbc.example.net SIP/2.0\r\n\
Via: SIP/2.0/TLS 10.88.0.5:5061;branch=z9hG4bK-{method}{cseq}\r\n\
Max-Forwards: 70\r\n\
From: <sips:alice@platform.example>;tag=a1\r\n\
To: <sips:+15551234@sbc.example.net>{to_tag}\r\n\
Call-ID: once-1\r\n\
CSeq: {cseq} {method}\r\n\
Contact: <sips:alice@10.88.0.5:5061>\r\n\
Content-Type: multipart/mixed;boundary=xyz\r\n\
\r\n{body}"
    );
    SipMessage::parse(text.as_bytes()).unwrap()
}

fn relayed_multipart(c: &mut Core) -> SipMessage {
    let down = c.take_to(CALLEE);
    assert_eq!(down.len(), 1, "one request relayed");
    let text = String::from_utf8_lossy(&down[0].to_bytes()).to_string();
    assert!(text.contains(PIDF), "the PIDF part crossed: {text}");
    assert!(!text.contains("10.1.1.1"), "the SDP part was anchored");
    down.into_iter().next().unwrap()
}

#[test]
fn an_initial_multipart_invite_is_classified_once() {
    let mut c = Core::new();
    let n = c.classified_by(CALLER, request("INVITE", 1, "", &multipart(true)));
    let down = relayed_multipart(&mut c);
    assert_eq!(down.method(), Some(&Method::Invite));
    assert_eq!(n, 1, "the INVITE's body was classified {n} times");
}

#[test]
fn a_parked_multipart_invite_is_classified_once() {
    let mut c = Core::new();
    let cluster = Arc::new(Cluster::default());
    c.core.set_cluster(cluster.clone());
    let mut n = c.classified_by(CALLER, request("INVITE", 1, "", &multipart(true)));
    let asked = cluster.0.lock().unwrap().pop().unwrap();
    assert_eq!(asked.streams, 1, "the offer's stream, from the kept body");
    let before = CLASSIFIED.with(std::cell::Cell::get);
    c.input(Input::Cluster(ClusterAnswer {
        ticket: asked.ticket,
        mode: DecisionMode::Exact,
        verdict: ClusterVerdict::Admit(sbc_core::cluster::LeaseGuard(Box::new(Lease))),
    }));
    n += CLASSIFIED.with(std::cell::Cell::get) - before;
    relayed_multipart(&mut c);
    assert_eq!(n, 1, "the parked INVITE's body was classified {n} times");
}

struct Lease;
impl sbc_core::cluster::CallLease for Lease {}

#[test]
fn an_in_dialog_multipart_request_is_classified_once() {
    let mut c = Core::new();
    c.classified_by(CALLER, request("INVITE", 1, "", &multipart(true)));
    let inv = relayed_multipart(&mut c);
    let mut ok = response_to(&inv, 200, "OK", Some("callee-1"));
    ok.push_header("Contact", "<sips:pbx@pbx.inside:5061>");
    ok.push_header("Content-Type", "application/sdp");
    ok.set_body(OFFER.as_bytes().to_vec());
    c.input(Input::Message {
        conn: CALLEE,
        msg: ok,
    });
    let up = c.take_to(CALLER);
    let ok_up = up.iter().find(|m| m.status() == Some(200)).expect("200 up");
    let to_tag = format!(";tag={}", ok_up.header("to").and_then(tag).unwrap());
    let mut ack = request("ACK", 1, &to_tag, "");
    ack.remove_header("content-type");
    c.input(Input::Message {
        conn: CALLER,
        msg: ack,
    });
    c.take_to(CALLEE);
    let n = c.classified_by(CALLER, request("INFO", 2, &to_tag, &multipart(false)));
    let down = c.take_to(CALLEE);
    assert_eq!(down.len(), 1, "the INFO relayed");
    assert_eq!(down[0].method(), Some(&Method::Info));
    assert!(String::from_utf8_lossy(down[0].body()).contains(PIDF));
    assert_eq!(n, 1, "the INFO's body was classified {n} times");
}
